//! scbridge: one SocketCluster client connection bridged to OSC and MQTT.
//!
//! # Layout
//! - [`sc`]: the SocketCluster client (codec, session, connection, handle).
//! - [`config`]: the TOML config, raw → validated, errors with key and line.
//! - [`app`]: the daemon's top level (what `scbridge run` does).

pub mod app;
pub mod config;
pub mod sc;
