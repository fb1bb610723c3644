//! The two rumqttc clients (MQTT 3.1.1 at the crate root, MQTT 5 in
//! `rumqttc::v5`) behind one small surface, so the endpoint's logic exists
//! once: [`Client`] for requests, [`Connection`] for the event loop, and
//! [`Event`] for the few things the endpoint reacts to.

use std::borrow::Cow;
use std::sync::Arc;

use rumqttc::v5;

use super::config::{MqttConfig, MqttProtocol};
use super::{QoS, Subscription};

/// A publish on its way to the broker, already encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queued {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

impl From<QoS> for rumqttc::QoS {
    fn from(qos: QoS) -> Self {
        match qos {
            QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
            QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
        }
    }
}

impl From<rumqttc::QoS> for QoS {
    fn from(qos: rumqttc::QoS) -> Self {
        match qos {
            rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
            rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
            rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

impl From<QoS> for v5::mqttbytes::QoS {
    fn from(qos: QoS) -> Self {
        match qos {
            QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
            QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
        }
    }
}

impl From<v5::mqttbytes::QoS> for QoS {
    fn from(qos: v5::mqttbytes::QoS) -> Self {
        match qos {
            v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
            v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
            v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
        }
    }
}

fn queued_v311(request: rumqttc::Request) -> Option<Queued> {
    match request {
        rumqttc::Request::Publish(p) => Some(Queued {
            topic: p.topic,
            payload: p.payload.to_vec(),
            qos: p.qos.into(),
            retain: p.retain,
        }),
        _ => None,
    }
}

fn queued_v5(request: v5::Request) -> Option<Queued> {
    match request {
        v5::Request::Publish(p) => Some(Queued {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload.to_vec(),
            qos: p.qos.into(),
            retain: p.retain,
        }),
        _ => None,
    }
}

/// The request side: cheap to clone, never awaits. Every call only puts a
/// request into rumqttc's bounded channel, which the event loop drains.
#[derive(Clone)]
pub(crate) enum Client {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl Client {
    /// Hands `publish` to the event loop. `Err` gives it back when the
    /// request channel is full (`None` only if rumqttc returned something
    /// other than the publish, which it does not).
    pub fn try_publish(&self, publish: Queued) -> Result<(), Option<Queued>> {
        let Queued { topic, payload, qos, retain } = publish;
        match self {
            Client::V311(client) => {
                client.try_publish(topic, qos.into(), retain, payload).map_err(|e| match e {
                    rumqttc::ClientError::Request(r) | rumqttc::ClientError::TryRequest(r) => {
                        queued_v311(r)
                    }
                })
            }
            Client::V5(client) => {
                client.try_publish(topic, qos.into(), retain, payload).map_err(|e| match e {
                    v5::ClientError::Request(r) | v5::ClientError::TryRequest(r) => queued_v5(r),
                })
            }
        }
    }

    /// One SUBSCRIBE for every filter. On MQTT 5 each filter has No Local
    /// set, so the broker never sends our own publishes back; shared
    /// subscriptions (`$share/...`) cannot carry it, the protocol forbids it.
    pub fn try_subscribe(&self, subscriptions: &[Subscription]) -> bool {
        match self {
            Client::V311(client) => client
                .try_subscribe_many(
                    subscriptions
                        .iter()
                        .map(|s| rumqttc::SubscribeFilter::new(s.filter.clone(), s.qos.into())),
                )
                .is_ok(),
            Client::V5(client) => client
                .try_subscribe_many(subscriptions.iter().map(|s| {
                    let mut filter = v5::mqttbytes::v5::Filter::new(s.filter.clone(), s.qos.into());
                    filter.nolocal = !s.filter.starts_with("$share/");
                    filter
                }))
                .is_ok(),
        }
    }

    /// One UNSUBSCRIBE per filter, in order, until the channel is full;
    /// returns how many were queued.
    pub fn try_unsubscribe(&self, filters: &[String]) -> usize {
        filters
            .iter()
            .take_while(|filter| match self {
                Client::V311(client) => client.try_unsubscribe((*filter).clone()).is_ok(),
                Client::V5(client) => client.try_unsubscribe((*filter).clone()).is_ok(),
            })
            .count()
    }

    pub fn try_disconnect(&self) -> bool {
        match self {
            Client::V311(client) => client.try_disconnect().is_ok(),
            Client::V5(client) => client.try_disconnect().is_ok(),
        }
    }
}

/// An incoming PUBLISH of either protocol.
pub(crate) enum IncomingPublish {
    V311(rumqttc::Publish),
    V5(v5::mqttbytes::v5::Publish),
}

impl IncomingPublish {
    pub fn topic(&self) -> Cow<'_, str> {
        match self {
            IncomingPublish::V311(p) => Cow::Borrowed(&p.topic),
            IncomingPublish::V5(p) => String::from_utf8_lossy(&p.topic),
        }
    }

    pub fn payload(&self) -> &[u8] {
        match self {
            IncomingPublish::V311(p) => &p.payload,
            IncomingPublish::V5(p) => &p.payload,
        }
    }

    /// Set by the broker on a retained message it replays to a new
    /// subscription.
    pub fn retain(&self) -> bool {
        match self {
            IncomingPublish::V311(p) => p.retain,
            IncomingPublish::V5(p) => p.retain,
        }
    }
}

/// What the endpoint reacts to; everything else is [`Event::Other`].
pub(crate) enum Event {
    /// The broker accepted the connection (a new one after every loss).
    /// MQTT 5 brokers may announce the largest packet they take; rumqttc
    /// ends the connection rather than write a larger one.
    ConnAck {
        broker_max_packet: Option<usize>,
        /// How many QoS 1 and 2 publishes may await their acks at once: the
        /// MQTT 5 Receive Maximum, when the broker sent one (rumqttc keeps
        /// the previous one when it did not).
        window: Option<u16>,
    },
    Publish(IncomingPublish),
    /// The answer to our oldest UNSUBSCRIBE still unanswered.
    UnsubAck,
    /// The answer to our SUBSCRIBE: the positions of the refused filters.
    SubAck {
        refused: Vec<usize>,
    },
    /// An MQTT 5 broker refused one of our publishes in its PUBACK or
    /// PUBREC (e.g. not authorized, quota exceeded), or ended its QoS 2
    /// handshake with a failed PUBCOMP.
    PublishRefused {
        reason: String,
        /// Refused in a PUBREC or PUBCOMP: rumqttc 0.25 frees the message
        /// but not its place in the in-flight window, which stays taken
        /// until the connection ends.
        holds_window_slot: bool,
    },
    /// Anything else: acks, pings, outgoing progress.
    Other,
}

/// The event loop of either protocol. Only the endpoint's driver task owns it.
pub(crate) enum Connection {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

impl Connection {
    /// The next event; after an `Err` the next call reconnects (with no
    /// delay of its own, so the caller waits first).
    pub async fn poll(&mut self) -> Result<Event, PollError> {
        match self {
            Connection::V311(eventloop) => {
                use rumqttc::{Event as E, Packet};
                let event = eventloop.poll().await.map_err(|e| PollError {
                    oversized_incoming: matches!(
                        e,
                        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                            rumqttc::Error::PayloadSizeLimitExceeded(_)
                        ))
                    ),
                    reason: e.to_string(),
                })?;
                Ok(match event {
                    E::Incoming(Packet::ConnAck(_)) => {
                        Event::ConnAck { broker_max_packet: None, window: None }
                    }
                    E::Incoming(Packet::Publish(p)) => Event::Publish(IncomingPublish::V311(p)),
                    E::Incoming(Packet::UnsubAck(_)) => Event::UnsubAck,
                    E::Incoming(Packet::SubAck(ack)) => Event::SubAck {
                        refused: ack
                            .return_codes
                            .iter()
                            .enumerate()
                            .filter(|(_, code)| {
                                !matches!(code, rumqttc::SubscribeReasonCode::Success(_))
                            })
                            .map(|(index, _)| index)
                            .collect(),
                    },
                    _ => Event::Other,
                })
            }
            Connection::V5(eventloop) => {
                use v5::Event as E;
                use v5::mqttbytes::v5::{
                    Packet, PubAckReason, PubCompReason, PubRecReason, SubscribeReasonCode,
                };
                let event = eventloop.poll().await.map_err(|e| PollError {
                    oversized_incoming: matches!(
                        e,
                        v5::ConnectionError::MqttState(v5::StateError::Deserialization(
                            v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }
                        ))
                    ),
                    reason: e.to_string(),
                })?;
                Ok(match event {
                    E::Incoming(Packet::ConnAck(ack)) => {
                        let properties = ack.properties.as_ref();
                        Event::ConnAck {
                            broker_max_packet: properties
                                .and_then(|p| p.max_packet_size)
                                .map(|max| max as usize),
                            window: properties.and_then(|p| p.receive_max),
                        }
                    }
                    E::Incoming(Packet::Publish(p)) => Event::Publish(IncomingPublish::V5(p)),
                    E::Incoming(Packet::UnsubAck(_)) => Event::UnsubAck,
                    E::Incoming(Packet::PubAck(ack))
                        if !matches!(
                            ack.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        ) =>
                    {
                        Event::PublishRefused {
                            reason: format!("{:?}", ack.reason),
                            holds_window_slot: false,
                        }
                    }
                    E::Incoming(Packet::PubRec(rec))
                        if !matches!(
                            rec.reason,
                            PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                        ) =>
                    {
                        Event::PublishRefused {
                            reason: format!("{:?}", rec.reason),
                            holds_window_slot: true,
                        }
                    }
                    // The broker did not know the packet id of our PUBREL
                    // (e.g. one sent again on a kept session).
                    E::Incoming(Packet::PubComp(comp)) if comp.reason != PubCompReason::Success => {
                        Event::PublishRefused {
                            reason: format!("PUBCOMP {:?}", comp.reason),
                            holds_window_slot: true,
                        }
                    }
                    E::Incoming(Packet::SubAck(ack)) => Event::SubAck {
                        refused: ack
                            .return_codes
                            .iter()
                            .enumerate()
                            .filter(|(_, code)| !matches!(code, SubscribeReasonCode::Success(_)))
                            .map(|(index, _)| index)
                            .collect(),
                    },
                    _ => Event::Other,
                })
            }
        }
    }

    /// Takes the publishes rumqttc set aside when the connection broke
    /// (unacknowledged ones and those still in its request channel). It
    /// would drop them on a reconnect without a stored session, so the
    /// endpoint queues them again itself.
    ///
    /// PUBRELs (QoS 2 publishes the broker has taken, awaiting their last
    /// step) stay with rumqttc, which sends them again when the broker kept
    /// the session; their count comes back second, since with a new session
    /// the broker may have dropped those messages. Other requests
    /// (subscribes, acks) are dropped: the endpoint renews them after every
    /// CONNACK.
    pub fn take_unsent(&mut self) -> (Vec<Queued>, usize) {
        /// What becomes of one request rumqttc set aside.
        enum Unsent<R> {
            Publish(Queued),
            Release(R),
            Drop,
        }
        fn split<R>(
            pending: &mut std::collections::VecDeque<R>,
            sort: impl Fn(R) -> Unsent<R>,
        ) -> (Vec<Queued>, usize) {
            let mut publishes = Vec::new();
            let mut releases = std::collections::VecDeque::new();
            for request in pending.drain(..) {
                match sort(request) {
                    Unsent::Publish(queued) => publishes.push(queued),
                    Unsent::Release(release) => releases.push_back(release),
                    Unsent::Drop => {}
                }
            }
            let count = releases.len();
            *pending = releases;
            (publishes, count)
        }
        match self {
            Connection::V311(eventloop) => split(&mut eventloop.pending, |request| match request {
                rumqttc::Request::PubRel(_) => Unsent::Release(request),
                other => queued_v311(other).map_or(Unsent::Drop, Unsent::Publish),
            }),
            Connection::V5(eventloop) => split(&mut eventloop.pending, |request| match request {
                v5::Request::PubRel(_) => Unsent::Release(request),
                other => queued_v5(other).map_or(Unsent::Drop, Unsent::Publish),
            }),
        }
    }

    /// At a forced stop: the publishes rumqttc still holds (unacknowledged,
    /// or not yet written), so that the caller can count them as dropped.
    /// Availability and DISCONNECT requests are not publishes of ours.
    pub fn abandon(&mut self) -> Vec<Queued> {
        self.drop_now();
        self.take_unsent().0
    }

    /// Ends the connection at once, without a DISCONNECT (so the broker
    /// publishes the last will); the next `poll` reconnects. Whatever is in
    /// rumqttc's request channel moves to its pending list, for
    /// `take_unsent`; on a connection already ended that is all it does.
    pub fn drop_now(&mut self) {
        match self {
            Connection::V311(eventloop) => eventloop.clean(),
            Connection::V5(eventloop) => eventloop.clean(),
        }
    }

    /// Puts a DISCONNECT ahead of everything rumqttc has not written yet.
    /// Its list of pending requests goes out first, whatever the in-flight
    /// window; its request channel waits while the window is full.
    pub fn disconnect_next(&mut self) {
        match self {
            Connection::V311(eventloop) => {
                eventloop.pending.push_front(rumqttc::Request::Disconnect(rumqttc::Disconnect));
            }
            Connection::V5(eventloop) => eventloop.pending.push_front(v5::Request::Disconnect),
        }
    }

    /// Replaces the credentials used by the next connection attempt.
    pub fn set_credentials(&mut self, username: &str, password: &str) {
        match self {
            Connection::V311(eventloop) => {
                eventloop.mqtt_options.set_credentials(username, password);
            }
            Connection::V5(eventloop) => {
                eventloop.options.set_credentials(username, password);
            }
        }
    }
}

/// Everything rumqttc needs besides the validated config.
pub(crate) struct Setup {
    pub tls: Option<rustls::ClientConfig>,
    pub password: Option<String>,
    /// The request channel's capacity.
    pub capacity: usize,
    /// rumqttc's own packet limit, above the endpoint's `max_packet_bytes`.
    pub hard_packet_limit: usize,
}

/// rumqttc leaves Nagle's algorithm on, so a publish that follows another
/// within a round trip waits in the kernel for the broker's ACK (up to a
/// delayed-ACK timeout). A bridge feeding live control data wants every
/// message on the wire at once.
fn network_options() -> rumqttc::NetworkOptions {
    let mut options = rumqttc::NetworkOptions::new();
    options.set_tcp_nodelay(true);
    options
}

/// Why polling the connection failed.
#[derive(Debug)]
pub(crate) struct PollError {
    pub reason: String,
    /// An incoming packet was over the hard packet limit. rumqttc can only
    /// end the connection over it; a retained one comes back after every
    /// reconnect.
    pub oversized_incoming: bool,
}

/// Builds the client and its event loop; nothing connects until the event
/// loop is polled.
pub(crate) fn build(config: &MqttConfig, setup: Setup) -> (Client, Connection) {
    let transport = setup.tls.map(|tls| {
        rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls)))
    });
    let password = setup.password.unwrap_or_default();
    match config.protocol {
        MqttProtocol::V311 => {
            let mut options =
                rumqttc::MqttOptions::new(&config.client_id, &config.host, config.port);
            options
                .set_keep_alive(config.keepalive)
                .set_clean_session(config.clean_session)
                .set_max_packet_size(setup.hard_packet_limit, setup.hard_packet_limit)
                .set_request_channel_capacity(setup.capacity);
            if let Some(username) = &config.username {
                options.set_credentials(username, password);
            }
            if let Some(topic) = &config.availability_topic {
                options.set_last_will(rumqttc::LastWill::new(
                    topic,
                    super::OFFLINE,
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, setup.capacity);
            eventloop.set_network_options(network_options());
            (Client::V311(client), Connection::V311(Box::new(eventloop)))
        }
        MqttProtocol::V5 => {
            let mut options = v5::MqttOptions::new(&config.client_id, &config.host, config.port);
            // The limit goes to the broker in CONNECT, so it drops larger
            // messages for us instead of ending the connection over them.
            let limit = u32::try_from(setup.hard_packet_limit).unwrap_or(u32::MAX);
            options
                .set_keep_alive(config.keepalive)
                .set_clean_start(config.clean_session)
                .set_max_packet_size(Some(limit))
                .set_request_channel_capacity(setup.capacity);
            if !config.clean_session {
                // MQTT 5 ends a session at the disconnect unless told
                // otherwise; `clean_session = false` asks for what 3.1.1
                // gives, a session the broker keeps (0xFFFFFFFF: never
                // expires; the broker may cap it).
                options.set_session_expiry_interval(Some(u32::MAX));
            }
            if let Some(username) = &config.username {
                options.set_credentials(username, password);
            }
            if let Some(topic) = &config.availability_topic {
                options.set_last_will(v5::mqttbytes::v5::LastWill::new(
                    topic,
                    super::OFFLINE,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            options.set_network_options(network_options());
            let (client, eventloop) = v5::AsyncClient::new(options, setup.capacity);
            (Client::V5(client), Connection::V5(Box::new(eventloop)))
        }
    }
}
