//! The SocketCluster side: one client connection to a SocketCluster server,
//! protocol v1 or v2, kept alive for as long as the bridge runs.
//!
//! - [`codec`]: text frames ⇄ packets (pure).
//! - [`session`]: protocol state, cids, subscriptions, auth (pure).
//! - `connection`: the task that owns the WebSocket, liveness and reconnects.
//! - [`client`]: [`ScClient`], the clonable handle the rest of the program uses.

pub mod backoff;
pub mod client;
pub mod codec;
pub mod config;
mod connection;
mod queue;
pub mod session;
pub mod stats;

use std::time::Duration;

use serde_json::Value;

pub use backoff::ReconnectPolicy;
pub use client::ScClient;
pub use codec::{Protocol, RemoteError};
pub use config::{AuthToken, ScConfig};
pub use stats::ScStats;

/// What the server sends that the rest of the program may care about.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A message published on a channel we subscribed.
    Publish { channel: String, data: Value },
    /// A custom event the server transmitted (or invoked; it was acked).
    Event { event: String, data: Value },
}

/// The state of the link, as the rest of the program sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Switched off (the `active` toggle): no connection, no retries.
    Inactive,
    /// Opening the WebSocket or waiting for the handshake.
    Connecting { attempt: u32 },
    /// Handshake done.
    Connected { socket_id: String, authenticated: bool },
    /// Lost or failed; the next attempt comes after `retry_in`.
    Disconnected { reason: String, code: Option<u16>, retry_in: Duration },
}

impl LinkState {
    pub fn is_connected(&self) -> bool {
        matches!(self, LinkState::Connected { .. })
    }
}

/// Why an invoke got no successful reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvokeError {
    #[error("no reply within the ack timeout")]
    Timeout,
    #[error("the connection closed before the reply arrived")]
    ConnectionLost,
    #[error("not connected")]
    NotConnected,
    #[error("dropped from the full send queue")]
    Dropped,
    #[error("the SocketCluster link has shut down")]
    Closed,
    #[error("the server answered with an error: {0}")]
    Remote(RemoteError),
}
