//! Property tests of everything that reads input from outside: SocketCluster
//! frames, OSC datagrams, JSON ⇄ OSC mapping, cables envelopes, the config
//! file and route names. Each property runs a few hundred generated cases in
//! the normal suite; `PROPTEST_CASES=N` runs N cases of every property
//! instead (`scripts/fuzz` covers the longer, coverage-guided runs).
//!
//! Failures are not written to a regressions file: a case worth keeping
//! becomes its own test function at the end of this file.

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use rosc::{
    OscArray, OscBundle, OscColor, OscMessage, OscMidiMessage, OscPacket, OscTime, OscType,
};
use scbridge::cables::{Cables, CablesConfig, Received};
use scbridge::config::{Config, ConfigError};
use scbridge::message::{Body, Message, SourceKind};
use scbridge::mqtt::QoS;
use scbridge::osc::{
    BoolStyle, NullStyle, NumberType, ObjectStyle, OscConfig, OscEndpoint, OscOutOptions,
    TriggerStyle, TypeTag, args_to_json, to_osc,
};
use scbridge::route::{Pattern, Route, RouteId, RoutingTable, Source, Template};
use scbridge::sc::codec::{self, Frame, Packet};
use scbridge::sc::session::{Output, Session};
use scbridge::sc::{Incoming, InvokeError, Protocol, ScStats};
use scbridge::stats::get;
use serde_json::{Map, Number, Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The example config every mutation starts from.
const EXAMPLE: &str = include_str!("../bridge.toml.example");

/// The settings of one property: `cases` unless `PROPTEST_CASES` says
/// otherwise, and no regressions file.
fn cases(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// Any string of up to `max` characters, control characters and NUL included.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

/// Keys that mean something to one of the parsers, or anything at all.
fn json_key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "event", "data", "cid", "rid", "error", "channel", "topic", "clientId", "payload",
            "allowSend", "token", "id", "pingTimeout", "isAuthenticated", "authError", "message",
            "name", "base64", "",
        ])
        .prop_map(str::to_owned),
        2 => any_text(8),
    ]
    .boxed()
}

/// A JSON number: small and large integers, and finite floats.
fn json_number() -> BoxedStrategy<Value> {
    prop_oneof![
        (-3i64..=3).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
    .boxed()
}

fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        any_text(12).prop_map(Value::String),
    ]
    .boxed()
}

/// Any JSON value, at most four levels deep and a few dozen nodes large.
fn json_value() -> BoxedStrategy<Value> {
    json_leaf()
        .prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::Array),
                btree_map(json_key(), inner, 0..6)
                    .prop_map(|map| Value::Object(Map::from_iter(map))),
            ]
        })
        .boxed()
}

// ---------------------------------------------------------------------------
// SocketCluster codec
// ---------------------------------------------------------------------------

/// A JSON object shaped like a SocketCluster packet, with every field of any
/// type or missing, so that both the packet and the not-a-packet paths run.
fn sc_packet_value() -> BoxedStrategy<Value> {
    let small_id = prop_oneof![(0u64..8).prop_map(Value::from), json_leaf()].boxed();
    (
        option::of(prop_oneof![
            3 => prop::sample::select(vec![
                "#publish", "#kickOut", "#setAuthToken", "#removeAuthToken", "#disconnect",
                "#handshake", "#other", "hello", "",
            ])
            .prop_map(Value::from),
            1 => json_leaf(),
        ]),
        option::of(prop_oneof![sc_event_data(), json_value()]),
        option::of(small_id.clone()),
        option::of(small_id),
        option::of(json_value()),
    )
        .prop_map(|(event, data, cid, rid, error)| {
            let mut packet = Map::new();
            for (key, value) in
                [("event", event), ("data", data), ("cid", cid), ("rid", rid), ("error", error)]
            {
                if let Some(value) = value {
                    packet.insert(key.to_owned(), value);
                }
            }
            Value::Object(packet)
        })
        .boxed()
}

/// The `data` of the events and replies the session looks into.
fn sc_event_data() -> BoxedStrategy<Value> {
    let channel = prop_oneof![
        prop::sample::select(vec!["a", "b", "private"]).prop_map(Value::from),
        json_leaf(),
    ]
    .boxed();
    prop_oneof![
        (channel.clone(), option::of(json_value())).prop_map(|(channel, data)| {
            let mut fields = Map::new();
            fields.insert("channel".into(), channel);
            if let Some(data) = data {
                fields.insert("data".into(), data);
            }
            Value::Object(fields)
        }),
        (channel, json_leaf())
            .prop_map(|(channel, message)| json!({"channel": channel, "message": message})),
        prop_oneof![any_text(8).prop_map(Value::from), json_leaf()]
            .prop_map(|token| json!({"token": token})),
        (json_leaf(), json_leaf(), json_leaf(), option::of(json_value())).prop_map(
            |(id, ping_timeout, authenticated, auth_error)| {
                let mut data = json!({
                    "id": id, "pingTimeout": ping_timeout, "isAuthenticated": authenticated
                });
                if let Some(auth_error) = auth_error {
                    data["authError"] = auth_error;
                }
                data
            }
        ),
    ]
    .boxed()
}

/// A text frame: a packet, a batch, a ping, or anything else.
fn sc_frame() -> BoxedStrategy<String> {
    prop_oneof![
        4 => sc_packet_value().prop_map(|packet| packet.to_string()),
        2 => vec(prop_oneof![sc_packet_value(), json_value()], 0..5)
            .prop_map(|batch| Value::Array(batch).to_string()),
        1 => prop::sample::select(vec!["", "#1", "#2", "[]", "{}", "null", "[", "{\"event\":"])
            .prop_map(str::to_owned),
        1 => json_value().prop_map(|value| value.to_string()),
        1 => any_text(40),
    ]
    .boxed()
}

/// What one frame decoded to, element by element.
fn packets(text: &str) -> Vec<Result<Packet, codec::DecodeError>> {
    match codec::decode(text) {
        Frame::Packets(packets) => packets,
        Frame::Ping(ping) => panic!("{text:?} decoded as a ping {ping:?}"),
    }
}

