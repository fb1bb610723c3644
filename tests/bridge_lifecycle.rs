//! The whole bridge through its stop and its reloads, against a real
//! socketcluster-server and real UDP sockets: what was taken in is either
//! delivered or counted, and a link that cannot take new settings keeps
//! its old ones.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rosc::OscType;
use scbridge::bridge::{self, ReloadReport, Running};
use scbridge::config::Config;
use scbridge::stats::get;
use support::sc_peer::{ScServer, ScServerOptions, wait_until};
use support::udp::{OscReceiver, send_osc};
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(10);

fn config(server: &ScServer, td: &OscReceiver, listen: &str, routes: &str) -> Config {
    config_with_targets(server, listen, &format!("td = \"{}\"", td.addr()), routes)
}

/// The same, with `targets` as the lines of `[osc.targets]`.
fn config_with_targets(server: &ScServer, listen: &str, targets: &str, routes: &str) -> Config {
    let toml = format!(
        r#"
[socketcluster]
url = "{}"
reconnect_delay_ms = 200

[osc]
listen = ["{listen}"]
[osc.targets]
{targets}
{routes}"#,
        server.url(),
    );
    Config::from_toml(&toml, "test.toml").expect("valid test config")
}

async fn start(config: Config) -> Running {
    let running = bridge::start(config).await.expect("bridge starts");
    let mut link = running.sc().link_state();
    tokio::time::timeout(WAIT, link.wait_for(|s| s.is_connected()))
        .await
        .expect("connected")
        .expect("alive");
    running
}

fn osc_port(running: &Running) -> std::net::SocketAddr {
    running.osc().expect("osc configured").listen_addrs()[0]
}

const PASS_THROUGH: &str = r#"
[[route]]
name = "pass"
from = { osc = "/in" }
to = [{ osc = "/out" }]
"#;

