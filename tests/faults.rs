//! Faults against real peers: a SocketCluster server and a Mosquitto broker
//! killed and restarted, an OSC target that goes away and comes back, a
//! broker that accepts TCP and never answers, and garbage on every input.
//! Every test asserts exact counts, order and types, and waits on
//! conditions with time limits.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rosc::{OscMessage, OscPacket, OscType};
use scbridge::bridge::{self, Running};
use scbridge::config::Config;
use scbridge::mqtt::{MqttHandle, MqttLinkState};
use scbridge::sc::LinkState;
use scbridge::stats::get;
use serde_json::{Value, json};
use support::faults::{
    OscCollector, ScriptedScServer, SilentBroker, TcpGate, XorShift, osc_garbage, sc_garbage,
};
use support::mosquitto::{self, Mosquitto, TestSubscriber};
use support::sc_peer::{JsClient, ScServer, ScServerOptions, wait_until};
use tokio::net::UdpSocket;
use tokio::time::{Instant, sleep, timeout};

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Shared steps
// ---------------------------------------------------------------------------

/// Starts the bridge from TOML with `{KEY}` placeholders filled in.
async fn start_bridge(template: &str, values: &[(&str, String)]) -> Running {
    let mut toml = template.to_owned();
    for (key, value) in values {
        toml = toml.replace(&format!("{{{key}}}"), value);
    }
    let config = Config::from_toml(&toml, "faults.toml").expect("valid test config");
    bridge::start(config).await.expect("bridge starts")
}

/// Waits until the SocketCluster link is connected; returns its socket id.
async fn sc_connected(running: &Running) -> String {
    let mut link = running.sc().link_state();
    let state = timeout(WAIT, link.wait_for(LinkState::is_connected))
        .await
        .expect("the SocketCluster link connects")
        .expect("the link task runs")
        .clone();
    match state {
        LinkState::Connected { socket_id, .. } => socket_id,
        other => unreachable!("{other:?}"),
    }
}

/// Waits until the MQTT link is connected and subscribed.
async fn mqtt_connected(mqtt: &MqttHandle) {
    let mut link = mqtt.link_state();
    timeout(WAIT, link.wait_for(|s| *s == MqttLinkState::Connected))
        .await
        .expect("the MQTT link connects")
        .expect("the MQTT task runs");
}

/// Waits until the MQTT link has noticed that it lost the broker.
async fn mqtt_disconnected(mqtt: &MqttHandle) {
    let mut link = mqtt.link_state();
    timeout(WAIT, link.wait_for(|s| matches!(s, MqttLinkState::Disconnected { .. })))
        .await
        .expect("the MQTT link notices the loss")
        .expect("the MQTT task runs");
}

/// Checks `condition` every millisecond, for loops that pace a flood by
/// what the bridge has taken in (the 20 ms of `wait_until` would dominate).
async fn poll_until(mut condition: impl FnMut() -> bool, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        sleep(Duration::from_millis(1)).await;
    }
}

/// A cables envelope from a JS client, as JSON text.
fn envelope(topic: &str, payload: usize) -> String {
    json!({"topic": topic, "clientId": "js-1", "payload": payload}).to_string()
}

/// OSC messages with one int32 argument each, as the `numbers = "int32"`
/// routes send them.
fn int_messages(address: &str, values: impl IntoIterator<Item = usize>) -> Vec<OscMessage> {
    values
        .into_iter()
        .map(|n| OscMessage {
            addr: address.to_owned(),
            args: vec![OscType::Int(i32::try_from(n).expect("small"))],
        })
        .collect()
}

/// One UDP socket playing TouchDesigner's OSC output.
struct OscSender {
    socket: UdpSocket,
    to: SocketAddr,
}

impl OscSender {
    async fn new(to: SocketAddr) -> OscSender {
        OscSender { socket: UdpSocket::bind("127.0.0.1:0").await.expect("bind a sender"), to }
    }

    async fn int(&self, address: &str, value: usize) {
        let message = OscMessage {
            addr: address.to_owned(),
            args: vec![OscType::Int(i32::try_from(value).expect("small"))],
        };
        let bytes = rosc::encoder::encode(&OscPacket::Message(message)).expect("encodable");
        self.bytes(&bytes).await;
    }

    async fn bytes(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.to).await.expect("send UDP");
    }
}

fn osc_in(running: &Running) -> SocketAddr {
    running.osc().expect("osc configured").listen_addrs()[0]
}

