//! The OSC endpoint over real UDP sockets on loopback: what arrives on a
//! listener becomes a `Message`, what is handed to the endpoint leaves as
//! OSC with the types the route asked for, and every drop is counted.
//! Every socket binds port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use rosc::{OscBundle, OscMessage, OscPacket, OscTime, OscType};
use scbridge::message::{Body, Message, Refused, SourceKind};
use scbridge::osc::{
    NumberType, OscConfig, OscEndpoint, OscError, OscHandle, OscOut, OscOutOptions, OscTarget,
    TriggerStyle,
};
use scbridge::stats::get;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long any single expected event may take before the test fails.
const WAIT: Duration = Duration::from_secs(5);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A running endpoint, its inbound queue, and a guard that stops it.
struct Running {
    handle: OscHandle,
    inbound: mpsc::Receiver<Message>,
    shutdown: CancellationToken,
    _stop: DropGuard,
}

async fn start(config: OscConfig, inbound_capacity: usize) -> Running {
    let (tx, inbound) = mpsc::channel(inbound_capacity);
    let shutdown = CancellationToken::new();
    let handle =
        OscEndpoint::start(&config, tx, shutdown.clone()).await.expect("the endpoint starts");
    Running { handle, inbound, _stop: shutdown.clone().drop_guard(), shutdown }
}

async fn start_listening() -> Running {
    start(OscConfig { listen: vec![loopback()], ..OscConfig::default() }, 64).await
}

async fn start_sending_to(targets: &[SocketAddr]) -> Running {
    let targets = targets
        .iter()
        .enumerate()
        .map(|(index, &address)| OscTarget::new(format!("t{index}"), address))
        .collect();
    start(OscConfig { targets, ..OscConfig::default() }, 64).await
}

async fn peer() -> UdpSocket {
    UdpSocket::bind(loopback()).await.expect("a loopback socket")
}

fn message(addr: &str, args: Vec<OscType>) -> OscPacket {
    OscPacket::Message(OscMessage { addr: addr.into(), args })
}

fn bundle(content: Vec<OscPacket>) -> OscPacket {
    OscPacket::Bundle(OscBundle { timetag: OscTime { seconds: 0, fractional: 1 }, content })
}

async fn send_packet(from: &UdpSocket, to: SocketAddr, packet: &OscPacket) {
    let bytes = rosc::encoder::encode(packet).expect("encodes");
    from.send_to(&bytes, to).await.expect("sent");
}

async fn next_message(running: &mut Running) -> Message {
    timeout(WAIT, running.inbound.recv())
        .await
        .expect("a message arrives in time")
        .expect("the inbound queue is open")
}

/// The next datagram on `socket`, decoded; it must be a single message.
async fn next_osc(socket: &UdpSocket) -> OscMessage {
    let mut buf = vec![0u8; 65_536];
    let (len, _) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("a datagram arrives in time")
        .expect("received");
    match rosc::decoder::decode_udp(&buf[..len]).expect("valid OSC").1 {
        OscPacket::Message(message) => message,
        OscPacket::Bundle(bundle) => panic!("expected a message, got {bundle:?}"),
    }
}

