//! The SocketCluster client against the real socketcluster-server 20 (and
//! the real JS client), over loopback, protocol v2 and v1.

mod support;

use std::time::Duration;

use scbridge::sc::{
    AuthToken, Incoming, InvokeError, LinkState, Protocol, ScClient, ScConfig, ScStats,
};
use serde_json::{Value, json};
use support::sc_peer::{JsClient, ScServer, ScServerOptions, wait_until};
use tokio::sync::mpsc;
use url::Url;

/// A generous bound for anything that should happen promptly on loopback.
const WAIT: Duration = Duration::from_secs(10);

fn config_for(server: &ScServer) -> ScConfig {
    let mut config = ScConfig::new(Url::parse(&server.url()).expect("server url"));
    config.reconnect.delay = Duration::from_millis(200);
    config.protocol = if server.options().protocol == 1 { Protocol::V1 } else { Protocol::V2 };
    config
}

/// Waits until the link is connected; returns the socket id.
async fn connected(client: &ScClient) -> String {
    let mut states = client.link_state();
    let state = tokio::time::timeout(WAIT, states.wait_for(LinkState::is_connected))
        .await
        .expect("connected in time")
        .expect("link task alive")
        .clone();
    match state {
        LinkState::Connected { socket_id, .. } => socket_id,
        other => panic!("not connected: {other:?}"),
    }
}

/// Waits until the client is connected and the server has reported that very
/// connection (consuming its CONNECTION line); returns the socket id.
async fn connected_to(server: &ScServer, client: &ScClient) -> String {
    let from_server = server.next_socket_id(WAIT).await;
    assert_eq!(connected(client).await, from_server);
    from_server
}

/// Waits for a link state that satisfies `check`.
async fn state_where(client: &ScClient, check: impl FnMut(&LinkState) -> bool) -> LinkState {
    let mut states = client.link_state();
    let state = tokio::time::timeout(WAIT, states.wait_for(check))
        .await
        .expect("state reached in time")
        .expect("link task alive");
    state.clone()
}

async fn next_incoming(incoming: &mut mpsc::Receiver<Incoming>) -> Incoming {
    tokio::time::timeout(WAIT, incoming.recv()).await.expect("a message in time").expect("open")
}

fn counter(client: &ScClient, pick: impl Fn(&ScStats) -> &std::sync::atomic::AtomicU64) -> u64 {
    ScStats::get(pick(client.stats()))
}

async fn round_trip_on(protocol: u8) {
    let server =
        ScServer::start(ScServerOptions::new().protocol(protocol).ping_interval_ms(100)).await;
    let (client, mut incoming) = ScClient::start(config_for(&server));
    client.subscribe("chA", false).await;
    let socket_id = connected_to(&server, &client).await;
    server
        .next_line_matching(|l| l.starts_with(&format!("SUBSCRIBE {socket_id} chA ")), WAIT)
        .await;

    server.publish("chA", &json!({"from": "server", "n": 1})).await;
    assert_eq!(
        next_incoming(&mut incoming).await,
        Incoming::Publish { channel: "chA".into(), data: json!({"from": "server", "n": 1}) }
    );

    client.invoke_publish("chA", &json!({"hello": "world"})).await.expect("publish acked");
    server
        .next_line_matching(
            |l| l == format!(r#"PUBLISH {socket_id} chA {{"hello":"world"}}"#),
            WAIT,
        )
        .await;
    // The server echoes our own publish back to us, as to every subscriber.
    assert_eq!(
        next_incoming(&mut incoming).await,
        Incoming::Publish { channel: "chA".into(), data: json!({"hello": "world"}) }
    );
    // Pings were answered with this version's pong, so the link stayed up.
    wait_until(|| counter(&client, |s| &s.pings) >= 3, WAIT, "three pings").await;
    assert_eq!(counter(&client, |s| &s.connections), 1);
    assert_eq!(server.count_lines("DISCONNECT "), 0);
}

/// Handshake, subscribe and publish both ways work on protocol v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_subscribe_and_publish_round_trip_on_protocol_2() {
    round_trip_on(2).await;
}