/// The cables envelopes a socket published on `channel`, as the server
/// logged them (`PUBLISH <socket> <channel> <json>`), from line `from` on:
/// (topic, payload) pairs.
fn published(server: &ScServer, from: usize, socket: &str, channel: &str) -> Vec<(String, Value)> {
    server.lines_so_far()[from..]
        .iter()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let fields = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            (fields.0 == "PUBLISH" && fields.1 == socket && fields.2 == channel).then_some(fields.3)
        })
        .map(|data| {
            let data: Value = serde_json::from_str(data).expect("JSON in a PUBLISH line");
            (data["topic"].as_str().unwrap_or_default().to_owned(), data["payload"].clone())
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. The SocketCluster server dies
// ---------------------------------------------------------------------------

const SC_RESTART: &str = r#"
[socketcluster]
url = "{SC}"
reconnect_delay_ms = 300
queue_size = {QUEUE}

[cables]
channel = "show"
client_id = "bridge-1"

[osc]
listen = ["127.0.0.1:0"]
[osc.targets]
td = "{TD}"

[[route]]
name = "td to cables"
from = { osc = "/td/*" }
to = [{ cables_object = "out/{1}" }]

[[route]]
name = "cables to td"
from = { cables_object = "in/*" }
to = [{ osc = "/in/*", numbers = "int32" }]
"#;

/// A SocketCluster server killed while traffic flows both ways and started
/// again: the bridge waits its reconnect delay, reconnects, resubscribes once,
/// and delivers exactly the newest `queue_size` messages held meanwhile, in
/// order, with every older one counted as overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_socketcluster_server_gets_the_newest_queued_messages_in_order() {
    const QUEUE: usize = 20;
    const EXTRA: usize = 7;
    let mut server = ScServer::start(ScServerOptions::new()).await;
    let td = OscCollector::bind().await;
    let running = start_bridge(
        SC_RESTART,
        &[("SC", server.url()), ("TD", td.addr().to_string()), ("QUEUE", QUEUE.to_string())],
    )
    .await;
    let first_socket = sc_connected(&running).await;
    wait_until(|| server.count_lines("SUBSCRIBE ") == 3, WAIT, "the cables subscriptions").await;
    let js = JsClient::interactive(server.port(), 2).await;
    let osc = OscSender::new(osc_in(&running)).await;
    let routes = running.routes();
    let sc = running.sc();
    let mut link = sc.link_state();

    // Traffic both ways, every 10 ms, until the bridge has noticed the kill.
    let stop = AtomicBool::new(false);
    let traffic = async {
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) {
            js.send_line(&format!("pub show/objects {}", envelope("in/live", sent))).await;
            osc.int("/td/live", sent).await;
            sent += 1;
            sleep(Duration::from_millis(10)).await;
        }
        sent
    };
    let fault = async {
        td.wait_for("/in/live", 5, WAIT).await;
        wait_until(
            || published(&server, 0, &first_socket, "show/objects").len() >= 5,
            WAIT,
            "live envelopes at the server",
        )
        .await;
        server.kill().await;
        let state = timeout(WAIT, link.wait_for(|s| matches!(s, LinkState::Disconnected { .. })))
            .await
            .expect("the loss is noticed")
            .expect("the link task runs")
            .clone();
        stop.store(true, Ordering::SeqCst);
        state
    };
    let (live_sent, down) = tokio::join!(traffic, fault);
    let LinkState::Disconnected { retry_in, .. } = down else { unreachable!() };
    assert_eq!(retry_in, Duration::from_millis(300), "the configured reconnect_delay_ms");

    // Live messages routed after the loss wait in the queue; those written
    // just before it went down with the socket.
    wait_until(|| get(&routes[0].sent) == live_sent as u64, WAIT, "every live message routed")
        .await;
    let held_live = sc.queued();
    let overflow_before = get(&sc.stats().queue_overflow);
    for n in 0..QUEUE + EXTRA {
        osc.int("/td/seq", n).await;
    }
    let routed = (live_sent + QUEUE + EXTRA) as u64;
    wait_until(|| get(&routes[0].sent) == routed, WAIT, "the messages sent while down").await;
    assert_eq!(get(&routes[0].matched), routed);
    assert_eq!(sc.queued(), QUEUE, "the queue holds exactly queue_size");
    assert_eq!(
        get(&sc.stats().queue_overflow) - overflow_before,
        (held_live + EXTRA) as u64,
        "every message pushed out of the full queue is counted"
    );
    assert!(!running.is_finished(), "the bridge survived the loss");

    let restarted_at = server.stdout().len();
    server.restart().await;
    let second_socket = sc_connected(&running).await;
    assert_ne!(second_socket, first_socket);
    // The marker goes once the held messages have, so that it cannot take
    // the place of one of them in the full queue itself.
    wait_until(|| sc.queued() == 0, WAIT, "the held messages sent").await;
    osc.int("/td/end", 0).await;
    wait_until(
        || {
            published(&server, restarted_at, &second_socket, "show/objects")
                .iter()
                .any(|(topic, _)| topic == "out/end")
        },
        WAIT,
        "the envelope sent after the reconnect",
    )
    .await;
    let mut expected: Vec<(String, Value)> =
        (EXTRA..QUEUE + EXTRA).map(|n| ("out/seq".to_owned(), json!(n))).collect();
    expected.push(("out/end".to_owned(), json!(0)));
    assert_eq!(
        published(&server, restarted_at, &second_socket, "show/objects"),
        expected,
        "exactly the newest queue_size messages, oldest first, then the marker; \
         counters {:?}; the server saw since its restart:\n{}",
        sc.stats().snapshot(),
        server.lines_so_far()[restarted_at..].join("\n")
    );
    // The bridge announces itself on the control channel after each connect,
    // once, and that must not cost a held message either.
    wait_until(
        || !published(&server, restarted_at, &second_socket, "show/control").is_empty(),
        WAIT,
        "the announcement after the reconnect",
    )
    .await;
    assert_eq!(
        published(&server, restarted_at, &second_socket, "show/control"),
        [("cablescontrol".to_owned(), json!({"allowSend": true}))]
    );
    assert_eq!(
        get(&sc.stats().queue_overflow) - overflow_before,
        (held_live + EXTRA) as u64,
        "nothing more was dropped on the reconnect"
    );
    let resubscribed: Vec<String> = server.lines_so_far()[restarted_at..]
        .iter()
        .filter(|line| line.starts_with(&format!("SUBSCRIBE {second_socket} ")))
        .map(|line| line.split(' ').nth(2).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(resubscribed, ["show/objects", "show/triggers", "show/control"]);
    assert_eq!(get(&sc.stats().connections), 2);

    // SocketCluster -> OSC works again once the JS client is back too.
    js.wait_connected().await;
    js.send_line(&format!("pub show/objects {}", envelope("in/after", 1))).await;
    assert_eq!(td.wait_for("/in/after", 1, WAIT).await, int_messages("/in/after", [1]));
    running.stop().await;
}

const PLAIN_PAIR: &str = r#"
[socketcluster]
url = "{SC}"
reconnect_delay_ms = 200

[osc]
listen = ["127.0.0.1:0"]
[osc.targets]
td = "{TD}"

[[route]]
name = "td to channel"
from = { osc = "/fader" }
to = [{ sc_channel = "fader" }]

[[route]]
name = "channel to td"
from = { sc_channel = "fader" }
to = [{ osc = "/fader", numbers = "int32" }]
"#;

/// Own publishes on a plain channel are known by their content for 5 s. One
/// held through a longer outage still comes back as our echo after the
/// reconnect, not as input, so an OSC <-> channel pair does not loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_channel_publish_held_through_a_long_outage_is_not_taken_as_input() {
    let mut server = ScServer::start(ScServerOptions::new()).await;
    let td = OscCollector::bind().await;
    let running =
        start_bridge(PLAIN_PAIR, &[("SC", server.url()), ("TD", td.addr().to_string())]).await;
    sc_connected(&running).await;
    wait_until(|| server.count_lines("SUBSCRIBE ") == 1, WAIT, "the channel subscribed").await;
    let sc = running.sc();
    let mut link = sc.link_state();

    server.kill().await;
    timeout(WAIT, link.wait_for(|s| matches!(s, LinkState::Disconnected { .. })))
        .await
        .expect("the loss is noticed")
        .expect("the link task runs");
    OscSender::new(osc_in(&running)).await.int("/fader", 7).await;
    wait_until(|| sc.queued() == 1, WAIT, "the publish held").await;
    // The outage itself: longer than the 5 s for which a publish is known.
    sleep(Duration::from_secs(6)).await;

    let restarted_at = server.stdout().len();
    server.restart().await;
    let socket = sc_connected(&running).await;
    wait_until(
        || server.lines_so_far()[restarted_at..].contains(&format!("PUBLISH {socket} fader 7")),
        WAIT,
        "the held publish sent after the reconnect",
    )
    .await;
    wait_until(|| get(&running.stats.own_echoes) == 1, WAIT, "its echo recognised").await;
    // Absence: a bounded quiet window is the only way to see that nothing
    // more comes.
    sleep(Duration::from_millis(300)).await;
    assert_eq!(td.messages(), vec![], "the echo did not reach TouchDesigner");
    assert_eq!(get(&running.routes()[1].matched), 0);
    running.stop().await;
}

