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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::{
    MQTT_MAX_PACKET_BYTES, MqttConfig, MqttProtocol, Password, covers, valid_filter,
    without_covered,
};
use super::outbox::{Outbox, Submitted};
use super::protocol::{self, Client, Connection, Event, IncomingPublish, Queued, Setup};
use super::{
    MqttError, MqttLinkState, MqttOut, MqttStats, OFFLINE, ONLINE, QoS, Subscription, payload,
};
use crate::message::{Message, Refused, SentFor, SourceKind};
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
        subscriptions: Mutex::new(Subscriptions::new(subscriptions)),
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
///
/// An MQTT 5 broker sends one copy of a message per matching subscription.
/// Where it takes Subscription Identifiers, every filter the routes want is
/// subscribed on its own with an identifier, and each copy goes only to the
/// routes of the filters it names (see [`Message::sent_for`]): every route
/// takes a message once, even from filters that overlap (`a/+/c` and
/// `a/b/+`). Elsewhere a filter another one covers is left out, so a
/// message matches one subscription unless two overlap without either
/// covering the other.
struct Subscriptions {
    /// What the routes want, one entry per filter.
    wanted: Vec<Subscription>,
    /// What is subscribed: `wanted`, less covered filters unless `use_ids`.
    current: Vec<Subscription>,
    /// The broker of the last CONNACK takes Subscription Identifiers.
    use_ids: bool,
    /// The identifier of each filter in `current` that has one.
    ids: HashMap<usize, Arc<str>>,
    /// Which `current` the identifiers of a copy are read against; a new
    /// one after every change (see [`SentFor::generation`]).
    generation: u64,
    /// Filters new to the broker's session, and when their SUBACK came.
    /// The broker sends no copy for them of a message published before
    /// it took their SUBSCRIBE, and such copies can still arrive (a kept
    /// session's backlog comes after the SUBACK), so until [`FRESH_FOR`]
    /// after the SUBACK a copy also names the fresh filters that match it.
    fresh: HashMap<String, Option<Instant>>,
    /// SUBSCRIBEs not yet handed to rumqttc: at most
    /// [`MAX_UNANSWERED_SUBSCRIBES`] await their SUBACK at once, so that a
    /// thousand filters never fill rumqttc's request channel.
    unsent: VecDeque<(Vec<Subscription>, Option<usize>)>,
    subacks: VecDeque<Vec<String>>,
    /// Filters whose UNSUBSCRIBE rumqttc took and the broker has not
    /// answered yet, oldest first (the broker answers in order).
    unanswered_unsubscribes: VecDeque<String>,
    /// Filters to unsubscribe after the next CONNACK: dropped while
    /// disconnected, or unanswered when a connection ended. A broker that
    /// kept the session (`clean_session = false`) still has them.
    unsubscribe_on_connect: Vec<String>,
    /// A CONNACK has come before on this endpoint.
    connected_before: bool,
}

/// The largest Subscription Identifier MQTT 5 allows.
const MAX_SUBSCRIPTION_ID: u64 = 268_435_455;

/// How long after its SUBACK a new filter is named on copies that match it
/// (see [`Subscriptions::fresh`]). A copy of a message published after the
/// SUBSCRIBE can then reach its routes twice; one published before it is
/// not lost unless it arrives later than this.
const FRESH_FOR: Duration = Duration::from_secs(5);

/// How many SUBSCRIBEs may await their SUBACK at once.
const MAX_UNANSWERED_SUBSCRIBES: usize = 16;

/// Sets of subscriptions, numbered across every endpoint of the process.
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1
}

/// A filter's Subscription Identifier: a hash of its text (FNV-1a), the
/// same in every run, so that messages a kept session queued under the
/// previous run's identifiers still name the right filter.
fn subscription_id(filter: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in filter.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Below 2^28, so it fits any usize.
    (hash % MAX_SUBSCRIPTION_ID) as usize + 1
}

/// What to subscribe for what the routes want (see [`Subscriptions`]).
fn to_subscribe(wanted: &[Subscription], use_ids: bool) -> Vec<Subscription> {
    if use_ids { wanted.to_vec() } else { without_covered(wanted.to_vec()) }
}