/// The single packet a frame we encoded must decode to.
fn single_packet(text: &str) -> Result<Packet, TestCaseError> {
    match packets(text).as_slice() {
        [Ok(packet)] => Ok(packet.clone()),
        other => Err(TestCaseError::fail(format!("{text} decoded to {other:?}"))),
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Any text decodes to a ping, or to packets and errors, without a panic;
    /// only the two ping tokens are pings.
    #[test]
    fn any_text_frame_decodes_without_panicking(text in prop_oneof![any_text(64), sc_frame()]) {
        match codec::decode(&text) {
            Frame::Ping(_) => prop_assert!(text.is_empty() || text == "#1"),
            Frame::Packets(packets) => {
                let empty_batch = serde_json::from_str::<Value>(&text).is_ok_and(|v| v == json!([]));
                prop_assert_eq!(packets.is_empty(), empty_batch);
            }
        }
    }

    /// A JSON batch gives exactly one result per element, in place; any
    /// other JSON value gives exactly one result.
    #[test]
    fn a_json_frame_gives_one_result_per_packet(value in prop_oneof![
        json_value(),
        vec(prop_oneof![sc_packet_value(), json_value()], 0..8).prop_map(Value::Array),
    ]) {
        let text = value.to_string();
        let expected = match &value {
            Value::Array(items) => items.len(),
            _ => 1,
        };
        prop_assert_eq!(packets(&text).len(), expected);
    }

    /// JSON nested far beyond anything real (up to 400 levels of arrays or
    /// objects) is refused as a bad frame, not by overflowing the stack.
    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash(depth in 0usize..400, objects in any::<bool>()) {
        let (open, close) = if objects { ("{\"a\":", "}") } else { ("[", "]") };
        let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        prop_assert!(packets(&text).iter().all(Result::is_err));
    }

    /// An event we encode decodes to the same event name, data and cid.
    #[test]
    fn an_encoded_event_decodes_to_the_same_event(
        event in any_text(16),
        data in option::of(json_value()),
        cid in option::of(any::<u64>()),
    ) {
        let text = codec::encode_event(&event, data.clone(), cid);
        prop_assert_eq!(single_packet(&text)?, Packet::Event { event, data, cid });
    }

    /// A publish we encode decodes to `#publish` with the channel, the data
    /// and the cid.
    #[test]
    fn an_encoded_publish_decodes_to_the_same_channel_and_data(
        channel in any_text(16),
        data in json_value(),
        cid in option::of(any::<u64>()),
    ) {
        let text = codec::encode_publish(&channel, &data, cid);
        let expected = Packet::Event {
            event: "#publish".into(),
            data: Some(json!({"channel": channel, "data": data})),
            cid,
        };
        prop_assert_eq!(single_packet(&text)?, expected);
    }

    /// A handshake we encode is an invoke with the token (or null) and the cid.
    #[test]
    fn an_encoded_handshake_decodes_to_an_invoke_with_the_token(
        token in option::of(any_text(32)),
        cid in any::<u64>(),
    ) {
        let text = codec::encode_handshake(token.as_deref(), cid);
        let expected = Packet::Event {
            event: "#handshake".into(),
            data: Some(json!({"authToken": token})),
            cid: Some(cid),
        };
        prop_assert_eq!(single_packet(&text)?, expected);
    }

    /// A subscribe we encode is an invoke with the channel, `waitForAuth`
    /// only when set, and the cid.
    #[test]
    fn an_encoded_subscribe_decodes_to_an_invoke_with_the_channel(
        channel in any_text(16),
        wait_for_auth in any::<bool>(),
        cid in any::<u64>(),
    ) {
        let text = codec::encode_subscribe(&channel, wait_for_auth, cid);
        let data = if wait_for_auth {
            json!({"channel": channel, "waitForAuth": true})
        } else {
            json!({"channel": channel})
        };
        let expected =
            Packet::Event { event: "#subscribe".into(), data: Some(data), cid: Some(cid) };
        prop_assert_eq!(single_packet(&text)?, expected);
    }

    /// An unsubscribe we encode is a transmit whose data is the channel name.
    #[test]
    fn an_encoded_unsubscribe_decodes_to_a_transmit_of_the_channel(channel in any_text(16)) {
        let text = codec::encode_unsubscribe(&channel);
        let expected =
            Packet::Event { event: "#unsubscribe".into(), data: Some(json!(channel)), cid: None };
        prop_assert_eq!(single_packet(&text)?, expected);
    }

    /// A reply we encode decodes to a successful response with the same rid
    /// and data, a present `null` included.
    #[test]
    fn an_encoded_response_decodes_to_the_same_rid_and_data(
        rid in any::<u64>(),
        data in option::of(json_value()),
    ) {
        let text = codec::encode_response(rid, data.as_ref());
        prop_assert_eq!(single_packet(&text)?, Packet::Response { rid, result: Ok(data) });
    }
}

// ---------------------------------------------------------------------------
// SocketCluster session
// ---------------------------------------------------------------------------

/// One thing that can happen to a session.
#[derive(Debug, Clone)]
enum SessionOp {
    /// A text frame from the server.
    Frame(String),
    Subscribe(String, bool),
    Unsubscribe(String),
    /// The connection dropped and a new one starts its handshake.
    Reconnect,
    /// `authenticate`; the caller keeps waiting for the reply or gives up.
    Authenticate(String, bool),
    Deauthenticate,
    /// A user invoke with this cid; the caller keeps waiting or gives up.
    Invoke(u64, bool),
    ForgetAbandoned,
    OfferToken(Option<String>),
}

fn session_op() -> BoxedStrategy<SessionOp> {
    let channel = prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "private"]).prop_map(str::to_owned),
        1 => any_text(6),
    ]
    .boxed();
    prop_oneof![
        12 => sc_frame().prop_map(SessionOp::Frame),
        2 => (channel.clone(), any::<bool>()).prop_map(|(c, w)| SessionOp::Subscribe(c, w)),
        1 => channel.prop_map(SessionOp::Unsubscribe),
        1 => Just(SessionOp::Reconnect),
        1 => (any_text(8), any::<bool>()).prop_map(|(t, k)| SessionOp::Authenticate(t, k)),
        1 => Just(SessionOp::Deauthenticate),
        1 => (0u64..12, any::<bool>()).prop_map(|(cid, keep)| SessionOp::Invoke(cid, keep)),
        1 => Just(SessionOp::ForgetAbandoned),
        1 => option::of(prop_oneof![Just("t1".to_owned()), any_text(8)])
            .prop_map(SessionOp::OfferToken),
    ]
    .boxed()
}

type Reply = oneshot::Receiver<Result<Option<Value>, InvokeError>>;

