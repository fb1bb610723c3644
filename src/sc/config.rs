//! The validated settings of the SocketCluster link. Built from the TOML by
//! `crate::config`, or directly with [`ScConfig::new`].

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::backoff::ReconnectPolicy;
use super::codec::Protocol;

/// A string that must never reach a log: `Debug` prints a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Where the auth token for the handshake comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthToken {
    #[default]
    None,
    /// Given in the config.
    Inline(Secret),
    /// Read from this file before every handshake, so a rotated token is
    /// picked up on the next reconnect (systemd's LoadCredential fits here).
    File(PathBuf),
}

/// Everything the client needs to connect and stay connected.
#[derive(Debug, Clone, PartialEq)]
pub struct ScConfig {
    /// `ws://` or `wss://`, path and query included.
    pub url: Url,
    pub protocol: Protocol,
    /// Extra HTTP headers on the WebSocket upgrade request.
    pub headers: Vec<(String, Secret)>,
    /// Connect at start; off means the link waits for `set_active(true)`.
    pub active: bool,
    pub reconnect: ReconnectPolicy,
    /// TCP + TLS + WebSocket upgrade must finish within this.
    pub connect_timeout: Duration,
    /// How long an invoke (the handshake included) waits for its reply.
    pub ack_timeout: Duration,
    /// Outgoing messages held while the link is down; the oldest go first.
    pub queue_size: usize,
    /// Incoming messages held for a slow consumer before they are dropped.
    pub inbound_queue_size: usize,
    /// Frames larger than this are counted and skipped.
    pub max_frame_bytes: usize,
    /// Verify the server's certificate (on unless switched off on purpose).
    pub verify_tls: bool,
    /// Extra trust anchors (PEM), e.g. for a self-signed server.
    pub ca_file: Option<PathBuf>,
    pub auth: AuthToken,
}

impl ScConfig {
    /// Settings with the defaults for a server at `url`.
    pub fn new(url: Url) -> Self {
        ScConfig {
            url,
            protocol: Protocol::V2,
            headers: Vec::new(),
            active: true,
            reconnect: ReconnectPolicy::default(),
            connect_timeout: Duration::from_secs(20),
            ack_timeout: Duration::from_secs(10),
            queue_size: 1000,
            inbound_queue_size: 16384,
            max_frame_bytes: 1024 * 1024,
            verify_tls: true,
            ca_file: None,
            auth: AuthToken::None,
        }
    }

    /// The URL with any secret query values hidden, for logs.
    pub fn display_url(&self) -> String {
        let mut url = self.url.clone();
        if url.query().is_some() {
            let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
            url.query_pairs_mut().clear();
            for key in keys {
                url.query_pairs_mut().append_pair(&key, "…");
            }
        }
        url.to_string()
    }
}
