//! The `[osc]` table: its serde mirror ([`RawOsc`]) and the validated
//! [`OscConfig`] the endpoint starts from. Host names are resolved here,
//! once, when the config is loaded.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use crate::config::Problem;

/// The receive buffer asked for each listen socket: a few frames of a busy
/// TouchDesigner patch.
pub const DEFAULT_RECEIVE_BUFFER: usize = 4 << 20;

/// The largest UDP payload over IPv4, and the default packet limit.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// `[osc]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOsc {
    /// `"127.0.0.1:9000"` each; no listener unless given.
    pub listen: Option<Vec<String>>,
    /// Named destinations routes send to.
    #[serde(default)]
    pub targets: BTreeMap<String, RawOscTarget>,
    pub max_packet_bytes: Option<usize>,
    pub queue_size: Option<usize>,
    /// Senders allowed to reach the listeners: `"192.168.1.0/24"`, `"10.0.0.5"`.
    pub allow_from: Option<Vec<String>>,
    pub receive_buffer_bytes: Option<usize>,
}

/// One `[osc.targets]` entry: `td = "127.0.0.1:7000"` or
/// `td = { address = "192.168.1.255:7000", broadcast = true }`.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum RawOscTarget {
    Address(String),
    Full {
        address: String,
        #[serde(default)]
        broadcast: bool,
    },
}

/// Validated OSC settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OscConfig {
    /// UDP sockets that receive OSC.
    pub listen: Vec<SocketAddr>,
    /// Destinations; routes name them, the endpoint indexes them.
    pub targets: Vec<OscTarget>,
    /// Received datagrams longer than this are counted and dropped.
    pub max_packet_bytes: usize,
    /// Outgoing messages held for the sender task before new ones are dropped.
    pub queue_size: usize,
    /// When not empty, only these senders are heard; others are counted.
    pub allow_from: Vec<Network>,
    /// SO_RCVBUF asked for each listen socket (the kernel may grant less).
    pub receive_buffer_bytes: usize,
}

/// An address range: an IP and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address (a single host).
    pub fn parse(text: &str) -> Result<Network, String> {
        let (ip, prefix) = text.split_once('/').unwrap_or((text, ""));
        let addr: IpAddr =
            ip.trim().parse().map_err(|_| format!("{text:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {max}"))?
        };
        Ok(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
                IpAddr::V6(v6) => u128::from(v6),
            }
        };
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
        bits(self.addr) & mask == bits(ip) & mask
    }
}

impl Default for OscConfig {
    fn default() -> Self {
        OscConfig {
            listen: Vec::new(),
            targets: Vec::new(),
            max_packet_bytes: MAX_UDP_PAYLOAD,
            allow_from: Vec::new(),
            receive_buffer_bytes: DEFAULT_RECEIVE_BUFFER,
            queue_size: 4096,
        }
    }
}

/// One destination of OSC messages. Two targets given by the same host
/// name are equal whatever addresses their lookups found: a reload must not
/// restart the endpoint because DNS answered differently.
#[derive(Debug, Clone, Eq)]
pub struct OscTarget {
    /// The key under `[osc.targets]`.
    pub name: String,
    /// Always IPv4: the send socket is bound to `0.0.0.0`. The unspecified
    /// address (`0.0.0.0`) while a host name has not been found yet.
    pub address: SocketAddr,
    /// The address is a broadcast address, and the send socket may use it.
    pub broadcast: bool,
    /// The `host:port` as written, when it names a host rather than an IP
    /// address: the endpoint looks it up again while it runs, so that a
    /// machine that is off at boot, or moves, is found.
    pub host: Option<String>,
}

impl PartialEq for OscTarget {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.broadcast == other.broadcast
            && self.host == other.host
            && (self.host.is_some() || self.address == other.address)
    }
}

impl OscTarget {
    /// A target at a fixed IP address.
    pub fn new(name: impl Into<String>, address: SocketAddr) -> Self {
        OscTarget { name: name.into(), address, broadcast: false, host: None }
    }

    /// False while its host name has not been found.
    pub fn is_resolved(&self) -> bool {
        !self.address.ip().is_unspecified()
    }

    /// Keeps `earlier`'s address when this target names the same host but
    /// its own lookup found nothing (the resolver down during a reload).
    pub fn keep_address_of(&mut self, earlier: &OscTarget) {
        if !self.is_resolved() && earlier.is_resolved() && self.host == earlier.host {
            self.address = earlier.address;
        }
    }

    /// Where it sends, for people: `127.0.0.1:7000`, `td.local:7000
    /// (10.0.0.5:7000)` or `td.local:7000 (not found yet)`.
    pub fn describe(&self) -> String {
        match (&self.host, self.is_resolved()) {
            (None, _) => self.address.to_string(),
            (Some(host), true) => format!("{host} ({})", self.address),
            (Some(host), false) => format!("{host} (not found yet)"),
        }
    }
}