impl Subscriptions {
    fn new(wanted: Vec<Subscription>) -> Self {
        Subscriptions {
            current: to_subscribe(&wanted, false),
            wanted,
            use_ids: false,
            ids: HashMap::new(),
            generation: next_generation(),
            fresh: HashMap::new(),
            unsent: VecDeque::new(),
            subacks: VecDeque::new(),
            unanswered_unsubscribes: VecDeque::new(),
            unsubscribe_on_connect: Vec::new(),
            connected_before: false,
        }
    }

    /// Makes `subscribed` the subscriptions in force and gives each filter
    /// its identifier. Of two filters with the same one (about one pair in
    /// a million among a thousand filters) the second goes without: its
    /// copies reach every matching route, as over MQTT 3.1.1.
    fn set_current(&mut self, subscribed: Vec<Subscription>) {
        self.ids.clear();
        if self.use_ids {
            for subscription in &subscribed {
                self.ids
                    .entry(subscription_id(&subscription.filter))
                    .or_insert_with(|| subscription.filter.as_str().into());
            }
        }
        self.fresh.retain(|filter, _| subscribed.iter().any(|s| &s.filter == filter));
        self.current = subscribed;
        self.generation = next_generation();
    }

    /// The identifier `filter` is subscribed with, if any.
    fn id_of(&self, filter: &str) -> Option<usize> {
        let id = subscription_id(filter);
        self.ids.get(&id).is_some_and(|f| &**f == filter).then_some(id)
    }

    /// The filters a copy on `topic` was sent for, from its identifiers,
    /// and the fresh filters that match it. `None` when it has no
    /// identifier or one that is not ours now (a filter just unsubscribed,
    /// or one a kept session still holds from an earlier run): such a copy
    /// reaches every matching route.
    fn sent_for(&mut self, ids: &[usize], topic: &str, now: Instant) -> Option<SentFor> {
        if ids.is_empty() {
            return None;
        }
        let mut filters: Vec<Arc<str>> =
            ids.iter().map(|id| self.ids.get(id).cloned()).collect::<Option<_>>()?;
        self.fresh.retain(|_, answered| answered.is_none_or(|at| now < at + FRESH_FOR));
        for filter in self.fresh.keys() {
            if covers(filter, topic) && !filters.iter().any(|f| **f == **filter) {
                filters.push(filter.as_str().into());
            }
        }
        Some(SentFor { filters: filters.into(), generation: self.generation })
    }

    /// Plans the SUBSCRIBEs for `subscriptions`: one per filter with its
    /// identifier, or one for all of them when the broker takes no
    /// identifiers; hands rumqttc what it may take now. Returns how many
    /// SUBACKs they will bring.
    fn subscribe(&mut self, client: &Client, subscriptions: &[Subscription]) -> usize {
        if subscriptions.is_empty() {
            return 0;
        }
        let before = self.unsent.len();
        if self.use_ids {
            for subscription in subscriptions {
                let id = self.id_of(&subscription.filter);
                self.unsent.push_back((vec![subscription.clone()], id));
            }
        } else {
            self.unsent.push_back((subscriptions.to_vec(), None));
        }
        let planned = self.unsent.len() - before;
        self.send_subscribes(client);
        planned
    }

    /// Hands rumqttc the SUBSCRIBEs planned, while fewer than
    /// [`MAX_UNANSWERED_SUBSCRIBES`] await their SUBACK and its channel
    /// takes them. The driver calls it again after every event.
    fn send_subscribes(&mut self, client: &Client) {
        while self.subacks.len() < MAX_UNANSWERED_SUBSCRIBES {
            let Some((batch, id)) = self.unsent.front() else { break };
            if !client.try_subscribe(batch, *id) {
                break;
            }
            let filters = batch.iter().map(|s| s.filter.clone()).collect();
            self.subacks.push_back(filters);
            self.unsent.pop_front();
        }
    }

    /// Whether some copies still name fresh filters besides their own.
    fn settling(&self, now: Instant) -> bool {
        self.fresh.values().any(|answered| answered.is_none_or(|at| now < at + FRESH_FOR))
    }

