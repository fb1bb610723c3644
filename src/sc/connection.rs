//! The task that owns the WebSocket: connect (TLS), handshake, answer pings,
//! notice a silent server, send what the handles queued, and reconnect after
//! every loss with the configured delay. It also carries out the active
//! toggle and reset.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::backoff::Backoff;
use super::config::{AuthToken, ScConfig};
use super::queue::{OutboundQueue, Outgoing, ReplySender};
use super::session::{Output, Session};
use super::stats::ScStats;
use super::{Incoming, LinkState};

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How many queued packets go out between two looks at the socket.
const DRAIN_BATCH: usize = 256;
/// How long a clean close may take before the socket is just dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a shutdown may spend sending the queue to a server that reads
/// slowly or not at all. A reload that replaces the link waits for this, and
/// everything the router does waits with it.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);
/// Why a connection whose writes stopped moving was given up.
const STALLED: &str = "the server stopped reading: a write did not finish in time";
/// A connection lost to a ping timeout is retried at once only when it had
/// lasted this long: a real ping timeout comes a ping timeout after the last
/// sign of life at the earliest, and a server that drops every connection
/// right after the handshake must meet the backoff, not a tight loop.
const MIN_LIFETIME_FOR_IMMEDIATE_RETRY: Duration = Duration::from_millis(500);
/// Bytes asked of the socket per read: about a hundred typical publish
/// frames, so a burst still drains in few reads (larger frames grow the
/// buffer as they need).
const WS_READ_BUFFER_BYTES: usize = 16 * 1024;

/// What the handles ask of the link task.
pub(crate) enum Command {
    Subscribe { channel: String, wait_for_auth: bool },
    Unsubscribe { channel: String },
    Authenticate { token: String, reply: ReplySender },
    Deauthenticate,
    SetActive(bool),
    Reset,
    Shutdown { done: oneshot::Sender<()> },
}

/// Where the connection loop goes next.
enum Step {
    Connected(Box<WsStream>),
    /// The connection failed or was lost.
    Lost {
        reason: String,
        code: Option<u16>,
    },
    /// Switched off: close and wait for `SetActive(true)`.
    Deactivated,
    /// Close and connect again at once.
    Reset,
    /// Close and end the task.
    Shutdown(Option<oneshot::Sender<()>>),
}

pub(crate) struct Connection {
    pub config: ScConfig,
    pub session: Session,
    pub queue: Arc<OutboundQueue>,
    pub commands: mpsc::Receiver<Command>,
    pub state: watch::Sender<LinkState>,
    pub incoming: mpsc::Sender<Incoming>,
    pub stats: Arc<ScStats>,
    pub backoff: Backoff,
    pub active: bool,
    /// When the current connection's handshake completed.
    pub opened_at: Option<Instant>,
}

impl Connection {
    /// Runs until shut down (by `Shutdown` or when every handle is dropped).
    pub async fn run(mut self) {
        loop {
            if !self.active {
                self.state.send_replace(LinkState::Inactive);
                tracing::info!(url = %self.config.display_url(), "SocketCluster link inactive");
                match self.idle_until_active().await {
                    Step::Shutdown(done) => return self.finish(done),
                    _ => continue,
                }
            }
            self.state.send_replace(LinkState::Connecting { attempt: self.backoff.attempt() });
            let step = match self.connect().await {
                Step::Connected(ws) => self.serve(*ws).await,
                other => other,
            };
            let was_open = self.session.is_open();
            let lasted = self.opened_at.take().map(|at| at.elapsed()).unwrap_or_default();
            self.session.on_closed();
            match step {
                Step::Shutdown(done) => return self.finish(done),
                Step::Deactivated => self.active = false,
                Step::Reset => tracing::info!("SocketCluster link reset: reconnecting"),
                Step::Connected(_) => {}
                Step::Lost { reason, code } => {
                    if !was_open {
                        ScStats::bump(&self.stats.connect_failures);
                    }
                    // As socketcluster-client does: a ping timeout on either
                    // side is retried at once; everything else waits.
                    let immediate = was_open
                        && matches!(code, Some(4000 | 4001 | 1005))
                        && lasted >= MIN_LIFETIME_FOR_IMMEDIATE_RETRY;
                    let retry_in =
                        if immediate { Duration::ZERO } else { self.backoff.next_delay() };
                    tracing::warn!(
                        url = %self.config.display_url(),
                        code = code.map(i64::from).unwrap_or(-1),
                        %reason,
                        retry_in_ms = retry_in.as_millis() as u64,
                        queued = self.queue.len(),
                        "SocketCluster link down"
                    );
                    self.state.send_replace(LinkState::Disconnected { reason, code, retry_in });
                    match self.wait(retry_in).await {
                        Step::Shutdown(done) => return self.finish(done),
                        Step::Deactivated => self.active = false,
                        _ => {}
                    }
                }
            }
        }
    }

