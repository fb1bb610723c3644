//! The real binary as an operator meets it: `check` and `explain`, the
//! systemd notify protocol and watchdog, reload on SIGHUP, a clean SIGTERM,
//! runtime control over OSC and MQTT, the HTTP listener, and secrets that
//! never reach a log.

mod support;

use std::time::Duration;

use rosc::{OscMessage, OscType};
use serde_json::{Value, json};
use support::daemon::{ClosedPort, Daemon, NotifySocket, TempDir, run_to_end};
use support::mosquitto::{self, Mosquitto};
use support::sc_peer::{ScServer, ScServerOptions, wait_until};
use support::udp::{OscReceiver, send_osc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

fn example() -> String {
    format!("{}/bridge.toml.example", env!("CARGO_MANIFEST_DIR"))
}

/// `check` accepts the example, prints the resolved table, and hides the
/// cables extra values.
#[tokio::test]
async fn check_accepts_the_example_and_prints_the_resolved_table() {
    let (code, stdout, _) = run_to_end(&["check", "--config", &example()]).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("routes: 6"), "{stdout}");
    let faders = "[2] \"faders from TouchDesigner\" (max 30/s): osc \"/td/fader/*\"";
    assert!(stdout.contains(faders), "{stdout}");
    assert!(!stdout.contains("patch-key"), "a secret was printed:\n{stdout}");
}

/// Broken configs exit 2 and name the file, line and key.
#[tokio::test]
async fn check_names_the_key_and_line_of_every_broken_config() {
    let dir = TempDir::new("check");
    let cases = [
        (
            "[socketcluster]\nurl = \"ws://h/socketcluster/\"\nqueue_size = -1\n",
            ":3:",
            "socketcluster.queue_size",
        ),
        ("[socketcluster]\nurl = \"http://h/\"\n", ":2:", "socketcluster.url"),
        (
            "[socketcluster]\nurl = \"ws://h/socketcluster/\"\n[[route]]\nfrom = { mqtt = \"a\" }\nto = [{ osc = \"/a\" }]\n",
            ":4:",
            "route[0].from.mqtt",
        ),
        ("[socketcluster\n", ":1:", "`(document)`"),
    ];
    for (index, (text, line, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("broken-{index}.toml"));
        std::fs::write(&path, text).expect("write config");
        let (code, _, stderr) =
            run_to_end(&["check", "--config", path.to_str().expect("utf-8 path")]).await;
        assert_eq!(code, 2, "case {index}: {stderr}");
        assert!(stderr.contains(&format!("broken-{index}.toml{line}")), "case {index}: {stderr}");
        assert!(stderr.contains(key), "case {index}: {stderr}");
    }
}

