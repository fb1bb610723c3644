//! The `[mqtt]` table: [`RawMqtt`] mirrors what users write, [`validate`]
//! turns it into an [`MqttConfig`] with every default filled in, or names the
//! key that is wrong.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::Subscription;
use crate::config::Problem;
use crate::sc::config::Secret;

/// The MQTT port without TLS.
pub const DEFAULT_PORT: u16 = 1883;
/// The MQTT port with TLS.
pub const DEFAULT_TLS_PORT: u16 = 8883;
/// The largest packet MQTT can encode (a 4-byte remaining length).
pub const MQTT_MAX_PACKET_BYTES: usize = 268_435_455;

/// `[mqtt]` as written in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// `mqtt://host:port` or `mqtts://host:port`; exclusive with `host`.
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Read when the endpoint starts and again before every reconnect.
    pub password_file: Option<String>,
    /// `"3.1.1"` (default) or `"5"`.
    pub protocol: Option<String>,
    pub keepalive_secs: Option<u64>,
    pub clean_session: Option<bool>,
    pub tls: Option<bool>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub verify_tls: Option<bool>,
    pub reconnect_delay_ms: Option<u64>,
    pub reconnect_max_delay_ms: Option<u64>,
    pub queue_size: Option<usize>,
    pub max_packet_bytes: Option<usize>,
    /// Empty disables the availability topic and the last will.
    pub availability_topic: Option<String>,
}

/// Which MQTT version the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttProtocol {
    /// MQTT 3.1.1; own echoes are recognised by topic and payload.
    #[default]
    V311,
    /// MQTT 5; subscriptions carry No Local, so the broker drops own echoes.
    V5,
}

/// Where the password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    Inline(Secret),
    /// Re-read before every connection attempt, so a rotated secret is used
    /// on the next reconnect.
    File(PathBuf),
}

/// Validated MQTT settings. `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub protocol: MqttProtocol,
    /// Must differ between bridges on the same broker: the broker drops the
    /// older connection when a second one uses the same id.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Password>,
    pub keepalive: Duration,
    pub clean_session: bool,
    pub tls: bool,
    /// Off accepts any server certificate (logged as a warning).
    pub verify_tls: bool,
    /// Extra trust anchors (PEM) on top of the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM); used together with `client_key`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The first reconnect delay; it doubles per failed attempt.
    pub reconnect_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// Outgoing messages held while the broker is unreachable (oldest dropped
    /// first), and the capacity of the outbound channel.
    pub queue_size: usize,
    /// Incoming payloads above this are counted and dropped; outgoing
    /// packets above it are counted and not sent.
    pub max_packet_bytes: usize,
    /// Retained `online` / `offline`, backed by the last will; `None` = off.
    pub availability_topic: Option<String>,
}

impl MqttConfig {
    /// Settings with every default for a broker at `host:port` (no TLS).
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let client_id = default_client_id();
        MqttConfig {
            host: host.into(),
            port,
            protocol: MqttProtocol::V311,
            availability_topic: Some(default_availability_topic(&client_id)),
            client_id,
            username: None,
            password: None,
            keepalive: Duration::from_secs(30),
            clean_session: true,
            tls: false,
            verify_tls: true,
            ca_file: None,
            client_cert: None,
            client_key: None,
            reconnect_delay: Duration::from_millis(1000),
            reconnect_max_delay: Duration::from_millis(30_000),
            queue_size: 1000,
            max_packet_bytes: 256 * 1024,
        }
    }

    /// Changes the client id, and the availability topic with it when that
    /// is still the default one.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        let client_id = client_id.into();
        if self.availability_topic.as_deref()
            == Some(default_availability_topic(&self.client_id).as_str())
        {
            self.availability_topic = Some(default_availability_topic(&client_id));
        }
        self.client_id = client_id;
        self
    }
}

