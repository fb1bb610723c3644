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
//! - [`tls`]: rustls client settings shared by the links.
//! - [`app`]: the daemon's top level (what `scbridge run` does).

pub mod app;
pub mod bridge;
pub mod cables;
pub mod config;
pub mod message;
pub mod mqtt;
pub mod osc;
pub mod route;
pub mod sc;
pub mod stats;
pub mod tls;