/// `explain` shows OSC type tags, the MQTT topic and payload, and why a
/// message would go nowhere.
#[tokio::test]
async fn explain_shows_what_would_be_sent_where() {
    let (code, stdout, _) = run_to_end(&[
        "explain",
        "--config",
        &example(),
        "cables_object",
        "sensors/temp",
        r#"{"c":21.5}"#,
    ])
    .await;
    assert_eq!(code, 0);
    assert!(stdout.contains("/td/sensors/temp/c ,f Float(21.5)"), "{stdout}");
    assert!(
        stdout.contains(
            r#"MQTT topic "foyer/sensors/temp" qos 1 retain true payload "{\"c\":21.5}""#
        ),
        "{stdout}"
    );
    let (_, stdout, _) =
        run_to_end(&["explain", "--config", &example(), "osc", "/td/go", "1"]).await;
    assert!(stdout.contains(r#"SocketCluster publish on "foyer/triggers""#), "{stdout}");
    assert!(stdout.contains(r#""token":"<hidden>""#), "{stdout}");
    let (_, stdout, _) =
        run_to_end(&["explain", "--config", &example(), "mqtt", "elsewhere", "1"]).await;
    assert!(stdout.contains("no route matches"), "{stdout}");
}

/// A config for the process tests: a real SocketCluster server, OSC in on a
/// port the system picks (see [`Daemon::listening`]), OSC out to `td`, and whatever else is appended.
fn service_config(server: &ScServer, td: &OscReceiver, more: &str) -> String {
    format!(
        r#"
[socketcluster]
url = "{}"
reconnect_delay_ms = 200

[osc]
listen = ["127.0.0.1:0"]
[osc.targets]
td = "{}"
{more}"#,
        server.url(),
        td.addr()
    )
}

const ROUTE_A: &str = r#"
[[route]]
name = "a"
from = { osc = "/a" }
to = [{ sc_channel = "chan-a" }]
"#;

/// READY=1 comes once local sockets are bound (with a STATUS line),
/// WATCHDOG=1 keeps coming at the configured pace, and SIGTERM gives
/// STOPPING=1 and exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notify_protocol_reports_ready_watchdog_and_stopping() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscReceiver::bind().await;
    let dir = TempDir::new("notify");
    let notify = NotifySocket::bind(dir.path());
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, service_config(&server, &td, ROUTE_A)).expect("write config");

    let mut daemon = Daemon::start(
        &config,
        &[("NOTIFY_SOCKET", notify.path().to_str().expect("utf-8")), ("WATCHDOG_USEC", "400000")],
    );
    let ready = notify.wait_for("READY=1", WAIT).await;
    assert!(ready.lines().any(|l| l.starts_with("STATUS=socketcluster: ")), "{ready}");
    for _ in 0..3 {
        notify.wait_for("WATCHDOG=1", WAIT).await;
    }
    daemon.signal("TERM").await;
    notify.wait_for("STOPPING=1", WAIT).await;
    assert_eq!(daemon.wait(WAIT).await, 0, "log:\n{}", daemon.log());
}

/// SIGHUP with a new route: the route works at once, and the SocketCluster
/// server saw no second connection. SIGHUP with a new `[http]` table: the
/// log says it waits for a restart. SIGHUP with a broken config: the old
/// routes keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_routes_without_reconnecting_and_refuses_a_broken_config() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscReceiver::bind().await;
    let dir = TempDir::new("reload");
    let notify = NotifySocket::bind(dir.path());
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, service_config(&server, &td, ROUTE_A)).expect("write config");
    let mut daemon =
        Daemon::start(&config, &[("NOTIFY_SOCKET", notify.path().to_str().expect("utf-8"))]);
    let ready = notify.wait_for("READY=1", WAIT).await;
    if !ready.contains("STATUS=socketcluster: connected") {
        notify.wait_for_prefix("STATUS=socketcluster: connected", WAIT).await;
    }
    let socket_id = server.next_socket_id(WAIT).await;
    let osc_addr = daemon.listening("OSC listening", WAIT).await;

    let route_b = r#"
[[route]]
name = "b"
from = { osc = "/b" }
to = [{ sc_channel = "chan-b" }]
"#;
    std::fs::write(&config, service_config(&server, &td, &format!("{ROUTE_A}{route_b}")))
        .expect("rewrite");
    daemon.signal("HUP").await;
    notify.wait_for("RELOADING=1", WAIT).await;
    notify.wait_for("READY=1", WAIT).await;
    send_osc(osc_addr, "/b", vec![OscType::Int(2)]).await;
    server.next_line_matching(|l| l == format!("PUBLISH {socket_id} chan-b 2"), WAIT).await;
    assert_eq!(server.count_lines("CONNECTION "), 1, "a route change must not reconnect");
    assert_eq!(daemon.log().matches("OSC listening").count(), 1, "nor rebind OSC");
    assert!(!daemon.log().contains("[http] changes"), "{}", daemon.log());

    let with_http = format!("{ROUTE_A}{route_b}\n[http]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&config, service_config(&server, &td, &with_http)).expect("rewrite");
    daemon.signal("HUP").await;
    notify.wait_for("RELOADING=1", WAIT).await;
    notify.wait_for("READY=1", WAIT).await;
    // The log comes through a pipe, READY=1 through the notify socket:
    // either may be read first.
    wait_until(
        || daemon.log().contains("[http] changes take effect at the next restart"),
        WAIT,
        "an [http] change that a reload cannot apply is said so",
    )
    .await;

    std::fs::write(&config, "[socketcluster]\nurl = 5\n").expect("break the config");
    daemon.signal("HUP").await;
    let refused = notify.wait_for("READY=1", WAIT).await;
    assert!(refused.contains("STATUS=reload refused"), "{refused}");
    // Then the link line again, not the reload's outcome for good.
    notify.wait_for_prefix("STATUS=socketcluster: connected", WAIT).await;
    send_osc(osc_addr, "/a", vec![OscType::Int(1)]).await;
    server.next_line_matching(|l| l == format!("PUBLISH {socket_id} chan-a 1"), WAIT).await;
    assert!(daemon.log().contains("reload refused"), "{}", daemon.log());
    daemon.signal("TERM").await;
    assert_eq!(daemon.wait(WAIT).await, 0);
}

/// SIGTERM with messages queued for a SocketCluster server that is down:
/// the daemon exits 0 within its bound, says how many were dropped, and the
/// broker shows `offline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_queued_messages_exits_cleanly_and_says_offline() {
    let mut server = ScServer::start(ScServerOptions::new()).await;
    let broker = Mosquitto::start().await;
    let td = OscReceiver::bind().await;
    let dir = TempDir::new("term");
    let notify = NotifySocket::bind(dir.path());
    let mqtt = format!(
        "[mqtt]\nurl = \"{}\"\nclient_id = \"term-test\"\navailability_topic = \"scbridge/term-test/availability\"\n[http]\nlisten = \"127.0.0.1:0\"\n{ROUTE_A}",
        broker.url()
    );
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, service_config(&server, &td, &mqtt)).expect("write config");
    let mut availability =
        mosquitto::subscribe(broker.port(), "scbridge/term-test/availability").await;
    let mut daemon =
        Daemon::start(&config, &[("NOTIFY_SOCKET", notify.path().to_str().expect("utf-8"))]);
    notify.wait_for("READY=1", WAIT).await;
    let http = daemon.listening("HTTP listener", WAIT).await.port();
    assert_eq!(availability.next_message(WAIT).await.text(), "online");
    server.next_socket_id(WAIT).await;

    server.kill().await;
    // Sent before the daemon noticed, they could go into the dying socket
    // and be lost instead of queued.
    wait_until(|| daemon.log().contains("SocketCluster link down"), WAIT, "the link noticed down")
        .await;
    let osc_addr = daemon.listening("OSC listening", WAIT).await;
    for n in 0..3 {
        send_osc(osc_addr, "/a", vec![OscType::Int(n)]).await;
    }
    let queued = r#"scbridge_queue_depth{queue="socketcluster_send"}"#;
    wait_until(
        || async { metric(&http_get(http, "/metrics").await.1, queued) == 3.0 },
        WAIT,
        "the three messages are queued for SocketCluster",
    )
    .await;
    daemon.signal("TERM").await;
    assert_eq!(daemon.wait(WAIT).await, 0, "log:\n{}", daemon.log());
    let offline = availability.next_message(WAIT).await;
    assert_eq!((offline.text().as_str(), offline.retain), ("offline", true));
    assert!(daemon.log().contains("dropped=3"), "log:\n{}", daemon.log());
}

