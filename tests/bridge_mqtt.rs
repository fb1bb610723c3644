//! The whole bridge between a real socketcluster-server, a real Mosquitto
//! broker and real UDP sockets: the three user stories end to end.

mod support;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rosc::{OscMessage, OscType};
use scbridge::bridge::{self, ReloadReport, Running};
use scbridge::config::Config;
use scbridge::stats::get;
use serde_json::json;
use support::mosquitto::{self, Mosquitto};
use support::sc_peer::{JsClient, ScServer, ScServerOptions, wait_until};
use support::udp::{OscReceiver, send_osc};

const WAIT: Duration = Duration::from_secs(10);

/// A state route: OSC `/level/*` to MQTT `levels/+`.
const LEVELS: &str = r#"
[[route]]
name = "levels"
from = { osc = "/level/*" }
to = [{ mqtt = "levels/+" }]
"#;

/// Runtime control over MQTT, under `scbridge/control`.
const CONTROL: &str = r#"
[control]
mqtt = "scbridge/control"
"#;

struct Peers {
    server: ScServer,
    broker: Mosquitto,
    td: OscReceiver,
}

impl Peers {
    async fn start() -> Peers {
        Peers {
            server: ScServer::start(ScServerOptions::new()).await,
            broker: Mosquitto::start().await,
            td: OscReceiver::bind().await,
        }
    }

    fn config(&self, routes: &str) -> String {
        self.config_over("3.1.1", routes)
    }

    /// The config with the MQTT link on `protocol` ("3.1.1" or "5").
    fn config_over(&self, protocol: &str, routes: &str) -> String {
        format!(
            r#"
[socketcluster]
url = "{sc}"
reconnect_delay_ms = 200

[cables]
channel = "show"
client_id = "bridge-1"

[osc]
listen = ["127.0.0.1:0"]
[osc.targets]
td = "{td}"

[mqtt]
url = "{mqtt}"
client_id = "bridge-test"
keepalive_secs = {keepalive}
protocol = "{protocol}"
reconnect_delay_ms = 200
reconnect_max_delay_ms = 400
availability_topic = "scbridge/bridge-test/availability"
{routes}"#,
            sc = self.server.url(),
            td = self.td.addr(),
            mqtt = self.broker.url(),
            // MQTT 5 allows no less (rumqttc's rule).
            keepalive = if protocol == "5" { 5 } else { 1 },
        )
    }

    /// Starts the bridge in-process and waits for both links.
    async fn bridge(&self, routes: &str) -> Running {
        self.bridge_over("3.1.1", routes).await
    }

    async fn bridge_over(&self, protocol: &str, routes: &str) -> Running {
        let config = Config::from_toml(&self.config_over(protocol, routes), "test.toml")
            .expect("valid test config");
        let running = bridge::start(config).await.expect("bridge starts");
        let mut link = running.sc().link_state();
        tokio::time::timeout(WAIT, link.wait_for(|s| s.is_connected()))
            .await
            .expect("sc up")
            .expect("alive");
        let mut mqtt = running.mqtt().expect("mqtt").link_state();
        tokio::time::timeout(
            WAIT,
            mqtt.wait_for(|s| *s == scbridge::mqtt::MqttLinkState::Connected),
        )
        .await
        .expect("mqtt up")
        .expect("alive");
        wait_until(|| self.server.count_lines("SUBSCRIBE ") >= 3, WAIT, "cables subscriptions")
            .await;
        running
    }
}

fn osc_in(running: &Running) -> std::net::SocketAddr {
    running.osc().expect("osc").listen_addrs()[0]
}

