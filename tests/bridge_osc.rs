//! The whole bridge between a real socketcluster-server (with real JS
//! cables-style clients) and real UDP sockets playing TouchDesigner.

mod support;

use std::time::Duration;

use rosc::{OscBundle, OscMessage, OscPacket, OscTime, OscType};
use scbridge::bridge::{self, Running};
use scbridge::config::Config;
use scbridge::stats::get;
use serde_json::{Value, json};
use support::sc_peer::{JsClient, ScServer, ScServerOptions, wait_until};
use support::udp::{OscReceiver, send_bytes, send_osc, send_packet};

const WAIT: Duration = Duration::from_secs(10);

/// Starts the bridge from TOML, with `{SC}` and `{TD}` filled in.
async fn start_bridge(server: &ScServer, td: &OscReceiver, toml: &str) -> Running {
    let toml = toml.replace("{SC}", &server.url()).replace("{TD}", &td.addr().to_string());
    let config = Config::from_toml(&toml, "test.toml").expect("valid test config");
    let running = bridge::start(config).await.expect("bridge starts");
    let mut link = running.sc().link_state();
    tokio::time::timeout(WAIT, link.wait_for(|s| s.is_connected()))
        .await
        .expect("connected")
        .expect("alive");
    running
}

/// A real server, a TouchDesigner receiver, and the bridge on [`BASE`] plus
/// `routes`, connected.
async fn bridge_with(routes: &str) -> (ScServer, OscReceiver, Running) {
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscReceiver::bind().await;
    let running = start_bridge(&server, &td, &format!("{BASE}{routes}")).await;
    (server, td, running)
}

/// Waits until the server saw `count` subscribes in all (the bridge's own).
async fn subscribed(server: &ScServer, count: usize) {
    wait_until(|| server.count_lines("SUBSCRIBE ") >= count, WAIT, "the bridge's subscriptions")
        .await;
}

fn osc_port(running: &Running) -> std::net::SocketAddr {
    running.osc().expect("osc configured").listen_addrs()[0]
}

const BASE: &str = r#"
[socketcluster]
url = "{SC}"
reconnect_delay_ms = 200

[cables]
channel = "show"
client_id = "bridge-1"
extra = { token = "abc" }

[osc]
listen = ["127.0.0.1:0"]
[osc.targets]
td = "{TD}"
"#;

/// A cables object published by a JS client arrives at TouchDesigner with
/// the captured name and float32 arguments; a named trigger arrives as a
/// message with no arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cables_object_and_a_named_trigger_reach_touchdesigner() {
    let (server, td, running) = bridge_with(
        r#"
[[route]]
name = "sensors"
from = { cables_object = "sensors/*" }
to = [{ osc = "/td/sensors/*" }]

[[route]]
name = "bang"
from = { cables_trigger = "bang" }
to = [{ osc = "/td/bang" }]
"#,
    )
    .await;
    subscribed(&server, 3).await;

    let envelope = r#"{"topic":"sensors/temp","clientId":"js-1","payload":{"v":0.5,"on":true}}"#;
    let mut publisher =
        JsClient::publish(server.port(), "show/objects", Some(envelope), 1, false).await;
    assert_eq!(publisher.wait_exit().await, 0);
    let mut received = vec![td.next(WAIT).await, td.next(WAIT).await];
    received.sort_by(|a, b| a.addr.cmp(&b.addr));
    assert_eq!(
        received,
        vec![
            OscMessage { addr: "/td/sensors/temp/on".into(), args: vec![OscType::Float(1.0)] },
            OscMessage { addr: "/td/sensors/temp/v".into(), args: vec![OscType::Float(0.5)] },
        ]
    );

    let trigger = r#"{"topic":"bang","clientId":"js-1","payload":"bang"}"#;
    let mut publisher =
        JsClient::publish(server.port(), "show/triggers", Some(trigger), 1, false).await;
    assert_eq!(publisher.wait_exit().await, 0);
    assert_eq!(td.next(WAIT).await, OscMessage { addr: "/td/bang".into(), args: vec![] });
    // A route counts an output as sent once the endpoint took it, which can
    // be after the datagram already arrived.
    let routes = running.routes();
    wait_until(
        || get(&routes[0].sent) == 1 && get(&routes[1].sent) == 1,
        WAIT,
        "each route counts one output sent",
    )
    .await;
    running.stop().await;
}