/// Values stream in over OSC and the bridge is stopped in the middle of
/// it: every value the bridge took in reaches TouchDesigner, or is counted
/// by the counter that says where it was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_in_the_middle_of_a_stream_delivers_or_counts_every_value_taken_in() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscReceiver::bind().await;
    let running = start(config(&server, &td, "127.0.0.1:0", PASS_THROUGH)).await;
    let osc = running.osc().expect("osc configured");
    let (bridge_stats, routes) = (running.stats.clone(), running.routes());
    let to = osc_port(&running);

    // TouchDesigner reads while the stream runs, so that its own socket
    // never overflows, until it finds nothing after the stop: by then the
    // bridge has sent all it will.
    let stopped = Arc::new(AtomicBool::new(false));
    let reading = tokio::spawn({
        let stopped = Arc::clone(&stopped);
        async move {
            let mut received = Vec::new();
            loop {
                match td.try_next(Duration::from_millis(200)).await {
                    Some(message) => received.push(message),
                    None if stopped.load(Ordering::SeqCst) => return received,
                    None => {}
                }
            }
        }
    });
    // The stream goes on until the stop is over.
    let sending = tokio::spawn({
        let stopped = Arc::clone(&stopped);
        async move {
            let sender = UdpSocket::bind("127.0.0.1:0").await.expect("a sender");
            let mut sent = 0i32;
            // A batch at least goes out after the stop, to a closed port.
            loop {
                let last = stopped.load(Ordering::SeqCst);
                for _ in 0..8 {
                    let packet = rosc::OscPacket::Message(rosc::OscMessage {
                        addr: "/in".into(),
                        args: vec![OscType::Int(sent)],
                    });
                    let bytes = rosc::encoder::encode(&packet).expect("encodes");
                    // Once the listener is closed the kernel may refuse.
                    let _ = sender.send_to(&bytes, to).await;
                    sent += 1;
                }
                if last {
                    return sent;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    wait_until(|| get(&osc.stats().messages_in) >= 200, WAIT, "the stream reached the bridge")
        .await;
    tokio::time::timeout(WAIT, running.stop()).await.expect("the stop ends in time");
    let taken_in = get(&osc.stats().messages_in);
    stopped.store(true, Ordering::SeqCst);
    // The sender was still sending when the stop returned: the stop cut
    // the stream, whatever the bridge had in hand at that moment.
    let sent = sending.await.expect("the sender ends");
    assert!(taken_in <= sent as u64, "took in {taken_in} of {sent} sent");

    let route = &routes[0];
    let counted_drops = get(&osc.stats().inbound_queue_full)
        + get(&bridge_stats.shutdown_dropped)
        + get(&route.queue_full)
        + get(&route.shutdown_dropped)
        + get(&osc.stats().send_errors);
    let received = reading.await.expect("the reader ends");
    let mut values = std::collections::HashSet::new();
    for message in &received {
        assert_eq!(message.addr, "/out");
        let value = message.args.first().cloned().map(|arg| format!("{arg:?}"));
        assert!(values.insert(value.clone()), "{value:?} arrived twice");
    }
    assert_eq!(
        received.len() as u64,
        taken_in - counted_drops,
        "received = taken in - counted drops"
    );
    assert_eq!(get(&osc.stats().messages_out), received.len() as u64, "every value sent arrived");
}

/// With both `max_rate` and `delay_ms`, the value `max_rate` lets go still
/// waits its delay (here longer than the test), and at the stop it is
/// counted as dropped rather than sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_route_with_a_delay_still_waits_its_delay() {
    let route = r#"
[[route]]
name = "slow"
from = { osc = "/in" }
to = [{ osc = "/out" }]
max_rate = 30
delay_ms = 60000
"#;
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscReceiver::bind().await;
    let running = start(config(&server, &td, "127.0.0.1:0", route)).await;
    let routes = running.routes();
    send_osc(osc_port(&running), "/in", vec![OscType::Int(1)]).await;
    wait_until(|| get(&routes[0].matched) == 1, WAIT, "the value routed").await;
    assert_eq!(get(&routes[0].sent), 0, "it waits for its delay");

    running.stop().await;
    assert_eq!(get(&routes[0].shutdown_dropped), 1, "the delayed value is counted");
    assert_eq!(get(&routes[0].sent), 0);
    assert_eq!(
        td.try_next(Duration::from_millis(200)).await,
        None,
        "nothing reached TouchDesigner"
    );
}

/// Outputs in their `delay_ms` when a reload comes: one whose route and
/// destination survive it goes out on time through the new OSC endpoint
/// (here to TouchDesigner's new address, with a new target listed before
/// it) and counts on the new counters; one whose route the reload removed
/// is dropped and counted as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_sends_delayed_outputs_of_surviving_routes_through_the_new_links() {
    let delayed = |name: &str, from: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nfrom = {{ osc = \"{from}\" }}\nto = [{{ osc = \"/out{from}\", target = \"td\" }}]\ndelay_ms = 8000\n"
        )
    };
    let both = format!("{}{}", delayed("kept", "/kept"), delayed("removed", "/removed"));
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscReceiver::bind().await;
    let moved_td = OscReceiver::bind().await;
    let running = start(config(&server, &td, "127.0.0.1:0", &both)).await;
    let stats = running.stats.clone();
    send_osc(osc_port(&running), "/kept", vec![OscType::Int(1)]).await;
    send_osc(osc_port(&running), "/removed", vec![OscType::Int(2)]).await;
    let routes = running.routes();
    wait_until(
        || get(&routes[0].matched) == 1 && get(&routes[1].matched) == 1,
        WAIT,
        "both routed into their delay",
    )
    .await;

    let listed_first = OscReceiver::bind().await;
    let targets = format!("a_first = \"{}\"\ntd = \"{}\"", listed_first.addr(), moved_td.addr());
    let moved = config_with_targets(&server, "127.0.0.1:0", &targets, &delayed("kept", "/kept"));
    let report = running.reload(moved).await;
    assert_eq!(report, ReloadReport { osc_restarted: true, routes: 1, ..ReloadReport::default() });
    assert_eq!(get(&stats.stale_outputs), 1, "the removed route's output is counted");

    // The delay is long enough for a slow machine to start, route and
    // reload well before it ends.
    let arrived = moved_td.next(WAIT * 2).await;
    assert_eq!((arrived.addr.as_str(), arrived.args), ("/out/kept", vec![OscType::Float(1.0)]));
    // Counted once the output is queued, which can be a moment after the
    // sender task has already put it on the wire.
    let routes = running.routes();
    wait_until(|| get(&routes[0].sent) == 1, WAIT, "counted on the new table's counters").await;
    assert_eq!(moved_td.try_next(Duration::from_millis(200)).await, None);
    assert_eq!(td.try_next(Duration::from_millis(200)).await, None, "nothing to the old address");
    assert_eq!(listed_first.try_next(Duration::from_millis(200)).await, None, "nor the new target");
    running.stop().await;
}

/// A reload that moves OSC to a port someone else holds, and adds a
/// target listed before TouchDesigner's: the reload says OSC failed, OSC
/// keeps its old settings, and the new route still reaches TouchDesigner
/// by name. Once the port is free, the same reload succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_a_taken_osc_port_keeps_the_old_settings_and_the_next_reload_retries() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscReceiver::bind().await;
    let other = OscReceiver::bind().await;
    let running = start(config(&server, &td, "127.0.0.1:0", PASS_THROUGH)).await;
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").expect("hold a port");
    let wanted = holder.local_addr().expect("address");
    let targets = format!("an_earlier_one = \"{}\"\ntd = \"{}\"", other.addr(), td.addr());
    let to_td = PASS_THROUGH.replace(r#"{ osc = "/out" }"#, r#"{ osc = "/out", target = "td" }"#);
    let moved = config_with_targets(&server, &wanted.to_string(), &targets, &to_td);

    let report = running.reload(moved.clone()).await;
    assert_eq!(
        report,
        ReloadReport { failed: vec!["osc"], routes: 1, ..ReloadReport::default() },
        "the port is taken"
    );
    let kept = osc_port(&running);
    assert_ne!(kept, wanted);
    send_osc(kept, "/in", vec![OscType::Int(1)]).await;
    assert_eq!(td.next(WAIT).await.args, vec![OscType::Float(1.0)]);

    drop(holder);
    let report = running.reload(moved).await;
    assert_eq!(report, ReloadReport { osc_restarted: true, routes: 1, ..ReloadReport::default() });
    assert_eq!(osc_port(&running), wanted);
    send_osc(wanted, "/in", vec![OscType::Int(2)]).await;
    assert_eq!(td.next(WAIT).await.args, vec![OscType::Float(2.0)]);
    assert_eq!(other.try_next(Duration::from_millis(200)).await, None, "nothing went astray");
    running.stop().await;
}

/// A `wss://` link whose CA file cannot be read fails the start with an
/// error that names the setting, instead of retrying a doomed connection.
#[tokio::test]
async fn a_missing_socketcluster_ca_file_fails_the_start_and_names_the_key() {
    let toml = r#"
[socketcluster]
url = "wss://127.0.0.1:9/socketcluster/"
ca_file = "/nonexistent/scbridge-test-ca.pem"
"#;
    let config = Config::from_toml(toml, "test.toml").expect("valid test config");
    let error = bridge::start(config).await.err().expect("the start fails");
    let text = error.to_string();
    assert!(text.starts_with("socketcluster.ca_file: "), "{text}");
    assert!(text.contains("/nonexistent/scbridge-test-ca.pem"), "{text}");
}

/// A reload to a `wss://` server whose CA file is missing keeps the
/// running SocketCluster link as it is: no reconnect, the reload says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_an_unusable_socketcluster_ca_file_keeps_the_running_link() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let td = OscReceiver::bind().await;
    let running = start(config(&server, &td, "127.0.0.1:0", PASS_THROUGH)).await;
    let toml = format!(
        "[socketcluster]\nurl = \"wss://127.0.0.1:{}/socketcluster/\"\nca_file = \"/nonexistent/ca.pem\"\n[osc]\nlisten = [\"127.0.0.1:0\"]\n[osc.targets]\ntd = \"{}\"\n{PASS_THROUGH}",
        server.port(),
        td.addr()
    );
    let broken = Config::from_toml(&toml, "test.toml").expect("valid test config");
    let report = running.reload(broken).await;
    assert_eq!(report.failed, vec!["socketcluster"]);
    assert!(!report.socketcluster_reconnected);
    assert!(running.sc().link_state().borrow().is_connected(), "the running link was kept");
    running.stop().await;
}