/// Runtime control: OSC switches the SocketCluster link off and on, MQTT
/// switches a route off, and the link state is published retained on MQTT
/// and as 1/0 on OSC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osc_and_mqtt_control_the_link_and_the_routes_and_see_its_state() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let broker = Mosquitto::start().await;
    let td = OscReceiver::bind().await;
    let dir = TempDir::new("control");
    let notify = NotifySocket::bind(dir.path());
    let more = format!(
        r#"
[mqtt]
url = "{}"
client_id = "ctl-test"

[control]
osc = "/scbridge"
mqtt = "scbridge/control"
osc_status_target = "td"

[http]
listen = "127.0.0.1:0"
{ROUTE_A}"#,
        broker.url()
    );
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, service_config(&server, &td, &more)).expect("write config");
    let mut status = mosquitto::subscribe(broker.port(), "scbridge/ctl-test/socketcluster").await;
    let mut daemon =
        Daemon::start(&config, &[("NOTIFY_SOCKET", notify.path().to_str().expect("utf-8"))]);
    notify.wait_for("READY=1", WAIT).await;
    let http = daemon.listening("HTTP listener", WAIT).await.port();
    let first = server.next_socket_id(WAIT).await;
    let osc_addr = daemon.listening("OSC listening", WAIT).await;
    let connected = |v: &Value| v["state"] == "connected";
    loop {
        let message: Value =
            serde_json::from_slice(&status.next_message(WAIT).await.payload).expect("json");
        if connected(&message) {
            break;
        }
    }
    loop {
        if td.next(WAIT).await
            == (OscMessage {
                addr: "/scbridge/socketcluster".into(),
                args: vec![OscType::Float(1.0)],
            })
        {
            break;
        }
    }

    // TouchDesigner exports a channel on every frame: the same command
    // comes again and again, and is carried out, and logged, once.
    send_osc(osc_addr, "/scbridge/active", vec![OscType::Int(0)]).await;
    send_osc(osc_addr, "/scbridge/active", vec![OscType::Int(0)]).await;
    server.next_line_matching(|l| l.starts_with(&format!("DISCONNECT {first} 1000")), WAIT).await;
    loop {
        let message: Value =
            serde_json::from_slice(&status.next_message(WAIT).await.payload).expect("json");
        if message == json!({"state": "inactive"}) {
            break;
        }
    }
    send_osc(osc_addr, "/scbridge/active", vec![OscType::Int(1)]).await;
    send_osc(osc_addr, "/scbridge/active", vec![OscType::Int(1)]).await;
    let second = server.next_socket_id(WAIT).await;

    mosquitto::publish(broker.port(), "scbridge/control/route", r#"["a", 0]"#, 1, false).await;
    mosquitto::publish(broker.port(), "scbridge/control/route", r#"["a", 0]"#, 1, false).await;
    wait_until(|| daemon.log().contains("control: route switched"), WAIT, "the route switched")
        .await;
    send_osc(osc_addr, "/a", vec![OscType::Int(7)]).await;
    // The OSC message and the MQTT command travel different ways; wait
    // until the router has seen the first before sending the second.
    let disabled = r#"scbridge_route_messages_total{route="a",event="disabled"}"#;
    wait_until(
        || async { metric(&http_get(http, "/metrics").await.1, disabled) == 1.0 },
        WAIT,
        "the message on the switched-off route was counted",
    )
    .await;
    mosquitto::publish(
        broker.port(),
        "scbridge/control/route",
        r#"{"name":"a","enabled":true}"#,
        1,
        false,
    )
    .await;
    wait_until(
        || daemon.log().matches("control: route switched").count() == 2,
        WAIT,
        "switched back",
    )
    .await;
    send_osc(osc_addr, "/a", vec![OscType::Int(8)]).await;
    server.next_line_matching(|l| l == format!("PUBLISH {second} chan-a 8"), WAIT).await;
    assert_eq!(
        server.count_lines(&format!("PUBLISH {second} chan-a 7")),
        0,
        "sent while the route was off"
    );
    daemon.signal("TERM").await;
    assert_eq!(daemon.wait(WAIT).await, 0);
    let log = daemon.log();
    assert_eq!(log.matches("control: SocketCluster link active").count(), 2, "{log}");
    assert_eq!(log.matches("control: route switched").count(), 2, "{log}");
}

/// A channel subscribed to be watched has its messages logged, at most 20
/// lines a second and each value cut to 1,000 bytes of JSON; every message
/// is either logged or counted as left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_channel_is_logged_paced_and_cut_and_the_rest_counted() {
    const SENT: usize = 40;
    let server = ScServer::start(ScServerOptions::new()).await;
    let dir = TempDir::new("watch");
    let config = dir.path().join("bridge.toml");
    let text = format!(
        "[socketcluster]\nurl = \"{}\"\nsubscribe = [\"watch\"]\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
        server.url()
    );
    std::fs::write(&config, text).expect("write config");
    let mut daemon = Daemon::start(&config, &[]);
    let http = daemon.listening("HTTP listener", WAIT).await.port();
    server.next_line_matching(|l| l.starts_with("SUBSCRIBE ") && l.contains(" watch "), WAIT).await;

    let started = std::time::Instant::now();
    server.publish("watch", &json!("x".repeat(5000))).await;
    for n in 1..SENT {
        server.publish("watch", &json!(n)).await;
    }
    let logged = |log: &str| log.lines().filter(|l| l.contains(" publish channel=watch")).count();
    let unlogged = r#"scbridge_bridge_events_total{event="monitored_unlogged"}"#;
    wait_until(
        || async {
            let left_out = metric(&http_get(http, "/metrics").await.1, unlogged) as usize;
            logged(&daemon.log()) + left_out == SENT
        },
        WAIT,
        "every message logged or counted as left out",
    )
    .await;
    // At most 20 lines in each second the messages took to arrive.
    let seconds = started.elapsed().as_secs() as usize + 1;
    let log = daemon.log();
    assert!(logged(&log) <= 20 * seconds, "{} lines in {seconds} s", logged(&log));
    let first = log.lines().find(|l| l.contains(" publish channel=watch")).expect("a line");
    assert!(first.contains("… (cut)"), "{first}");
    assert!(first.len() < 1_300, "the 5,000-character value was cut: {} bytes", first.len());
    daemon.signal("TERM").await;
    assert_eq!(daemon.wait(WAIT).await, 0);
}