    /// The broker answered the oldest SUBSCRIBE: returns its filters.
    fn subscribe_answered(&mut self, now: Instant) -> Vec<String> {
        let filters = self.subacks.pop_front().unwrap_or_default();
        for filter in &filters {
            if let Some(answered) = self.fresh.get_mut(filter) {
                *answered = Some(now);
            }
        }
        filters
    }

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
        // The next CONNACK plans every SUBSCRIBE again.
        self.unsent.clear();
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

    /// Subscribes everything, after a CONNACK whose broker does or does
    /// not take Subscription Identifiers, and did or did not keep the
    /// session. Returns how many SUBACKs to wait for. The caller holds the
    /// outbox.
    fn subscribe_all(&self, use_ids: bool, session_present: bool) -> usize {
        let mut subscriptions = self.subscriptions();
        subscriptions.subacks.clear();
        subscriptions.unsent.clear();
        subscriptions.use_ids = use_ids;
        let subscribed = to_subscribe(&subscriptions.wanted, use_ids);
        let Subscriptions { current, unsubscribe_on_connect, fresh, connected_before, .. } =
            &mut *subscriptions;
        // A broker that changed its mind about identifiers: a kept session
        // still holds what the previous connection subscribed.
        for old in current.iter() {
            let kept = subscribed.iter().any(|new| new.filter == old.filter);
            if !kept && !unsubscribe_on_connect.contains(&old.filter) {
                unsubscribe_on_connect.push(old.filter.clone());
            }
        }
        unsubscribe_on_connect.retain(|filter| !subscribed.iter().any(|s| &s.filter == filter));
        // What a kept session holds is known only from a connection of
        // this endpoint; anything else is new to the broker.
        let known = session_present && *connected_before;
        if use_ids {
            for answered in fresh.values_mut() {
                *answered = None;
            }
            for subscription in &subscribed {
                if !known || !current.iter().any(|old| old.filter == subscription.filter) {
                    fresh.insert(subscription.filter.clone(), None);
                }
            }
        } else {
            fresh.clear();
        }
        *connected_before = true;
        subscriptions.set_current(subscribed);
        let stale = std::mem::take(&mut subscriptions.unsubscribe_on_connect);
        if !stale.is_empty() && !subscriptions.unsubscribe(&self.client, stale) {
            crate::stats::bump(&self.stats.subscribe_failures);
            let waiting = &subscriptions.unsubscribe_on_connect;
            tracing::warn!(
                ?waiting,
                "MQTT UNSUBSCRIBE of filters the broker may still hold could not be queued; tried again after the next reconnect"
            );
        }
        let all = subscriptions.current.clone();
        subscriptions.subscribe(&self.client, &all)
    }

    /// Replaces the subscriptions. On a live connection only the
    /// difference goes out, on the caller's task: SUBSCRIBE, then
    /// UNSUBSCRIBE. Otherwise the next CONNACK subscribes them all.
    pub(crate) fn set_subscriptions(&self, wanted: Vec<Subscription>) {
        let outbox = self.outbox();
        let mut subscriptions = self.subscriptions();
        let subscribed = to_subscribe(&wanted, subscriptions.use_ids);
        let old = std::mem::take(&mut subscriptions.current);
        let removed: Vec<String> = old
            .iter()
            .filter(|old| !subscribed.iter().any(|new| new.filter == old.filter))
            .map(|old| old.filter.clone())
            .collect();
        let added: Vec<Subscription> =
            subscribed.iter().filter(|new| !old.contains(new)).cloned().collect();
        for new in &subscribed {
            if subscriptions.use_ids && !old.iter().any(|old| old.filter == new.filter) {
                subscriptions.fresh.insert(new.filter.clone(), None);
            }
        }
        subscriptions.wanted = wanted;
        subscriptions.set_current(subscribed);
        if outbox.connected && !outbox.closing {
            // SUBSCRIBE first: when `a/#` gives way to `a/b`, the broker
            // must never be without a filter for `a/b`.
            subscriptions.subscribe(&self.client, &added);
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
            for filter in removed {
                if !subscriptions.unsubscribe_on_connect.contains(&filter) {
                    subscriptions.unsubscribe_on_connect.push(filter);
                }
            }
        }
        // Wanted again: the next CONNACK subscribes it, and must not
        // unsubscribe it first.
        let Subscriptions { current, unsubscribe_on_connect, .. } = &mut *subscriptions;
        unsubscribe_on_connect.retain(|filter| !current.iter().any(|s| &s.filter == filter));
    }