/// Story 1: a cables patch feeds TouchDesigner and the broker at once: an
/// object arrives as float32 OSC and as retained JSON; a named trigger as
/// an OSC message without arguments and a non-retained MQTT event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cables_object_and_trigger_reach_osc_and_mqtt_in_one_run() {
    let peers = Peers::start().await;
    let running = peers
        .bridge(
            r#"
[[route]]
from = { cables_object = "sensors/*" }
to = [{ osc = "/td/sensors/*" }, { mqtt = "home/sensors/+", retain = true, qos = 1 }]

[[route]]
from = { cables_trigger = "bang" }
to = [{ osc = "/td/bang" }, { mqtt = "home/events/bang" }]
"#,
        )
        .await;
    let mut states = mosquitto::subscribe(peers.broker.port(), "home/sensors/#").await;
    let mut events = mosquitto::subscribe(peers.broker.port(), "home/events/#").await;

    let envelope = r#"{"topic":"sensors/temp","clientId":"js-1","payload":[21.5,40]}"#;
    let mut publisher =
        JsClient::publish(peers.server.port(), "show/objects", Some(envelope), 1, false).await;
    assert_eq!(publisher.wait_exit().await, 0);
    assert_eq!(
        peers.td.next(WAIT).await,
        OscMessage {
            addr: "/td/sensors/temp".into(),
            args: vec![OscType::Float(21.5), OscType::Float(40.0)]
        }
    );
    let state = states.next_message(WAIT).await;
    assert_eq!(
        (state.topic.as_str(), state.text().as_str(), state.retain),
        ("home/sensors/temp", "[21.5,40]", true)
    );

    let trigger = r#"{"topic":"bang","clientId":"js-1","payload":"bang"}"#;
    let mut publisher =
        JsClient::publish(peers.server.port(), "show/triggers", Some(trigger), 1, false).await;
    assert_eq!(publisher.wait_exit().await, 0);
    assert_eq!(peers.td.next(WAIT).await, OscMessage { addr: "/td/bang".into(), args: vec![] });
    let event = events.next_message(WAIT).await;
    assert_eq!(
        (event.topic.as_str(), event.text().as_str(), event.retain),
        ("home/events/bang", "bang", false)
    );
    running.stop().await;
}

/// Story 3: an installation's MQTT topics reach cables clients as envelopes
/// and TouchDesigner with captures; JSON payloads stay JSON, others become
/// strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_publishes_reach_cables_and_osc_with_captures() {
    let peers = Peers::start().await;
    let running = peers
        .bridge(
            r#"
[[route]]
from = { mqtt = "home/+/temp" }
to = [{ cables_object = "rooms/{1}/temp" }, { osc = "/td/{1}/temp" }]
"#,
        )
        .await;
    let cables = JsClient::subscribe(peers.server.port(), &["show/objects"], &[]).await;

    mosquitto::publish(peers.broker.port(), "home/kitchen/temp", r#"{"c":21.5}"#, 1, false).await;
    mosquitto::publish(peers.broker.port(), "home/hall/temp", "warm", 0, false).await;
    wait_until(|| cables.messages().len() == 2, WAIT, "two envelopes").await;
    assert_eq!(
        cables.messages(),
        vec![
            json!({"channel": "show/objects", "data": {"topic": "rooms/kitchen/temp", "clientId": "bridge-1", "payload": {"c": 21.5}}}),
            json!({"channel": "show/objects", "data": {"topic": "rooms/hall/temp", "clientId": "bridge-1", "payload": "warm"}}),
        ]
    );
    assert_eq!(
        peers.td.next(WAIT).await,
        OscMessage { addr: "/td/kitchen/temp/c".into(), args: vec![OscType::Float(21.5)] }
    );
    assert_eq!(
        peers.td.next(WAIT).await,
        OscMessage { addr: "/td/hall/temp".into(), args: vec![OscType::String("warm".into())] }
    );
    running.stop().await;
}

