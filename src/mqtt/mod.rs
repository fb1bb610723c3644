//! The MQTT endpoint: one client connection to a broker (MQTT 3.1.1 or 5)
//! that publishes what the router hands it and turns what arrives on the
//! subscribed filters into [`Message`]s.
//!
//! rumqttc does the protocol; this module adds what it leaves out: a
//! reconnect delay with backoff, subscriptions renewed after every CONNACK,
//! its own bounded offline queue, a retained availability topic backed by
//! the last will, and loop prevention (No Local on MQTT 5, recognised own
//! publishes on 3.1.1).
//!
//! - [`config`]: `[mqtt]` raw → validated [`MqttConfig`].
//! - [`payload`]: payload bytes ⇄ JSON values.
//! - `protocol`: the two rumqttc clients behind one surface.
//! - `outbox`: the offline queue and the memory of own publishes.
//! - `task`: the task that polls the connection and the one that takes
//!   messages from the router.
//! - `tls`: the rustls client configuration.

pub mod config;
mod outbox;
pub mod payload;
mod protocol;
mod task;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::message::{Body, Message, Refused};

pub use config::{MqttConfig, MqttProtocol, Password, RawMqtt};
pub use payload::PayloadFormat;

/// The availability payload while the bridge is connected.
pub const ONLINE: &str = "online";
/// The availability payload once it is gone (also the last will).
pub const OFFLINE: &str = "offline";

/// How long [`MqttHandle::shutdown`] waits for the final `offline` and
/// DISCONNECT to go out.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

crate::stats::counters! {
    /// Counters of the MQTT endpoint.
    pub struct MqttStats {
        /// CONNACKs received (the first connection and every reconnect).
        connections,
        /// Connection attempts that failed before a CONNACK.
        connect_failures,
        /// Publishes from the broker offered to the inbound channel.
        messages_in,
        /// Own publishes the broker sent back (MQTT 3.1.1); dropped.
        own_echoes,
        /// Incoming packets over `max_packet_bytes`; dropped.
        oversized_in,
        /// Incoming messages dropped because the inbound channel was full.
        inbound_queue_full,
        /// Publishes handed to the MQTT client for sending.
        messages_out,
        /// Held messages dropped (oldest first) because the offline queue was full.
        offline_queue_overflow,
        /// Outgoing messages that could not be published (invalid topic).
        publish_errors,
        /// Outgoing packets over `max_packet_bytes`, or over the maximum an
        /// MQTT 5 broker announced; not sent.
        oversized_out,
        /// QoS 1 and 2 publishes an MQTT 5 broker refused in its PUBACK or
        /// PUBREC (not authorized, quota exceeded, ...), or whose PUBCOMP
        /// reported a failure.
        publish_refused,
        /// QoS 2 publishes in their last handshake step (PUBREL sent, no
        /// PUBCOMP yet) when the connection broke: delivered if the broker
        /// kept the session, possibly dropped by the broker if not.
        qos2_in_doubt,
        /// Connections ended on purpose because refused QoS 2 publishes
        /// held the whole in-flight window, which rumqttc frees only on a
        /// new connection.
        window_renewals,
        /// Filters the broker refused, or SUBSCRIBEs that could not be queued.
        subscribe_failures,
        /// Messages still held, or sent but not confirmed, when the endpoint
        /// stopped before the broker closed the connection.
        shutdown_dropped,
    }
}

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum QoS {
    /// 0: fire and forget.
    #[default]
    AtMostOnce,
    /// 1: acknowledged, may arrive twice.
    AtLeastOnce,
    /// 2: acknowledged in two steps, arrives once.
    ExactlyOnce,
}

impl QoS {
    /// The QoS for the number users write (0, 1 or 2).
    pub fn from_level(level: u8) -> Option<QoS> {
        match level {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// 0, 1 or 2.
    pub fn level(self) -> u8 {
        match self {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
        }
    }
}

impl TryFrom<u8> for QoS {
    /// The number that is not a QoS.
    type Error = u8;

    fn try_from(level: u8) -> Result<Self, Self::Error> {
        QoS::from_level(level).ok_or(level)
    }
}

/// A message for the broker, resolved by the router.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttOut {
    pub topic: String,
    pub body: Body,
    pub qos: QoS,
    pub retain: bool,
    pub format: PayloadFormat,
}

/// A topic filter the endpoint subscribes after every CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// May use `+` and `#`.
    pub filter: String,
    pub qos: QoS,
}