/// An OSC message, and each message of a bundle in order, reach a JS cables
/// client as envelopes with the topic, our client id, the payload and the
/// extra server data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osc_messages_and_bundles_reach_a_cables_client_as_envelopes() {
    let (server, _td, running) = bridge_with(
        r#"
[[route]]
name = "faders"
from = { osc = "/td/fader/*" }
to = [{ cables_object = "faders/{1}" }]

[[route]]
name = "go"
from = { osc = "/td/go" }
to = [{ cables_trigger = "go" }]
"#,
    )
    .await;
    let cables = JsClient::subscribe(server.port(), &["show/objects", "show/triggers"], &[]).await;

    send_osc(osc_port(&running), "/td/fader/1", vec![OscType::Float(0.25)]).await;
    cables.next_line_with_prefix("MSG ", WAIT).await;
    let bundle = OscPacket::Bundle(OscBundle {
        timetag: OscTime { seconds: 0, fractional: 1 },
        content: vec![
            OscPacket::Message(OscMessage {
                addr: "/td/fader/2".into(),
                args: vec![OscType::Int(2), OscType::String("x".into())],
            }),
            OscPacket::Message(OscMessage { addr: "/td/fader/3".into(), args: vec![] }),
            OscPacket::Message(OscMessage {
                addr: "/td/go".into(),
                args: vec![OscType::Float(1.0)],
            }),
        ],
    });
    send_packet(osc_port(&running), &bundle).await;
    wait_until(|| cables.messages().len() == 4, WAIT, "four envelopes").await;

    let envelope = |topic: &str, payload: Value| json!({"token": "abc", "topic": topic, "clientId": "bridge-1", "payload": payload});
    // Order holds per channel; the JS client may interleave two channels.
    let on = |channel: &str| -> Vec<Value> {
        cables
            .messages()
            .into_iter()
            .filter(|m| m["channel"] == channel)
            .map(|m| m["data"].clone())
            .collect()
    };
    assert_eq!(
        on("show/objects"),
        vec![
            envelope("faders/1", json!(0.25)),
            envelope("faders/2", json!([2, "x"])),
            envelope("faders/3", Value::Null),
        ]
    );
    assert_eq!(on("show/triggers"), vec![envelope("go", json!("go"))]);
    running.stop().await;
}

/// A TouchDesigner button sends 1 when pressed and 0 when let go: each
/// press is one cables trigger. A route with `trigger_on = "any"` makes a
/// trigger of every message, a 0 included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_button_press_is_one_trigger_and_its_release_none() {
    let (server, _td, running) = bridge_with(
        r#"
[[route]]
name = "go"
from = { osc = "/td/go" }
to = [{ cables_trigger = "go" }]

[[route]]
name = "raw"
from = { osc = "/td/raw" }
to = [{ cables_trigger = "raw" }]
trigger_on = "any"
"#,
    )
    .await;
    let cables = JsClient::subscribe(server.port(), &["show/triggers"], &[]).await;
    for value in [1.0, 0.0, 1.0, 0.0] {
        send_osc(osc_port(&running), "/td/go", vec![OscType::Float(value)]).await;
    }
    send_osc(osc_port(&running), "/td/raw", vec![OscType::Float(0.0)]).await;
    // The last one sent comes last: once it is in, every press is.
    wait_until(|| cables.messages().len() == 3, WAIT, "three triggers").await;
    let topics: Vec<Value> = cables.messages().iter().map(|m| m["data"]["topic"].clone()).collect();
    assert_eq!(topics, vec![json!("go"), json!("go"), json!("raw")]);
    let routes = running.routes();
    assert_eq!((get(&routes[0].matched), get(&routes[0].releases)), (4, 2));
    assert_eq!(get(&routes[1].releases), 0);
    running.stop().await;
}

