//! The router task: the one place every message is routed, exactly once;
//! it also carries out control commands and reloads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::coalesce::{Coalescer, Offer};
use super::control::parse_control;
use super::delay::DelayLine;
use super::outputs::{CablesOut, Outputs};
use super::resend::{self, ResendMemory};
use super::{
    Control, Endpoint, ReloadReport, RouteStats, View, mqtt_subscriptions, sc_subscriptions,
    start_mqtt, start_osc,
};
use crate::cables::{Cables, Received};
use crate::config::Config;
use crate::http::RecentLog;
use crate::message::{Body, Message, SourceKind};
use crate::mqtt::{MqttHandle, MqttOut, PayloadFormat, QoS};
use crate::osc::mapping::OscOutOptions;
use crate::osc::{OscHandle, OscOut};
use crate::route::{Outbound, RouteId, RoutingTable, Skip, Target};
use crate::sc::{Incoming, LinkState, ScClient};
use crate::stats::{Routine, bump};

/// How many waiting messages the router takes in one turn before it looks
/// at its other inputs again.
const BATCH: usize = 256;
/// Outputs waiting for their route's `delay_ms` at once, over all routes;
/// beyond this they are dropped and counted, so that a flood into a delayed
/// route cannot pile up without bound.
pub(super) const MAX_DELAYED: usize = 10_000;
/// A resend sends up to [`resend::MAX_ENTRIES`] outputs at once; a flood of
/// resend commands must not become a flood of outputs. A reset interrupts
/// the reconnect of the one before; a flood of resets would keep the link
/// from ever coming up.
const MIN_ACTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The most bytes of a watched channel's message in its log line.
const MAX_LOGGED_VALUE_BYTES: usize = 1000;

pub(super) struct Router {
    pub(super) config: Config,
    pub(super) recent: Arc<RecentLog>,
    pub(super) alive: Arc<AtomicBool>,
    pub(super) table: Arc<RoutingTable>,
    pub(super) outputs: Outputs,
    pub(super) cables: Option<Cables>,
    pub(super) raw_channels: HashSet<String>,
    pub(super) events: HashSet<String>,
    pub(super) monitored: HashSet<String>,
    /// Runtime overrides of routes' `enabled`.
    pub(super) enabled: HashMap<RouteId, bool>,
    /// The last output of every state route, for `resend`.
    pub(super) last_values: ResendMemory,
    /// Whether `resend` can be asked for (a control prefix is configured).
    pub(super) resend_enabled: bool,
    /// Rate-limited routes: per destination name, when it last went out and
    /// the newest value waiting for its turn.
    pub(super) coalescer: Coalescer,
    pub(super) out: Vec<Outbound>,
    pub(super) skipped: Vec<(RouteId, Skip)>,
    pub(super) osc: Option<Endpoint<OscHandle>>,
    pub(super) mqtt: Option<Endpoint<MqttHandle>>,
    pub(super) sc_incoming: mpsc::Receiver<Incoming>,
    pub(super) link: watch::Receiver<LinkState>,
    pub(super) inbound: mpsc::Receiver<Message>,
    /// Kept to hand to endpoints restarted by a reload.
    pub(super) inbound_tx: mpsc::Sender<Message>,
    pub(super) controls: mpsc::Receiver<Control>,
    pub(super) view: Arc<RwLock<View>>,
    pub(super) shutdown: CancellationToken,
    /// The parent of every endpoint's own stop token (see `start_osc`).
    pub(super) links: CancellationToken,
    /// Outputs waiting for their route's delay.
    pub(super) delay_line: DelayLine,
    /// When the routine drops below are next worth a log line.
    pub(super) quiet: QuietDrops,
    /// What earlier control commands did, so that repeats neither flood
    /// the link nor the log.
    pub(super) control_memory: ControlMemory,
}

/// TouchDesigner exports a channel on every frame, so the same control
/// command may arrive 60 times a second.
#[derive(Default)]
pub(super) struct ControlMemory {
    /// When the last `resend` was carried out.
    last_resend: Option<tokio::time::Instant>,
    /// When the last `reset` was handed to the link.
    last_reset: Option<tokio::time::Instant>,
    /// The last `active` handed to the link, which applies its commands in
    /// order: so this is what the link will be. `None` for a link that has
    /// had none yet.
    requested_active: Option<bool>,
}

