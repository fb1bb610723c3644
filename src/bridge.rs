//! Wires the endpoints and the router together: every message passes the
//! router once, in one task, and each output goes to its endpoint's bounded
//! queue without waiting. Every drop is counted, per route where a route is
//! known.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cables::{Cables, Received};
use crate::config::Config;
use crate::message::{Body, Message, SourceKind};
use crate::mqtt::{MqttEndpoint, MqttHandle, MqttOut, Subscription};
use crate::osc::{OscEndpoint, OscHandle, OscOut};
use crate::route::{Outbound, RouteId, RoutingTable, Skip, Target};
use crate::sc::{Incoming, InvokeError, LinkState, ScClient};
use crate::stats::{bump, worth_logging};

/// Messages from OSC and MQTT waiting for the router.
const INBOUND_QUEUE: usize = 8192;
/// How long our own publish on a plain SocketCluster channel is expected back.
const ECHO_WINDOW: Duration = Duration::from_secs(5);
/// How many own publishes are remembered for echo suppression.
const ECHO_MEMORY: usize = 4096;

crate::stats::counters! {
    /// What happened to the messages one route matched.
    pub struct RouteStats {
        /// Messages the route matched.
        matched,
        /// Outputs handed to an endpoint.
        sent,
        /// Skipped: the route is switched off.
        disabled,
        /// Skipped: the output would go back where the message came from.
        loops,
        /// Skipped: the destination name could not be made.
        bad_names,
        /// Dropped: the endpoint's queue was full.
        queue_full,
        /// Withheld: cables Allow Send is off or another sender took over.
        not_allowed,
        /// Dropped: the destination's link is not configured.
        no_link,
    }
}

crate::stats::counters! {
    /// What the bridge saw before routing.
    pub struct BridgeStats {
        /// Messages that reached the router.
        messages,
        /// Messages no route matched.
        unrouted,
        /// Our own messages echoed back (cables client id, plain channels).
        own_echoes,
        /// cables envelopes missing keys or of the wrong shape.
        malformed_envelopes,
        /// cables control messages from other clients.
        control_messages,
        /// Custom SocketCluster events no route listens to.
        unlisted_events,
        /// Publishes on channels no route or subscription uses.
        unlisted_channels,
        /// Invokes to the server that failed or timed out.
        failed_invokes,
    }
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Osc(#[from] crate::osc::OscError),
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
}

/// Remembers our own publishes on plain SocketCluster channels, which carry
/// no client id, so that the server's echo of them is not taken as input.
#[derive(Default)]
struct EchoFilter {
    sent: Mutex<VecDeque<(u64, Instant)>>,
}

impl EchoFilter {
    fn key(channel: &str, data: &Value) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        channel.hash(&mut hasher);
        // serde_json's maps are sorted, so equal values print equally.
        data.to_string().hash(&mut hasher);
        hasher.finish()
    }

    fn remember(&self, channel: &str, data: &Value) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent.len() >= ECHO_MEMORY {
            sent.pop_front();
        }
        sent.push_back((Self::key(channel, data), Instant::now()));
    }

    /// True (once) when this is the echo of something we sent.
    fn is_echo(&self, channel: &str, data: &Value) -> bool {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while sent.front().is_some_and(|(_, at)| now.duration_since(*at) > ECHO_WINDOW) {
            sent.pop_front();
        }
        if sent.is_empty() {
            return false;
        }
        let key = Self::key(channel, data);
        match sent.iter().position(|(k, _)| *k == key) {
            Some(position) => {
                sent.remove(position);
                true
            }
            None => false,
        }
    }
}

/// Everything outputs go to; cheap to clone into a delayed send.
#[derive(Clone)]
struct Outputs {
    sc: ScClient,
    cables: Option<Arc<CablesOut>>,
    osc: Option<OscHandle>,
    mqtt: Option<MqttHandle>,
    routes: Arc<Vec<RouteStats>>,
    stats: Arc<BridgeStats>,
    echoes: Arc<EchoFilter>,
}