/// Story 2: TouchDesigner back to the broker, and a route pair between
/// cables and MQTT moves one message exactly once each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_way_cables_mqtt_pair_moves_each_message_exactly_once() {
    let peers = Peers::start().await;
    let running = peers
        .bridge(
            r#"
[[route]]
name = "cables to mqtt"
from = { cables_object = "lights/*" }
to = [{ mqtt = "house/lights/+" }]

[[route]]
name = "mqtt to cables"
from = { mqtt = "house/lights/+" }
to = [{ cables_object = "lights/{1}" }]

[[route]]
name = "td to mqtt"
from = { osc = "/td/out/*" }
to = [{ mqtt = "house/td/*" }]
"#,
        )
        .await;
    let mut lights = mosquitto::subscribe(peers.broker.port(), "house/#").await;
    let cables = JsClient::subscribe(peers.server.port(), &["show/objects"], &[]).await;

    // cables -> MQTT, once.
    let envelope = r#"{"topic":"lights/1","clientId":"js-1","payload":{"on":true}}"#;
    let mut publisher =
        JsClient::publish(peers.server.port(), "show/objects", Some(envelope), 1, false).await;
    assert_eq!(publisher.wait_exit().await, 0);
    let first = lights.next_message(WAIT).await;
    assert_eq!((first.topic.as_str(), first.text().as_str()), ("house/lights/1", r#"{"on":true}"#));

    // MQTT -> cables, once.
    mosquitto::publish(peers.broker.port(), "house/lights/2", "0.5", 1, false).await;
    let echoed_by_broker = lights.next_message(WAIT).await;
    assert_eq!(echoed_by_broker.topic, "house/lights/2");
    wait_until(|| cables.messages().len() == 2, WAIT, "the bridge's envelope").await;
    assert_eq!(cables.messages()[1]["data"]["payload"], json!(0.5));
    assert_eq!(cables.messages()[1]["data"]["clientId"], json!("bridge-1"));

    // OSC -> MQTT.
    send_osc(osc_in(&running), "/td/out/level", vec![OscType::Float(0.25)]).await;
    let td = lights.next_message(WAIT).await;
    assert_eq!((td.topic.as_str(), td.text().as_str()), ("house/td/level", "0.25"));

    // Nothing bounced: no second copy on either side.
    lights.expect_nothing(Duration::from_millis(500)).await;
    assert_eq!(cables.messages().len(), 2);
    assert_eq!(get(&running.routes()[0].sent), 1);
    assert_eq!(get(&running.routes()[1].sent), 1);
    running.stop().await;
}

/// Restarting the broker: the routes from and to MQTT work again, and what
/// was sent to MQTT while it was down arrives after the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_routes_from_and_to_mqtt_work_again() {
    let mut peers = Peers::start().await;
    let running = peers
        .bridge(
            r#"
[[route]]
from = { osc = "/td/*" }
to = [{ mqtt = "out/*", qos = 1, retain = true }]

[[route]]
from = { mqtt = "in/#" }
to = [{ osc = "/back/{1}" }]
"#,
        )
        .await;
    let mqtt = running.mqtt().expect("mqtt");

    peers.broker.kill().await;
    let mut state = mqtt.link_state();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s != scbridge::mqtt::MqttLinkState::Connected))
        .await
        .expect("noticed")
        .expect("alive");
    send_osc(osc_in(&running), "/td/while-down", vec![OscType::Int(1)]).await;
    wait_until(|| get(&running.routes()[0].sent) == 1, WAIT, "handed to the MQTT endpoint").await;
    peers.broker.restart().await;
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == scbridge::mqtt::MqttLinkState::Connected))
        .await
        .expect("reconnected")
        .expect("alive");

    // Retained, so the queued message is there for this subscriber whether
    // the bridge flushed it before or after the subscription; it went out
    // before the one sent now, so it comes first.
    let mut out = mosquitto::subscribe(peers.broker.port(), "out/#").await;
    send_osc(osc_in(&running), "/td/after", vec![OscType::Int(2)]).await;
    let queued = out.next_message(WAIT).await;
    assert_eq!((queued.topic.as_str(), queued.text().as_str()), ("out/while-down", "1"));
    let after = out.next_message(WAIT).await;
    assert_eq!((after.topic.as_str(), after.text().as_str()), ("out/after", "2"));
    mosquitto::publish(peers.broker.port(), "in/x/y", "3", 1, false).await;
    assert_eq!(
        peers.td.next(WAIT).await,
        OscMessage { addr: "/back/x/y".into(), args: vec![OscType::Float(3.0)] }
    );
    assert_eq!(get(&mqtt.stats().offline_queue_overflow), 0);
    running.stop().await;
}