/// What became of a paced control action.
#[derive(Debug, PartialEq, Eq)]
enum Paced {
    /// The last one taken was under [`MIN_ACTION_INTERVAL`] ago.
    TooSoon,
    /// Carried out, or handed to the link; the interval starts now.
    Taken,
    /// The link could not take it (its command queue is full).
    Refused,
}

impl ControlMemory {
    /// Carries out an action last taken at `last`, at most once per
    /// [`MIN_ACTION_INTERVAL`]. Only an action taken starts the interval:
    /// one the link refused may be asked for again at once.
    fn pace(last: &mut Option<tokio::time::Instant>, take: impl FnOnce() -> bool) -> Paced {
        let now = tokio::time::Instant::now();
        if last.is_some_and(|at| now < at + MIN_ACTION_INTERVAL) {
            Paced::TooSoon
        } else if take() {
            *last = Some(now);
            Paced::Taken
        } else {
            Paced::Refused
        }
    }
}

/// Log pacing for drops that are routine: a sender on a shared OSC port or
/// MQTT filter sends more than the routes want.
#[derive(Default)]
pub(super) struct QuietDrops {
    watched: crate::stats::Watched,
    unrouted: Routine,
    loops: Routine,
    unlisted_channels: Routine,
    unlisted_events: Routine,
}