/// `scbridge-` + this machine's host name, so the id is stable across
/// restarts and differs between machines; plain `scbridge` when the host
/// name cannot be read.
pub fn default_client_id() -> String {
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    client_id_for_host(hostname.trim())
}

fn client_id_for_host(hostname: &str) -> String {
    // Keep the id a single, wildcard-free topic level, since the default
    // availability topic embeds it.
    let cleaned: String = hostname
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .collect();
    if cleaned.is_empty() { "scbridge".to_owned() } else { format!("scbridge-{cleaned}") }
}

/// `scbridge/<client_id>/availability`.
pub fn default_availability_topic(client_id: &str) -> String {
    format!("scbridge/{client_id}/availability")
}

/// Whether `topic` may be published to: not empty, no wildcards, no NUL,
/// short enough for MQTT's 16-bit length.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= usize::from(u16::MAX) && !topic.contains(['+', '#', '\0'])
}

/// Whether `filter` may be subscribed: `+` only as a whole level, `#` only
/// as the whole last level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > usize::from(u16::MAX) || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(index, level)| match *level {
        "+" => true,
        "#" => index == levels.len() - 1,
        other => !other.contains(['+', '#']),
    })
}

/// Whether every topic `specific` matches is also matched by `general`.
/// Shared subscriptions are never taken as covering or covered: their
/// messages are split between clients, so they are not interchangeable.
pub fn covers(general: &str, specific: &str) -> bool {
    if general.starts_with("$share/") || specific.starts_with("$share/") {
        return false;
    }
    let mut general_levels = general.split('/');
    let mut specific_levels = specific.split('/').peekable();
    let mut first = true;
    loop {
        match (general_levels.next(), specific_levels.peek().copied()) {
            // `#` also matches the parent level (`a/#` matches `a`); topics
            // starting with `$` are not matched by a leading wildcard.
            (Some("#"), level) => return !(first && level.is_some_and(|l| l.starts_with('$'))),
            (Some(_), None) => return false,
            (None, next) => return next.is_none(),
            (Some("+"), Some(level)) => {
                if level == "#" || (first && level.starts_with('$')) {
                    return false;
                }
            }
            (Some(literal), Some(level)) => {
                if literal != level {
                    return false;
                }
            }
        }
        specific_levels.next();
        first = false;
    }
}

/// Drops the filters another one covers, the coverer taking the highest
/// QoS of those it replaces. An MQTT 5 broker (Mosquitto among them) sends
/// one copy of a message per matching subscription; with no filter inside
/// another, a message matches one subscription, unless two overlap without
/// either covering the other (`a/+/c` and `a/b/+`).
pub fn without_covered(subscriptions: Vec<Subscription>) -> Vec<Subscription> {
    let mut kept: Vec<Subscription> = Vec::with_capacity(subscriptions.len());
    for candidate in subscriptions {
        if let Some(existing) = kept.iter_mut().find(|k| covers(&k.filter, &candidate.filter)) {
            existing.qos = existing.qos.max(candidate.qos);
            continue;
        }
        let mut qos = candidate.qos;
        kept.retain(|k| {
            let covered = covers(&candidate.filter, &k.filter);
            if covered {
                qos = qos.max(k.qos);
            }
            !covered
        });
        kept.push(Subscription { qos, ..candidate });
    }
    kept
}

fn problem(key: &str, message: impl Into<String>) -> Problem {
    Problem::new(format!("mqtt.{key}"), message)
}

