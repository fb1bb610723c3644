//! The endpoint's tasks and what they share with its handles.
//!
//! - The driver owns the rumqttc event loop and is the only one to poll it:
//!   it waits between attempts (rumqttc retries at once), renews the
//!   subscriptions and `online` after every CONNACK, flushes the offline
//!   queue, and turns incoming publishes into messages.
//! - A handle's `send` encodes an [`MqttOut`] on the caller's task and
//!   publishes it, or queues it in the drop-oldest outbox while the broker
//!   is away, so a burst keeps the newest messages, not the oldest.
//! - A small task waits for shutdown to stop accepting and close cleanly.
//!
//! Nothing awaits the rumqttc client: every request is a `try_*` into its
//! bounded channel, so a full channel never blocks the task that would have
//! to drain it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::{MQTT_MAX_PACKET_BYTES, MqttConfig, MqttProtocol, Password, valid_filter};
use super::outbox::{Outbox, Submitted};
use super::protocol::{self, Client, Connection, Event, IncomingPublish, Queued, Setup};
use super::{
    MqttError, MqttLinkState, MqttOut, MqttStats, OFFLINE, ONLINE, QoS, Subscription, payload,
};
use crate::message::{Message, Refused, SourceKind};
use crate::sc::backoff::{Backoff, ReconnectPolicy};

/// rumqttc ends the connection over a packet above its own limit; above
/// `max_packet_bytes` and up to this the endpoint counts and drops instead.
const HARD_PACKET_FLOOR: usize = 16 * 1024 * 1024;

/// The smallest request channel for rumqttc; it holds a SUBSCRIBE, the
/// availability publish and a whole flushed offline queue at once.
const MIN_REQUEST_CAPACITY: usize = 1024;

/// The fixed header, topic length, packet id and MQTT 5 property length
/// around a topic and payload, at their largest.
const PUBLISH_OVERHEAD: usize = 1 + 4 + 2 + 2 + 1;

fn packet_size(topic: &str, payload: &[u8]) -> usize {
    PUBLISH_OVERHEAD + topic.len() + payload.len()
}

/// Cancellation points shared by the handle and the two tasks.
#[derive(Clone)]
pub(crate) struct Tokens {
    /// Stop now (the caller's shutdown token, or the end of the grace time).
    pub stop: CancellationToken,
    /// `shutdown()` was called.
    pub closing: CancellationToken,
    /// Closing has begun: nothing more is accepted. When connected, the
    /// driver still sends what is queued, then `offline` + DISCONNECT, and
    /// goes on until the broker closes; when not, it stops.
    pub drained: CancellationToken,
    /// The driver has ended.
    pub finished: CancellationToken,
}

/// What the tasks need besides the config.
pub(crate) struct Start {
    pub tls: Option<rustls::ClientConfig>,
    pub password: Option<String>,
    pub subscriptions: Vec<Subscription>,
    pub inbound: mpsc::Sender<Message>,
    pub link: watch::Sender<MqttLinkState>,
}

/// Refuses, before anything starts, what would make rumqttc panic or what
/// the broker would refuse on every attempt.
pub(crate) fn check(config: &MqttConfig, subscriptions: &[Subscription]) -> Result<(), MqttError> {
    if let Some(bad) = subscriptions.iter().find(|s| !valid_filter(&s.filter)) {
        return Err(MqttError::InvalidFilter(bad.filter.clone()));
    }
    let keepalive = config.keepalive;
    let keepalive_ok = match config.protocol {
        MqttProtocol::V311 => keepalive.is_zero() || keepalive >= Duration::from_secs(1),
        MqttProtocol::V5 => keepalive >= Duration::from_secs(5),
    } && keepalive.as_secs() <= u64::from(u16::MAX);
    if !keepalive_ok {
        return Err(MqttError::Invalid(format!(
            "keepalive {keepalive:?} is out of range for protocol {:?}",
            config.protocol
        )));
    }
    if config.client_id.is_empty() {
        return Err(MqttError::Invalid("the client id is empty".into()));
    }
    if config.queue_size == 0 {
        return Err(MqttError::Invalid("queue_size must be at least 1".into()));
    }
    if config.reconnect_delay.is_zero() {
        return Err(MqttError::Invalid("the reconnect delay must not be zero".into()));
    }
    Ok(())
}