/// Checks what the session asked for in answer to one step.
fn check_outputs(out: &[Output], held_before: &HashSet<String>) -> Result<(), TestCaseError> {
    for output in out {
        match output {
            // Pongs are the only frames that are not JSON packets.
            Output::Send(text) if text.is_empty() || text == "#2" => {}
            Output::Send(text) => {
                let decoded = packets(text);
                prop_assert!(
                    decoded.len() == 1 && decoded[0].is_ok(),
                    "sent a frame that is not one packet: {text}"
                );
            }
            Output::Deliver(Incoming::Publish { channel, .. }) => {
                prop_assert!(held_before.contains(channel), "delivered unheld channel {channel}");
            }
            Output::Close { code, .. } => prop_assert_eq!(*code, 4003),
            Output::Deliver(Incoming::Event { event, .. }) => {
                prop_assert!(!event.starts_with('#'), "delivered reserved event {event}");
            }
            Output::Opened { .. } | Output::AuthChanged { .. } | Output::Alive => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(300))]

    /// A session takes any sequence of frames and calls without a panic;
    /// everything it sends is a pong or one well-formed packet, it delivers
    /// publishes only for channels it holds and never a reserved event, and
    /// it never holds a channel twice.
    #[test]
    fn a_session_survives_any_sequence_of_frames_and_calls(
        ops in vec(session_op(), 1..40),
        v1 in any::<bool>(),
        opened in option::of(any::<bool>()),
    ) {
        let protocol = if v1 { Protocol::V1 } else { Protocol::V2 };
        let mut session =
            Session::new(protocol, Arc::new(AtomicU64::new(1)), Arc::new(ScStats::default()));
        let hello = session.begin_handshake();
        let Packet::Event { cid: Some(cid), .. } = single_packet(&hello)? else {
            return Err(TestCaseError::fail(format!("the handshake is no invoke: {hello}")));
        };
        // Half the runs start from an open link (authenticated or not), the
        // other half leave the handshake reply to chance.
        if let Some(authenticated) = opened {
            let reply = json!({"rid": cid, "data": {"id": "s", "isAuthenticated": authenticated}});
            let mut out = Vec::new();
            session.on_text(&reply.to_string(), &mut out);
            prop_assert!(session.is_open());
            prop_assert_eq!(session.is_authenticated(), authenticated);
        }
        // Callers still waiting; dropped ones have given up.
        let mut waiting: Vec<Reply> = Vec::new();
        for op in ops {
            let held_before: HashSet<String> =
                session.subscriptions().into_iter().map(|(name, _)| name).collect();
            let mut out = Vec::new();
            match op {
                SessionOp::Frame(text) => session.on_text(&text, &mut out),
                SessionOp::Subscribe(channel, wait) => session.subscribe(&channel, wait, &mut out),
                SessionOp::Unsubscribe(channel) => session.unsubscribe(&channel, &mut out),
                SessionOp::Reconnect => {
                    session.on_closed();
                    let hello = session.begin_handshake();
                    prop_assert!(single_packet(&hello).is_ok(), "{hello}");
                }
                SessionOp::Authenticate(token, keep) => {
                    let (reply, rx) = oneshot::channel();
                    session.authenticate(token, reply, &mut out);
                    if keep {
                        waiting.push(rx);
                    }
                }
                SessionOp::Deauthenticate => session.deauthenticate(&mut out),
                SessionOp::Invoke(cid, keep) => {
                    let (reply, rx) = oneshot::channel();
                    session.track_invoke(cid, reply);
                    if keep {
                        waiting.push(rx);
                    }
                }
                SessionOp::ForgetAbandoned => session.forget_abandoned_invokes(),
                SessionOp::OfferToken(token) => session.offer_configured_token(token),
            }
            check_outputs(&out, &held_before)?;
            let held = session.subscriptions();
            let distinct: HashSet<&String> = held.iter().map(|(name, _)| name).collect();
            prop_assert_eq!(distinct.len(), held.len());
        }
    }
}

// ---------------------------------------------------------------------------
// OSC datagrams, through a real listener
// ---------------------------------------------------------------------------

/// Any OSC argument, arrays nested at most three deep. Strings hold no
/// NUL, which OSC strings cannot carry.
fn osc_arg() -> BoxedStrategy<OscType> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(OscType::Int),
        any::<f32>().prop_map(OscType::Float),
        "[^\\x00]{0,8}".prop_map(OscType::String),
        vec(any::<u8>(), 0..8).prop_map(OscType::Blob),
        (any::<u32>(), any::<u32>())
            .prop_map(|(seconds, fractional)| OscType::Time(OscTime { seconds, fractional })),
        any::<i64>().prop_map(OscType::Long),
        any::<f64>().prop_map(OscType::Double),
        any::<char>().prop_map(OscType::Char),
        any::<[u8; 4]>().prop_map(|[red, green, blue, alpha]| OscType::Color(OscColor {
            red,
            green,
            blue,
            alpha
        })),
        any::<[u8; 4]>().prop_map(|[port, status, data1, data2]| {
            OscType::Midi(OscMidiMessage { port, status, data1, data2 })
        }),
        any::<bool>().prop_map(OscType::Bool),
        Just(OscType::Nil),
        Just(OscType::Inf),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        vec(inner, 0..4).prop_map(|content| OscType::Array(OscArray { content }))
    })
    .boxed()
}

/// An OSC address rosc can encode: `/` then a few printable characters.
fn osc_address() -> impl Strategy<Value = String> {
    "/[a-z0-9/_ ]{0,12}"
}

/// Wraps bytes in `levels` bundle headers by hand, each element size off
/// by `size_error` bytes, as a hostile sender could.
fn wrap_in_bundles(mut bytes: Vec<u8>, levels: usize, size_error: i64) -> Vec<u8> {
    for _ in 0..levels {
        let mut outer = b"#bundle\0\0\0\0\0\0\0\0\x01".to_vec();
        let size = (bytes.len() as i64 + size_error).clamp(0, i64::from(u32::MAX)) as u32;
        outer.extend(size.to_be_bytes());
        outer.extend(&bytes);
        bytes = outer;
    }
    bytes
}

/// A datagram: random bytes, something that starts like OSC, a real
/// message or bundle, or deep (and possibly broken) bundle nesting.
fn datagram() -> BoxedStrategy<Vec<u8>> {
    let message = (osc_address(), vec(osc_arg(), 0..6))
        .prop_map(|(addr, args)| {
            rosc::encoder::encode(&OscPacket::Message(OscMessage { addr, args }))
                .unwrap_or_default()
        })
        .boxed();
    prop_oneof![
        2 => vec(any::<u8>(), 0..128),
        2 => ("/[a-z]{0,6}", "[ifsbhtdScrmTFNI\\[\\]]{0,12}", vec(any::<u8>(), 0..64)).prop_map(
            |(addr, tags, tail)| {
                let mut bytes = addr.into_bytes();
                bytes.resize(bytes.len() / 4 * 4 + 4, 0);
                bytes.push(b',');
                bytes.extend(tags.into_bytes());
                bytes.resize(bytes.len() / 4 * 4 + 4, 0);
                bytes.extend(tail);
                bytes
            }
        ),
        2 => message.clone(),
        2 => (message.clone(), 0usize..80, prop_oneof![4 => Just(0i64), 1 => -8i64..8])
            .prop_map(|(inner, levels, error)| wrap_in_bundles(inner, levels, error)),
        1 => (0usize..3000)
            .prop_map(|levels| wrap_in_bundles(b"/a\0\0,\0\0\0".to_vec(), levels, 0)),
        1 => vec(message, 0..4).prop_map(|elements| {
            let mut bytes = b"#bundle\0\0\0\0\0\0\0\0\x01".to_vec();
            for element in elements {
                bytes.extend((element.len() as u32).to_be_bytes());
                bytes.extend(element);
            }
            bytes
        }),
    ]
    .boxed()
}

/// A listener on loopback, a socket to send to it from, and its queue.
struct Listening {
    runtime: tokio::runtime::Runtime,
    handle: scbridge::osc::OscHandle,
    inbound: mpsc::Receiver<Message>,
    sender: std::net::UdpSocket,
    listen: SocketAddr,
    shutdown: CancellationToken,
    /// Datagrams sent so far, probes included.
    sent: u64,
}