/// Checks `[mqtt]` and fills in the defaults. Files named here are not read
/// yet; the endpoint reads them when it starts.
pub fn validate(raw: &RawMqtt) -> Result<MqttConfig, Problem> {
    let (host, url_port, url_tls) = match (&raw.url, &raw.host) {
        (Some(_), Some(_)) => return Err(problem("host", "give either mqtt.url or mqtt.host")),
        (None, None) => return Err(problem("url", "missing: give mqtt.url or mqtt.host")),
        (Some(url), None) => broker_url(url)?,
        (None, Some(host)) => {
            if host.trim().is_empty() || host.contains(['/', ' ']) {
                return Err(problem("host", format!("`{host}` is not a host name")));
            }
            (host.clone(), None, None)
        }
    };
    let tls = match (url_tls, raw.tls) {
        (Some(from_url), Some(flag)) if from_url != flag => {
            let scheme = if from_url { "mqtts://" } else { "mqtt://" };
            return Err(problem("tls", format!("contradicts the {scheme} url")));
        }
        (from_url, flag) => from_url.or(flag).unwrap_or(false),
    };
    if raw.url.is_some() && raw.port.is_some() {
        return Err(problem("port", "put the port in mqtt.url"));
    }
    let port = url_port.or(raw.port).unwrap_or(if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT });
    if port == 0 {
        return Err(problem("port", "must not be 0"));
    }

    let protocol = match raw.protocol.as_deref().map(str::trim) {
        None | Some("3.1.1") | Some("3") | Some("4") => MqttProtocol::V311,
        Some("5") | Some("5.0") => MqttProtocol::V5,
        Some(other) => {
            return Err(problem(
                "protocol",
                format!("must be \"3.1.1\" or \"5\", not \"{other}\""),
            ));
        }
    };

    let client_id = match &raw.client_id {
        Some(id) if id.is_empty() => return Err(problem("client_id", "must not be empty")),
        Some(id) if id.len() > usize::from(u16::MAX) => {
            return Err(problem("client_id", "is too long"));
        }
        Some(id) => id.clone(),
        None => default_client_id(),
    };

    let password = match (&raw.password, &raw.password_file) {
        (Some(_), Some(_)) => {
            return Err(problem(
                "password_file",
                "give either mqtt.password or mqtt.password_file",
            ));
        }
        (Some(password), None) => Some(Password::Inline(Secret(password.clone()))),
        (None, Some(path)) if path.is_empty() => {
            return Err(problem("password_file", "must not be empty"));
        }
        (None, Some(path)) => Some(Password::File(PathBuf::from(path))),
        (None, None) => None,
    };
    if password.is_some() && raw.username.as_deref().is_none_or(str::is_empty) {
        let key = if raw.password.is_some() { "password" } else { "password_file" };
        return Err(problem(key, "needs mqtt.username (MQTT 3.1.1 sends no password alone)"));
    }

    let keepalive_secs = raw.keepalive_secs.unwrap_or(30);
    let minimum = match protocol {
        // The MQTT 5 client refuses keepalives below 5 s, and 0 (off) with them.
        MqttProtocol::V5 => 5,
        MqttProtocol::V311 => 0,
    };
    if keepalive_secs < minimum || keepalive_secs > u64::from(u16::MAX) {
        let range = if minimum == 0 { "0 (off) to 65535" } else { "5 to 65535 with protocol 5" };
        return Err(problem("keepalive_secs", format!("must be {range}, not {keepalive_secs}")));
    }
    let clean_session = raw.clean_session.unwrap_or(true);

    let verify_tls = raw.verify_tls.unwrap_or(true);
    let file = |key: &str, value: &Option<String>| -> Result<Option<PathBuf>, Problem> {
        match value {
            Some(path) if path.is_empty() => Err(problem(key, "must not be empty")),
            Some(_) if !tls => Err(problem(key, "needs TLS (an mqtts:// url or mqtt.tls = true)")),
            Some(path) => Ok(Some(PathBuf::from(path))),
            None => Ok(None),
        }
    };
    let ca_file = file("ca_file", &raw.ca_file)?;
    let client_cert = file("client_cert", &raw.client_cert)?;
    let client_key = file("client_key", &raw.client_key)?;
    match (&client_cert, &client_key) {
        (Some(_), None) => return Err(problem("client_key", "missing: mqtt.client_cert needs it")),
        (None, Some(_)) => return Err(problem("client_cert", "missing: mqtt.client_key needs it")),
        _ => {}
    }
    if raw.verify_tls.is_some() && !tls {
        return Err(problem("verify_tls", "needs TLS (an mqtts:// url or mqtt.tls = true)"));
    }

    let delay_ms = raw.reconnect_delay_ms.unwrap_or(1000);
    if delay_ms == 0 {
        return Err(problem("reconnect_delay_ms", "must be at least 1"));
    }
    let max_delay_ms = raw.reconnect_max_delay_ms.unwrap_or(30_000.max(delay_ms));
    if max_delay_ms < delay_ms {
        return Err(problem(
            "reconnect_max_delay_ms",
            format!("must not be below mqtt.reconnect_delay_ms ({delay_ms})"),
        ));
    }

    let queue_size = raw.queue_size.unwrap_or(1000);
    if let Some(why) = crate::config::queue_size_problem(queue_size) {
        return Err(problem("queue_size", why));
    }
    let max_packet_bytes = raw.max_packet_bytes.unwrap_or(256 * 1024);
    if !(128..=MQTT_MAX_PACKET_BYTES).contains(&max_packet_bytes) {
        return Err(problem(
            "max_packet_bytes",
            format!("must be 128 to {MQTT_MAX_PACKET_BYTES}, not {max_packet_bytes}"),
        ));
    }

    let availability_topic = match &raw.availability_topic {
        Some(topic) if topic.is_empty() => None,
        Some(topic) if !valid_topic(topic) => {
            return Err(problem(
                "availability_topic",
                format!("`{topic}` is not a topic one can publish to (no + or #)"),
            ));
        }
        Some(topic) => Some(topic.clone()),
        None => {
            let topic = default_availability_topic(&client_id);
            if !valid_topic(&topic) {
                return Err(problem(
                    "client_id",
                    "contains + or #, so the default availability topic is invalid; \
                     set mqtt.availability_topic",
                ));
            }
            Some(topic)
        }
    };

    Ok(MqttConfig {
        host,
        port,
        protocol,
        client_id,
        username: raw.username.clone().filter(|u| !u.is_empty()),
        password,
        keepalive: Duration::from_secs(keepalive_secs),
        clean_session,
        tls,
        verify_tls,
        ca_file,
        client_cert,
        client_key,
        reconnect_delay: Duration::from_millis(delay_ms),
        reconnect_max_delay: Duration::from_millis(max_delay_ms),
        queue_size,
        max_packet_bytes,
        availability_topic,
    })
}