async fn http_get(port: u16, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("in time")
        .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

fn metric(body: &str, line_start: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `/metrics` counters move as messages flow, `/health` shows the links,
/// `/recent` the last routed messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_shows_counters_moving_health_and_recent_messages() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscReceiver::bind().await;
    let dir = TempDir::new("http");
    let notify = NotifySocket::bind(dir.path());
    let more = format!("[http]\nlisten = \"127.0.0.1:0\"\nmax_lines = 2\n{ROUTE_A}");
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, service_config(&server, &td, &more)).expect("write config");
    let mut daemon =
        Daemon::start(&config, &[("NOTIFY_SOCKET", notify.path().to_str().expect("utf-8"))]);
    notify.wait_for("READY=1", WAIT).await;
    let http = daemon.listening("HTTP listener", WAIT).await.port();
    let socket_id = server.next_socket_id(WAIT).await;
    let sent = r#"scbridge_route_messages_total{route="a",event="sent"}"#;

    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(metric(&body, sent), 0.0, "{body}");
    let osc_addr = daemon.listening("OSC listening", WAIT).await;
    for n in 0..3 {
        send_osc(osc_addr, "/a", vec![OscType::Int(n)]).await;
    }
    server.next_line_matching(|l| l == format!("PUBLISH {socket_id} chan-a 2"), WAIT).await;
    // Counted once queued, which can be a moment after the server has it.
    wait_until(
        || async { metric(&http_get(http, "/metrics").await.1, sent) == 3.0 },
        WAIT,
        "/metrics counts the three sent",
    )
    .await;
    let (_, body) = http_get(http, "/metrics").await;
    assert_eq!(metric(&body, sent), 3.0, "{body}");
    assert_eq!(metric(&body, r#"scbridge_link_up{link="socketcluster"}"#), 1.0, "{body}");

    let (status, body) = http_get(http, "/health").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["socketcluster"]["state"], "connected");
    let (_, body) = http_get(http, "/recent").await;
    let recent: Vec<Value> = serde_json::from_str(&body).expect("json array");
    let values: Vec<&Value> = recent.iter().map(|r| &r["value"]).collect();
    assert_eq!(values, vec![&json!(1), &json!(2)], "max_lines = 2 keeps the last two");
    daemon.signal("TERM").await;
    assert_eq!(daemon.wait(WAIT).await, 0);
}

/// Under systemd with its output in the journal, every line carries its
/// syslog priority (`<4>` for a warning) and no timestamp of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_journal_stream_each_line_starts_with_its_syslog_priority() {
    let dir = TempDir::new("journal");
    let config = dir.path().join("bridge.toml");
    let nobody_listens = ClosedPort::new();
    std::fs::write(
        &config,
        format!(
            "[socketcluster]\nurl = \"ws://127.0.0.1:{}/socketcluster/\"\n",
            nobody_listens.port()
        ),
    )
    .expect("write config");
    let mut daemon = Daemon::start_on_journal_stream(&config);
    wait_until(|| daemon.log().contains("link down"), WAIT, "the refused link is logged").await;
    daemon.signal("TERM").await;
    assert_eq!(daemon.wait(WAIT).await, 0, "log:\n{}", daemon.log());

    let log = daemon.log();
    let prefixes: Vec<&str> = log.lines().map(|line| &line[..line.len().min(3)]).collect();
    assert!(prefixes.contains(&"<6>"), "an info line: {log}");
    assert!(prefixes.contains(&"<4>"), "a warning line: {log}");
    assert!(prefixes.iter().all(|p| ["<3>", "<4>", "<6>", "<7>"].contains(p)), "{log}");
    let down = log.lines().find(|l| l.contains("link down")).expect("the link-down line");
    assert!(
        down.starts_with("<4> WARN scbridge::sc::connection: SocketCluster link down"),
        "{down}"
    );
}