impl Listening {
    fn start() -> Listening {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let (tx, inbound) = mpsc::channel(1024);
        let shutdown = CancellationToken::new();
        let config = OscConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..OscConfig::default()
        };
        let handle = runtime
            .block_on(OscEndpoint::start(&config, tx, shutdown.clone()))
            .expect("the endpoint starts");
        let listen = handle.listen_addrs()[0];
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("a loopback socket");
        Listening { runtime, handle, inbound, sender, listen, shutdown, sent: 0 }
    }

    /// Sends one datagram, then a probe message, and returns every message
    /// the listener delivered before the probe. One datagram at a time, so
    /// the socket buffer never overflows while the listener waits for its
    /// turn on this thread. A listener that died (a panic in its task) never
    /// delivers the probe, which fails the test.
    fn exchange(&mut self, datagram: &[u8]) -> Result<Vec<Message>, TestCaseError> {
        self.sent += 2;
        let probe = format!("/Probe-{}", self.sent);
        let bytes = rosc::encoder::encode(&OscPacket::Message(OscMessage {
            addr: probe.clone(),
            args: vec![],
        }))
        .expect("encodes");
        self.sender.send_to(datagram, self.listen).expect("sent");
        self.sender.send_to(&bytes, self.listen).expect("sent");
        let inbound = &mut self.inbound;
        self.runtime.block_on(async {
            let mut before = Vec::new();
            loop {
                let next = tokio::time::timeout(Duration::from_secs(5), inbound.recv()).await;
                match next {
                    Ok(Some(message)) if message.name == probe => return Ok(before),
                    Ok(Some(message)) => before.push(message),
                    Ok(None) | Err(_) => {
                        return Err(TestCaseError::fail("the listener stopped answering"));
                    }
                }
            }
        })
    }

    /// Reads one of the endpoint's counters.
    fn stat(&self, counter: impl Fn(&scbridge::osc::OscStats) -> &AtomicU64) -> u64 {
        get(counter(self.handle.stats()))
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let handle = self.handle.clone();
        self.runtime.block_on(async move { handle.stopped().await });
    }
}

/// The messages of a packet in order, bundles unpacked (by recursion: only
/// for packets the listener accepted, so at most 32 levels deep).
fn flattened(packet: OscPacket, out: &mut Vec<Message>) {
    match packet {
        OscPacket::Message(message) => {
            out.push(Message::value(SourceKind::Osc, message.addr, args_to_json(&message.args)));
        }
        OscPacket::Bundle(bundle) => bundle.content.into_iter().for_each(|p| flattened(p, out)),
    }
}

/// Any datagram, hostile bundle nesting included, leaves the listener alive
/// and counting: it still delivers the next good message, every datagram is
/// counted as received, and a datagram in which it counts no decode error
/// is one rosc reads, delivered as exactly the messages it holds, in order.
/// A message with a decode error delivers nothing.
#[test]
fn the_osc_listener_survives_any_datagram() {
    let listening = RefCell::new(Listening::start());
    TestRunner::new(cases(200))
        .run(&vec(datagram(), 1..6), |datagrams| {
            let mut listening = listening.borrow_mut();
            for datagram in &datagrams {
                let errors_before = listening.stat(|s| &s.decode_errors);
                let delivered = listening.exchange(datagram)?;
                let errors = listening.stat(|s| &s.decode_errors) - errors_before;
                if errors == 0 {
                    let decoded = rosc::decoder::decode_udp(datagram);
                    prop_assert!(decoded.is_ok(), "accepted, yet rosc refuses it: {decoded:?}");
                    let mut expected = Vec::new();
                    if let Ok((_, packet)) = decoded {
                        flattened(packet, &mut expected);
                    }
                    prop_assert_eq!(delivered, expected);
                } else if !datagram.starts_with(b"#bundle\0") {
                    // Only a bundle has parts that can be read apart.
                    prop_assert_eq!(delivered, vec![], "from an unreadable message");
                }
            }
            prop_assert_eq!(listening.stat(|s| &s.packets_in), listening.sent);
            prop_assert_eq!(listening.stat(|s| &s.inbound_queue_full), 0);
            prop_assert_eq!(listening.stat(|s| &s.oversized_packets), 0);
            Ok(())
        })
        .expect("property holds");
}

/// Bundles nested up to 32 deep are unpacked and deeper ones are refused
/// whole (counted as a decode error), as the README says.
#[test]
fn bundles_deliver_up_to_32_levels_and_are_refused_beyond() {
    let listening = RefCell::new(Listening::start());
    let strategy = (0usize..48, osc_address(), vec(osc_arg(), 0..3));
    TestRunner::new(cases(96))
        .run(&strategy, |(levels, addr, args)| {
            let mut listening = listening.borrow_mut();
            let mut packet = OscPacket::Message(OscMessage { addr: addr.clone(), args });
            for _ in 0..levels {
                packet = OscPacket::Bundle(OscBundle {
                    timetag: OscTime { seconds: 0, fractional: 1 },
                    content: vec![packet],
                });
            }
            let bytes = rosc::encoder::encode(&packet).expect("encodes");
            let errors_before = listening.stat(|s| &s.decode_errors);
            let delivered = listening.exchange(&bytes)?;
            let errors = listening.stat(|s| &s.decode_errors) - errors_before;
            if levels <= 32 {
                prop_assert_eq!(delivered.len(), 1);
                prop_assert_eq!(&delivered[0].name, &addr);
                prop_assert_eq!(errors, 0);
            } else {
                prop_assert!(delivered.is_empty());
                prop_assert_eq!(errors, 1);
            }
            Ok(())
        })
        .expect("property holds");
}

// ---------------------------------------------------------------------------
// JSON ⇄ OSC mapping
// ---------------------------------------------------------------------------

fn type_tag() -> BoxedStrategy<TypeTag> {
    prop::sample::select(vec![
        TypeTag::Int32,
        TypeTag::Float32,
        TypeTag::Double,
        TypeTag::Int64,
        TypeTag::String,
        TypeTag::Bool,
        TypeTag::Nil,
    ])
    .boxed()
}

/// Any per-route OSC options, a fixed type list one time in four.
fn osc_options() -> BoxedStrategy<OscOutOptions> {
    (
        prop::sample::select(vec![NumberType::Float32, NumberType::Int32, NumberType::Double]),
        prop::sample::select(vec![BoolStyle::Number, BoolStyle::TrueFalse]),
        prop::sample::select(vec![NullStyle::Nil, NullStyle::Omit]),
        prop::sample::select(vec![ObjectStyle::Split, ObjectStyle::Json]),
        prop::sample::select(vec![TriggerStyle::NoArgs, TriggerStyle::One]),
        prop_oneof![3 => Just(None), 1 => option::of(vec(type_tag(), 1..5))],
    )
        .prop_map(|(numbers, bools, null, objects, trigger, types)| OscOutOptions {
            numbers,
            bools,
            null,
            objects,
            trigger,
            types,
        })
        .boxed()
}