// ---------------------------------------------------------------------------
// 2. The broker dies
// ---------------------------------------------------------------------------

const MQTT_RESTART: &str = r#"
[socketcluster]
url = "ws://127.0.0.1:{UNUSED}/socketcluster/"
active = false

[osc]
listen = ["127.0.0.1:0"]
[osc.targets]
td = "{TD}"

[mqtt]
url = "mqtt://127.0.0.1:{GATE}"
client_id = "fault-bridge"
reconnect_delay_ms = 100
reconnect_max_delay_ms = 200
queue_size = {QUEUE}
availability_topic = ""

[control]
# No link status on MQTT: every MQTT message here comes from a route.
status_topic = ""

[[route]]
name = "td to mqtt"
from = { osc = "/td/*" }
to = [{ mqtt = "out/+", qos = 1 }]

[[route]]
name = "sync"
from = { mqtt = "sync/+" }
to = [{ osc = "/sync/{1}", numbers = "int32" }]
"#;

/// Reads `count` messages and checks them against (topic, payload) pairs.
async fn expect_messages(subscriber: &mut TestSubscriber, expected: &[(String, String)]) {
    let mut got = Vec::new();
    for _ in expected {
        let message = subscriber.next_message(WAIT).await;
        got.push((message.topic.clone(), message.text()));
    }
    assert_eq!(got, expected);
}