/// The password, read from its file if it has one (trailing newline removed).
pub(crate) fn read_password(config: &MqttConfig) -> Result<Option<String>, MqttError> {
    match &config.password {
        None => Ok(None),
        Some(Password::Inline(secret)) => Ok(Some(secret.0.clone())),
        Some(Password::File(path)) => std::fs::read_to_string(path)
            .map(|text| Some(text.trim_end_matches(['\r', '\n']).to_owned()))
            .map_err(|source| MqttError::ReadFile { path: path.clone(), source }),
    }
}

/// Starts the driver and the task that closes cleanly on shutdown; returns
/// what the handles submit to.
pub(crate) fn spawn(
    config: MqttConfig,
    start: Start,
    stats: Arc<MqttStats>,
    tokens: Tokens,
) -> Arc<Shared> {
    let Start { tls, password, subscriptions, inbound, link } = start;
    let hard_packet_limit = config
        .max_packet_bytes
        .saturating_add(1024)
        .clamp(HARD_PACKET_FLOOR, MQTT_MAX_PACKET_BYTES);
    let capacity = config.queue_size.saturating_add(16).max(MIN_REQUEST_CAPACITY);
    let (client, connection) =
        protocol::build(&config, Setup { tls, password, capacity, hard_packet_limit });
    let shared = Arc::new(Shared {
        client,
        outbox: Mutex::new(Outbox::new(config.queue_size, config.protocol == MqttProtocol::V311)),
        stats,
        availability: config.availability_topic.clone(),
        max_packet_bytes: config.max_packet_bytes,
        broker_max_packet: AtomicUsize::new(usize::MAX),
        accepting: std::sync::atomic::AtomicBool::new(true),
        subscriptions: Mutex::new(Subscriptions {
            current: subscriptions,
            subacks: VecDeque::new(),
            unanswered_unsubscribes: VecDeque::new(),
            unsubscribe_on_connect: Vec::new(),
        }),
    });
    tokio::spawn(close_when_asked(shared.clone(), tokens.clone()));
    let driver = Driver {
        connection,
        shared: shared.clone(),
        inbound,
        link,
        backoff: Backoff::new(ReconnectPolicy {
            delay: config.reconnect_delay,
            multiplier: 2.0,
            jitter: 0.0,
            max_delay: config.reconnect_max_delay.max(config.reconnect_delay),
        }),
        broker: format!("{}:{}", config.host, config.port),
        config,
        tokens,
        window: Window::new(u16::MAX),
    };
    tokio::spawn(driver.run());
    shared
}

/// What the handles and both tasks use.
pub(crate) struct Shared {
    client: Client,
    outbox: Mutex<Outbox>,
    stats: Arc<MqttStats>,
    availability: Option<String>,
    max_packet_bytes: usize,
    /// The largest packet the broker said it takes, in its last CONNACK
    /// (MQTT 5 only; unlimited until then).
    broker_max_packet: AtomicUsize,
    /// Cleared on shutdown, so nothing is accepted after `offline`.
    accepting: std::sync::atomic::AtomicBool,
    /// Locked after `outbox` where both are needed: the outbox knows
    /// whether the connection is up.
    subscriptions: Mutex<Subscriptions>,
}

/// The subscriptions in force (renewed after every CONNACK), and the
/// filters of each SUBSCRIBE awaiting its SUBACK, oldest first, so that a
/// refusal can be named.
struct Subscriptions {
    current: Vec<Subscription>,
    subacks: VecDeque<Vec<String>>,
    /// Filters whose UNSUBSCRIBE rumqttc took and the broker has not
    /// answered yet, oldest first (the broker answers in order).
    unanswered_unsubscribes: VecDeque<String>,
    /// Filters to unsubscribe after the next CONNACK: dropped while
    /// disconnected, or unanswered when a connection ended. A broker that
    /// kept the session (`clean_session = false`) still has them.
    unsubscribe_on_connect: Vec<String>,
}

impl Subscriptions {
    /// Sends one UNSUBSCRIBE per filter; those the channel cannot take wait
    /// for the next CONNACK. Returns whether all were queued.
    fn unsubscribe(&mut self, client: &Client, filters: Vec<String>) -> bool {
        let queued = client.try_unsubscribe(&filters);
        let all = queued == filters.len();
        let mut filters = filters.into_iter();
        self.unanswered_unsubscribes.extend(filters.by_ref().take(queued));
        for filter in filters {
            self.keep_for_next_connection(filter);
        }
        all
    }

    /// The broker answered the oldest unanswered UNSUBSCRIBE.
    fn unsubscribe_answered(&mut self) {
        self.unanswered_unsubscribes.pop_front();
    }

