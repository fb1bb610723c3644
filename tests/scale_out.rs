//! Several scbridge instances side by side, as `docs/scale-out.md` describes
//! them, against a real socketcluster-server and a real Mosquitto:
//!
//! - two real `scbridge` processes in one MQTT 5 shared subscription share
//!   the messages of one filter: each message reaches SocketCluster exactly
//!   once, both do some of the work, and the survivor takes all of it once
//!   the other is killed;
//! - the same two processes on a plain (unshared) filter: every message
//!   reaches SocketCluster twice, which is why the docs forbid it;
//! - split routing tables linked through one cables channel: with distinct
//!   cables client ids each message passes once; with the same id the second
//!   bridge takes the first one's messages for its own echoes and drops them;
//! - SocketCluster's own cluster: two real socketcluster-servers joined by
//!   the real scc-broker and scc-broker-client. A bridge on one server hears
//!   a client on the other, and is heard by clients on both.

mod support;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use rosc::{OscMessage, OscType};
use scbridge::bridge::{self, Running};
use scbridge::config::Config;
use scbridge::stats::get;
use serde_json::Value;
use support::daemon::{Daemon, TempDir};
use support::mosquitto::{self, Mosquitto, TestSubscriber};
use support::sc_peer::{JsClient, ScServer, ScServerOptions, SccBroker, wait_until};
use support::udp::{OscReceiver, send_osc};
use tokio::time::{sleep, timeout};

const WAIT: Duration = Duration::from_secs(10);

/// How long to keep watching for copies after the expected count arrived.
const QUIET: Duration = Duration::from_millis(500);

/// The SocketCluster channel the MQTT messages are routed to.
const CHANNEL: &str = "sensors";

/// The real SocketCluster server and MQTT broker every instance shares.
struct Site {
    server: ScServer,
    broker: Mosquitto,
    dir: TempDir,
}

impl Site {
    async fn start() -> Site {
        Site {
            server: ScServer::start(ScServerOptions::new()).await,
            broker: Mosquitto::start().await,
            dir: TempDir::new("scale-out"),
        }
    }

    /// A config for one instance: MQTT 5 with its own client id, one route
    /// from `filter` (QoS 1) to the SocketCluster channel [`CHANNEL`].
    fn mqtt_to_sc_config(&self, client_id: &str, filter: &str) -> String {
        format!(
            r#"
[socketcluster]
url = "{sc}"
reconnect_delay_ms = 200

[mqtt]
url = "{mqtt}"
protocol = "5"
client_id = "{client_id}"
keepalive_secs = 5
reconnect_delay_ms = 200
reconnect_max_delay_ms = 400
availability_topic = "{availability}"

[[route]]
name = "sensors to socketcluster"
from = {{ mqtt = "{filter}", qos = 1 }}
to = [{{ sc_channel = "{CHANNEL}" }}]
"#,
            sc = self.server.url(),
            mqtt = self.broker.url(),
            availability = availability_topic(client_id),
        )
    }

    /// Starts the real binary with `config` and waits until it is subscribed
    /// on the broker and connected to the server; returns it with the id of
    /// its SocketCluster socket and its availability subscriber.
    async fn start_instance(&self, client_id: &str, config: &str) -> Instance {
        let path = self.dir.path().join(format!("{client_id}.toml"));
        std::fs::write(&path, config).expect("write the instance's config");
        // Subscribed before the start: `online` is published right after
        // the SUBSCRIBE on the same connection, so once it arrives the
        // broker has taken the subscription.
        let mut availability =
            mosquitto::subscribe(self.broker.port(), &availability_topic(client_id)).await;
        let mut daemon = Daemon::start(&path, &[]);
        let exited = tokio::select! {
            online = availability.next_message(WAIT) => {
                assert_eq!(online.text(), "online", "{client_id}: the availability");
                None
            }
            status = daemon.child.wait() => Some(status),
        };
        if let Some(status) = exited {
            // The failure path only: give the log reader a moment to take in
            // the last words for the panic message below.
            sleep(Duration::from_millis(200)).await;
            panic!("{client_id} exited ({status:?}) before it was online:\n{}", daemon.log());
        }
        let socket_id = self.server.next_socket_id(WAIT).await;
        Instance { client_id: client_id.to_owned(), daemon, socket_id, availability, _path: path }
    }

