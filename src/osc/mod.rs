//! The OSC endpoint: UDP listeners that turn received packets into
//! [`Message`]s on the inbound queue, and one send socket that maps queued
//! [`OscOut`]s to OSC and sends them to the configured targets.
//!
//! - [`config`]: the `[osc]` table, raw and validated.
//! - [`mapping`]: JSON ⇄ OSC arguments, pure.
//! - `packet`: decoding received datagrams without trusting their nesting.
//!
//! Loop prevention: packets whose source is our own send socket are counted
//! as `own_echoes` and ignored, so a target that is also one of our
//! listeners cannot feed the bridge its own output.

pub mod config;
mod lookup;
pub mod mapping;
mod packet;
mod send;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rosc::{OscMessage, OscPacket};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::message::{Body, Message, Refused, SourceKind};
use crate::stats::{bump, worth_logging};
use send::Batch;

pub use config::{OscConfig, OscTarget, RawOsc, RawOscTarget};
pub use mapping::{
    BoolStyle, MapError, NullStyle, NumberType, ObjectStyle, OscOutOptions, TriggerStyle, TypeTag,
    args_to_json, to_osc,
};

crate::stats::counters! {
    /// Counters of the OSC endpoint.
    pub struct OscStats {
        /// Datagrams read from the listeners, whatever became of them.
        packets_in,
        /// Messages decoded from them (a bundle gives several).
        messages_in,
        /// Datagrams, or elements of their bundles, that could not be read
        /// as OSC (or nested too deeply); dropped. Counted per unreadable
        /// part, so one datagram can count several times.
        decode_errors,
        /// Datagrams over `max_packet_bytes`; dropped.
        oversized_packets,
        /// Datagrams from our own send socket; ignored to prevent loops.
        own_echoes,
        /// Packets from senders outside `allow_from`.
        not_allowed,
        /// Received messages dropped because the inbound queue was full.
        inbound_queue_full,
        /// Messages sent (one UDP datagram each).
        messages_out,
        /// Outgoing values that could not be mapped to OSC (or named no target).
        map_errors,
        /// Datagrams the socket refused to send.
        send_errors,
        /// Outgoing messages dropped because the send queue was full.
        outbound_queue_full,
        /// Outgoing messages to a target whose host name was not found yet.
        unresolved,
    }
}