    /// The connection ended: what the broker may not have read is sent
    /// again after the next CONNACK.
    fn connection_ended(&mut self) {
        while let Some(filter) = self.unanswered_unsubscribes.pop_front() {
            self.keep_for_next_connection(filter);
        }
    }

    fn keep_for_next_connection(&mut self, filter: String) {
        let wanted_again = self.current.iter().any(|s| s.filter == filter);
        if !wanted_again && !self.unsubscribe_on_connect.contains(&filter) {
            self.unsubscribe_on_connect.push(filter);
        }
    }
}

impl Shared {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // The outbox holds no invariant a panic elsewhere could break
        // halfway, so a poisoned lock is still usable.
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn subscriptions(&self) -> MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes everything, after a CONNACK: `None` when there is
    /// nothing to subscribe, else whether the SUBSCRIBE was queued. The
    /// caller holds the outbox.
    fn subscribe_all(&self) -> Option<bool> {
        let mut subscriptions = self.subscriptions();
        subscriptions.subacks.clear();
        let stale = std::mem::take(&mut subscriptions.unsubscribe_on_connect);
        if !stale.is_empty() && !subscriptions.unsubscribe(&self.client, stale) {
            crate::stats::bump(&self.stats.subscribe_failures);
            let waiting = &subscriptions.unsubscribe_on_connect;
            tracing::warn!(
                ?waiting,
                "MQTT UNSUBSCRIBE of filters the broker may still hold could not be queued; tried again after the next reconnect"
            );
        }
        if subscriptions.current.is_empty() {
            return None;
        }
        let queued = self.client.try_subscribe(&subscriptions.current);
        if queued {
            let filters = subscriptions.current.iter().map(|s| s.filter.clone()).collect();
            subscriptions.subacks.push_back(filters);
        }
        Some(queued)
    }

    /// Replaces the subscriptions. On a live connection only the
    /// difference goes out, on the caller's task: SUBSCRIBE, then
    /// UNSUBSCRIBE. Otherwise the next CONNACK subscribes them all.
    pub(crate) fn set_subscriptions(&self, wanted: Vec<Subscription>) {
        let outbox = self.outbox();
        let mut subscriptions = self.subscriptions();
        if outbox.connected && !outbox.closing {
            let current = &subscriptions.current;
            let removed: Vec<String> = current
                .iter()
                .filter(|old| !wanted.iter().any(|new| new.filter == old.filter))
                .map(|old| old.filter.clone())
                .collect();
            let added: Vec<Subscription> =
                wanted.iter().filter(|new| !current.contains(new)).cloned().collect();
            // SUBSCRIBE first: when `a/#` gives way to `a/b`, the broker
            // must never be without a filter for `a/b`.
            if !added.is_empty() {
                if self.client.try_subscribe(&added) {
                    subscriptions
                        .subacks
                        .push_back(added.iter().map(|s| s.filter.clone()).collect());
                } else {
                    crate::stats::bump(&self.stats.subscribe_failures);
                    tracing::warn!("MQTT SUBSCRIBE could not be queued");
                }
            }
            let removed_count = removed.len();
            if !removed.is_empty() && !subscriptions.unsubscribe(&self.client, removed) {
                crate::stats::bump(&self.stats.subscribe_failures);
                let waiting = &subscriptions.unsubscribe_on_connect;
                tracing::warn!(
                    ?waiting,
                    "MQTT UNSUBSCRIBE could not be queued; tried again after the next reconnect"
                );
            }
            tracing::info!(
                added = added.len(),
                removed = removed_count,
                "MQTT subscriptions changed on the live connection"
            );
        } else {
            let Subscriptions { current, unsubscribe_on_connect, .. } = &mut *subscriptions;
            for old in current.iter() {
                let kept = wanted.iter().any(|new| new.filter == old.filter);
                if !kept && !unsubscribe_on_connect.contains(&old.filter) {
                    unsubscribe_on_connect.push(old.filter.clone());
                }
            }
        }
        // Wanted again: the next CONNACK subscribes it, and must not
        // unsubscribe it first.
        subscriptions
            .unsubscribe_on_connect
            .retain(|filter| !wanted.iter().any(|new| &new.filter == filter));
        subscriptions.current = wanted;
    }