/// The state of the broker connection, as the rest of the program sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttLinkState {
    /// Opening the connection, or waiting for the broker to answer our
    /// subscriptions.
    Connecting,
    /// Connected and subscribed: incoming messages flow.
    Connected,
    /// Lost or failed (or shut down, with `retry_in` zero); the next
    /// attempt comes after `retry_in`.
    Disconnected { reason: String, retry_in: Duration },
}

/// Why the endpoint could not be set up. An unreachable broker is not one
/// of these: it is retried.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("MQTT TLS setup (mqtt.ca_file, mqtt.client_cert, mqtt.client_key): {0}")]
    Tls(String),
    #[error("mqtt.password_file: cannot read {path}: {source}")]
    ReadFile { path: std::path::PathBuf, source: std::io::Error },
    #[error("`{0}` is not a valid MQTT topic filter")]
    InvalidFilter(String),
    #[error("invalid MQTT settings: {0}")]
    Invalid(String),
}

/// Starts MQTT endpoints.
pub struct MqttEndpoint;

impl MqttEndpoint {
    /// Starts the client task; never fails on an unreachable broker (that is
    /// just a retry). Must be called inside a Tokio runtime.
    ///
    /// Incoming publishes go to `inbound` without waiting: when it is full
    /// they are counted and dropped. Cancelling `shutdown` stops at once and
    /// drops the connection without a DISCONNECT, so the broker publishes
    /// the last will; [`MqttHandle::shutdown`] is the clean way out.
    pub fn start(
        config: MqttConfig,
        subscriptions: Vec<Subscription>,
        inbound: mpsc::Sender<Message>,
        shutdown: CancellationToken,
    ) -> Result<MqttHandle, MqttError> {
        task::check(&config, &subscriptions)?;
        let subscriptions = config::without_covered(subscriptions);
        let tls = if config.tls { Some(tls::client_config(&config)?) } else { None };
        let password = task::read_password(&config)?;
        let stats = Arc::new(MqttStats::default());
        let (link_tx, link_rx) = watch::channel(MqttLinkState::Connecting);
        let stop = shutdown.child_token();
        let tokens = task::Tokens {
            stop: stop.clone(),
            closing: CancellationToken::new(),
            drained: CancellationToken::new(),
            finished: CancellationToken::new(),
        };
        let shared = task::spawn(
            config,
            task::Start { tls, password, subscriptions, inbound, link: link_tx },
            stats.clone(),
            tokens.clone(),
        );
        let inner = HandleInner { shared, stats, link: link_rx, tokens };
        Ok(MqttHandle { inner: Arc::new(inner) })
    }
}

/// The clonable handle the rest of the program uses to reach the endpoint.
#[derive(Clone)]
pub struct MqttHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    shared: Arc<task::Shared>,
    stats: Arc<MqttStats>,
    link: watch::Receiver<MqttLinkState>,
    tokens: task::Tokens,
}

impl MqttHandle {
    /// Publishes a message, or queues it while the broker is away; never
    /// blocks. The queue drops its oldest message when full (counted as
    /// `offline_queue_overflow`), so the newest state always survives. The
    /// message comes back only after [`shutdown`](Self::shutdown) began.
    pub fn send(&self, out: MqttOut) -> Result<(), Refused<MqttOut>> {
        self.inner.shared.accept(out)
    }

    /// Replaces the subscriptions on the live connection: SUBSCRIBE for new
    /// filters (or a new QoS), then UNSUBSCRIBE for those no longer wanted,
    /// no reconnect. Filters another one covers are left out (see
    /// [`config::without_covered`]). They are renewed after every CONNACK.
    pub fn set_subscriptions(&self, subscriptions: Vec<Subscription>) -> Result<(), MqttError> {
        if let Some(bad) = subscriptions.iter().find(|s| !config::valid_filter(&s.filter)) {
            return Err(MqttError::InvalidFilter(bad.filter.clone()));
        }
        self.inner.shared.set_subscriptions(config::without_covered(subscriptions));
        Ok(())
    }

    /// Follows the state of the broker connection.
    pub fn link_state(&self) -> watch::Receiver<MqttLinkState> {
        self.inner.link.clone()
    }

    pub fn stats(&self) -> &MqttStats {
        &self.inner.stats
    }

