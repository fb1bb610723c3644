//! Wires the endpoints and the router together: every message passes the
//! router once, in one task, and each output goes to its endpoint's bounded
//! queue without waiting. Every drop is counted, per route where a route is
//! known.
//!
//! - `mod.rs`: starting the endpoints, [`Running`], reload's view of them.
//! - `router`: the one task every message passes, control and reload.
//! - `outputs`: handing outputs to endpoints, counted; own-echo memory.
//! - `coalesce`: `max_rate`, the latest value per name.
//! - `control`: reading control commands from OSC and MQTT values.

mod coalesce;
mod control;
mod delay;
mod outputs;
mod resend;
mod router;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::cables::Cables;
use crate::config::{ChannelSubscription, Config};
use crate::http::RecentLog;
use crate::message::{Message, SourceKind};
use crate::mqtt::{MqttEndpoint, MqttHandle, QoS, Subscription};
use crate::osc::{OscEndpoint, OscHandle};
use crate::route::RoutingTable;
use crate::sc::ScClient;
use coalesce::Coalescer;
use outputs::Outputs;
use router::Router;

/// Messages from OSC and MQTT waiting for the router.
const INBOUND_QUEUE: usize = 8192;
/// Control commands waiting for the router.
const CONTROL_QUEUE: usize = 64;

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
        /// Skipped: the destination name could not be made, or came out empty.
        bad_names,
        /// Skipped: a button's release (0, false, off) is no trigger
        /// (`trigger_on = "press"`).
        releases,
        /// Dropped: the endpoint's queue was full, or the bound on invokes
        /// awaiting their reply was reached.
        queue_full,
        /// Withheld: cables Allow Send is off or another sender took over.
        not_allowed,
        /// Dropped: the destination's link is not configured.
        no_link,
        /// Replaced by a newer value before its turn (`max_rate`); not a loss
        /// of state, the latest value always goes out.
        coalesced,
        /// Dropped: too many outputs were already waiting for their delay.
        delay_full,
        /// Dropped at the stop: still waiting for its delay, or refused by an
        /// endpoint that had already begun to shut down.
        shutdown_dropped,
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
        /// Publishes on a channel subscribed to be watched (`subscribe`)
        /// that got no log line: more than 20 a second.
        monitored_unlogged,
        /// Invokes to the server that failed or timed out.
        failed_invokes,
        /// Control messages carried out.
        control_commands,
        /// Control messages that made no sense.
        bad_control_commands,
        /// Retained `reset` or `resend` messages the broker replayed; not
        /// carried out, since they act once, when sent.
        retained_actions,
        /// `resend` commands refused because one ran less than a second
        /// before.
        resends_refused,
        /// `reset` commands refused because one went less than a second
        /// before.
        resets_refused,
        /// `reset` or `resend` with 0, false or off: a button's release,
        /// which does nothing.
        control_releases,
        /// Config reloads applied.
        reloads,
        /// Last values not remembered for `resend` (the memory was full).
        resend_memory_full,
        /// Link commands (`active`, `reset`) dropped because earlier ones
        /// were still waiting: a flood of control messages.
        controls_dropped,
        /// Input that reached the router after its stop-time drain: counted,
        /// not routed.
        shutdown_dropped,
        /// Outputs of a route a reload removed while they waited: dropped.
        stale_outputs,
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
    #[error("socketcluster.ca_file: {0}")]
    ScTls(#[source] crate::tls::TlsError),
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
    /// Links whose new settings did not take: they kept their old ones
    /// (or, when those failed to start again too, are down), and the next
    /// reload tries again. For MQTT also a subscription change refused.
    pub failed: Vec<&'static str>,
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
    links: CancellationToken,
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

    /// Stops: the router routes what reached it, then every link sends what
    /// it holds and closes cleanly (MQTT says `offline`); see
    /// `Router::stop_links`. Waits for all of it.
    pub async fn stop(self) {
        let view = self.view();
        self.shutdown.cancel();
        if self.task.await.is_err() {
            // The router did not get to close the links; close what it can.
            if let Some(mqtt) = &view.mqtt {
                mqtt.shutdown().await;
            }
            view.sc.shutdown().await;
            self.links.cancel();
        }
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

/// Endpoints have their own stop token, a child of `links` rather than of
/// the router's: at the stop they must outlive the router's drain, which
/// still hands them output. `links` stops them all if the router is gone.
async fn start_osc(
    config: &Config,
    inbound: &mpsc::Sender<Message>,
    links: &CancellationToken,
) -> Result<Option<Endpoint<OscHandle>>, BridgeError> {
    let Some(osc) = &config.osc else { return Ok(None) };
    let stop = links.child_token();
    let handle = OscEndpoint::start(osc, inbound.clone(), stop.clone()).await?;
    Ok(Some(Endpoint { handle, stop }))
}

fn start_mqtt(
    config: &Config,
    inbound: &mpsc::Sender<Message>,
    links: &CancellationToken,
) -> Result<Option<Endpoint<MqttHandle>>, BridgeError> {
    let Some(mqtt) = &config.mqtt else { return Ok(None) };
    let stop = links.child_token();
    let handle = MqttEndpoint::start(
        mqtt.clone(),
        mqtt_subscriptions(config),
        inbound.clone(),
        stop.clone(),
    )?;
    Ok(Some(Endpoint { handle, stop }))
}

/// After a reload fell back to the OSC settings it had: the new routes'
/// OSC destinations (and the status target) number their targets in the
/// new `[osc.targets]`; points them at the same names in the kept list.
/// False, changing nothing, when a name is not there.
fn retarget_osc(
    routes: &mut [crate::route::Route],
    control: &mut crate::config::ControlConfig,
    new: &crate::osc::OscConfig,
    kept: &crate::osc::OscConfig,
) -> bool {
    let renumbered: Vec<Option<usize>> = new
        .targets
        .iter()
        .map(|target| kept.targets.iter().position(|k| k.name == target.name))
        .collect();
    let kept_number = |number: usize| renumbered.get(number).copied().flatten();
    let osc_targets = |routes: &[crate::route::Route]| -> Vec<usize> {
        routes
            .iter()
            .flat_map(|route| &route.destinations)
            .filter_map(|d| match d.target {
                crate::route::Target::Osc { target, .. } => Some(target),
                _ => None,
            })
            .collect()
    };
    let all_kept = osc_targets(routes).into_iter().all(|n| kept_number(n).is_some())
        && control.osc_status.as_ref().is_none_or(|(n, _)| kept_number(*n).is_some());
    if !all_kept {
        return false;
    }
    for destination in routes.iter_mut().flat_map(|route| &mut route.destinations) {
        if let crate::route::Target::Osc { target, .. } = &mut destination.target
            && let Some(number) = kept_number(*target)
        {
            *target = number;
        }
    }
    if let Some((target, _)) = &mut control.osc_status
        && let Some(number) = kept_number(*target)
    {
        *target = number;
    }
    true
}

/// A `wss://` link builds its TLS settings on every connect; a CA file that
/// cannot be used fails the start here, rather than every attempt later.
pub(super) fn check_sc_tls(sc: &crate::sc::ScConfig) -> Result<(), BridgeError> {
    if sc.url.scheme() != "wss" || sc.ca_file.is_none() {
        return Ok(());
    }
    let settings = crate::tls::TlsSettings {
        verify: sc.verify_tls,
        ca_file: sc.ca_file.as_deref(),
        client_auth: None,
    };
    crate::tls::client_config(settings).map(drop).map_err(BridgeError::ScTls)
}

/// Starts every configured endpoint and the router task. Only local
/// resources can fail here (an OSC port, a TLS file); remote peers being
/// down is just a retry.
pub async fn start(config: Config) -> Result<Running, BridgeError> {
    check_sc_tls(&config.socketcluster)?;
    let shutdown = CancellationToken::new();
    let links = CancellationToken::new();
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let osc = start_osc(&config, &inbound_tx, &links).await?;
    let mqtt = match start_mqtt(&config, &inbound_tx, &links) {
        Ok(mqtt) => mqtt,
        Err(err) => {
            links.cancel();
            return Err(err);
        }
    };
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
            invokes: Arc::new(tokio::sync::Semaphore::new(outputs::MAX_INVOKES)),
        },
        cables: None,
        raw_channels: HashSet::new(),
        events: HashSet::new(),
        monitored: HashSet::new(),
        enabled: HashMap::new(),
        last_values: resend::ResendMemory::default(),
        resend_enabled: false,
        coalescer: Coalescer::default(),
        delay_line: delay::DelayLine::new(router::MAX_DELAYED),
        quiet: router::QuietDrops::default(),
        control_memory: router::ControlMemory::default(),
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
        links: links.clone(),
        config: config.clone(),
    };
    router.adopt(&config);
    let task = tokio::spawn(router.run());
    Ok(Running { stats, recent, alive, view, control: control_tx, task, shutdown, links })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Target;

    fn config(targets: &str, route_target: &str) -> Config {
        let toml = format!(
            "[socketcluster]\nurl = \"ws://127.0.0.1:9/socketcluster/\"\n[osc]\nlisten = [\"127.0.0.1:0\"]\n[osc.targets]\n{targets}\n[control]\nosc = \"/ctl\"\nosc_status_target = \"{route_target}\"\n[[route]]\nname = \"r\"\nfrom = {{ osc = \"/in\" }}\nto = [{{ osc = \"/out\", target = \"{route_target}\" }}]\n"
        );
        Config::from_toml(&toml, "test.toml").expect("valid test config")
    }

    fn osc_target(config: &Config) -> usize {
        match config.routes[0].destinations[0].target {
            Target::Osc { target, .. } => target,
            ref other => panic!("not an OSC destination: {other:?}"),
        }
    }

    #[test]
    fn kept_osc_targets_are_found_again_by_name() {
        let kept = config("td = \"127.0.0.1:9001\"", "td");
        let mut new = config("a = \"127.0.0.1:9002\"\ntd = \"127.0.0.1:9001\"", "td");
        let (new_osc, kept_osc) = (new.osc.clone().expect("osc"), kept.osc.clone().expect("osc"));
        assert_eq!(osc_target(&new), 1);
        assert!(retarget_osc(&mut new.routes, &mut new.control, &new_osc, &kept_osc));
        assert_eq!(osc_target(&new), 0);
        assert_eq!(new.control.osc_status.as_ref().map(|(n, _)| *n), Some(0));
    }

    #[test]
    fn a_target_the_kept_settings_lack_changes_nothing() {
        let kept = config("td = \"127.0.0.1:9001\"", "td");
        let mut new = config("td = \"127.0.0.1:9001\"\nz = \"127.0.0.1:9002\"", "z");
        let (new_osc, kept_osc) = (new.osc.clone().expect("osc"), kept.osc.clone().expect("osc"));
        let before = new.routes.clone();
        assert!(!retarget_osc(&mut new.routes, &mut new.control, &new_osc, &kept_osc));
        assert_eq!(new.routes, before);
    }
}
