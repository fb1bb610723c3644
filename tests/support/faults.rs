//! Peers that misbehave on purpose, for the fault tests:
//!
//! - [`OscCollector`]: a TouchDesigner stand-in that reads its UDP socket
//!   all the time (so a burst is not lost in the kernel buffer), keeps every
//!   OSC message, and can be closed and bound again on the same port.
//! - [`TcpGate`]: a TCP forwarder in front of a broker that the test opens
//!   and closes, so the bridge reconnects exactly when the test is ready.
//! - [`SilentBroker`]: accepts TCP connections and never says a word (no
//!   CONNACK, no acks).
//! - [`ScriptedScServer`]: a WebSocket server that completes the
//!   SocketCluster handshake, acks the subscribes, then sends a frame list
//!   when told to.
//! - [`XorShift`]: a small deterministic generator for garbage.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rosc::{OscMessage, OscPacket};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------
// Garbage
// ---------------------------------------------------------------------------

/// xorshift64*: deterministic, so a failing run can be replayed.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }
}

/// A datagram of `0..max_len` random bytes that can never decode as OSC:
/// a packet is a message only when it starts with `/` and a bundle only
/// when it starts with `#`, and the empty datagram is neither.
pub fn osc_garbage(rng: &mut XorShift, max_len: usize) -> Vec<u8> {
    let len = rng.below(max_len);
    let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
    if let Some(first) = bytes.first_mut() {
        while *first == b'/' || *first == b'#' {
            *first = rng.byte();
        }
    }
    bytes
}