    /// Every publish the server accepted on [`CHANNEL`] so far, as
    /// (publishing socket id, `seq` of the data).
    fn sc_publishes(&self) -> Vec<(String, u64)> {
        self.server
            .lines_so_far()
            .iter()
            .filter_map(|line| {
                let mut words = line.splitn(4, ' ');
                if words.next()? != "PUBLISH" {
                    return None;
                }
                let socket = words.next()?.to_owned();
                if words.next()? != CHANNEL {
                    return None;
                }
                let data: Value = serde_json::from_str(words.next()?).ok()?;
                Some((socket, data.get("seq")?.as_u64()?))
            })
            .collect()
    }

    /// Waits until the server has accepted `total` publishes on
    /// [`CHANNEL`], then a little longer so that late copies would show too.
    async fn wait_for_publishes(&self, total: usize) -> Vec<(String, u64)> {
        wait_until(
            || self.sc_publishes().len() >= total,
            WAIT,
            &format!("{total} publishes on `{CHANNEL}` reached the server"),
        )
        .await;
        sleep(QUIET).await;
        self.sc_publishes()
    }
}

/// One running `scbridge run`.
struct Instance {
    client_id: String,
    daemon: Daemon,
    /// Its connection's id on the SocketCluster server.
    socket_id: String,
    /// Its availability topic (`online`, or the last will `offline`).
    availability: TestSubscriber,
    _path: PathBuf,
}

impl Instance {
    /// SIGKILL, as a crash or the OOM killer would; waits until the broker
    /// has noticed (it publishes the instance's last will).
    async fn kill(&mut self) {
        self.daemon.child.kill().await.expect("kill -9 scbridge");
        let will = self.availability.next_message(WAIT).await;
        assert_eq!(will.text(), "offline", "{}: the last will", self.client_id);
    }

    /// SIGTERM, as systemd would, and the clean exit.
    async fn stop(mut self) {
        self.daemon.signal("TERM").await;
        let code = self.daemon.wait(WAIT).await;
        assert_eq!(code, 0, "{}: {}", self.client_id, self.daemon.log());
    }
}

fn availability_topic(client_id: &str) -> String {
    format!("scbridge/{client_id}/availability")
}

