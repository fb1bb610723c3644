//! The optional observability listener: a tiny HTTP/1.1 server that shows
//! what the bridge is doing, and nothing else.
//!
//! It owns the TCP listener, one task per connection and the wire format of
//! three read-only endpoints; what they show comes from an [`Observe`]
//! implementation (the bridge's):
//!
//! - `GET /metrics`: the counters and gauges in the Prometheus text
//!   exposition format 0.0.4 ([`render_prometheus`]).
//! - `GET /health`: a JSON body, `200` when healthy and `503` when not
//!   ([`Health`]).
//! - `GET /recent`: the last routed messages as a JSON array, oldest first
//!   (kept by a [`RecentLog`]).
//!
//! `HEAD` gets the same headers without the body; other paths get `404`, other
//! methods `405` with `Allow: GET, HEAD`. Every response carries
//! `Content-Length` and `Connection: close`: one request per connection keeps
//! the server simple, and scrapers and health probes are fine with it.
//!
//! Why hand-written: three GET endpoints on loopback do not justify the build
//! time and binary size of hyper or axum on the small boxes this daemon runs
//! on. The price is a deliberately narrow server: no keep-alive, no request
//! bodies, no chunked encoding, no TLS. A request head must arrive whole
//! within [`REQUEST_TIMEOUT`] and fit in [`MAX_HEAD_BYTES`]; a malformed or
//! oversized one gets `400`, a silent client is simply disconnected. At most
//! [`MAX_CONNECTIONS`] connections are served at once; further ones wait in
//! the kernel's accept queue until a slot frees.
//!
//! The configured address should stay on loopback (the config's default):
//! `/recent` shows routed payloads, and nothing here authenticates anyone.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::stats::worth_logging;

/// How long a client may take to send its whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request head (request line and headers) read; larger ones get `400`.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// How many connections are served at once; further ones wait to be accepted.
pub const MAX_CONNECTIONS: usize = 32;

/// How long writing a response may take before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long, and for how many bytes, [`linger`] drains a closing connection.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// How many answered connections may linger at once. Past that a
/// connection is closed as soon as it is answered: a client that keeps
/// opening connections and never closes them must not hold file
/// descriptors the links need.
const MAX_LINGERING: usize = 64;

/// Pause after a failed `accept`, so that a lasting error (out of file
/// descriptors) does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The kind of a metric family, as the `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only ever goes up (until a restart).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// One metric: a name, its help text, its kind and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricFamily {
    /// The metric name; characters outside `[a-zA-Z0-9_:]` are replaced with
    /// `_` on output (and a leading digit gets a `_` in front).
    pub name: String,
    /// One line of help; any newline or backslash is escaped on output.
    pub help: String,
    pub kind: MetricKind,
    /// One per label set; may be empty.
    pub samples: Vec<Sample>,
}

/// One value of a metric family, with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `(name, value)` pairs in output order; names are sanitised like metric
    /// names (without `:`), values are escaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// A sample without labels.
    pub fn new(value: f64) -> Self {
        Sample { labels: Vec::new(), value }
    }
}

/// What `/health` answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `200` when true, `503` when false.
    pub healthy: bool,
    /// The JSON body, whatever the status.
    pub body: serde_json::Value,
}

/// What the listener shows; the bridge implements it.
///
/// The methods are called on the runtime for every request, so they should
/// only read counters and copy small state, never block.
pub trait Observe: Send + Sync + 'static {
    /// Every metric family for `/metrics`.
    fn metrics(&self) -> Vec<MetricFamily>;
    /// The state for `/health`.
    fn health(&self) -> Health;
    /// The recently routed messages for `/recent`, oldest first.
    fn recent(&self) -> Vec<serde_json::Value>;
}

/// The most bytes of JSON text a value keeps in `/recent`. A cables patch
/// may send an image as a data URL: a hundred of those would hold a hundred
/// megabytes, copied again for every request.
pub const MAX_RECENT_VALUE_BYTES: usize = 4096;

/// The most characters of a name (a topic, an address) in `/recent`.
pub const MAX_RECENT_NAME_CHARS: usize = 256;
/// The most outputs of one message listed in `/recent` (an object split
/// into OSC messages can make thousands).
pub const MAX_RECENT_OUTPUTS: usize = 16;

/// A value as `/recent` keeps it: itself when its JSON text is at most
/// `limit` bytes, otherwise the start of that text, cut and marked so.
pub fn bounded_copy(value: &serde_json::Value, limit: usize) -> serde_json::Value {
    // Most values fit: they are only counted, not written out.
    if crate::stats::json_fits(value, limit) {
        return value.clone();
    }
    let start = crate::stats::json_within(value, limit).unwrap_or_else(|start| start);
    serde_json::Value::String(format!("{start}… (cut: over {limit} bytes of JSON)"))
}

