//! The observability listener over real TCP on loopback: status lines,
//! content types and bodies of `/metrics`, `/health` and `/recent`, the
//! refusals (404, 405, 400), the connection limit and the shutdown. A fake
//! `Observe` whose values the tests change stands in for the bridge; every
//! request is written and read as raw bytes on a `TcpStream`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use scbridge::http::{
    Health, MAX_CONNECTIONS, MetricFamily, MetricKind, Observe, REQUEST_TIMEOUT, RecentLog, Sample,
    start,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long any single expected event may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

/// What the listener shows, changeable from the test.
#[derive(Default)]
struct Fake {
    messages: AtomicU64,
    unhealthy: AtomicBool,
    recent: RecentLog,
}

impl Observe for Fake {
    fn metrics(&self) -> Vec<MetricFamily> {
        vec![MetricFamily {
            name: "scbridge_messages_total".to_owned(),
            help: "Messages routed.".to_owned(),
            kind: MetricKind::Counter,
            samples: vec![Sample {
                labels: vec![("endpoint".to_owned(), "osc".to_owned())],
                value: self.messages.load(Ordering::Relaxed) as f64,
            }],
        }]
    }

    fn health(&self) -> Health {
        let healthy = !self.unhealthy.load(Ordering::Relaxed);
        Health { healthy, body: json!({"socketcluster": if healthy { "up" } else { "down" }}) }
    }

    fn recent(&self) -> Vec<Value> {
        self.recent.snapshot()
    }
}

/// A running listener, its fake, and a guard that stops it.
struct Running {
    addr: SocketAddr,
    fake: Arc<Fake>,
    shutdown: CancellationToken,
    _stop: DropGuard,
}

async fn start_listener() -> Running {
    let fake = Arc::new(Fake::default());
    let shutdown = CancellationToken::new();
    let addr = start(SocketAddr::from(([127, 0, 0, 1], 0)), fake.clone(), shutdown.clone())
        .await
        .expect("the listener binds");
    Running { addr, fake, _stop: shutdown.clone().drop_guard(), shutdown }
}

/// A response split into its status line, headers and body.
#[derive(Debug)]
struct Reply {
    status_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// Sends raw bytes and reads until the server closes the connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    timeout(WAIT, async {
        let mut stream = TcpStream::connect(addr).await.expect("the listener accepts");
        stream.write_all(request).await.expect("the request is sent");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("the response is read");
        response
    })
    .await
    .expect("the server answers and closes in time")
}

fn parse(bytes: &[u8]) -> Reply {
    let text = String::from_utf8(bytes.to_vec()).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").expect("a `name: value` header");
            (name.to_owned(), value.to_owned())
        })
        .collect();
    Reply { status_line, headers, body: body.to_owned() }
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    parse(&exchange(addr, request.as_bytes()).await)
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path).await
}

/// Every reply says how long its body is and that the connection closes.
fn assert_framed(reply: &Reply) {
    assert_eq!(reply.header("Content-Length"), Some(reply.body.len().to_string().as_str()));
    assert_eq!(reply.header("Connection"), Some("close"));
}