/// Tokens, passwords and header values never appear in the log (even at
/// debug) or in `check`'s output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log_or_check_output() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let broker = Mosquitto::start().await;
    let td = OscReceiver::bind().await;
    let dir = TempDir::new("secrets");
    let notify = NotifySocket::bind(dir.path());
    let config_text = service_config(&server, &td, &format!(
        "[mqtt]\nurl = \"{}\"\nclient_id = \"secrets-test\"\nusername = \"bridge\"\npassword = \"MQTT-PASSWORD-0451\"\n",
        broker.url()
    ))
    .replace(
        "reconnect_delay_ms = 200",
        "reconnect_delay_ms = 200\nauth_token = \"SC-TOKEN-0451\"\nheaders = { Authorization = \"Bearer HEADER-0451\" }\nquery = { key = \"QUERY-0451\" }",
    );
    let config = dir.path().join("bridge.toml");
    std::fs::write(&config, &config_text).expect("write config");

    let (code, stdout, stderr) =
        run_to_end(&["check", "--config", config.to_str().expect("utf-8")]).await;
    assert_eq!(code, 0, "{stderr}");
    let mut availability =
        mosquitto::subscribe(broker.port(), "scbridge/secrets-test/availability").await;
    let mut daemon =
        Daemon::start(&config, &[("NOTIFY_SOCKET", notify.path().to_str().expect("utf-8"))]);
    notify.wait_for("READY=1", WAIT).await;
    server.next_socket_id(WAIT).await;
    // Both links logged in, so every line that could carry a secret ran.
    assert_eq!(availability.next_message(WAIT).await.text(), "online");
    daemon.signal("TERM").await;
    assert_eq!(daemon.wait(WAIT).await, 0);
    let everything = format!("{stdout}{stderr}{}", daemon.log());
    assert!(everything.contains("SocketCluster link connected"), "the log is there:\n{everything}");
    for secret in ["MQTT-PASSWORD-0451", "SC-TOKEN-0451", "HEADER-0451", "QUERY-0451"] {
        assert!(!everything.contains(secret), "{secret} leaked:\n{everything}");
    }
}