/// A route counts a message it took once, however many of its
/// destinations went out or were skipped, and whatever other routes took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_counts_each_message_it_matched_once() {
    let (_server, td, running) = bridge_with(
        r#"
[[route]]
name = "both"
from = { osc = "/a" }
to = [{ osc = "/a" }, { osc = "/b" }]

[[route]]
name = "loop only"
from = { osc = "/a" }
to = [{ osc = "/a" }]
"#,
    )
    .await;
    send_osc(osc_port(&running), "/a", vec![OscType::Float(1.0)]).await;
    assert_eq!(td.next(WAIT).await.addr, "/b");
    let routes = running.routes();
    let counts = |r: usize| (get(&routes[r].matched), get(&routes[r].loops), get(&routes[r].sent));
    assert_eq!(counts(0), (1, 1, 1), "both");
    assert_eq!(counts(1), (1, 1, 0), "loop only");
    running.stop().await;
}

/// Our own envelopes come back from the server; they are ignored unless
/// `receive_own` is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_own_echo_is_ignored_unless_receive_own_is_on() {
    for receive_own in [false, true] {
        let server = ScServer::start(ScServerOptions::new()).await;
        let td = OscReceiver::bind().await;
        let config = format!(
            "{}{}",
            BASE.replace(
                "client_id = \"bridge-1\"",
                &format!("client_id = \"bridge-1\"\nreceive_own = {receive_own}")
            ),
            r#"
[[route]]
name = "in"
from = { osc = "/in/*" }
to = [{ cables_object = "loop/*" }]

[[route]]
name = "out"
from = { cables_object = "loop/*" }
to = [{ osc = "/out/*" }]
"#
        );
        let running = start_bridge(&server, &td, &config).await;
        subscribed(&server, 3).await;

        send_osc(osc_port(&running), "/in/a", vec![OscType::Float(3.0)]).await;
        if receive_own {
            assert_eq!(
                td.next(WAIT).await,
                OscMessage { addr: "/out/a".into(), args: vec![OscType::Float(3.0)] }
            );
        } else {
            wait_until(|| get(&running.stats.own_echoes) == 1, WAIT, "the echo counted").await;
            assert_eq!(td.try_next(Duration::from_millis(300)).await, None);
        }
        running.stop().await;
    }
}

/// With Allow Multiple Senders off, another client announcing that it sends
/// silences the bridge (counted as not allowed), and it sends again when
/// that client steps back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sender_silences_the_bridge_when_multiple_senders_are_off() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscReceiver::bind().await;
    let config = format!(
        "{}{}",
        BASE.replace(
            "client_id = \"bridge-1\"",
            "client_id = \"bridge-1\"\nallow_multiple_senders = false"
        ),
        r#"
[[route]]
name = "in"
from = { osc = "/in" }
to = [{ cables_object = "value" }]
"#
    );
    let running = start_bridge(&server, &td, &config).await;
    subscribed(&server, 3).await;
    let cables = JsClient::interactive(server.port(), 2).await;
    cables.send_line("sub show/objects").await;
    cables.next_line_with_prefix("SUBSCRIBED ", WAIT).await;

    let take_over = r#"{"topic":"cablescontrol","clientId":"rival","payload":{"allowSend":true}}"#;
    cables.send_line(&format!("ipub show/control {take_over}")).await;
    cables.next_line_with_prefix("PUBACK", WAIT).await;
    wait_until(|| get(&running.stats.control_messages) >= 1, WAIT, "the control message").await;
    send_osc(osc_port(&running), "/in", vec![OscType::Float(1.0)]).await;
    wait_until(|| get(&running.routes()[0].not_allowed) == 1, WAIT, "withheld").await;

    let step_back = r#"{"topic":"cablescontrol","clientId":"rival","payload":{"allowSend":false}}"#;
    cables.send_line(&format!("ipub show/control {step_back}")).await;
    cables.next_line_with_prefix("PUBACK", WAIT).await;
    wait_until(|| get(&running.stats.control_messages) >= 2, WAIT, "the second control message")
        .await;
    send_osc(osc_port(&running), "/in", vec![OscType::Float(2.0)]).await;
    cables.next_line_with_prefix("MSG ", WAIT).await;
    assert_eq!(
        cables.messages(),
        vec![
            json!({"channel": "show/objects", "data": {"token": "abc", "topic": "value", "clientId": "bridge-1", "payload": 2}})
        ]
    );
    wait_until(|| get(&running.routes()[0].sent) == 1, WAIT, "the route counts one output sent")
        .await;
    running.stop().await;
}