    fn finish(&self, done: Option<oneshot::Sender<()>>) {
        let left = self.queue.close();
        if left > 0 {
            crate::stats::add(&self.stats.shutdown_dropped, left as u64);
            tracing::warn!(
                dropped = left,
                "SocketCluster link shut down with messages still queued"
            );
        }
        self.state.send_replace(LinkState::Inactive);
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Applies a command; returns the step it forces, if any.
    fn apply(&mut self, command: Command, out: &mut Vec<Output>) -> Option<Step> {
        match command {
            Command::Subscribe { channel, wait_for_auth } => {
                self.session.subscribe(&channel, wait_for_auth, out)
            }
            Command::Unsubscribe { channel } => self.session.unsubscribe(&channel, out),
            Command::Authenticate { token, reply } => self.session.authenticate(token, reply, out),
            Command::Deauthenticate => self.session.deauthenticate(out),
            Command::SetActive(true) => self.active = true,
            Command::SetActive(false) => return Some(Step::Deactivated),
            Command::Reset => return Some(Step::Reset),
            Command::Shutdown { done } => return Some(Step::Shutdown(Some(done))),
        }
        None
    }

    /// Applies a command while no connection is open; nothing can be sent.
    fn apply_offline(&mut self, command: Option<Command>) -> Option<Step> {
        let Some(command) = command else { return Some(Step::Shutdown(None)) };
        let mut out = Vec::new();
        self.apply(command, &mut out)
    }

    async fn idle_until_active(&mut self) -> Step {
        loop {
            let command = self.commands.recv().await;
            if let Some(step) = self.apply_offline(command) {
                if matches!(step, Step::Shutdown(_)) {
                    return step;
                }
            } else if self.active {
                return Step::Reset;
            }
        }
    }

    async fn wait(&mut self, delay: Duration) -> Step {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return Step::Reset,
                command = self.commands.recv() => {
                    if let Some(step) = self.apply_offline(command) {
                        return step;
                    }
                }
            }
        }
    }

    async fn connect(&mut self) -> Step {
        let request = match self.request() {
            Ok(request) => request,
            Err(reason) => return Step::Lost { reason, code: None },
        };
        let connector = if self.config.url.scheme() == "wss" {
            let settings = crate::tls::TlsSettings {
                verify: self.config.verify_tls,
                ca_file: self.config.ca_file.as_deref(),
                client_auth: None,
            };
            match crate::tls::client_config(settings) {
                Ok(tls) => Some(Connector::Rustls(Arc::new(tls))),
                Err(err) => {
                    let reason = format!("socketcluster.ca_file: {err}");
                    return Step::Lost { reason, code: None };
                }
            }
        } else {
            Some(Connector::Plain)
        };
        // Frames above our own limit are skipped by us (counted), not by
        // tungstenite, which would close the connection instead. Only a
        // frame above 64 MiB (or max_frame_bytes, when larger) is refused
        // by tungstenite, which ends the connection: reading it whole just
        // to skip it would cost that much memory.
        let limit = self.config.max_frame_bytes.max(64 << 20);
        // tungstenite zero-fills the free part of its read buffer before
        // every read, WouldBlock included: at its 128 KiB default that memset
        // costs more than decoding the messages the read brings.
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit))
            .read_buffer_size(WS_READ_BUFFER_BYTES);
        let connecting = tokio::time::timeout(
            self.config.connect_timeout,
            tokio_tungstenite::connect_async_tls_with_config(
                request,
                Some(ws_config),
                true,
                connector,
            ),
        );
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                result = &mut connecting => return match result {
                    Err(_) => Step::Lost { reason: "connect timed out".into(), code: Some(4007) },
                    Ok(Err(err)) => Step::Lost { reason: describe_ws_error(&err), code: None },
                    Ok(Ok((ws, _response))) => Step::Connected(Box::new(ws)),
                },
                command = self.commands.recv() => {
                    if let Some(step) = self.apply_offline(command) {
                        return step;
                    }
                }
            }
        }
    }

    fn request(&self) -> Result<tungstenite::handshake::client::Request, String> {
        let mut request =
            self.config.url.as_str().into_client_request().map_err(|e| describe_ws_error(&e))?;
        for (name, value) in &self.config.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("header name {name:?}: {e}"))?;
            let value =
                HeaderValue::from_str(&value.0).map_err(|e| format!("header {name}: {e}"))?;
            request.headers_mut().insert(name, value);
        }
        Ok(request)
    }

    /// Reads the configured token again (a file may have been rotated).
    fn load_configured_token(&mut self) {
        let token = match &self.config.auth {
            AuthToken::None => None,
            AuthToken::Inline(secret) => Some(secret.0.clone()),
            AuthToken::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => Some(text.trim().to_owned()).filter(|t| !t.is_empty()),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot read the auth token file; keeping the token we had");
                    return;
                }
            },
        };
        self.session.offer_configured_token(token);
    }

    /// Runs one open WebSocket until it ends.
    async fn serve(&mut self, mut ws: WsStream) -> Step {
        self.load_configured_token();
        let hello = self.session.begin_handshake();
        if let Err(err) = ws.send(Message::text(hello)).await {
            return Step::Lost { reason: describe_ws_error(&err), code: None };
        }
        ScStats::bump(&self.stats.frames_out);
        let mut deadline = Instant::now() + self.config.ack_timeout;
        let mut ping_timeout = self.config.ack_timeout;
        let mut out = Vec::new();
        let mut batch = Vec::with_capacity(DRAIN_BATCH);
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let mut opened: Option<LinkState> = None;
        loop {
            let step = tokio::select! {
                biased;
                frame = ws.next() => self.on_ws_message(frame, &mut out),
                command = self.commands.recv() => match command {
                    Some(command) => self.apply(command, &mut out),
                    None => Some(Step::Shutdown(None)),
                },
                _ = sleep_until(deadline) => Some(if self.session.is_open() {
                    Step::Lost { reason: "no ping from the server within its pingTimeout".into(), code: Some(4000) }
                } else {
                    Step::Lost { reason: "handshake timed out".into(), code: Some(4003) }
                }),
                _ = self.queue.ready(), if self.session.is_open() => None,
                _ = sweep.tick() => {
                    self.session.forget_abandoned_invokes();
                    None
                }
            };
            // Once the connection has ended, what the same frames carried
            // for the router is still delivered; the rest belonged to the
            // connection (acks, subscribes) and is renewed after a reconnect.
            let mut ended = None;
            for output in out.drain(..) {
                if ended.is_some() {
                    if let Output::Deliver(message) = output {
                        self.deliver(message);
                    }
                    continue;
                }
                match output {
                    Output::Send(text) => {
                        match tokio::time::timeout_at(deadline, ws.feed(Message::text(text))).await
                        {
                            Ok(Ok(())) => ScStats::bump(&self.stats.frames_out),
                            Ok(Err(err)) => {
                                ended =
                                    Some(Step::Lost { reason: describe_ws_error(&err), code: None })
                            }
                            Err(_) => {
                                ended = Some(Step::Lost { reason: STALLED.into(), code: None })
                            }
                        }
                    }
                    Output::Deliver(message) => self.deliver(message),
                    Output::Opened { socket_id, authenticated, ping_timeout: server_timeout } => {
                        self.backoff.reset();
                        self.opened_at = Some(Instant::now());
                        ping_timeout = server_timeout;
                        deadline = Instant::now() + ping_timeout;
                        tracing::info!(url = %self.config.display_url(), %socket_id, authenticated, "SocketCluster link connected");
                        // Told only once what waited in the queue has gone
                        // out: a reaction to "connected" (a cables
                        // announcement) must not push a held message out.
                        opened = Some(LinkState::Connected { socket_id, authenticated });
                    }
                    Output::AuthChanged { authenticated } => {
                        self.state.send_modify(|state| {
                            if let LinkState::Connected { authenticated: auth, .. } = state {
                                *auth = authenticated;
                            }
                        });
                    }
                    Output::Alive => {
                        if self.session.is_open() {
                            deadline = Instant::now() + ping_timeout;
                        }
                    }
                    Output::Close { code, reason } => {
                        close(&mut ws, &self.stats, code, &reason).await;
                        ended = Some(Step::Lost { reason, code: Some(code) });
                    }
                }
            }
            if let Some(ended) = ended {
                return ended;
            }
            if let Some(step) = step {
                match &step {
                    Step::Lost { reason, code: Some(code) } if *code >= 4000 => {
                        close(&mut ws, &self.stats, *code, reason).await
                    }
                    Step::Lost { .. } | Step::Connected(_) => {}
                    Step::Shutdown(_) => {
                        // Before the handshake the server would take a
                        // publish as a protocol error; the queue is counted
                        // as dropped instead.
                        // What the server does not take in time stays in the
                        // queue, and is counted as dropped at the stop.
                        if self.session.is_open() {
                            let until = Instant::now() + SHUTDOWN_FLUSH;
                            self.drain_queue(&mut ws, &mut batch, usize::MAX, until).await;
                        }
                        close(&mut ws, &self.stats, 1000, "shutting down").await;
                    }
                    Step::Deactivated => close(&mut ws, &self.stats, 1000, "switched off").await,
                    Step::Reset => close(&mut ws, &self.stats, 1000, "reset").await,
                }
                return step;
            }
            // A server that stops reading (a stopped process, a wedged
            // proxy) would block these writes for good, and with them the
            // commands and the ping deadline: they may take until the
            // deadline, as a server that does not read our pongs would give
            // us no longer either.
            if self.session.is_open()
                && !self.drain_queue(&mut ws, &mut batch, DRAIN_BATCH, deadline).await
            {
                return Step::Lost { reason: "write failed or blocked".into(), code: None };
            }
            match tokio::time::timeout_at(deadline, ws.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => return Step::Lost { reason: describe_ws_error(&err), code: None },
                Err(_) => return Step::Lost { reason: STALLED.into(), code: None },
            }
            if let Some(state) = opened.take() {
                self.state.send_replace(state);
            }
        }
    }

    /// Sends up to `max` queued packets, writing until `until` at the
    /// latest; false when the socket failed or the time ran out. Then the
    /// packet being written, and those written since the last flush, count
    /// as `write_failures` (what reached the server is unknown), and the
    /// rest go back to the front of the queue.
    async fn drain_queue(
        &mut self,
        ws: &mut WsStream,
        batch: &mut Vec<Outgoing>,
        max: usize,
        until: Instant,
    ) -> bool {
        self.queue.take(max, batch);
        let more = !batch.is_empty() && self.queue.len() > 0;
        // Taken from the end, so that what is not written stays in `batch`.
        batch.reverse();
        let mut fed = 0u64;
        while let Some(item) = batch.pop() {
            if let Some((cid, reply)) = item.reply {
                // Its caller's ack timeout passed while it waited in the
                // queue (counted there): the server must not act on an
                // invoke already reported as failed.
                if reply.is_closed() {
                    tracing::debug!(cid, "an invoke whose caller gave up was not sent");
                    continue;
                }
                self.session.track_invoke(cid, reply);
            }
            let failure =
                match tokio::time::timeout_at(until, ws.feed(Message::text(item.text))).await {
                    Ok(Ok(())) => None,
                    Ok(Err(err)) => Some(describe_ws_error(&err)),
                    Err(_) => Some(STALLED.to_owned()),
                };
            if let Some(error) = failure {
                // The packet being written is lost, and so may be those fed
                // before it in this write (an invoke among them fails to its
                // caller with the connection); the rest of the batch goes
                // back to the front of the queue for the reconnect.
                crate::stats::add(&self.stats.write_failures, fed + 1);
                tracing::warn!(
                    packets = fed + 1,
                    requeued = batch.len(),
                    %error,
                    "a SocketCluster write failed: the packets of this write may be lost, the rest requeued"
                );
                self.queue.give_back(batch.drain(..).rev(), &self.stats);
                return false;
            }
            fed += 1;
            ScStats::bump(&self.stats.frames_out);
        }
        if more {
            self.queue.wake();
        }
        // tungstenite buffers what is fed and writes it here, so this is
        // where a broken socket shows for small frames. What part of the
        // batch reached the server is unknown: all of it counts as lost.
        let error = match tokio::time::timeout_at(until, ws.flush()).await {
            Ok(Ok(())) => return true,
            Ok(Err(err)) => describe_ws_error(&err),
            Err(_) => STALLED.to_owned(),
        };
        crate::stats::add(&self.stats.write_failures, fed);
        tracing::warn!(packets = fed, %error, "a SocketCluster write failed: the packets of this write may be lost");
        false
    }

    fn on_ws_message(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
        out: &mut Vec<Output>,
    ) -> Option<Step> {
        let message = match frame {
            None => {
                return Some(Step::Lost { reason: "connection closed".into(), code: Some(1006) });
            }
            Some(Err(err)) => {
                return Some(Step::Lost { reason: describe_ws_error(&err), code: Some(1006) });
            }
            Some(Ok(message)) => message,
        };
        match message {
            Message::Text(text) => {
                if text.len() > self.config.max_frame_bytes {
                    if let Some(count) = crate::stats::bump_loggable(&self.stats.oversized_frames) {
                        tracing::warn!(
                            bytes = text.len(),
                            limit = self.config.max_frame_bytes,
                            count,
                            "skipped an oversized SocketCluster frame"
                        );
                    }
                } else {
                    self.session.on_text(text.as_str(), out);
                }
            }
            Message::Binary(bytes) => {
                if let Some(count) = crate::stats::bump_loggable(&self.stats.binary_frames) {
                    tracing::warn!(
                        bytes = bytes.len(),
                        count,
                        "skipped a binary frame (SocketCluster uses text frames)"
                    );
                }
            }
            Message::Close(frame) => {
                let (code, reason) = match frame {
                    Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
                    None => (1005, String::new()),
                };
                let reason =
                    if reason.is_empty() { describe_close(code).to_owned() } else { reason };
                return Some(Step::Lost {
                    reason: format!("closed by the server: {reason}"),
                    code: Some(code),
                });
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        None
    }

    fn deliver(&self, message: Incoming) {
        match self.incoming.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(dropped) = crate::stats::bump_loggable(&self.stats.inbound_queue_full) {
                    tracing::warn!(
                        dropped,
                        "consumer too slow: dropped incoming SocketCluster messages"
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                ScStats::bump(&self.stats.inbound_queue_full);
                tracing::debug!("no consumer for incoming SocketCluster messages");
            }
        }
    }
}

/// A close frame's payload is at most 125 bytes, two of them the code;
/// tungstenite does not check that on write.
const MAX_CLOSE_REASON: usize = 123;

/// Sends our close frame and waits, a little, for the server's reply. Frames
/// the server sent before it read ours are not read any more: they are
/// counted and named in one line.
async fn close(ws: &mut WsStream, stats: &ScStats, code: u16, reason: &str) {
    let reason = close_reason(reason);
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_owned().into() };
    let mut unread = 0u64;
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        let _ = ws.close(Some(frame)).await;
        // Wait for the server's close reply so the close is clean on its side.
        while let Some(Ok(frame)) = ws.next().await {
            // An empty frame or `#1` is a ping, not a message.
            if let Message::Text(text) = &frame
                && !matches!(text.as_str(), "" | "#1")
            {
                unread += 1;
            }
        }
    })
    .await;
    if unread > 0 {
        crate::stats::add(&stats.frames_after_close, unread);
        tracing::warn!(
            frames = unread,
            "frames that arrived while the connection was closing were not read"
        );
    }
}

