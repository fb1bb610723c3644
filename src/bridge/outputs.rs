//! Handing each output to its endpoint without waiting, and counting what
//! could not go; and the memory of our own publishes on plain channels.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{BridgeStats, RouteStats};
use crate::cables::Cables;
use crate::message::{Body, Refused};
use crate::mqtt::{MqttHandle, MqttOut};
use crate::osc::{OscHandle, OscOut};
use crate::route::{Outbound, Target};
use crate::sc::ScClient;
use crate::stats::bump;

/// Invokes to the SocketCluster server waiting for their reply at once; each
/// waits up to the ack timeout, so a flood into an `invoke` route is dropped
/// and counted beyond this instead of piling up tasks.
pub(super) const MAX_INVOKES: usize = 1024;

/// How long our own publish on a plain SocketCluster channel is expected back.
const ECHO_WINDOW: Duration = Duration::from_secs(5);
/// How many own publishes are remembered for echo suppression.
const ECHO_MEMORY: usize = 4096;

/// Remembers our own publishes on plain SocketCluster channels, which carry
/// no client id, so that the server's echo of them is not taken as input.
#[derive(Default)]
pub(super) struct EchoFilter {
    sent: Mutex<VecDeque<(u64, Instant)>>,
}

impl EchoFilter {
    fn key(channel: &str, data: &Value) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        channel.hash(&mut hasher);
        hash_as_javascript_sees_it(data, &mut hasher);
        hasher.finish()
    }

    pub(super) fn remember(&self, channel: &str, data: &Value) {
        self.remember_at(channel, data, Instant::now());
    }

    fn remember_at(&self, channel: &str, data: &Value, now: Instant) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent.len() >= ECHO_MEMORY {
            sent.pop_front();
        }
        sent.push_back((Self::key(channel, data), now));
    }

    /// The link is up again: what was remembered goes out only now, with
    /// the queue the link held while it was down, so its echo window starts
    /// now. Without this an outage longer than the window would make our
    /// own held publishes come back as input.
    pub(super) fn link_up(&self) {
        self.link_up_at(Instant::now());
    }

    fn link_up_at(&self, now: Instant) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.iter_mut().for_each(|(_, at)| *at = now);
    }

    /// True (once) when this is the echo of something we sent.
    pub(super) fn is_echo(&self, channel: &str, data: &Value) -> bool {
        self.is_echo_at(channel, data, Instant::now())
    }

    fn is_echo_at(&self, channel: &str, data: &Value, now: Instant) -> bool {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
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

/// Everything outputs go to: the links and the counters of the routing
/// table in force.
pub(super) struct Outputs {
    pub(super) sc: ScClient,
    pub(super) cables: Option<Arc<CablesOut>>,
    pub(super) osc: Option<OscHandle>,
    pub(super) mqtt: Option<MqttHandle>,
    pub(super) routes: Arc<Vec<RouteStats>>,
    pub(super) stats: Arc<BridgeStats>,
    pub(super) echoes: Arc<EchoFilter>,
    /// Permits for invokes waiting for their reply ([`MAX_INVOKES`]).
    pub(super) invokes: Arc<tokio::sync::Semaphore>,
}

/// What sending to cables needs: the envelope settings and the current
/// right to send, which the router task updates from control messages.
pub(super) struct CablesOut {
    pub(super) cables: Cables,
    pub(super) can_send: AtomicBool,
}

impl Outputs {
    /// An output of a route the current table does not have (a reload
    /// replaced the table while it waited): dropped and counted.
    pub(super) fn stale(&self, out: &Outbound) {
        if let Some(count) = crate::stats::bump_loggable(&self.stats.stale_outputs) {
            tracing::warn!(name = %out.name, count, "an output of a route that a reload removed: dropped");
        }
    }

    pub(super) fn send(&self, out: Outbound) {
        let Some(stats) = self.routes.get(out.route.0) else { return self.stale(&out) };
        let Outbound { target, name, body, .. } = out;
        let handed = match target {
            Target::Osc { target, options } => match &self.osc {
                Some(osc) => {
                    osc.send(OscOut { target, address: name, body, options }).map_err(refusal)
                }
                None => return no_link(stats, "OSC"),
            },
            Target::Mqtt { qos, retain, format } => match &self.mqtt {
                Some(mqtt) => {
                    mqtt.send(MqttOut { topic: name, body, qos, retain, format }).map_err(refusal)
                }
                None => return no_link(stats, "MQTT"),
            },
            Target::CablesObject | Target::CablesTrigger { .. } => {
                let Some(cables) = &self.cables else { return no_link(stats, "cables") };
                if !cables.can_send.load(Ordering::Relaxed) {
                    if let Some(count) = crate::stats::bump_loggable(&stats.not_allowed) {
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
                Ok(())
            }
            Target::ScChannel => {
                let data = value_of(body, &name);
                self.echoes.remember(&name, &data);
                self.sc.publish(&name, &data);
                Ok(())
            }
            Target::ScEvent { invoke } => {
                let data = value_of(body, &name);
                if invoke {
                    match self.invokes.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let sc = self.sc.clone();
                            let stats = self.stats.clone();
                            tokio::spawn(async move {
                                if let Err(err) = sc.invoke(&name, Some(&data)).await
                                    && let Some(count) =
                                        crate::stats::bump_loggable(&stats.failed_invokes)
                                {
                                    tracing::warn!(event = %name, error = %err, count, "invoke to the SocketCluster server failed");
                                }
                                drop(permit);
                            });
                            Ok(())
                        }
                        Err(_) => Err(Refusal::Full),
                    }
                } else {
                    self.sc.transmit(&name, Some(&data));
                    Ok(())
                }
            }
        };
        match handed {
            Ok(()) => bump(&stats.sent),
            Err(Refusal::Full) => {
                if let Some(count) = crate::stats::bump_loggable(&stats.queue_full) {
                    tracing::warn!(count, "an endpoint queue is full: dropped an output");
                }
            }
            Err(Refusal::ShuttingDown) => {
                if let Some(count) = crate::stats::bump_loggable(&stats.shutdown_dropped) {
                    tracing::info!(count, "an endpoint is shutting down: dropped an output");
                }
            }
        }
    }
}

/// Why an output was not handed over; the message itself is not needed.
enum Refusal {
    Full,
    ShuttingDown,
}

fn refusal<T>(refused: Refused<T>) -> Refusal {
    match refused {
        Refused::Full(_) => Refusal::Full,
        Refused::ShuttingDown(_) => Refusal::ShuttingDown,
    }
}

/// An output for a link that is not configured (a reload removed it while
/// a value waited for its delay or its turn): counted and said.
fn no_link(stats: &RouteStats, link: &'static str) {
    if let Some(count) = crate::stats::bump_loggable(&stats.no_link) {
        tracing::warn!(link, count, "an output for a link that is not configured: dropped");
    }
}

/// Hashes a value so that what the SocketCluster server sends back hashes
/// equally: the server parses and re-serialises every publish in
/// JavaScript, where all numbers are doubles. `1.0` comes back as `1`,
/// `-0.0` as `0`, and an integer beyond 2^53 rounded. Maps need no care:
/// serde_json keeps their keys sorted on both sides.
fn hash_as_javascript_sees_it(value: &Value, hasher: &mut impl Hasher) {
    match value {
        Value::Null => 0u8.hash(hasher),
        Value::Bool(b) => (1u8, b).hash(hasher),
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            // `+ 0.0` turns -0.0 into 0.0, as JSON.stringify prints both.
            (2u8, (x + 0.0).to_bits()).hash(hasher);
        }
        Value::String(text) => (3u8, text).hash(hasher),
        Value::Array(items) => {
            (4u8, items.len()).hash(hasher);
            items.iter().for_each(|item| hash_as_javascript_sees_it(item, hasher));
        }
        Value::Object(fields) => {
            (5u8, fields.len()).hash(hasher);
            for (key, field) in fields {
                key.hash(hasher);
                hash_as_javascript_sees_it(field, hasher);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn own_channel_publishes_are_recognised_once() {
        let echoes = EchoFilter::default();
        echoes.remember("notes", &json!({"a": 1}));
        assert!(!echoes.is_echo("notes", &json!({"a": 2})));
        assert!(echoes.is_echo("notes", &json!({"a": 1})));
        assert!(!echoes.is_echo("notes", &json!({"a": 1})));
    }

    #[test]
    fn a_publish_held_through_a_long_outage_is_known_as_an_echo_after_the_reconnect() {
        let echoes = EchoFilter::default();
        let sent_at = Instant::now();
        let back_at = sent_at + ECHO_WINDOW * 2;
        echoes.remember_at("notes", &json!(1), sent_at);
        echoes.remember_at("notes", &json!(2), sent_at);
        assert!(!echoes.is_echo_at("notes", &json!(1), back_at), "without the reconnect, expired");
        echoes.remember_at("notes", &json!(3), sent_at);
        echoes.link_up_at(back_at);
        assert!(echoes.is_echo_at("notes", &json!(3), back_at + Duration::from_millis(100)));
        assert!(!echoes.is_echo_at("notes", &json!(3), back_at + ECHO_WINDOW * 2));
    }

    #[test]
    fn an_echo_is_recognised_after_javascript_rewrote_its_numbers() {
        let echoes = EchoFilter::default();
        let sent = json!({"v": 1.0, "w": [0.0, 2.50, -0.0], "big": 9_007_199_254_740_993_u64});
        let echoed: Value =
            serde_json::from_str(r#"{"big":9007199254740992,"v":1,"w":[0,2.5,0]}"#).expect("json");
        echoes.remember("fader", &sent);
        assert!(!echoes.is_echo("fader", &json!({"v": 1.5, "w": [0, 2.5, 0], "big": 1})));
        assert!(echoes.is_echo("fader", &echoed));
        echoes.remember("fader", &json!(1.0));
        assert!(!echoes.is_echo("fader", &json!("1")), "a string is not a number");
        assert!(echoes.is_echo("fader", &json!(1)));
    }
}