/// What the bridge announced on the cables control channel, in order.
fn announced(server: &ScServer, socket_id: &str) -> Vec<Value> {
    let prefix = format!("PUBLISH {socket_id} show/control ");
    server
        .lines_so_far()
        .iter()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|data| serde_json::from_str::<Value>(data).expect("JSON in a PUBLISH line"))
        .map(|envelope| envelope["payload"].clone())
        .collect()
}

/// A bridge that only receives from cables announces that it does not
/// send, so a patch with Allow Multiple Senders off keeps sending to it. A
/// reload that adds a route to cables announces that it now sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_announces_that_it_sends_only_when_a_route_sends_to_cables() {
    let receive = r#"
[[route]]
name = "in"
from = { cables_object = "in/*" }
to = [{ osc = "/in/*" }]
"#;
    let send = r#"
[[route]]
name = "out"
from = { osc = "/out" }
to = [{ cables_object = "out" }]
"#;
    let (server, td, running) = bridge_with(receive).await;
    let socket_id = server.socket_ids().await.pop().expect("the bridge's socket");
    wait_until(|| !announced(&server, &socket_id).is_empty(), WAIT, "the announcement").await;
    assert_eq!(announced(&server, &socket_id), vec![json!({"allowSend": false})]);

    let toml = format!("{BASE}{receive}{send}")
        .replace("{SC}", &server.url())
        .replace("{TD}", &td.addr().to_string());
    let report = running.reload(Config::from_toml(&toml, "test.toml").expect("valid")).await;
    assert!(report.failed.is_empty(), "{report:?}");
    wait_until(|| announced(&server, &socket_id).len() == 2, WAIT, "the new announcement").await;
    assert_eq!(
        announced(&server, &socket_id),
        vec![json!({"allowSend": false}), json!({"allowSend": true})]
    );

    // A reload that changes nothing about sending announces nothing.
    let report = running.reload(Config::from_toml(&toml, "test.toml").expect("valid")).await;
    assert!(report.failed.is_empty(), "{report:?}");
    send_osc(osc_port(&running), "/out", vec![OscType::Int(1)]).await;
    server
        .next_line_matching(|l| l.starts_with(&format!("PUBLISH {socket_id} show/objects ")), WAIT)
        .await;
    assert_eq!(announced(&server, &socket_id).len(), 2);
    running.stop().await;
}

/// Garbage on the OSC port and envelopes missing keys are counted and
/// skipped; the good message after them still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_osc_packets_and_bad_envelopes_are_counted_and_good_traffic_flows() {
    let (server, td, running) = bridge_with(
        r#"
[[route]]
name = "objects"
from = { cables_object = "**" }
to = [{ osc = "/td/{1}" }]

[[route]]
name = "osc"
from = { osc = "/x" }
to = [{ cables_object = "from-osc" }]
"#,
    )
    .await;
    subscribed(&server, 3).await;
    let osc = running.osc().expect("osc");

    send_bytes(osc_port(&running), b"not osc at all").await;
    send_bytes(osc_port(&running), &[0xff; 7]).await;
    for bad in
        [r#""just a string""#, r#"{"topic":"a","payload":1}"#, r#"{"clientId":"js","payload":1}"#]
    {
        let mut publisher =
            JsClient::publish(server.port(), "show/objects", Some(bad), 1, false).await;
        assert_eq!(publisher.wait_exit().await, 0);
    }
    let good = r#"{"topic":"ok","clientId":"js","payload":7}"#;
    let mut publisher =
        JsClient::publish(server.port(), "show/objects", Some(good), 1, false).await;
    assert_eq!(publisher.wait_exit().await, 0);

    assert_eq!(
        td.next(WAIT).await,
        OscMessage { addr: "/td/ok".into(), args: vec![OscType::Float(7.0)] }
    );
    wait_until(|| get(&osc.stats().decode_errors) == 2, WAIT, "two bad OSC packets").await;
    assert_eq!(get(&running.stats.malformed_envelopes), 3);
    running.stop().await;
}