/// The reason cut to fit a close frame, on a character boundary.
fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

fn describe_ws_error(err: &tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Http(response) => {
            format!(
                "the server refused the WebSocket upgrade: HTTP {} (is the path right? it must end with '/')",
                response.status()
            )
        }
        other => other.to_string(),
    }
}

/// The meaning of SocketCluster's close codes; the server sends no text.
pub(crate) fn describe_close(code: u16) -> &'static str {
    match code {
        1000 => "normal closure",
        1001 => "going away",
        1005 => "no status",
        1006 => "connection lost",
        4000 => "server ping timed out",
        4001 => "client pong timed out",
        4002 => "server failed to sign the auth token",
        4003 => "handshake failed",
        4004 => "client failed to save the auth token",
        4005 => "no handshake before the server's handshake timeout",
        4006 => "server broker failed to bind",
        4007 => "connection establishment timed out",
        4008 => "handshake rejected or malformed",
        4009 => "message before handshake",
        _ => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_close_reason_is_cut_to_fit_the_frame_on_a_character_boundary() {
        assert_eq!(close_reason("handshake failed"), "handshake failed");
        let long = format!("handshake failed: {}", "é".repeat(100));
        let cut = close_reason(&long);
        assert!(
            cut.len() <= MAX_CLOSE_REASON && cut.len() >= MAX_CLOSE_REASON - 1,
            "{}",
            cut.len()
        );
        assert!(long.starts_with(cut));
    }
}
