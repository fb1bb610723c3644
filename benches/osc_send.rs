//! What the OSC endpoint costs per datagram sent, against the least any
//! sender can pay: one `send_to` per datagram from a plain blocking socket.
//! The same datagrams (the end-to-end benchmark's `{seq, t, v}` payload as
//! one JSON string) go to the same receiver, measured in one run as CPU of
//! the sending thread, kernel time included (on loopback that includes
//! delivering each datagram into the receiver's socket).
//!
//! Two ways to feed the endpoint:
//! - `burst`: everything queued at once, so each turn of the sender task
//!   holds many messages and `sendmmsg` sends up to 64 per system call;
//! - `one by one`: each message waits until the previous one is sent, so
//!   nothing can be batched and every datagram costs a system call.
//!
//! `cargo bench --bench osc_send` measures; under `cargo test` it only runs
//! a few iterations to prove it still works.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use scbridge::message::Body;
use scbridge::osc::{ObjectStyle, OscConfig, OscEndpoint, OscOut, OscOutOptions, OscTarget};
use scbridge::stats::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How long a run may wait for its datagrams before it fails.
const GIVE_UP: Duration = Duration::from_secs(60);

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let count: u64 = if measuring { 100_000 } else { 200 };
    let receiver = Receiver::start();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    // Warm up the allocator, the socket paths and the caches first.
    plain_send_to(receiver.addr, count / 10 + 1);
    runtime.block_on(endpoint(receiver.addr, count / 10 + 1, Feed::Burst));

    let plain = plain_send_to(receiver.addr, count);
    let burst = runtime.block_on(endpoint(receiver.addr, count, Feed::Burst));
    let one_by_one = runtime.block_on(endpoint(receiver.addr, count, Feed::OneByOne));
    // A short run may measure less than the clock's grain: no ratio then.
    let ratio = |ns: f64| Some(ns / plain).filter(|r| r.is_finite());
    let shown = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.2}x plain"));
    let json = |r: Option<f64>| r.map_or("null".to_owned(), |r| format!("{r:.3}"));
    println!("osc_send: sending thread's CPU per datagram, {count} datagrams, loopback");
    println!("  plain send_to          {plain:>8.0} ns");
    println!("  endpoint, burst        {burst:>8.0} ns   ({})", shown(ratio(burst)));
    println!("  endpoint, one by one   {one_by_one:>8.0} ns   ({})", shown(ratio(one_by_one)));
    println!(
        "{{\"bench\":\"osc_send\",\"ns_per_datagram\":{{\"plain\":{plain:.0},\"burst\":{burst:.0},\"one_by_one\":{one_by_one:.0}}},\"burst_over_plain\":{},\"one_by_one_over_plain\":{}}}",
        json(ratio(burst)),
        json(ratio(one_by_one))
    );
}

/// The datagram the endpoint sends for message `seq`, encoded once.
fn payload(seq: u64) -> serde_json::Value {
    json!({ "seq": seq, "t": 1_763_900_000_123_456u64, "v": 0.5 })
}

/// ns of this thread's CPU per datagram for `count` plain `send_to`s of
/// datagrams the endpoint would have sent.
fn plain_send_to(to: SocketAddr, count: u64) -> f64 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a socket");
    let datagrams: Vec<Vec<u8>> = (0..count)
        .map(|seq| {
            let message = rosc::OscMessage {
                addr: "/load/x".into(),
                args: vec![rosc::OscType::String(payload(seq).to_string())],
            };
            rosc::encoder::encode(&rosc::OscPacket::Message(message)).expect("encodes")
        })
        .collect();
    let before = thread_cpu_ns();
    for datagram in &datagrams {
        // A refused datagram is as costly as a sent one; neither is counted.
        let _ = socket.send_to(datagram, to);
    }
    (thread_cpu_ns() - before) / count as f64
}

#[derive(Clone, Copy)]
enum Feed {
    Burst,
    OneByOne,
}

/// ns of this thread's CPU per datagram for `count` messages through the
/// OSC endpoint, whose tasks run on this thread (a current-thread runtime).
async fn endpoint(to: SocketAddr, count: u64, feed: Feed) -> f64 {
    let config = OscConfig {
        targets: vec![OscTarget::new("rx", to)],
        queue_size: 65_536,
        ..OscConfig::default()
    };
    let (inbound, _unused) = tokio::sync::mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let osc = OscEndpoint::start(&config, inbound, shutdown.clone()).await.expect("starts");
    let options =
        Arc::new(OscOutOptions { objects: ObjectStyle::Json, ..OscOutOptions::default() });
    let before = thread_cpu_ns();
    for seq in 0..count {
        let mut out = OscOut {
            target: 0,
            address: "/load/x".into(),
            body: Body::Value(payload(seq)),
            options: options.clone(),
        };
        // A full queue is drained by the sender task once this one yields.
        while let Err(back) = osc.send(out) {
            out = back.into_inner();
            tokio::task::yield_now().await;
        }
        if let Feed::OneByOne = feed {
            let deadline = std::time::Instant::now() + GIVE_UP;
            while get(&osc.stats().messages_out) <= seq {
                assert!(std::time::Instant::now() < deadline, "datagram {seq} never went out");
                tokio::task::yield_now().await;
            }
        }
    }
    let deadline = std::time::Instant::now() + GIVE_UP;
    while get(&osc.stats().messages_out) < count {
        let stats = osc.stats();
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} datagrams went out ({} send errors, {} map errors)",
            get(&stats.messages_out),
            get(&stats.send_errors),
            get(&stats.map_errors),
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let spent = thread_cpu_ns() - before;
    shutdown.cancel();
    osc.stopped().await;
    spent / count as f64
}

/// Drains the datagrams on its own thread until dropped.
struct Receiver {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start() -> Receiver {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("a receive socket");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("a timeout");
        let addr = socket.local_addr().expect("an address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stopping.load(Ordering::Relaxed) {
                let _ = socket.recv(&mut buf);
            }
        });
        Receiver { addr, stop }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// This thread's user plus system CPU time, ns.
fn thread_cpu_ns() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let nanos = |t: libc::timeval| t.tv_sec as f64 * 1e9 + t.tv_usec as f64 * 1e3;
    nanos(usage.ru_utime) + nanos(usage.ru_stime)
}