/// The same on protocol v1 (`#1`/`#2` pings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_subscribe_and_publish_round_trip_on_protocol_1() {
    round_trip_on(1).await;
}

/// A message from the JS socketcluster-client reaches the Rust client, and
/// the Rust client's publish reaches the JS client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_between_the_js_client_and_the_rust_client() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let (client, mut incoming) = ScClient::start(config_for(&server));
    client.subscribe("from-js", false).await;
    let socket_id = connected_to(&server, &client).await;
    server
        .next_line_matching(|l| l.starts_with(&format!("SUBSCRIBE {socket_id} from-js")), WAIT)
        .await;
    let js = JsClient::subscribe(server.port(), &["from-rust"], &[]).await;

    let mut publisher =
        JsClient::publish(server.port(), "from-js", Some(r#"{"v":[1,2.5,"x",null]}"#), 1, false)
            .await;
    assert_eq!(publisher.wait_exit().await, 0);
    assert_eq!(
        next_incoming(&mut incoming).await,
        Incoming::Publish { channel: "from-js".into(), data: json!({"v": [1, 2.5, "x", null]}) }
    );

    client.publish("from-rust", &json!({"seq": 7}));
    js.next_line_with_prefix("MSG ", WAIT).await;
    assert_eq!(js.messages(), vec![json!({"channel": "from-rust", "data": {"seq": 7}})]);
}

/// Killed and restarted mid-stream, the server sees the client come back
/// after the configured delay, and every channel subscribed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_gets_every_subscription_back_exactly_once() {
    let mut server = ScServer::start(ScServerOptions::new()).await;
    let (client, mut incoming) = ScClient::start(config_for(&server));
    for channel in ["a", "b", "c"] {
        client.subscribe(channel, false).await;
    }
    connected_to(&server, &client).await;
    wait_until(|| server.count_lines("SUBSCRIBE ") == 3, WAIT, "three subscribes").await;

    server.kill().await;
    let down = state_where(&client, |s| matches!(s, LinkState::Disconnected { .. })).await;
    let LinkState::Disconnected { retry_in, .. } = down else { unreachable!() };
    assert_eq!(retry_in, Duration::from_millis(200), "the configured reconnect delay");
    server.restart().await;

    let socket_id = connected_to(&server, &client).await;
    wait_until(|| server.count_lines("SUBSCRIBE ") == 6, WAIT, "three more subscribes").await;
    let after: Vec<String> = server
        .lines_so_far()
        .into_iter()
        .filter(|l| l.starts_with(&format!("SUBSCRIBE {socket_id} ")))
        .map(|l| l.split(' ').nth(2).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(after, vec!["a", "b", "c"]);

    server.publish("b", &json!("after restart")).await;
    assert_eq!(
        next_incoming(&mut incoming).await,
        Incoming::Publish { channel: "b".into(), data: json!("after restart") }
    );
    // The publish went out after every subscribe the client sent was read,
    // so a duplicate would be among the lines by now.
    assert_eq!(server.count_lines("SUBSCRIBE "), 6, "{:?}", server.lines_so_far());
    assert_eq!(counter(&client, |s| &s.connections), 2);
}

/// A token from the config authenticates the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_config_authenticates_the_handshake() {
    let server = ScServer::start(ScServerOptions::new().auth_required()).await;
    let token = server.sign_token("alice").await;
    let mut config = config_for(&server);
    config.auth = AuthToken::Inline(scbridge::sc::config::Secret(token));
    let (client, _incoming) = ScClient::start(config);
    client.subscribe("private", false).await;

    let socket_id = connected_to(&server, &client).await;
    assert!(
        server
            .lines_so_far()
            .contains(&format!("CONNECTION {socket_id} authenticated=true token=alice"))
    );
    server
        .next_line_matching(
            |l| l == format!("SUBSCRIBE {socket_id} private authenticated=true"),
            WAIT,
        )
        .await;
    assert!(matches!(
        client.link_state().borrow().clone(),
        LinkState::Connected { authenticated: true, .. }
    ));
}