/// What sending to cables needs: the envelope settings and the current
/// right to send, which the router task updates from control messages.
struct CablesOut {
    cables: Cables,
    can_send: AtomicBool,
}

impl Outputs {
    fn send(&self, out: Outbound) {
        let stats = &self.routes[out.route.0];
        let Outbound { target, name, body, .. } = out;
        let delivered = match target {
            Target::Osc { target, options } => match &self.osc {
                Some(osc) => osc.send(OscOut { target, address: name, body, options }).is_ok(),
                None => return bump(&stats.no_link),
            },
            Target::Mqtt { qos, retain, format } => match &self.mqtt {
                Some(mqtt) => mqtt.send(MqttOut { topic: name, body, qos, retain, format }).is_ok(),
                None => return bump(&stats.no_link),
            },
            Target::CablesObject | Target::CablesTrigger { .. } => {
                let Some(cables) = &self.cables else { return bump(&stats.no_link) };
                if !cables.can_send.load(Ordering::Relaxed) {
                    bump(&stats.not_allowed);
                    let count = crate::stats::get(&stats.not_allowed);
                    if worth_logging(count) {
                        tracing::info!(
                            count,
                            "cables: not sending (Allow Send off, or another sender took over)"
                        );
                    }
                    return;
                }
                let (channel, envelope) = match target {
                    Target::CablesTrigger { topic } => (
                        cables.cables.triggers_channel(),
                        cables.cables.envelope(
                            topic.as_deref().unwrap_or(&name),
                            Value::String(name.clone()),
                        ),
                    ),
                    _ => (
                        cables.cables.objects_channel(),
                        cables.cables.envelope(&name, value_of(body, &name)),
                    ),
                };
                self.sc.publish(channel, &envelope);
                true
            }
            Target::ScChannel => {
                let data = value_of(body, &name);
                self.echoes.remember(&name, &data);
                self.sc.publish(&name, &data);
                true
            }
            Target::ScEvent { invoke } => {
                let data = value_of(body, &name);
                if invoke {
                    let sc = self.sc.clone();
                    let stats = self.stats.clone();
                    tokio::spawn(async move {
                        if let Err(err) = sc.invoke(&name, Some(&data)).await {
                            bump(&stats.failed_invokes);
                            let level_worthy = !matches!(err, InvokeError::Remote(_));
                            tracing::warn!(event = %name, error = %err, timeout = level_worthy, "invoke to the SocketCluster server failed");
                        }
                    });
                } else {
                    self.sc.transmit(&name, Some(&data));
                }
                true
            }
        };
        if delivered {
            bump(&stats.sent);
        } else {
            bump(&stats.queue_full);
            let count = crate::stats::get(&stats.queue_full);
            if worth_logging(count) {
                tracing::warn!(count, "an endpoint queue is full: dropped an output");
            }
        }
    }
}

fn value_of(body: Body, name: &str) -> Value {
    match body {
        Body::Value(value) => value,
        Body::Trigger => Value::String(name.to_owned()),
    }
}