/// The last N routed messages (SocketIO DAT's "Clamp Output"/"Max Lines"):
/// [`push`](RecentLog::push) drops the oldest once full.
#[derive(Debug)]
pub struct RecentLog {
    capacity: usize,
    /// Shared, so that a snapshot copies pointers under the lock the
    /// router takes for every message, and the values after it.
    entries: Mutex<VecDeque<Arc<serde_json::Value>>>,
}

impl RecentLog {
    /// The default number of entries kept, as SocketIO DAT's "Max Lines".
    pub const DEFAULT_CAPACITY: usize = 100;

    /// A log that keeps the last `capacity` entries; `0` keeps nothing.
    pub fn new(capacity: usize) -> Self {
        // Capped so that a huge configured capacity costs memory only as
        // entries actually arrive.
        let entries = VecDeque::with_capacity(capacity.min(1024));
        RecentLog { capacity, entries: Mutex::new(entries) }
    }

    /// Appends an entry, dropping the oldest when the log is full.
    pub fn push(&self, entry: serde_json::Value) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.lock();
        while entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(Arc::new(entry));
    }

    /// A copy of the entries, oldest first.
    pub fn snapshot(&self) -> Vec<serde_json::Value> {
        let shared: Vec<Arc<serde_json::Value>> = self.lock().iter().cloned().collect();
        shared.iter().map(|entry| serde_json::Value::clone(entry)).collect()
    }

    /// How many entries the log holds now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the log holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many entries the log keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<serde_json::Value>>> {
        // A panic elsewhere while holding the lock leaves a deque that is
        // still valid; keep using it rather than spreading the panic.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for RecentLog {
    fn default() -> Self {
        RecentLog::new(RecentLog::DEFAULT_CAPACITY)
    }
}

/// Renders metric families in the Prometheus text exposition format 0.0.4:
/// a `# HELP` and a `# TYPE` line per family, then one line per sample.
///
/// Names are sanitised to `[a-zA-Z_:][a-zA-Z0-9_:]*` (label names without
/// `:`), label values are escaped (`\\`, `\"`, `\n`), and values print as
/// Rust prints an `f64` (integers without `.0`), with `NaN`, `+Inf` and
/// `-Inf` spelled as Prometheus spells them.
pub fn render_prometheus(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for family in families {
        let name = sanitise_name(&family.name, true);
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
        let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
        for sample in &family.samples {
            out.push_str(&name);
            if !sample.labels.is_empty() {
                out.push('{');
                for (index, (label, value)) in sample.labels.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push_str(&sanitise_name(label, false));
                    out.push_str("=\"");
                    out.push_str(&escape_label_value(value));
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&format_value(sample.value));
            out.push('\n');
        }
    }
    out
}