/// One source fans out to several destinations, and a route pair that maps
/// A to B and B to A moves a message exactly once each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_and_a_two_way_pair_move_each_message_once() {
    let (server, td, running) = bridge_with(
        r#"
[[route]]
name = "to td"
from = { cables_object = "mix/*" }
to = [{ osc = "/mix/*" }, { osc = "/mirror/*", numbers = "int32" }]

[[route]]
name = "from td"
from = { osc = "/mix/*" }
to = [{ cables_object = "mix/*" }]
"#,
    )
    .await;
    subscribed(&server, 3).await;
    let cables = JsClient::subscribe(server.port(), &["show/objects"], &[]).await;

    let envelope = r#"{"topic":"mix/level","clientId":"js-1","payload":0.75}"#;
    let mut publisher =
        JsClient::publish(server.port(), "show/objects", Some(envelope), 1, false).await;
    assert_eq!(publisher.wait_exit().await, 0);
    let mut got = vec![td.next(WAIT).await, td.next(WAIT).await];
    got.sort_by(|a, b| a.addr.cmp(&b.addr));
    assert_eq!(
        got,
        vec![
            OscMessage { addr: "/mirror/level".into(), args: vec![OscType::Int(1)] },
            OscMessage { addr: "/mix/level".into(), args: vec![OscType::Float(0.75)] },
        ]
    );

    send_osc(osc_port(&running), "/mix/level", vec![OscType::Float(0.5)]).await;
    wait_until(|| cables.messages().len() == 2, WAIT, "the bridge's envelope").await;
    // The bridge's own envelope comes back from the server but goes no further.
    wait_until(|| get(&running.stats.own_echoes) == 1, WAIT, "the echo dropped").await;
    assert_eq!(td.try_next(Duration::from_millis(300)).await, None);
    assert_eq!(get(&running.routes()[0].matched), 1);
    assert_eq!(get(&running.routes()[1].matched), 1);
    running.stop().await;
}