    /// Takes a message from a handle, on the caller's task: published at once
    /// when connected, else queued in the drop-oldest outbox. Refused (handed
    /// back) only once shutdown has begun.
    pub(crate) fn accept(&self, out: MqttOut) -> Result<(), Refused<MqttOut>> {
        if !self.accepting.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Refused::ShuttingDown(out));
        }
        self.submit(out);
        Ok(())
    }

    /// Encodes a message from the router and publishes or queues it.
    fn submit(&self, out: MqttOut) {
        if !super::config::valid_topic(&out.topic) {
            if let Some(count) = crate::stats::bump_loggable(&self.stats.publish_errors) {
                tracing::warn!(count, topic = %out.topic, "MQTT message to an invalid topic dropped");
            }
            return;
        }
        let payload = payload::encode(&out.body, out.format);
        let size = packet_size(&out.topic, &payload);
        if size > self.outgoing_limit() {
            self.oversized(&out.topic, size);
            return;
        }
        let message = Queued { topic: out.topic, payload, qos: out.qos, retain: out.retain };
        let mut outbox = self.outbox();
        let outcome = outbox.submit(message, Instant::now(), &mut |m| self.client.try_publish(m));
        match outcome {
            Submitted::Published => crate::stats::bump(&self.stats.messages_out),
            Submitted::Queued { dropped_oldest } => self.overflowed(dropped_oldest),
            Submitted::Lost => self.lost(1),
        }
    }

    /// The largest publish that may go out: ours, or the broker's if smaller.
    fn outgoing_limit(&self) -> usize {
        self.max_packet_bytes.min(self.broker_max_packet.load(Ordering::Relaxed))
    }

    /// Counts and names a publish too large to send.
    fn oversized(&self, topic: &str, size: usize) {
        if let Some(count) = crate::stats::bump_loggable(&self.stats.oversized_out) {
            let broker_max = self.broker_max_packet.load(Ordering::Relaxed);
            if broker_max < self.max_packet_bytes {
                tracing::warn!(
                    count,
                    topic,
                    size,
                    broker_max,
                    "MQTT message over the broker's maximum packet size not sent"
                );
            } else {
                tracing::warn!(
                    count,
                    topic,
                    size,
                    max = self.max_packet_bytes,
                    "MQTT message over max_packet_bytes not sent"
                );
            }
        }
    }

    /// Hands the offline queue to rumqttc, as far as it takes it.
    fn flush(&self, outbox: &mut Outbox) {
        if outbox.queued() == 0 || !outbox.connected {
            return;
        }
        let (sent, lost) = outbox.flush(Instant::now(), &mut |m| self.client.try_publish(m));
        for _ in 0..sent {
            crate::stats::bump(&self.stats.messages_out);
        }
        self.lost(lost);
    }

    /// Publishes an availability payload, retained, outside the queue: it
    /// only makes sense on the connection it is sent on.
    fn announce(&self, outbox: &mut Outbox, payload: &str) {
        if let Some(topic) = &self.availability {
            let message = Queued {
                topic: topic.clone(),
                payload: payload.as_bytes().to_vec(),
                qos: QoS::AtLeastOnce,
                retain: true,
            };
            if outbox.publish(message, Instant::now(), &mut |m| self.client.try_publish(m)).is_err()
            {
                tracing::warn!(%topic, payload, "MQTT availability could not be queued");
            }
        }
    }

    /// `offline` and DISCONNECT, once, on a live connection, behind every
    /// message accepted before: while rumqttc's channel cannot take the rest
    /// of the queue, this waits for the driver's next call.
    fn close(&self, outbox: &mut Outbox) {
        if outbox.close_sent || !outbox.connected {
            return;
        }
        self.flush(outbox);
        if outbox.queued() > 0 {
            return;
        }
        self.announce(outbox, OFFLINE);
        if !self.client.try_disconnect() {
            tracing::warn!(
                "MQTT DISCONNECT could not be queued; the broker will see the connection drop"
            );
        }
        outbox.close_sent = true;
    }

    fn overflowed(&self, dropped: usize) {
        for _ in 0..dropped {
            if let Some(count) = crate::stats::bump_loggable(&self.stats.offline_queue_overflow) {
                tracing::warn!(count, "MQTT offline queue full: oldest message dropped");
            }
        }
    }

    fn lost(&self, lost: usize) {
        for _ in 0..lost {
            if let Some(count) = crate::stats::bump_loggable(&self.stats.publish_errors) {
                tracing::warn!(count, "MQTT client refused a publish without giving it back");
            }
        }
    }
}

/// Waits for shutdown; then refuses new messages (so every accepted one is
/// published ahead of `offline`) and asks for the clean close.
async fn close_when_asked(shared: Arc<Shared>, tokens: Tokens) {
    tokio::select! {
        biased;
        _ = tokens.stop.cancelled() => return,
        _ = tokens.closing.cancelled() => {}
    }
    shared.accepting.store(false, std::sync::atomic::Ordering::Release);
    {
        let mut outbox = shared.outbox();
        outbox.closing = true;
        shared.close(&mut outbox);
    }
    tokens.drained.cancel();
}

