//! The SocketCluster client against a scripted server that does what the
//! real one never does: send malformed, binary and oversized frames, stop
//! reading, or write after our close frame.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use scbridge::sc::{Incoming, LinkState, ScClient, ScConfig, ScStats};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use url::Url;

const WAIT: Duration = Duration::from_secs(10);

type ServerSide = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The next frame from the client, as JSON.
async fn next_json(ws: &mut ServerSide) -> Value {
    let frame = ws.next().await.expect("a frame").expect("readable");
    serde_json::from_str(frame.to_text().expect("text")).expect("json")
}

/// Reads the client's `#handshake` and answers it with `data`.
async fn answer_the_handshake(ws: &mut ServerSide, data: Value) {
    let hello = next_json(ws).await;
    assert_eq!(hello["event"], "#handshake");
    let cid = hello["cid"].as_u64().expect("numeric cid");
    ws.send(Message::text(json!({"rid": cid, "data": data}).to_string())).await.expect("send");
}

/// Reads the client's `#subscribe` and acks it.
async fn ack_the_subscribe(ws: &mut ServerSide) {
    let subscribe = next_json(ws).await;
    assert_eq!(subscribe["event"], "#subscribe");
    ws.send(Message::text(json!({"rid": subscribe["cid"]}).to_string())).await.expect("send");
}

/// Garbage from the server is counted and skipped; the good frame after it
/// still arrives and the connection stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_and_oversized_frames_are_counted_and_skipped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
        answer_the_handshake(&mut ws, json!({"id": "scripted", "pingTimeout": 5000})).await;
        ack_the_subscribe(&mut ws).await;
        for bad in [
            "{not json",
            "plain words",
            r#"{"foo":1}"#,
            r#"{"event":42}"#,
            r##"{"event":"#publish","data":"no channel"}"##,
            r#"[1,"two",{"rid":"x"}]"#,
        ] {
            ws.send(Message::text(bad)).await.expect("send");
        }
        ws.send(Message::binary(vec![0u8, 1, 2, 3])).await.expect("send");
        let huge = format!(
            r##"{{"event":"#publish","data":{{"channel":"c","data":"{}"}}}}"##,
            "x".repeat(4096)
        );
        ws.send(Message::text(huge)).await.expect("send");
        ws.send(Message::text(r##"{"event":"#publish","data":{"channel":"c","data":"good"}}"##))
            .await
            .expect("send");
        // Keep the socket open until the client is done.
        while let Some(Ok(_)) = ws.next().await {}
    });

    let mut config =
        ScConfig::new(Url::parse(&format!("ws://127.0.0.1:{port}/socketcluster/")).expect("url"));
    config.max_frame_bytes = 2048;
    let (client, mut incoming) = ScClient::start(config);
    client.subscribe("c", false).await;

    let message =
        tokio::time::timeout(WAIT, incoming.recv()).await.expect("in time").expect("open");
    assert_eq!(message, Incoming::Publish { channel: "c".into(), data: json!("good") });
    let stats = client.stats();
    assert_eq!(ScStats::get(&stats.malformed_frames), 8);
    assert_eq!(ScStats::get(&stats.binary_frames), 1);
    assert_eq!(ScStats::get(&stats.oversized_frames), 1);
    assert_eq!(ScStats::get(&stats.connections), 1);
    assert!(client.link_state().borrow().is_connected());
    client.shutdown().await;
    server.await.expect("scripted server finished");
}

/// A server that accepts TCP but never answers the handshake is given up on
/// after the ack timeout, and retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_the_handshake_is_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let accepted = tokio::spawn(async move {
        let mut sockets = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.expect("accept");
            let ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
            sockets.push(ws); // held open, never answered
        }
        sockets.len()
    });
    let mut config =
        ScConfig::new(Url::parse(&format!("ws://127.0.0.1:{port}/socketcluster/")).expect("url"));
    config.ack_timeout = Duration::from_millis(200);
    config.reconnect.delay = Duration::from_millis(50);
    let (client, _incoming) = ScClient::start(config);

    let count = tokio::time::timeout(WAIT, accepted).await.expect("two attempts").expect("task");
    assert_eq!(count, 2);
    assert!(ScStats::get(&client.stats().connect_failures) >= 1);
    assert_eq!(ScStats::get(&client.stats().connections), 0);
}

