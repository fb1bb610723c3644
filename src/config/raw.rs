//! The serde mirror of the TOML file: as close to what users write as
//! possible, with no checks beyond types and unknown keys.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub socketcluster: Option<RawSocketCluster>,
    pub cables: Option<RawCables>,
    pub osc: Option<crate::osc::RawOsc>,
    pub mqtt: Option<crate::mqtt::RawMqtt>,
    pub control: Option<RawControl>,
    pub http: Option<RawHttp>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

/// `[control]`: runtime control and status, off unless configured.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub osc: Option<String>,
    pub mqtt: Option<String>,
    pub status_topic: Option<String>,
    pub osc_status_target: Option<String>,
    pub osc_status_address: Option<String>,
}

/// `[http]`: the observability listener, off unless configured.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
    pub max_lines: Option<usize>,
}

/// `[cables]`: one cables.gl "Channel".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCables {
    pub channel: Option<String>,
    pub client_id: Option<String>,
    pub receive_own: Option<bool>,
    pub allow_send: Option<bool>,
    pub allow_multiple_senders: Option<bool>,
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One `[[route]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub from: Option<RawEnd>,
    #[serde(default)]
    pub to: Vec<RawEnd>,
    pub enabled: Option<bool>,
    pub delay_ms: Option<u64>,
    pub max_rate: Option<f64>,
    pub trigger_on: Option<crate::route::TriggerOn>,
}

/// A route's `from` or one of its `to` entries: exactly one kind key, plus
/// the options that kind takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnd {
    pub cables_object: Option<String>,
    pub cables_trigger: Option<String>,
    pub sc_channel: Option<String>,
    pub sc_event: Option<String>,
    pub osc: Option<String>,
    pub mqtt: Option<String>,
    // sc_channel source
    pub wait_for_auth: Option<bool>,
    // sc_event destination
    pub invoke: Option<bool>,
    // cables_trigger destination: the envelope topic (default: the trigger name)
    pub topic: Option<String>,
    // mqtt source and destination
    pub qos: Option<u8>,
    // mqtt destination
    pub retain: Option<bool>,
    pub payload: Option<String>,
    // osc destination
    pub target: Option<String>,
    pub numbers: Option<crate::osc::mapping::NumberType>,
    pub bools: Option<crate::osc::mapping::BoolStyle>,
    pub null: Option<crate::osc::mapping::NullStyle>,
    pub objects: Option<crate::osc::mapping::ObjectStyle>,
    pub trigger: Option<crate::osc::mapping::TriggerStyle>,
    pub types: Option<String>,
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
    pub inbound_queue_size: Option<usize>,
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
