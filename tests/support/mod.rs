//! Test support shared by the integration tests.
//!
//! Each test crate declares `mod support;` and uses what it needs, so not
//! every item is used by every crate (hence the `dead_code` allowance).
//!
//! - [`sc_peer`]: the real SocketCluster server and client peers of
//!   `tests/peers` (Node), started on ports chosen at run time, with waits on
//!   the lines they print.
//! - [`daemon`]: the real `scbridge` binary as a process, with a
//!   NOTIFY_SOCKET, signals and its captured log.
//! - [`mosquitto`]: a real Mosquitto broker on a free loopback port, and
//!   small MQTT clients to publish and assert with.
//! - [`udp`]: OSC receivers and senders on real UDP sockets.
//! - [`faults`]: misbehaving peers and a collecting OSC receiver, for faults.

#![allow(dead_code)]

pub mod daemon;
pub mod faults;
pub mod mosquitto;
pub mod sc_peer;
pub mod udp;

/// Sends a signal to a process; false when it could not be sent (the
/// process is gone). Through kill(2) itself: the `kill` program comes from
/// a package (procps) that minimal systems leave out.
pub fn send_signal(pid: u32, signal: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    unsafe { libc::kill(pid, signal) == 0 }
}
