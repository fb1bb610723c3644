//! The neutral message that flows from every endpoint through the router to
//! every other endpoint. Endpoints turn wire formats into [`Message`] and
//! back; the router only ever sees this.

use std::sync::Arc;

use serde_json::Value;

/// What kind of name a message arrived under; a route's source names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKind {
    /// A cables.gl object topic (`CHANNEL/objects`).
    CablesObject,
    /// A cables.gl named trigger (`CHANNEL/triggers`).
    CablesTrigger,
    /// A plain SocketCluster channel; its data is the payload.
    ScChannel,
    /// A custom event the SocketCluster server transmits.
    ScEvent,
    /// An OSC address received on a UDP listener.
    Osc,
    /// An MQTT topic received from the broker.
    Mqtt,
}

impl SourceKind {
    /// The key users write in a route (`from = { osc = "/x" }`).
    pub fn key(self) -> &'static str {
        match self {
            SourceKind::CablesObject => "cables_object",
            SourceKind::CablesTrigger => "cables_trigger",
            SourceKind::ScChannel => "sc_channel",
            SourceKind::ScEvent => "sc_event",
            SourceKind::Osc => "osc",
            SourceKind::Mqtt => "mqtt",
        }
    }
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A value (state): any JSON.
    Value(Value),
    /// A trigger (an event with no value). Its name is the message's name.
    Trigger,
}

/// One message on its way through the bridge.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub source: SourceKind,
    /// The topic, trigger name, channel, event name, OSC address or MQTT topic.
    pub name: String,
    pub body: Body,
    /// The MQTT subscriptions this copy was sent for, when the broker
    /// named them (MQTT 5 Subscription Identifiers). `None`: every matching
    /// route takes it.
    pub sent_for: Option<SentFor>,
}

/// The MQTT subscription filters a copy of a message was sent for. A
/// broker sends one copy per matching subscription, so when only the
/// routes listening with one of these filters take the copy, each route
/// takes the message once.
#[derive(Debug, Clone, PartialEq)]
pub struct SentFor {
    pub filters: Box<[Arc<str>]>,
    /// The endpoint's set of subscriptions the filters were named under. A
    /// copy named under an earlier set (before a reload changed it) goes to
    /// every matching route: the routes it was named for may be gone.
    pub generation: u64,
}

impl Message {
    pub fn value(source: SourceKind, name: impl Into<String>, value: Value) -> Self {
        Message { source, name: name.into(), body: Body::Value(value), sent_for: None }
    }

    pub fn trigger(source: SourceKind, name: impl Into<String>) -> Self {
        Message { source, name: name.into(), body: Body::Trigger, sent_for: None }
    }

    /// Limits the message to the routes of these subscription filters.
    pub fn sent_for(self, sent_for: SentFor) -> Self {
        Message { sent_for: Some(sent_for), ..self }
    }

    /// Whether a route listening with `filter` takes this copy.
    pub fn is_for(&self, filter: &str) -> bool {
        self.sent_for.as_ref().is_none_or(|sent| sent.filters.iter().any(|f| &**f == filter))
    }
}

/// Why an endpoint did not take an outgoing message; the message comes back.
#[derive(Debug)]
pub enum Refused<T> {
    /// The endpoint's bounded queue is full: a loss under load.
    Full(T),
    /// The endpoint has begun to shut down: a loss at the stop.
    ShuttingDown(T),
}

impl<T> Refused<T> {
    pub fn into_inner(self) -> T {
        match self {
            Refused::Full(message) | Refused::ShuttingDown(message) => message,
        }
    }
}
