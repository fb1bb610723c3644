//! The MQTT endpoint against a real Mosquitto broker on a loopback port
//! chosen at run time, over MQTT 3.1.1 and MQTT 5.

mod support;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use scbridge::message::{Body, Message, Refused, SourceKind};
use scbridge::mqtt::{
    MqttConfig, MqttEndpoint, MqttHandle, MqttLinkState, MqttOut, MqttProtocol, MqttStats,
    PayloadFormat, QoS, Subscription,
};
use serde_json::{Value, json};
use support::mosquitto::{self, Mosquitto, Received};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A generous bound for anything that should happen promptly on loopback.
const WAIT: Duration = Duration::from_secs(10);

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(500);

/// Settings for a bridge on `broker`, with a client id of its own and short
/// reconnect delays.
fn config(broker: &Mosquitto, protocol: MqttProtocol, name: &str) -> MqttConfig {
    let id = format!("bridge-{name}-{}", std::process::id());
    let mut config = MqttConfig::new("127.0.0.1", broker.port()).with_client_id(id);
    config.protocol = protocol;
    config.keepalive = Duration::from_secs(5);
    config.reconnect_delay = Duration::from_millis(100);
    config.reconnect_max_delay = Duration::from_millis(400);
    config
}

/// A running endpoint and the channel its incoming messages arrive on.
struct Bridge {
    handle: MqttHandle,
    inbound: mpsc::Receiver<Message>,
    stop: CancellationToken,
    availability: String,
}

impl Bridge {
    fn start(config: MqttConfig, filters: &[&str]) -> Bridge {
        let availability = config.availability_topic.clone().unwrap_or_default();
        let (tx, inbound) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let subscriptions = filters
            .iter()
            .map(|f| Subscription { filter: (*f).to_owned(), qos: QoS::AtLeastOnce })
            .collect();
        let handle = MqttEndpoint::start(config, subscriptions, tx, stop.clone())
            .expect("the endpoint starts");
        Bridge { handle, inbound, stop, availability }
    }

    async fn state(&self, wanted: impl Fn(&MqttLinkState) -> bool) -> MqttLinkState {
        let mut states = self.handle.link_state();
        let reached = match tokio::time::timeout(WAIT, states.wait_for(|s| wanted(s))).await {
            Ok(state) => Some(state.expect("the endpoint is alive").clone()),
            Err(_) => None,
        };
        reached.unwrap_or_else(|| panic!("link state not reached; now {:?}", *states.borrow()))
    }

    async fn connected(&self) {
        self.state(|s| *s == MqttLinkState::Connected).await;
    }

    async fn disconnected(&self) -> MqttLinkState {
        self.state(|s| matches!(s, MqttLinkState::Disconnected { .. })).await
    }

    fn send(&self, topic: &str, body: Body, retain: bool) {
        let out = MqttOut {
            topic: topic.into(),
            body,
            qos: QoS::AtLeastOnce,
            retain,
            format: PayloadFormat::Auto,
        };
        // A running endpoint takes everything: when its queue is full it
        // drops its oldest message, not this one.
        if let Err(refused) = self.handle.send(out) {
            panic!("a running endpoint refused {refused:?}");
        }
    }

    async fn next_inbound(&mut self) -> Message {
        tokio::time::timeout(WAIT, self.inbound.recv())
            .await
            .expect("an inbound message within the wait")
            .expect("the endpoint is alive")
    }

    fn stat(&self, counter: impl Fn(&MqttStats) -> &AtomicU64) -> u64 {
        scbridge::stats::get(counter(self.handle.stats()))
    }