fn out_messages(topic: &str, values: std::ops::Range<usize>) -> Vec<(String, String)> {
    values.map(|n| (topic.to_owned(), n.to_string())).collect()
}

/// Kills the broker behind a closed gate and waits until the bridge has
/// noticed; from here on the bridge cannot reconnect until the gate opens.
async fn take_the_broker_down(broker: &mut Mosquitto, gate: &TcpGate, mqtt: &MqttHandle) {
    gate.close();
    broker.kill().await;
    mqtt_disconnected(mqtt).await;
}

/// Restarts the broker, subscribes a fresh test client to `out/#`, and only
/// then lets the bridge through the gate: whatever it flushes on reconnect
/// has a subscriber (the broker keeps no sessions across its restart).
async fn bring_the_broker_back(
    broker: &mut Mosquitto,
    gate: &TcpGate,
    mqtt: &MqttHandle,
) -> TestSubscriber {
    broker.restart().await;
    let subscriber = mosquitto::subscribe(broker.port(), "out/#").await;
    gate.open();
    mqtt_connected(mqtt).await;
    subscriber
}

/// Proves the bridge has read everything the broker sent it so far (the
/// PUBACKs of its own publishes included): a publish made after them comes
/// back out over OSC.
async fn barrier(broker: &Mosquitto, td: &OscCollector, n: usize) {
    mosquitto::publish(broker.port(), &format!("sync/{n}"), n.to_string(), 1, false).await;
    td.wait_for(&format!("/sync/{n}"), 1, WAIT).await;
}