impl OscConfig {
    /// The index of the target named `name`, as [`super::OscOut::target`]
    /// wants it.
    pub fn target_index(&self, name: &str) -> Option<usize> {
        self.targets.iter().position(|target| target.name == name)
    }
}

/// Checks `[osc]` and resolves its addresses; errors name keys such as
/// `osc.listen[0]` or `osc.targets.td`.
pub fn validate(raw: &RawOsc) -> Result<OscConfig, Problem> {
    let mut config = OscConfig::default();
    for (index, text) in raw.listen.iter().flatten().enumerate() {
        let key = format!("osc.listen[{index}]");
        let address = resolve(text).map_err(|message| Problem::new(&key, message))?;
        if address.ip().is_multicast() {
            return Err(Problem::new(
                key,
                "listening on a multicast group is not supported; \
                 listen on 0.0.0.0 with the same port",
            ));
        }
        if config.listen.contains(&address) {
            return Err(Problem::new(key, format!("{address} is listed twice")));
        }
        config.listen.push(address);
    }
    for (name, target) in &raw.targets {
        let (key, text, broadcast) = match target {
            RawOscTarget::Address(text) => (format!("osc.targets.{name}"), text, false),
            RawOscTarget::Full { address, broadcast } => {
                (format!("osc.targets.{name}.address"), address, *broadcast)
            }
        };
        if name.is_empty() {
            return Err(Problem::new("osc.targets", "a target name is empty"));
        }
        let (address, host) = target_address(name, text).map_err(|m| Problem::new(&key, m))?;
        if !broadcast && looks_like_broadcast(address.ip()) {
            return Err(Problem::new(
                key,
                format!(
                    "{} looks like a broadcast address; sending to one must be switched on: \
                     {name} = {{ address = \"{text}\", broadcast = true }}",
                    address.ip()
                ),
            ));
        }
        config.targets.push(OscTarget { name: name.clone(), address, broadcast, host });
    }
    if let Some(bytes) = raw.max_packet_bytes {
        if !(16..=MAX_UDP_PAYLOAD).contains(&bytes) {
            return Err(Problem::new(
                "osc.max_packet_bytes",
                format!("must be between 16 and {MAX_UDP_PAYLOAD} (the largest UDP payload)"),
            ));
        }
        config.max_packet_bytes = bytes;
    }
    for (index, text) in raw.allow_from.iter().flatten().enumerate() {
        let network = Network::parse(text)
            .map_err(|message| Problem::new(format!("osc.allow_from[{index}]"), message))?;
        config.allow_from.push(network);
    }
    if let Some(bytes) = raw.receive_buffer_bytes {
        config.receive_buffer_bytes = bytes;
    }
    if let Some(size) = raw.queue_size {
        if let Some(why) = crate::config::queue_size_problem(size) {
            return Err(Problem::new("osc.queue_size", why));
        }
        config.queue_size = size;
    }
    Ok(config)
}