    async fn stat_reaches(&self, counter: impl Fn(&MqttStats) -> &AtomicU64, value: u64) {
        let reached = tokio::time::timeout(WAIT, async {
            while self.stat(&counter) < value {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(reached.is_ok(), "counter stayed at {} (wanted {value})", self.stat(&counter));
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn received(topic: &str, payload: &str, retain: bool) -> Received {
    Received { topic: topic.into(), payload: payload.as_bytes().to_vec(), retain }
}

fn mqtt(topic: &str, value: Value) -> Message {
    Message::value(SourceKind::Mqtt, topic, value)
}

async fn outgoing_payloads(protocol: MqttProtocol) {
    let broker = Mosquitto::start().await;
    let bridge = Bridge::start(config(&broker, protocol, "out"), &[]);
    bridge.connected().await;
    let mut watcher = mosquitto::subscribe(broker.port(), "out/#").await;

    bridge.send("out/state", Body::Value(json!({"a": 1, "b": [true, null]})), true);
    bridge.send("out/level", Body::Value(json!(12.5)), false);
    bridge.send("out/name", Body::Value(json!("hello world")), false);
    bridge.send("out/enabled", Body::Value(json!(true)), false);
    // A trigger route that wants the name on the wire hands it as a string.
    bridge.send("out/fired", Body::Value(json!("fired")), false);
    bridge.send("out/pulse", Body::Trigger, false);

    assert_eq!(
        watcher.next_message(WAIT).await,
        received("out/state", r#"{"a":1,"b":[true,null]}"#, true)
    );
    assert_eq!(watcher.next_message(WAIT).await, received("out/level", "12.5", false));
    assert_eq!(watcher.next_message(WAIT).await, received("out/name", "hello world", false));
    assert_eq!(watcher.next_message(WAIT).await, received("out/enabled", "true", false));
    assert_eq!(watcher.next_message(WAIT).await, received("out/fired", "fired", false));
    assert_eq!(watcher.next_message(WAIT).await, received("out/pulse", "", false));

    let mut late = mosquitto::subscribe(broker.port(), "out/#").await;
    assert_eq!(
        late.next_message(WAIT).await,
        received("out/state", r#"{"a":1,"b":[true,null]}"#, true),
        "only the retained state stays on the broker"
    );
    late.expect_nothing(QUIET).await;
    assert_eq!(bridge.stat(|s| &s.messages_out), 6);
}

/// An object goes out as JSON text, scalars as plain text, retain only where
/// asked, and a trigger's string as a non-retained payload (MQTT 3.1.1).
#[tokio::test]
async fn objects_go_out_as_json_and_scalars_as_plain_text_with_retain_honoured_over_3_1_1() {
    outgoing_payloads(MqttProtocol::V311).await;
}

/// The same over MQTT 5.
#[tokio::test]
async fn objects_go_out_as_json_and_scalars_as_plain_text_with_retain_honoured_over_5() {
    outgoing_payloads(MqttProtocol::V5).await;
}

async fn incoming_on_filters(protocol: MqttProtocol) {
    let broker = Mosquitto::start().await;
    let mut bridge = Bridge::start(config(&broker, protocol, "in"), &["in/+/state", "cmd/#"]);
    bridge.connected().await;

    mosquitto::publish(broker.port(), "in/kitchen/state", r#"{"t":21.5}"#, 1, false).await;
    mosquitto::publish(broker.port(), "in/a/b/state", "too deep for +", 1, false).await;
    mosquitto::publish(broker.port(), "cmd/lights/on", "hello world", 1, false).await;
    mosquitto::publish(broker.port(), "cmd", "12", 0, false).await;

    assert_eq!(bridge.next_inbound().await, mqtt("in/kitchen/state", json!({"t": 21.5})));
    assert_eq!(bridge.next_inbound().await, mqtt("cmd/lights/on", json!("hello world")));
    assert_eq!(bridge.next_inbound().await, mqtt("cmd", json!(12)));
    assert_eq!(bridge.stat(|s| &s.messages_in), 3);
}

/// Another client's publishes on filters with `+` and `#` arrive as
/// messages with the decoded JSON, or the text as a string (MQTT 3.1.1).
#[tokio::test]
async fn publishes_on_subscribed_filters_arrive_as_decoded_messages_over_3_1_1() {
    incoming_on_filters(MqttProtocol::V311).await;
}

/// The same over MQTT 5.
#[tokio::test]
async fn publishes_on_subscribed_filters_arrive_as_decoded_messages_over_5() {
    incoming_on_filters(MqttProtocol::V5).await;
}

async fn last_will(protocol: MqttProtocol) {
    let broker = Mosquitto::start().await;
    let bridge = Bridge::start(config(&broker, protocol, "will"), &[]);
    bridge.connected().await;
    let mut watcher = mosquitto::subscribe(broker.port(), &bridge.availability).await;
    assert_eq!(watcher.next_message(WAIT).await, received(&bridge.availability, "online", true));

    // Cancelling drops the connection with no DISCONNECT, as a crash would.
    bridge.stop.cancel();
    assert_eq!(watcher.next_message(WAIT).await, received(&bridge.availability, "offline", true));
    let mut late = mosquitto::subscribe(broker.port(), &bridge.availability).await;
    assert_eq!(late.next_message(WAIT).await, received(&bridge.availability, "offline", true));
}

/// A subscriber sees a retained `online` while the bridge is connected, and
/// the last will's retained `offline` once the bridge goes away without a
/// goodbye (MQTT 3.1.1).
#[tokio::test]
async fn availability_is_online_while_connected_and_the_last_will_says_offline_over_3_1_1() {
    last_will(MqttProtocol::V311).await;
}

/// The same over MQTT 5.
#[tokio::test]
async fn availability_is_online_while_connected_and_the_last_will_says_offline_over_5() {
    last_will(MqttProtocol::V5).await;
}

async fn clean_shutdown(protocol: MqttProtocol) {
    let broker = Mosquitto::start().await;
    let bridge = Bridge::start(config(&broker, protocol, "bye"), &[]);
    bridge.connected().await;
    let mut watcher = mosquitto::subscribe(broker.port(), "#").await;
    assert_eq!(watcher.next_message(WAIT).await, received(&bridge.availability, "online", true));

    bridge.send("out/last", Body::Value(json!("bye")), false);
    tokio::time::timeout(WAIT, bridge.handle.shutdown())
        .await
        .expect("shutdown returns instead of hanging");

    assert_eq!(watcher.next_message(WAIT).await, received("out/last", "bye", false));
    assert_eq!(watcher.next_message(WAIT).await, received(&bridge.availability, "offline", true));
    // A clean DISCONNECT discards the last will, so no second `offline`.
    watcher.expect_nothing(QUIET).await;
    assert!(matches!(bridge.disconnected().await, MqttLinkState::Disconnected { .. }));
    let after = MqttOut {
        topic: "out/late".into(),
        body: Body::Trigger,
        qos: QoS::AtMostOnce,
        retain: false,
        format: PayloadFormat::Auto,
    };
    assert!(
        matches!(bridge.handle.send(after), Err(Refused::ShuttingDown(_))),
        "a stopped endpoint takes nothing"
    );
}

async fn persistent_session(protocol: MqttProtocol) {
    let broker = Mosquitto::start().await;
    let mut settings = config(&broker, protocol, "persist");
    settings.clean_session = false;
    let bridge = Bridge::start(settings.clone(), &["in/#"]);
    bridge.connected().await;
    tokio::time::timeout(WAIT, bridge.handle.shutdown()).await.expect("shutdown returns");
    drop(bridge);

    mosquitto::publish(broker.port(), "in/while-away", "1", 1, false).await;
    let mut bridge = Bridge::start(settings, &["in/#"]);
    assert_eq!(bridge.next_inbound().await, mqtt("in/while-away", json!(1)));
}

/// With `clean_session = false` the broker keeps the session across a
/// clean stop: a QoS 1 message published while the bridge was away is
/// delivered when it comes back (MQTT 3.1.1).
#[tokio::test]
async fn a_persistent_session_receives_what_was_published_while_away_over_3_1_1() {
    persistent_session(MqttProtocol::V311).await;
}

/// The same over MQTT 5, where the session would end at the disconnect
/// unless the bridge asks for a session expiry.
#[tokio::test]
async fn a_persistent_session_receives_what_was_published_while_away_over_5() {
    persistent_session(MqttProtocol::V5).await;
}

/// `shutdown()` sends what was already handed over, then a retained
/// `offline`, then disconnects cleanly (MQTT 3.1.1).
#[tokio::test]
async fn shutdown_sends_what_was_queued_then_offline_and_disconnects_cleanly_over_3_1_1() {
    clean_shutdown(MqttProtocol::V311).await;
}

/// The same over MQTT 5.
#[tokio::test]
async fn shutdown_sends_what_was_queued_then_offline_and_disconnects_cleanly_over_5() {
    clean_shutdown(MqttProtocol::V5).await;
}

async fn broker_restart(protocol: MqttProtocol) {
    let mut broker = Mosquitto::start().await;
    let mut settings = config(&broker, protocol, "restart");
    settings.queue_size = 5;
    let mut bridge = Bridge::start(settings, &["in/#"]);
    bridge.connected().await;

    broker.kill().await;
    bridge.disconnected().await;
    for n in 0..8 {
        bridge.send(&format!("q/{n}"), Body::Value(json!(n)), true);
    }
    bridge.stat_reaches(|s| &s.offline_queue_overflow, 3).await;

    broker.restart().await;
    bridge.connected().await;
    assert_eq!(bridge.stat(|s| &s.connections), 2);

    // Retained, so a subscriber arriving after the flush still sees them;
    // the marker sent after them shows nothing else is coming.
    let mut watcher = mosquitto::subscribe(broker.port(), "q/#").await;
    bridge.send("q/end", Body::Value(json!("end")), false);
    let mut delivered = Vec::new();
    loop {
        let message = watcher.next_message(WAIT).await;
        if message.topic == "q/end" {
            break;
        }
        delivered.push(message);
    }
    delivered.sort_by(|a, b| a.topic.cmp(&b.topic));
    let expected: Vec<Received> =
        (3..8).map(|n| received(&format!("q/{n}"), &n.to_string(), true)).collect();
    let stats = bridge.handle.stats().snapshot();
    assert_eq!(delivered, expected, "the 5 newest are delivered, the 3 oldest were dropped");
    assert_eq!(bridge.stat(|s| &s.offline_queue_overflow), 3, "{stats:?}");

    mosquitto::publish(broker.port(), "in/after", "restart", 1, false).await;
    assert_eq!(bridge.next_inbound().await, mqtt("in/after", json!("restart")));
}

/// After the broker is killed and restarted the bridge reconnects by
/// itself, subscribes again, and delivers what was sent meanwhile up to
/// `queue_size`, counting exactly the overflow (MQTT 3.1.1).
#[tokio::test]
async fn after_a_broker_restart_the_bridge_resubscribes_and_delivers_the_queue_over_3_1_1() {
    broker_restart(MqttProtocol::V311).await;
}

/// The same over MQTT 5.
#[tokio::test]
async fn after_a_broker_restart_the_bridge_resubscribes_and_delivers_the_queue_over_5() {
    broker_restart(MqttProtocol::V5).await;
}

/// A broker that is down at start is just retried, with a delay that
/// doubles per failed attempt up to the maximum, and the bridge connects as
/// soon as it is up.
#[tokio::test]
async fn a_broker_down_at_start_is_retried_with_growing_delays_until_it_is_up() {
    let mut broker = Mosquitto::start().await;
    broker.kill().await;
    let bridge = Bridge::start(config(&broker, MqttProtocol::V311, "late"), &["in/#"]);
    // From `config`: 100 ms, doubled per failure, at most 400 ms.
    let ladder = [100, 200, 400].map(Duration::from_millis);

    let seen = retry_delays_until(&bridge, ladder[2]).await;

    assert!(seen.windows(2).all(|pair| pair[0].1 <= pair[1].1), "a delay shrank: {seen:?}");
    for &(failures, retry_in) in &seen {
        assert!(ladder.contains(&retry_in), "{retry_in:?} is not a doubling of 100 ms: {seen:?}");
        // The count is bumped before the state is published, so it is at
        // least the number of the failure whose delay was seen.
        let most = ladder[failures.clamp(1, 3) as usize - 1];
        assert!(retry_in <= most, "{retry_in:?} after {failures} failures: {seen:?}");
    }
    broker.restart().await;
    bridge.connected().await;
    assert_eq!(bridge.stat(|s| &s.connections), 1);
}

/// Every reconnect delay the endpoint publishes, as `(connect failures
/// counted when it was seen, retry_in)`, until one is `last`. A watch only
/// shows the latest state, so a delay may be missed, never invented.
async fn retry_delays_until(bridge: &Bridge, last: Duration) -> Vec<(u64, Duration)> {
    let mut states = bridge.handle.link_state();
    let mut seen = Vec::new();
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            if let MqttLinkState::Disconnected { retry_in, .. } = &*states.borrow_and_update() {
                seen.push((bridge.stat(|s| &s.connect_failures), *retry_in));
                if *retry_in == last {
                    return;
                }
            }
            states.changed().await.expect("the endpoint is alive");
        }
    })
    .await;
    assert!(reached.is_ok(), "no delay of {last:?} within the wait: {seen:?}");
    seen
}

/// With MQTT 3.1.1 the bridge recognises its own publish coming back on
/// `t/#` and drops it (counted once), while another client's publishes to
/// the same topic, even with the same payload, arrive.
#[tokio::test]
async fn own_publishes_do_not_come_back_but_other_clients_do_over_3_1_1() {
    let broker = Mosquitto::start().await;
    let mut bridge = Bridge::start(config(&broker, MqttProtocol::V311, "echo"), &["t/#"]);
    bridge.connected().await;

    bridge.send("t/x", Body::Value(json!("mine")), false);
    bridge.stat_reaches(|s| &s.own_echoes, 1).await;
    mosquitto::publish(broker.port(), "t/x", "theirs", 1, false).await;
    assert_eq!(bridge.next_inbound().await, mqtt("t/x", json!("theirs")));
    mosquitto::publish(broker.port(), "t/x", "mine", 1, false).await;
    assert_eq!(bridge.next_inbound().await, mqtt("t/x", json!("mine")));
    assert_eq!(bridge.stat(|s| &s.own_echoes), 1);
    assert_eq!(bridge.stat(|s| &s.messages_in), 2);
}

/// With MQTT 5 the subscription's No Local keeps the broker from sending the
/// bridge's own publish back at all, while another client's publish arrives.
#[tokio::test]
async fn own_publishes_are_not_sent_back_thanks_to_no_local_over_5() {
    let broker = Mosquitto::start().await;
    let mut bridge = Bridge::start(config(&broker, MqttProtocol::V5, "nolocal"), &["t/#"]);
    bridge.connected().await;
    let mut watcher = mosquitto::subscribe(broker.port(), "t/#").await;

    bridge.send("t/x", Body::Value(json!("mine")), false);
    // Once another subscriber has it, the broker has routed it to everyone.
    assert_eq!(watcher.next_message(WAIT).await, received("t/x", "mine", false));
    mosquitto::publish(broker.port(), "t/x", "theirs", 1, false).await;
    assert_eq!(bridge.next_inbound().await, mqtt("t/x", json!("theirs")));
    assert_eq!(bridge.stat(|s| &s.own_echoes), 0);
    assert_eq!(bridge.stat(|s| &s.messages_in), 1);
}

/// MQTT 3.1.1 gives no way to refuse a message: one over the client's hard
/// limit (16 MiB at least) ends the connection. A retained one comes back
/// after every reconnect, and each time it is counted as oversized.
#[tokio::test]
async fn a_retained_message_over_the_hard_limit_is_counted_each_time_it_ends_the_connection() {
    let broker = Mosquitto::start().await;
    mosquitto::publish(broker.port(), "in/huge", vec![b'x'; 17 * 1024 * 1024], 1, true).await;
    let bridge = Bridge::start(config(&broker, MqttProtocol::V311, "huge"), &["in/#"]);
    bridge.stat_reaches(|s| &s.oversized_in, 2).await;
    assert!(bridge.stat(|s| &s.connections) >= 2, "it reconnected after each one");
    assert_eq!(bridge.stat(|s| &s.messages_in), 0, "the huge message was never delivered");
}

async fn odd_payloads(protocol: MqttProtocol) {
    let broker = Mosquitto::start().await;
    let mut settings = config(&broker, protocol, "odd");
    settings.max_packet_bytes = 2048;
    let mut bridge = Bridge::start(settings, &["in/#"]);
    bridge.connected().await;

    mosquitto::publish(broker.port(), "in/text", "not json {", 1, false).await;
    mosquitto::publish(broker.port(), "in/binary", vec![0xff, 0xfe, 0x00, 0x80], 1, false).await;
    mosquitto::publish(broker.port(), "in/empty", Vec::new(), 1, false).await;
    mosquitto::publish(broker.port(), "in/big", vec![b'x'; 4096], 1, false).await;
    mosquitto::publish(broker.port(), "in/good", r#"{"ok":true}"#, 1, false).await;

    assert_eq!(bridge.next_inbound().await, mqtt("in/text", json!("not json {")));
    assert_eq!(
        bridge.next_inbound().await,
        mqtt("in/binary", json!({"base64": true, "data": "//4AgA=="}))
    );
    assert_eq!(bridge.next_inbound().await, mqtt("in/empty", Value::Null));
    assert_eq!(bridge.next_inbound().await, mqtt("in/good", json!({"ok": true})));
    assert_eq!(bridge.stat(|s| &s.oversized_in), 1);

    // Too large to send: counted and skipped, and the connection stays up.
    let mut watcher = mosquitto::subscribe(broker.port(), "out/#").await;
    bridge.send("out/big", Body::Value(json!("y".repeat(4096))), false);
    bridge.send("out/small", Body::Value(json!("fits")), false);
    assert_eq!(watcher.next_message(WAIT).await, received("out/small", "fits", false));
    assert_eq!(bridge.stat(|s| &s.oversized_out), 1);
    assert_eq!(bridge.stat(|s| &s.connections), 1);
}

/// Non-JSON text arrives as a string, invalid UTF-8 as base64, an empty
/// payload as null, an oversized one is counted and dropped in either
/// direction, and good messages after them still flow (MQTT 3.1.1).
#[tokio::test]
async fn odd_payloads_are_mapped_or_counted_and_good_messages_still_flow_over_3_1_1() {
    odd_payloads(MqttProtocol::V311).await;
}

/// The same over MQTT 5.
#[tokio::test]
async fn odd_payloads_are_mapped_or_counted_and_good_messages_still_flow_over_5() {
    odd_payloads(MqttProtocol::V5).await;
}

/// An MQTT 5 broker announces its maximum packet size in the CONNACK, and
/// rumqttc ends the connection rather than write a larger packet. A message
/// over the broker's limit is counted and dropped, whether it was queued
/// before the CONNACK or sent after it, instead of ending the connection and
/// coming back after every reconnect.
#[tokio::test]
async fn a_message_over_the_brokers_announced_maximum_is_counted_and_the_connection_stays_up() {
    let broker = Mosquitto::start_configured("max_packet_size 1024").await;
    let bridge = Bridge::start(config(&broker, MqttProtocol::V5, "broker-max"), &[]);
    bridge.send("out/early-big", Body::Value(json!("e".repeat(2048))), false);
    bridge.connected().await;
    let mut watcher = mosquitto::subscribe(broker.port(), "out/#").await;

    bridge.send("out/big", Body::Value(json!("y".repeat(2048))), false);
    bridge.send("out/small", Body::Value(json!("fits")), false);

    assert_eq!(watcher.next_message(WAIT).await, received("out/small", "fits", false));
    watcher.expect_nothing(QUIET).await;
    assert_eq!(bridge.stat(|s| &s.oversized_out), 2);
    assert_eq!(bridge.stat(|s| &s.connections), 1);
}

/// Settings for a bridge on `broker`'s TLS listener.
fn tls_config(broker: &Mosquitto, name: &str) -> MqttConfig {
    let mut config = config(broker, MqttProtocol::V311, name);
    config.port = broker.tls_port();
    config.tls = true;
    config
}

/// Over TLS, with the broker's CA as an extra trust anchor, the bridge
/// verifies the certificate, connects and carries messages both ways. No
/// process-wide rustls provider is installed in this test.
#[tokio::test]
async fn tls_with_the_brokers_ca_verifies_connects_and_carries_messages() {
    let broker = Mosquitto::start_with_tls().await;
    let mut settings = tls_config(&broker, "tls");
    settings.ca_file = Some(broker.ca_file());
    let mut bridge = Bridge::start(settings, &["in/#"]);
    bridge.connected().await;

    let mut watcher = mosquitto::subscribe(broker.port(), "out/#").await;
    bridge.send("out/secure", Body::Value(json!("yes")), false);
    assert_eq!(watcher.next_message(WAIT).await, received("out/secure", "yes", false));
    mosquitto::publish(broker.port(), "in/secure", "1", 1, false).await;
    assert_eq!(bridge.next_inbound().await, mqtt("in/secure", json!(1)));
}

/// A certificate the bridge cannot verify is refused and retried, with the
/// reason in the link state; with `verify_tls` off the same broker is
/// accepted.
#[tokio::test]
async fn an_unverifiable_certificate_is_refused_and_retried_unless_verification_is_off() {
    let broker = Mosquitto::start_with_tls().await;
    let strict = Bridge::start(tls_config(&broker, "strict"), &[]);
    let state = strict.disconnected().await;
    let MqttLinkState::Disconnected { reason, .. } = &state else { unreachable!() };
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    strict.stat_reaches(|s| &s.connect_failures, 2).await;
    assert_eq!(strict.stat(|s| &s.connections), 0);

    let mut settings = tls_config(&broker, "insecure");
    settings.verify_tls = false;
    let insecure = Bridge::start(settings, &[]);
    insecure.connected().await;
}

/// One MQTT 3.1.1 packet read by the scripted broker: the first header
/// byte and the rest after the length.
async fn read_packet(socket: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let first = socket.read_u8().await.ok()?;
    let (mut length, mut shift) = (0usize, 0);
    loop {
        let byte = socket.read_u8().await.ok()?;
        length |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0; length];
    socket.read_exact(&mut body).await.ok()?;
    Some((first, body))
}

/// A scripted MQTT 3.1.1 broker, for what a real one cannot be made to do:
/// the first connection takes a QoS 2 publish, answers PUBREC, and drops
/// the connection as soon as the PUBREL arrives. The next two attempts are
/// closed at once. The connection after them says it kept the session and reports the packet id of the PUBREL it
/// gets, which it completes.
async fn broker_that_drops_after_pubrel(listener: tokio::net::TcpListener) -> (u16, Option<u16>) {
    use tokio::io::AsyncWriteExt;
    let (mut first, _) = listener.accept().await.expect("first connection");
    let mut released = None;
    while let Some((header, body)) = read_packet(&mut first).await {
        match header >> 4 {
            1 => first.write_all(&[0x20, 2, 0, 0]).await.expect("CONNACK"),
            3 if header & 0x06 == 0x04 => {
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let id = [body[2 + topic_len], body[3 + topic_len]];
                first.write_all(&[0x50, 2, id[0], id[1]]).await.expect("PUBREC");
            }
            6 => {
                released = Some(u16::from_be_bytes([body[0], body[1]]));
                break;
            }
            12 => first.write_all(&[0xd0, 0]).await.expect("PINGRESP"),
            _ => {}
        }
    }
    drop(first);
    let released = released.expect("a PUBREL on the first connection");
    // Two attempts that fail before a CONNACK, as while a broker restarts.
    for _ in 0..2 {
        let (refused, _) = listener.accept().await.expect("a failed attempt");
        drop(refused);
    }
    let (mut second, _) = listener.accept().await.expect("second connection");
    let mut again = None;
    while let Some((header, body)) = read_packet(&mut second).await {
        match header >> 4 {
            // Session present.
            1 => second.write_all(&[0x20, 2, 1, 0]).await.expect("CONNACK"),
            6 => {
                again = Some(u16::from_be_bytes([body[0], body[1]]));
                second.write_all(&[0x70, 2, body[0], body[1]]).await.expect("PUBCOMP");
                break;
            }
            12 => second.write_all(&[0xd0, 0]).await.expect("PINGRESP"),
            _ => {}
        }
    }
    (released, again)
}

/// A QoS 2 publish whose PUBREL was sent when the connection broke is
/// counted as in doubt once (not again for each failed attempt after it),
/// and its PUBREL is sent again on the next connection, where the broker
/// kept the session.
#[tokio::test]
async fn a_qos_2_handshake_cut_after_pubrel_is_counted_and_resumed_in_a_kept_session() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let broker = tokio::spawn(broker_that_drops_after_pubrel(listener));
    let mut settings = MqttConfig::new("127.0.0.1", port)
        .with_client_id(format!("bridge-qos2-{}", std::process::id()));
    settings.clean_session = false;
    settings.availability_topic = None;
    settings.reconnect_delay = Duration::from_millis(100);
    let bridge = Bridge::start(settings, &[]);
    bridge.connected().await;
    let exactly_once = MqttOut {
        topic: "out/cue".into(),
        body: Body::Value(json!("go")),
        qos: QoS::ExactlyOnce,
        retain: false,
        format: PayloadFormat::Auto,
    };
    bridge.handle.send(exactly_once).expect("taken");

    let (released, again) =
        tokio::time::timeout(WAIT, broker).await.expect("the script ran").expect("no panic");
    assert_eq!(again, Some(released), "the same PUBREL again on the kept session");
    assert_eq!(bridge.stat(|s| &s.qos2_in_doubt), 1);
    assert_eq!(bridge.stat(|s| &s.connections), 2);
}

async fn overlapping_filters(protocol: MqttProtocol) {
    let broker = Mosquitto::start().await;
    let mut bridge =
        Bridge::start(config(&broker, protocol, "overlap"), &["in/#", "in/x", "in/+", "in/+/z"]);
    bridge.connected().await;
    mosquitto::publish(broker.port(), "in/x", "1", 1, false).await;
    mosquitto::publish(broker.port(), "in/y/z", "2", 1, false).await;
    assert_eq!(bridge.next_inbound().await, mqtt("in/x", json!(1)));
    assert_eq!(bridge.next_inbound().await, mqtt("in/y/z", json!(2)));
    let more = tokio::time::timeout(QUIET, bridge.inbound.recv()).await;
    assert!(more.is_err(), "one copy of each, not one per matching filter: {more:?}");
}

/// Over MQTT 3.1.1 Mosquitto sends one copy anyway; what this checks is
/// that the reduced set of filters (`in/#` alone) still delivers every
/// message the four filters asked for.
#[tokio::test]
async fn overlapping_filters_deliver_each_message_once_over_3_1_1() {
    overlapping_filters(MqttProtocol::V311).await;
}

/// Filters that another one covers are not subscribed separately: an
/// MQTT 5 broker, which sends one copy per matching subscription, sends one.
#[tokio::test]
async fn overlapping_filters_deliver_each_message_once_over_5() {
    overlapping_filters(MqttProtocol::V5).await;
}

/// Eleven hundred filters, more requests than rumqttc's channel holds if
/// each went on its own, are all subscribed, and `online` still goes out.
#[tokio::test]
async fn eleven_hundred_filters_are_all_subscribed_and_online_still_goes_out_over_5() {
    let broker = Mosquitto::start().await;
    let filters: Vec<String> = (0..1100).map(|i| format!("many/{i}")).collect();
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    let mut bridge = Bridge::start(config(&broker, MqttProtocol::V5, "many"), &filters);
    bridge.connected().await;
    let mut watcher = mosquitto::subscribe(broker.port(), &bridge.availability).await;
    assert_eq!(watcher.next_message(WAIT).await, received(&bridge.availability, "online", true));
    mosquitto::publish(broker.port(), "many/0", "0", 1, false).await;
    mosquitto::publish(broker.port(), "many/1099", "1", 1, false).await;
    assert_eq!(bridge.next_inbound().await, mqtt("many/0", json!(0)));
    assert_eq!(bridge.next_inbound().await, mqtt("many/1099", json!(1)));
    assert_eq!(bridge.stat(|s| &s.subscribe_failures), 0);
}

/// A Mosquitto whose ACL lets us write `out/#` and `status/#` only, and an
/// MQTT 5 endpoint on it that announces itself on `status/NAME`.
async fn bridge_behind_an_acl(name: &str) -> (Mosquitto, Bridge) {
    let acl = std::env::temp_dir().join(format!("scbridge-acl-{name}-{}", std::process::id()));
    std::fs::write(&acl, "topic readwrite out/#\ntopic readwrite status/#\n")
        .expect("write the ACL file");
    let broker = Mosquitto::start_configured(&format!("acl_file {}", acl.display())).await;
    // Read once, at the start.
    let _ = std::fs::remove_file(&acl);
    let mut settings = config(&broker, MqttProtocol::V5, name);
    settings.availability_topic = Some(format!("status/{name}"));
    let bridge = Bridge::start(settings, &[]);
    bridge.connected().await;
    (broker, bridge)
}

/// QoS 2 publishes to topics the ACL does not let us write.
fn send_refused_qos_2(bridge: &Bridge, count: usize) {
    for n in 0..count {
        let refused = MqttOut {
            topic: format!("denied/{n}"),
            body: Body::Value(json!(n)),
            qos: QoS::ExactlyOnce,
            retain: false,
            format: PayloadFormat::Auto,
        };
        bridge.handle.send(refused).expect("taken");
    }
}

/// An MQTT 5 broker says when it refuses a publish (here its ACL does not
/// let us write the topic): the refusal is counted, and the publishes it
/// allows still go out.
#[tokio::test]
async fn a_publish_the_broker_refuses_over_5_is_counted() {
    let (broker, bridge) = bridge_behind_an_acl("acl").await;
    let mut watcher = mosquitto::subscribe(broker.port(), "out/#").await;

    bridge.send("denied/x", Body::Value(json!("no")), false);
    bridge.send("out/ok", Body::Value(json!("yes")), false);

    assert_eq!(watcher.next_message(WAIT).await, received("out/ok", "yes", false));
    bridge.stat_reaches(|s| &s.publish_refused, 1).await;
    assert_eq!(bridge.stat(|s| &s.connections), 1);
}

/// rumqttc keeps the in-flight slot of a QoS 2 publish the broker refused
/// in its PUBREC; with Mosquitto's window of 20, the 20th refusal would
/// stop every publish on the connection. The endpoint reconnects before
/// that, without a last will, and the allowed publishes keep going out.
#[tokio::test]
async fn refused_qos_2_publishes_do_not_stall_the_connection() {
    let (broker, bridge) = bridge_behind_an_acl("acl-qos2").await;
    let mut allowed = mosquitto::subscribe(broker.port(), "out/#").await;
    let mut availability = mosquitto::subscribe(broker.port(), "status/#").await;

    for round in 0..3 {
        send_refused_qos_2(&bridge, 25);
        bridge.send("out/ok", Body::Value(json!(round)), false);
        assert_eq!(
            allowed.next_message(WAIT).await,
            received("out/ok", &round.to_string(), false),
            "round {round}"
        );
    }
    bridge.stat_reaches(|s| &s.publish_refused, 75).await;
    let renewals = bridge.stat(|s| &s.window_renewals);
    assert!(renewals >= 3, "one renewal per 20 refusals at least: {renewals}");
    assert_eq!(bridge.stat(|s| &s.connections), renewals + 1);
    while let Some(status) = availability.next_within(QUIET).await {
        assert_eq!(status.payload, b"online", "no last will on the way: {status:?}");
    }
    allowed.expect_nothing(QUIET).await;
}

/// A shutdown asked for while refused QoS 2 publishes fill the window: the
/// `offline` and DISCONNECT of the close wait behind them in rumqttc, so
/// the connection is renewed and the close done again on the new one.
#[tokio::test]
async fn a_shutdown_behind_refused_qos_2_publishes_still_sends_everything_then_offline() {
    let (broker, bridge) = bridge_behind_an_acl("acl-bye").await;
    let mut watcher = mosquitto::subscribe(broker.port(), "#").await;
    assert_eq!(watcher.next_message(WAIT).await, received("status/acl-bye", "online", true));

    send_refused_qos_2(&bridge, 25);
    bridge.send("out/last", Body::Value(json!("bye")), false);
    tokio::time::timeout(WAIT, bridge.handle.shutdown())
        .await
        .expect("shutdown returns instead of hanging");

    let mut seen = Vec::new();
    while let Some(message) = watcher.next_within(QUIET).await {
        seen.push((message.topic, String::from_utf8_lossy(&message.payload).into_owned()));
    }
    assert!(seen.contains(&("out/last".into(), "bye".into())), "sent before the stop: {seen:?}");
    assert_eq!(
        seen.last(),
        Some(&("status/acl-bye".into(), "offline".into())),
        "offline is the last word: {seen:?}"
    );
    assert!(!seen.iter().any(|(_, payload)| payload == "online"), "never online again: {seen:?}");
    assert_eq!(bridge.stat(|s| &s.shutdown_dropped), 0);
    assert!(bridge.stat(|s| &s.window_renewals) >= 1);
}

/// Takes over the MQTT 3.1.1 session of `client_id` on the broker (which
/// disconnects the client holding it), keeping the session, and leaves.
async fn take_over_session(port: u16, client_id: &str) {
    use rumqttc::{ConnectReturnCode, Event, Outgoing, Packet};
    let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut events) = rumqttc::AsyncClient::new(options, 4);
    let took_over = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await.expect("the broker answers") {
                Event::Incoming(Packet::ConnAck(ack)) => break ack.code,
                _ => continue,
            }
        }
    });
    let code = took_over.await.expect("a CONNACK in time");
    assert_eq!(code, ConnectReturnCode::Success, "the broker accepted the takeover");
    client.disconnect().await.expect("DISCONNECT queued");
    let left = tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(events.poll().await, Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) {}
    });
    left.await.expect("DISCONNECT sent in time");
}