/// The task that polls the connection.
struct Driver {
    connection: Connection,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Message>,
    link: watch::Sender<MqttLinkState>,
    backoff: Backoff,
    broker: String,
    config: MqttConfig,
    tokens: Tokens,
    window: Window,
}

/// rumqttc's in-flight window on the current connection, as far as refused
/// QoS 2 publishes have used it up.
///
/// rumqttc 0.25 keeps the slot of a QoS 2 publish the broker refused in its
/// PUBREC or PUBCOMP (an ACL, a quota) until the connection ends, and takes
/// no request from its channel while every slot is taken: with Mosquitto's
/// Receive Maximum of 20, twenty refusals would silence the connection for
/// good. When the refusals hold the whole window, no other publish is in
/// flight (these are the only slots rumqttc loses), so the channel stands
/// still. The driver then puts a DISCONNECT ahead of it (a clean one: no
/// last will), takes back what the channel held when the broker closes,
/// and reconnects at once with an empty window.
///
/// While the endpoint is closing, the connection is dropped instead: if the
/// reconnect that finishes the close fails, the last will still says
/// `offline`.
struct Window {
    size: u16,
    held: u16,
    renewal: Renewal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    None,
    /// Our DISCONNECT is on its way; the broker's close ends the connection.
    Disconnecting,
    /// The connection ended for the renewal; the next attempt is at once.
    Reconnecting,
}

impl Window {
    fn new(size: u16) -> Self {
        Window { size: size.max(1), held: 0, renewal: Renewal::None }
    }

    /// One more slot held; whether the connection must now be renewed.
    fn slot_held(&mut self) -> bool {
        self.held = self.held.saturating_add(1);
        if self.held >= self.size && self.renewal == Renewal::None {
            self.renewal = Renewal::Disconnecting;
            return true;
        }
        false
    }

    /// At the end of a connection: whether it was ended for the renewal,
    /// which then reconnects at once.
    fn connection_ended(&mut self) -> bool {
        let renewing = self.renewal == Renewal::Disconnecting;
        self.renewal = if renewing { Renewal::Reconnecting } else { Renewal::None };
        renewing
    }
}

/// What the driver does after one step.
enum Next {
    Continue,
    Stop,
}

impl Driver {
    async fn run(self) {
        // Marks the end even on a panic, and only once `drive` has dropped
        // the connection (and with it the socket).
        let _finished = self.tokens.finished.clone().drop_guard();
        self.drive().await;
    }