/// Mosquitto killed and started again: QoS 1 messages sent meanwhile arrive
/// exactly once each, in order, when they fit in the MQTT queue; beyond it
/// the oldest are dropped and counted, and the newest `queue_size` arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_gets_every_queued_qos1_message_within_the_queue_bound() {
    const QUEUE: usize = 20;
    const FEW: usize = 10;
    const EXTRA: usize = 7;
    let mut broker = Mosquitto::start().await;
    let gate = TcpGate::start(broker.port()).await;
    let td = OscCollector::bind().await;
    let nobody_listens = support::daemon::ClosedPort::new();
    let running = start_bridge(
        MQTT_RESTART,
        &[
            ("UNUSED", nobody_listens.port().to_string()),
            ("TD", td.addr().to_string()),
            ("GATE", gate.port().to_string()),
            ("QUEUE", QUEUE.to_string()),
        ],
    )
    .await;
    let mqtt = running.mqtt().expect("mqtt configured");
    mqtt_connected(&mqtt).await;
    let osc = OscSender::new(osc_in(&running)).await;
    let mut subscriber = mosquitto::subscribe(broker.port(), "out/#").await;
    osc.int("/td/before", 0).await;
    expect_messages(&mut subscriber, &out_messages("out/before", 0..1)).await;
    barrier(&broker, &td, 0).await;

    // Fewer than queue_size while the broker is down: nothing is lost.
    take_the_broker_down(&mut broker, &gate, &mqtt).await;
    for n in 0..FEW {
        osc.int("/td/few", n).await;
    }
    let routes = running.routes();
    let route = &routes[0];
    wait_until(|| get(&route.sent) == 1 + FEW as u64, WAIT, "handed to the MQTT endpoint").await;
    let mut subscriber = bring_the_broker_back(&mut broker, &gate, &mqtt).await;
    expect_messages(&mut subscriber, &out_messages("out/few", 0..FEW)).await;
    // The next message is the one sent after the reconnect: no duplicate
    // came in between.
    osc.int("/td/after", 1).await;
    expect_messages(&mut subscriber, &out_messages("out/after", 1..2)).await;
    assert_eq!(get(&mqtt.stats().offline_queue_overflow), 0);
    barrier(&broker, &td, 1).await;

    // queue_size + EXTRA while down: the oldest EXTRA are dropped, counted.
    // One at a time, each taken in before the next goes: the endpoint's
    // intake channel is only queue_size deep (see the burst test below).
    take_the_broker_down(&mut broker, &gate, &mqtt).await;
    let overflow = &mqtt.stats().offline_queue_overflow;
    for n in 0..QUEUE + EXTRA {
        osc.int("/td/many", n).await;
        let taken = (1 + FEW + 1 + n + 1) as u64;
        poll_until(|| get(&route.sent) == taken, WAIT, "taken by the MQTT endpoint").await;
        if n >= QUEUE {
            let dropped = (n + 1 - QUEUE) as u64;
            poll_until(|| get(overflow) == dropped, WAIT, "the oldest dropped").await;
        }
    }
    let mut subscriber = bring_the_broker_back(&mut broker, &gate, &mqtt).await;
    expect_messages(&mut subscriber, &out_messages("out/many", EXTRA..QUEUE + EXTRA)).await;
    osc.int("/td/after", 2).await;
    expect_messages(&mut subscriber, &out_messages("out/after", 2..3)).await;

    let stats = mqtt.stats();
    let outputs = (1 + FEW + QUEUE + EXTRA + 2) as u64;
    wait_until(|| get(&route.sent) == outputs, WAIT, "every output counted").await;
    assert_eq!(get(&route.queue_full), 0);
    assert_eq!(get(&stats.offline_queue_overflow), EXTRA as u64);
    assert_eq!(get(&stats.publish_errors), 0);
    assert_eq!(get(&stats.connections), 3);
    assert!(!running.is_finished());
    running.stop().await;
}

/// A burst of more messages than the MQTT queue holds, sent while the broker
/// is away, is held like messages that come one by one: the oldest are
/// dropped and counted as overflow, and the newest `queue_size` arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_while_the_broker_is_down_keeps_the_newest_queue_size_messages() {
    const QUEUE: usize = 20;
    const EXTRA: usize = 30;
    let mut broker = Mosquitto::start().await;
    let gate = TcpGate::start(broker.port()).await;
    let td = OscCollector::bind().await;
    let nobody_listens = support::daemon::ClosedPort::new();
    let running = start_bridge(
        MQTT_RESTART,
        &[
            ("UNUSED", nobody_listens.port().to_string()),
            ("TD", td.addr().to_string()),
            ("GATE", gate.port().to_string()),
            ("QUEUE", QUEUE.to_string()),
        ],
    )
    .await;
    let mqtt = running.mqtt().expect("mqtt configured");
    mqtt_connected(&mqtt).await;
    let osc = OscSender::new(osc_in(&running)).await;
    let routes = running.routes();
    let route = &routes[0];

    take_the_broker_down(&mut broker, &gate, &mqtt).await;
    for n in 0..QUEUE + EXTRA {
        osc.int("/td/burst", n).await;
    }
    let outputs = (QUEUE + EXTRA) as u64;
    wait_until(|| get(&route.sent) + get(&route.queue_full) == outputs, WAIT, "the burst routed")
        .await;
    assert_eq!(
        get(&route.queue_full),
        0,
        "the MQTT endpoint refused the newest messages of the burst instead of dropping the oldest"
    );
    wait_until(
        || get(&mqtt.stats().offline_queue_overflow) == EXTRA as u64,
        WAIT,
        "the oldest dropped",
    )
    .await;
    let mut subscriber = bring_the_broker_back(&mut broker, &gate, &mqtt).await;
    expect_messages(&mut subscriber, &out_messages("out/burst", EXTRA..QUEUE + EXTRA)).await;
    osc.int("/td/after", 1).await;
    expect_messages(&mut subscriber, &out_messages("out/after", 1..2)).await;
    assert_eq!(get(&mqtt.stats().offline_queue_overflow), EXTRA as u64);
    running.stop().await;
}

