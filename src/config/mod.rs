//! The config file: TOML → [`raw`] (serde mirror) → [`Config`] (validated).
//!
//! Every error names the TOML key and the line it is on, whether it comes
//! from the TOML parser (syntax, types, unknown keys) or from validation.

mod locate;
pub mod raw;
mod routes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::cables::CablesConfig;
use crate::message::SourceKind;
use crate::mqtt::{MqttConfig, QoS};
use crate::osc::OscConfig;
use crate::route::Route;
use crate::sc::{AuthToken, Protocol, ReconnectPolicy, ScConfig, config::Secret};
use raw::{RawConfig, RawSocketCluster};

/// The default path of a SocketCluster server; it must end with a slash.
pub const DEFAULT_SC_PATH: &str = "/socketcluster/";

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub socketcluster: ScConfig,
    /// Channels subscribed at start (beyond what the routes need).
    pub subscribe: Vec<ChannelSubscription>,
    /// The cables.gl channel, when routes use one.
    pub cables: Option<CablesConfig>,
    pub osc: Option<OscConfig>,
    pub mqtt: Option<MqttConfig>,
    /// The `[[route]]` entries, in file order.
    pub routes: Vec<Route>,
    pub control: ControlConfig,
    /// The observability listener, when configured.
    pub http: Option<HttpConfig>,
}

/// Runtime control and status publishing (`[control]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlConfig {
    /// OSC address prefix of control messages (`/scbridge/active` ...).
    pub osc: Option<String>,
    /// MQTT topic prefix of control messages (`scbridge/control/active` ...).
    pub mqtt: Option<String>,
    /// Retained MQTT topic that tells the SocketCluster link state.
    pub status_topic: Option<String>,
    /// OSC target (index) and address that get the link state as 1/0.
    pub osc_status: Option<(usize, String)>,
}

/// `[http]`: `/metrics`, `/health`, `/recent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    pub listen: std::net::SocketAddr,
    /// How many routed messages `/recent` keeps (SocketIO DAT's Max Lines).
    pub max_lines: usize,
}

/// A channel the bridge subscribes on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSubscription {
    pub channel: String,
    /// Sent only once the link is authenticated.
    pub wait_for_auth: bool,
}

/// Why a config was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}:{line}:{column}: `{key}`: {message}")]
    Invalid { origin: String, key: String, line: usize, column: usize, message: String },
}

impl ConfigError {
    /// The dotted TOML key the error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
        }
    }
}

/// A validation failure before it is placed in the source: the dotted key
/// (`osc.targets.td`, `route[2].to[0].osc`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { key: key.into(), message: message.into() }
    }
}

/// The most messages any queue may be set to hold. Each waiting message
/// holds memory, and a runaway value would otherwise ask the allocator (or
/// tokio's channel) for more than exists.
pub const MAX_QUEUE_SIZE: usize = 1_000_000;

/// The most routed messages `/recent` may keep. Each line holds a copy of
/// the message; a typo with extra zeros would otherwise grow without end.
pub const MAX_RECENT_LINES: usize = 100_000;

/// What is wrong with a queue size, if anything.
pub(crate) fn queue_size_problem(size: usize) -> Option<&'static str> {
    if size == 0 {
        Some("must be at least 1")
    } else if size > MAX_QUEUE_SIZE {
        Some("must be at most 1000000")
    } else {
        None
    }
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem::new(key, message)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::from_toml(&source, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(source: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(source).map_err(|err| {
            let offset = err.span().map_or(0, |span| span.start);
            let (line, column) = locate::line_col(source, offset);
            let key = locate::key_at(source, offset).unwrap_or_else(|| "(document)".into());
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                line,
                column,
                message: err.message().trim().to_owned(),
            }
        })?;
        validate(raw).map_err(|p| {
            let offset = locate::locate(source, &p.key).map_or(0, |span| span.start);
            let (line, column) = locate::line_col(source, offset);
            ConfigError::Invalid {
                origin: origin.to_owned(),
                key: p.key,
                line,
                column,
                message: p.message,
            }
        })
    }
}