    async fn drive(mut self) {
        let mut connected = false;
        let mut awaiting_suback = false;
        loop {
            let polled = tokio::select! {
                biased;
                _ = self.tokens.stop.cancelled() => break,
                // A renewal under way when closing began reconnects, so that
                // the close can send `offline` and what is still queued.
                _ = self.tokens.drained.cancelled(),
                    if !connected && self.window.renewal != Renewal::Reconnecting => break,
                polled = self.connection.poll() => polled,
            };
            let next = match polled {
                Ok(Event::ConnAck { broker_max_packet, window }) => {
                    connected = true;
                    let renewed = self.window.renewal == Renewal::Reconnecting;
                    self.window = Window::new(window.unwrap_or(self.window.size));
                    awaiting_suback = self.on_connack(broker_max_packet, renewed);
                    Next::Continue
                }
                Ok(Event::SubAck { refused }) => {
                    self.on_suback(&refused);
                    if std::mem::take(&mut awaiting_suback) {
                        self.link.send_replace(MqttLinkState::Connected);
                    }
                    Next::Continue
                }
                Ok(Event::UnsubAck) => {
                    self.shared.subscriptions().unsubscribe_answered();
                    Next::Continue
                }
                Ok(Event::PublishRefused { reason, holds_window_slot }) => {
                    let stats = &self.shared.stats;
                    if let Some(count) = crate::stats::bump_loggable(&stats.publish_refused) {
                        tracing::warn!(broker = %self.broker, %reason, count, "the MQTT broker refused a publish");
                    }
                    // A refusal read with the end of the previous connection
                    // comes before the next CONNACK; it held a slot there.
                    if holds_window_slot && connected && self.window.slot_held() {
                        if self.renew_connection() {
                            connected = false;
                            awaiting_suback = false;
                            self.on_error("dropped to free the in-flight window".into(), true).await
                        } else {
                            Next::Continue
                        }
                    } else {
                        Next::Continue
                    }
                }
                Ok(Event::Publish(publish)) => {
                    self.on_publish(&publish);
                    Next::Continue
                }
                // After our DISCONNECT the loop goes on until the broker
                // closes the connection: closing our end first can reset it
                // before the broker has read the DISCONNECT, and the broker
                // would then publish the last will after all.
                Ok(Event::Other) => Next::Continue,
                Err(failure) => {
                    let was_connected = std::mem::replace(&mut connected, false);
                    awaiting_suback = false;
                    if failure.oversized_incoming {
                        self.on_oversized_incoming(&failure.reason);
                    }
                    self.on_error(failure.reason, was_connected).await
                }
            };
            if let Next::Stop = next {
                break;
            }
            if connected {
                // rumqttc may have refused part of the queue while its
                // channel was full; every event means it drained some.
                let mut outbox = self.shared.outbox();
                self.shared.flush(&mut outbox);
                if outbox.closing {
                    self.shared.close(&mut outbox);
                }
            }
        }
        // Stopped before the broker closed the connection (the grace ran
        // out): what rumqttc still holds was never confirmed.
        let availability = self.shared.availability.as_ref();
        let unconfirmed =
            self.connection.abandon().iter().filter(|m| Some(&m.topic) != availability).count();
        let left = self.shared.outbox().queued() + unconfirmed;
        if left > 0 {
            crate::stats::add(&self.shared.stats.shutdown_dropped, left as u64);
            tracing::warn!(
                broker = %self.broker,
                dropped = left,
                "MQTT endpoint stopped with messages not yet sent or confirmed: dropped"
            );
        }
        self.link.send_replace(MqttLinkState::Disconnected {
            reason: "shut down".into(),
            retry_in: Duration::ZERO,
        });
        tracing::info!(broker = %self.broker, "MQTT endpoint stopped");
    }

    /// Renews the session: subscriptions, `online`, then the offline queue,
    /// in that order. Returns whether a SUBACK is awaited.
    fn on_connack(&mut self, broker_max_packet: Option<usize>, renewed: bool) -> bool {
        self.backoff.reset();
        crate::stats::bump(&self.shared.stats.connections);
        if renewed {
            // The renewal's warning (rate-limited) said it already.
            tracing::debug!(broker = %self.broker, "MQTT connected again with an empty in-flight window");
        } else {
            tracing::info!(broker = %self.broker, client_id = %self.config.client_id, ?broker_max_packet, "MQTT connected");
        }
        let shared = &self.shared;
        shared.broker_max_packet.store(broker_max_packet.unwrap_or(usize::MAX), Ordering::Relaxed);
        let mut outbox = shared.outbox();
        outbox.connected = true;
        // Queued before this CONNACK said how much the broker takes: a
        // publish over it would end the connection after every reconnect.
        let limit = shared.outgoing_limit();
        for message in outbox.take_where(|m| packet_size(&m.topic, &m.payload) > limit) {
            shared.oversized(&message.topic, packet_size(&message.topic, &message.payload));
        }
        if outbox.closing {
            self.shared.close(&mut outbox);
            return false;
        }
        let awaiting_suback = match self.shared.subscribe_all() {
            None => false,
            Some(queued) => {
                if !queued {
                    crate::stats::bump(&self.shared.stats.subscribe_failures);
                    tracing::warn!(broker = %self.broker, "MQTT SUBSCRIBE could not be queued");
                }
                queued
            }
        };
        self.shared.announce(&mut outbox, ONLINE);
        self.shared.flush(&mut outbox);
        drop(outbox);
        if !awaiting_suback {
            self.link.send_replace(MqttLinkState::Connected);
        }
        awaiting_suback
    }

    /// Ends the connection so that the next one frees the window (see
    /// [`Window`]). Returns true when it was dropped at once, false when a
    /// DISCONNECT is on its way.
    fn renew_connection(&mut self) -> bool {
        let (held, size) = (self.window.held, self.window.size);
        if let Some(count) = crate::stats::bump_loggable(&self.shared.stats.window_renewals) {
            tracing::warn!(broker = %self.broker, held, size, count, "refused QoS 2 publishes hold the whole MQTT in-flight window, which rumqttc frees only with a new connection: reconnecting");
        }
        let mut outbox = self.shared.outbox();
        if outbox.closing {
            drop(outbox);
            self.connection.drop_now();
            return true;
        }
        // New messages wait in the offline queue for the next connection
        // rather than in rumqttc's channel behind the DISCONNECT.
        outbox.connected = false;
        drop(outbox);
        self.connection.disconnect_next();
        false
    }

