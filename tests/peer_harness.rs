//! The test peers and their harness work end to end: the real
//! socketcluster-server and socketcluster-client of `tests/peers`, driven
//! through `support::sc_peer`.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::sc_peer::{JsClient, ScServer, ScServerOptions, wait_until};

/// A generous bound for anything that should happen promptly on loopback.
const WAIT: Duration = Duration::from_secs(10);

/// The server starts on a port the system chose, reports it, and answers
/// commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_starts_on_an_ephemeral_port_and_answers_commands() {
    let server = ScServer::start(ScServerOptions::new()).await;

    assert_ne!(server.port(), 0);
    assert_eq!(server.url(), format!("ws://127.0.0.1:{}/socketcluster/", server.port()));
    assert!(server.socket_ids().await.is_empty());
    assert_eq!(server.count_lines("READY "), 1);
}

/// What a JS publisher sends reaches a JS subscriber unchanged, and the
/// server reports each publish once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_subscriber_receives_exactly_what_js_publisher_sends() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let mut subscriber =
        JsClient::subscribe(server.port(), &["lights"], &["--count", "3", "--timeout", "20"]).await;
    let payload = r#"{"topic":"lights/1","payload":{"r":1,"g":0.5},"tags":["a",null,true]}"#;

    let mut publisher = JsClient::publish(server.port(), "lights", Some(payload), 3, false).await;

    assert_eq!(publisher.wait_exit().await, 0);
    assert!(publisher.lines_so_far().contains(&"PUBLISHED 3".to_owned()));
    assert_eq!(subscriber.wait_exit().await, 0);
    let expected: Value = serde_json::from_str(payload).expect("the payload is JSON");
    assert_eq!(subscriber.messages(), vec![json!({"channel": "lights", "data": expected}); 3]);
    assert_eq!(server.count_lines("PUBLISH "), 3);
    assert_eq!(server.count_lines("SUBSCRIBE "), 1);
}

/// Fire-and-forget publishes arrive too, with the default payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transmitted_publishes_arrive_in_order() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let mut subscriber = JsClient::subscribe(server.port(), &["seq"], &["--count", "5"]).await;

    let mut publisher = JsClient::publish(server.port(), "seq", None, 5, true).await;

    assert_eq!(publisher.wait_exit().await, 0);
    assert_eq!(subscriber.wait_exit().await, 0);
    let seqs: Vec<Value> =
        subscriber.messages().iter().map(|message| message["data"]["seq"].clone()).collect();
    assert_eq!(seqs, vec![json!(0), json!(1), json!(2), json!(3), json!(4)]);
}

/// A token from `sign_token` is a JWT the server accepts in a handshake;
/// an expired one is reported as a failed authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_tokens_authenticate_and_expired_ones_fail() {
    let server = ScServer::start(ScServerOptions::new().auth_required()).await;

    let token = server.sign_token("alice").await;
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    let client =
        JsClient::subscribe(server.port(), &["private"], &["--token", token.as_str()]).await;
    let id = client.socket_id().expect("subscribe waits for the connection");
    server
        .next_line_matching(
            |line| line == format!("CONNECTION {id} authenticated=true token=alice"),
            WAIT,
        )
        .await;
    server.next_line_with_prefix(&format!("SUBSCRIBE {id} private authenticated=true"), WAIT).await;

    let expired = server.sign_expired_token("bob").await;
    let late = JsClient::interactive_with(server.port(), 2, &["--token", expired.as_str()]).await;
    let late_id = late.socket_id().expect("interactive waits for the connection");
    server
        .next_line_matching(
            |line| line == format!("AUTH_FAILED {late_id} AuthTokenExpiredError"),
            WAIT,
        )
        .await;
    late.send_line("sub private").await;
    let refused = late.next_line_with_prefix("SUBFAIL private ", WAIT).await;
    assert_eq!(refused, "SUBFAIL private AuthRequiredError Not authenticated");
}

/// Commands that cannot act answer ERR instead of OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_commands_report_why() {
    let server = ScServer::start(ScServerOptions::new()).await;

    let error = server
        .try_command("kickout nosuchsocket room bye", WAIT)
        .await
        .expect_err("there is no such socket");
    assert!(error.contains("nosuchsocket"), "{error}");
    assert!(server.try_command("frobnicate", WAIT).await.is_err());
}