/// One message for a target, ready to map and send.
#[derive(Debug, Clone)]
pub struct OscOut {
    /// Index into [`OscConfig::targets`].
    pub target: usize,
    /// The OSC address (for split objects, the prefix).
    pub address: String,
    pub body: Body,
    /// The route's options, shared by every message the route sends.
    pub options: Arc<OscOutOptions>,
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum OscError {
    #[error("cannot bind OSC socket {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot set up the OSC send socket ({what}): {source}")]
    Socket { what: &'static str, source: std::io::Error },
}

/// Starts the OSC endpoint.
pub struct OscEndpoint;

impl OscEndpoint {
    /// Binds every listener and the send socket (bind errors name the
    /// address), spawns the tasks, returns the handle. Tasks end when
    /// `shutdown` is cancelled; received messages go to `inbound`.
    pub async fn start(
        config: &OscConfig,
        inbound: mpsc::Sender<Message>,
        shutdown: CancellationToken,
    ) -> Result<OscHandle, OscError> {
        // Bound to every interface so targets on other hosts are reachable.
        let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let send_socket =
            UdpSocket::bind(any).await.map_err(|source| OscError::Bind { addr: any, source })?;
        let wants_broadcast = config.targets.iter().any(|target| target.broadcast);
        if wants_broadcast {
            send_socket
                .set_broadcast(true)
                .map_err(|source| OscError::Socket { what: "broadcast", source })?;
        }
        // Multicast to TouchDesigner and friends belongs on the local segment.
        send_socket
            .set_multicast_ttl_v4(1)
            .map_err(|source| OscError::Socket { what: "multicast TTL", source })?;
        let send_addr = send_socket
            .local_addr()
            .map_err(|source| OscError::Socket { what: "local address", source })?;

        let mut listeners = Vec::with_capacity(config.listen.len());
        let mut listen_addrs = Vec::with_capacity(config.listen.len());
        for &addr in &config.listen {
            let socket = bind_listener(addr, config.receive_buffer_bytes)
                .map_err(|source| OscError::Bind { addr, source })?;
            let bound = socket.local_addr().map_err(|source| OscError::Bind { addr, source })?;
            tracing::info!(listen = %bound, "OSC listening");
            listeners.push(socket);
            listen_addrs.push(bound);
        }

        let stats = Arc::new(OscStats::default());
        let own = Arc::new(OwnSender::new(send_addr, config, &listen_addrs));
        let tasks = TaskTracker::new();
        for (socket, addr) in listeners.into_iter().zip(&listen_addrs) {
            let listener = Listener {
                socket,
                addr: *addr,
                max_packet_bytes: config.max_packet_bytes,
                allow_from: config.allow_from.clone(),
                own: Arc::clone(&own),
                inbound: inbound.clone(),
                stats: Arc::clone(&stats),
            };
            tasks.spawn(listener.run(shutdown.clone()));
        }
        let (queue, outgoing) = mpsc::channel(config.queue_size.max(1));
        let (found_tx, found) = mpsc::channel(config.targets.len().max(1));
        if let Some(named) = lookup::followed(&config.targets) {
            tasks.spawn(lookup::follow(named, config::lookup_ipv4, found_tx, shutdown.clone()));
        }
        let sender = Sender {
            socket: send_socket,
            targets: config.targets.clone(),
            outgoing,
            found,
            stats: Arc::clone(&stats),
        };
        tasks.spawn(sender.run(shutdown));
        tasks.close();
        tracing::info!(
            listen = ?listen_addrs,
            %send_addr,
            targets = config.targets.len(),
            "OSC endpoint started"
        );
        Ok(OscHandle { inner: Arc::new(Inner { queue, listen_addrs, send_addr, stats, tasks }) })
    }
}

/// The clonable handle to a running OSC endpoint.
#[derive(Debug, Clone)]
pub struct OscHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: mpsc::Sender<OscOut>,
    listen_addrs: Vec<SocketAddr>,
    send_addr: SocketAddr,
    stats: Arc<OscStats>,
    tasks: TaskTracker,
}

impl OscHandle {
    /// Queues a message for the sender task without waiting. When the queue
    /// is full (counted as `outbound_queue_full`) or the endpoint has shut
    /// down, the message comes back in `Err`, saying which.
    pub fn send(&self, out: OscOut) -> Result<(), Refused<OscOut>> {
        match self.inner.queue.try_send(out) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(out)) => {
                if let Some(count) =
                    crate::stats::bump_loggable(&self.inner.stats.outbound_queue_full)
                {
                    tracing::warn!(count, "OSC send queue full; message dropped");
                }
                Err(Refused::Full(out))
            }
            Err(TrySendError::Closed(out)) => Err(Refused::ShuttingDown(out)),
        }
    }

    /// The addresses the listeners are really bound to (port 0 resolved).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.inner.listen_addrs
    }

    /// The local address of the send socket (`0.0.0.0:port`).
    pub fn send_addr(&self) -> SocketAddr {
        self.inner.send_addr
    }

    /// The endpoint's counters.
    pub fn stats(&self) -> &OscStats {
        &self.inner.stats
    }

    /// Resolves once every task of the endpoint has ended, which cancelling
    /// `shutdown` brings about.
    pub async fn stopped(&self) {
        self.inner.tasks.wait().await;
    }
}

/// Recognises datagrams sent by our own send socket.
///
/// The socket is bound to `0.0.0.0`, so a datagram from it carries whichever
/// local address the kernel picked for that destination. Those addresses are
/// learned up front by asking the kernel which source it would use for each
/// target and listener (a `connect` on a UDP socket sends nothing).
#[derive(Debug)]
struct OwnSender {
    port: u16,
    ips: Vec<IpAddr>,
}