/// A wait-for-auth channel is subscribed only after the login, and a plain
/// channel at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_auth_channel_is_subscribed_after_login() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let (client, _incoming) = ScClient::start(config_for(&server));
    client.subscribe("public", false).await;
    client.subscribe("private", true).await;
    let socket_id = connected_to(&server, &client).await;
    server
        .next_line_matching(|l| l.starts_with(&format!("SUBSCRIBE {socket_id} public ")), WAIT)
        .await;

    let answer = client.invoke("login", Some("alice")).await.expect("login answered");
    assert_eq!(answer, Some(json!("ok")));
    server
        .next_line_matching(
            |l| l == format!("SUBSCRIBE {socket_id} private authenticated=true"),
            WAIT,
        )
        .await;
    let lines = server.lines_so_far();
    let position = |prefix: String| {
        lines.iter().position(|l| l.starts_with(&prefix)).unwrap_or_else(|| {
            panic!("no line starting {prefix:?}: {lines:?}");
        })
    };
    assert!(
        position(format!("AUTHENTICATED {socket_id}"))
            < position(format!("SUBSCRIBE {socket_id} private")),
        "subscribed before authenticated: {lines:?}"
    );
    assert_eq!(server.count_lines(&format!("SUBSCRIBE {socket_id} private ")), 1);
}

/// A bad token is reported by the server, counted, dropped, and the client
/// carries on unauthenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_gets_an_auth_error_and_the_client_carries_on() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let mut config = config_for(&server);
    config.auth = AuthToken::Inline(scbridge::sc::config::Secret("not.a.jwt".into()));
    let (client, mut incoming) = ScClient::start(config);
    client.subscribe("open", false).await;
    let socket_id = connected_to(&server, &client).await;

    server.next_line_matching(|l| l.starts_with(&format!("AUTH_FAILED {socket_id} ")), WAIT).await;
    wait_until(|| counter(&client, |s| &s.auth_errors) == 1, WAIT, "auth error counted").await;
    server
        .next_line_matching(|l| l.starts_with(&format!("SUBSCRIBE {socket_id} open ")), WAIT)
        .await;
    server.publish("open", &json!(1)).await;
    assert_eq!(
        next_incoming(&mut incoming).await,
        Incoming::Publish { channel: "open".into(), data: json!(1) }
    );
}

/// A token rotated in its file is used on the next reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_in_its_file_is_used_on_the_next_reconnect() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let dir = std::env::temp_dir().join(format!("scbridge-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{}\n", server.sign_token("alice").await))
        .expect("write token");
    let mut config = config_for(&server);
    config.auth = AuthToken::File(token_file.clone());
    let (client, _incoming) = ScClient::start(config);
    let first = connected_to(&server, &client).await;
    assert!(
        server
            .lines_so_far()
            .contains(&format!("CONNECTION {first} authenticated=true token=alice"))
    );

    std::fs::write(&token_file, server.sign_token("bob").await).expect("rotate token");
    server.command(&format!("disconnect {first} 4321 rotate")).await;

    let second = server.next_socket_id(WAIT).await;
    assert!(
        server
            .lines_so_far()
            .contains(&format!("CONNECTION {second} authenticated=true token=bob"))
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A server that stops pinging is declared dead after its pingTimeout; the
/// client closes with 4000 and reconnects at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_detected_and_the_client_reconnects() {
    let server =
        ScServer::start(ScServerOptions::new().ping_interval_ms(100).ping_timeout_ms(800)).await;
    let mut config = config_for(&server);
    // A retry after the backoff would come long after the test gives up,
    // so a reconnect within the wait shows it came at once. (The
    // Disconnected state in between is replaced at once too, too briefly
    // for a watch to be sure to show it.)
    config.reconnect.delay = WAIT * 6;
    config.reconnect.max_delay = WAIT * 6;
    let (client, _incoming) = ScClient::start(config);
    let first = connected_to(&server, &client).await;

    server.command(&format!("silence {first}")).await;

    server.next_line_matching(|l| l.starts_with(&format!("DISCONNECT {first} 4000 ")), WAIT).await;
    let second = connected_to(&server, &client).await;
    assert_ne!(first, second);
}