/// The server invokes a client procedure and reports the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_invokes_reach_the_client_and_come_back() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let client = JsClient::interactive(server.port(), 2).await;
    let id = client.socket_id().expect("interactive waits for the connection");

    let reply = server.command(&format!(r#"invoke {id} hello {{"q":42}}"#)).await;

    assert_eq!(reply, vec![format!(r#"INVOKE_RESULT {id} "hi back""#)]);
    client.next_line_matching(|line| line == r#"HELLO {"q":42}"#, WAIT).await;
}

/// After a kill and a restart the server listens on the same port, a client
/// that was connected comes back on its own, and new subscribers work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_keeps_its_port_and_clients_come_back() {
    let mut server = ScServer::start(ScServerOptions::new()).await;
    let port = server.port();
    let survivor = JsClient::interactive_with(port, 2, &["--reconnect-delay", "200"]).await;
    survivor.send_line("sub news").await;
    survivor.next_line_matching(|line| line == "SUBSCRIBED news", WAIT).await;

    server.kill().await;
    survivor.next_line_with_prefix("DISCONNECTED ", WAIT).await;
    server.restart().await;

    assert_eq!(server.port(), port);
    assert_eq!(server.count_lines("READY "), 2);
    survivor.wait_connected().await;
    survivor.next_line_matching(|line| line == "SUBSCRIBED news", WAIT).await;
    let mut newcomer = JsClient::subscribe(port, &["news"], &["--count", "1"]).await;
    wait_until(
        || async { server.socket_ids().await.len() == 2 },
        WAIT,
        "both clients are connected",
    )
    .await;
    server.publish("news", &json!({"after": "restart"})).await;
    assert_eq!(newcomer.wait_exit().await, 0);
    assert_eq!(newcomer.messages(), vec![json!({"channel": "news", "data": {"after": "restart"}})]);
    survivor
        .next_line_matching(
            |line| line == r#"MSG {"channel":"news","data":{"after":"restart"}}"#,
            WAIT,
        )
        .await;
}

/// `silence` stops the server's pings to one socket while it stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silenced_socket_gets_no_more_pings_but_stays_open() {
    let server = ScServer::start(ScServerOptions::new().ping_interval_ms(100).raw_log()).await;
    let client = JsClient::interactive(server.port(), 2).await;
    let id = client.socket_id().expect("interactive waits for the connection").to_owned();
    let frames = server.stderr();
    let for_this_socket = |line: &str, matches: fn(&Value) -> bool| {
        serde_json::from_str::<Value>(line)
            .is_ok_and(|record| record["socket"] == id.as_str() && matches(&record))
    };
    let is_ping =
        |line: &str| for_this_socket(line, |frame| frame["dir"] == "out" && frame["frame"] == "");
    let is_silenced = |line: &str| for_this_socket(line, |record| record["silenced"] == true);
    for _ in 0..2 {
        frames.wait_for(is_ping, WAIT).await.expect("the server pings every 100 ms");
    }

    server.command(&format!("silence {id}")).await;
    // The server logs a ping before it sends it, and marks the silence in
    // the same log, so the order of the lines tells what came after.
    let silenced = frames.wait_for_index(0, is_silenced, WAIT).await.expect("the silence logged");
    let late_ping = frames.wait_for_index(silenced + 1, is_ping, Duration::from_millis(800)).await;

    assert_eq!(
        late_ping.map(|index| frames.snapshot()[index].clone()),
        None,
        "a ping after silence"
    );
    assert_eq!(server.socket_ids().await, vec![id.clone()]);
    assert_eq!(server.count_lines("DISCONNECT "), 0);
}

/// Protocol 1 pings with "#1" and the JS client answers "#2".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_one_pings_and_pongs() {
    let server =
        ScServer::start(ScServerOptions::new().protocol(1).ping_interval_ms(100).raw_log()).await;
    let _client = JsClient::interactive(server.port(), 1).await;

    wait_until(
        || {
            let frames = server.raw_frames();
            let has = |dir: &str, text: &str| {
                frames.iter().any(|frame| frame["dir"] == dir && frame["frame"] == text)
            };
            has("out", "#1") && has("in", "#2")
        },
        WAIT,
        "a #1 ping and a #2 pong",
    )
    .await;
}

/// SIGTERM closes every socket with 1001 and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_closes_sockets_and_exits_cleanly() {
    let mut server = ScServer::start(ScServerOptions::new()).await;
    let client = JsClient::interactive(server.port(), 2).await;

    assert_eq!(server.stop().await, Some(0));
    assert_eq!(server.count_lines("STOPPED"), 1);
    let closed = client.next_line_with_prefix("DISCONNECTED ", WAIT).await;
    assert!(closed.starts_with("DISCONNECTED 1001"), "{closed}");
}