    /// Whether copies still also name new filters that match them, for a
    /// while after their SUBSCRIBE (see [`Subscriptions::fresh`]).
    pub(crate) fn settling(&self) -> bool {
        self.subscriptions().settling(Instant::now())
    }

    /// The set of subscriptions copies are named under now (see
    /// [`SentFor::generation`]).
    pub(crate) fn subscription_generation(&self) -> u64 {
        self.subscriptions().generation
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

/// What a CONNACK said about the subscriptions.
struct Renew {
    subscription_ids: bool,
    session_present: bool,
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
        // SUBACKs still to come for the SUBSCRIBEs of the last CONNACK.
        let mut awaiting_subacks = 0;
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
                Ok(Event::ConnAck {
                    broker_max_packet,
                    window,
                    subscription_ids,
                    session_present,
                }) => {
                    connected = true;
                    let renewed = self.window.renewal == Renewal::Reconnecting;
                    self.window = Window::new(window.unwrap_or(self.window.size));
                    awaiting_subacks = self.on_connack(
                        broker_max_packet,
                        renewed,
                        Renew { subscription_ids, session_present },
                    );
                    Next::Continue
                }
                Ok(Event::SubAck { refused }) => {
                    self.on_suback(&refused);
                    if awaiting_subacks == 1 {
                        self.link.send_replace(MqttLinkState::Connected);
                    }
                    awaiting_subacks = awaiting_subacks.saturating_sub(1);
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
                            awaiting_subacks = 0;
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
                    awaiting_subacks = 0;
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
                if outbox.connected {
                    self.shared.subscriptions().send_subscribes(&self.shared.client);
                }
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
    /// in that order. Returns how many SUBACKs are awaited.
    fn on_connack(
        &mut self,
        broker_max_packet: Option<usize>,
        renewed: bool,
        session: Renew,
    ) -> usize {
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
            return 0;
        }
        let awaiting_subacks =
            self.shared.subscribe_all(session.subscription_ids, session.session_present);
        self.shared.announce(&mut outbox, ONLINE);
        self.shared.flush(&mut outbox);
        drop(outbox);
        if awaiting_subacks == 0 {
            self.link.send_replace(MqttLinkState::Connected);
        }
        awaiting_subacks
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
        let filters = self.shared.subscriptions().subscribe_answered(Instant::now());
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
        let mut message =
            Message::value(SourceKind::Mqtt, topic.as_ref(), payload::decode(payload));
        let ids = publish.subscription_ids();
        if !ids.is_empty()
            && let Some(sent_for) =
                self.shared.subscriptions().sent_for(ids, &topic, Instant::now())
        {
            message = message.sent_for(sent_for);
        }
        match self.inbound.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                if let Some(count) = crate::stats::bump_loggable(&stats.inbound_queue_full) {
                    tracing::warn!(count, topic = %message.name, "inbound queue full: MQTT message dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
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

    fn wanted(filters: &[&str]) -> Vec<Subscription> {
        filters
            .iter()
            .map(|f| Subscription { filter: (*f).into(), qos: QoS::AtLeastOnce })
            .collect()
    }

    fn subscriptions(current: &[&str], unanswered: &[&str]) -> Subscriptions {
        let mut subscriptions = Subscriptions::new(wanted(current));
        subscriptions.unanswered_unsubscribes = unanswered.iter().map(|f| (*f).into()).collect();
        subscriptions
    }

    fn filters(subscriptions: &[Subscription]) -> Vec<&str> {
        subscriptions.iter().map(|s| s.filter.as_str()).collect()
    }

    #[test]
    fn with_identifiers_every_filter_is_subscribed_without_them_covered_ones_are_left_out() {
        let wanted = wanted(&["in/#", "in/x", "a/+/c", "a/b/+"]);
        assert_eq!(filters(&to_subscribe(&wanted, true)), ["in/#", "in/x", "a/+/c", "a/b/+"]);
        assert_eq!(filters(&to_subscribe(&wanted, false)), ["in/#", "a/+/c", "a/b/+"]);
    }

    fn named(sent_for: Option<SentFor>) -> Vec<String> {
        let sent_for = sent_for.expect("named");
        sent_for.filters.iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn a_copy_names_the_filters_of_its_identifiers() {
        let mut subscriptions = Subscriptions::new(Vec::new());
        subscriptions.use_ids = true;
        subscriptions.set_current(wanted(&["a/+/c", "a/b/+"]));
        let id = |filter| subscriptions.id_of(filter).expect("subscribed with an identifier");
        let (first, second) = (id("a/+/c"), id("a/b/+"));
        assert_ne!(first, second);
        let now = Instant::now();
        assert_eq!(named(subscriptions.sent_for(&[second], "a/b/c", now)), ["a/b/+"]);
        assert_eq!(
            named(subscriptions.sent_for(&[first, second], "a/b/c", now)),
            ["a/+/c", "a/b/+"]
        );
        assert!(subscriptions.sent_for(&[], "a/b/c", now).is_none(), "no identifier: every route");
        let stale = subscription_id("gone/#");
        assert!(
            subscriptions.sent_for(&[first, stale], "a/b/c", now).is_none(),
            "not ours now: every route"
        );
    }

    #[test]
    fn a_copy_also_names_matching_filters_until_a_while_after_their_suback() {
        let mut subscriptions = Subscriptions::new(Vec::new());
        subscriptions.use_ids = true;
        subscriptions.set_current(wanted(&["a/+/c", "a/b/+", "x/#"]));
        subscriptions.fresh.insert("a/b/+".into(), None);
        subscriptions.fresh.insert("x/#".into(), None);
        let room = subscriptions.id_of("a/+/c").expect("identifier");
        let start = Instant::now();
        let copy_for_room = |subscriptions: &mut Subscriptions, at| {
            named(subscriptions.sent_for(&[room], "a/b/c", at))
        };
        assert_eq!(copy_for_room(&mut subscriptions, start), ["a/+/c", "a/b/+"], "awaiting SUBACK");
        assert!(subscriptions.settling(start));

        subscriptions.subacks.push_back(vec!["a/b/+".into(), "x/#".into()]);
        subscriptions.subscribe_answered(start);
        let almost = start + FRESH_FOR - Duration::from_millis(1);
        assert_eq!(copy_for_room(&mut subscriptions, almost), ["a/+/c", "a/b/+"]);
        let after = start + FRESH_FOR;
        assert_eq!(copy_for_room(&mut subscriptions, after), ["a/+/c"]);
        assert!(!subscriptions.settling(after));
    }

    #[test]
    fn every_change_of_the_subscriptions_is_a_new_generation() {
        let mut subscriptions = Subscriptions::new(wanted(&["a/#"]));
        let first = subscriptions.generation;
        subscriptions.set_current(wanted(&["a/#"]));
        assert!(subscriptions.generation > first);
        let other = Subscriptions::new(wanted(&["a/#"]));
        assert_ne!(other.generation, subscriptions.generation, "unique across endpoints");
    }

    #[test]
    fn identifiers_are_the_same_in_every_run_and_within_the_protocol_range() {
        assert_eq!(subscription_id("a/+/c"), subscription_id("a/+/c"));
        assert_ne!(subscription_id("a/+/c"), subscription_id("a/b/+"));
        for filter in ["", "#", "a/+/c", "$share/g/x/#", &"x".repeat(70_000)] {
            let id = subscription_id(filter);
            assert!((1..=268_435_455).contains(&id), "{id} for {filter:.10}");
        }
        // Pinned: a kept session holds identifiers from the previous run,
        // perhaps of an older scbridge.
        assert_eq!(subscription_id("sensors/+/temp"), 100_602_684);
    }

    #[test]
    fn without_identifiers_no_copy_is_limited() {
        let mut subscriptions = Subscriptions::new(Vec::new());
        subscriptions.set_current(wanted(&["a/+/c"]));
        assert_eq!(subscriptions.id_of("a/+/c"), None);
        let copy = subscriptions.sent_for(&[subscription_id("a/+/c")], "a/b/c", Instant::now());
        assert!(copy.is_none());
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