impl OwnSender {
    fn new(send_addr: SocketAddr, config: &OscConfig, listen_addrs: &[SocketAddr]) -> Self {
        let mut ips = vec![send_addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let destinations = config
            .targets
            .iter()
            .map(|target| (target.address, target.broadcast))
            .chain(listen_addrs.iter().map(|addr| (*addr, false)));
        for (destination, broadcast) in destinations {
            if !destination.is_ipv4() || destination.ip().is_unspecified() {
                continue;
            }
            if let Some(ip) = source_ip_towards(destination, broadcast) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        OwnSender { port: send_addr.port(), ips }
    }

    fn is_own(&self, from: SocketAddr) -> bool {
        // A dual-stack listener sees IPv4 senders as ::ffff:a.b.c.d.
        from.port() == self.port && self.ips.contains(&from.ip().to_canonical())
    }
}

/// Binds a listen socket with a large receive buffer. TouchDesigner sends a
/// whole frame's worth of datagrams at once (500 channels at 60 Hz is 500
/// datagrams every 16 ms); the kernel's default buffer (~208 KiB) overflows
/// and drops a third of them before any task can read. The kernel caps the
/// size at net.core.rmem_max; what it granted is logged.
fn bind_listener(addr: SocketAddr, receive_buffer: usize) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if receive_buffer > 0
        && let Err(err) = socket.set_recv_buffer_size(receive_buffer)
    {
        tracing::warn!(listen = %addr, error = %err, "could not enlarge the OSC receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if let Ok(granted) = socket.recv_buffer_size() {
        tracing::debug!(listen = %addr, requested = receive_buffer, granted, "OSC receive buffer");
    }
    UdpSocket::from_std(socket.into())
}

fn source_ip_towards(destination: SocketAddr, broadcast: bool) -> Option<IpAddr> {
    let probe = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    if broadcast {
        probe.set_broadcast(true).ok()?;
    }
    probe.connect(destination).ok()?;
    probe.local_addr().ok().map(|addr| addr.ip())
}

/// One listening socket's task.
struct Listener {
    socket: UdpSocket,
    addr: SocketAddr,
    max_packet_bytes: usize,
    allow_from: Vec<config::Network>,
    own: Arc<OwnSender>,
    inbound: mpsc::Sender<Message>,
    stats: Arc<OscStats>,
}

impl Listener {
    async fn run(self, shutdown: CancellationToken) {
        // Large enough for any UDP payload, so an oversized datagram is seen
        // whole and measured rather than silently truncated.
        let mut buf = vec![0u8; 64 * 1024];
        let mut messages = Vec::new();
        let mut recv_errors = 0u64;
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                received = self.socket.recv_from(&mut buf) => received,
            };
            let (len, from) = match received {
                Ok(received) => received,
                Err(err) => {
                    recv_errors += 1;
                    if worth_logging(recv_errors) {
                        tracing::warn!(
                            listen = %self.addr, %err, count = recv_errors,
                            "OSC receive failed"
                        );
                    }
                    // Keeps a socket error that repeats from spinning a core.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            bump(&self.stats.packets_in);
            if !self.allow_from.is_empty() && !self.allow_from.iter().any(|n| n.contains(from.ip()))
            {
                if let Some(count) = crate::stats::bump_loggable(&self.stats.not_allowed) {
                    tracing::warn!(listen = %self.addr, %from, count, "OSC from a sender outside allow_from; dropped");
                }
                continue;
            }
            if self.own.is_own(from) {
                bump(&self.stats.own_echoes);
                tracing::debug!(listen = %self.addr, %from, "ignored our own packet");
                continue;
            }
            if len > self.max_packet_bytes {
                if let Some(count) = crate::stats::bump_loggable(&self.stats.oversized_packets) {
                    tracing::warn!(
                        listen = %self.addr, %from, bytes = len,
                        limit = self.max_packet_bytes, count,
                        "OSC packet over max_packet_bytes; dropped"
                    );
                }
                continue;
            }
            for err in packet::decode(&buf[..len], &mut messages) {
                if let Some(count) = crate::stats::bump_loggable(&self.stats.decode_errors) {
                    tracing::warn!(
                        listen = %self.addr, %from, %err, count,
                        "unreadable OSC packet or bundle element; dropped"
                    );
                }
            }
            for OscMessage { addr, args } in messages.drain(..) {
                bump(&self.stats.messages_in);
                let message = Message::value(SourceKind::Osc, addr, args_to_json(&args));
                match self.inbound.try_send(message) {
                    Ok(()) => {}
                    Err(TrySendError::Full(dropped)) => {
                        if let Some(count) =
                            crate::stats::bump_loggable(&self.stats.inbound_queue_full)
                        {
                            tracing::warn!(
                                listen = %self.addr, address = %dropped.name, count,
                                "inbound queue full; OSC message dropped"
                            );
                        }
                    }
                    Err(TrySendError::Closed(_)) => return,
                }
            }
        }
    }
}

/// Messages taken from the send queue in one turn, at most.
const SEND_TURN: usize = 256;

/// The send socket's task.
struct Sender {
    socket: UdpSocket,
    targets: Vec<OscTarget>,
    outgoing: mpsc::Receiver<OscOut>,
    /// New addresses of targets given by host name.
    found: mpsc::Receiver<lookup::Found>,
    stats: Arc<OscStats>,
}

impl Sender {
    /// Takes whatever is queued (up to [`SEND_TURN`]), encodes it and sends
    /// it as one batch: a burst costs a few system calls, a lone message
    /// goes out at once.
    ///
    /// At the stop the queue is closed (later sends are refused, and their
    /// callers count them) and what it already holds still goes out.
    async fn run(mut self, shutdown: CancellationToken) {
        let mut turn = Vec::with_capacity(SEND_TURN);
        let mut batch = Batch::default();
        let mut closing = false;
        loop {
            let taken = tokio::select! {
                biased;
                () = shutdown.cancelled(), if !closing => {
                    self.outgoing.close();
                    closing = true;
                    continue;
                }
                Some((index, address)) = self.found.recv() => {
                    if let Some(target) = self.targets.get_mut(index) {
                        target.address = address;
                    }
                    continue;
                }
                taken = self.outgoing.recv_many(&mut turn, SEND_TURN) => taken,
            };
            if taken == 0 {
                return;
            }
            for out in turn.drain(..) {
                self.encode(out, &mut batch);
            }
            let (targets, stats) = (&self.targets, &self.stats);
            batch
                .send(&self.socket, |datagram, result| match result {
                    Ok(()) => bump(&stats.messages_out),
                    Err(err) => {
                        if let Some(count) = crate::stats::bump_loggable(&stats.send_errors) {
                            let name = targets.get(datagram.target).map_or("?", |t| &t.name);
                            tracing::warn!(
                                osc_target = %name, address = %datagram.to, %err, count,
                                "OSC send failed"
                            );
                        }
                    }
                })
                .await;
        }
    }

    /// Maps one message to OSC and adds its datagrams to `batch`; what
    /// cannot be mapped or encoded is counted and dropped.
    fn encode(&self, out: OscOut, batch: &mut Batch) {
        let Some(target) = self.targets.get(out.target) else {
            if let Some(count) = crate::stats::bump_loggable(&self.stats.map_errors) {
                tracing::warn!(
                    index = out.target, address = %out.address, count,
                    "no such OSC target; message dropped"
                );
            }
            return;
        };
        if !target.is_resolved() {
            if let Some(count) = crate::stats::bump_loggable(&self.stats.unresolved) {
                tracing::warn!(
                    osc_target = %target.name, host = target.host.as_deref().unwrap_or("?"), count,
                    "OSC target not found yet; message dropped"
                );
            }
            return;
        }
        let messages = match to_osc(&out.address, &out.body, &out.options) {
            Ok(messages) => messages,
            Err(err) => {
                if let Some(count) = crate::stats::bump_loggable(&self.stats.map_errors) {
                    tracing::warn!(
                        osc_target = %target.name, %err, count,
                        "cannot map to OSC; message dropped"
                    );
                }
                return;
            }
        };
        for message in messages {
            batch.push(&OscPacket::Message(message), target.address, out.target);
        }
    }
}