// ---------------------------------------------------------------------------
// 3. The OSC target goes away
// ---------------------------------------------------------------------------

const OSC_TARGET: &str = r#"
[socketcluster]
url = "{SC}"
reconnect_delay_ms = 300

[cables]
channel = "show"
client_id = "bridge-1"

[osc]
listen = ["127.0.0.1:0"]
[osc.targets]
td = "{TD}"

[[route]]
name = "cables to td"
from = { cables_object = "in/*" }
to = [{ osc = "/in/*", numbers = "int32" }]

[[route]]
name = "td to cables"
from = { osc = "/td/*" }
to = [{ cables_object = "out/{1}" }]
"#;

/// A TouchDesigner that stops and starts again on the same port: what the
/// bridge sent meanwhile is gone (UDP), but its send socket keeps working,
/// so everything sent after the restart arrives, and it routes both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_osc_target_that_stops_and_starts_again_gets_every_later_message() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscCollector::bind().await;
    let td_addr = td.addr();
    let running =
        start_bridge(OSC_TARGET, &[("SC", server.url()), ("TD", td_addr.to_string())]).await;
    sc_connected(&running).await;
    wait_until(|| server.count_lines("SUBSCRIBE ") == 3, WAIT, "the cables subscriptions").await;
    let js = JsClient::interactive(server.port(), 2).await;
    let watcher = JsClient::subscribe(server.port(), &["show/objects"], &[]).await;
    let osc_stats = running.osc().expect("osc configured");
    let publish = |n: usize| {
        let js = &js;
        async move { js.send_line(&format!("pub show/objects {}", envelope("in/v", n))).await }
    };

    for n in 0..5 {
        publish(n).await;
    }
    assert_eq!(td.wait_for("/in/v", 5, WAIT).await, int_messages("/in/v", 0..5));

    // Nobody listens: each datagram draws an ICMP port unreachable, which an
    // unconnected UDP socket on Linux does not report; either way every one
    // is accounted for as sent or as a send error.
    td.close().await;
    for n in 5..10 {
        publish(n).await;
    }
    let stats = osc_stats.stats();
    wait_until(
        || get(&stats.messages_out) + get(&stats.send_errors) == 10,
        WAIT,
        "the bridge tried all ten",
    )
    .await;

    let td = OscCollector::bind_at(td_addr).await;
    for n in 10..15 {
        publish(n).await;
    }
    assert_eq!(
        td.wait_for("/in/v", 5, WAIT).await,
        int_messages("/in/v", 10..15),
        "every message after the restart, none from before"
    );
    wait_until(
        || get(&stats.messages_out) + get(&stats.send_errors) == 15,
        WAIT,
        "fifteen datagrams counted",
    )
    .await;
    // The router counts an output once the endpoint took it, which can be
    // just after the datagram went out.
    wait_until(|| get(&running.routes()[0].sent) == 15, WAIT, "fifteen outputs counted").await;

    // The other direction still routes.
    OscSender::new(osc_in(&running)).await.int("/td/still", 1).await;
    let line = watcher.next_line_matching(|l| l.contains("out/still"), WAIT).await;
    let message: Value = serde_json::from_str(&line["MSG ".len()..]).expect("JSON");
    assert_eq!(
        message,
        json!({"channel": "show/objects",
               "data": {"topic": "out/still", "clientId": "bridge-1", "payload": 1}})
    );
    assert!(!running.is_finished());
    running.stop().await;
}

// ---------------------------------------------------------------------------
// 4. A broker that never answers
// ---------------------------------------------------------------------------

const STALLED: &str = r#"
[socketcluster]
url = "{SC}"
reconnect_delay_ms = 300

[cables]
channel = "show"
client_id = "bridge-1"

[osc]
listen = ["127.0.0.1:0"]
[osc.targets]
td = "{TD}"

[mqtt]
url = "mqtt://127.0.0.1:{MQTT}"
client_id = "stalled-bridge"
reconnect_delay_ms = 100
queue_size = {QUEUE}
availability_topic = ""

[control]
# No link status on MQTT: every MQTT message here comes from a route.
status_topic = ""

[[route]]
name = "fan"
from = { cables_object = "fan/*" }
to = [{ osc = "/fan/*", numbers = "int32" }, { mqtt = "fan/+", qos = 1 }]
"#;