/// A kicked-out channel is dropped: nothing more arrives on it and it is not
/// subscribed again after a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_out_channel_is_dropped_for_good() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let (client, mut incoming) = ScClient::start(config_for(&server));
    client.subscribe("room", false).await;
    client.subscribe("lobby", false).await;
    let first = connected_to(&server, &client).await;
    wait_until(|| server.count_lines("SUBSCRIBE ") == 2, WAIT, "two subscribes").await;

    server.command(&format!("kickout {first} room go away")).await;
    wait_until(|| counter(&client, |s| &s.kick_outs) == 1, WAIT, "kick-out noticed").await;
    server.publish("room", &json!("ignored")).await;
    server.publish("lobby", &json!("still here")).await;
    assert_eq!(
        next_incoming(&mut incoming).await,
        Incoming::Publish { channel: "lobby".into(), data: json!("still here") }
    );

    client.reset().await;
    let second = server.next_socket_id(WAIT).await;
    server.next_line_matching(|l| l.starts_with(&format!("SUBSCRIBE {second} lobby")), WAIT).await;
    assert_eq!(server.count_lines(&format!("SUBSCRIBE {second} room")), 0);
}

/// Active off closes cleanly and makes no attempts; active on connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_toggle_stops_and_restarts_the_link() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let mut config = config_for(&server);
    config.reconnect.delay = Duration::from_millis(20);
    let (client, _incoming) = ScClient::start(config);
    let first = connected_to(&server, &client).await;

    client.set_active(false).await;
    state_where(&client, |s| *s == LinkState::Inactive).await;
    server.next_line_matching(|l| l.starts_with(&format!("DISCONNECT {first} 1000 ")), WAIT).await;
    // Twenty-five reconnect delays pass; an inactive link must not try once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.count_lines("CONNECTION "), 1);
    assert_eq!(counter(&client, |s| &s.connect_failures), 0);

    client.set_active(true).await;
    let second = connected_to(&server, &client).await;
    assert_ne!(first, second);
    assert_eq!(server.count_lines("CONNECTION "), 2);
}

/// An invoke nobody answers fails with a timeout after the ack timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_invoke_times_out() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let mut config = config_for(&server);
    config.ack_timeout = Duration::from_millis(300);
    let (client, _incoming) = ScClient::start(config);
    connected(&client).await;

    let answer = client.invoke("noSuchProcedure", Some(1)).await;
    assert_eq!(answer, Err(InvokeError::Timeout));
    assert_eq!(counter(&client, |s| &s.invokes_timed_out), 1);
    // An answered one still works, and an error reply keeps name and message.
    assert_eq!(client.invoke("echo", Some(json!({"a": 1}))).await, Ok(Some(json!({"a": 1}))));
    match client.invoke::<()>("fail", None).await {
        Err(InvokeError::Remote(err)) => assert_eq!(err.to_string(), "CustomError: fail requested"),
        other => panic!("expected the server's error, got {other:?}"),
    }
}

/// Messages sent while the server is down wait in the bounded queue, go out
/// in order after the reconnect, and what overflowed is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_flush_in_order_after_a_reconnect_and_overflow_is_counted() {
    let mut server = ScServer::start(ScServerOptions::new()).await;
    let mut config = config_for(&server);
    config.queue_size = 5;
    let (client, _incoming) = ScClient::start(config);
    connected_to(&server, &client).await;

    server.kill().await;
    state_where(&client, |s| matches!(s, LinkState::Disconnected { .. })).await;
    for seq in 0..8 {
        client.publish("q", &json!({"seq": seq}));
    }
    assert_eq!(client.queued(), 5);
    assert_eq!(counter(&client, |s| &s.queue_overflow), 3);
    server.restart().await;

    let socket_id = server.next_socket_id(WAIT).await;
    wait_until(
        || server.count_lines(&format!("PUBLISH {socket_id} q ")) == 5,
        WAIT,
        "five publishes",
    )
    .await;
    let seqs: Vec<Value> = server
        .lines_so_far()
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("PUBLISH {socket_id} q ")))
        .map(|json| serde_json::from_str::<Value>(json).expect("json")["seq"].clone())
        .collect();
    assert_eq!(seqs, vec![json!(3), json!(4), json!(5), json!(6), json!(7)]);
    assert_eq!(client.queued(), 0);
}