/// Replaces every character a metric (or label) name may not hold with `_`,
/// and puts a `_` before a leading digit or in place of an empty name.
fn sanitise_name(name: &str, allow_colon: bool) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':') { c } else { '_' }
    }));
    out
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        let spelled = if value > 0.0 { "+Inf" } else { "-Inf" };
        spelled.to_owned()
    } else if value == 0.0 || (1e-6..1e21).contains(&value.abs()) {
        // Plain decimals for the usual range: `3`, `0.25`, `-12`.
        format!("{value}")
    } else {
        // Rust's plain decimal would spell out every zero of 1e-300.
        format!("{value:e}")
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot bind the HTTP listener {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Binds `addr`, spawns the accept loop and returns the bound address (which
/// names the real port when `addr` asks for port 0). The listener serves until
/// `shutdown` is cancelled; then it closes the port and drops any connection
/// still open.
pub async fn start(
    addr: SocketAddr,
    observe: Arc<dyn Observe>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, HttpError> {
    let listener =
        TcpListener::bind(addr).await.map_err(|source| HttpError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| HttpError::Bind { addr, source })?;
    tracing::info!(listen = %bound, "HTTP listener serving /metrics, /health and /recent");
    tokio::spawn(accept_loop(listener, bound, observe, shutdown));
    Ok(bound)
}

async fn accept_loop(
    listener: TcpListener,
    bound: SocketAddr,
    observe: Arc<dyn Observe>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let lingering = Arc::new(Semaphore::new(MAX_LINGERING));
    let mut accept_errors = 0u64;
    loop {
        // A slot is taken before accepting, so that connections beyond the
        // limit wait in the kernel's queue instead of costing a task each.
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let observe = Arc::clone(&observe);
                let shutdown = shutdown.clone();
                let lingering = Arc::clone(&lingering);
                tokio::spawn(async move {
                    let answered = tokio::select! {
                        biased;
                        () = shutdown.cancelled() => None,
                        answered = serve(stream, peer, &*observe) => answered,
                    };
                    // The answer is out: the slot is free for the next client
                    // even while this one takes its time to close.
                    drop(permit);
                    let Some(stream) = answered else { return };
                    if let Ok(_lingering) = lingering.try_acquire_owned() {
                        tokio::select! {
                            biased;
                            () = shutdown.cancelled() => {}
                            () = linger(stream) => {}
                        }
                    }
                });
            }
            Err(err) => {
                accept_errors += 1;
                if worth_logging(accept_errors) {
                    tracing::warn!(listen = %bound, %err, count = accept_errors, "HTTP accept failed");
                }
                drop(permit);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    tracing::debug!(listen = %bound, "HTTP listener stopped");
}

/// Reads one request and writes its response. Returns the connection when
/// the response went out, for [`linger`] to close; `None` when it is done.
async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    observe: &dyn Observe,
) -> Option<TcpStream> {
    let (response, head_only) =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
            Ok(Ok(head)) => match parse_head(&head) {
                Ok(request) => {
                    let response = respond(&request, observe);
                    tracing::debug!(
                        %peer, method = request.method, path = request.path,
                        status = response.status, "HTTP request"
                    );
                    (response, request.method == "HEAD")
                }
                Err(reason) => {
                    tracing::debug!(%peer, reason, "malformed HTTP request");
                    (Response::text(400, &format!("bad request: {reason}\n")), false)
                }
            },
            Ok(Err(ReadError::TooLarge)) => {
                tracing::debug!(%peer, "HTTP request head over 8 KiB");
                (Response::text(400, "bad request: request head over 8 KiB\n"), false)
            }
            Ok(Err(ReadError::Closed)) => return None,
            Ok(Err(ReadError::Io(err))) => {
                tracing::debug!(%peer, %err, "HTTP read failed");
                return None;
            }
            Err(_elapsed) => {
                tracing::debug!(%peer, "HTTP request incomplete after the timeout; closed");
                return None;
            }
        };
    let bytes = response.to_bytes(head_only);
    let written = tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        // Our side of the connection ends here; the client sees the end of
        // the response.
        stream.shutdown().await
    })
    .await;
    match written {
        Ok(Ok(())) => Some(stream),
        Ok(Err(err)) => {
            tracing::debug!(%peer, %err, "HTTP write failed");
            None
        }
        Err(_elapsed) => {
            tracing::debug!(%peer, "HTTP write timed out");
            None
        }
    }
}

/// Reads and drops what the client still sends, until it closes or for a
/// moment at most. Closing a socket with unread bytes makes the kernel send
/// a reset, which can destroy the response before the client has read it
/// (a refused request with a body, an oversized head).
async fn linger(mut stream: TcpStream) {
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 1024];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

enum ReadError {
    /// The client closed before sending a whole head.
    Closed,
    TooLarge,
    Io(std::io::Error),
}

/// Reads until the blank line that ends a request head; returns the head
/// without that blank line. Bytes after it (a body) are left unread.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, ReadError> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        let searched = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head_end(&head, searched) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(ReadError::TooLarge);
        }
    }
}

/// Where the head ends (the index of the blank line's first byte), looking
/// from `from` on. A bare `\n` is accepted as a line end, as RFC 9112 allows.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut index = from;
    while index < bytes.len() {
        if bytes[index] == b'\n' {
            match bytes.get(index + 1..) {
                Some([b'\n', ..]) => return Some(index + 1),
                Some([b'\r', b'\n', ..]) => return Some(index + 1),
                _ => {}
            }
        }
        index += 1;
    }
    None
}

/// A parsed request line; the headers are checked for shape but not kept.
#[derive(Debug, PartialEq)]
struct Request<'a> {
    method: &'a str,
    /// The target without its query string.
    path: &'a str,
}