fn validate(raw: RawConfig) -> Result<Config, Problem> {
    let sc = raw.socketcluster.ok_or_else(|| {
        problem("socketcluster", "missing: the [socketcluster] table is required")
    })?;
    let mut subscribe = Vec::new();
    for (list, wait_for_auth) in [(&sc.subscribe, false), (&sc.subscribe_after_auth, true)] {
        let key = if wait_for_auth { "subscribe_after_auth" } else { "subscribe" };
        for (index, channel) in list.iter().enumerate() {
            if channel.is_empty() {
                return Err(problem(
                    format!("socketcluster.{key}[{index}]"),
                    "channel name is empty",
                ));
            }
            subscribe.push(ChannelSubscription { channel: channel.clone(), wait_for_auth });
        }
    }
    let socketcluster = validate_sc(&sc)?;
    let cables = raw.cables.as_ref().map(routes::validate_cables).transpose()?;
    let osc = raw.osc.as_ref().map(crate::osc::config::validate).transpose()?;
    let mqtt = raw.mqtt.as_ref().map(crate::mqtt::config::validate).transpose()?;
    let links = routes::Links { cables: cables.is_some(), osc: osc.as_ref(), mqtt: mqtt.is_some() };
    let routes = routes::validate_routes(&raw.route, &links)?;
    if let Some(mqtt) = &mqtt {
        refuse_qos2_in_a_persistent_session(mqtt, &routes)?;
    }
    let control = validate_control(raw.control.as_ref(), osc.as_ref(), mqtt.as_ref())?;
    let http = raw.http.as_ref().map(validate_http).transpose()?;
    Ok(Config { socketcluster, subscribe, cables, osc, mqtt, routes, control, http })
}

fn validate_control(
    raw: Option<&raw::RawControl>,
    osc: Option<&OscConfig>,
    mqtt: Option<&MqttConfig>,
) -> Result<ControlConfig, Problem> {
    let empty = raw::RawControl::default();
    let raw = raw.unwrap_or(&empty);
    if let Some(prefix) = &raw.osc {
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.ends_with('/') {
            return Err(problem(
                "control.osc",
                "an OSC prefix like \"/scbridge\" (leading '/', no trailing '/')",
            ));
        }
        if osc.is_none_or(|o| o.listen.is_empty()) {
            return Err(problem("control.osc", "needs [osc] with at least one `listen` socket"));
        }
    }
    if let Some(prefix) = &raw.mqtt {
        if prefix.is_empty()
            || prefix.contains(['+', '#'])
            || prefix.ends_with('/')
            || !crate::mqtt::config::valid_filter(&format!("{prefix}/#"))
        {
            return Err(problem(
                "control.mqtt",
                "a topic prefix like \"scbridge/control\" (no wildcards, no NUL, no trailing '/', \
                 under 64 KiB)",
            ));
        }
        if mqtt.is_none() {
            return Err(problem("control.mqtt", "needs an [mqtt] table"));
        }
    }
    let status_topic = match (&raw.status_topic, mqtt) {
        (Some(topic), _) if topic.is_empty() => None,
        (Some(_), None) => return Err(problem("control.status_topic", "needs an [mqtt] table")),
        (Some(topic), Some(_)) if !crate::mqtt::config::valid_topic(topic) => {
            return Err(problem(
                "control.status_topic",
                "a topic, not a filter: no '+', '#' or NUL, under 64 KiB",
            ));
        }
        (Some(topic), Some(_)) => Some(topic.clone()),
        (None, Some(mqtt)) => {
            let topic = format!("scbridge/{}/socketcluster", mqtt.client_id);
            if !crate::mqtt::config::valid_topic(&topic) {
                return Err(problem(
                    "mqtt.client_id",
                    "contains + or # (or is too long), so the default control.status_topic \
                     is invalid; set control.status_topic",
                ));
            }
            Some(topic)
        }
        (None, None) => None,
    };
    // Our own retained publishes under the control prefix would come back,
    // at every reconnect, as control messages.
    if let Some(prefix) = &raw.mqtt {
        let under_prefix = |topic: &str| {
            topic.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.starts_with('/'))
        };
        if status_topic.as_deref().is_some_and(under_prefix) {
            return Err(problem(
                "control.status_topic",
                "lies under control.mqtt, so it would come back as a control message",
            ));
        }
        if mqtt.and_then(|m| m.availability_topic.as_deref()).is_some_and(under_prefix) {
            return Err(problem(
                "mqtt.availability_topic",
                "lies under control.mqtt, so it would come back as a control message",
            ));
        }
    }
    let osc_status = match &raw.osc_status_target {
        None => None,
        Some(name) => {
            let index = osc.and_then(|o| o.target_index(name)).ok_or_else(|| {
                problem(
                    "control.osc_status_target",
                    format!("no OSC target named `{name}` in [osc.targets]"),
                )
            })?;
            let address =
                raw.osc_status_address.clone().unwrap_or_else(|| "/scbridge/socketcluster".into());
            if !address.starts_with('/') {
                return Err(problem(
                    "control.osc_status_address",
                    "an OSC address starts with '/'",
                ));
            }
            Some((index, address))
        }
    };
    Ok(ControlConfig { osc: raw.osc.clone(), mqtt: raw.mqtt.clone(), status_topic, osc_status })
}

