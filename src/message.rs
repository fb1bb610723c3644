//! The neutral message that flows from every endpoint through the router to
//! every other endpoint. Endpoints turn wire formats into [`Message`] and
//! back; the router only ever sees this.

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
    /// A value the source kept and sent again, not news: an MQTT retained
    /// message the broker delivers on (re)subscribing.
    pub retained: bool,
}

impl Message {
    pub fn value(source: SourceKind, name: impl Into<String>, value: Value) -> Self {
        Message { source, name: name.into(), body: Body::Value(value), retained: false }
    }

    pub fn trigger(source: SourceKind, name: impl Into<String>) -> Self {
        Message { source, name: name.into(), body: Body::Trigger, retained: false }
    }

    /// The same message, marked as a kept value replayed by its source.
    pub fn retained(self, retained: bool) -> Self {
        Message { retained, ..self }
    }
}

impl Body {
    /// About how much memory this body holds: a bound for what waits in the
    /// router, not an exact count.
    pub fn held_bytes(&self) -> usize {
        match self {
            Body::Trigger => 0,
            Body::Value(value) => value_bytes(value),
        }
    }

    /// A button's release: 0, false or off. TouchDesigner's buttons and
    /// pulse channels send 1 when pressed and 0 when let go; only the press
    /// is an event. No value at all, or any other value, is a press.
    pub fn is_release(&self) -> bool {
        matches!(self, Body::Value(value) if truthy(value) == Some(false))
    }
}

/// A value's node, its text, and its keys. Depth is bounded: values come
/// from JSON (serde_json stops at 128 levels), OSC arguments or the cables
/// envelope.
fn value_bytes(value: &Value) -> usize {
    let own = std::mem::size_of::<Value>();
    own + match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(text) => text.len(),
        Value::Array(items) => items.iter().map(value_bytes).sum(),
        Value::Object(fields) => {
            fields.iter().map(|(key, v)| own + key.len() + value_bytes(v)).sum()
        }
    }
}

/// Reads a yes/no value the way OSC and MQTT senders write one: a boolean,
/// a number (0 is no), "1"/"0", "on"/"off", "true"/"false", "yes"/"no", or
/// a one-element array of one of those.
pub fn truthy(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "1" | "on" | "true" | "yes" => Some(true),
            "0" | "off" | "false" | "no" => Some(false),
            _ => None,
        },
        Value::Array(items) if items.len() == 1 => truthy(&items[0]),
        _ => None,
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