/// A broker that accepts the TCP connection and then never answers (no
/// CONNACK, no acks) does not hold up SocketCluster -> OSC: 1,000 cables
/// objects fanned out to OSC and MQTT all reach OSC in order, while the
/// MQTT side drops what does not fit and counts every drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_answers_does_not_stall_socketcluster_to_osc() {
    const COUNT: usize = 1000;
    const BATCH: usize = 100;
    const MQTT_QUEUE: usize = 10;
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscCollector::bind().await;
    let silent = SilentBroker::start().await;
    let running = start_bridge(
        STALLED,
        &[
            ("SC", server.url()),
            ("TD", td.addr().to_string()),
            ("MQTT", silent.port().to_string()),
            ("QUEUE", MQTT_QUEUE.to_string()),
        ],
    )
    .await;
    sc_connected(&running).await;
    wait_until(|| server.count_lines("SUBSCRIBE ") == 3, WAIT, "the cables subscriptions").await;
    wait_until(|| silent.accepted() >= 1, WAIT, "the bridge connected to the silent broker").await;
    let js = JsClient::interactive(server.port(), 2).await;

    // Paced by what arrives, so no datagram is lost in the receiver's
    // kernel buffer.
    for batch in 0..COUNT / BATCH {
        for n in batch * BATCH..(batch + 1) * BATCH {
            js.send_line(&format!("pub show/objects {}", envelope("fan/seq", n))).await;
        }
        td.wait_for("/fan/seq", (batch + 1) * BATCH, WAIT).await;
    }
    assert_eq!(td.with_prefix("/fan/"), int_messages("/fan/seq", 0..COUNT));

    let mqtt = running.mqtt().expect("mqtt configured");
    let mqtt_stats = mqtt.stats();
    let osc = running.osc().expect("osc configured");
    let routes = running.routes();
    let route = &routes[0];
    assert_ne!(*mqtt.link_state().borrow(), MqttLinkState::Connected);
    assert_eq!(get(&mqtt_stats.connections), 0);
    assert_eq!(get(&mqtt_stats.messages_out), 0);
    wait_until(|| get(&osc.stats().messages_out) == COUNT as u64, WAIT, "every datagram counted")
        .await;
    assert_eq!(get(&osc.stats().outbound_queue_full), 0);
    assert_eq!(get(&route.matched), COUNT as u64);
    // Each object makes two outputs, OSC first; the last MQTT one may still
    // be on its way when the last datagram arrives. The MQTT outputs the
    // router could not queue are `queue_full` on the route; of those it
    // queued, all but the newest `queue_size` overflow the offline queue.
    wait_until(
        || get(&route.sent) + get(&route.queue_full) == 2 * COUNT as u64,
        WAIT,
        "every output counted",
    )
    .await;
    // MQTT takes every message into its drop-oldest queue: nothing is
    // refused at the door, the overflow is all counted there.
    assert_eq!(get(&route.queue_full), 0);
    assert_eq!(get(&route.sent), 2 * COUNT as u64);
    let overflow = (COUNT - MQTT_QUEUE) as u64;
    wait_until(
        || get(&mqtt_stats.offline_queue_overflow) == overflow,
        WAIT,
        "the MQTT overflow counted",
    )
    .await;
    assert!(!running.is_finished());
    running.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Garbage everywhere
// ---------------------------------------------------------------------------

const GARBAGE: &str = r#"
[socketcluster]
url = "{SC}"
reconnect_delay_ms = 300

[cables]
channel = "show"
client_id = "bridge-1"

[osc]
listen = ["127.0.0.1:0"]
[osc.targets]
td = "{TD}"

[mqtt]
url = "{MQTT}"
client_id = "garbage-bridge"
max_packet_bytes = {MAX}
availability_topic = ""

[control]
# No link status on MQTT: every MQTT message here comes from a route.
status_topic = ""

[[route]]
name = "sc"
from = { cables_object = "good/*" }
to = [{ osc = "/sc/*", numbers = "int32" }]

[[route]]
name = "osc"
from = { osc = "/good/*" }
to = [{ osc = "/osc/*", numbers = "int32" }]

[[route]]
name = "mqtt"
from = { mqtt = "good/+" }
to = [{ osc = "/mqtt/{1}", numbers = "int32" }]
"#;