    /// Names and counts the filters the broker refused in the oldest
    /// SUBSCRIBE still awaiting its SUBACK.
    fn on_suback(&mut self, refused: &[usize]) {
        let filters = self.shared.subscriptions().subacks.pop_front().unwrap_or_default();
        for &index in refused {
            crate::stats::bump(&self.shared.stats.subscribe_failures);
            let filter = filters.get(index).map_or("?", String::as_str);
            tracing::warn!(broker = %self.broker, filter, "MQTT broker refused the subscription");
        }
    }

    fn on_publish(&mut self, publish: &IncomingPublish) {
        let stats = &self.shared.stats;
        let topic = publish.topic();
        let payload = publish.payload();
        let size = packet_size(&topic, payload);
        if size > self.shared.max_packet_bytes {
            if let Some(count) = crate::stats::bump_loggable(&stats.oversized_in) {
                tracing::warn!(
                    count,
                    %topic,
                    size,
                    max = self.shared.max_packet_bytes,
                    "MQTT message over max_packet_bytes dropped"
                );
            }
            return;
        }
        if self.shared.outbox().take_echo(&topic, payload, Instant::now()) {
            crate::stats::bump(&stats.own_echoes);
            return;
        }
        crate::stats::bump(&stats.messages_in);
        let message = Message::value(SourceKind::Mqtt, topic.as_ref(), payload::decode(payload))
            .retained(publish.retain());
        match self.inbound.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                if let Some(count) = crate::stats::bump_loggable(&stats.inbound_queue_full) {
                    tracing::warn!(count, topic = %message.name, "inbound queue full: MQTT message dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // Only during a stop; counted like the SocketCluster side.
                crate::stats::bump(&stats.inbound_queue_full);
                tracing::debug!("no consumer for incoming MQTT messages");
            }
        }
    }

    /// The broker sent a packet over the hard limit, which MQTT 3.1.1 gives
    /// no way to refuse: the connection ends. Said loudly, because a
    /// retained message that large comes back after every reconnect.
    fn on_oversized_incoming(&self, reason: &str) {
        if let Some(count) = crate::stats::bump_loggable(&self.shared.stats.oversized_in) {
            tracing::error!(
                broker = %self.broker,
                %reason,
                count,
                "an incoming MQTT message over the packet limit ended the connection; if it is retained it comes back after each reconnect: clear it on the broker, or use protocol = \"5\" so that the broker drops it"
            );
        }
    }

    /// After a failed attempt or a lost connection: takes back what rumqttc
    /// had not delivered, then waits before the next attempt.
    async fn on_error(&mut self, reason: String, was_connected: bool) -> Next {
        let renewing = self.window.connection_ended();
        let closing = {
            let mut outbox = self.shared.outbox();
            outbox.connected = false;
            if renewing {
                // A close begun on the dropped connection is done again on
                // the next one.
                outbox.close_sent = false;
            }
            // rumqttc emptied its request channel when the connection
            // failed, but a handle or a reload may have queued more before
            // `connected` went false just above: empty it again, so that
            // nothing of this connection's goes out ahead of the next
            // CONNACK's SUBSCRIBEs and throws their SUBACKs out of step.
            self.connection.drop_now();
            let (mut unsent, releases) = self.connection.take_unsent();
            // Counted when the connection they were sent on breaks; a failed
            // attempt after it finds the same PUBRELs still waiting.
            if releases > 0 && was_connected {
                crate::stats::add(&self.shared.stats.qos2_in_doubt, releases as u64);
                tracing::warn!(
                    broker = %self.broker,
                    count = releases,
                    "QoS 2 publishes were in their last handshake step when the connection broke; the step is repeated if the broker kept the session, else the broker may have dropped them"
                );
            }
            // Availability belongs to the connection it was sent on; the
            // next CONNACK sends a fresh `online`.
            unsent.retain(|m| Some(&m.topic) != self.shared.availability.as_ref());
            let dropped = outbox.requeue_front(unsent);
            self.shared.overflowed(dropped);
            self.shared.subscriptions().connection_ended();
            outbox.closing
        };
        if renewing {
            tracing::debug!(broker = %self.broker, %reason, "MQTT connection ended to free the in-flight window; reconnecting at once");
            self.refresh_password();
            self.link.send_replace(MqttLinkState::Connecting);
            return Next::Continue;
        }
        if closing || self.tokens.drained.is_cancelled() {
            return Next::Stop;
        }
        let retry_in = self.backoff.next_delay();
        if was_connected {
            tracing::warn!(broker = %self.broker, %reason, ?retry_in, "MQTT connection lost");
        } else if let Some(count) = crate::stats::bump_loggable(&self.shared.stats.connect_failures)
        {
            tracing::warn!(broker = %self.broker, %reason, ?retry_in, count, "MQTT connection failed");
        }
        self.link.send_replace(MqttLinkState::Disconnected { reason, retry_in });
        tokio::select! {
            biased;
            _ = self.tokens.stop.cancelled() => return Next::Stop,
            _ = self.tokens.drained.cancelled() => return Next::Stop,
            _ = tokio::time::sleep(retry_in) => {}
        }
        self.refresh_password();
        self.link.send_replace(MqttLinkState::Connecting);
        Next::Continue
    }