/// The availability topic says `online` while the bridge runs, `offline`
/// (the broker's last will) when its process is killed, and `online` again
/// when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_goes_offline_when_the_bridge_is_killed_and_online_when_it_returns() {
    let peers = Peers::start().await;
    let dir = std::env::temp_dir().join(format!("scbridge-avail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("bridge.toml");
    std::fs::write(&config, peers.config("")).expect("write config");
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_scbridge"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start scbridge")
    };
    let mut availability =
        mosquitto::subscribe(peers.broker.port(), "scbridge/bridge-test/availability").await;

    let mut bridge = spawn();
    assert_eq!(availability.next_message(WAIT).await.text(), "online");
    bridge.kill().await.expect("kill -9");
    let will = availability.next_message(WAIT).await;
    assert_eq!((will.text().as_str(), will.retain), ("offline", true));

    let mut bridge = spawn();
    assert_eq!(availability.next_message(WAIT).await.text(), "online");
    bridge.kill().await.expect("kill");
    std::fs::remove_dir_all(&dir).ok();
}

/// Non-JSON and oversized MQTT payloads: the first routes as a string, the
/// second is counted and skipped, and good traffic keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_mqtt_payloads_are_mapped_or_counted_and_good_traffic_flows() {
    let peers = Peers::start().await;
    let routes = r#"
[[route]]
from = { mqtt = "in/+" }
to = [{ osc = "/in/*" }]
"#;
    let config = peers
        .config(routes)
        .replace("availability_topic", "max_packet_bytes = 2048\navailability_topic");
    let running =
        bridge::start(Config::from_toml(&config, "t").expect("config")).await.expect("start");
    let mqtt = running.mqtt().expect("mqtt");
    let mut state = mqtt.link_state();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == scbridge::mqtt::MqttLinkState::Connected))
        .await
        .expect("up")
        .expect("alive");

    mosquitto::publish(peers.broker.port(), "in/huge", vec![b'x'; 4096], 0, false).await;
    mosquitto::publish(peers.broker.port(), "in/text", "{not json", 0, false).await;
    mosquitto::publish(peers.broker.port(), "in/good", "1", 0, false).await;
    assert_eq!(
        peers.td.next(WAIT).await,
        OscMessage { addr: "/in/text".into(), args: vec![OscType::String("{not json".into())] }
    );
    assert_eq!(
        peers.td.next(WAIT).await,
        OscMessage { addr: "/in/good".into(), args: vec![OscType::Float(1.0)] }
    );
    assert_eq!(get(&mqtt.stats().oversized_in), 1);
    assert_eq!(
        get(&mqtt.stats().connections),
        1,
        "the oversized payload did not cost the connection"
    );
    running.stop().await;
}

/// `resend` sends the last value of every state route again (a restarted
/// peer gets the current state), but never a trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_repeats_the_last_value_of_every_state_route_and_no_trigger() {
    let peers = Peers::start().await;
    let running = peers
        .bridge(
            &format!(
                "{LEVELS}{CONTROL}{}",
                "\n[[route]]\nname = \"bang\"\nfrom = { cables_trigger = \"bang\" }\nto = [{ mqtt = \"events/bang\" }]\n"
            ),
        )
        .await;
    let mut levels = mosquitto::subscribe(peers.broker.port(), "levels/#").await;
    let mut events = mosquitto::subscribe(peers.broker.port(), "events/#").await;
    send_osc(osc_in(&running), "/level/a", vec![OscType::Float(0.1)]).await;
    send_osc(osc_in(&running), "/level/a", vec![OscType::Float(0.2)]).await;
    send_osc(osc_in(&running), "/level/b", vec![OscType::Float(0.3)]).await;
    let trigger = r#"{"topic":"bang","clientId":"js-1","payload":"bang"}"#;
    let mut publisher =
        JsClient::publish(peers.server.port(), "show/triggers", Some(trigger), 1, false).await;
    assert_eq!(publisher.wait_exit().await, 0);
    for expected in ["0.1", "0.2", "0.3"] {
        assert_eq!(levels.next_message(WAIT).await.text(), expected);
    }
    assert_eq!(events.next_message(WAIT).await.text(), "bang");

    running.control(scbridge::bridge::Control::Resend).await;
    // A second one straight after is refused: a flood of resends must not
    // become a flood of outputs.
    running.control(scbridge::bridge::Control::Resend).await;
    let mut again = [levels.next_message(WAIT).await, levels.next_message(WAIT).await];
    again.sort_by(|a, b| a.topic.cmp(&b.topic));
    let again: Vec<(&str, String)> = again.iter().map(|m| (m.topic.as_str(), m.text())).collect();
    assert_eq!(again, vec![("levels/a", "0.2".to_owned()), ("levels/b", "0.3".to_owned())]);
    levels.expect_nothing(Duration::from_millis(300)).await;
    events.expect_nothing(Duration::from_millis(100)).await;
    assert_eq!(get(&running.stats.resends_refused), 1);
    running.stop().await;
}