impl Router {
    /// Takes the parts of a config that need no restart: what to listen to,
    /// the cables state, the control settings.
    pub(super) fn adopt(&mut self, config: &Config) {
        let cables_changed = self.cables.as_ref().map(|c| c.config()) != config.cables.as_ref();
        if cables_changed || self.cables.is_none() {
            let old = self.cables.take();
            self.cables = config.cables.clone().map(|config| {
                let mut cables = Cables::new(config);
                if let Some(old) = &old {
                    cables.keep_arbitration(old);
                }
                cables
            });
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

    pub(super) async fn run(mut self) {
        // Cleared however the task ends, a panic included, so that
        // `/health` and the service see a router that is gone.
        let _alive = ClearOnDrop(self.alive.clone());
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
                        self.dispatch(out);
                    }
                }
                _ = sleep_until_or_never(self.delay_line.next_due()) => {
                    for out in self.delay_line.take_due(tokio::time::Instant::now()) {
                        if self.still_switched_on(&out) {
                            self.outputs.send(out);
                        }
                    }
                }
                changed = self.link.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.link_changed();
                }
            }
        }
        self.drain_at_shutdown();
        self.stop_links().await;
    }

    /// After the drain, each link sends what it holds and closes: MQTT its
    /// queue, then `offline` and a clean DISCONNECT (not the last will of a
    /// dropped connection); OSC its queue; SocketCluster its queue, then a
    /// clean close. Input that arrived meanwhile is counted, not routed.
    async fn stop_links(&mut self) {
        if let Some(mqtt) = self.mqtt.take() {
            mqtt.handle.shutdown().await;
            mqtt.stop.cancel();
        }
        if let Some(osc) = self.osc.take() {
            osc.stop.cancel();
            osc.handle.stopped().await;
        }
        self.outputs.sc.shutdown().await;
        let mut late = 0u64;
        while self.inbound.try_recv().is_ok() {
            late += 1;
        }
        while self.sc_incoming.try_recv().is_ok() {
            late += 1;
        }
        if late > 0 {
            crate::stats::add(&self.outputs.stats.shutdown_dropped, late);
            tracing::info!(dropped = late, "input that arrived during the stop was not routed");
        }
    }

    /// Stop taking input, then send what is queued: routes what reached the
    /// router before the stop (at most one queue's worth each, so input
    /// that keeps coming cannot hold the stop up) and sends the values
    /// waiting in the coalescer, while every link still runs. Outputs
    /// waiting for a delay are dropped and counted.
    fn drain_at_shutdown(&mut self) {
        let mut routed = 0usize;
        for _ in 0..self.sc_incoming.max_capacity() {
            let Ok(incoming) = self.sc_incoming.try_recv() else { break };
            self.take_socketcluster(incoming);
            routed += 1;
        }
        for _ in 0..self.inbound.max_capacity() {
            let Ok(message) = self.inbound.try_recv() else { break };
            self.route(message);
            routed += 1;
        }
        let waiting = self.coalescer.drain();
        let coalesced = waiting.len();
        for out in waiting {
            self.dispatch(out);
        }
        let delayed = self.delay_line.len();
        for out in self.delay_line.drain() {
            match self.outputs.routes.get(out.route.0) {
                Some(route) => bump(&route.shutdown_dropped),
                None => bump(&self.outputs.stats.shutdown_dropped),
            }
        }
        if routed + coalesced + delayed > 0 {
            tracing::info!(
                routed,
                coalesced,
                dropped_delayed = delayed,
                "router stopped: sent what was waiting; outputs still in their delay are dropped"
            );
        }
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
    async fn reload(&mut self, mut config: Config) -> ReloadReport {
        let mut report = ReloadReport { routes: config.routes.len(), ..ReloadReport::default() };
        let announced = self.announcement();
        let old_subscriptions = sc_subscriptions(&self.config);
        let new_subscriptions = sc_subscriptions(&config);
        if config.socketcluster != self.config.socketcluster
            && let Err(err) = super::check_sc_tls(&config.socketcluster)
        {
            tracing::error!(error = %err, "reload: the SocketCluster link keeps its old settings");
            report.failed.push("socketcluster");
            config.socketcluster = self.config.socketcluster.clone();
        }
        if config.socketcluster != self.config.socketcluster {
            self.outputs.sc.shutdown().await;
            let (sc, incoming) = ScClient::start(config.socketcluster.clone());
            for sub in &new_subscriptions {
                sc.subscribe(&sub.channel, sub.wait_for_auth).await;
            }
            self.link = sc.link_state();
            self.outputs.sc = sc;
            // The new link starts from the config's `active`.
            self.control_memory.requested_active = None;
            // What the old link received and the router had not taken yet
            // is still routed (its SocketCluster outputs go to the new link).
            let mut old_incoming = std::mem::replace(&mut self.sc_incoming, incoming);
            while let Ok(incoming) = old_incoming.try_recv() {
                self.take_socketcluster(incoming);
            }
            report.socketcluster_reconnected = true;
        } else {
            for old in old_subscriptions.iter().filter(|o| !new_subscriptions.contains(o)) {
                self.outputs.sc.unsubscribe(&old.channel).await;
            }
            for new in new_subscriptions.iter().filter(|n| !old_subscriptions.contains(n)) {
                self.outputs.sc.subscribe(&new.channel, new.wait_for_auth).await;
            }
        }
        // Values waiting for their `max_rate` turn belong to the old
        // table's routes (their ids, their OSC target numbers), as do the
        // messages the old SocketCluster link left: sent while the old table
        // and the old OSC and MQTT endpoints are still in place.
        for out in self.coalescer.drain() {
            self.dispatch(out);
        }
        // The new config is kept whole, except that a link which could not
        // start with its new settings keeps its old ones (restarted), so
        // that the next reload tries the new settings again. A link that is
        // configured but not running (both starts failed) is started again.
        if config.osc != self.config.osc || (config.osc.is_some() && self.osc.is_none()) {
            if let (Some(new), Some(old)) = (&mut config.osc, &self.config.osc) {
                for target in &mut new.targets {
                    if let Some(earlier) = old.targets.iter().find(|t| t.name == target.name) {
                        target.keep_address_of(earlier);
                    }
                }
            }
            if let Some(old) = self.osc.take() {
                old.stop.cancel();
                old.handle.stopped().await;
            }
            match start_osc(&config, &self.inbound_tx, &self.links).await {
                Ok(osc) => {
                    self.osc = osc;
                    report.osc_restarted = true;
                }
                Err(err) => {
                    tracing::error!(error = %err, "reload: the OSC endpoint could not start with its new settings; keeping the old ones");
                    report.failed.push("osc");
                    if let (Some(new), Some(kept)) = (&config.osc, &self.config.osc)
                        && !super::retarget_osc(&mut config.routes, &mut config.control, new, kept)
                    {
                        tracing::error!(
                            "reload: the new routes name OSC targets the old OSC settings do not have; keeping the old routes as well"
                        );
                        config.routes = self.config.routes.clone();
                        config.control = self.config.control.clone();
                        report.routes = config.routes.len();
                    }
                    config.osc = self.config.osc.clone();
                    match start_osc(&config, &self.inbound_tx, &self.links).await {
                        Ok(osc) => self.osc = osc,
                        Err(err) => {
                            tracing::error!(error = %err, "reload: the OSC endpoint could not start again with its old settings either: OSC is down until the next reload")
                        }
                    }
                }
            }
            self.outputs.osc = self.osc.as_ref().map(|e| e.handle.clone());
        }
        let mqtt_changed =
            config.mqtt != self.config.mqtt || (config.mqtt.is_some() && self.mqtt.is_none());
        if !mqtt_changed && mqtt_subscriptions(&config) != mqtt_subscriptions(&self.config) {
            // Only what to listen to changed: no reconnect.
            if let Some(mqtt) = &self.mqtt
                && let Err(err) = mqtt.handle.set_subscriptions(mqtt_subscriptions(&config))
            {
                tracing::error!(error = %err, "reload: the MQTT subscriptions could not change");
                report.failed.push("mqtt");
            }
        } else if mqtt_changed {
            if let Some(old) = self.mqtt.take() {
                old.handle.shutdown().await;
                old.stop.cancel();
            }
            match start_mqtt(&config, &self.inbound_tx, &self.links) {
                Ok(mqtt) => {
                    self.mqtt = mqtt;
                    report.mqtt_restarted = true;
                }
                Err(err) => {
                    tracing::error!(error = %err, "reload: the MQTT endpoint could not start with its new settings; keeping the old ones");
                    report.failed.push("mqtt");
                    config.mqtt = self.config.mqtt.clone();
                    match start_mqtt(&config, &self.inbound_tx, &self.links) {
                        Ok(mqtt) => self.mqtt = mqtt,
                        Err(err) => {
                            tracing::error!(error = %err, "reload: the MQTT endpoint could not start again with its old settings either: MQTT is down until the next reload")
                        }
                    }
                }
            }
            self.outputs.mqtt = self.mqtt.as_ref().map(|e| e.handle.clone());
        }
        // Routes: counters, runtime switches, delayed outputs and
        // remembered values carry over to the route of the same name and
        // the same source. A default name ("route 3") follows a position,
        // and a route inserted above would otherwise inherit another's.
        let old_table = self.table.clone();
        let old_stats = self.outputs.routes.clone();
        let table = Arc::new(RoutingTable::new(config.routes.clone()));
        let successor = |old: RouteId| -> Option<RouteId> {
            let route = old_table.route_by_id(old)?;
            let id = table.find(&route.name)?;
            let new = table.route_by_id(id)?;
            let same_source = new.source.kind == route.source.kind
                && new.source.pattern.text == route.source.pattern.text;
            same_source.then_some(id)
        };
        // An output made for an unchanged destination (the same target,
        // the same name template) is still right after the reload.
        // OSC targets are numbered in name order: one added before them
        // shifts the numbers, so they are compared by name.
        let osc_name = |osc: &Option<crate::osc::OscConfig>, index: usize| {
            osc.as_ref().and_then(|osc| osc.targets.get(index)).map(|t| t.name.clone())
        };
        let (old_osc, new_osc) = (&self.config.osc, &config.osc);
        let same_target = |new: &Target, old: &Target| match (new, old) {
            (
                Target::Osc { target: new_index, options: new_options },
                Target::Osc { target: old_index, options: old_options },
            ) => {
                new_options == old_options
                    && osc_name(new_osc, *new_index).is_some()
                    && osc_name(new_osc, *new_index) == osc_name(old_osc, *old_index)
            }
            (new, old) => new == old,
        };
        let carried = |out: &mut Outbound| -> bool {
            let Some(id) = successor(out.route) else { return false };
            let Some(old) = old_table.route_by_id(out.route) else { return false };
            let old = old.destinations.get(out.destination);
            let new = table.route_by_id(id).and_then(|r| r.destinations.get(out.destination));
            out.route = id;
            match (old, new) {
                (Some(old), Some(new))
                    if same_target(&new.target, &out.target)
                        && new.template.text == old.template.text =>
                {
                    out.target = new.target.clone();
                    true
                }
                _ => false,
            }
        };
        let mut stats: Vec<RouteStats> =
            table.routes().iter().map(|_| RouteStats::default()).collect();
        for (old, old_route_stats) in old_stats.iter().enumerate() {
            if let Some(new) = successor(RouteId(old)).and_then(|id| stats.get_mut(id.0)) {
                for ((_, value), (_, counter)) in
                    old_route_stats.snapshot().into_iter().zip(new.counters())
                {
                    counter.store(value, Ordering::Relaxed);
                }
            }
        }
        self.enabled = std::mem::take(&mut self.enabled)
            .into_iter()
            .filter_map(|(id, on)| successor(id).map(|new_id| (new_id, on)))
            .collect();
        // Outputs in their delay keep their time; they then go out through
        // the new links and count on the new counters.
        let orphans = self.delay_line.renew(|out| carried(out));
        // What `resend` remembers stays, for a peer that restarts after
        // the reload.
        // A route that now carries a trigger remembers nothing new, so what
        // it remembered before would be resent for ever.
        self.last_values.renew(|out| {
            carried(out) && table.route_by_id(out.route).is_some_and(|r| !r.carries_triggers())
        });
        self.table = table;
        self.outputs.routes = Arc::new(stats);
        for out in &orphans {
            self.outputs.stale(out);
        }
        self.adopt(&config);
        if !self.resend_enabled {
            self.last_values.clear();
        }
        self.config = config;
        // A new link announces once it connects.
        if !report.socketcluster_reconnected
            && self.link.borrow().is_connected()
            && self.announcement() != announced
        {
            self.announce();
        }
        self.publish_view();
        bump(&self.outputs.stats.reloads);
        tracing::info!(?report, "config reloaded");
        if report.socketcluster_reconnected || report.mqtt_restarted || report.osc_restarted {
            self.publish_status();
        }
        report
    }

    fn link_changed(&mut self) {
        let connected = self.link.borrow_and_update().is_connected();
        if connected {
            self.outputs.echoes.link_up();
            self.announce();
        }
        self.publish_status();
    }

    /// Tells the other cables clients whether we send, after every connect
    /// and after a reload that changed it.
    fn announce(&self) {
        if let Some((channel, announcement)) = self.announcement() {
            self.outputs.sc.publish(&channel, &announcement);
        }
    }

    fn announcement(&self) -> Option<(String, Value)> {
        let cables = self.cables.as_ref()?;
        let announcement = cables.announcement(self.table.sends_to_cables());
        Some((cables.control_channel().to_owned(), announcement))
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
                            if let Some(count) =
                                crate::stats::bump_loggable(&stats.malformed_envelopes)
                            {
                                tracing::warn!(%channel, why, count, "skipped a malformed cables envelope");
                            }
                            return;
                        }
                        Received::NotCables(untouched) => data = untouched,
                    }
                }
                if self.raw_channels.contains(&channel) {
                    // The link reports a connect right after sending what it
                    // held. The select may bring the echo of a held publish
                    // before that report, so the report is taken first.
                    if self.link.has_changed().unwrap_or(false) {
                        self.link_changed();
                    }
                    if self.outputs.echoes.is_echo(&channel, &data) {
                        return bump(&self.outputs.stats.own_echoes);
                    }
                    return self.route(Message::value(SourceKind::ScChannel, channel, data));
                }
                if self.monitored.contains(&channel) {
                    if let Some(unsaid) = self.quiet.watched.line(&stats.monitored_unlogged) {
                        let data = crate::stats::json_within(&data, MAX_LOGGED_VALUE_BYTES)
                            .unwrap_or_else(|start| format!("{start}… (cut)"));
                        tracing::info!(%channel, %data, unsaid, "publish");
                    }
                } else if let Some(count) =
                    self.quiet.unlisted_channels.bump(&stats.unlisted_channels)
                {
                    tracing::info!(
                        %channel, count,
                        "a publish on a channel no route or subscription uses; dropped"
                    );
                }
            }
            Incoming::Event { event, data } => {
                if self.events.contains(&event) {
                    self.route(Message::value(SourceKind::ScEvent, event, data));
                } else if let Some(count) = self.quiet.unlisted_events.bump(&stats.unlisted_events)
                {
                    tracing::info!(%event, count, "an event no route listens to; dropped");
                }
            }
        }
    }

    /// A control message from OSC or MQTT, if this is one (`Ok(None)`: a
    /// button's release, nothing to do).
    fn control_command(&self, message: &Message) -> Option<Result<Option<Control>, String>> {
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
                // A retained command comes back with every reconnect: state
                // (`active`, `route`) is simply set again, but an action would
                // be repeated each time.
                Ok(Some(Control::Reset | Control::Resend)) if message.retained => {
                    if let Some(count) =
                        crate::stats::bump_loggable(&self.outputs.stats.retained_actions)
                    {
                        tracing::warn!(
                            name = %message.name, count,
                            "ignored a retained control action: reset and resend act only when \
                             sent live; clear it with an empty retained publish"
                        );
                    }
                }
                Ok(Some(control)) => {
                    bump(&self.outputs.stats.control_commands);
                    self.apply_now(control);
                }
                Ok(None) => {
                    bump(&self.outputs.stats.control_releases);
                    tracing::debug!(name = %message.name, "control: a button's release; nothing to do");
                }
                Err(why) => {
                    if let Some(count) =
                        crate::stats::bump_loggable(&self.outputs.stats.bad_control_commands)
                    {
                        tracing::warn!(name = %message.name, why, count, "ignored a control message");
                    }
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
            if let Some(count) = self.quiet.unrouted.bump(&stats.unrouted) {
                tracing::info!(
                    source = message.source.key(), name = %message.name, count,
                    "no route for a message; dropped (said at most once a minute)"
                );
            }
            return;
        }
        if self.recent.capacity() > 0 {
            self.remember(&message);
        }
        count_matches(&self.skipped, &self.out, &self.outputs);
        for (id, skip) in self.skipped.drain(..) {
            let route_stats = &self.outputs.routes[id.0];
            match skip {
                Skip::Disabled => bump(&route_stats.disabled),
                Skip::Release => bump(&route_stats.releases),
                Skip::Loop => {
                    if let Some(count) = self.quiet.loops.bump(&route_stats.loops) {
                        let route = &table.routes()[id.0].name;
                        tracing::info!(
                            %route, name = %message.name, count,
                            "output skipped: it would go back where the message came from"
                        );
                    }
                }
                Skip::BadName => {
                    if let Some(count) = crate::stats::bump_loggable(&route_stats.bad_names) {
                        let route = &table.routes()[id.0].name;
                        tracing::warn!(%route, name = %message.name, count, "a destination name could not be made from this message, or came out empty: output skipped");
                    }
                }
            }
        }
        let mut outs = std::mem::take(&mut self.out);
        for out in outs.drain(..) {
            let route_index = out.route.0;
            let route = &table.routes()[route_index];
            // Remembered only when something can ask for a resend: it costs
            // a copy of every output.
            if self.resend_enabled
                && !route.carries_triggers()
                && !self.last_values.remember(&out)
                && let Some(count) = crate::stats::bump_loggable(&stats.resend_memory_full)
            {
                tracing::warn!(
                    count,
                    names = resend::MAX_ENTRIES,
                    bytes = resend::MAX_BYTES,
                    "resend memory full: this value will not be resent"
                );
            }
            if let Some(interval) = route.min_interval {
                let now = tokio::time::Instant::now();
                match self.coalescer.offer(out, interval, now) {
                    Offer::SendNow(out) => {
                        send_or_hold(table, &self.outputs, &mut self.delay_line, out);
                    }
                    Offer::SendNowReplacing(out) => {
                        bump(&self.outputs.routes[route_index].coalesced);
                        send_or_hold(table, &self.outputs, &mut self.delay_line, out);
                    }
                    Offer::Waiting => {}
                    Offer::Replaced => bump(&self.outputs.routes[route_index].coalesced),
                }
            } else {
                send_or_hold(table, &self.outputs, &mut self.delay_line, out);
            }
        }
        // Handed back empty, so its allocation serves the next message.
        self.out = outs;
    }

    /// Sends an output now, or after its route's `delay_ms` (which counts
    /// from when `max_rate` let the output go, when both are set).
    fn dispatch(&mut self, out: Outbound) {
        if self.still_switched_on(&out) {
            send_or_hold(&self.table, &self.outputs, &mut self.delay_line, out);
        }
    }

    /// Whether an output that waited (for `max_rate`, `delay_ms`, or in the
    /// resend memory) may still go: its route may have been switched off
    /// since, and is then counted as `disabled`. An output of a route a
    /// reload removed is left to the send, which counts it as stale.
    fn still_switched_on(&self, out: &Outbound) -> bool {
        let Some(route) = self.table.route_by_id(out.route) else { return true };
        if self.enabled.get(&out.route).copied().unwrap_or(route.enabled) {
            return true;
        }
        if let Some(stats) = self.outputs.routes.get(out.route.0) {
            bump(&stats.disabled);
        }
        false
    }

    /// A link command found the link's command queue full: a flood of
    /// control messages. The newest are the ones dropped, and counted.
    fn link_busy(&self) {
        let stats = &self.outputs.stats;
        if let Some(count) = crate::stats::bump_loggable(&stats.controls_dropped) {
            tracing::warn!(
                count,
                "control: the SocketCluster link is still busy with earlier commands; dropped this one"
            );
        }
    }

    /// Adds a routed message to `/recent`, before its outputs go.
    fn remember(&self, message: &Message) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        use crate::http::{MAX_RECENT_NAME_CHARS, MAX_RECENT_OUTPUTS};
        use crate::stats::excerpt;
        let mut outputs: Vec<Value> = self
            .out
            .iter()
            .take(MAX_RECENT_OUTPUTS)
            .map(|o| {
                let route = &self.table.routes()[o.route.0].name;
                serde_json::json!({"route": route, "to": excerpt(&o.name, MAX_RECENT_NAME_CHARS)})
            })
            .collect();
        if let Some(more) = self.out.len().checked_sub(MAX_RECENT_OUTPUTS).filter(|n| *n > 0) {
            outputs.push(serde_json::json!({"more": more}));
        }
        let value = match &message.body {
            Body::Value(value) => {
                crate::http::bounded_copy(value, crate::http::MAX_RECENT_VALUE_BYTES)
            }
            Body::Trigger => Value::String("(trigger)".into()),
        };
        self.recent.push(serde_json::json!({
            "time_ms": now,
            "source": message.source.key(),
            "name": excerpt(&message.name, MAX_RECENT_NAME_CHARS),
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
                if self.control_memory.requested_active == Some(active) {
                    tracing::debug!(active, "control: the SocketCluster link is already set so");
                } else if self.outputs.sc.try_set_active(active) {
                    tracing::info!(active, "control: SocketCluster link active");
                    self.control_memory.requested_active = Some(active);
                } else {
                    self.link_busy();
                }
            }
            Control::Reset => {
                let sc = &self.outputs.sc;
                match ControlMemory::pace(&mut self.control_memory.last_reset, || sc.try_reset()) {
                    Paced::TooSoon => too_soon("reset", &self.outputs.stats.resets_refused),
                    Paced::Taken => tracing::info!("control: SocketCluster link reset"),
                    Paced::Refused => self.link_busy(),
                }
            }
            Control::SetRouteEnabled { name, enabled } => match self.table.find(&name) {
                Some(id) => {
                    // Kept even when it equals the config's `enabled`: an
                    // override outlives a reload that changes the config.
                    if self.enabled.insert(id, enabled) == Some(enabled) {
                        tracing::debug!(route = %name, enabled, "control: the route is already so");
                    } else {
                        tracing::info!(route = %name, enabled, "control: route switched");
                        self.publish_view();
                    }
                }
                None => {
                    if let Some(count) =
                        crate::stats::bump_loggable(&self.outputs.stats.bad_control_commands)
                    {
                        tracing::warn!(route = %name, count, "control: no route by that name");
                    }
                }
            },
            Control::Resend => {
                if ControlMemory::pace(&mut self.control_memory.last_resend, || true)
                    == Paced::TooSoon
                {
                    return too_soon("resend", &self.outputs.stats.resends_refused);
                }
                tracing::info!(
                    values = self.last_values.len(),
                    "control: sending every state route's last value again"
                );
                for out in self.last_values.values() {
                    if self.still_switched_on(out) {
                        self.outputs.send(out.clone());
                    }
                }
            }
            Control::Reload(..) => tracing::warn!("a reload can only come from the service"),
        }
    }
}

