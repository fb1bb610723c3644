//! The serde mirror of the TOML file: as close to what users write as
//! possible, with no checks beyond types and unknown keys.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub socketcluster: Option<RawSocketCluster>,
}

/// `[socketcluster]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSocketCluster {
    pub url: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub secure: Option<bool>,
    pub path: Option<String>,
    pub protocol: Option<u8>,
    pub active: Option<bool>,
    pub reconnect_delay_ms: Option<u64>,
    pub reconnect_backoff: Option<f64>,
    pub reconnect_jitter: Option<f64>,
    pub reconnect_max_delay_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub ack_timeout_ms: Option<u64>,
    pub queue_size: Option<usize>,
    pub max_frame_bytes: Option<usize>,
    pub verify_tls: Option<bool>,
    pub ca_file: Option<String>,
    pub auth_token: Option<String>,
    pub auth_token_file: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
    #[serde(default)]
    pub subscribe_after_auth: Vec<String>,
}