/// A resend sends the last values of the routes that are switched on; a
/// route switched off since stays silent, and says so in its counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_leaves_out_a_route_switched_off() {
    let peers = Peers::start().await;
    let running = peers.bridge(&format!("{LEVELS}{CONTROL}")).await;
    let mut levels = mosquitto::subscribe(peers.broker.port(), "levels/#").await;
    send_osc(osc_in(&running), "/level/a", vec![OscType::Float(0.1)]).await;
    send_osc(osc_in(&running), "/level/b", vec![OscType::Float(0.2)]).await;
    for expected in ["0.1", "0.2"] {
        assert_eq!(levels.next_message(WAIT).await.text(), expected);
    }
    running
        .control(scbridge::bridge::Control::SetRouteEnabled {
            name: "levels".into(),
            enabled: false,
        })
        .await;
    running.control(scbridge::bridge::Control::Resend).await;
    let routes = running.routes();
    wait_until(|| get(&routes[0].disabled) == 2, WAIT, "both remembered values held back").await;
    levels.expect_nothing(Duration::from_millis(300)).await;
    assert_eq!(get(&routes[0].sent), 2, "only the two live values went out");
    running.stop().await;
}

/// A retained control message comes back with every (re)subscription. A
/// retained route switch is state, and holds; a retained `reset` is an
/// action, and is not repeated: only a live one resets the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_reset_is_not_carried_out_but_a_retained_route_switch_is() {
    let peers = Peers::start().await;
    let port = peers.broker.port();
    mosquitto::publish(port, "scbridge/control/reset", "1", 1, true).await;
    let switch_off = r#"{"name": "levels", "enabled": 0}"#;
    mosquitto::publish(port, "scbridge/control/route", switch_off, 1, true).await;
    let running = peers.bridge(&format!("{LEVELS}{CONTROL}")).await;
    let stats = running.stats.clone();
    wait_until(
        || get(&stats.retained_actions) == 1 && get(&stats.control_commands) == 1,
        WAIT,
        "the retained reset ignored and the retained switch carried out",
    )
    .await;
    let routes = running.routes();
    send_osc(osc_in(&running), "/level/a", vec![OscType::Float(0.5)]).await;
    wait_until(|| get(&routes[0].disabled) == 1, WAIT, "the route is switched off").await;
    assert_eq!(get(&running.sc().stats().connections), 1, "the retained reset left the link up");

    mosquitto::publish(port, "scbridge/control/reset", "1", 1, false).await;
    let sc = running.sc();
    wait_until(|| get(&sc.stats().connections) == 2, WAIT, "a live reset reconnects").await;
    assert_eq!(get(&stats.retained_actions), 1);
    assert_eq!(get(&stats.control_commands), 2);
    running.stop().await;
}

