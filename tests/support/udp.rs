//! Real UDP sockets that play TouchDesigner: an OSC receiver to assert on
//! what the bridge sends, and an OSC sender to feed it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use rosc::{OscMessage, OscPacket, OscType};
use tokio::net::UdpSocket;

/// An OSC receiver on a free loopback port.
pub struct OscReceiver {
    socket: UdpSocket,
    /// The rest of a bundle whose first message was handed out.
    pending: Mutex<VecDeque<OscMessage>>,
}

impl OscReceiver {
    pub async fn bind() -> OscReceiver {
        OscReceiver {
            socket: UdpSocket::bind("127.0.0.1:0").await.expect("bind a UDP receiver"),
            pending: Mutex::new(VecDeque::new()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("local address")
    }

    /// The next OSC message (bundles are flattened), or a panic after `limit`.
    pub async fn next(&self, limit: Duration) -> OscMessage {
        self.try_next(limit).await.unwrap_or_else(|| panic!("no OSC message within {limit:?}"))
    }

    /// The next OSC message (every message of a bundle, in order), or
    /// `None` after `limit`.
    pub async fn try_next(&self, limit: Duration) -> Option<OscMessage> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(message) = self.pending.lock().expect("not poisoned").pop_front() {
                return Some(message);
            }
            let mut buffer = vec![0u8; 65_536];
            let received = self.socket.recv_from(&mut buffer);
            let (len, _) = tokio::time::timeout_at(deadline, received).await.ok()?.ok()?;
            let (_, packet) =
                rosc::decoder::decode_udp(&buffer[..len]).expect("valid OSC from the bridge");
            flatten(packet, &mut self.pending.lock().expect("not poisoned"));
        }
    }
}

fn flatten(packet: OscPacket, into: &mut VecDeque<OscMessage>) {
    match packet {
        OscPacket::Message(message) => into.push_back(message),
        OscPacket::Bundle(bundle) => bundle.content.into_iter().for_each(|p| flatten(p, into)),
    }
}

/// Sends one OSC message from a fresh socket.
pub async fn send_osc(to: SocketAddr, address: &str, args: Vec<OscType>) {
    send_packet(to, &OscPacket::Message(OscMessage { addr: address.to_owned(), args })).await;
}

/// Sends any OSC packet from a fresh socket.
pub async fn send_packet(to: SocketAddr, packet: &OscPacket) {
    let bytes = rosc::encoder::encode(packet).expect("encodable OSC");
    send_bytes(to, &bytes).await;
}

/// Sends raw bytes (for garbage) from a fresh socket.
pub async fn send_bytes(to: SocketAddr, bytes: &[u8]) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind a UDP sender");
    socket.send_to(bytes, to).await.expect("send UDP");
}