/// Host, port (if given) and TLS (from the scheme) of a broker url.
fn broker_url(text: &str) -> Result<(String, Option<u16>, Option<bool>), Problem> {
    let url = Url::parse(text).map_err(|e| problem("url", format!("`{text}`: {e}")))?;
    let tls = match url.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(problem(
                "url",
                format!("scheme `{other}` is not supported: use mqtt:// or mqtts://"),
            ));
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Keeps secrets out of a value that ends up in logs and link states.
        return Err(problem("url", "put credentials in mqtt.username and mqtt.password"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(problem("url", format!("`{text}`: only scheme, host and port are allowed")));
    }
    let host = match url.host() {
        Some(url::Host::Ipv6(addr)) => addr.to_string(),
        Some(host) => host.to_string(),
        None => return Err(problem("url", format!("`{text}` has no host"))),
    };
    Ok((host, url.port(), Some(tls)))
}

#[cfg(test)]
mod tests {
    use crate::mqtt::QoS;

    #[test]
    fn a_filter_covers_what_its_wildcards_match() {
        for (general, specific) in [
            ("#", "a/b"),
            ("a/#", "a"),
            ("a/#", "a/+/c"),
            ("a/+", "a/b"),
            ("+/+", "a/+"),
            ("a/b", "a/b"),
        ] {
            assert!(covers(general, specific), "{general} covers {specific}");
        }
        for (general, specific) in [
            ("a/+", "a/#"),
            ("a/+", "a/b/c"),
            ("a/b", "a/+"),
            ("a/+/c", "a/b/+"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("#", "$share/g/a"),
            ("$share/g/#", "a"),
        ] {
            assert!(!covers(general, specific), "{general} does not cover {specific}");
        }
    }

    #[test]
    fn covered_filters_are_dropped_and_the_coverer_takes_the_highest_qos() {
        let sub = |filter: &str, qos| Subscription { filter: filter.into(), qos };
        let reduced = without_covered(vec![
            sub("in/x", QoS::ExactlyOnce),
            sub("other", QoS::AtMostOnce),
            sub("in/#", QoS::AtMostOnce),
            sub("in/+", QoS::AtLeastOnce),
        ]);
        assert_eq!(reduced, [sub("other", QoS::AtMostOnce), sub("in/#", QoS::ExactlyOnce)]);
    }

    use super::*;

    fn raw(url: &str) -> RawMqtt {
        RawMqtt { url: Some(url.into()), ..RawMqtt::default() }
    }

    fn key_of(raw: &RawMqtt) -> String {
        validate(raw).expect_err("should be refused").key
    }

    #[test]
    fn a_plain_url_gets_every_default() {
        let config = validate(&raw("mqtt://broker.lan")).expect("valid");
        assert_eq!(config.host, "broker.lan");
        assert_eq!(config.port, 1883);
        assert!(!config.tls);
        assert_eq!(config.protocol, MqttProtocol::V311);
        assert_eq!(config.keepalive, Duration::from_secs(30));
        assert!(config.clean_session);
        assert_eq!(config.reconnect_delay, Duration::from_millis(1000));
        assert_eq!(config.reconnect_max_delay, Duration::from_millis(30_000));
        assert_eq!(config.queue_size, 1000);
        assert_eq!(config.max_packet_bytes, 262_144);
        assert!(config.client_id.starts_with("scbridge"));
        assert_eq!(
            config.availability_topic,
            Some(format!("scbridge/{}/availability", config.client_id))
        );
    }

    #[test]
    fn mqtts_turns_tls_on_and_changes_the_default_port() {
        let config = validate(&raw("mqtts://broker.example.com")).expect("valid");
        assert!(config.tls);
        assert_eq!(config.port, 8883);
        let config = validate(&raw("mqtts://broker.example.com:9999")).expect("valid");
        assert_eq!(config.port, 9999);
    }

    #[test]
    fn host_and_port_work_without_a_url() {
        let config = validate(&RawMqtt {
            host: Some("10.0.0.2".into()),
            port: Some(1884),
            tls: Some(true),
            ..RawMqtt::default()
        })
        .expect("valid");
        assert_eq!((config.host.as_str(), config.port, config.tls), ("10.0.0.2", 1884, true));
        let config =
            validate(&RawMqtt { host: Some("h".into()), tls: Some(true), ..RawMqtt::default() })
                .expect("valid");
        assert_eq!(config.port, 8883);
    }

    #[test]
    fn an_ipv6_url_keeps_its_address() {
        let config = validate(&raw("mqtt://[::1]:1900")).expect("valid");
        assert_eq!((config.host.as_str(), config.port), ("::1", 1900));
    }

    #[test]
    fn a_missing_or_doubled_broker_address_is_refused() {
        assert_eq!(key_of(&RawMqtt::default()), "mqtt.url");
        let both = RawMqtt { host: Some("h".into()), ..raw("mqtt://h") };
        assert_eq!(key_of(&both), "mqtt.host");
        let port_twice = RawMqtt { port: Some(1), ..raw("mqtt://h:2") };
        assert_eq!(key_of(&port_twice), "mqtt.port");
    }

    #[test]
    fn bad_urls_are_refused_with_the_url_key() {
        for url in [
            "http://h",
            "mqtt://user:secret@h",
            "mqtt://h/path",
            "mqtt://h?client_id=x",
            "not a url",
        ] {
            let problem = validate(&raw(url)).expect_err(url);
            assert_eq!(problem.key, "mqtt.url", "{url}");
            assert!(!problem.message.contains("secret"), "{}", problem.message);
        }
    }

    #[test]
    fn tls_false_contradicting_mqtts_is_refused() {
        assert_eq!(key_of(&RawMqtt { tls: Some(false), ..raw("mqtts://h") }), "mqtt.tls");
        assert_eq!(key_of(&RawMqtt { tls: Some(true), ..raw("mqtt://h") }), "mqtt.tls");
    }

    #[test]
    fn the_protocol_is_3_1_1_or_5() {
        let v5 = RawMqtt { protocol: Some("5".into()), ..raw("mqtt://h") };
        assert_eq!(validate(&v5).expect("valid").protocol, MqttProtocol::V5);
        let v311 = RawMqtt { protocol: Some("3.1.1".into()), ..raw("mqtt://h") };
        assert_eq!(validate(&v311).expect("valid").protocol, MqttProtocol::V311);
        let bad = RawMqtt { protocol: Some("3.1".into()), ..raw("mqtt://h") };
        let problem = validate(&bad).expect_err("3.1");
        assert_eq!(problem.key, "mqtt.protocol");
        assert!(problem.message.contains("\"3.1\""), "{}", problem.message);
    }

    #[test]
    fn keepalive_limits_depend_on_the_protocol() {
        let off = RawMqtt { keepalive_secs: Some(0), ..raw("mqtt://h") };
        assert_eq!(validate(&off).expect("valid").keepalive, Duration::ZERO);
        let v5_short =
            RawMqtt { keepalive_secs: Some(2), protocol: Some("5".into()), ..raw("mqtt://h") };
        assert_eq!(key_of(&v5_short), "mqtt.keepalive_secs");
        let too_long = RawMqtt { keepalive_secs: Some(70_000), ..raw("mqtt://h") };
        assert_eq!(key_of(&too_long), "mqtt.keepalive_secs");
    }

    #[test]
    fn a_password_needs_a_username_and_only_one_source() {
        let alone = RawMqtt { password: Some("pw".into()), ..raw("mqtt://h") };
        assert_eq!(key_of(&alone), "mqtt.password");
        let both = RawMqtt {
            username: Some("u".into()),
            password: Some("pw".into()),
            password_file: Some("/run/pw".into()),
            ..raw("mqtt://h")
        };
        assert_eq!(key_of(&both), "mqtt.password_file");
        let file = RawMqtt {
            username: Some("u".into()),
            password_file: Some("/run/pw".into()),
            ..raw("mqtt://h")
        };
        assert_eq!(
            validate(&file).expect("valid").password,
            Some(Password::File(PathBuf::from("/run/pw")))
        );
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let config = validate(&RawMqtt {
            username: Some("bridge".into()),
            password: Some("hunter2".into()),
            ..raw("mqtt://h")
        })
        .expect("valid");
        let shown = format!("{config:?}");
        assert!(shown.contains("bridge"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn tls_files_need_tls_and_come_in_pairs() {
        assert_eq!(
            key_of(&RawMqtt { ca_file: Some("/ca.pem".into()), ..raw("mqtt://h") }),
            "mqtt.ca_file"
        );
        assert_eq!(
            key_of(&RawMqtt { verify_tls: Some(false), ..raw("mqtt://h") }),
            "mqtt.verify_tls"
        );
        let cert_only = RawMqtt { client_cert: Some("/c.pem".into()), ..raw("mqtts://h") };
        assert_eq!(key_of(&cert_only), "mqtt.client_key");
        let key_only = RawMqtt { client_key: Some("/k.pem".into()), ..raw("mqtts://h") };
        assert_eq!(key_of(&key_only), "mqtt.client_cert");
        let config = validate(&RawMqtt {
            ca_file: Some("/ca.pem".into()),
            client_cert: Some("/c.pem".into()),
            client_key: Some("/k.pem".into()),
            verify_tls: Some(false),
            ..raw("mqtts://h")
        })
        .expect("valid");
        assert_eq!(config.ca_file, Some(PathBuf::from("/ca.pem")));
        assert!(!config.verify_tls);
    }

    #[test]
    fn reconnect_queue_and_packet_limits_are_checked() {
        assert_eq!(
            key_of(&RawMqtt { reconnect_delay_ms: Some(0), ..raw("mqtt://h") }),
            "mqtt.reconnect_delay_ms"
        );
        let inverted = RawMqtt {
            reconnect_delay_ms: Some(5000),
            reconnect_max_delay_ms: Some(1000),
            ..raw("mqtt://h")
        };
        assert_eq!(key_of(&inverted), "mqtt.reconnect_max_delay_ms");
        let slow_start = RawMqtt { reconnect_delay_ms: Some(60_000), ..raw("mqtt://h") };
        assert_eq!(
            validate(&slow_start).expect("valid").reconnect_max_delay,
            Duration::from_secs(60)
        );
        assert_eq!(key_of(&RawMqtt { queue_size: Some(0), ..raw("mqtt://h") }), "mqtt.queue_size");
        assert_eq!(
            key_of(&RawMqtt { max_packet_bytes: Some(10), ..raw("mqtt://h") }),
            "mqtt.max_packet_bytes"
        );
    }

    #[test]
    fn the_availability_topic_follows_the_client_id_and_can_be_switched_off() {
        let named = RawMqtt { client_id: Some("stage-left".into()), ..raw("mqtt://h") };
        let config = validate(&named).expect("valid");
        assert_eq!(config.client_id, "stage-left");
        assert_eq!(config.availability_topic.as_deref(), Some("scbridge/stage-left/availability"));
        let off = RawMqtt { availability_topic: Some(String::new()), ..raw("mqtt://h") };
        assert_eq!(validate(&off).expect("valid").availability_topic, None);
        let wildcard = RawMqtt { availability_topic: Some("a/+/b".into()), ..raw("mqtt://h") };
        assert_eq!(key_of(&wildcard), "mqtt.availability_topic");
        let bad_id = RawMqtt { client_id: Some("a#".into()), ..raw("mqtt://h") };
        assert_eq!(key_of(&bad_id), "mqtt.client_id");
        assert_eq!(
            key_of(&RawMqtt { client_id: Some(String::new()), ..raw("mqtt://h") }),
            "mqtt.client_id"
        );
    }

    #[test]
    fn the_default_client_id_is_a_clean_single_level() {
        assert_eq!(client_id_for_host("studio-pc"), "scbridge-studio-pc");
        assert_eq!(client_id_for_host("we ird/#name"), "scbridge-we-ird--name");
        assert_eq!(client_id_for_host(""), "scbridge");
    }

    #[test]
    fn topics_and_filters_are_checked_like_the_broker_does() {
        assert!(valid_topic("a/b/c"));
        assert!(valid_topic("/leading/slash"));
        assert!(!valid_topic(""));
        assert!(!valid_topic("a/+/c"));
        assert!(!valid_topic("a/#"));
        assert!(valid_filter("a/+/c"));
        assert!(valid_filter("#"));
        assert!(valid_filter("a/b/#"));
        assert!(valid_filter("+"));
        assert!(!valid_filter("a/#/c"));
        assert!(!valid_filter("a/b+"));
        assert!(!valid_filter("a/#b"));
        assert!(!valid_filter(""));
    }

    #[test]
    fn the_config_constructor_matches_the_validated_defaults() {
        let built = MqttConfig::new("broker.lan", 1883).with_client_id("x");
        let validated =
            validate(&RawMqtt { client_id: Some("x".into()), ..raw("mqtt://broker.lan") })
                .expect("valid");
        assert_eq!(built, validated);
    }
}