/// A control action refused because the last one was under
/// [`MIN_ACTION_INTERVAL`] ago: counted, and said.
fn too_soon(action: &'static str, refused: &std::sync::atomic::AtomicU64) {
    if let Some(count) = crate::stats::bump_loggable(refused) {
        tracing::warn!(count, action, "control: refused, the last one was under a second ago");
    }
}

/// Counts `matched` once for each route that took the message. A route
/// may have both skipped and sent destinations; both lists are in route
/// order, so walking them merged meets each route's entries together.
fn count_matches(skipped: &[(RouteId, Skip)], out: &[Outbound], outputs: &Outputs) {
    let mut skipped = skipped.iter().map(|(id, _)| *id).peekable();
    let mut sent = out.iter().map(|o| o.route).peekable();
    let mut last = None;
    loop {
        let next = match (skipped.peek(), sent.peek()) {
            (Some(a), Some(b)) if a <= b => skipped.next(),
            (_, Some(_)) => sent.next(),
            (Some(_), None) => skipped.next(),
            (None, None) => return,
        };
        if next != last {
            if let Some(stats) = next.and_then(|id| outputs.routes.get(id.0)) {
                bump(&stats.matched);
            }
            last = next;
        }
    }
}

/// [`Router::dispatch`] on the fields it needs, so that `route` can call it
/// while it borrows the table.
fn send_or_hold(
    table: &RoutingTable,
    outputs: &Outputs,
    delay_line: &mut DelayLine,
    out: Outbound,
) {
    let Some(route) = table.route_by_id(out.route) else {
        return outputs.stale(&out);
    };
    if route.delay.is_zero() {
        outputs.send(out);
    } else {
        let due = tokio::time::Instant::now() + route.delay;
        if let Err(out) = delay_line.hold(out, due) {
            let route_stats = &outputs.routes[out.route.0];
            if let Some(count) = crate::stats::bump_loggable(&route_stats.delay_full) {
                tracing::warn!(route = %route.name, count, limit = MAX_DELAYED, bytes = super::delay::MAX_BYTES, "too many outputs, or bytes, waiting for their delay: dropped one");
            }
        }
    }
}