/// Parses a request head (without its final blank line).
fn parse_head(head: &[u8]) -> Result<Request<'_>, &'static str> {
    if head.len() > MAX_HEAD_BYTES {
        return Err("request head over 8 KiB");
    }
    // The last header line's own line end is still there.
    let head = head.strip_suffix(b"\n").unwrap_or(head);
    let mut lines =
        head.split(|&b| b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let request_line = lines.next().ok_or("empty request")?;
    let request_line = std::str::from_utf8(request_line).map_err(|_| "request line not ASCII")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("request line is not `METHOD target HTTP/1.x`");
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err("bad method");
    }
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("bad request target");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err("not HTTP/1.0 or HTTP/1.1");
    }
    for line in lines {
        let colon = line.iter().position(|&b| b == b':').ok_or("header line without `:`")?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().copied().all(is_token_byte) {
            return Err("bad header name");
        }
    }
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    Ok(Request { method, path })
}

/// RFC 9110 `tchar`: what a method or header name may hold.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A whole response, ready to write.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    allow: bool,
    body: Vec<u8>,
}

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Response { status, content_type: PLAIN_TEXT, allow: false, body: body.as_bytes().to_vec() }
    }

    fn json(status: u16, body: &serde_json::Value) -> Self {
        // Serialising a `Value` cannot fail: its map keys are strings.
        let mut body = serde_json::to_vec(body).unwrap_or_default();
        body.push(b'\n');
        Response { status, content_type: JSON, allow: false, body }
    }

    /// The status line, headers and, unless `head_only`, the body.
    fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Picks the response for a well-formed request.