/// The server's own invokes are answered, and its batched frames (a JSON
/// array at top level) are taken apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_invokes_are_answered_and_batches_are_unpacked() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let (client, mut incoming) = ScClient::start(config_for(&server));
    client.subscribe("bat", false).await;
    let socket_id = connected_to(&server, &client).await;
    server.next_line_matching(|l| l.starts_with(&format!("SUBSCRIBE {socket_id} bat")), WAIT).await;

    let reply = server.command(&format!(r#"invoke {socket_id} hello {{"q":42}}"#)).await;
    assert_eq!(reply, vec![format!("INVOKE_RESULT {socket_id} -")]);
    assert_eq!(
        next_incoming(&mut incoming).await,
        Incoming::Event { event: "hello".into(), data: json!({"q": 42}) }
    );

    server.command(&format!("batch {socket_id} on")).await;
    for n in 0..3 {
        server.publish("bat", &json!(n)).await;
    }
    for n in 0..3 {
        assert_eq!(
            next_incoming(&mut incoming).await,
            Incoming::Publish { channel: "bat".into(), data: json!(n) }
        );
    }
    assert_eq!(counter(&client, |s| &s.malformed_frames), 0);
}

/// Reset closes and reconnects at once, with a new socket id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_reconnects_with_a_new_socket() {
    let server = ScServer::start(ScServerOptions::new()).await;
    let (client, _incoming) = ScClient::start(config_for(&server));
    let first = connected_to(&server, &client).await;

    client.reset().await;

    server.next_line_matching(|l| l.starts_with(&format!("DISCONNECT {first} 1000 ")), WAIT).await;
    let second = server.next_socket_id(WAIT).await;
    assert_ne!(first, second);
    assert_eq!(connected(&client).await, second);
}

/// When the first connect fails (no server yet), it is just another retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_connect_is_retried_until_the_server_is_there() {
    let mut server = ScServer::start(ScServerOptions::new()).await;
    let config = config_for(&server);
    server.kill().await;
    let (client, _incoming) = ScClient::start(config);
    wait_until(|| counter(&client, |s| &s.connect_failures) >= 2, WAIT, "two failed attempts")
        .await;

    server.restart().await;
    connected_to(&server, &client).await;
    assert_eq!(counter(&client, |s| &s.connections), 1);
}

/// Against a `wss://` server with a private CA: the certificate is verified
/// by default (and refused), accepted with the CA file, and accepted without
/// it only when verification is switched off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_by_default_and_a_ca_file_or_the_off_switch_gets_through() {
    let server = ScServer::start(ScServerOptions::new().tls()).await;
    assert!(server.url().starts_with("wss://"));

    let (strict, _incoming) = ScClient::start(config_for(&server));
    let refused = state_where(&strict, |s| matches!(s, LinkState::Disconnected { .. })).await;
    let LinkState::Disconnected { reason, .. } = refused else { unreachable!() };
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    strict.set_active(false).await;

    let mut with_ca = config_for(&server);
    with_ca.ca_file = Some(support::sc_peer::test_ca_file());
    let (trusted, _incoming) = ScClient::start(with_ca);
    connected_to(&server, &trusted).await;

    let mut unverified = config_for(&server);
    unverified.verify_tls = false;
    let (insecure, _incoming) = ScClient::start(unverified);
    connected_to(&server, &insecure).await;
    assert_eq!(server.count_lines("CONNECTION "), 2);
}
