//! [`ScClient`]: the clonable handle to the SocketCluster link.
//!
//! Sending never blocks: packets are encoded here, on the caller's task, and
//! put on the bounded send queue. Control operations (subscribe, active,
//! reset, auth) go to the link task over a small command channel.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use super::backoff::Backoff;
use super::codec;
use super::config::ScConfig;
use super::connection::{Command, Connection};
use super::queue::{OutboundQueue, Outgoing};
use super::session::Session;
use super::stats::ScStats;
use super::{Incoming, InvokeError, LinkState};

/// Control commands are few and small; this only bounds a runaway caller.
const COMMAND_QUEUE: usize = 64;

/// A handle to the one SocketCluster connection. Cheap to clone.
#[derive(Clone)]
pub struct ScClient {
    commands: mpsc::Sender<Command>,
    queue: Arc<OutboundQueue>,
    cids: Arc<AtomicU64>,
    state: watch::Receiver<LinkState>,
    stats: Arc<ScStats>,
    ack_timeout: Duration,
}

impl ScClient {
    /// Starts the link task (it connects at once when `config.active`) and
    /// returns the handle plus the stream of what the server sends.
    ///
    /// Must be called inside a Tokio runtime.
    pub fn start(config: ScConfig) -> (ScClient, mpsc::Receiver<Incoming>) {
        if !config.verify_tls && config.url.scheme() == "wss" {
            tracing::warn!(url = %config.display_url(), "verify_tls is off: any server certificate is accepted");
        }
        let stats = Arc::new(ScStats::default());
        let cids = Arc::new(AtomicU64::new(1));
        let queue = Arc::new(OutboundQueue::new(config.queue_size));
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (incoming_tx, incoming_rx) = mpsc::channel(config.inbound_queue_size.max(1));
        let initial =
            if config.active { LinkState::Connecting { attempt: 0 } } else { LinkState::Inactive };
        let (state_tx, state_rx) = watch::channel(initial);
        let client = ScClient {
            commands: commands_tx,
            queue: queue.clone(),
            cids: cids.clone(),
            state: state_rx,
            stats: stats.clone(),
            ack_timeout: config.ack_timeout,
        };
        let connection = Connection {
            session: Session::new(config.protocol, cids, stats.clone()),
            backoff: Backoff::new(config.reconnect.clone()),
            active: config.active,
            opened_at: None,
            config,
            queue,
            commands: commands_rx,
            state: state_tx,
            incoming: incoming_tx,
            stats,
        };
        tokio::spawn(connection.run());
        (client, incoming_rx)
    }

    /// Publishes without waiting for an ack (`transmitPublish`, as cables does).
    pub fn publish(&self, channel: &str, data: &Value) {
        self.push(codec::encode_publish(channel, data, None), None);
    }

    /// Publishes and waits for the server's ack (`invokePublish`).
    pub async fn invoke_publish(&self, channel: &str, data: &Value) -> Result<(), InvokeError> {
        let cid = self.next_cid();
        self.call(codec::encode_publish(channel, data, Some(cid)), cid).await.map(|_| ())
    }

    /// Sends a custom event, fire and forget.
    pub fn transmit<D: Serialize>(&self, event: &str, data: Option<D>) {
        self.push(codec::encode_event(event, data, None), None);
    }

    /// Sends a custom event and waits for the reply (at most the ack timeout,
    /// counted from this call, as in the JS client).
    pub async fn invoke<D: Serialize>(
        &self,
        event: &str,
        data: Option<D>,
    ) -> Result<Option<Value>, InvokeError> {
        let cid = self.next_cid();
        self.call(codec::encode_event(event, data, Some(cid)), cid).await
    }

    /// Subscribes a channel, now or after the next handshake; kept across
    /// reconnects. A wait-for-auth channel is sent only once authenticated.
    pub async fn subscribe(&self, channel: &str, wait_for_auth: bool) {
        self.command(Command::Subscribe { channel: channel.to_owned(), wait_for_auth }).await
    }

    pub async fn unsubscribe(&self, channel: &str) {
        self.command(Command::Unsubscribe { channel: channel.to_owned() }).await
    }

    /// Sends `#authenticate`; the token is also kept for later handshakes.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Value>, InvokeError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Authenticate { token: token.to_owned(), reply }).await;
        self.await_reply(answer).await
    }

    /// Forgets the token and tells the server.
    pub async fn deauthenticate(&self) {
        self.command(Command::Deauthenticate).await
    }

    /// The active toggle: off closes cleanly and stops retrying; on connects.
    pub async fn set_active(&self, active: bool) {
        self.command(Command::SetActive(active)).await
    }

    /// Closes the connection and connects again at once.
    pub async fn reset(&self) {
        self.command(Command::Reset).await
    }

    /// [`set_active`](Self::set_active) without waiting: false when the
    /// link's command queue is full (or the link task has ended).
    pub fn try_set_active(&self, active: bool) -> bool {
        self.commands.try_send(Command::SetActive(active)).is_ok()
    }

    /// [`reset`](Self::reset) without waiting: false when the link's
    /// command queue is full (or the link task has ended).
    pub fn try_reset(&self) -> bool {
        self.commands.try_send(Command::Reset).is_ok()
    }

    /// Sends what is queued (when connected), closes cleanly and ends the
    /// link task.
    pub async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        self.command(Command::Shutdown { done }).await;
        let _ = finished.await;
    }

    /// Watches the link state.
    pub fn link_state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// The link's counters.
    pub fn stats(&self) -> &ScStats {
        &self.stats
    }

    /// Packets waiting in the send queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn next_cid(&self) -> u64 {
        self.cids.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn push(&self, text: String, reply: Option<(u64, super::queue::ReplySender)>) {
        self.queue.push(Outgoing { text, reply }, &self.stats);
    }

    async fn call(&self, text: String, cid: u64) -> Result<Option<Value>, InvokeError> {
        let (reply, answer) = oneshot::channel();
        self.push(text, Some((cid, reply)));
        self.await_reply(answer).await
    }

    async fn await_reply(
        &self,
        answer: oneshot::Receiver<Result<Option<Value>, InvokeError>>,
    ) -> Result<Option<Value>, InvokeError> {
        match tokio::time::timeout(self.ack_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(InvokeError::Closed),
            Err(_) => {
                ScStats::bump(&self.stats.invokes_timed_out);
                Err(InvokeError::Timeout)
            }
        }
    }

    async fn command(&self, command: Command) {
        if self.commands.send(command).await.is_err() {
            tracing::debug!("SocketCluster link task has ended; command ignored");
        }
    }
}