/// With `clean_session = false`, an UNSUBSCRIBE the broker never read
/// (the connection broke first) leaves the filter in the kept session: it
/// is sent again after the reconnect.
#[tokio::test]
async fn an_unsubscribe_lost_with_the_connection_is_sent_again_to_the_kept_session() {
    let broker = Mosquitto::start().await;
    let gate = support::faults::TcpGate::start(broker.port()).await;
    let (mut bridge, _) = kept_session_on_in(&gate, "lost-unsub").await;

    // Queued on what still looks like a live connection, never forwarded.
    gate.cut();
    bridge.handle.set_subscriptions(vec![other_instead_of_in()]).expect("valid filters");
    bridge.disconnected().await;
    bridge.connected().await;

    only_other_is_delivered(&broker, &mut bridge).await;
}

/// An endpoint with a persistent session, reaching the broker through
/// `gate` and subscribed to `in/#`; and its client id.
async fn kept_session_on_in(gate: &support::faults::TcpGate, name: &str) -> (Bridge, String) {
    let id = format!("bridge-{name}-{}", std::process::id());
    let mut settings = MqttConfig::new("127.0.0.1", gate.port()).with_client_id(id.clone());
    settings.clean_session = false;
    settings.availability_topic = None;
    settings.reconnect_delay = Duration::from_millis(100);
    settings.reconnect_max_delay = Duration::from_millis(200);
    let bridge = Bridge::start(settings, &["in/#"]);
    bridge.connected().await;
    (bridge, id)
}