fn body() -> BoxedStrategy<Body> {
    prop_oneof![1 => Just(Body::Trigger), 6 => json_value().prop_map(Body::Value)].boxed()
}

/// The tag an argument goes out with.
fn tag_of(arg: &OscType) -> char {
    match arg {
        OscType::Int(_) => 'i',
        OscType::Float(_) => 'f',
        OscType::String(_) => 's',
        OscType::Blob(_) => 'b',
        OscType::Time(_) => 't',
        OscType::Long(_) => 'h',
        OscType::Double(_) => 'd',
        OscType::Char(_) => 'c',
        OscType::Color(_) => 'r',
        OscType::Midi(_) => 'm',
        OscType::Bool(true) => 'T',
        OscType::Bool(false) => 'F',
        OscType::Nil => 'N',
        OscType::Inf => 'I',
        OscType::Array(_) => '[',
    }
}

/// Characters a key must not bring into an address.
const FORBIDDEN_IN_ADDRESS: &[char] = &[' ', '#', '*', ',', '?', '[', ']', '{', '}', '\0'];

/// The number of messages a split object gives: one per leaf.
fn leaves(value: &Value) -> usize {
    match value {
        Value::Object(map) => map.values().map(leaves).sum(),
        _ => 1,
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    /// `to_osc` takes any address, body and options without a panic; without
    /// a fixed type list it fails exactly for the addresses without a
    /// leading `/` or with a NUL, and with one every argument has its tag.
    #[test]
    fn mapping_any_json_with_any_options_never_panics(
        address in prop_oneof![osc_address(), any_text(12)],
        body in body(),
        options in osc_options(),
    ) {
        let result = to_osc(&address, &body, &options);
        let valid_address = address.starts_with('/') && !address.contains('\0');
        if options.types.is_none() {
            prop_assert_eq!(result.is_ok(), valid_address, "{:?}", result);
        } else if !valid_address {
            prop_assert!(result.is_err());
        }
        if let (Ok(messages), Some(types)) = (&result, &options.types) {
            // A fixed type list decides every argument's tag (T/F both mean bool).
            for message in messages {
                let tags: String = message.args.iter().map(tag_of).collect();
                let wanted: String = types.iter().map(|t| t.as_char()).collect();
                prop_assert_eq!(tags.replace('F', "T"), wanted);
            }
        }
    }

    /// With the default options every argument is float32, string or nil
    /// (booleans are 1 and 0), and without a type list only the documented
    /// tags appear: `f`, `i` or `d` as the route asks, `s`, `N`, `T`, `F`.
    #[test]
    fn mapped_arguments_have_only_the_documented_types(
        body in body(),
        options in osc_options(),
    ) {
        let options = OscOutOptions { types: None, ..options };
        let default_messages = to_osc("/p", &body, &OscOutOptions::default());
        for message in default_messages.expect("the default options map any value") {
            for arg in &message.args {
                prop_assert!("fsN".contains(tag_of(arg)), "{arg:?} with the default options");
            }
        }
        let number = match options.numbers {
            NumberType::Float32 => 'f',
            NumberType::Int32 => 'i',
            NumberType::Double => 'd',
        };
        for message in to_osc("/p", &body, &options).expect("maps without a type list") {
            for arg in &message.args {
                let tag = tag_of(arg);
                prop_assert!(tag == number || "sNTF".contains(tag), "{arg:?} with {options:?}");
            }
        }
    }

    /// A split object gives one message per leaf, each addressed below the
    /// prefix, and keys bring no character OSC reserves into an address.
    #[test]
    fn split_objects_give_one_message_per_leaf_under_the_prefix(
        prefix in osc_address().prop_filter("no reserved characters", |p| !p.contains(' ')),
        map in btree_map(json_key(), json_value(), 0..6),
    ) {
        let value = Value::Object(Map::from_iter(map));
        let messages = to_osc(&prefix, &Body::Value(value.clone()), &OscOutOptions::default())
            .expect("maps");
        prop_assert_eq!(messages.len(), leaves(&value));
        for message in &messages {
            prop_assert!(message.addr.starts_with(&prefix), "{} not under {prefix}", message.addr);
            prop_assert!(!message.addr.contains(FORBIDDEN_IN_ADDRESS), "{}", message.addr);
        }
    }

    /// Every message `to_osc` makes survives the wire: no string holds a
    /// NUL (where an OSC string would end), rosc encodes it, and decoding the
    /// bytes gives back the same address and arguments.
    #[test]
    fn mapped_messages_decode_to_themselves(
        address in osc_address(),
        body in body(),
        options in osc_options(),
    ) {
        let Ok(messages) = to_osc(&address, &body, &options) else { return Ok(()) };
        for message in messages {
            let nul = |arg: &OscType| matches!(arg, OscType::String(s) if s.contains('\0'));
            prop_assert!(!message.args.iter().any(nul), "{message:?}");
            let packet = OscPacket::Message(message);
            let bytes = rosc::encoder::encode(&packet).expect("encodes");
            let decoded = rosc::decoder::decode_udp(&bytes).map(|(_, decoded)| decoded);
            prop_assert_eq!(decoded.as_ref().ok(), Some(&packet));
        }
    }

    /// `args_to_json` takes any list of OSC arguments: none is `null`, one
    /// is that argument's value, several are an array of each one's value.
    #[test]
    fn any_osc_arguments_have_a_json_form(
        args in vec(prop_oneof![osc_arg(), any_text(8).prop_map(OscType::String)], 0..8),
    ) {
        let value = args_to_json(&args);
        let each: Vec<Value> =
            args.iter().map(|arg| args_to_json(std::slice::from_ref(arg))).collect();
        match args.len() {
            0 => prop_assert_eq!(value, Value::Null),
            1 => prop_assert_eq!(value, each[0].clone()),
            _ => prop_assert_eq!(value, Value::Array(each)),
        }
    }

    /// A JSON number within the float32 range goes out as that float32 and
    /// comes back as the shortest decimal of it.
    #[test]
    fn a_number_through_float32_comes_back_as_its_shortest_float32(x in prop_oneof![
        any::<f32>().prop_filter("finite", |f| f.is_finite()).prop_map(f64::from),
        (f64::from(f32::MIN)..=f64::from(f32::MAX)),
        -1.0e6f64..1.0e6,
        any::<i32>().prop_map(f64::from),
    ]) {
        let value = Value::from(x);
        let messages =
            to_osc("/x", &Body::Value(value), &OscOutOptions::default()).expect("maps");
        prop_assert_eq!(&messages[0].args, &vec![OscType::Float(x as f32)]);
        let back = args_to_json(&messages[0].args);
        let shortest: f64 = (x as f32).to_string().parse().expect("a float prints as a number");
        prop_assert_eq!(back, Value::from(shortest));
    }

    /// An integer within the int32 range survives `numbers = "int32"`, and any
    /// finite number survives `numbers = "double"`, exactly.
    #[test]
    fn int32_and_double_carry_their_numbers_exactly(
        int in any::<i32>(),
        double in any::<f64>().prop_filter("finite", |f| f.is_finite()),
    ) {
        let through = |value: Value, numbers| {
            let options = OscOutOptions { numbers, ..OscOutOptions::default() };
            let messages = to_osc("/x", &Body::Value(value), &options).expect("maps");
            args_to_json(&messages[0].args)
        };
        prop_assert_eq!(through(json!(int), NumberType::Int32), json!(int));
        prop_assert_eq!(through(json!(double), NumberType::Double), json!(double));
    }
}

// ---------------------------------------------------------------------------
// cables envelopes
// ---------------------------------------------------------------------------

fn cables_config(client_id: impl Strategy<Value = String>) -> impl Strategy<Value = CablesConfig> {
    (
        "[a-z]{1,6}",
        client_id,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        btree_map(json_key(), json_value(), 0..3),
    )
        .prop_map(
            |(channel, client_id, receive_own, allow_send, allow_multiple_senders, extra)| {
                CablesConfig {
                    channel,
                    client_id,
                    receive_own,
                    allow_send,
                    allow_multiple_senders,
                    extra: Map::from_iter(extra),
                }
            },
        )
}

/// A publish on a cables channel: what a cables op sends, or anything.
fn cables_publish() -> BoxedStrategy<(usize, Value)> {
    let envelope = (
        option::of(prop_oneof![any_text(8).prop_map(Value::from), json_leaf()]),
        option::of(prop_oneof![
            prop::sample::select(vec!["me", "rival"]).prop_map(Value::from),
            json_leaf()
        ]),
        option::of(prop_oneof![
            any::<bool>().prop_map(|allow| json!({"allowSend": allow})),
            json_value()
        ]),
    )
        .prop_map(|(topic, client_id, payload)| {
            let mut fields = Map::new();
            for (key, value) in [("topic", topic), ("clientId", client_id), ("payload", payload)] {
                if let Some(value) = value {
                    fields.insert(key.to_owned(), value);
                }
            }
            Value::Object(fields)
        });
    (0usize..4, prop_oneof![3 => envelope, 1 => json_value()]).boxed()
}

proptest! {
    #![proptest_config(cases(500))]

    /// `receive` takes any JSON on any channel without a panic; only the
    /// three cables channels are cables (anything else is handed back
    /// untouched), and the right to send is always Allow Send and not silenced.
    #[test]
    fn receiving_any_json_never_panics(
        config in cables_config(prop::sample::select(vec!["me", "rival"]).prop_map(str::to_owned)),
        publishes in vec(cables_publish(), 1..12),
    ) {
        let mut cables = Cables::new(config.clone());
        let mut channels: Vec<String> =
            cables.channels().iter().map(|c| (*c).to_owned()).collect();
        channels.push("elsewhere".to_owned());
        for (which, data) in publishes {
            let received = cables.receive(&channels[which], data.clone());
            let expected = matches!(
                (which, &received),
                (0 | 1, Received::Message(_) | Received::OwnEcho | Received::Malformed(_))
                    | (2, Received::Control { .. } | Received::OwnAnnouncement)
                    | (2, Received::Malformed(_))
                    | (3, Received::NotCables(_))
            );
            prop_assert!(expected, "{received:?} on channel {which}");
            if let Received::NotCables(untouched) = &received {
                prop_assert_eq!(untouched, &data);
            }
            if let Received::Control { from, .. } = &received {
                prop_assert_ne!(from, &config.client_id);
            }
            if config.allow_multiple_senders {
                prop_assert_eq!(cables.silenced_by(), None);
            }
            prop_assert_eq!(cables.can_send(), config.allow_send && cables.silenced_by().is_none());
        }
    }

    /// An envelope built by one client and received by another gives back
    /// the same topic and payload (objects) or the same trigger name
    /// (triggers); the sender's announcement is a control message from it.
    #[test]
    fn an_envelope_from_another_client_comes_back_whole(
        sender in cables_config("[a-z]{1,6}"),
        receiver_id in "[A-Z]{1,6}",
        receive_own in any::<bool>(),
        topic in any_text(12),
        payload in json_value(),
        trigger in any_text(12),
    ) {
        let sender_cables = Cables::new(sender.clone());
        let mut receiver = Cables::new(CablesConfig {
            client_id: receiver_id,
            receive_own,
            extra: Map::new(),
            ..sender.clone()
        });
        let objects = receiver.objects_channel().to_owned();
        let triggers = receiver.triggers_channel().to_owned();
        let control = receiver.control_channel().to_owned();
        prop_assert_eq!(
            receiver.receive(&objects, sender_cables.envelope(&topic, payload.clone())),
            Received::Message(Message::value(SourceKind::CablesObject, topic.clone(), payload))
        );
        prop_assert_eq!(
            receiver.receive(&triggers, sender_cables.envelope(&topic, json!(trigger.clone()))),
            Received::Message(Message::trigger(SourceKind::CablesTrigger, trigger))
        );
        let announced = receiver.receive(&control, sender_cables.announcement(true));
        let is_control_from_sender = matches!(
            &announced,
            Received::Control { from, allow_send, .. }
                if *from == sender.client_id && *allow_send == sender.allow_send
        );
        prop_assert!(is_control_from_sender, "{announced:?}");
    }

    /// Our own envelope echoed back is dropped, unless `receive_own` is on.
    #[test]
    fn our_own_envelope_is_an_echo_unless_receive_own(
        config in cables_config("[a-z]{1,6}"),
        topic in any_text(12),
        payload in json_value(),
    ) {
        let mut cables = Cables::new(config.clone());
        let objects = cables.objects_channel().to_owned();
        let received = cables.receive(&objects, cables.envelope(&topic, payload.clone()));
        if config.receive_own {
            prop_assert_eq!(
                received,
                Received::Message(Message::value(SourceKind::CablesObject, topic, payload))
            );
        } else {
            prop_assert_eq!(received, Received::OwnEcho);
        }
    }
}

// ---------------------------------------------------------------------------
// Config parsing
// ---------------------------------------------------------------------------

/// Values a mutation may put in place of a key's value.
const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "65536",
    "18446744073709551615",
    "99999999999999999999",
    "1.5",
    "-0.0",
    "nan",
    "inf",
    "1e400",
    "true",
    "false",
    "\"\"",
    "\"x\"",
    "\"/td/*\"",
    "\"a/#/b\"",
    "\"{1}\"",
    "\"{0}\"",
    "\"$SYS/x\"",
    "\"$share/g/x/+\"",
    "\"ws://\"",
    "\"mqtt://h:1\"",
    "\"127.0.0.1:0\"",
    "\"0.0.0.0:7000\"",
    "\"[::1]:7000\"",
    "\"ffx\"",
    "\"a b\"",
    "\"\\u0000\"",
    "'''x'''",
    "[]",
    "[1, \"a\"]",
    "[\"\"]",
    "{}",
    "{ a = 1 }",
    "{ osc = \"/x\" }",
    "1979-05-27",
    "",
];

