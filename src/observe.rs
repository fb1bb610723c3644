//! What the HTTP listener shows of the bridge: every counter as Prometheus
//! metrics, link states as health, and the last routed messages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::bridge::{BridgeStats, Running, View};
use crate::config::HttpConfig;
use crate::http::{self, Health, MetricFamily, MetricKind, Observe, RecentLog, Sample};
use crate::mqtt::MqttLinkState;
use crate::sc::LinkState;

/// The bridge as the listener sees it; survives reloads through the view.
pub struct BridgeObserver {
    view: Arc<RwLock<View>>,
    stats: Arc<BridgeStats>,
    recent: Arc<RecentLog>,
    alive: Arc<AtomicBool>,
}

/// Starts the listener for a running bridge.
pub async fn serve(
    config: &HttpConfig,
    running: &Running,
    shutdown: CancellationToken,
) -> Result<std::net::SocketAddr, crate::bridge::BridgeError> {
    let observer = BridgeObserver {
        view: running.shared_view(),
        stats: running.stats.clone(),
        recent: running.recent(),
        alive: running.alive(),
    };
    Ok(http::start(config.listen, Arc::new(observer), shutdown).await?)
}

fn family(name: &str, help: &str, kind: MetricKind, samples: Vec<Sample>) -> MetricFamily {
    MetricFamily { name: name.to_owned(), help: help.to_owned(), kind, samples }
}

fn labelled(labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        value,
    }
}

fn events(name: &str, help: &str, counters: Vec<(&'static str, u64)>) -> MetricFamily {
    let samples =
        counters.into_iter().map(|(event, n)| labelled(&[("event", event)], n as f64)).collect();
    family(name, help, MetricKind::Counter, samples)
}

fn sc_state(state: &LinkState) -> Value {
    match state {
        LinkState::Connected { socket_id, authenticated } => {
            json!({"state": "connected", "socket_id": socket_id, "authenticated": authenticated})
        }
        LinkState::Connecting { attempt } => json!({"state": "connecting", "attempt": attempt}),
        LinkState::Disconnected { reason, code, retry_in } => json!({
            "state": "disconnected", "reason": reason, "code": code, "retry_in_ms": retry_in.as_millis() as u64
        }),
        LinkState::Inactive => json!({"state": "inactive"}),
    }
}

fn mqtt_state(state: &MqttLinkState) -> Value {
    match state {
        MqttLinkState::Connected => json!({"state": "connected"}),
        MqttLinkState::Connecting => json!({"state": "connecting"}),
        MqttLinkState::Disconnected { reason, retry_in } => {
            json!({"state": "disconnected", "reason": reason, "retry_in_ms": retry_in.as_millis() as u64})
        }
    }
}

impl Observe for BridgeObserver {
    fn metrics(&self) -> Vec<MetricFamily> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut families = Vec::new();
        let mut route_samples = Vec::new();
        let mut enabled_samples = Vec::new();
        for (route, stats) in view.table.routes().iter().zip(view.routes.iter()) {
            for (event, n) in stats.snapshot() {
                route_samples.push(labelled(&[("route", &route.name), ("event", event)], n as f64));
            }
            let on = view.enabled.get(&route.name).copied().unwrap_or(route.enabled);
            enabled_samples.push(labelled(&[("route", &route.name)], f64::from(u8::from(on))));
        }
        families.push(family(
            "scbridge_route_messages_total",
            "What happened to the messages each route matched, by event (sent, or the drop reason).",
            MetricKind::Counter,
            route_samples,
        ));
        families.push(family(
            "scbridge_route_enabled",
            "1 while the route is switched on.",
            MetricKind::Gauge,
            enabled_samples,
        ));
        families.push(events(
            "scbridge_bridge_events_total",
            "Messages seen before routing, by event.",
            self.stats.snapshot(),
        ));
        families.push(events(
            "scbridge_socketcluster_events_total",
            "SocketCluster link traffic and drops, by event.",
            view.sc.stats().snapshot(),
        ));
        let sc_up = view.sc.link_state().borrow().is_connected();
        let mut link_samples =
            vec![labelled(&[("link", "socketcluster")], f64::from(u8::from(sc_up)))];
        let mut queue_samples =
            vec![labelled(&[("queue", "socketcluster_send")], view.sc.queued() as f64)];
        if let Some(osc) = &view.osc {
            families.push(events(
                "scbridge_osc_events_total",
                "OSC traffic and drops, by event.",
                osc.stats().snapshot(),
            ));
        }
        if let Some(mqtt) = &view.mqtt {
            families.push(events(
                "scbridge_mqtt_events_total",
                "MQTT traffic and drops, by event.",
                mqtt.stats().snapshot(),
            ));
            let up = *mqtt.link_state().borrow() == MqttLinkState::Connected;
            link_samples.push(labelled(&[("link", "mqtt")], f64::from(u8::from(up))));
        }
        queue_samples.push(labelled(&[("queue", "recent")], self.recent.len() as f64));
        families.push(family(
            "scbridge_link_up",
            "1 while the link is connected.",
            MetricKind::Gauge,
            link_samples,
        ));
        families.push(family(
            "scbridge_queue_depth",
            "Messages waiting in a queue.",
            MetricKind::Gauge,
            queue_samples,
        ));
        families
    }

    fn health(&self) -> Health {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner()).clone();
        let alive = self.alive.load(Ordering::Relaxed);
        let mut body = json!({
            "router": if alive { "running" } else { "stopped" },
            "socketcluster": sc_state(&view.sc.link_state().borrow()),
        });
        if let Some(mqtt) = &view.mqtt {
            body["mqtt"] = mqtt_state(&mqtt.link_state().borrow());
        }
        if let Some(osc) = &view.osc {
            body["osc"] = json!({"listen": osc.listen_addrs().iter().map(ToString::to_string).collect::<Vec<_>>()});
        }
        // Sound while the router runs: a peer being down is the links'
        // business (they retry), not a reason for a restart.
        Health { healthy: alive, body }
    }

    fn recent(&self) -> Vec<Value> {
        self.recent.snapshot()
    }
}