/// Publishes `{"seq": i}` for every `i` in `seqs` from one MQTT client at
/// QoS 1, spread over the topics `sensors/0` … `sensors/3`, and returns once
/// the broker has acknowledged every one.
async fn publish_seqs(port: u16, seqs: Range<u64>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
    let total = seqs.end - seqs.start;
    let options =
        MqttOptions::new(format!("scale-out-pub-{}", std::process::id()), "127.0.0.1", port);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let sender = client.clone();
    let publishing = tokio::spawn(async move {
        for seq in seqs {
            let topic = format!("sensors/{}", seq % 4);
            let payload = format!(r#"{{"seq":{seq}}}"#);
            sender.publish(topic, QoS::AtLeastOnce, false, payload).await.expect("queue a PUBLISH");
        }
    });
    let acknowledged = async {
        let mut acks = 0;
        loop {
            match eventloop.poll().await.expect("the test publisher's connection") {
                Event::Incoming(Packet::PubAck(_)) => {
                    acks += 1;
                    if acks == total {
                        client.try_disconnect().expect("queue the DISCONNECT");
                    }
                }
                Event::Outgoing(Outgoing::Disconnect) => return,
                _ => {}
            }
        }
    };
    timeout(WAIT, acknowledged)
        .await
        .unwrap_or_else(|_| panic!("the broker did not acknowledge {total} publishes in {WAIT:?}"));
    publishing.await.expect("the publishing task");
}

/// How often each `seq` arrived, and how many messages each socket sent.
fn tally(publishes: &[(String, u64)]) -> (BTreeMap<u64, usize>, BTreeMap<String, usize>) {
    let mut by_seq = BTreeMap::new();
    let mut by_socket = BTreeMap::new();
    for (socket, seq) in publishes {
        *by_seq.entry(*seq).or_default() += 1;
        *by_socket.entry(socket.clone()).or_default() += 1;
    }
    (by_seq, by_socket)
}

/// Asserts that every `seq` in `seqs` arrived exactly once and nothing else
/// arrived.
fn assert_each_exactly_once(by_seq: &BTreeMap<u64, usize>, seqs: Range<u64>) {
    let copies: Vec<(u64, usize)> =
        by_seq.iter().filter(|(_, n)| **n != 1).map(|(seq, n)| (*seq, *n)).collect();
    assert!(copies.is_empty(), "(seq, copies) that did not arrive exactly once: {copies:?}");
    let missing: Vec<u64> = seqs.clone().filter(|seq| !by_seq.contains_key(seq)).collect();
    assert!(missing.is_empty(), "never arrived: {missing:?}");
    let strangers: Vec<u64> = by_seq.keys().copied().filter(|seq| !seqs.contains(seq)).collect();
    assert!(strangers.is_empty(), "not published in this round: {strangers:?}");
}

/// Two instances in one shared subscription (`$share/bridges/...`) split the
/// messages of the filter between them: each message reaches SocketCluster
/// exactly once and both instances carry some. After one is killed, the
/// broker gives the whole filter to the survivor, again exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_shares_mqtt_messages_between_two_bridges_exactly_once() {
    let site = Site::start().await;
    let filter = "$share/bridges/sensors/+";
    let mut a = site.start_instance("bridge-a", &site.mqtt_to_sc_config("bridge-a", filter)).await;
    let b = site.start_instance("bridge-b", &site.mqtt_to_sc_config("bridge-b", filter)).await;

    publish_seqs(site.broker.port(), 0..200).await;
    let publishes = site.wait_for_publishes(200).await;
    let (by_seq, by_socket) = tally(&publishes);
    assert_each_exactly_once(&by_seq, 0..200);
    let share = |instance: &Instance| by_socket.get(&instance.socket_id).copied().unwrap_or(0);
    assert!(
        share(&a) > 0 && share(&b) > 0 && share(&a) + share(&b) == 200,
        "both instances must carry a share: {by_socket:?} (a = {}, b = {})",
        a.socket_id,
        b.socket_id
    );

    a.kill().await;
    publish_seqs(site.broker.port(), 200..300).await;
    let publishes = site.wait_for_publishes(300).await;
    let after: Vec<(String, u64)> = publishes.into_iter().filter(|(_, seq)| *seq >= 200).collect();
    let (by_seq, by_socket) = tally(&after);
    assert_each_exactly_once(&by_seq, 200..300);
    assert_eq!(
        by_socket.into_iter().collect::<Vec<_>>(),
        vec![(b.socket_id.clone(), 100)],
        "only the survivor carries the rest"
    );
    b.stop().await;
}

/// What the docs forbid: two instances consuming the same plain filter and
/// publishing to the same channel. The broker gives each of them every
/// message, so SocketCluster gets every message twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_on_the_same_plain_filter_deliver_every_message_twice() {
    let site = Site::start().await;
    let filter = "sensors/+";
    let a = site.start_instance("bridge-a", &site.mqtt_to_sc_config("bridge-a", filter)).await;
    let b = site.start_instance("bridge-b", &site.mqtt_to_sc_config("bridge-b", filter)).await;

    publish_seqs(site.broker.port(), 0..50).await;
    let publishes = site.wait_for_publishes(100).await;
    let (by_seq, by_socket) = tally(&publishes);
    assert_eq!(publishes.len(), 100, "{by_socket:?}");
    assert!(by_seq.values().all(|n| *n == 2), "each message twice: {by_seq:?}");
    assert_eq!(by_socket.get(&a.socket_id), Some(&50), "{by_socket:?}");
    assert_eq!(by_socket.get(&b.socket_id), Some(&50), "{by_socket:?}");
    a.stop().await;
    b.stop().await;
}