/// One edit of the example config.
#[derive(Debug, Clone)]
enum Edit {
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index),
    /// Line one takes the place of line two.
    Replace(prop::sample::Index, prop::sample::Index),
    /// The value of a `key = value` line becomes another.
    Value(prop::sample::Index, prop::sample::Index),
    Insert(prop::sample::Index, String),
    /// The file ends early, at some byte.
    Truncate(prop::sample::Index),
}

fn edit() -> BoxedStrategy<Edit> {
    let index = any::<prop::sample::Index>;
    prop_oneof![
        2 => index().prop_map(Edit::Delete),
        2 => index().prop_map(Edit::Duplicate),
        2 => (index(), index()).prop_map(|(a, b)| Edit::Replace(a, b)),
        4 => (index(), index()).prop_map(|(a, b)| Edit::Value(a, b)),
        1 => (index(), prop_oneof![any_text(24), "[a-z.\\[\\]]{1,12} = [0-9\"{}\\[\\]]{0,6}"])
            .prop_map(|(at, line)| Edit::Insert(at, line)),
        1 => index().prop_map(Edit::Truncate),
    ]
    .boxed()
}

fn apply(source: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = source.lines().map(str::to_owned).collect();
    for edit in edits {
        if lines.is_empty() {
            break;
        }
        match edit {
            Edit::Delete(at) => {
                lines.remove(at.index(lines.len()));
            }
            Edit::Duplicate(at) => {
                let at = at.index(lines.len());
                lines.insert(at, lines[at].clone());
            }
            Edit::Replace(from, to) => {
                let line = lines[from.index(lines.len())].clone();
                let to = to.index(lines.len());
                lines[to] = line;
            }
            Edit::Value(at, value) => {
                let at = at.index(lines.len());
                if let Some((key, _)) = lines[at].split_once(" = ") {
                    lines[at] = format!("{key} = {}", VALUES[value.index(VALUES.len())]);
                }
            }
            Edit::Insert(at, line) => {
                let at = at.index(lines.len() + 1);
                lines.insert(at, line.clone());
            }
            Edit::Truncate(at) => {
                let mut text = lines.join("\n");
                let mut cut = at.index(text.len() + 1);
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                lines = text.split('\n').map(str::to_owned).collect();
            }
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// An error from `from_toml` names a key, and a line and column that exist.
fn check_config_error(
    source: &str,
    result: Result<Config, ConfigError>,
) -> Result<(), TestCaseError> {
    let Err(err) = result else { return Ok(()) };
    let shown = err.to_string();
    let ConfigError::Invalid { origin, key, line, column, message } = err else {
        return Err(TestCaseError::fail(format!("not an Invalid error: {shown}")));
    };
    let lines: Vec<&str> = source.split('\n').collect();
    prop_assert_eq!(origin, "fuzz");
    prop_assert!(!key.is_empty());
    prop_assert!(!message.is_empty(), "{shown}");
    prop_assert!((1..=lines.len()).contains(&line), "line {line} of {}: {shown}", lines.len());
    let width = lines[line - 1].chars().count();
    prop_assert!((1..=width + 1).contains(&column), "column {column} of {width}: {shown}");
    prop_assert!(shown.starts_with(&format!("fuzz:{line}:{column}: ")), "{shown}");
    Ok(())
}

proptest! {
    #![proptest_config(cases(300))]

    /// Any text is a config or an error naming a line and column of it.
    #[test]
    fn any_text_is_a_config_or_an_error_with_a_real_line(
        source in prop_oneof![
            any_text(80),
            "([a-z_\\[\\].]{0,12}( = [-0-9a-z\"{}\\[\\],. ]{0,10})?\n){0,6}",
        ],
    ) {
        check_config_error(&source, Config::from_toml(&source, "fuzz"))?;
    }

    /// The example config with lines deleted, duplicated, replaced, inserted,
    /// values changed or the end cut off is a config, or an error naming a
    /// key, a line and a column that exist in the edited file.
    #[test]
    fn an_edited_example_config_is_valid_or_names_a_real_line(edits in vec(edit(), 1..6)) {
        let source = apply(EXAMPLE, &edits);
        check_config_error(&source, Config::from_toml(&source, "fuzz"))?;
    }
}

/// The example config the edits start from is itself valid.
#[test]
fn the_example_config_is_valid() {
    Config::from_toml(EXAMPLE, "bridge.toml.example").expect("the example is valid");
}

// ---------------------------------------------------------------------------
// Patterns, templates and the routing table
// ---------------------------------------------------------------------------

/// One segment of a generated source pattern.
#[derive(Debug, Clone)]
enum Seg {
    Literal(String),
    /// `*` or `+`.
    One(&'static str),
    /// `**` or `#`; only last.
    Rest(&'static str),
}

/// A valid pattern: literal segments never hold `*`, `+`, `#` or braces, so
/// the same text is also a valid template.
fn pattern_segments(literal: BoxedStrategy<String>) -> impl Strategy<Value = Vec<Seg>> {
    let seg = prop_oneof![
        3 => literal.prop_map(Seg::Literal),
        1 => prop::sample::select(vec!["*", "+"]).prop_map(Seg::One),
    ];
    (vec(seg, 0..5), option::of(prop::sample::select(vec!["**", "#"]))).prop_map(
        |(mut segs, rest)| {
            if let Some(rest) = rest {
                segs.push(Seg::Rest(rest));
            }
            // An empty text is no pattern at all.
            if pattern_text(&segs).is_empty() {
                segs = vec![Seg::Literal("x".into())];
            }
            segs
        },
    )
}

fn pattern_text(segs: &[Seg]) -> String {
    segs.iter()
        .map(|seg| match seg {
            Seg::Literal(text) => text.as_str(),
            Seg::One(w) | Seg::Rest(w) => w,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A name that matches the pattern, and the captures it must give. Captured
/// segments may hold anything but `/`; a rest takes one to three segments.
fn matching_name(segs: Vec<Seg>) -> impl Strategy<Value = (Vec<Seg>, String, Vec<String>)> {
    let fills: Vec<BoxedStrategy<Vec<String>>> = segs
        .iter()
        .map(|seg| match seg {
            Seg::Literal(_) => Just(Vec::new()).boxed(),
            Seg::One(_) => "[^/]{0,4}".prop_map(|s| vec![s]).boxed(),
            Seg::Rest(_) => vec("[^/]{0,4}", 1..4).boxed(),
        })
        .collect();
    (Just(segs), fills).prop_map(|(segs, fills)| {
        let mut parts = Vec::new();
        let mut captures = Vec::new();
        for (seg, fill) in segs.iter().zip(fills) {
            match seg {
                Seg::Literal(text) => parts.push(text.clone()),
                _ => {
                    captures.push(fill.join("/"));
                    parts.extend(fill);
                }
            }
        }
        (segs, parts.join("/"), captures)
    })
}

fn literal_segment() -> BoxedStrategy<String> {
    "[a-z0-9_ .$-]{0,4}".boxed()
}

/// A name of up to five segments from the tiny alphabet (and `c`, which no
/// pattern has).
fn tiny_name() -> BoxedStrategy<String> {
    vec(prop::sample::select(vec!["", "a", "b", "c"]), 0..6)
        .prop_map(|parts| parts.join("/"))
        .boxed()
}

/// Literals from a tiny alphabet, so that random tables overlap a lot.
fn tiny_literal() -> BoxedStrategy<String> {
    prop::sample::select(vec!["", "a", "b"]).prop_map(str::to_owned).boxed()
}

fn route_for(kind: SourceKind, pattern: Pattern, position: usize) -> Route {
    Route {
        name: format!("route {position}"),
        source: Source { kind, pattern, wait_for_auth: false, qos: QoS::AtMostOnce },
        destinations: Vec::new(),
        enabled: true,
        delay: Duration::ZERO,
        min_interval: None,
        trigger_on: scbridge::route::TriggerOn::Press,
    }
}

fn source_kind() -> impl Strategy<Value = SourceKind> {
    prop::sample::select(vec![SourceKind::Osc, SourceKind::Mqtt, SourceKind::CablesObject])
}

proptest! {
    #![proptest_config(cases(1000))]

    /// `Pattern::parse` and `Template::parse` take any text without a panic,
    /// and a parsed template fills exactly when it has all the captures it uses.
    #[test]
    fn parsing_any_pattern_or_template_never_panics(
        text in prop_oneof![any_text(24), "[a/*+#{}0-9]{0,16}", "([a+*]/){0,12}[a+*#]"],
        captures in vec(any_text(4), 0..14),
    ) {
        if let Ok(pattern) = Pattern::parse(&text) {
            prop_assert_eq!(&pattern.text, &text);
            let _ = pattern.matches(&text);
            let _ = pattern.to_mqtt_filter();
        }
        if let Ok(template) = Template::parse(&text) {
            let filled = template.fill(&captures);
            prop_assert_eq!(filled.is_some(), captures.len() >= template.uses);
        }
    }

    /// A name built to match a pattern matches it with the expected
    /// captures, and the pattern read as a template (its own wildcards in
    /// order) puts the name back together: the identity route.
    #[test]
    fn a_pattern_as_its_own_template_gives_the_name_back(
        (segs, name, expected) in pattern_segments(literal_segment()).prop_flat_map(matching_name),
    ) {
        let text = pattern_text(&segs);
        let pattern = Pattern::parse(&text).expect("a generated pattern is valid");
        let captures = pattern.matches(&name);
        prop_assert_eq!(captures.as_ref(), Some(&expected), "{} on {:?}", text, name);
        let template = Template::parse(&text).expect("a pattern's text is a valid template");
        prop_assert_eq!(template.uses, pattern.captures());
        // A rest that matched no level leaves no dangling `/`, so `a/` and
        // `a` both fill back as `a` (the kept case at the end of this file).
        let rest_empty = matches!(segs.last(), Some(Seg::Rest(_)))
            && expected.last().is_some_and(String::is_empty);
        let name = if rest_empty && name.len() > 1 { name.strip_suffix('/').unwrap_or(&name).to_owned() } else { name };
        prop_assert_eq!(template.fill(&expected), Some(name));
    }

    /// The indexed table finds exactly the routes the reference matcher
    /// (`Pattern::matches` on every route of the message's kind) finds, in
    /// table order and with the same captures.
    #[test]
    fn the_routing_index_agrees_with_the_reference_matcher(
        patterns in vec((source_kind(), pattern_segments(tiny_literal())), 1..24),
        messages in vec((source_kind(), tiny_name()), 1..24),
    ) {
        let routes: Vec<Route> = patterns
            .iter()
            .enumerate()
            .map(|(position, (kind, segs))| {
                let pattern = Pattern::parse(&pattern_text(segs)).expect("valid");
                route_for(*kind, pattern, position)
            })
            .collect();
        let table = RoutingTable::new(routes.clone());
        // Names that are some route's pattern with its wildcards filled in,
        // and free names from the same tiny alphabet.
        let names = messages.iter().cloned().chain(
            routes.iter().map(|route| {
                (route.source.kind, route.source.pattern.text.replace(['*', '+', '#'], "a"))
            }),
        );
        for (kind, name) in names {
            let message = Message::value(kind, name.clone(), Value::Null);
            let expected: Vec<(RouteId, Vec<String>)> = routes
                .iter()
                .enumerate()
                .filter(|(_, route)| route.source.kind == kind)
                .filter_map(|(position, route)| {
                    let captures = route.source.pattern.matches(&name)?;
                    Some((RouteId(position), captures))
                })
                .collect();
            prop_assert_eq!(table.matches(&message), expected, "name {:?}", name);
        }
    }
}

// ---------------------------------------------------------------------------
// Kept cases
// ---------------------------------------------------------------------------

/// A float in an event's data comes back bit for bit. Without serde_json's
/// `float_roundtrip` feature, `-2.319488800440514e-110` (serde_json's own
/// shortest output for that float) was read back one bit off, so data with
/// floats changed on its way through the bridge. Found by
/// `an_encoded_event_decodes_to_the_same_event`.
#[test]
fn a_float_in_an_event_comes_back_exactly() {
    let data = json!([-2.319488800440514e-110]);
    let text = codec::encode_event("", Some(data.clone()), None);
    assert_eq!(
        packets(&text),
        vec![Ok(Packet::Event { event: String::new(), data: Some(data), cid: None })]
    );
}

/// A JSON string holding U+0000 reaches OSC whole but for the NUL. OSC
/// strings end at their first NUL, so `"a\0b"` used to arrive as `"a"`; the
/// mapping now leaves NULs out. Found by `mapped_messages_decode_to_themselves`.
#[test]
fn a_string_with_nul_reaches_osc_without_the_nul() {
    let messages =
        to_osc("/a", &Body::Value(json!(["a\0b", 1])), &OscOutOptions::default()).expect("maps");
    let packet = OscPacket::Message(messages[0].clone());
    let bytes = rosc::encoder::encode(&packet).expect("encodes");
    let (_, decoded) = rosc::decoder::decode_udp(&bytes).expect("decodes");
    let expected = OscMessage {
        addr: "/a".into(),
        args: vec![OscType::String("ab".into()), OscType::Float(1.0)],
    };
    assert_eq!(decoded, OscPacket::Message(expected));
}

/// A rest wildcard that matched no level captures the empty string, and the
/// pattern read as its own template still gives the name back, with no
/// dangling `/`: `a/#` matches `a`, and `a/#` fills back as `a`.
#[test]
fn a_rest_that_matched_no_level_fills_back_without_a_trailing_slash() {
    for text in ["a/#", "a/**", "/td/*/**"] {
        let pattern = Pattern::parse(text).expect("valid");
        let template = Template::parse(text).expect("valid");
        let name = text.trim_end_matches(['#', '*']).trim_end_matches('/').replace('*', "x");
        let captures = pattern.matches(&name).expect("zero levels match");
        assert_eq!(captures.last().map(String::as_str), Some(""), "{text} on {name}");
        assert_eq!(template.fill(&captures), Some(name.clone()), "{text} on {name}");
    }
}