/// Polls a counter until it reaches `value`: counters move after the
/// datagram they count has left, so the arrival alone does not order them.
async fn wait_for_count(counter: &AtomicU64, value: u64) {
    let reached = timeout(WAIT, async {
        while get(counter) < value {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "counter stayed at {} instead of reaching {value}", get(counter));
}

fn out(target: usize, address: &str, value: Value, options: OscOutOptions) -> OscOut {
    OscOut { target, address: address.into(), body: Body::Value(value), options: Arc::new(options) }
}

/// A float32 argument arrives as an OSC-sourced value message named after
/// the address, with the shortest decimal of the float.
#[tokio::test]
async fn a_float_sent_to_the_listener_arrives_as_a_value_message() {
    let mut running = start_listening().await;
    let sender = peer().await;
    let listener = running.handle.listen_addrs()[0];
    send_packet(&sender, listener, &message("/fader/1", vec![OscType::Float(0.5)])).await;
    send_packet(&sender, listener, &message("/fader/2", vec![OscType::Float(0.1)])).await;

    assert_eq!(
        next_message(&mut running).await,
        Message::value(SourceKind::Osc, "/fader/1", json!(0.5))
    );
    let second = next_message(&mut running).await;
    assert_eq!(second, Message::value(SourceKind::Osc, "/fader/2", json!(0.1)));
    assert_eq!(second.body, Body::Value(serde_json::from_str("0.1").unwrap()));
    assert_eq!(get(&running.handle.stats().messages_in), 2);
}

/// The messages of a bundle, nested bundles included, arrive one by one in
/// the order the bundle holds them.
#[tokio::test]
async fn a_bundle_of_three_messages_arrives_as_three_messages_in_order() {
    let mut running = start_listening().await;
    let sender = peer().await;
    let packet = bundle(vec![
        message("/a", vec![OscType::Int(1)]),
        bundle(vec![message("/b", vec![OscType::Int(2)])]),
        message("/c", vec![OscType::Int(3)]),
    ]);
    send_packet(&sender, running.handle.listen_addrs()[0], &packet).await;

    for (name, value) in [("/a", 1), ("/b", 2), ("/c", 3)] {
        assert_eq!(
            next_message(&mut running).await,
            Message::value(SourceKind::Osc, name, json!(value))
        );
    }
    assert_eq!(get(&running.handle.stats().packets_in), 1);
    assert_eq!(get(&running.handle.stats().messages_in), 3);
}

/// Int, string, bool, blob and no-argument messages map to the JSON the
/// rest of the bridge expects (blobs in SocketCluster's base64 form).
#[tokio::test]
async fn int_string_bool_and_blob_arguments_map_to_json() {
    let mut running = start_listening().await;
    let sender = peer().await;
    let listener = running.handle.listen_addrs()[0];
    send_packet(&sender, listener, &message("/int", vec![OscType::Int(7)])).await;
    send_packet(
        &sender,
        listener,
        &message(
            "/mixed",
            vec![
                OscType::Int(-3),
                OscType::String("hi".into()),
                OscType::Bool(true),
                OscType::Bool(false),
                OscType::Blob(vec![1, 2, 3]),
            ],
        ),
    )
    .await;
    send_packet(&sender, listener, &message("/bang", vec![])).await;

    let int = next_message(&mut running).await;
    assert_eq!(int, Message::value(SourceKind::Osc, "/int", json!(7)));
    assert!(matches!(&int.body, Body::Value(v) if v.is_i64()), "an integer, not 7.0");
    assert_eq!(
        next_message(&mut running).await,
        Message::value(
            SourceKind::Osc,
            "/mixed",
            json!([-3, "hi", true, false, {"base64": true, "data": "AQID"}])
        )
    );
    assert_eq!(
        next_message(&mut running).await,
        Message::value(SourceKind::Osc, "/bang", json!(null))
    );
}

/// Garbage, an oversized packet and a bundle nested too deeply are counted
/// and dropped, and the listener still delivers the good packet after them.
#[tokio::test]
async fn garbage_and_oversized_packets_are_counted_and_a_good_packet_still_arrives() {
    let config =
        OscConfig { listen: vec![loopback()], max_packet_bytes: 4096, ..OscConfig::default() };
    let mut running = start(config, 64).await;
    let sender = peer().await;
    let listener = running.handle.listen_addrs()[0];
    // Built by hand: a hundred bundles, each holding the next.
    let mut deep = b"/a\0\0,\0\0\0".to_vec();
    for _ in 0..100 {
        let mut outer = b"#bundle\0\0\0\0\0\0\0\0\x01".to_vec();
        outer.extend((deep.len() as u32).to_be_bytes());
        outer.extend(&deep);
        deep = outer;
    }
    assert!(deep.len() < 4096, "refused for its nesting, not its size");

    sender.send_to(b"\xffnot OSC at all\x00\x01", listener).await.expect("sent");
    send_packet(&sender, listener, &message("/big", vec![OscType::Blob(vec![7; 5000])])).await;
    sender.send_to(&deep, listener).await.expect("sent");
    send_packet(&sender, listener, &message("/after", vec![OscType::Float(1.0)])).await;

    assert_eq!(
        next_message(&mut running).await,
        Message::value(SourceKind::Osc, "/after", json!(1.0))
    );
    let stats = running.handle.stats();
    assert_eq!(get(&stats.decode_errors), 2);
    assert_eq!(get(&stats.oversized_packets), 1);
    assert_eq!(get(&stats.packets_in), 4);
    assert_eq!(get(&stats.messages_in), 1);
}

/// rosc alone would stop reading a bundle at its first bad element and hand
/// back the ones before it as if that were all; the listener reads on.
#[tokio::test]
async fn a_bad_element_in_a_bundle_is_counted_and_the_elements_around_it_arrive() {
    let mut running =
        start(OscConfig { listen: vec![loopback()], ..OscConfig::default() }, 64).await;
    let sender = peer().await;
    let listener = running.handle.listen_addrs()[0];
    let first = rosc::encoder::encode(&message("/first", vec![OscType::Int(1)])).expect("encodes");
    let truncated_args = b"/bad\0\0\0\0,f\0\0".to_vec();
    let last = rosc::encoder::encode(&message("/last", vec![OscType::Int(3)])).expect("encodes");
    let mut bundle = b"#bundle\0\0\0\0\0\0\0\0\x01".to_vec();
    for element in [&first, &truncated_args, &last] {
        bundle.extend((element.len() as u32).to_be_bytes());
        bundle.extend(element);
    }

    sender.send_to(&bundle, listener).await.expect("sent");

    assert_eq!(
        next_message(&mut running).await,
        Message::value(SourceKind::Osc, "/first", json!(1))
    );
    assert_eq!(
        next_message(&mut running).await,
        Message::value(SourceKind::Osc, "/last", json!(3))
    );
    let stats = running.handle.stats();
    assert_eq!(get(&stats.decode_errors), 1);
    assert_eq!(get(&stats.messages_in), 2);
}

/// A JSON object handed to the endpoint leaves as one message per key, with
/// float32 tags, which is what TouchDesigner's OSC In CHOP reads.
#[tokio::test]
async fn a_json_object_goes_out_as_split_messages_with_float32_tags() {
    let receiver = peer().await;
    let running = start_sending_to(&[receiver.local_addr().unwrap()]).await;
    let value = json!({"x": 0.5, "y": {"z": -2}, "on": true});
    running.handle.send(out(0, "/pos", value, OscOutOptions::default())).expect("queued");

    let mut received =
        vec![next_osc(&receiver).await, next_osc(&receiver).await, next_osc(&receiver).await];
    received.sort_by(|a, b| a.addr.cmp(&b.addr));
    assert_eq!(
        received,
        vec![
            OscMessage { addr: "/pos/on".into(), args: vec![OscType::Float(1.0)] },
            OscMessage { addr: "/pos/x".into(), args: vec![OscType::Float(0.5)] },
            OscMessage { addr: "/pos/y/z".into(), args: vec![OscType::Float(-2.0)] },
        ]
    );
    wait_for_count(&running.handle.stats().messages_out, 3).await;
}

/// Int32, double and a fixed type list "ifs" each give exactly the tags the
/// route asked for.
#[tokio::test]
async fn int32_double_and_fixed_type_options_produce_the_right_tags() {
    let receiver = peer().await;
    let running = start_sending_to(&[receiver.local_addr().unwrap()]).await;
    let int32 = OscOutOptions { numbers: NumberType::Int32, ..OscOutOptions::default() };
    let double = OscOutOptions { numbers: NumberType::Double, ..OscOutOptions::default() };
    let fixed = OscOutOptions {
        types: Some(OscOutOptions::parse_types("ifs").expect("valid")),
        ..OscOutOptions::default()
    };

    running.handle.send(out(0, "/int", json!([2.6, true]), int32)).expect("queued");
    assert_eq!(next_osc(&receiver).await.args, vec![OscType::Int(3), OscType::Int(1)]);
    running.handle.send(out(0, "/double", json!(0.1), double)).expect("queued");
    assert_eq!(next_osc(&receiver).await.args, vec![OscType::Double(0.1)]);
    running.handle.send(out(0, "/fixed", json!([1.4, "2.5", "x"]), fixed)).expect("queued");
    let fixed = next_osc(&receiver).await;
    assert_eq!(fixed.addr, "/fixed");
    assert_eq!(fixed.args, vec![OscType::Int(1), OscType::Float(2.5), OscType::String("x".into())]);
}

/// A trigger leaves as a message with no arguments, or with a single 1 when
/// the route asks for one.
#[tokio::test]
async fn a_trigger_goes_out_with_no_arguments() {
    let receiver = peer().await;
    let running = start_sending_to(&[receiver.local_addr().unwrap()]).await;
    let trigger = |options: OscOutOptions| OscOut {
        target: 0,
        address: "/go".into(),
        body: Body::Trigger,
        options: Arc::new(options),
    };

    running.handle.send(trigger(OscOutOptions::default())).expect("queued");
    assert_eq!(next_osc(&receiver).await, OscMessage { addr: "/go".into(), args: vec![] });
    let one = OscOutOptions { trigger: TriggerStyle::One, ..OscOutOptions::default() };
    running.handle.send(trigger(one)).expect("queued");
    assert_eq!(next_osc(&receiver).await.args, vec![OscType::Float(1.0)]);
}

/// A socket whose port answers every other sender as a closed port does:
/// connected to a peer of its own, it takes datagrams from that peer only,
/// so the kernel refuses the rest with ICMP port-unreachable. Unlike a
/// socket that was closed, it keeps the port, so no test running alongside
/// can bind it and be sent datagrams meant for nobody.
async fn deaf_socket() -> UdpSocket {
    let only_peer = peer().await;
    let deaf = peer().await;
    deaf.connect(only_peer.local_addr().unwrap()).await.expect("connected to its peer");
    deaf
}

/// A target nobody listens on, and a send the socket refuses, do not stop
/// the sender: the refusal is counted and the next message to a live target
/// arrives. (Linux does not report ICMP port-unreachable on an unconnected
/// UDP socket, so the closed port alone is not an error there; port 0 is a
/// send the kernel always refuses.)
#[tokio::test]
async fn a_failed_send_is_counted_and_the_next_message_to_a_live_target_still_arrives() {
    let nobody = deaf_socket().await;
    let unsendable = SocketAddr::from(([127, 0, 0, 1], 0));
    let receiver = peer().await;
    let targets = [nobody.local_addr().unwrap(), unsendable, receiver.local_addr().unwrap()];
    let running = start_sending_to(&targets).await;

    running.handle.send(out(0, "/nobody", json!(1), OscOutOptions::default())).expect("queued");
    running.handle.send(out(1, "/refused", json!(2), OscOutOptions::default())).expect("queued");
    running.handle.send(out(2, "/live", json!(3), OscOutOptions::default())).expect("queued");

    assert_eq!(
        next_osc(&receiver).await,
        OscMessage { addr: "/live".into(), args: vec![OscType::Float(3.0)] }
    );
    let stats = running.handle.stats();
    assert_eq!(get(&stats.send_errors), 1);
    wait_for_count(&stats.messages_out, 2).await;
    assert_eq!(get(&stats.messages_out), 2);
    drop(nobody);
}

/// A value the route's fixed types cannot take, and a target index that
/// does not exist, are counted as map errors and the sender keeps going.
#[tokio::test]
async fn a_value_that_cannot_be_mapped_is_counted_and_the_sender_keeps_going() {
    let receiver = peer().await;
    let running = start_sending_to(&[receiver.local_addr().unwrap()]).await;
    let two_floats = OscOutOptions {
        types: Some(OscOutOptions::parse_types("ff").expect("valid")),
        ..OscOutOptions::default()
    };

    running.handle.send(out(0, "/three", json!([1, 2, 3]), two_floats)).expect("queued");
    running.handle.send(out(9, "/nowhere", json!(1), OscOutOptions::default())).expect("queued");
    running.handle.send(out(0, "/ok", json!(4), OscOutOptions::default())).expect("queued");

    assert_eq!(
        next_osc(&receiver).await,
        OscMessage { addr: "/ok".into(), args: vec![OscType::Float(4.0)] }
    );
    assert_eq!(get(&running.handle.stats().map_errors), 2);
}

/// When the send queue is full, `send` hands the message back at once and
/// counts it, instead of waiting for the sender task.
#[tokio::test]
async fn a_full_send_queue_hands_the_message_back_and_counts_it() {
    let receiver = peer().await;
    let targets = vec![OscTarget::new("td", receiver.local_addr().unwrap())];
    let running = start(OscConfig { targets, queue_size: 1, ..OscConfig::default() }, 1).await;

    // No await between the sends: on this single-threaded test runtime the
    // sender task cannot drain the queue in between.
    running.handle.send(out(0, "/first", json!(1), OscOutOptions::default())).expect("queued");
    let refused = running.handle.send(out(0, "/second", json!(2), OscOutOptions::default()));
    match refused {
        Err(Refused::Full(back)) => assert_eq!(back.address, "/second"),
        other => panic!("expected the full queue to hand /second back, got {other:?}"),
    }
    assert_eq!(get(&running.handle.stats().outbound_queue_full), 1);
    assert_eq!(next_osc(&receiver).await.addr, "/first");
}

/// With nobody reading the inbound queue, messages beyond its capacity are
/// counted as inbound_queue_full, and the first one is still there.
#[tokio::test]
async fn a_full_inbound_queue_counts_inbound_queue_full() {
    let mut running =
        start(OscConfig { listen: vec![loopback()], ..OscConfig::default() }, 1).await;
    let sender = peer().await;
    let packet = bundle(vec![
        message("/1", vec![OscType::Int(1)]),
        message("/2", vec![OscType::Int(2)]),
        message("/3", vec![OscType::Int(3)]),
    ]);
    send_packet(&sender, running.handle.listen_addrs()[0], &packet).await;

    wait_for_count(&running.handle.stats().messages_in, 3).await;
    assert_eq!(get(&running.handle.stats().inbound_queue_full), 2);
    assert_eq!(next_message(&mut running).await, Message::value(SourceKind::Osc, "/1", json!(1)));
    assert!(running.inbound.try_recv().is_err(), "the other two were dropped");
}

/// An endpoint whose one target is its own listener, and that address.
///
/// The target must be named before the endpoint binds the listener, so the
/// port is borrowed from the kernel and released; a test running alongside
/// may take it in between, and then another port is tried.
async fn start_sending_to_its_own_listener() -> (Running, SocketAddr) {
    let mut last_error = None;
    for _ in 0..5 {
        let listen = std::net::UdpSocket::bind(loopback())
            .and_then(|probe| probe.local_addr())
            .expect("a free port");
        let config = OscConfig {
            listen: vec![listen],
            targets: vec![OscTarget::new("self", listen)],
            ..OscConfig::default()
        };
        let (tx, inbound) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        match OscEndpoint::start(&config, tx, shutdown.clone()).await {
            Ok(handle) => {
                let running =
                    Running { handle, inbound, _stop: shutdown.clone().drop_guard(), shutdown };
                return (running, listen);
            }
            Err(OscError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                last_error = Some(source);
            }
            Err(err) => panic!("the endpoint does not start: {err}"),
        }
    }
    panic!("every borrowed port was taken again: {last_error:?}");
}

/// A packet from the endpoint's own send socket to its own listener is
/// ignored and counted as own_echoes, so a target that loops back to a
/// listener cannot feed the bridge its own output.
#[tokio::test]
async fn a_packet_from_the_endpoints_own_send_socket_is_ignored() {
    let (mut running, listen) = start_sending_to_its_own_listener().await;

    let handle = running.handle.clone();
    handle.send(out(0, "/echo", json!(1), OscOutOptions::default())).expect("queued");
    let stats = handle.stats();
    wait_for_count(&stats.own_echoes, 1).await;
    assert_eq!(get(&stats.messages_in), 0);
    assert!(running.inbound.try_recv().is_err(), "the echo never reaches the bridge");

    // Another sender on the same machine is not mistaken for ourselves.
    let other = peer().await;
    send_packet(&other, listen, &message("/other", vec![OscType::Int(2)])).await;
    assert_eq!(
        next_message(&mut running).await,
        Message::value(SourceKind::Osc, "/other", json!(2))
    );
    assert_eq!(get(&stats.own_echoes), 1);
    assert!(handle.send_addr().ip().is_unspecified(), "bound to every interface");
}

/// Cancelling the shutdown token ends every task; afterwards `send` hands
/// messages back instead of queueing them for nobody.
#[tokio::test]
async fn the_tasks_end_when_shutdown_is_cancelled() {
    let receiver = peer().await;
    let config = OscConfig {
        listen: vec![loopback()],
        targets: vec![OscTarget::new("td", receiver.local_addr().unwrap())],
        ..OscConfig::default()
    };
    let running = start(config, 8).await;
    running.shutdown.cancel();
    timeout(WAIT, running.handle.stopped()).await.expect("the tasks end in time");
    assert!(matches!(
        running.handle.send(out(0, "/late", json!(1), OscOutOptions::default())),
        Err(Refused::ShuttingDown(_))
    ));
    assert_eq!(get(&running.handle.stats().outbound_queue_full), 0, "a stop is not a full queue");
}

/// A listener address that is already taken fails the start with an error
/// that names it.
#[tokio::test]
async fn a_busy_listen_address_fails_the_start_and_names_the_address() {
    let busy = peer().await;
    let addr = busy.local_addr().unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let config = OscConfig { listen: vec![addr], ..OscConfig::default() };
    let err = OscEndpoint::start(&config, tx, CancellationToken::new())
        .await
        .expect_err("the port is taken");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

/// With an allow-list, a sender outside it is counted and not heard, and a
/// sender inside it is.
#[tokio::test]
async fn senders_outside_the_allow_list_are_counted_and_ignored() {
    let mut config = OscConfig { listen: vec![loopback()], ..OscConfig::default() };
    config.allow_from = vec![scbridge::osc::config::Network::parse("10.0.0.0/8").expect("network")];
    let mut outside = start(config, 16).await;
    let sender = peer().await;
    send_packet(&sender, outside.handle.listen_addrs()[0], &message("/x", vec![OscType::Int(1)]))
        .await;
    wait_for_count(&outside.handle.stats().not_allowed, 1).await;
    assert!(timeout(Duration::from_millis(200), outside.inbound.recv()).await.is_err());

    let mut config = OscConfig { listen: vec![loopback()], ..OscConfig::default() };
    config.allow_from = vec![scbridge::osc::config::Network::parse("127.0.0.1").expect("host")];
    let mut inside = start(config, 16).await;
    send_packet(&sender, inside.handle.listen_addrs()[0], &message("/x", vec![OscType::Int(1)]))
        .await;
    assert_eq!(next_message(&mut inside).await, Message::value(SourceKind::Osc, "/x", json!(1)));
}

/// A target given by host name that was not found when the config was read
/// (TouchDesigner's machine still off at boot): messages to it are dropped
/// and counted, the endpoint keeps looking, and once the name resolves they
/// arrive.
#[tokio::test]
async fn a_target_host_not_found_at_start_is_looked_up_again_until_it_is() {
    let receiver = peer().await;
    let port = receiver.local_addr().unwrap().port();
    let td = OscTarget {
        host: Some(format!("localhost:{port}")),
        ..OscTarget::new("td", SocketAddr::from(([0, 0, 0, 0], port)))
    };
    let running = start(OscConfig { targets: vec![td], ..OscConfig::default() }, 8).await;
    let stats = running.handle.stats();

    running.handle.send(out(0, "/early", json!(1), OscOutOptions::default())).expect("queued");
    wait_for_count(&stats.unresolved, 1).await;

    let found = timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 1024];
        loop {
            running
                .handle
                .send(out(0, "/later", json!(2), OscOutOptions::default()))
                .expect("queued");
            if let Ok(Ok((len, _))) =
                timeout(Duration::from_millis(100), receiver.recv_from(&mut buf)).await
            {
                return rosc::decoder::decode_udp(&buf[..len]).expect("valid OSC").1;
            }
        }
    })
    .await
    .expect("the name is found within a few retries");
    assert_eq!(found, message("/later", vec![OscType::Float(2.0)]));
    assert!(get(&stats.unresolved) >= 1);
    assert_eq!(get(&stats.send_errors), 0);
}