    /// Publishes `offline` to the availability topic (retained), disconnects
    /// cleanly and waits, at most [`SHUTDOWN_GRACE`], for both to go out.
    /// Messages already handed to [`send`](Self::send) go out before them.
    /// When not connected it just stops.
    pub async fn shutdown(&self) {
        let tokens = &self.inner.tokens;
        tokens.closing.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, tokens.finished.cancelled()).await;
        tokens.stop.cancel();
        // The task leaves at its next await once stopped; the bound only
        // guards against a runtime that is itself going away.
        let _ = tokio::time::timeout(Duration::from_millis(500), tokens.finished.cancelled()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_levels_round_trip() {
        for level in 0..=2 {
            assert_eq!(QoS::from_level(level).map(QoS::level), Some(level));
        }
        assert_eq!(QoS::from_level(3), None);
        assert_eq!(QoS::try_from(1), Ok(QoS::AtLeastOnce));
        assert_eq!(QoS::try_from(7), Err(7));
        assert_eq!(QoS::default(), QoS::AtMostOnce);
    }

    #[test]
    fn every_counter_is_listed_by_name() {
        let names: Vec<&str> =
            MqttStats::default().snapshot().into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"own_echoes"));
        assert!(names.contains(&"offline_queue_overflow"));
        assert!(names.contains(&"shutdown_dropped"));
        assert!(names.contains(&"publish_refused"));
        assert!(names.contains(&"qos2_in_doubt"));
        assert!(names.contains(&"window_renewals"));
        assert_eq!(names.len(), 15);
    }

    #[tokio::test]
    async fn an_invalid_subscription_filter_is_a_setup_error() {
        let (inbound, _rx) = mpsc::channel(1);
        let result = MqttEndpoint::start(
            MqttConfig::new("127.0.0.1", 1).with_client_id("setup-test"),
            vec![Subscription { filter: "a/#/b".into(), qos: QoS::AtMostOnce }],
            inbound,
            CancellationToken::new(),
        );
        assert!(matches!(result, Err(MqttError::InvalidFilter(f)) if f == "a/#/b"));
    }

    #[tokio::test]
    async fn a_keepalive_rumqttc_would_refuse_is_a_setup_error() {
        let (inbound, _rx) = mpsc::channel(1);
        let mut config = MqttConfig::new("127.0.0.1", 1).with_client_id("setup-test");
        config.protocol = MqttProtocol::V5;
        config.keepalive = Duration::from_secs(1);
        let result = MqttEndpoint::start(config, Vec::new(), inbound, CancellationToken::new());
        assert!(matches!(result, Err(MqttError::Invalid(_))));
    }

    #[tokio::test]
    async fn an_unreachable_broker_is_retried_not_an_error() {
        // Bound and never listening: the port refuses connections at once,
        // and nobody else can take it while the test runs.
        let closed = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        closed.bind(([127, 0, 0, 1], 0).into()).expect("bind a loopback port");
        let port = closed.local_addr().expect("bound").port();
        let (inbound, _rx) = mpsc::channel(1);
        let mut config = MqttConfig::new("127.0.0.1", port).with_client_id("retry-test");
        config.reconnect_delay = Duration::from_millis(50);
        config.reconnect_max_delay = Duration::from_millis(50);
        let shutdown = CancellationToken::new();
        let handle = MqttEndpoint::start(config, Vec::new(), inbound, shutdown.clone())
            .expect("an unreachable broker is not a setup error");
        let mut link = handle.link_state();
        let state = tokio::time::timeout(
            Duration::from_secs(10),
            link.wait_for(|s| matches!(s, MqttLinkState::Disconnected { .. })),
        )
        .await
        .expect("a failed attempt within 10 s")
        .expect("endpoint alive")
        .clone();
        assert!(
            matches!(&state, MqttLinkState::Disconnected { retry_in, .. } if *retry_in == Duration::from_millis(50)),
            "{state:?}"
        );
        tokio::time::timeout(Duration::from_secs(10), async {
            while crate::stats::get(&handle.stats().connect_failures) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("a second attempt after the delay");
        handle.shutdown().await;
        assert!(
            handle
                .send(MqttOut {
                    topic: "t".into(),
                    body: Body::Trigger,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    format: PayloadFormat::Auto,
                })
                .is_err()
        );
    }
}