    /// A password file is read again before each attempt, so a rotated
    /// secret is picked up without a restart.
    fn refresh_password(&mut self) {
        if !matches!(self.config.password, Some(Password::File(_))) {
            return;
        }
        let Some(username) = self.config.username.clone() else { return };
        match read_password(&self.config) {
            Ok(Some(password)) => self.connection.set_credentials(&username, &password),
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the MQTT password file; keeping the password we had");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_estimate_covers_the_headers() {
        assert_eq!(packet_size("a/b", b"12345"), 3 + 5 + PUBLISH_OVERHEAD);
    }

    fn subscriptions(current: &[&str], unanswered: &[&str]) -> Subscriptions {
        Subscriptions {
            current: current
                .iter()
                .map(|f| Subscription { filter: (*f).into(), qos: QoS::AtLeastOnce })
                .collect(),
            subacks: VecDeque::new(),
            unanswered_unsubscribes: unanswered.iter().map(|f| (*f).into()).collect(),
            unsubscribe_on_connect: Vec::new(),
        }
    }

    #[test]
    fn unanswered_unsubscribes_are_sent_again_after_the_next_connack() {
        let mut subscriptions = subscriptions(&["b/#"], &["a/#", "b/#", "c/#"]);
        subscriptions.unsubscribe_answered();
        subscriptions.connection_ended();
        assert_eq!(subscriptions.unsubscribe_on_connect, ["c/#"], "a/# answered, b/# wanted again");
        assert!(subscriptions.unanswered_unsubscribes.is_empty());
        subscriptions.unanswered_unsubscribes.push_back("c/#".into());
        subscriptions.connection_ended();
        assert_eq!(subscriptions.unsubscribe_on_connect, ["c/#"], "listed once");
    }

    #[test]
    fn the_window_is_renewed_once_when_refusals_hold_all_of_it() {
        let mut window = Window::new(3);
        assert!(!window.slot_held());
        assert!(!window.slot_held());
        assert!(window.slot_held(), "the third of three");
        assert!(!window.slot_held(), "a renewal is already under way");
        assert_eq!(window.renewal, Renewal::Disconnecting);
    }

    #[test]
    fn only_the_connection_ended_for_a_renewal_reconnects_at_once() {
        let mut window = Window::new(1);
        assert!(!window.connection_ended(), "an ordinary loss waits as usual");
        assert!(window.slot_held());
        assert!(window.connection_ended());
        assert_eq!(window.renewal, Renewal::Reconnecting);
        assert!(!window.connection_ended(), "a failed immediate attempt backs off");
        assert_eq!(window.renewal, Renewal::None);
    }

    #[test]
    fn a_broker_announcing_an_empty_window_still_gets_one_slot() {
        let mut window = Window::new(0);
        assert!(window.slot_held());
    }

    #[test]
    fn a_password_file_loses_its_trailing_newline() {
        let path =
            std::env::temp_dir().join(format!("scbridge-mqtt-pw-{}.txt", std::process::id()));
        std::fs::write(&path, "s3cret\n").expect("write temp file");
        let mut config = MqttConfig::new("h", 1883);
        config.username = Some("u".into());
        config.password = Some(Password::File(path.clone()));
        let password = read_password(&config);
        let _ = std::fs::remove_file(&path);
        assert_eq!(password.expect("readable").as_deref(), Some("s3cret"));
    }

    #[test]
    fn a_missing_password_file_is_a_setup_error() {
        let mut config = MqttConfig::new("h", 1883);
        config.username = Some("u".into());
        config.password = Some(Password::File("/nonexistent/pw".into()));
        assert!(matches!(read_password(&config), Err(MqttError::ReadFile { .. })));
    }
}