fn other_instead_of_in() -> Subscription {
    Subscription { filter: "other/#".into(), qos: QoS::AtLeastOnce }
}

/// `in/#` gave way to `other/#`: only the latter's messages come.
async fn only_other_is_delivered(broker: &Mosquitto, bridge: &mut Bridge) {
    mosquitto::publish(broker.port(), "in/x", "1", 1, false).await;
    mosquitto::publish(broker.port(), "other/y", "2", 1, false).await;
    assert_eq!(bridge.next_inbound().await, mqtt("other/y", json!(2)));
    let more = tokio::time::timeout(QUIET, bridge.inbound.recv()).await;
    assert!(more.is_err(), "nothing from the dropped filter: {more:?}");
}

/// With `clean_session = false`, a filter dropped while the connection was
/// down is still in the session the broker kept: it is unsubscribed after
/// the reconnect, so its messages stop coming.
#[tokio::test]
async fn a_filter_dropped_while_disconnected_is_unsubscribed_from_the_kept_session() {
    let broker = Mosquitto::start().await;
    let gate = support::faults::TcpGate::start(broker.port()).await;
    let (mut bridge, id) = kept_session_on_in(&gate, "stale").await;

    gate.close();
    take_over_session(broker.port(), &id).await;
    bridge.disconnected().await;
    bridge.handle.set_subscriptions(vec![other_instead_of_in()]).expect("valid filters");
    gate.open();
    bridge.connected().await;

    only_other_is_delivered(&broker, &mut bridge).await;
}