/// Garbage floods every input at once (random datagrams on the OSC port,
/// invalid frames from the SocketCluster server, payloads over
/// `max_packet_bytes` from MQTT) while good messages are interleaved: every
/// good message arrives, in order, and every bad input is counted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_input_is_counted_while_every_good_message_arrives() {
    const OSC_GARBAGE: usize = 2000;
    // Few enough datagrams per batch that the bridge's socket buffer holds
    // a whole batch even at 1,500 bytes each.
    const OSC_BATCH: usize = 20;
    const OSC_GOOD: usize = OSC_GARBAGE / OSC_BATCH;
    const SC_GARBAGE: usize = 1000;
    const SC_GOOD: usize = 100;
    const MQTT_GOOD: usize = 20;
    // One oversized payload before each good one.
    const MQTT_HUGE: usize = MQTT_GOOD;
    const MAX: usize = 2048;
    let mut scripted = ScriptedScServer::start(3).await;
    let broker = Mosquitto::start().await;
    let td = OscCollector::bind().await;
    let running = start_bridge(
        GARBAGE,
        &[
            ("SC", scripted.url()),
            ("TD", td.addr().to_string()),
            ("MQTT", broker.url()),
            ("MAX", MAX.to_string()),
        ],
    )
    .await;
    sc_connected(&running).await;
    let mut channels = scripted.subscribed(WAIT).await;
    channels.sort();
    assert_eq!(channels, ["show/control", "show/objects", "show/triggers"]);
    let mqtt = running.mqtt().expect("mqtt configured");
    mqtt_connected(&mqtt).await;
    let osc = running.osc().expect("osc configured");
    let mut rng = XorShift::new(0x5eed_f00d);

    // SocketCluster: ten garbage frames before each good publish, sent a
    // block at a time while the other floods run.
    const PER_GOOD: usize = SC_GARBAGE / SC_GOOD;
    let mut frames = Vec::with_capacity(SC_GARBAGE + SC_GOOD);
    for n in 0..SC_GOOD {
        for g in 0..PER_GOOD {
            frames.push(sc_garbage(&mut rng, n * PER_GOOD + g));
        }
        let good = json!({"event": "#publish", "data": {"channel": "show/objects",
            "data": {"topic": format!("good/{n}"), "clientId": "scripted", "payload": n}}});
        frames.push(good.to_string());
    }
    scripted.send(frames, PER_GOOD + 1);

    let osc_flood = async {
        let sender = OscSender::new(osc.listen_addrs()[0]).await;
        for batch in 0..OSC_GOOD {
            for _ in 0..OSC_BATCH {
                sender.bytes(&osc_garbage(&mut rng, 1500)).await;
            }
            sender.int(&format!("/good/{batch}"), batch).await;
            let taken = ((batch + 1) * (OSC_BATCH + 1)) as u64;
            poll_until(|| get(&osc.stats().packets_in) == taken, WAIT, "the bridge read the batch")
                .await;
        }
    };
    let mqtt_flood = async {
        for n in 0..MQTT_GOOD {
            mosquitto::publish(broker.port(), "good/huge", vec![b'x'; 2 * MAX], 1, false).await;
            mosquitto::publish(broker.port(), &format!("good/{n}"), n.to_string(), 1, false).await;
        }
    };
    tokio::join!(osc_flood, mqtt_flood);

    // Each path's last message is a good one, so once it is in, every
    // input before it has been judged.
    let by_index = |prefix: &str, count: usize| -> Vec<OscMessage> {
        (0..count).flat_map(|n| int_messages(&format!("{prefix}{n}"), [n])).collect()
    };
    assert_eq!(td.wait_for("/sc/", SC_GOOD, WAIT).await, by_index("/sc/", SC_GOOD));
    assert_eq!(td.wait_for("/osc/", OSC_GOOD, WAIT).await, by_index("/osc/", OSC_GOOD));
    assert_eq!(td.wait_for("/mqtt/", MQTT_GOOD, WAIT).await, by_index("/mqtt/", MQTT_GOOD));

    let sc = running.sc();
    assert_eq!(get(&osc.stats().decode_errors), OSC_GARBAGE as u64);
    assert_eq!(get(&osc.stats().messages_in), OSC_GOOD as u64);
    assert_eq!(get(&sc.stats().malformed_frames), SC_GARBAGE as u64);
    assert_eq!(get(&sc.stats().publishes_in), SC_GOOD as u64);
    assert_eq!(get(&sc.stats().connections), 1, "the garbage did not cost the connection");
    assert_eq!(get(&mqtt.stats().oversized_in), MQTT_HUGE as u64);
    assert_eq!(get(&mqtt.stats().messages_in), MQTT_GOOD as u64);
    assert_eq!(get(&mqtt.stats().connections), 1);
    assert_eq!(get(&running.stats.malformed_envelopes), 0);
    assert!(!scripted.is_finished(), "the scripted server still holds the connection");

    // Absence: nothing beyond the good messages arrives. A bounded quiet
    // window is the only way to observe that nothing more comes.
    sleep(Duration::from_millis(200)).await;
    assert_eq!(td.messages().len(), SC_GOOD + OSC_GOOD + MQTT_GOOD);
    running.stop().await;
}