/// A TouchDesigner button sends 1 when pressed and 0 when let go. A press
/// resets the link once and its release does nothing; a second press
/// within a second is refused rather than cutting the reconnect short, and
/// a press after that resets again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_button_resets_once_a_press_and_at_most_once_a_second() {
    let peers = Peers::start().await;
    let running = peers.bridge("\n[control]\nosc = \"/scbridge\"\n").await;
    let stats = running.stats.clone();
    let sc = running.sc();
    let button = osc_in(&running);
    for value in [1.0, 0.0, 1.0, 0.0] {
        send_osc(button, "/scbridge/reset", vec![OscType::Float(value)]).await;
    }
    wait_until(
        || get(&stats.control_releases) == 2 && get(&stats.resets_refused) == 1,
        WAIT,
        "both releases ignored and the second press refused",
    )
    .await;
    wait_until(|| get(&sc.stats().connections) == 2, WAIT, "the first press reconnects").await;
    assert_eq!(get(&stats.control_commands), 2, "two presses, one carried out");

    wait_until(
        || async {
            send_osc(button, "/scbridge/reset", vec![OscType::Float(1.0)]).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            get(&sc.stats().connections) == 3
        },
        WAIT,
        "a press a second later resets again",
    )
    .await;
    assert_eq!(get(&stats.control_releases), 2);
    running.stop().await;
}

/// A reload that only changes which MQTT topics routes listen to changes
/// the subscriptions on the live connection: no reconnect, the new topic
/// is heard (its retained value first), the dropped one no longer is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_mqtt_routes_resubscribes_without_reconnecting() {
    let peers = Peers::start().await;
    let route = |topic: &str| {
        format!(
            "\n[[route]]\nname = \"{topic}\"\nfrom = {{ mqtt = \"in/{topic}/+\" }}\nto = [{{ osc = \"/{topic}\" }}]\n"
        )
    };
    let running = peers.bridge(&route("a")).await;
    let mqtt = running.mqtt().expect("mqtt");
    mosquitto::publish(peers.broker.port(), "in/b/x", "1", 1, true).await;

    let config = Config::from_toml(&peers.config(&route("b")), "test.toml").expect("valid");
    let report = running.reload(config).await;
    assert!(!report.mqtt_restarted, "{report:?}");
    assert_eq!(
        peers.td.next(WAIT).await,
        OscMessage { addr: "/b".into(), args: vec![OscType::Float(1.0)] },
        "the retained value of the new subscription"
    );

    mosquitto::publish(peers.broker.port(), "in/a/x", "2", 1, false).await;
    mosquitto::publish(peers.broker.port(), "in/b/x", "3", 1, false).await;
    assert_eq!(
        peers.td.next(WAIT).await,
        OscMessage { addr: "/b".into(), args: vec![OscType::Float(3.0)] },
        "the broker sends in order, so /a would have come first"
    );
    assert_eq!(get(&mqtt.stats().messages_in), 2, "in/a is no longer subscribed");
    assert_eq!(get(&mqtt.stats().connections), 1, "no reconnect");
    running.stop().await;
}

/// After a reload, `resend` still has the last values of the routes that
/// stayed, so a peer restarting later gets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_after_a_reload_repeats_the_values_of_routes_that_stayed() {
    let peers = Peers::start().await;
    let extra = "\n[[route]]\nname = \"extra\"\nfrom = { osc = \"/x\" }\nto = [{ mqtt = \"x\" }]\n";
    let running = peers.bridge(&format!("{LEVELS}{CONTROL}")).await;
    let mut received = mosquitto::subscribe(peers.broker.port(), "levels/#").await;
    send_osc(osc_in(&running), "/level/a", vec![OscType::Float(0.1)]).await;
    assert_eq!(received.next_message(WAIT).await.text(), "0.1");

    // A route inserted above moves `levels` to another position.
    let config =
        Config::from_toml(&peers.config(&format!("{extra}{LEVELS}{CONTROL}")), "test.toml")
            .expect("valid");
    running.reload(config).await;
    running.control(scbridge::bridge::Control::Resend).await;
    let again = received.next_message(WAIT).await;
    assert_eq!((again.topic.as_str(), again.text()), ("levels/a", "0.1".to_owned()));
    running.stop().await;
}