/// `/metrics` answers the Prometheus text format with the current counters.
#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let running = start_listener().await;
    let reply = get(running.addr, "/metrics").await;
    assert_eq!(reply.status_line, "HTTP/1.1 200 OK");
    assert_eq!(reply.header("Content-Type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert_framed(&reply);
    assert_eq!(
        reply.body,
        "# HELP scbridge_messages_total Messages routed.\n\
         # TYPE scbridge_messages_total counter\n\
         scbridge_messages_total{endpoint=\"osc\"} 0\n"
    );
}

/// A counter that changed between two scrapes shows its new value in the second.
#[tokio::test]
async fn a_counter_change_shows_up_in_the_next_scrape() {
    let running = start_listener().await;
    assert!(get(running.addr, "/metrics").await.body.contains("{endpoint=\"osc\"} 0\n"));
    running.fake.messages.fetch_add(7, Ordering::Relaxed);
    assert!(get(running.addr, "/metrics").await.body.contains("{endpoint=\"osc\"} 7\n"));
}

/// `/health` answers 200 with the JSON body while healthy, 503 with it when not.
#[tokio::test]
async fn health_is_200_when_healthy_and_503_with_the_body_when_not() {
    let running = start_listener().await;
    let reply = get(running.addr, "/health").await;
    assert_eq!(reply.status_line, "HTTP/1.1 200 OK");
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert_framed(&reply);
    assert_eq!(reply.json(), json!({"socketcluster": "up"}));

    running.fake.unhealthy.store(true, Ordering::Relaxed);
    let reply = get(running.addr, "/health").await;
    assert_eq!(reply.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert_framed(&reply);
    assert_eq!(reply.json(), json!({"socketcluster": "down"}));
}

/// `/recent` answers a JSON array of the logged messages, oldest first.
#[tokio::test]
async fn recent_lists_the_logged_messages_oldest_first() {
    let running = start_listener().await;
    assert_eq!(get(running.addr, "/recent").await.json(), json!([]));
    for n in 1..=3 {
        running.fake.recent.push(json!({"channel": "demo", "n": n}));
    }
    let reply = get(running.addr, "/recent").await;
    assert_eq!(reply.status_line, "HTTP/1.1 200 OK");
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert_framed(&reply);
    assert_eq!(
        reply.json(),
        json!([
            {"channel": "demo", "n": 1},
            {"channel": "demo", "n": 2},
            {"channel": "demo", "n": 3},
        ])
    );
}

/// A query string does not change which endpoint answers.
#[tokio::test]
async fn a_query_string_is_ignored() {
    let running = start_listener().await;
    assert_eq!(get(running.addr, "/health?verbose=1").await.status_line, "HTTP/1.1 200 OK");
}

/// `HEAD` gets the headers `GET` would get, with the GET length, and no body.
#[tokio::test]
async fn head_gets_the_headers_without_a_body() {
    let running = start_listener().await;
    let full = get(running.addr, "/metrics").await;
    let reply = request(running.addr, "HEAD", "/metrics").await;
    assert_eq!(reply.status_line, "HTTP/1.1 200 OK");
    assert_eq!(reply.header("Content-Type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert_eq!(reply.header("Content-Length"), Some(full.body.len().to_string().as_str()));
    assert_eq!(reply.header("Connection"), Some("close"));
    assert_eq!(reply.body, "");
}

/// A path that is not one of the three endpoints gets 404.
#[tokio::test]
async fn an_unknown_path_is_not_found() {
    let running = start_listener().await;
    let reply = get(running.addr, "/metrics/extra").await;
    assert_eq!(reply.status_line, "HTTP/1.1 404 Not Found");
    assert_framed(&reply);
}

/// Any method but GET and HEAD gets 405 and the methods that are allowed.
#[tokio::test]
async fn other_methods_are_not_allowed() {
    let running = start_listener().await;
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let reply = request(running.addr, method, "/metrics").await;
        assert_eq!(reply.status_line, "HTTP/1.1 405 Method Not Allowed", "{method}");
        assert_eq!(reply.header("Allow"), Some("GET, HEAD"), "{method}");
        assert_framed(&reply);
    }
}

/// Garbage gets 400, and the next good request is served.
#[tokio::test]
async fn garbage_is_refused_and_the_server_keeps_answering() {
    let running = start_listener().await;
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
        b"hello there\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nthis is not a header\r\n\r\n",
    ] {
        let reply = parse(&exchange(running.addr, garbage).await);
        assert_eq!(reply.status_line, "HTTP/1.1 400 Bad Request");
        assert_framed(&reply);
        assert_eq!(get(running.addr, "/health").await.status_line, "HTTP/1.1 200 OK");
    }
}

/// A request head over 8 KiB gets 400, not a hang, and the server keeps answering.
#[tokio::test]
async fn an_oversized_head_is_refused() {
    let running = start_listener().await;
    let mut request = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for n in 0..400 {
        request.extend_from_slice(format!("X-Padding-{n}: {}\r\n", "x".repeat(20)).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let reply = parse(&exchange(running.addr, &request).await);
    assert_eq!(reply.status_line, "HTTP/1.1 400 Bad Request");
    assert_framed(&reply);
    assert_eq!(get(running.addr, "/health").await.status_line, "HTTP/1.1 200 OK");
}

/// A client that never finishes its request is disconnected after the timeout.
///
/// The paused clock skips the 5 s wait. It is safe with real sockets here:
/// tokio polls for I/O before it advances a paused clock, and loopback I/O
/// is ready at once, so the clock only jumps once both sides really wait.
#[tokio::test(start_paused = true)]
async fn a_silent_client_is_disconnected_after_the_request_timeout() {
    let running = start_listener().await;
    let mut stream = TcpStream::connect(running.addr).await.expect("the listener accepts");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.expect("the request starts");
    let started = tokio::time::Instant::now();
    let mut response = Vec::new();
    let before =
        timeout(REQUEST_TIMEOUT - Duration::from_secs(1), stream.read_to_end(&mut response));
    assert!(before.await.is_err(), "closed before the timeout: {response:?}");
    timeout(WAIT, stream.read_to_end(&mut response)).await.expect("closed").expect("read");
    assert!(response.is_empty(), "{:?}", String::from_utf8_lossy(&response));
    assert!(started.elapsed() >= REQUEST_TIMEOUT, "closed after {:?}", started.elapsed());
}

/// Beyond the connection limit a client waits until a slot frees, then is served.
#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let running = start_listener().await;
    // Each holds a slot with a request that is not finished yet.
    let mut holders = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut stream = TcpStream::connect(running.addr).await.expect("the listener accepts");
        stream.write_all(b"GET /health HTTP/1.1\r\n").await.expect("the request starts");
        holders.push(stream);
    }
    let mut waiting = TcpStream::connect(running.addr).await.expect("the kernel queues it");
    waiting
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("the request is sent");
    let mut response = Vec::new();
    // Absence: no answer while every slot is held. A bounded window is the
    // only way to observe that nothing comes.
    let early = timeout(Duration::from_millis(300), waiting.read_to_end(&mut response)).await;
    assert!(early.is_err(), "answered while every slot was taken: {response:?}");

    let mut first = holders.swap_remove(0);
    first.write_all(b"Host: x\r\n\r\n").await.expect("the request ends");
    let mut freed = Vec::new();
    timeout(WAIT, first.read_to_end(&mut freed)).await.expect("in time").expect("read");
    assert_eq!(parse(&freed).status_line, "HTTP/1.1 200 OK");

    timeout(WAIT, waiting.read_to_end(&mut response)).await.expect("in time").expect("read");
    assert_eq!(parse(&response).status_line, "HTTP/1.1 200 OK");
}

/// After the shutdown token is cancelled the port stops accepting connections.
#[tokio::test]
async fn after_shutdown_the_port_stops_accepting() {
    let running = start_listener().await;
    assert_eq!(get(running.addr, "/health").await.status_line, "HTTP/1.1 200 OK");
    running.shutdown.cancel();
    timeout(WAIT, async {
        // The accept loop drops the listener as soon as it sees the token;
        // until then a connect may still succeed, so try again.
        while TcpStream::connect(running.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the port is closed in time");
}

/// A port that is already taken is reported with the address asked for.
#[tokio::test]
async fn binding_a_taken_port_names_the_address() {
    let running = start_listener().await;
    let err = start(running.addr, running.fake.clone(), CancellationToken::new())
        .await
        .expect_err("the port is taken");
    assert_eq!(
        err.to_string().split(": ").next(),
        Some(format!("cannot bind the HTTP listener {}", running.addr).as_str())
    );
}