fn respond(request: &Request<'_>, observe: &dyn Observe) -> Response {
    let known = matches!(request.path, "/metrics" | "/health" | "/recent");
    if !known {
        return Response::text(404, "not found; try /metrics, /health or /recent\n");
    }
    if request.method != "GET" && request.method != "HEAD" {
        let mut response = Response::text(405, "only GET and HEAD\n");
        response.allow = true;
        return response;
    }
    match request.path {
        "/metrics" => Response {
            status: 200,
            content_type: PROMETHEUS_TEXT,
            allow: false,
            body: render_prometheus(&observe.metrics()).into_bytes(),
        },
        "/health" => {
            let health = observe.health();
            Response::json(if health.healthy { 200 } else { 503 }, &health.body)
        }
        _ => Response::json(200, &serde_json::Value::Array(observe.recent())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keeps_a_small_value_whole_and_the_start_of_a_large_one() {
        let small = serde_json::json!({"x": [1, 2, 3]});
        assert_eq!(bounded_copy(&small, 16), small);
        let large = serde_json::json!({"image": "data:image/png;base64,AAAAAAAAAAAAAAAA"});
        assert_eq!(
            bounded_copy(&large, 16),
            serde_json::json!("{\"image\":\"data:i… (cut: over 16 bytes of JSON)")
        );
    }
    use serde_json::json;

    fn family(name: &str, kind: MetricKind, samples: Vec<Sample>) -> MetricFamily {
        MetricFamily { name: name.to_owned(), help: "Some help.".to_owned(), kind, samples }
    }

    fn labelled(labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: labels.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())).collect(),
            value,
        }
    }

    /// A family renders as its HELP line, its TYPE line, then its samples.
    #[test]
    fn a_family_renders_help_type_and_sample_lines() {
        let families = [
            family("scbridge_messages_total", MetricKind::Counter, vec![Sample::new(3.0)]),
            family("scbridge_queue_depth", MetricKind::Gauge, vec![Sample::new(0.5)]),
        ];
        assert_eq!(
            render_prometheus(&families),
            "# HELP scbridge_messages_total Some help.\n\
             # TYPE scbridge_messages_total counter\n\
             scbridge_messages_total 3\n\
             # HELP scbridge_queue_depth Some help.\n\
             # TYPE scbridge_queue_depth gauge\n\
             scbridge_queue_depth 0.5\n"
        );
    }

    /// Several samples share one HELP/TYPE header, each with its labels in order.
    #[test]
    fn several_labelled_samples_follow_one_header() {
        let families = [family(
            "drops_total",
            MetricKind::Counter,
            vec![
                labelled(&[("endpoint", "osc"), ("reason", "queue_full")], 2.0),
                labelled(&[("endpoint", "mqtt"), ("reason", "queue_full")], 0.0),
            ],
        )];
        assert_eq!(
            render_prometheus(&families),
            "# HELP drops_total Some help.\n\
             # TYPE drops_total counter\n\
             drops_total{endpoint=\"osc\",reason=\"queue_full\"} 2\n\
             drops_total{endpoint=\"mqtt\",reason=\"queue_full\"} 0\n"
        );
    }

    /// Backslashes, quotes and newlines in label values are escaped; help escapes
    /// backslashes and newlines.
    #[test]
    fn label_values_and_help_are_escaped() {
        let mut f =
            family("m", MetricKind::Gauge, vec![labelled(&[("channel", "a\\b \"c\"\nd")], 1.0)]);
        f.help = "line one\nback\\slash \"quoted\"".to_owned();
        assert_eq!(
            render_prometheus(&[f]),
            "# HELP m line one\\nback\\\\slash \"quoted\"\n\
             # TYPE m gauge\n\
             m{channel=\"a\\\\b \\\"c\\\"\\nd\"} 1\n"
        );
    }

    /// Names lose the characters Prometheus forbids; label names also lose `:`.
    #[test]
    fn metric_and_label_names_are_sanitised() {
        let families = [
            family("osc.packets-in", MetricKind::Counter, vec![labelled(&[("a:b", "x")], 1.0)]),
            family("9lives", MetricKind::Gauge, vec![labelled(&[("", "y")], 1.0)]),
            family("ns:sub_total", MetricKind::Counter, vec![]),
            family("", MetricKind::Gauge, vec![]),
        ];
        let text = render_prometheus(&families);
        assert!(text.contains("# TYPE osc_packets_in counter\nosc_packets_in{a_b=\"x\"} 1\n"));
        assert!(text.contains("# TYPE _9lives gauge\n_9lives{_=\"y\"} 1\n"));
        assert!(text.contains("# TYPE ns:sub_total counter\n"));
        assert!(text.contains("# HELP _ Some help.\n# TYPE _ gauge\n"));
    }

    /// Special floats are spelled as Prometheus spells them; integers print without `.0`.
    #[test]
    fn values_print_as_prometheus_reads_them() {
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(42.0), "42");
        assert_eq!(format_value(-7.0), "-7");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(0.125), "0.125");
        assert_eq!(format_value(1e-300), "1e-300");
        assert_eq!(format_value(1.5e21), "1.5e21");
    }

    /// The log keeps the newest entries up to its capacity, oldest first.
    #[test]
    fn the_recent_log_drops_the_oldest_once_full() {
        let log = RecentLog::new(3);
        assert_eq!(log.capacity(), 3);
        assert!(log.snapshot().is_empty());
        for n in 1..=5 {
            log.push(json!(n));
        }
        assert_eq!(log.snapshot(), vec![json!(3), json!(4), json!(5)]);
    }

    /// A capacity of zero keeps nothing at all.
    #[test]
    fn a_recent_log_of_capacity_zero_keeps_nothing() {
        let log = RecentLog::new(0);
        log.push(json!({"a": 1}));
        assert!(log.snapshot().is_empty());
        assert_eq!(log.capacity(), 0);
    }

    /// The default capacity is SocketIO DAT's 100 lines.
    #[test]
    fn the_default_recent_log_keeps_a_hundred() {
        let log = RecentLog::default();
        for n in 0..150 {
            log.push(json!(n));
        }
        let entries = log.snapshot();
        assert_eq!(entries.len(), 100);
        assert_eq!(entries.first(), Some(&json!(50)));
        assert_eq!(entries.last(), Some(&json!(149)));
    }

    /// A panic while another thread held the lock does not break the log.
    #[test]
    fn a_poisoned_recent_log_keeps_working() {
        let log = Arc::new(RecentLog::new(2));
        log.push(json!(1));
        let held = Arc::clone(&log);
        let _ = std::thread::spawn(move || {
            let _guard = held.lock();
            panic!("poison the lock");
        })
        .join();
        log.push(json!(2));
        assert_eq!(log.snapshot(), vec![json!(1), json!(2)]);
    }

    /// The head ends at the first blank line, with CRLF or bare LF line ends.
    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody", 0), Some(25));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\n", 0), Some(23));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
    }

    /// A request line parses into its method and path, without the query.
    #[test]
    fn a_request_line_parses_into_method_and_path() {
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n"),
            Ok(Request { method: "GET", path: "/metrics" })
        );
        assert_eq!(
            parse_head(b"HEAD /health HTTP/1.0\r\n"),
            Ok(Request { method: "HEAD", path: "/health" })
        );
    }

    /// Anything that is not a request line and headers is refused.
    #[test]
    fn malformed_heads_are_refused() {
        for head in [
            &b""[..],
            b"GET /metrics",
            b"GET /metrics HTTP/1.1 extra\r\n",
            b"GET  /metrics HTTP/1.1\r\n",
            b"GET metrics HTTP/1.1\r\n",
            b"GET /metrics HTTP/2\r\n",
            b"G(T /metrics HTTP/1.1\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon here\r\n",
            b"GET /metrics HTTP/1.1\r\n folded: header\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n",
        ] {
            assert!(parse_head(head).is_err(), "{:?}", String::from_utf8_lossy(head));
        }
    }
}