/// A route that a reload gives a trigger destination remembers nothing
/// new; what it remembered before is forgotten rather than resent for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_now_carries_a_trigger_has_nothing_to_resend() {
    let peers = Peers::start().await;
    let other = "\n[[route]]\nname = \"other\"\nfrom = { osc = \"/other/*\" }\nto = [{ mqtt = \"other/+\" }]\n";
    let running = peers.bridge(&format!("{LEVELS}{other}{CONTROL}")).await;
    let mut levels = mosquitto::subscribe(peers.broker.port(), "levels/#").await;
    let mut others = mosquitto::subscribe(peers.broker.port(), "other/#").await;
    send_osc(osc_in(&running), "/level/a", vec![OscType::Float(0.1)]).await;
    send_osc(osc_in(&running), "/other/x", vec![OscType::Float(0.2)]).await;
    assert_eq!(levels.next_message(WAIT).await.text(), "0.1");
    assert_eq!(others.next_message(WAIT).await.text(), "0.2");

    let levels_with_a_trigger = LEVELS.replace(
        "to = [{ mqtt = \"levels/+\" }]",
        "to = [{ mqtt = \"levels/+\" }, { cables_trigger = \"level\" }]",
    );
    let config = Config::from_toml(
        &peers.config(&format!("{levels_with_a_trigger}{other}{CONTROL}")),
        "test.toml",
    )
    .expect("valid");
    running.reload(config).await;
    running.control(scbridge::bridge::Control::Resend).await;
    assert_eq!(others.next_message(WAIT).await.text(), "0.2", "the other route is resent");
    levels.expect_nothing(Duration::from_millis(300)).await;
    running.stop().await;
}

/// A route without a name is "route N" after its position. A route switch
/// stays with the route it was given to, and does not pass to the one that
/// takes its name when a route is inserted above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_does_not_pass_a_route_switch_to_the_route_that_took_its_name() {
    let peers = Peers::start().await;
    let levels = "\n[[route]]\nfrom = { osc = \"/level/*\" }\nto = [{ mqtt = \"levels/+\" }]\n";
    let other = "\n[[route]]\nfrom = { osc = \"/other\" }\nto = [{ mqtt = \"other\" }]\n";
    let running = peers.bridge(levels).await;
    running
        .control(scbridge::bridge::Control::SetRouteEnabled {
            name: "route 1".into(),
            enabled: false,
        })
        .await;

    let config =
        Config::from_toml(&peers.config(&format!("{other}{levels}")), "test.toml").expect("valid");
    running.reload(config).await;
    let mut received = mosquitto::subscribe(peers.broker.port(), "other").await;
    send_osc(osc_in(&running), "/other", vec![OscType::Float(5.0)]).await;
    assert_eq!(received.next_message(WAIT).await.text(), "5.0", "the new route 1 is on");
    running.stop().await;
}

/// What reaches TouchDesigner until it has been quiet for a while, sorted
/// by address.
async fn everything_until_quiet(td: &support::udp::OscReceiver) -> Vec<OscMessage> {
    let mut all = Vec::new();
    while let Some(message) = td.try_next(Duration::from_millis(500)).await {
        all.push(message);
    }
    all.sort_by(|a, b| a.addr.cmp(&b.addr));
    all
}

fn float(addr: &str, value: f32) -> OscMessage {
    OscMessage { addr: addr.into(), args: vec![OscType::Float(value)] }
}

/// Three routes whose filters overlap without one covering the other two
/// (`a/+/c`, `a/b/+`, and `a/b/c` under both). Over MQTT 3.1.1 Mosquitto
/// sends one copy of a message however many filters match, and each route
/// fires once. (Over MQTT 5 it sends one per subscription: see README.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_routes_fire_once_each_over_3_1_1() {
    let peers = Peers::start().await;
    let running = peers
        .bridge(
            r#"
[[route]]
from = { mqtt = "a/+/c" }
to = [{ osc = "/room" }]
[[route]]
from = { mqtt = "a/b/+" }
to = [{ osc = "/kitchen" }]
[[route]]
from = { mqtt = "a/b/c" }
to = [{ osc = "/exact" }]
"#,
        )
        .await;
    mosquitto::publish(peers.broker.port(), "a/b/c", "1", 1, false).await;
    mosquitto::publish(peers.broker.port(), "a/x/c", "2", 1, false).await;
    assert_eq!(
        everything_until_quiet(&peers.td).await,
        [float("/exact", 1.0), float("/kitchen", 1.0), float("/room", 1.0), float("/room", 2.0)]
    );
    running.stop().await;
}

