//! scbridge: one SocketCluster client connection bridged to OSC and MQTT.
//!
//! # Layout
//! - [`sc`]: the SocketCluster client (codec, session, connection, handle).
//! - [`osc`]: OSC over UDP: listeners, targets, JSON ⇄ OSC mapping.
//! - [`mqtt`]: the MQTT client: reconnects, queue, availability.
//! - [`route`]: the pure routing table (patterns, templates, matching).
//! - [`cables`]: the cables.gl envelope and channels on SocketCluster.
//! - [`bridge`]: wires endpoints and router with bounded channels.
//! - [`message`]: the neutral [`message::Message`] every endpoint speaks.
//! - [`config`]: the TOML config, raw → validated, errors with key and line.
//! - [`stats`]: named drop and traffic counters.
//! - [`http`]: the optional loopback listener for `/metrics`, `/health` and `/recent`.
//! - [`tls`]: rustls client settings shared by the links.
//! - [`logging`]: log lines on stderr, with syslog priorities for the journal.
//! - [`explain`]: `check` and `explain`: the resolved config and dry runs.
//! - [`service`]: the daemon: signals, systemd notify and watchdog, reload.
//! - [`observe`]: what `/metrics`, `/health` and `/recent` show.

pub mod bridge;
pub mod cables;
pub mod config;
pub mod explain;
pub mod http;
pub mod logging;
pub mod message;
pub mod mqtt;
pub mod observe;
pub mod osc;
pub mod route;
pub mod sc;
pub mod service;
pub mod stats;
pub mod tls;