/// A plain SocketCluster channel and a custom server event are sources too,
/// and a route can emit a named event to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_channels_and_server_events_route_both_ways() {
    let (server, td, running) = bridge_with(
        r#"
[[route]]
name = "raw in"
from = { sc_channel = "telemetry" }
to = [{ osc = "/telemetry" }]

[[route]]
name = "event in"
from = { sc_event = "cue" }
to = [{ osc = "/cue" }]

[[route]]
name = "event out"
from = { osc = "/note" }
to = [{ sc_event = "note" }, { sc_channel = "notes" }]
"#,
    )
    .await;
    subscribed(&server, 4).await;
    let socket_id = server.socket_ids().await.pop().expect("the bridge's socket");

    server.publish("telemetry", &json!([1, 2])).await;
    assert_eq!(
        td.next(WAIT).await,
        OscMessage {
            addr: "/telemetry".into(),
            args: vec![OscType::Float(1.0), OscType::Float(2.0)]
        }
    );
    server.command(&format!(r#"transmit {socket_id} cue {{"n":3}}"#)).await;
    assert_eq!(
        td.next(WAIT).await,
        OscMessage { addr: "/cue/n".into(), args: vec![OscType::Float(3.0)] }
    );

    send_osc(osc_port(&running), "/note", vec![OscType::String("hi".into())]).await;
    server.next_line_matching(|l| l == format!(r#"TRANSMIT {socket_id} note "hi""#), WAIT).await;
    server.next_line_matching(|l| l == format!(r#"PUBLISH {socket_id} notes "hi""#), WAIT).await;
    running.stop().await;
}

/// The server re-serialises every publish in JavaScript, so our `1.0` on a
/// plain channel comes back as `1`; it is still known as our own echo and
/// goes no further, so an OSC ↔ channel pair does not loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_float_on_a_plain_channel_is_still_known_as_our_echo() {
    let (server, td, running) = bridge_with(
        r#"
[[route]]
name = "from td"
from = { osc = "/fader" }
to = [{ sc_channel = "fader" }]

[[route]]
name = "to td"
from = { sc_channel = "fader" }
to = [{ osc = "/fader" }]
"#,
    )
    .await;
    subscribed(&server, 4).await;
    let socket_id = server.socket_ids().await.pop().expect("the bridge's socket");

    send_osc(osc_port(&running), "/fader", vec![OscType::Float(1.0)]).await;
    server.next_line_matching(|l| l == format!("PUBLISH {socket_id} fader 1"), WAIT).await;
    wait_until(|| get(&running.stats.own_echoes) == 1, WAIT, "the echo recognised").await;
    assert_eq!(td.try_next(Duration::from_millis(300)).await, None);
    assert_eq!(get(&running.routes()[1].matched), 0);

    // Another client's value on the channel still reaches TouchDesigner.
    server.publish("fader", &json!(1)).await;
    assert_eq!(
        td.next(WAIT).await,
        OscMessage { addr: "/fader".into(), args: vec![OscType::Float(1.0)] }
    );
    running.stop().await;
}

/// A route from the OSC address `/fader` to the SocketCluster channel
/// `fader`, at most `per_second` values a second.
fn fader_route(per_second: f64) -> String {
    format!(
        "\n[[route]]\nname = \"fader\"\nfrom = {{ osc = \"/fader\" }}\nto = [{{ sc_channel = \"fader\" }}]\nmax_rate = {per_second}\n"
    )
}

/// Sends `/fader 0` … `/fader {count - 1}` to the bridge's OSC port.
async fn move_fader(running: &Running, count: i32) {
    for n in 0..count {
        send_osc(osc_port(running), "/fader", vec![OscType::Int(n)]).await;
    }
}

/// `max_rate` coalesces a fast value stream per name: fewer messages reach
/// the SocketCluster server, every output is either sent or counted as
/// replaced, and the latest value always arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_route_coalesces_and_always_delivers_the_latest_value() {
    let (server, _td, running) = bridge_with(&fader_route(20.0)).await;
    let socket_id = server.socket_ids().await.pop().expect("the bridge's socket");
    move_fader(&running, 50).await;
    server.next_line_matching(|l| l == format!("PUBLISH {socket_id} fader 49"), WAIT).await;
    let route = &running.routes()[0];
    wait_until(|| get(&route.matched) == 50, WAIT, "all fifty routed").await;
    let (sent, coalesced) = (get(&route.sent), get(&route.coalesced));
    assert_eq!(sent + coalesced, 50, "every output is sent or counted as replaced");
    assert!(sent < 50, "the stream was not coalesced: {sent} sent");
    let prefix = format!("PUBLISH {socket_id} fader ");
    wait_until(|| server.count_lines(&prefix) as u64 == sent, WAIT, "every sent value").await;
    let values: Vec<i64> = server
        .lines_so_far()
        .iter()
        .filter_map(|line| line.strip_prefix(&prefix)?.parse().ok())
        .collect();
    assert!(values.is_sorted(), "never an older value after a newer one: {values:?}");
    assert_eq!(values.last(), Some(&49));
    running.stop().await;
}

/// At the stop, a value waiting for its `max_rate` turn is still sent, and
/// an output waiting for its `delay_ms` is dropped and counted as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_stop_waiting_values_are_sent_and_delayed_outputs_are_counted() {
    let delayed = r#"
[[route]]
name = "later"
from = { osc = "/later" }
to = [{ sc_channel = "later" }]
delay_ms = 60000
"#;
    // One value per 100 s: the second value's turn cannot come during the test.
    let (server, _td, running) = bridge_with(&format!("{}{delayed}", fader_route(0.01))).await;
    let socket_id = server.socket_ids().await.pop().expect("the bridge's socket");
    move_fader(&running, 2).await;
    send_osc(osc_port(&running), "/later", vec![OscType::Int(7)]).await;
    server.next_line_matching(|l| l == format!("PUBLISH {socket_id} fader 0"), WAIT).await;
    let routes = running.routes();
    // `sent` is counted once queued, which can be a moment after the server
    // has the publish.
    wait_until(
        || get(&routes[0].matched) == 2 && get(&routes[1].matched) == 1 && get(&routes[0].sent) > 0,
        WAIT,
        "all three routed",
    )
    .await;
    assert_eq!(get(&routes[0].sent), 1, "the second value waits for its turn");

    running.stop().await;
    server.next_line_matching(|l| l == format!("PUBLISH {socket_id} fader 1"), WAIT).await;
    assert_eq!(get(&routes[0].sent), 2);
    assert_eq!(get(&routes[1].sent), 0);
    assert_eq!(get(&routes[1].shutdown_dropped), 1, "the delayed output is counted");
    assert_eq!(server.count_lines(&format!("PUBLISH {socket_id} later ")), 0);
}