/// A server that answers the handshake with `pingTimeout: 0` and then drops
/// each connection without a status: the zero timeout does not end the
/// connection at once, and the drop, though a "no status" close the JS
/// client retries at once, meets the reconnect delay because the
/// connection had barely lived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_drops_each_connection_after_the_handshake_meets_the_reconnect_delay() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        for connection in 0..2 {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
            let data = json!({"id": format!("s{connection}"), "pingTimeout": 0});
            answer_the_handshake(&mut ws, data).await;
            ack_the_subscribe(&mut ws).await;
            if connection == 0 {
                // The client's publish, then our "alive" reaching its
                // consumer, show the zero timeout left the connection up.
                let still_up = next_json(&mut ws).await;
                assert_eq!(still_up["event"], "#publish", "{still_up}");
                let alive = json!({"event": "#publish", "data": {"channel": "c", "data": "alive"}});
                ws.send(Message::text(alive.to_string())).await.expect("send");
                ws.close(None).await.expect("close without a status");
            }
            held.push(ws);
        }
        held.len()
    });

    let mut config =
        ScConfig::new(Url::parse(&format!("ws://127.0.0.1:{port}/socketcluster/")).expect("url"));
    config.reconnect.delay = Duration::from_millis(300);
    config.reconnect.max_delay = Duration::from_millis(300);
    let (client, mut incoming) = ScClient::start(config);
    client.subscribe("c", false).await;
    client.publish("c", &json!("after the handshake"));
    let mut link = client.link_state();

    let message =
        tokio::time::timeout(WAIT, incoming.recv()).await.expect("in time").expect("open");
    assert_eq!(message, Incoming::Publish { channel: "c".into(), data: json!("alive") });
    let down =
        tokio::time::timeout(WAIT, link.wait_for(|s| matches!(s, LinkState::Disconnected { .. })))
            .await
            .expect("the drop is noticed")
            .expect("the link task runs")
            .clone();
    let LinkState::Disconnected { code, retry_in, .. } = down else { unreachable!() };
    assert_eq!(code, Some(1005));
    assert_eq!(retry_in, Duration::from_millis(300), "the reconnect delay, not at once");
    assert_eq!(ScStats::get(&client.stats().connections), 1);
    assert_eq!(tokio::time::timeout(WAIT, server).await.expect("reconnected").expect("task"), 2);
    client.shutdown().await;
}

/// A server that completes the handshake and then neither reads nor sends
/// anything (a stopped process): once the socket's buffers are full the
/// writes block, and the link still gives up at the ping deadline instead
/// of hanging in a write for good. What was being written is counted, and
/// the next connection is tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_is_given_up_at_the_ping_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
        answer_the_handshake(&mut ws, json!({"id": "stalled", "pingTimeout": 1000})).await;
        // Held, never read again.
        let (_second, _) = listener.accept().await.expect("the client tries again");
        drop(ws);
    });
    let mut config =
        ScConfig::new(Url::parse(&format!("ws://127.0.0.1:{port}/socketcluster/")).expect("url"));
    config.reconnect.delay = Duration::from_millis(100);
    let (client, _incoming) = ScClient::start(config);
    let mut link = client.link_state();
    tokio::time::timeout(WAIT, link.wait_for(LinkState::is_connected))
        .await
        .expect("connected")
        .expect("alive");

    // Far more than the socket buffers on both ends hold.
    let big = json!("x".repeat(512 * 1024));
    for _ in 0..200 {
        client.publish("c", &big);
    }
    tokio::time::timeout(WAIT, link.wait_for(|s| matches!(s, LinkState::Disconnected { .. })))
        .await
        .expect("the stalled connection is given up")
        .expect("the link task runs");
    tokio::time::timeout(WAIT, server).await.expect("a new attempt").expect("the script ran");
    assert!(ScStats::get(&client.stats().write_failures) >= 1);
}

/// A server frame as the wire carries it: final, unmasked, short.
fn raw_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mut frame = vec![0x80 | opcode, payload.len() as u8];
    frame.extend(payload);
    frame
}

/// Publishes the server sent before it read our close frame are not read
/// any more, but they are counted; the ping among them is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_arriving_while_the_link_closes_are_counted() {
    use tokio::io::AsyncWriteExt;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
        answer_the_handshake(&mut ws, json!({"id": "late", "pingTimeout": 5000})).await;
        ack_the_subscribe(&mut ws).await;
        ws.send(Message::text(r##"{"event":"#publish","data":{"channel":"c","data":0}}"##))
            .await
            .expect("send");
        let close = ws.next().await.expect("a frame").expect("readable");
        assert!(close.is_close(), "{close:?}");
        // Written under tungstenite, which sends nothing after a close: what a
        // server does when its publishes crossed our close on the wire.
        let tcp = ws.get_mut();
        for payload in [
            &br##"{"event":"#publish","data":{"channel":"c","data":1}}"##[..],
            b"#1",
            br##"{"event":"#publish","data":{"channel":"c","data":2}}"##,
            br##"{"event":"#publish","data":{"channel":"c","data":3}}"##,
        ] {
            tcp.write_all(&raw_frame(0x1, payload)).await.expect("write");
        }
        tcp.write_all(&raw_frame(0x8, &1000u16.to_be_bytes())).await.expect("write");
    });
    let config =
        ScConfig::new(Url::parse(&format!("ws://127.0.0.1:{port}/socketcluster/")).expect("url"));
    let (client, mut incoming) = ScClient::start(config);
    client.subscribe("c", false).await;
    let mut link = client.link_state();
    let before = tokio::time::timeout(WAIT, incoming.recv()).await.expect("in time");
    assert_eq!(before, Some(Incoming::Publish { channel: "c".into(), data: json!(0) }));

    client.set_active(false).await;

    tokio::time::timeout(WAIT, link.wait_for(|s| *s == LinkState::Inactive))
        .await
        .expect("switched off")
        .expect("the link task runs");
    tokio::time::timeout(WAIT, server).await.expect("the script ends").expect("the script ran");
    assert_eq!(ScStats::get(&client.stats().frames_after_close), 3);
    assert_eq!(ScStats::get(&client.stats().publishes_in), 1);
    assert!(incoming.try_recv().is_err(), "nothing read after the close");
}