/// A text frame that is not a SocketCluster packet, counted once as
/// malformed: random printable text (never JSON, never a ping token) or
/// JSON of the wrong shape.
pub fn sc_garbage(rng: &mut XorShift, n: usize) -> String {
    match rng.below(6) {
        0 => format!("{{not json {n}"),
        1 => format!(r#"{{"foo":{n}}}"#),
        2 => format!(r#"{{"event":{n}}}"#),
        3 => format!(r##"{{"event":"#publish","data":"no channel {n}"}}"##),
        _ => {
            // Starts with a letter no JSON value starts with.
            let len = 1 + rng.below(200);
            let mut text = String::from("x");
            text.extend((0..len).map(|_| char::from(b' ' + (rng.byte() % 95))));
            text
        }
    }
}

// ---------------------------------------------------------------------------
// OSC collector
// ---------------------------------------------------------------------------

/// Every OSC message a UDP socket has received, read by a background task.
pub struct OscCollector {
    addr: SocketAddr,
    shared: Arc<Collected>,
    /// The reading task; taken by [`OscCollector::close`].
    task: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Collected {
    messages: Mutex<Vec<OscMessage>>,
    changed: Notify,
}

impl Collected {
    fn lock(&self) -> MutexGuard<'_, Vec<OscMessage>> {
        self.messages.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl OscCollector {
    /// Binds a free loopback port.
    pub async fn bind() -> OscCollector {
        OscCollector::bind_at("127.0.0.1:0".parse().expect("an address")).await
    }

    /// Binds `addr`, e.g. the port a closed collector had.
    pub async fn bind_at(addr: SocketAddr) -> OscCollector {
        let socket = UdpSocket::bind(addr)
            .await
            .unwrap_or_else(|error| panic!("cannot bind an OSC receiver on {addr}: {error}"));
        let addr = socket.local_addr().expect("local address");
        let shared = Arc::new(Collected::default());
        let sink = shared.clone();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 65_536];
            while let Ok((len, _)) = socket.recv_from(&mut buffer).await {
                let (_, packet) =
                    rosc::decoder::decode_udp(&buffer[..len]).expect("valid OSC from the bridge");
                let mut found = Vec::new();
                flatten(packet, &mut found);
                sink.lock().extend(found);
                sink.changed.notify_waiters();
            }
        });
        OscCollector { addr, shared, task: Some(task) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message so far, in arrival order.
    pub fn messages(&self) -> Vec<OscMessage> {
        self.shared.lock().clone()
    }

    /// The messages so far whose address starts with `prefix`.
    pub fn with_prefix(&self, prefix: &str) -> Vec<OscMessage> {
        self.shared.lock().iter().filter(|m| m.addr.starts_with(prefix)).cloned().collect()
    }

    /// Waits until at least `count` messages with an address starting with
    /// `prefix` have arrived, and returns them.
    ///
    /// # Panics
    ///
    /// If they have not within `limit`; the message tells how many did.
    pub async fn wait_for(&self, prefix: &str, count: usize, limit: Duration) -> Vec<OscMessage> {
        let deadline = Instant::now() + limit;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let found = self.with_prefix(prefix);
            if found.len() >= count {
                return found;
            }
            if timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "{} of {count} OSC messages under {prefix:?} arrived within {limit:?}; last: {:?}",
                    found.len(),
                    found.last()
                );
            }
        }
    }

    /// Stops reading and releases the port; returns once the socket is
    /// closed, so the port can be bound again at once.
    pub async fn close(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for OscCollector {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn flatten(packet: OscPacket, into: &mut Vec<OscMessage>) {
    match packet {
        OscPacket::Message(message) => into.push(message),
        OscPacket::Bundle(bundle) => {
            bundle.content.into_iter().for_each(|packet| flatten(packet, into));
        }
    }
}

// ---------------------------------------------------------------------------
// TCP gate
// ---------------------------------------------------------------------------

/// A loopback TCP port that forwards to `upstream` while open. While
/// closed it accepts and drops every new connection at once; connections
/// already forwarded are left alone (and end when either side ends).
pub struct TcpGate {
    port: u16,
    open: Arc<AtomicBool>,
    /// Cancelled by `cut`; the links forwarded so far hold a clone.
    links: Arc<Mutex<tokio_util::sync::CancellationToken>>,
    task: JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TcpGate {
    /// Starts a gate in front of `127.0.0.1:upstream`, open.
    pub async fn start(upstream: u16) -> TcpGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the gate");
        let port = listener.local_addr().expect("local address").port();
        let open = Arc::new(AtomicBool::new(true));
        let is_open = open.clone();
        let links = Arc::new(Mutex::new(tokio_util::sync::CancellationToken::new()));
        let current_links = links.clone();
        let task = tokio::spawn(async move {
            let mut forwarded = tokio::task::JoinSet::new();
            while let Ok((mut downstream, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection end
                }
                let cut = lock(&current_links).clone();
                forwarded.spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        tokio::select! {
                            biased;
                            () = cut.cancelled() => {}
                            _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {}
                        }
                    }
                });
            }
        });
        TcpGate { port, open, links, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// New connections are dropped from now on.
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    /// New connections are forwarded from now on.
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Ends every connection forwarded so far, on both sides. Nothing
    /// written after this call gets through, even before the sockets close.
    pub fn cut(&self) {
        let mut links = lock(&self.links);
        links.cancel();
        *links = tokio_util::sync::CancellationToken::new();
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// A broker that never answers
// ---------------------------------------------------------------------------

/// Accepts TCP connections on a loopback port and holds them open without
/// reading or writing a byte.
pub struct SilentBroker {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl SilentBroker {
    pub async fn start() -> SilentBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the silent broker");
        let port = listener.local_addr().expect("local address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        SilentBroker { port, accepted, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many connections it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for SilentBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// A scripted SocketCluster server
// ---------------------------------------------------------------------------

/// A WebSocket server on a loopback port for one client: it answers the
/// `#handshake` (with a long pingTimeout and no pings, so liveness never
/// interferes), acks `subscribes` `#subscribe` events, reports each
/// subscribed channel, and once [`ScriptedScServer::send`] is called sends
/// those frames in order. Then it reads until the client goes.
pub struct ScriptedScServer {
    port: u16,
    subscribed: Arc<Mutex<Vec<String>>>,
    ready: Arc<Notify>,
    frames: Option<oneshot::Sender<(Vec<String>, usize)>>,
    task: JoinHandle<()>,
}

impl ScriptedScServer {
    pub async fn start(subscribes: usize) -> ScriptedScServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the scripted server");
        let port = listener.local_addr().expect("local address").port();
        let subscribed = Arc::new(Mutex::new(Vec::new()));
        let ready = Arc::new(Notify::new());
        let (frames_tx, frames_rx) = oneshot::channel::<(Vec<String>, usize)>();
        let channels = subscribed.clone();
        let acked_all = ready.clone();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("WebSocket upgrade");
            let mut acked = 0;
            while acked < subscribes {
                let frame = ws.next().await.expect("a frame").expect("readable");
                let Ok(packet) = serde_json::from_str::<Value>(frame.to_text().unwrap_or(""))
                else {
                    continue;
                };
                let reply = match packet["event"].as_str() {
                    Some("#handshake") => json!({"rid": packet["cid"], "data": {
                        "id": "scripted", "pingTimeout": 600_000, "isAuthenticated": false}}),
                    Some("#subscribe") => {
                        acked += 1;
                        let channel = packet["data"]["channel"].as_str().unwrap_or_default();
                        channels
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(channel.into());
                        json!({"rid": packet["cid"]})
                    }
                    _ => continue,
                };
                ws.send(Message::text(reply.to_string())).await.expect("send a reply");
            }
            acked_all.notify_one();
            let (frames, chunk) = frames_rx.await.unwrap_or_default();
            for (index, frame) in frames.into_iter().enumerate() {
                ws.feed(Message::text(frame)).await.expect("queue a frame");
                if (index + 1) % chunk == 0 {
                    ws.flush().await.expect("send a chunk");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            ws.flush().await.expect("send the frames");
            while let Some(Ok(_)) = ws.next().await {}
        });
        ScriptedScServer { port, subscribed, ready, frames: Some(frames_tx), task }
    }

    /// `ws://127.0.0.1:PORT/socketcluster/`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/socketcluster/", self.port)
    }

    /// Waits until the client's subscribes have all been acked, and returns
    /// the channels in the order they came.
    pub async fn subscribed(&self, limit: Duration) -> Vec<String> {
        tokio::time::timeout(limit, self.ready.notified())
            .await
            .unwrap_or_else(|_| panic!("the client did not subscribe within {limit:?}"));
        self.subscribed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sends `frames` in order, as text frames, `chunk` at a time with a
    /// millisecond between chunks, so that they trickle in alongside other
    /// traffic rather than arriving in one burst.
    pub fn send(&mut self, frames: Vec<String>, chunk: usize) {
        let sender = self.frames.take().expect("send is called once");
        sender.send((frames, chunk.max(1))).expect("the scripted server is running");
    }

    /// Whether the server task has ended (the client went, or it failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ScriptedScServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