/// An in-process bridge on the site's server with a cables channel `show`.
async fn cables_bridge(site: &Site, cables_id: &str, rest: &str) -> Running {
    let text = format!(
        r#"
[socketcluster]
url = "{sc}"
reconnect_delay_ms = 200

[cables]
channel = "show"
client_id = "{cables_id}"
{rest}"#,
        sc = site.server.url(),
    );
    start_bridge(&text).await
}

/// Starts a bridge in this process and waits until its links are up.
async fn start_bridge(text: &str) -> Running {
    let config = Config::from_toml(text, "scale-out.toml").expect("a valid config");
    let running = bridge::start(config).await.expect("the bridge starts");
    let mut link = running.sc().link_state();
    timeout(WAIT, link.wait_for(|state| state.is_connected()))
        .await
        .expect("connected to the server")
        .expect("the link is alive");
    if let Some(mqtt) = running.mqtt() {
        let mut state = mqtt.link_state();
        timeout(WAIT, state.wait_for(|s| *s == scbridge::mqtt::MqttLinkState::Connected))
            .await
            .expect("connected to the broker")
            .expect("the MQTT link is alive");
    }
    running
}

/// Split routing tables: the edge instance owns MQTT `kitchen/+` and
/// publishes it as cables objects; the show instance owns the cables side
/// toward TouchDesigner. With distinct cables client ids the show instance
/// passes each message on once; with the same id it takes them for its own
/// echoes and drops them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_routing_tables_need_distinct_cables_client_ids() {
    let site = Site::start().await;
    let td = OscReceiver::bind().await;
    let edge_routes = format!(
        r#"
[mqtt]
url = "{mqtt}"
protocol = "5"
client_id = "edge"
availability_topic = ""

[[route]]
name = "kitchen to cables"
from = {{ mqtt = "kitchen/+" }}
to = [{{ cables_object = "kitchen/{{1}}" }}]
"#,
        mqtt = site.broker.url(),
    );
    let show_routes = format!(
        r#"
[osc.targets]
td = "{td}"

[[route]]
name = "cables to touchdesigner"
from = {{ cables_object = "kitchen/*" }}
to = [{{ osc = "/td/kitchen/*" }}]
"#,
        td = td.addr(),
    );

    for (show_id, passes) in [("show-1", true), ("edge-1", false)] {
        let subscribes = site.server.count_lines("SUBSCRIBE ");
        let disconnects = site.server.count_lines("DISCONNECT ");
        let edge = cables_bridge(&site, "edge-1", &edge_routes).await;
        let show = cables_bridge(&site, show_id, &show_routes).await;
        // Both hold `show/objects` before anything is published.
        wait_until(
            || site.server.count_lines("SUBSCRIBE ") >= subscribes + 6,
            WAIT,
            "both bridges subscribed their cables channels",
        )
        .await;
        for (room, value) in [("temp", 21.5), ("humidity", 40.0)] {
            mosquitto::publish(
                site.broker.port(),
                &format!("kitchen/{room}"),
                value.to_string(),
                1,
                false,
            )
            .await;
        }
        if passes {
            for (room, value) in [("temp", 21.5), ("humidity", 40.0)] {
                assert_eq!(
                    td.next(WAIT).await,
                    OscMessage {
                        addr: format!("/td/kitchen/{room}"),
                        args: vec![OscType::Float(value)]
                    }
                );
            }
            assert_eq!(td.try_next(QUIET).await, None, "each message once");
            assert_eq!(get(&show.stats.own_echoes), 0);
        } else {
            wait_until(
                || get(&show.stats.own_echoes) == 2,
                WAIT,
                "the show bridge dropped both envelopes as its own echoes",
            )
            .await;
            assert_eq!(td.try_next(QUIET).await, None, "nothing reaches TouchDesigner");
        }
        // The edge bridge drops the server's echo of its own envelopes.
        wait_until(|| get(&edge.stats.own_echoes) == 2, WAIT, "the edge dropped its echoes").await;
        edge.stop().await;
        show.stop().await;
        wait_until(
            || site.server.count_lines("DISCONNECT ") >= disconnects + 2,
            WAIT,
            "both bridges disconnected",
        )
        .await;
        site.server.consume_all();
    }
}