/// Resolves `host:port`, preferring IPv4 (a `localhost` that also means
/// `::1` should not pick the address family the other side may not use).
fn resolve(text: &str) -> Result<SocketAddr, String> {
    // A bare port listens on loopback: nothing is opened to the network
    // unless an address says so.
    if let Ok(port) = text.trim().parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    let candidates: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|err| format!("{text:?} is not a usable host:port address ({err})"))?
        .collect();
    candidates
        .iter()
        .find(|address| address.is_ipv4())
        .or_else(|| candidates.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// A target's address: an IPv4 address as written, or a host name looked
/// up now. A name that cannot be looked up yet (the machine is off, the
/// network not up at boot) is not an error: the endpoint keeps trying, and
/// the target's address stays unspecified until then.
fn target_address(name: &str, text: &str) -> Result<(SocketAddr, Option<String>), String> {
    if let Ok(address) = text.trim().parse::<SocketAddr>() {
        return check_target(text, address).map(|address| (address, None));
    }
    let Some((host, port)) = text.trim().rsplit_once(':') else {
        return Err(format!("{text:?} is not a host:port address"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{text:?} is not a host:port address (the port is not a number)"))?;
    if host.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    if host.contains([':', '/', ' ', '[', ']']) {
        return Err(format!(
            "{text:?} is not an IPv4 address or host name with a port (OSC targets are IPv4)"
        ));
    }
    if port == 0 {
        return Err(format!("{text:?} has port 0, which nothing can be sent to"));
    }
    let unresolved = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let address = match lookup_ipv4(text) {
        Ok(address) => check_target(text, address)?,
        Err(why) => {
            tracing::warn!(osc_target = name, %why, "OSC target not found yet; messages to it are dropped (counted) until it is");
            unresolved
        }
    };
    Ok((address, Some(text.trim().to_owned())))
}

/// Looks up `host:port` and takes its first IPv4 address (the send socket is
/// IPv4). Blocks on the system resolver.
pub(crate) fn lookup_ipv4(text: &str) -> Result<SocketAddr, String> {
    let mut candidates =
        text.to_socket_addrs().map_err(|err| format!("cannot look up {text:?}: {err}"))?;
    candidates.find(SocketAddr::is_ipv4).ok_or_else(|| {
        format!("{text:?} has no IPv4 address; OSC targets are sent from an IPv4 socket")
    })
}

fn check_target(text: &str, address: SocketAddr) -> Result<SocketAddr, String> {
    if !address.is_ipv4() {
        return Err(format!(
            "{text:?} is an IPv6 address; OSC targets are sent from an IPv4 socket, \
             give an IPv4 address"
        ));
    }
    if address.port() == 0 {
        return Err(format!("{text:?} has port 0, which nothing can be sent to"));
    }
    if address.ip().is_unspecified() {
        return Err(format!("{text:?} is not a destination; use 127.0.0.1 for this machine"));
    }
    Ok(address)
}

/// The limited broadcast address, or a last octet of 255: the broadcast
/// address of every subnet of /24 or wider. A host that really ends in .255
/// (inside a wider subnet) can be reached with `broadcast = true`, which only
/// lets the socket send to broadcast addresses.
fn looks_like_broadcast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == Ipv4Addr::BROADCAST || v4.octets()[3] == 255,
        IpAddr::V6(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawOsc {
        toml::from_str(toml_text).expect("valid TOML for RawOsc")
    }

    fn problem(toml_text: &str) -> Problem {
        validate(&raw(toml_text)).expect_err("should be refused")
    }

    #[test]
    fn an_empty_table_gives_the_defaults() {
        let config = validate(&raw("")).expect("valid");
        assert_eq!(config, OscConfig::default());
        assert_eq!((config.max_packet_bytes, config.queue_size), (65_507, 4096));
    }

    #[test]
    fn listeners_and_both_target_forms_are_read() {
        let config = validate(&raw(r#"
            listen = ["127.0.0.1:9000", "0.0.0.0:9001"]
            max_packet_bytes = 1500
            queue_size = 10
            [targets]
            td = "127.0.0.1:7000"
            lan = { address = "192.168.1.255:7001", broadcast = true }
            "#))
        .expect("valid");
        assert_eq!(
            config.listen,
            vec!["127.0.0.1:9000".parse().unwrap(), "0.0.0.0:9001".parse().unwrap()]
        );
        assert_eq!(
            config.targets,
            vec![
                OscTarget {
                    broadcast: true,
                    ..OscTarget::new("lan", "192.168.1.255:7001".parse().unwrap())
                },
                OscTarget::new("td", "127.0.0.1:7000".parse().unwrap()),
            ]
        );
        assert_eq!(config.target_index("td"), Some(1));
        assert_eq!((config.max_packet_bytes, config.queue_size), (1500, 10));
    }

    #[test]
    fn localhost_resolves_to_ipv4() {
        let config = validate(&raw("[targets]\ntd = \"localhost:7000\"\n")).expect("valid");
        assert_eq!(config.targets[0].address, "127.0.0.1:7000".parse().unwrap());
    }

    #[test]
    fn a_multicast_target_is_allowed() {
        let config = validate(&raw("[targets]\ngroup = \"239.1.2.3:7000\"\n")).expect("valid");
        assert!(config.targets[0].address.ip().is_multicast());
    }

    #[test]
    fn a_bad_listen_address_names_its_index() {
        let p = problem(r#"listen = ["127.0.0.1:9000", "nonsense"]"#);
        assert_eq!(p.key, "osc.listen[1]");
        assert!(p.message.contains("\"nonsense\""), "{}", p.message);
    }

    #[test]
    fn a_listen_address_given_twice_is_refused() {
        assert_eq!(
            problem(r#"listen = ["127.0.0.1:9000", "127.0.0.1:9000"]"#).key,
            "osc.listen[1]"
        );
    }

    #[test]
    fn a_multicast_listen_address_is_refused() {
        assert_eq!(problem(r#"listen = ["239.1.2.3:9000"]"#).key, "osc.listen[0]");
    }

    #[test]
    fn a_host_name_is_looked_up_and_kept_for_the_endpoint() {
        let config = validate(&raw("[targets]\ntd = \"localhost:7000\"\n")).expect("valid");
        assert_eq!(config.targets[0].host.as_deref(), Some("localhost:7000"));
        assert!(config.targets[0].is_resolved());
    }

    #[test]
    fn a_host_name_not_found_yet_is_accepted_unresolved() {
        let config =
            validate(&raw("[targets]\ntd = \"no-such-host.invalid:7000\"\n")).expect("valid");
        let td = &config.targets[0];
        assert!(!td.is_resolved());
        assert_eq!(td.address.port(), 7000);
        assert_eq!(td.host.as_deref(), Some("no-such-host.invalid:7000"));
    }

    #[test]
    fn targets_by_the_same_host_name_are_equal_whatever_their_lookup_found() {
        let named = |address: &str| OscTarget {
            host: Some("td.local:7000".into()),
            ..OscTarget::new("td", address.parse().expect("an address"))
        };
        assert_eq!(named("10.0.0.5:7000"), named("10.0.0.6:7000"));
        assert_ne!(
            OscTarget::new("td", "10.0.0.5:7000".parse().expect("an address")),
            OscTarget::new("td", "10.0.0.6:7000".parse().expect("an address"))
        );
        let mut not_found = named("0.0.0.0:7000");
        not_found.keep_address_of(&named("10.0.0.5:7000"));
        assert_eq!(not_found.address, "10.0.0.5:7000".parse().expect("an address"));
    }

    #[test]
    fn a_bad_target_address_names_the_target() {
        assert_eq!(problem("[targets]\ntd = \"127.0.0.1\"\n").key, "osc.targets.td");
        assert_eq!(
            problem("[targets]\ntd = { address = \"nohost:port\" }\n").key,
            "osc.targets.td.address"
        );
        assert_eq!(problem("[targets]\ntd = \"127.0.0.1:0\"\n").key, "osc.targets.td");
        assert_eq!(problem("[targets]\ntd = \"0.0.0.0:7000\"\n").key, "osc.targets.td");
        assert_eq!(problem("[targets]\ntd = \"[::1]:7000\"\n").key, "osc.targets.td");
        assert_eq!(problem("[targets]\ntd = \"td.local\"\n").key, "osc.targets.td");
        assert_eq!(problem("[targets]\ntd = \"td.local:0\"\n").key, "osc.targets.td");
        assert_eq!(problem("[targets]\ntd = \":7000\"\n").key, "osc.targets.td");
        assert_eq!(problem("[targets]\ntd = \"::1:7000\"\n").key, "osc.targets.td");
        assert_eq!(problem("[targets]\ntd = \"http://td:7000\"\n").key, "osc.targets.td");
    }

    #[test]
    fn a_broadcast_address_needs_the_switch() {
        let p = problem("[targets]\nlan = \"192.168.1.255:7000\"\n");
        assert_eq!(p.key, "osc.targets.lan");
        assert!(p.message.contains("broadcast = true"), "{}", p.message);
        let p = problem("[targets]\nall = { address = \"255.255.255.255:7000\" }\n");
        assert_eq!(p.key, "osc.targets.all.address");
    }

    #[test]
    fn limits_must_make_sense() {
        assert_eq!(problem("max_packet_bytes = 8").key, "osc.max_packet_bytes");
        assert_eq!(problem("max_packet_bytes = 70000").key, "osc.max_packet_bytes");
        assert_eq!(problem("queue_size = 0").key, "osc.queue_size");
    }

    #[test]
    fn unknown_keys_are_refused_by_the_mirror() {
        assert!(toml::from_str::<RawOsc>("listn = []").is_err());
        assert!(toml::from_str::<RawOsc>("[targets]\ntd = { adress = \"h:1\" }\n").is_err());
        assert!(
            toml::from_str::<RawOsc>("[targets]\ntd = { address = \"h:1\", broadcst = true }\n")
                .is_err()
        );
    }
}

#[cfg(test)]
mod allow_list_tests {
    use super::*;

    #[test]
    fn networks_match_their_hosts_only() {
        let lan = Network::parse("192.168.1.0/24").expect("valid");
        assert!(lan.contains("192.168.1.77".parse().expect("ip")));
        assert!(!lan.contains("192.168.2.1".parse().expect("ip")));
        assert!(lan.contains("::ffff:192.168.1.5".parse().expect("ip")));
        let host = Network::parse("10.0.0.5").expect("valid");
        assert!(host.contains("10.0.0.5".parse().expect("ip")));
        assert!(!host.contains("10.0.0.6".parse().expect("ip")));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nonsense").is_err());
        assert!(
            Network::parse("0.0.0.0/0").expect("valid").contains("8.8.8.8".parse().expect("ip"))
        );
    }

    #[test]
    fn a_bare_port_listens_on_loopback() {
        let raw = RawOsc { listen: Some(vec!["9000".into()]), ..RawOsc::default() };
        assert_eq!(
            validate(&raw).expect("valid").listen,
            vec![SocketAddr::from(([127, 0, 0, 1], 9000))]
        );
    }
}