/// The MQTT client forgets its half of QoS 2 deliveries on a reconnect; a
/// broker that kept the session resends PUBREL for one, the client calls it
/// unsolicited and drops the connection, and so on after every reconnect.
fn refuse_qos2_in_a_persistent_session(mqtt: &MqttConfig, routes: &[Route]) -> Result<(), Problem> {
    if mqtt.clean_session {
        return Ok(());
    }
    let qos2 = routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.source.kind == SourceKind::Mqtt && r.source.qos == QoS::ExactlyOnce);
    match qos2 {
        Some((index, route)) => Err(problem(
            format!("route[{index}].from.qos"),
            format!(
                "route `{}` subscribes with QoS 2, which cannot survive a reconnect with mqtt.clean_session = false; use qos = 1, or a clean session",
                route.name
            ),
        )),
        None => Ok(()),
    }
}

fn validate_http(raw: &raw::RawHttp) -> Result<HttpConfig, Problem> {
    let text = raw.listen.as_deref().unwrap_or("127.0.0.1:9100");
    let listen: std::net::SocketAddr = text.parse().map_err(|_| {
        problem("http.listen", format!("`{text}` is not an address like 127.0.0.1:9100"))
    })?;
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "the HTTP listener is reachable from the network; it has no authentication");
    }
    let max_lines = raw.max_lines.unwrap_or(100);
    if max_lines > MAX_RECENT_LINES {
        return Err(problem("http.max_lines", format!("must be at most {MAX_RECENT_LINES}")));
    }
    Ok(HttpConfig { listen, max_lines })
}

fn ms(value: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(value.unwrap_or(default))
}