/// SocketCluster's own cluster on loopback: two real socketcluster-servers
/// joined by the real scc-broker, each through scc-broker-client. scc-state
/// is not on npm, so each server is given the broker list that it would
/// hand out; nothing stands in for it. The bridge connects to server A
/// only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_on_one_server_of_a_cluster_hears_the_other_and_is_heard_on_both() {
    let (_no_state_server, state_port) = refusing_port();
    let broker = SccBroker::start(state_port).await;
    let a = ScServer::start(broker.server_options()).await;
    let b = ScServer::start(broker.server_options()).await;
    let td = OscReceiver::bind().await;
    let text = format!(
        r#"
[socketcluster]
url = "{a}"
reconnect_delay_ms = 200

[osc]
listen = ["127.0.0.1:0"]

[osc.targets]
td = "{td}"

[[route]]
name = "cues from the cluster"
from = {{ sc_channel = "stage/cues" }}
to = [{{ osc = "/cues", target = "td" }}]

[[route]]
name = "faders to the cluster"
from = {{ osc = "/faders/*" }}
to = [{{ sc_channel = "stage/faders" }}]
"#,
        a = a.url(),
        td = td.addr(),
    );
    let bridge = start_bridge(&text).await;

    // What a client publishes on B reaches the bridge on A, once each, in
    // order. Publishes before A holds the channel at the broker would be
    // lost, as in any SCC cluster.
    a.next_line_with_prefix("SCC_SUBSCRIBE stage/cues", WAIT).await;
    for cue in [1, 2, 3] {
        let mut publisher =
            JsClient::publish(b.port(), "stage/cues", Some(&cue.to_string()), 1, false).await;
        assert_eq!(publisher.wait_exit().await, 0, "the publish on server B was acknowledged");
    }
    for cue in [1.0, 2.0, 3.0] {
        let expected = OscMessage { addr: "/cues".to_owned(), args: vec![OscType::Float(cue)] };
        assert_eq!(td.next(WAIT).await, expected);
    }
    assert_eq!(td.try_next(QUIET).await, None, "each cue once");

    // What the bridge publishes on A reaches clients on A and on B.
    let on_a = JsClient::subscribe(a.port(), &["stage/faders"], &[]).await;
    let on_b = JsClient::subscribe(b.port(), &["stage/faders"], &[]).await;
    b.next_line_with_prefix("SCC_SUBSCRIBE stage/faders", WAIT).await;
    let listen = bridge.osc().expect("OSC is configured").listen_addrs()[0];
    send_osc(listen, "/faders/1", vec![OscType::Float(0.25)]).await;
    for (server, client) in [("A", &on_a), ("B", &on_b)] {
        let line = client.next_line_with_prefix("MSG ", WAIT).await;
        let message: Value = serde_json::from_str(&line["MSG ".len()..]).expect("MSG is JSON");
        assert_eq!(
            message,
            serde_json::json!({"channel": "stage/faders", "data": 0.25}),
            "on server {server}"
        );
    }
    sleep(QUIET).await;
    assert_eq!(on_a.messages().len(), 1, "one copy on server A");
    assert_eq!(on_b.messages().len(), 1, "one copy on server B");
    bridge.stop().await;
}

/// A loopback port that is bound but not listening: connecting to it is
/// refused, and no other test can take it while the socket lives.
fn refusing_port() -> (socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a TCP socket");
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    socket.bind(&any_port.into()).expect("bind a loopback port");
    let bound = socket.local_addr().expect("its address");
    let port = bound.as_socket().expect("an IP address").port();
    (socket, port)
}