/// A route whose filter reloads keep changing (`a/+/c`, `a/b/+`, both
/// matching the stream's topic) loses nothing of a steady stream: the new
/// filter is subscribed before the old one is dropped. The stream lasts
/// until every reload is done, however slow the machine.
async fn a_route_moved_between_overlapping_filters_loses_nothing(protocol: &str) {
    const RELOADS: usize = 20;
    const AT_LEAST: usize = 600;
    const AT_MOST: usize = 20_000;
    let peers = Peers {
        server: ScServer::start(ScServerOptions::new()).await,
        broker: Mosquitto::start_configured("log_type subscribe\nlog_type unsubscribe\n").await,
        td: OscReceiver::bind().await,
    };
    let route = |filter: &str| {
        format!(
            "\n[[route]]\nname = \"r\"\nfrom = {{ mqtt = \"{filter}\", qos = 1 }}\nto = [{{ osc = \"/r\" }}]\n"
        )
    };
    let running = peers.bridge_over(protocol, &route("a/+/c")).await;
    let port = peers.broker.port();
    let reloads_done = Arc::new(AtomicUsize::new(0));
    let stream = tokio::spawn({
        let reloads_done = reloads_done.clone();
        async move {
            let mut published = 0;
            while published < AT_MOST
                && (published < AT_LEAST || reloads_done.load(Ordering::Relaxed) < RELOADS)
            {
                mosquitto::publish(port, "a/b/c", published.to_string(), 1, false).await;
                published += 1;
            }
            published
        }
    });
    let reload_while_streaming = async {
        for reload in 0..RELOADS {
            let filter = if reload % 2 == 0 { "a/b/+" } else { "a/+/c" };
            let config =
                Config::from_toml(&peers.config_over(protocol, &route(filter)), "test.toml")
                    .expect("valid");
            let report = running.reload(config).await;
            assert_eq!(report, ReloadReport { routes: 1, ..ReloadReport::default() });
            reloads_done.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    // Read as it comes: the socket's buffer holds only a few hundred.
    let read_until_quiet = async {
        let mut seen = HashSet::new();
        loop {
            match peers.td.try_next(Duration::from_secs(1)).await {
                Some(message) => {
                    if let [OscType::Float(n)] = message.args[..] {
                        seen.insert(n as usize);
                    }
                }
                None if stream.is_finished() => break seen,
                None => {}
            }
        }
    };
    let ((), seen) = tokio::join!(reload_while_streaming, read_until_quiet);
    let published = stream.await.expect("the stream was published");
    assert!(published < AT_MOST, "the reloads outlasted {AT_MOST} messages");
    let missing: Vec<usize> = (0..published).filter(|n| !seen.contains(n)).collect();
    assert_eq!(missing, Vec::<usize>::new(), "lost over {RELOADS} reloads");
    // The broker saw the route's filter move each time.
    let log = peers.broker.log();
    let subscribed = |filter: &str| {
        log.lines().filter(|l| l.ends_with(&format!(" bridge-test 1 {filter}"))).count()
    };
    assert_eq!(subscribed("a/b/+"), RELOADS / 2, "{log}");
    assert_eq!(subscribed("a/+/c"), RELOADS / 2 + 1, "{log}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_moved_between_overlapping_filters_loses_nothing_over_3_1_1() {
    a_route_moved_between_overlapping_filters_loses_nothing("3.1.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_moved_between_overlapping_filters_loses_nothing_over_5() {
    a_route_moved_between_overlapping_filters_loses_nothing("5").await;
}