/// A running bridge: its handles and counters, for the caller and tests.
pub struct Running {
    pub sc: ScClient,
    pub osc: Option<OscHandle>,
    pub mqtt: Option<MqttHandle>,
    pub routes: Arc<Vec<RouteStats>>,
    pub stats: Arc<BridgeStats>,
    pub table: Arc<RoutingTable>,
    task: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Running {
    /// Stops taking input, closes the links cleanly (MQTT says `offline`)
    /// and waits for the router task.
    pub async fn stop(self) {
        // MQTT first, while its task still runs: a clean DISCONNECT after an
        // explicit `offline`, not the last will of a dropped connection.
        if let Some(mqtt) = &self.mqtt {
            mqtt.shutdown().await;
        }
        self.shutdown.cancel();
        let _ = self.task.await;
        self.sc.shutdown().await;
    }

    /// Resolves when the router task ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// Starts every configured endpoint and the router task.
pub async fn start(config: Config) -> Result<Running, BridgeError> {
    let shutdown = CancellationToken::new();
    let table = Arc::new(RoutingTable::new(config.routes.clone()));
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);

    let osc = match &config.osc {
        Some(osc) => {
            Some(OscEndpoint::start(osc, inbound_tx.clone(), shutdown.child_token()).await?)
        }
        None => None,
    };
    let mqtt = match &config.mqtt {
        Some(mqtt) => Some(MqttEndpoint::start(
            mqtt.clone(),
            mqtt_subscriptions(&table),
            inbound_tx.clone(),
            shutdown.child_token(),
        )?),
        None => None,
    };
    drop(inbound_tx);

    let (sc, sc_incoming) = ScClient::start(config.socketcluster.clone());
    let cables = config.cables.clone().map(Cables::new);
    let mut channels: HashSet<String> = HashSet::new();
    if let Some(cables) = &cables {
        for channel in cables.channels() {
            sc.subscribe(channel, false).await;
            channels.insert(channel.to_owned());
        }
    }
    let mut raw_channels = HashSet::new();
    let mut events = HashSet::new();
    for route in table.routes() {
        match route.source.kind {
            SourceKind::ScChannel => {
                let channel = route.source.pattern.text.clone();
                sc.subscribe(&channel, route.source.wait_for_auth).await;
                raw_channels.insert(channel);
            }
            SourceKind::ScEvent => {
                events.insert(route.source.pattern.text.clone());
            }
            _ => {}
        }
    }
    let mut monitored = HashSet::new();
    for sub in &config.subscribe {
        sc.subscribe(&sub.channel, sub.wait_for_auth).await;
        monitored.insert(sub.channel.clone());
    }

    let routes: Arc<Vec<RouteStats>> =
        Arc::new(table.routes().iter().map(|_| RouteStats::default()).collect());
    let stats = Arc::new(BridgeStats::default());
    let outputs = Outputs {
        sc: sc.clone(),
        cables: cables.as_ref().map(|c| {
            Arc::new(CablesOut {
                cables: Cables::new(c.config().clone()),
                can_send: AtomicBool::new(c.can_send()),
            })
        }),
        osc: osc.clone(),
        mqtt: mqtt.clone(),
        routes: routes.clone(),
        stats: stats.clone(),
        echoes: Arc::default(),
    };
    let router = Router {
        table: table.clone(),
        outputs,
        cables,
        raw_channels,
        events,
        monitored,
        enabled: HashMap::new(),
        out: Vec::new(),
        skipped: Vec::new(),
    };
    let task = tokio::spawn(router.run(sc_incoming, inbound_rx, sc.link_state(), shutdown.clone()));
    Ok(Running { sc, osc, mqtt, routes, stats, table, task, shutdown })
}

/// One subscription per distinct filter, at the highest QoS any route asks.
fn mqtt_subscriptions(table: &RoutingTable) -> Vec<Subscription> {
    let mut by_filter: Vec<Subscription> = Vec::new();
    for route in table.routes().iter().filter(|r| r.source.kind == SourceKind::Mqtt) {
        let filter = route.source.pattern.to_mqtt_filter();
        match by_filter.iter_mut().find(|s| s.filter == filter) {
            Some(existing) => existing.qos = existing.qos.max(route.source.qos),
            None => by_filter.push(Subscription { filter, qos: route.source.qos }),
        }
    }
    by_filter
}

struct Router {
    table: Arc<RoutingTable>,
    outputs: Outputs,
    cables: Option<Cables>,
    raw_channels: HashSet<String>,
    events: HashSet<String>,
    monitored: HashSet<String>,
    /// Runtime overrides of routes' `enabled`.
    enabled: HashMap<RouteId, bool>,
    out: Vec<Outbound>,
    skipped: Vec<(RouteId, Skip)>,
}

impl Router {
    async fn run(
        mut self,
        mut sc_incoming: mpsc::Receiver<Incoming>,
        mut inbound: mpsc::Receiver<Message>,
        mut link: tokio::sync::watch::Receiver<LinkState>,
        shutdown: CancellationToken,
    ) {
        let mut inbound_open = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                incoming = sc_incoming.recv() => match incoming {
                    Some(incoming) => self.take_socketcluster(incoming),
                    None => break,
                },
                message = inbound.recv(), if inbound_open => match message {
                    Some(message) => self.route(message),
                    None => inbound_open = false,
                },
                changed = link.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let connected = link.borrow_and_update().is_connected();
                    if connected {
                        self.announce();
                    }
                }
            }
        }
    }

    /// Tells the other cables clients whether we send, after every connect.
    fn announce(&self) {
        if let Some(cables) = &self.cables {
            self.outputs.sc.publish(cables.control_channel(), &cables.announcement());
        }
    }

    fn take_socketcluster(&mut self, incoming: Incoming) {
        let stats = &self.outputs.stats;
        match incoming {
            Incoming::Publish { channel, data } => {
                if let Some(cables) = &mut self.cables {
                    match cables.receive(&channel, data.clone()) {
                        Received::Message(message) => return self.route(message),
                        Received::OwnEcho => return bump(&stats.own_echoes),
                        Received::OwnAnnouncement => return,
                        Received::Control { from, allow_send, changed } => {
                            bump(&stats.control_messages);
                            if changed {
                                let can_send = cables.can_send();
                                if let Some(out) = &self.outputs.cables {
                                    out.can_send.store(can_send, Ordering::Relaxed);
                                }
                                tracing::info!(%from, allow_send, can_send, "cables: sender arbitration changed");
                            }
                            return;
                        }
                        Received::Malformed(why) => {
                            bump(&stats.malformed_envelopes);
                            let count = crate::stats::get(&stats.malformed_envelopes);
                            if worth_logging(count) {
                                tracing::warn!(%channel, why, count, "skipped a malformed cables envelope");
                            }
                            return;
                        }
                        Received::NotCables => {}
                    }
                }
                if self.raw_channels.contains(&channel) {
                    if self.outputs.echoes.is_echo(&channel, &data) {
                        return bump(&stats.own_echoes);
                    }
                    return self.route(Message::value(SourceKind::ScChannel, channel, data));
                }
                if self.monitored.contains(&channel) {
                    tracing::info!(%channel, %data, "publish");
                } else {
                    bump(&stats.unlisted_channels);
                }
            }
            Incoming::Event { event, data } => {
                if self.events.contains(&event) {
                    self.route(Message::value(SourceKind::ScEvent, event, data));
                } else {
                    bump(&stats.unlisted_events);
                    tracing::debug!(%event, "an event no route listens to");
                }
            }
        }
    }

    fn route(&mut self, message: Message) {
        let stats = &self.outputs.stats;
        bump(&stats.messages);
        self.out.clear();
        self.skipped.clear();
        let table = &self.table;
        let enabled = &self.enabled;
        table.route(
            &message,
            |id| enabled.get(&id).copied().unwrap_or_else(|| table.routes()[id.0].enabled),
            &mut self.out,
            &mut self.skipped,
        );
        if self.out.is_empty() && self.skipped.is_empty() {
            bump(&stats.unrouted);
            let count = crate::stats::get(&stats.unrouted);
            if worth_logging(count) {
                tracing::debug!(source = message.source.key(), name = %message.name, count, "no route for a message");
            }
            return;
        }
        let mut counted = None;
        for (id, skip) in self.skipped.drain(..) {
            let route_stats = &self.outputs.routes[id.0];
            if counted != Some(id) {
                bump(&route_stats.matched);
                counted = Some(id);
            }
            bump(match skip {
                Skip::Disabled => &route_stats.disabled,
                Skip::Loop => &route_stats.loops,
                Skip::BadName => &route_stats.bad_names,
            });
        }
        for out in self.out.drain(..) {
            if counted != Some(out.route) {
                bump(&self.outputs.routes[out.route.0].matched);
                counted = Some(out.route);
            }
            let delay = table.routes()[out.route.0].delay;
            if delay.is_zero() {
                self.outputs.send(out);
            } else {
                let outputs = self.outputs.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    outputs.send(out);
                });
            }
        }
    }
}