fn validate_sc(sc: &RawSocketCluster) -> Result<ScConfig, Problem> {
    let mut url = sc_url(sc)?;
    if !sc.query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (key, value) in &sc.query {
            pairs.append_pair(key, value);
        }
    }
    let mut config = ScConfig::new(url);
    config.protocol = match sc.protocol.unwrap_or(2) {
        1 => Protocol::V1,
        2 => Protocol::V2,
        other => {
            return Err(problem("socketcluster.protocol", format!("must be 1 or 2, not {other}")));
        }
    };
    for (name, value) in &sc.headers {
        let key = format!("socketcluster.headers.{name}");
        if tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(problem(key, "not a valid HTTP header name"));
        }
        if tokio_tungstenite::tungstenite::http::HeaderValue::from_str(value).is_err() {
            return Err(problem(key, "not a valid HTTP header value (no control characters)"));
        }
        config.headers.push((name.clone(), Secret(value.clone())));
    }
    config.active = sc.active.unwrap_or(true);
    let delay = ms(sc.reconnect_delay_ms, 1000);
    let max_delay = ms(sc.reconnect_max_delay_ms, 30_000.max(delay.as_millis() as u64));
    if max_delay < delay {
        return Err(problem(
            "socketcluster.reconnect_max_delay_ms",
            "must not be smaller than reconnect_delay_ms",
        ));
    }
    let multiplier = sc.reconnect_backoff.unwrap_or(1.0);
    if !(1.0..=10.0).contains(&multiplier) {
        return Err(problem(
            "socketcluster.reconnect_backoff",
            "must be between 1.0 (fixed delay) and 10.0",
        ));
    }
    let jitter = sc.reconnect_jitter.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&jitter) {
        return Err(problem("socketcluster.reconnect_jitter", "must be between 0.0 and 1.0"));
    }
    config.reconnect = ReconnectPolicy { delay, multiplier, jitter, max_delay };
    config.connect_timeout = ms(sc.connect_timeout_ms, 20_000);
    config.ack_timeout = ms(sc.ack_timeout_ms, 10_000);
    for (key, value) in
        [("connect_timeout_ms", config.connect_timeout), ("ack_timeout_ms", config.ack_timeout)]
    {
        if value.is_zero() {
            return Err(problem(format!("socketcluster.{key}"), "must be more than 0"));
        }
    }
    config.queue_size = sc.queue_size.unwrap_or(1000);
    if let Some(why) = queue_size_problem(config.queue_size) {
        return Err(problem("socketcluster.queue_size", why));
    }
    if let Some(size) = sc.inbound_queue_size {
        if let Some(why) = queue_size_problem(size) {
            return Err(problem("socketcluster.inbound_queue_size", why));
        }
        config.inbound_queue_size = size;
    }
    config.max_frame_bytes = sc.max_frame_bytes.unwrap_or(1024 * 1024);
    if config.max_frame_bytes < 1024 {
        return Err(problem("socketcluster.max_frame_bytes", "must be at least 1024"));
    }
    config.verify_tls = sc.verify_tls.unwrap_or(true);
    config.ca_file = sc.ca_file.as_ref().map(PathBuf::from);
    if sc.ca_file.as_deref() == Some("") {
        return Err(problem("socketcluster.ca_file", "must not be empty"));
    }
    let plain = config.url.scheme() == "ws";
    if plain && (config.ca_file.is_some() || sc.verify_tls.is_some()) {
        tracing::warn!(
            url = %config.display_url(),
            "socketcluster.ca_file and verify_tls apply to wss:// only; this link is not encrypted"
        );
    }
    if sc.auth_token_file.as_deref() == Some("") {
        return Err(problem("socketcluster.auth_token_file", "must not be empty"));
    }
    config.auth = match (&sc.auth_token, &sc.auth_token_file) {
        (Some(_), Some(_)) => {
            return Err(problem(
                "socketcluster.auth_token_file",
                "give either auth_token or auth_token_file, not both",
            ));
        }
        (Some(token), None) => AuthToken::Inline(Secret(token.clone())),
        (None, Some(path)) => AuthToken::File(PathBuf::from(path)),
        (None, None) => AuthToken::None,
    };
    Ok(config)
}

