//! Wires the endpoints and the router together: every message passes the
//! router once, in one task, and each output goes to its endpoint's bounded
//! queue without waiting. Every drop is counted, per route where a route is
//! known.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::cables::{Cables, Received};
use crate::config::{ChannelSubscription, Config};
use crate::http::RecentLog;
use crate::message::{Body, Message, SourceKind};
use crate::mqtt::{MqttEndpoint, MqttHandle, MqttOut, PayloadFormat, QoS, Subscription};
use crate::osc::mapping::OscOutOptions;
use crate::osc::{OscEndpoint, OscHandle, OscOut};
use crate::route::{Outbound, RouteId, RoutingTable, Skip, Target};
use crate::sc::{Incoming, InvokeError, LinkState, ScClient};
use crate::stats::{bump, worth_logging};

/// Messages from OSC and MQTT waiting for the router.
const INBOUND_QUEUE: usize = 8192;
/// How many waiting messages the router takes in one turn before it looks
/// at its other inputs again.
const BATCH: usize = 256;
/// Control commands waiting for the router.
const CONTROL_QUEUE: usize = 64;
/// Last values kept for `resend`, one per route, destination and name.
const RESEND_MEMORY: usize = 10_000;
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
        /// Replaced by a newer value before its turn (`max_rate`); not a loss
        /// of state, the latest value always goes out.
        coalesced,
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
        /// Control messages carried out.
        control_commands,
        /// Control messages that made no sense.
        bad_control_commands,
        /// Config reloads applied.
        reloads,
        /// Last values not remembered for `resend` (the memory was full).
        resend_memory_full,
    }
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Osc(#[from] crate::osc::OscError),
    #[error(transparent)]
    Mqtt(#[from] crate::mqtt::MqttError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
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

/// What can be asked of a running bridge, from signals, OSC or MQTT.
#[derive(Debug)]
pub enum Control {
    /// Apply a new, already validated config.
    Reload(Box<Config>, oneshot::Sender<ReloadReport>),
    /// The SocketCluster link's active toggle.
    SetActive(bool),
    /// Disconnect and reconnect the SocketCluster link.
    Reset,
    /// Switch one route on or off by name.
    SetRouteEnabled { name: String, enabled: bool },
    /// Send the last value of every state route again.
    Resend,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub socketcluster_reconnected: bool,
    pub osc_restarted: bool,
    pub mqtt_restarted: bool,
    pub routes: usize,
}

/// The bridge as it is now (it changes on reload): for metrics and tests.
#[derive(Clone)]
pub struct View {
    pub table: Arc<RoutingTable>,
    pub routes: Arc<Vec<RouteStats>>,
    pub sc: ScClient,
    pub osc: Option<OscHandle>,
    pub mqtt: Option<MqttHandle>,
    /// Runtime overrides of routes' `enabled`, by route name.
    pub enabled: HashMap<String, bool>,
}

/// A running bridge.
pub struct Running {
    pub stats: Arc<BridgeStats>,
    recent: Arc<RecentLog>,
    alive: Arc<AtomicBool>,
    view: Arc<RwLock<View>>,
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
}

impl Running {
    /// A copy of the current view.
    pub fn view(&self) -> View {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The shared view, for a metrics listener that outlives reloads.
    pub fn shared_view(&self) -> Arc<RwLock<View>> {
        self.view.clone()
    }

    pub fn sc(&self) -> ScClient {
        self.view().sc
    }

    /// The last routed messages (`[http] max_lines` of them).
    pub fn recent(&self) -> Arc<RecentLog> {
        self.recent.clone()
    }

    /// True while the router task runs.
    pub fn alive(&self) -> Arc<AtomicBool> {
        self.alive.clone()
    }

    pub fn osc(&self) -> Option<OscHandle> {
        self.view().osc
    }

    pub fn mqtt(&self) -> Option<MqttHandle> {
        self.view().mqtt
    }

    pub fn routes(&self) -> Arc<Vec<RouteStats>> {
        self.view().routes
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.view().table
    }

    /// Sends a control command to the router task.
    pub async fn control(&self, control: Control) {
        let _ = self.control.send(control).await;
    }

    /// Applies a new config; links whose settings did not change stay up.
    pub async fn reload(&self, config: Config) -> ReloadReport {
        let (reply, report) = oneshot::channel();
        self.control(Control::Reload(Box::new(config), reply)).await;
        report.await.unwrap_or_default()
    }

    /// Stops taking input, sends what is queued, closes the links cleanly
    /// (MQTT says `offline`) and waits for the router task.
    pub async fn stop(self) {
        let view = self.view();
        // MQTT first, while its task still runs: a clean DISCONNECT after an
        // explicit `offline`, not the last will of a dropped connection.
        if let Some(mqtt) = &view.mqtt {
            mqtt.shutdown().await;
        }
        self.shutdown.cancel();
        let _ = self.task.await;
        view.sc.shutdown().await;
    }

    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// The SocketCluster channels a config needs: cables, plain channel
/// sources, and the monitored ones.
fn sc_subscriptions(config: &Config) -> Vec<ChannelSubscription> {
    let mut wanted: Vec<ChannelSubscription> = Vec::new();
    let mut add = |channel: &str, wait_for_auth: bool| {
        if !wanted.iter().any(|s| s.channel == channel) {
            wanted.push(ChannelSubscription { channel: channel.to_owned(), wait_for_auth });
        }
    };
    if let Some(cables) = &config.cables {
        for channel in Cables::new(cables.clone()).channels() {
            add(channel, false);
        }
    }
    for route in config.routes.iter().filter(|r| r.source.kind == SourceKind::ScChannel) {
        add(&route.source.pattern.text, route.source.wait_for_auth);
    }
    for sub in &config.subscribe {
        add(&sub.channel, sub.wait_for_auth);
    }
    wanted
}

/// One subscription per distinct filter, at the highest QoS any route asks,
/// plus the control prefix.
fn mqtt_subscriptions(config: &Config) -> Vec<Subscription> {
    let mut by_filter: Vec<Subscription> = Vec::new();
    let mut add = |filter: String, qos: QoS| match by_filter.iter_mut().find(|s| s.filter == filter)
    {
        Some(existing) => existing.qos = existing.qos.max(qos),
        None => by_filter.push(Subscription { filter, qos }),
    };
    for route in config.routes.iter().filter(|r| r.source.kind == SourceKind::Mqtt) {
        add(route.source.pattern.to_mqtt_filter(), route.source.qos);
    }
    if let Some(prefix) = &config.control.mqtt {
        add(format!("{prefix}/#"), QoS::AtLeastOnce);
    }
    by_filter
}

/// The endpoints' own cancellation, so one can be restarted alone.
struct Endpoint<H> {
    handle: H,
    stop: CancellationToken,
}

async fn start_osc(
    config: &Config,
    inbound: &mpsc::Sender<Message>,
    parent: &CancellationToken,
) -> Result<Option<Endpoint<OscHandle>>, BridgeError> {
    let Some(osc) = &config.osc else { return Ok(None) };
    let stop = parent.child_token();
    let handle = OscEndpoint::start(osc, inbound.clone(), stop.clone()).await?;
    Ok(Some(Endpoint { handle, stop }))
}

fn start_mqtt(
    config: &Config,
    inbound: &mpsc::Sender<Message>,
    parent: &CancellationToken,
) -> Result<Option<Endpoint<MqttHandle>>, BridgeError> {
    let Some(mqtt) = &config.mqtt else { return Ok(None) };
    let stop = parent.child_token();
    let handle = MqttEndpoint::start(
        mqtt.clone(),
        mqtt_subscriptions(config),
        inbound.clone(),
        stop.clone(),
    )?;
    Ok(Some(Endpoint { handle, stop }))
}

/// Starts every configured endpoint and the router task. Only local
/// resources can fail here (an OSC port, a TLS file); remote peers being
/// down is just a retry.
pub async fn start(config: Config) -> Result<Running, BridgeError> {
    let shutdown = CancellationToken::new();
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let osc = start_osc(&config, &inbound_tx, &shutdown).await?;
    let mqtt = start_mqtt(&config, &inbound_tx, &shutdown)?;
    let (sc, sc_incoming) = ScClient::start(config.socketcluster.clone());
    for sub in sc_subscriptions(&config) {
        sc.subscribe(&sub.channel, sub.wait_for_auth).await;
    }
    let table = Arc::new(RoutingTable::new(config.routes.clone()));
    let routes: Arc<Vec<RouteStats>> =
        Arc::new(table.routes().iter().map(|_| RouteStats::default()).collect());
    let stats = Arc::new(BridgeStats::default());
    let view = Arc::new(RwLock::new(View {
        table: table.clone(),
        routes: routes.clone(),
        sc: sc.clone(),
        osc: osc.as_ref().map(|e| e.handle.clone()),
        mqtt: mqtt.as_ref().map(|e| e.handle.clone()),
        enabled: HashMap::new(),
    }));
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let recent = Arc::new(RecentLog::new(config.http.as_ref().map_or(0, |h| h.max_lines)));
    let alive = Arc::new(AtomicBool::new(true));
    let mut router = Router {
        recent: recent.clone(),
        alive: alive.clone(),
        link: sc.link_state(),
        outputs: Outputs {
            sc,
            cables: None,
            osc: osc.as_ref().map(|e| e.handle.clone()),
            mqtt: mqtt.as_ref().map(|e| e.handle.clone()),
            routes,
            stats: stats.clone(),
            echoes: Arc::default(),
        },
        cables: None,
        raw_channels: HashSet::new(),
        events: HashSet::new(),
        monitored: HashSet::new(),
        enabled: HashMap::new(),
        last_values: HashMap::new(),
        resend_enabled: false,
        coalescer: Coalescer::default(),
        out: Vec::new(),
        skipped: Vec::new(),
        table,
        osc,
        mqtt,
        sc_incoming,
        inbound: inbound_rx,
        inbound_tx,
        controls: control_rx,
        view: view.clone(),
        shutdown: shutdown.clone(),
        config: config.clone(),
    };
    router.adopt(&config);
    let task = tokio::spawn(router.run());
    Ok(Running { stats, recent, alive, view, control: control_tx, task, shutdown })
}

struct Router {
    config: Config,
    recent: Arc<RecentLog>,
    alive: Arc<AtomicBool>,
    table: Arc<RoutingTable>,
    outputs: Outputs,
    cables: Option<Cables>,
    raw_channels: HashSet<String>,
    events: HashSet<String>,
    monitored: HashSet<String>,
    /// Runtime overrides of routes' `enabled`.
    enabled: HashMap<RouteId, bool>,
    /// The last output of every state route, for `resend`.
    last_values: HashMap<OutputKey, Outbound>,
    /// Whether `resend` can be asked for (a control prefix is configured).
    resend_enabled: bool,
    /// Rate-limited routes: per destination name, when it last went out and
    /// the newest value waiting for its turn.
    coalescer: Coalescer,
    out: Vec<Outbound>,
    skipped: Vec<(RouteId, Skip)>,
    osc: Option<Endpoint<OscHandle>>,
    mqtt: Option<Endpoint<MqttHandle>>,
    sc_incoming: mpsc::Receiver<Incoming>,
    link: watch::Receiver<LinkState>,
    inbound: mpsc::Receiver<Message>,
    /// Kept to hand to endpoints restarted by a reload.
    inbound_tx: mpsc::Sender<Message>,
    controls: mpsc::Receiver<Control>,
    view: Arc<RwLock<View>>,
    shutdown: CancellationToken,
}

impl Router {
    /// Takes the parts of a config that need no restart: what to listen to,
    /// the cables state, the control settings.
    fn adopt(&mut self, config: &Config) {
        let cables_changed = self.cables.as_ref().map(|c| c.config()) != config.cables.as_ref();
        if cables_changed || self.cables.is_none() {
            self.cables = config.cables.clone().map(Cables::new);
            self.outputs.cables = self.cables.as_ref().map(|c| {
                Arc::new(CablesOut {
                    cables: Cables::new(c.config().clone()),
                    can_send: AtomicBool::new(c.can_send()),
                })
            });
        }
        self.raw_channels = config
            .routes
            .iter()
            .filter(|r| r.source.kind == SourceKind::ScChannel)
            .map(|r| r.source.pattern.text.clone())
            .collect();
        self.events = config
            .routes
            .iter()
            .filter(|r| r.source.kind == SourceKind::ScEvent)
            .map(|r| r.source.pattern.text.clone())
            .collect();
        self.monitored = config.subscribe.iter().map(|s| s.channel.clone()).collect();
        self.resend_enabled = config.control.osc.is_some() || config.control.mqtt.is_some();
    }

    fn publish_view(&self) {
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        view.table = self.table.clone();
        view.routes = self.outputs.routes.clone();
        view.sc = self.outputs.sc.clone();
        view.osc = self.outputs.osc.clone();
        view.mqtt = self.outputs.mqtt.clone();
        view.enabled = self
            .enabled
            .iter()
            .filter_map(|(id, on)| self.table.route_by_id(*id).map(|r| (r.name.clone(), *on)))
            .collect();
    }

    async fn run(mut self) {
        self.publish_status();
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                control = self.controls.recv() => match control {
                    Some(control) => self.apply(control).await,
                    None => break,
                },
                incoming = self.sc_incoming.recv() => match incoming {
                    Some(incoming) => {
                        self.take_socketcluster(incoming);
                        // Whatever else is waiting goes in the same turn:
                        // one wake-up per burst, not per message.
                        for _ in 0..BATCH {
                            let Ok(incoming) = self.sc_incoming.try_recv() else { break };
                            self.take_socketcluster(incoming);
                        }
                    }
                    None => break,
                },
                Some(message) = self.inbound.recv() => {
                    self.route(message);
                    for _ in 0..BATCH {
                        let Ok(message) = self.inbound.try_recv() else { break };
                        self.route(message);
                    }
                }
                _ = sleep_until_or_never(self.coalescer.next_due()) => {
                    for out in self.coalescer.take_due(tokio::time::Instant::now()) {
                        self.outputs.send(out);
                    }
                }
                changed = self.link.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let connected = self.link.borrow_and_update().is_connected();
                    if connected {
                        self.announce();
                    }
                    self.publish_status();
                }
            }
        }
        self.alive.store(false, Ordering::Relaxed);
    }

    async fn apply(&mut self, control: Control) {
        match control {
            Control::Reload(config, reply) => {
                let report = self.reload(*config).await;
                let _ = reply.send(report);
            }
            other => self.apply_now(other),
        }
    }

    /// Applies a new config: routes and subscriptions change in place; a link
    /// is restarted only when its own settings changed.
    async fn reload(&mut self, config: Config) -> ReloadReport {
        let mut report = ReloadReport { routes: config.routes.len(), ..ReloadReport::default() };
        // Waiting values belong to the old table's routes: send them first.
        for out in self.coalescer.drain() {
            self.outputs.send(out);
        }
        let old_subscriptions = sc_subscriptions(&self.config);
        let new_subscriptions = sc_subscriptions(&config);
        if config.socketcluster != self.config.socketcluster {
            self.outputs.sc.shutdown().await;
            let (sc, incoming) = ScClient::start(config.socketcluster.clone());
            for sub in &new_subscriptions {
                sc.subscribe(&sub.channel, sub.wait_for_auth).await;
            }
            self.link = sc.link_state();
            self.sc_incoming = incoming;
            self.outputs.sc = sc;
            report.socketcluster_reconnected = true;
        } else {
            for old in old_subscriptions.iter().filter(|o| !new_subscriptions.contains(o)) {
                self.outputs.sc.unsubscribe(&old.channel).await;
            }
            for new in new_subscriptions.iter().filter(|n| !old_subscriptions.contains(n)) {
                self.outputs.sc.subscribe(&new.channel, new.wait_for_auth).await;
            }
        }
        if config.osc != self.config.osc {
            if let Some(old) = self.osc.take() {
                old.stop.cancel();
                old.handle.stopped().await;
            }
            match start_osc(&config, &self.inbound_tx, &self.shutdown).await {
                Ok(osc) => self.osc = osc,
                Err(err) => {
                    tracing::error!(error = %err, "reload: the OSC endpoint could not start")
                }
            }
            self.outputs.osc = self.osc.as_ref().map(|e| e.handle.clone());
            report.osc_restarted = true;
        }
        if config.mqtt != self.config.mqtt
            || mqtt_subscriptions(&config) != mqtt_subscriptions(&self.config)
        {
            if let Some(old) = self.mqtt.take() {
                old.handle.shutdown().await;
                old.stop.cancel();
            }
            match start_mqtt(&config, &self.inbound_tx, &self.shutdown) {
                Ok(mqtt) => self.mqtt = mqtt,
                Err(err) => {
                    tracing::error!(error = %err, "reload: the MQTT endpoint could not start")
                }
            }
            self.outputs.mqtt = self.mqtt.as_ref().map(|e| e.handle.clone());
            report.mqtt_restarted = true;
        }
        // Routes: counters and runtime switches carry over by route name.
        let old_table = self.table.clone();
        let old_stats = self.outputs.routes.clone();
        let table = Arc::new(RoutingTable::new(config.routes.clone()));
        let stats: Vec<RouteStats> = table
            .routes()
            .iter()
            .map(|route| {
                let fresh = RouteStats::default();
                if let Some(old) = old_table.find(&route.name).and_then(|id| old_stats.get(id.0)) {
                    for ((_, value), (_, counter)) in
                        old.snapshot().into_iter().zip(fresh.counters())
                    {
                        counter.store(value, Ordering::Relaxed);
                    }
                }
                fresh
            })
            .collect();
        self.enabled = std::mem::take(&mut self.enabled)
            .into_iter()
            .filter_map(|(id, on)| {
                let name = &old_table.route_by_id(id)?.name;
                table.find(name).map(|new_id| (new_id, on))
            })
            .collect();
        self.table = table;
        self.outputs.routes = Arc::new(stats);
        self.last_values.clear();
        self.adopt(&config);
        self.config = config;
        self.publish_view();
        bump(&self.outputs.stats.reloads);
        tracing::info!(?report, "config reloaded");
        if report.socketcluster_reconnected || report.mqtt_restarted || report.osc_restarted {
            self.publish_status();
        }
        report
    }

    /// Tells the other cables clients whether we send, after every connect.
    fn announce(&self) {
        if let Some(cables) = &self.cables {
            self.outputs.sc.publish(cables.control_channel(), &cables.announcement());
        }
    }

    /// Publishes the SocketCluster link state: retained on MQTT, 1/0 on OSC.
    fn publish_status(&self) {
        let state = self.link.borrow().clone();
        let connected = state.is_connected();
        let control = &self.config.control;
        if let (Some(topic), Some(mqtt)) = (&control.status_topic, &self.outputs.mqtt) {
            let body = match &state {
                LinkState::Connected { socket_id, authenticated } => {
                    serde_json::json!({"state": "connected", "socket_id": socket_id, "authenticated": authenticated})
                }
                LinkState::Connecting { attempt } => {
                    serde_json::json!({"state": "connecting", "attempt": attempt})
                }
                LinkState::Disconnected { reason, code, .. } => {
                    serde_json::json!({"state": "disconnected", "reason": reason, "code": code})
                }
                LinkState::Inactive => serde_json::json!({"state": "inactive"}),
            };
            let out = MqttOut {
                topic: topic.clone(),
                body: Body::Value(body),
                qos: QoS::AtLeastOnce,
                retain: true,
                format: PayloadFormat::Json,
            };
            if mqtt.send(out).is_err() {
                tracing::debug!("the link status could not be queued for MQTT");
            }
        }
        if let (Some((target, address)), Some(osc)) = (&control.osc_status, &self.outputs.osc) {
            let out = OscOut {
                target: *target,
                address: address.clone(),
                body: Body::Value(Value::from(u8::from(connected))),
                options: Arc::new(OscOutOptions::default()),
            };
            if osc.send(out).is_err() {
                tracing::debug!("the link status could not be queued for OSC");
            }
        }
    }

    fn take_socketcluster(&mut self, incoming: Incoming) {
        let stats = &self.outputs.stats;
        match incoming {
            Incoming::Publish { channel, mut data } => {
                if let Some(cables) = &mut self.cables {
                    match cables.receive(&channel, data) {
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
                        Received::NotCables(untouched) => data = untouched,
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

    /// A control message from OSC or MQTT, if this is one.
    fn control_command(&self, message: &Message) -> Option<Result<Control, String>> {
        let prefix = match message.source {
            SourceKind::Osc => self.config.control.osc.as_deref(),
            SourceKind::Mqtt => self.config.control.mqtt.as_deref(),
            _ => None,
        }?;
        let command = message.name.strip_prefix(prefix)?.strip_prefix('/')?;
        let value = match &message.body {
            Body::Value(value) => value.clone(),
            Body::Trigger => Value::Null,
        };
        Some(parse_control(command, &value))
    }

    fn route(&mut self, message: Message) {
        if let Some(command) = self.control_command(&message) {
            match command {
                Ok(control) => {
                    bump(&self.outputs.stats.control_commands);
                    self.apply_now(control);
                }
                Err(why) => {
                    bump(&self.outputs.stats.bad_control_commands);
                    tracing::warn!(name = %message.name, why, "ignored a control message");
                }
            }
            return;
        }
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
        if self.recent.capacity() > 0 {
            self.remember(&message);
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
            let route_index = out.route.0;
            let route = &table.routes()[route_index];
            if counted != Some(out.route) {
                bump(&self.outputs.routes[out.route.0].matched);
                counted = Some(out.route);
            }
            // Remembered only when something can ask for a resend: it costs
            // a copy of every output.
            if self.resend_enabled && !route.carries_triggers() {
                let key = (out.route.0, out.destination, out.name.clone());
                if self.last_values.len() < RESEND_MEMORY || self.last_values.contains_key(&key) {
                    self.last_values.insert(key, out.clone());
                } else {
                    bump(&stats.resend_memory_full);
                }
            }
            if let Some(interval) = route.min_interval {
                let now = tokio::time::Instant::now();
                match self.coalescer.offer(out, interval, now) {
                    Offer::SendNow(out) => self.outputs.send(out),
                    Offer::Waiting => {}
                    Offer::Replaced => bump(&self.outputs.routes[route_index].coalesced),
                }
            } else if route.delay.is_zero() {
                self.outputs.send(out);
            } else {
                let outputs = self.outputs.clone();
                let delay = route.delay;
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    outputs.send(out);
                });
            }
        }
    }

    /// Adds a routed message to `/recent`, before its outputs go.
    fn remember(&self, message: &Message) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let outputs: Vec<Value> = self
            .out
            .iter()
            .map(
                |o| serde_json::json!({"route": self.table.routes()[o.route.0].name, "to": o.name}),
            )
            .collect();
        let value = match &message.body {
            Body::Value(value) => value.clone(),
            Body::Trigger => Value::String("(trigger)".into()),
        };
        self.recent.push(serde_json::json!({
            "time_ms": now,
            "source": message.source.key(),
            "name": message.name,
            "value": value,
            "outputs": outputs,
            "skipped": self.skipped.len(),
        }));
    }

    /// Carries out a control command (a reload excepted). The SocketCluster
    /// ones are handed to the link without waiting here.
    fn apply_now(&mut self, control: Control) {
        match control {
            Control::SetActive(active) => {
                tracing::info!(active, "control: SocketCluster link active");
                let sc = self.outputs.sc.clone();
                tokio::spawn(async move { sc.set_active(active).await });
            }
            Control::Reset => {
                tracing::info!("control: SocketCluster link reset");
                let sc = self.outputs.sc.clone();
                tokio::spawn(async move { sc.reset().await });
            }
            Control::SetRouteEnabled { name, enabled } => match self.table.find(&name) {
                Some(id) => {
                    tracing::info!(route = %name, enabled, "control: route switched");
                    self.enabled.insert(id, enabled);
                    self.publish_view();
                }
                None => {
                    bump(&self.outputs.stats.bad_control_commands);
                    tracing::warn!(route = %name, "control: no route by that name");
                }
            },
            Control::Resend => {
                tracing::info!(
                    values = self.last_values.len(),
                    "control: sending every state route's last value again"
                );
                for out in self.last_values.values() {
                    self.outputs.send(out.clone());
                }
            }
            Control::Reload(..) => tracing::warn!("a reload can only come from the service"),
        }
    }
}

/// What happened to an output offered to the coalescer.
enum Offer {
    SendNow(Outbound),
    /// Held until its name's interval has passed.
    Waiting,
    /// Held, replacing an older value that was waiting.
    Replaced,
}

/// Per destination name: at most one output per interval, the newest value
/// winning. Keeps a value stream (500 faders at 60 Hz) from flooding the
/// SocketCluster server, while the last value always arrives.
/// One destination name of one route: (route, destination, name).
type OutputKey = (usize, usize, String);

#[derive(Default)]
struct Coalescer {
    slots: HashMap<OutputKey, Slot>,
    /// Due times of waiting values, earliest first.
    due: std::collections::BinaryHeap<std::cmp::Reverse<(tokio::time::Instant, OutputKey)>>,
}

struct Slot {
    /// When the next output for this name may go.
    next: tokio::time::Instant,
    interval: Duration,
    /// The newest value waiting for `next`.
    waiting: Option<Outbound>,
}

impl Coalescer {
    fn offer(&mut self, out: Outbound, interval: Duration, now: tokio::time::Instant) -> Offer {
        let key = (out.route.0, out.destination, out.name.clone());
        match self.slots.get_mut(&key) {
            Some(slot) if slot.next > now => {
                if slot.waiting.replace(out).is_some() {
                    Offer::Replaced
                } else {
                    self.due.push(std::cmp::Reverse((slot.next, key)));
                    Offer::Waiting
                }
            }
            Some(slot) => {
                slot.next = now + interval;
                slot.interval = interval;
                Offer::SendNow(out)
            }
            None => {
                if self.slots.len() >= RESEND_MEMORY {
                    // Too many distinct names to track: forget the idle ones.
                    self.slots.retain(|_, slot| slot.next > now || slot.waiting.is_some());
                }
                self.slots.insert(key, Slot { next: now + interval, interval, waiting: None });
                Offer::SendNow(out)
            }
        }
    }

    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.due.peek().map(|std::cmp::Reverse((at, _))| *at)
    }

    /// The waiting values whose turn has come; each starts a new interval.
    fn take_due(&mut self, now: tokio::time::Instant) -> Vec<Outbound> {
        let mut ready = Vec::new();
        while self.next_due().is_some_and(|at| at <= now) {
            let Some(std::cmp::Reverse((_, key))) = self.due.pop() else { break };
            if let Some(slot) = self.slots.get_mut(&key)
                && let Some(out) = slot.waiting.take()
            {
                slot.next = now + slot.interval;
                ready.push(out);
            }
        }
        ready
    }

    fn drain(&mut self) -> Vec<Outbound> {
        self.due.clear();
        self.slots.drain().filter_map(|(_, slot)| slot.waiting).collect()
    }
}

async fn sleep_until_or_never(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads a truthy value the way OSC and MQTT senders write one.
fn truthy(value: &Value) -> Option<bool> {
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

/// `active` 0/1, `reset`, `resend`, `route` [name, 0/1] or {name, enabled}.
fn parse_control(command: &str, value: &Value) -> Result<Control, String> {
    match command {
        "active" => truthy(value).map(Control::SetActive).ok_or_else(|| "active needs 0/1".into()),
        "reset" => Ok(Control::Reset),
        "resend" => Ok(Control::Resend),
        "route" => {
            let (name, flag) = match value {
                Value::Array(items) if items.len() == 2 => (items[0].as_str(), truthy(&items[1])),
                Value::Object(fields) => (
                    fields.get("name").and_then(Value::as_str),
                    fields.get("enabled").and_then(truthy),
                ),
                _ => (None, None),
            };
            match (name, flag) {
                (Some(name), Some(enabled)) => {
                    Ok(Control::SetRouteEnabled { name: name.to_owned(), enabled })
                }
                _ => Err("route needs [name, 0/1] or {\"name\": ..., \"enabled\": ...}".into()),
            }
        }
        other => Err(format!("unknown control command `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_commands_read_osc_and_mqtt_shapes() {
        assert!(matches!(parse_control("active", &json!(0.0)), Ok(Control::SetActive(false))));
        assert!(matches!(parse_control("active", &json!("on")), Ok(Control::SetActive(true))));
        assert!(matches!(parse_control("reset", &Value::Null), Ok(Control::Reset)));
        assert!(matches!(
            parse_control("route", &json!(["lights", 0])),
            Ok(Control::SetRouteEnabled { name, enabled: false }) if name == "lights"
        ));
        assert!(matches!(
            parse_control("route", &json!({"name": "lights", "enabled": true})),
            Ok(Control::SetRouteEnabled { enabled: true, .. })
        ));
        assert!(parse_control("route", &json!(1)).is_err());
        assert!(parse_control("explode", &json!(1)).is_err());
        assert!(parse_control("active", &json!("maybe")).is_err());
    }

    fn output(name: &str, value: f64) -> Outbound {
        Outbound {
            route: RouteId(0),
            destination: 0,
            target: Target::ScChannel,
            name: name.into(),
            body: Body::Value(json!(value)),
        }
    }

    #[test]
    fn the_coalescer_sends_at_most_one_per_interval_and_always_the_latest() {
        let mut c = Coalescer::default();
        let start = tokio::time::Instant::now();
        let every = Duration::from_millis(100);
        assert!(matches!(c.offer(output("/a", 1.0), every, start), Offer::SendNow(_)));
        assert!(matches!(c.offer(output("/a", 2.0), every, start), Offer::Waiting));
        assert!(matches!(c.offer(output("/a", 3.0), every, start), Offer::Replaced));
        assert!(
            matches!(c.offer(output("/b", 9.0), every, start), Offer::SendNow(_)),
            "names are separate"
        );
        assert!(c.take_due(start + Duration::from_millis(50)).is_empty());
        assert_eq!(c.next_due(), Some(start + every));
        let due = c.take_due(start + every);
        assert_eq!(due, vec![output("/a", 3.0)]);
        assert!(matches!(c.offer(output("/a", 4.0), every, start + every), Offer::Waiting));
        assert_eq!(c.drain(), vec![output("/a", 4.0)]);
    }

    #[test]
    fn own_channel_publishes_are_recognised_once() {
        let echoes = EchoFilter::default();
        echoes.remember("notes", &json!({"a": 1}));
        assert!(!echoes.is_echo("notes", &json!({"a": 2})));
        assert!(echoes.is_echo("notes", &json!({"a": 1})));
        assert!(!echoes.is_echo("notes", &json!({"a": 1})));
    }
}