/// Clears its flag when dropped, unwinding included.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

async fn sleep_until_or_never(due: Option<tokio::time::Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_action_the_link_refused_may_be_asked_for_again_at_once() {
        let mut last = None;
        assert_eq!(ControlMemory::pace(&mut last, || false), Paced::Refused);
        assert_eq!(last, None);
        assert_eq!(ControlMemory::pace(&mut last, || true), Paced::Taken);
    }

    #[tokio::test(start_paused = true)]
    async fn an_action_taken_holds_off_the_next_for_a_second() {
        let mut last = None;
        assert_eq!(ControlMemory::pace(&mut last, || true), Paced::Taken);
        tokio::time::advance(MIN_ACTION_INTERVAL - std::time::Duration::from_millis(1)).await;
        let mut asked = false;
        let paced = ControlMemory::pace(&mut last, || {
            asked = true;
            true
        });
        assert_eq!(paced, Paced::TooSoon);
        assert!(!asked, "an action held off must not reach the link");
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        assert_eq!(ControlMemory::pace(&mut last, || true), Paced::Taken);
    }

    #[test]
    fn the_alive_flag_is_cleared_when_the_router_panics() {
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let unwound = std::panic::catch_unwind(move || {
            let _alive = ClearOnDrop(flag);
            panic!("a router bug");
        });
        assert!(unwound.is_err());
        assert!(!alive.load(Ordering::Relaxed));
    }
}