/// Either `url`, or cables-style `hostname`/`port`/`secure`/`path`.
fn sc_url(sc: &RawSocketCluster) -> Result<Url, Problem> {
    if let Some(text) = &sc.url {
        for (key, set) in [
            ("hostname", sc.hostname.is_some()),
            ("port", sc.port.is_some()),
            ("secure", sc.secure.is_some()),
            ("path", sc.path.is_some()),
        ] {
            if set {
                return Err(problem(
                    format!("socketcluster.{key}"),
                    "give either url or hostname/port/secure/path, not both",
                ));
            }
        }
        let url = Url::parse(text)
            .map_err(|err| problem("socketcluster.url", format!("not a valid URL: {err}")))?;
        if !matches!(url.scheme(), "ws" | "wss") {
            return Err(problem("socketcluster.url", "must start with ws:// or wss://"));
        }
        if url.host_str().is_none() {
            return Err(problem("socketcluster.url", "has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // The WebSocket client does not turn `user:password@` into an
            // Authorization header, and the URL is printed in logs.
            return Err(problem(
                "socketcluster.url",
                "must not carry user:password@; put credentials in auth_token, auth_token_file or headers",
            ));
        }
        if url.port() == Some(0) {
            return Err(problem("socketcluster.url", "port 0 cannot be connected to"));
        }
        warn_about_path(url.path());
        return Ok(url);
    }
    let hostname = sc.hostname.as_deref().ok_or_else(|| {
        problem("socketcluster", "set `url`, or `hostname` (with optional port, secure, path)")
    })?;
    let secure = sc.secure.unwrap_or(true);
    let scheme = if secure { "wss" } else { "ws" };
    let port = sc.port.unwrap_or(if secure { 443 } else { 80 });
    if port == 0 {
        return Err(problem("socketcluster.port", "port 0 cannot be connected to"));
    }
    if hostname.is_empty()
        || hostname.contains(['/', ':', '@', '?', '#']) && !is_ipv6_literal(hostname)
    {
        return Err(problem(
            "socketcluster.hostname",
            format!(
                "`{hostname}` is not a bare host name; give the scheme with `secure`, the port with `port` and the path with `path`"
            ),
        ));
    }
    let path = sc.path.as_deref().unwrap_or(DEFAULT_SC_PATH);
    if !path.starts_with('/') {
        return Err(problem("socketcluster.path", "must start with '/'"));
    }
    warn_about_path(path);
    let host = if hostname.contains(':') && !hostname.starts_with('[') {
        format!("[{hostname}]")
    } else {
        hostname.to_owned()
    };
    Url::parse(&format!("{scheme}://{host}:{port}{path}")).map_err(|err| {
        problem("socketcluster.hostname", format!("does not make a valid URL: {err}"))
    })
}

/// `::1` or `[::1]`: the one kind of host name that holds a `:`.
fn is_ipv6_literal(hostname: &str) -> bool {
    let bare = hostname.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(hostname);
    bare.parse::<std::net::Ipv6Addr>().is_ok()
}

fn warn_about_path(path: &str) {
    if !path.ends_with('/') {
        tracing::warn!(
            path,
            "the SocketCluster path does not end with '/'; stock servers answer such an upgrade with HTTP 400"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(source: &str) -> (String, usize, String) {
        match Config::from_toml(source, "test.toml") {
            Err(ConfigError::Invalid { key, line, message, .. }) => (key, line, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn cables_style_settings_make_a_wss_url_with_the_default_path() {
        let config = Config::from_toml("[socketcluster]\nhostname = \"socket.cables.gl\"\n", "t")
            .expect("valid");
        assert_eq!(config.socketcluster.url.as_str(), "wss://socket.cables.gl/socketcluster/");
        assert_eq!(config.socketcluster.reconnect.delay, Duration::from_secs(1));
        assert!(config.socketcluster.verify_tls);
    }

    #[test]
    fn credentials_in_the_socketcluster_url_are_refused_without_echoing_them() {
        let (key, line, message) =
            error_of("[socketcluster]\nurl = \"wss://bob:hunter2@h/socketcluster/\"\n");
        assert_eq!((key.as_str(), line), ("socketcluster.url", 2));
        assert!(message.contains("auth_token"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn a_hostname_with_a_scheme_or_path_and_port_zero_are_refused() {
        for (source, key) in [
            ("hostname = \"wss://socket.cables.gl\"", "socketcluster.hostname"),
            ("hostname = \"h/socketcluster/\"", "socketcluster.hostname"),
            ("hostname = \"\"", "socketcluster.hostname"),
            ("hostname = \"h\"\nport = 0", "socketcluster.port"),
            ("url = \"ws://h:0/socketcluster/\"", "socketcluster.url"),
        ] {
            let (found, line, _) = error_of(&format!("[socketcluster]\n{source}\n"));
            assert_eq!((found.as_str(), line >= 2), (key, true), "{source}");
        }
    }

    #[test]
    fn an_ipv6_hostname_is_put_in_brackets() {
        for hostname in ["::1", "[::1]"] {
            let source = format!(
                "[socketcluster]\nhostname = \"{hostname}\"\nport = 8000\nsecure = false\n"
            );
            let config = Config::from_toml(&source, "t").expect("valid");
            assert_eq!(config.socketcluster.url.as_str(), "ws://[::1]:8000/socketcluster/");
        }
    }

    #[test]
    fn a_qos_2_subscription_in_a_persistent_mqtt_session_is_refused() {
        let source = |clean: bool| {
            format!(
                "[socketcluster]\nurl = \"ws://h/socketcluster/\"\n[mqtt]\nurl = \"mqtt://h\"\nclean_session = {clean}\n\n[[route]]\nname = \"in\"\nfrom = {{ mqtt = \"a/#\", qos = 2 }}\nto = [{{ sc_channel = \"c\" }}]\n"
            )
        };
        let (key, line, message) = error_of(&source(false));
        assert_eq!((key.as_str(), line), ("route[0].from.qos", 9));
        assert!(message.contains("clean_session"), "{message}");
        assert!(Config::from_toml(&source(true), "t").is_ok());
    }

    #[test]
    fn empty_file_names_are_refused() {
        for key in ["auth_token_file", "ca_file"] {
            let (found, line, _) = error_of(&format!(
                "[socketcluster]\nurl = \"wss://h/socketcluster/\"\n{key} = \"\"\n"
            ));
            assert_eq!((found, line), (format!("socketcluster.{key}"), 3));
        }
    }

    #[test]
    fn http_max_lines_is_bounded() {
        let (key, line, _) = error_of(
            "[socketcluster]\nurl = \"ws://h/socketcluster/\"\n[http]\nmax_lines = 100000000\n",
        );
        assert_eq!((key.as_str(), line), ("http.max_lines", 4));
    }

    #[test]
    fn query_parameters_are_added_to_the_url() {
        let config = Config::from_toml(
            "[socketcluster]\nurl = \"ws://127.0.0.1:9/socketcluster/\"\nquery = { room = \"a b\" }\n",
            "t",
        )
        .expect("valid");
        assert_eq!(config.socketcluster.url.as_str(), "ws://127.0.0.1:9/socketcluster/?room=a+b");
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let (key, line, message) =
            error_of("[socketcluster]\nurl = \"ws://h/socketcluster/\"\nreconect_delay_ms = 5\n");
        assert_eq!((key.as_str(), line), ("socketcluster.reconect_delay_ms", 3));
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn a_wrong_type_is_named_with_its_line() {
        let (key, line, _) =
            error_of("[socketcluster]\nurl = \"ws://h/socketcluster/\"\n\nqueue_size = \"big\"\n");
        assert_eq!((key.as_str(), line), ("socketcluster.queue_size", 4));
    }

    #[test]
    fn validation_errors_name_key_and_line() {
        let (key, line, _) = error_of("[socketcluster]\nurl = \"http://h/\"\n");
        assert_eq!((key.as_str(), line), ("socketcluster.url", 2));
        let (key, line, _) =
            error_of("[socketcluster]\nurl = \"ws://h/socketcluster/\"\nprotocol = 3\n");
        assert_eq!((key.as_str(), line), ("socketcluster.protocol", 3));
        let (key, _, _) = error_of(
            "[socketcluster]\nurl = \"ws://h/socketcluster/\"\nauth_token = \"a\"\nauth_token_file = \"/f\"\n",
        );
        assert_eq!(key, "socketcluster.auth_token_file");
    }

    #[test]
    fn an_mqtt_source_with_a_nul_is_named_with_its_line() {
        let (key, line, message) = error_of(
            "[socketcluster]\nurl = \"ws://h/socketcluster/\"\n[mqtt]\nurl = \"mqtt://h\"\n\n[[route]]\nname = \"r\"\nfrom = { mqtt = \"a\\u0000b\" }\nto = [{ sc_channel = \"c\" }]\n",
        );
        assert_eq!((key.as_str(), line), ("route[0].from.mqtt", 8));
        assert!(message.contains("NUL"), "{message}");
    }

    #[test]
    fn control_topics_the_broker_would_refuse_are_named_with_their_line() {
        let base = "[socketcluster]\nurl = \"ws://h/socketcluster/\"\n[mqtt]\nurl = \"mqtt://h\"\n";
        for (control, key) in [
            ("mqtt = \"ctl\\u0000x\"", "control.mqtt"),
            ("mqtt = \"ctl/+\"", "control.mqtt"),
            ("mqtt = \"\"", "control.mqtt"),
            ("status_topic = \"st\\u0000x\"", "control.status_topic"),
            ("status_topic = \"st/#\"", "control.status_topic"),
        ] {
            let (found, line, _) = error_of(&format!("{base}[control]\n{control}\n"));
            assert_eq!((found.as_str(), line), (key, 6), "{control}");
        }
        let (found, line, _) =
            error_of(&format!("{}client_id = \"a+b\"\navailability_topic = \"avail\"\n", base));
        assert_eq!((found.as_str(), line), ("mqtt.client_id", 5));
        let (found, _, _) =
            error_of(&format!("{base}[control]\nmqtt = \"ctl\"\nstatus_topic = \"ctl/status\"\n"));
        assert_eq!(found, "control.status_topic");
        let (found, _, _) = error_of(&format!(
            "{base}availability_topic = \"ctl/up\"\n[control]\nmqtt = \"ctl\"\n"
        ));
        assert_eq!(found, "mqtt.availability_topic");
        let long = "x".repeat(70_000);
        let (found, line, _) = error_of(&format!("{base}[control]\nmqtt = \"{long}\"\n"));
        assert_eq!((found.as_str(), line), ("control.mqtt", 6));
    }

    #[test]
    fn every_queue_size_is_bounded_and_named_with_its_line() {
        let sc = "[socketcluster]\nurl = \"ws://h/socketcluster/\"\n";
        for (table, key, line) in [
            ("", "socketcluster.queue_size", 3),
            ("", "socketcluster.inbound_queue_size", 3),
            ("[osc]\n", "osc.queue_size", 4),
            ("[mqtt]\nurl = \"mqtt://h\"\n", "mqtt.queue_size", 5),
        ] {
            let field = key.rsplit('.').next().unwrap_or_default();
            for (size, why) in [("0", "at least 1"), ("9223372036854775807", "at most 1000000")] {
                let (named, at, message) = error_of(&format!("{sc}{table}{field} = {size}\n"));
                assert_eq!((named.as_str(), at), (key, line), "{message}");
                assert!(message.contains(why), "{key} = {size}: {message}");
            }
            let fine = format!("{sc}{table}{field} = 1000000\n");
            assert!(Config::from_toml(&fine, "t").is_ok(), "{fine}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let config = Config::from_toml(
            "[socketcluster]\nurl = \"ws://h/socketcluster/\"\nauth_token = \"sekrit-token\"\nheaders = { Authorization = \"Bearer sekrit-header\" }\n",
            "t",
        )
        .expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("sekrit"), "{shown}");
    }

    const LINKS: &str = r#"
[socketcluster]
url = "ws://h/socketcluster/"

[cables]
channel = "show"

[osc]
listen = ["127.0.0.1:9000"]
[osc.targets]
td = "127.0.0.1:7000"
lights = "127.0.0.1:7001"

[mqtt]
url = "mqtt://127.0.0.1:1883"
"#;

    fn route_error(route: &str) -> (String, usize, String) {
        error_of(&format!("{LINKS}\n[[route]]\n{route}"))
    }

    #[test]
    fn the_example_config_is_valid() {
        let config = Config::from_toml(include_str!("../../bridge.toml.example"), "example")
            .expect("bridge.toml.example is valid");
        assert!(!config.routes.is_empty());
    }

    #[test]
    fn a_valid_route_table_loads() {
        let config = Config::from_toml(
            &format!(
                "{LINKS}{}",
                r#"
[[route]]
name = "sensors"
from = { cables_object = "sensors/*" }
to = [{ osc = "/td/sensors/*", target = "td", numbers = "int32" }, { mqtt = "home/+", retain = true, qos = 1 }]

[[route]]
from = { mqtt = "home/#" }
to = [{ cables_trigger = "go", topic = "buttons" }]
"#
            ),
            "t",
        )
        .expect("valid");
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[1].name, "route 2");
    }

    #[test]
    fn a_shared_mqtt_source_subscribes_with_its_group_and_matches_without_it() {
        let config = Config::from_toml(
            &format!(
                "{LINKS}{}",
                r#"
[[route]]
from = { mqtt = "$share/bridges/sensors/+" }
to = [{ osc = "/td/{1}", target = "td" }]
"#
            ),
            "t",
        )
        .expect("valid");
        let pattern = &config.routes[0].source.pattern;
        assert_eq!(pattern.to_mqtt_filter(), "$share/bridges/sensors/+");
        assert_eq!(pattern.matches("sensors/temp"), Some(vec!["temp".to_owned()]));
        let (key, _, message) = route_error(
            "from = { mqtt = \"$SYS/broker/#\" }\nto = [{ osc = \"/x\", target = \"td\" }]",
        );
        assert_eq!(key, "route[0].from.mqtt");
        assert!(message.contains("broker's own"), "{message}");
        let (key, _, message) = error_of(&format!(
            "{LINKS}{}",
            r#"
[[route]]
from = { mqtt = "sensors/#" }
to = [{ osc = "/all", target = "td" }]

[[route]]
from = { mqtt = "$share/bridges/sensors/+" }
to = [{ osc = "/td/{1}", target = "td" }]
"#
        ));
        assert_eq!(key, "route[1].from.mqtt");
        assert!(message.contains("overlaps"), "{message}");
    }

    #[test]
    fn route_errors_name_the_route_key_and_line() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "from = { osc = \"/a\", mqtt = \"b\" }\nto = [{ osc = \"/x\", target = \"td\" }]",
                "route[0].from",
                "exactly one",
            ),
            (
                "from = { osc = \"/a/*\" }\nto = [{ mqtt = \"x/{2}\" }]",
                "route[0].to[0].mqtt",
                "capture 2",
            ),
            (
                "from = { osc = \"/a\" }\nto = [{ osc = \"/x\" }]",
                "route[0].to[0].target",
                "required",
            ),
            (
                "from = { osc = \"/a\" }\nto = [{ osc = \"/x\", target = \"nope\" }]",
                "route[0].to[0].target",
                "no OSC target",
            ),
            (
                "from = { osc = \"a\" }\nto = [{ mqtt = \"x\" }]",
                "route[0].from.osc",
                "starts with '/'",
            ),
            (
                "from = { osc = \"/a/#/b\" }\nto = [{ mqtt = \"x\" }]",
                "route[0].from.osc",
                "last segment",
            ),
            (
                "from = { sc_channel = \"a/*\" }\nto = [{ mqtt = \"x\" }]",
                "route[0].from.sc_channel",
                "wildcard",
            ),
            (
                "from = { cables_trigger = \"bang\" }\nto = [{ mqtt = \"x\", retain = true }]",
                "route[0].to[0].retain",
                "never retained",
            ),
            (
                "from = { osc = \"/a\" }\nto = [{ mqtt = \"x\", numbers = \"int32\" }]",
                "route[0].to[0].numbers",
                "osc destinations",
            ),
            (
                "from = { osc = \"/a\" }\nto = [{ osc = \"/x y\", target = \"td\" }]",
                "route[0].to[0].osc",
                "spaces",
            ),
            (
                "from = { osc = \"/a\" }\nto = [{ mqtt = \"x\", qos = 3 }]",
                "route[0].to[0].qos",
                "0, 1 or 2",
            ),
            (
                "from = { osc = \"/a\" }\nto = [{ mqtt = \"x\", payload = \"xml\" }]",
                "route[0].to[0].payload",
                "auto, json or text",
            ),
            (
                "from = { osc = \"/a\" }\nto = [{ osc = \"/x\", target = \"td\", types = \"fq\" }]",
                "route[0].to[0].types",
                "",
            ),
            ("from = { osc = \"/a\" }\nto = []", "route[0]", "at least one"),
            ("to = [{ mqtt = \"x\" }]", "route[0]", "needs `from`"),
            (
                "from = { cables_trigger = \"t\" }\nto = [{ mqtt = \"x\" }]\nmax_rate = 5",
                "route[0].max_rate",
                "never coalesced",
            ),
            (
                "from = { osc = \"/a\" }\nto = [{ mqtt = \"x\" }]\nmax_rate = 0",
                "route[0].max_rate",
                "per second",
            ),
            (
                "from = { osc = \"/a\" }\nto = [{ mqtt = \"x\" }]\ntrigger_on = \"any\"",
                "route[0].trigger_on",
                "cables_trigger destination",
            ),
            (
                "from = { osc = \"/a\" }\nto = [{ cables_trigger = \"x\" }]\ntrigger_on = \"rising\"",
                "route[0].trigger_on",
                "press",
            ),
        ];
        let route_line = LINKS.lines().count() + 2;
        for (route, key, words) in cases {
            let (got_key, line, message) = route_error(route);
            assert_eq!(&got_key, key, "for {route}: {message}");
            assert!(line >= route_line, "for {route}: line {line}");
            assert!(message.contains(words), "for {route}: {message}");
        }
    }

    #[test]
    fn a_destination_on_a_missing_link_is_refused() {
        let (key, _, message) = error_of(
            "[socketcluster]\nurl = \"ws://h/socketcluster/\"\n[[route]]\nfrom = { sc_channel = \"a\" }\nto = [{ mqtt = \"x\" }]\n",
        );
        assert_eq!(key, "route[0].to[0].mqtt");
        assert!(message.contains("[mqtt]"), "{message}");
    }

    #[test]
    fn unknown_keys_in_a_route_are_named() {
        let (key, _, message) =
            route_error("from = { osc = \"/a\" }\nto = [{ mqtt = \"x\", retian = true }]");
        assert_eq!(key, "route[0].to[0].retian");
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn duplicate_route_names_are_refused() {
        let (key, _, _) = error_of(&format!(
            "{LINKS}\n[[route]]\nname = \"a\"\nfrom = {{ osc = \"/a\" }}\nto = [{{ mqtt = \"x\" }}]\n[[route]]\nname = \"a\"\nfrom = {{ osc = \"/b\" }}\nto = [{{ mqtt = \"y\" }}]\n"
        ));
        assert_eq!(key, "route[1].name");
    }
}
