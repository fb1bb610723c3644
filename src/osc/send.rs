//! Batched sending: the datagrams of one turn of the sender task are encoded
//! into one buffer and handed to the kernel many per system call
//! (`sendmmsg(2)` on Linux). A burst then costs one syscall per batch rather
//! than one per message; a lone message still goes out at once, alone.
//!
//! Other platforms send the same batch one `send_to` at a time.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;

use rosc::OscPacket;
use tokio::net::UdpSocket;

/// Datagrams handed to one `sendmmsg` call, at most.
const PER_CALL: usize = 64;

/// One encoded datagram of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Datagram {
    range: Range<usize>,
    pub to: SocketAddr,
    /// Index of the target it is for, so outcomes can name it.
    pub target: usize,
}

/// Encoded datagrams waiting to be sent, in order.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    bytes: Vec<u8>,
    datagrams: Vec<Datagram>,
}

impl Batch {
    /// Encodes `packet` at the end of the batch (encoding into memory
    /// cannot fail).
    pub fn push(&mut self, packet: &OscPacket, to: SocketAddr, target: usize) {
        let start = self.bytes.len();
        let Ok(_) = rosc::encoder::encode_into(packet, &mut self.bytes);
        self.datagrams.push(Datagram { range: start..self.bytes.len(), to, target });
    }

    /// The bytes of one datagram.
    pub fn payload(&self, datagram: &Datagram) -> &[u8] {
        &self.bytes[datagram.range.clone()]
    }

    /// Sends every datagram in order, waiting while the socket's buffer is
    /// full, and reports each one's outcome to `outcome`; a datagram the
    /// kernel refuses is reported and skipped, the rest still go. The batch
    /// is empty afterwards.
    pub async fn send(
        &mut self,
        socket: &UdpSocket,
        mut outcome: impl FnMut(&Datagram, io::Result<()>),
    ) {
        let mut next = 0;
        while next < self.datagrams.len() {
            let pending = &self.datagrams[next..];
            let sent = if pending.len() == 1 {
                let only = &pending[0];
                socket.send_to(self.payload(only), only.to).await.map(|_| 1)
            } else {
                socket
                    .async_io(tokio::io::Interest::WRITABLE, || {
                        send_many(socket, &self.bytes, pending)
                    })
                    .await
            };
            match sent {
                Ok(count) => {
                    for datagram in &pending[..count] {
                        outcome(datagram, Ok(()));
                    }
                    next += count;
                }
                Err(err) => {
                    outcome(&pending[0], Err(err));
                    next += 1;
                }
            }
        }
        self.bytes.clear();
        self.datagrams.clear();
    }
}

/// Sends a prefix of `datagrams` in one system call; how many went.
/// `WouldBlock` when the socket buffer is full, as for `send_to`.
#[cfg(target_os = "linux")]
fn send_many(socket: &UdpSocket, bytes: &[u8], datagrams: &[Datagram]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    let datagrams = &datagrams[..datagrams.len().min(PER_CALL)];
    let addresses: Vec<socket2::SockAddr> =
        datagrams.iter().map(|d| socket2::SockAddr::from(d.to)).collect();
    let mut buffers: Vec<libc::iovec> = datagrams
        .iter()
        .map(|d| libc::iovec {
            iov_base: bytes[d.range.clone()].as_ptr() as *mut libc::c_void,
            iov_len: d.range.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = addresses
        .iter()
        .zip(buffers.iter_mut())
        .map(|(address, buffer)| {
            // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_name = address.as_ptr() as *mut libc::c_void;
            header.msg_hdr.msg_namelen = address.len();
            header.msg_hdr.msg_iov = buffer;
            header.msg_hdr.msg_iovlen = 1;
            header
        })
        .collect();
    // SAFETY: every header points into `addresses`, `buffers` and `bytes`,
    // which outlive the call; the kernel only reads them (and writes
    // `msg_len`), and `headers.len()` is what we pass as the count.
    let sent = unsafe {
        libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), headers.len() as libc::c_uint, 0)
    };
    if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(sent as usize) }
}

/// The portable fallback: one `send_to` per datagram.
#[cfg(not(target_os = "linux"))]
fn send_many(socket: &UdpSocket, bytes: &[u8], datagrams: &[Datagram]) -> io::Result<usize> {
    let first = &datagrams[0];
    socket.try_send_to(&bytes[first.range.clone()], first.to).map(|_| 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rosc::{OscMessage, OscType};

    fn message(address: &str, value: i32) -> OscPacket {
        OscPacket::Message(OscMessage { addr: address.into(), args: vec![OscType::Int(value)] })
    }

    async fn receive_all(socket: &UdpSocket, count: usize) -> Vec<OscPacket> {
        let mut buf = [0u8; 1024];
        let mut packets = Vec::new();
        while packets.len() < count {
            let received =
                tokio::time::timeout(std::time::Duration::from_secs(10), socket.recv(&mut buf));
            let len = received.await.expect("a datagram within 10 s").expect("receive");
            let (_, packet) = rosc::decoder::decode_udp(&buf[..len]).expect("an OSC packet");
            packets.push(packet);
        }
        packets
    }

    #[test]
    fn each_datagram_is_encoded_as_rosc_would_encode_it_alone() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut batch = Batch::default();
        batch.push(&message("/a", 1), to, 0);
        batch.push(&message("/bb", 2), to, 1);
        assert_eq!(batch.datagrams.len(), 2);
        let encoded: Vec<&[u8]> = batch.datagrams.iter().map(|d| batch.payload(d)).collect();
        assert_eq!(encoded[0], rosc::encoder::encode(&message("/a", 1)).unwrap());
        assert_eq!(encoded[1], rosc::encoder::encode(&message("/bb", 2)).unwrap());
        assert_eq!(batch.datagrams[1].target, 1);
    }

    #[tokio::test]
    async fn a_batch_larger_than_one_call_arrives_whole_and_in_order() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiver.local_addr().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let count = PER_CALL * 2 + 3;
        let mut batch = Batch::default();
        for n in 0..count {
            batch.push(&message(&format!("/n/{n}"), n as i32), to, 0);
        }
        let mut reported = 0;
        batch
            .send(&sender, |_, result| {
                assert!(result.is_ok(), "{result:?}");
                reported += 1;
            })
            .await;
        assert_eq!(reported, count);
        assert!(batch.datagrams.is_empty() && batch.bytes.is_empty());
        let received = receive_all(&receiver, count).await;
        for (n, packet) in received.iter().enumerate() {
            assert_eq!(packet, &message(&format!("/n/{n}"), n as i32));
        }
    }

    #[tokio::test]
    async fn a_refused_datagram_is_reported_and_the_rest_still_go() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiver.local_addr().unwrap();
        // An IPv4 socket cannot send to an IPv6 address: the kernel refuses
        // that one datagram.
        let unreachable: SocketAddr = "[::1]:9".parse().unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut batch = Batch::default();
        batch.push(&message("/first", 1), to, 0);
        batch.push(&message("/refused", 2), unreachable, 1);
        batch.push(&message("/last", 3), to, 0);
        let mut outcomes = Vec::new();
        batch
            .send(&sender, |datagram, result| outcomes.push((datagram.target, result.is_ok())))
            .await;
        assert_eq!(outcomes, vec![(0, true), (1, false), (0, true)]);
        let received = receive_all(&receiver, 2).await;
        assert_eq!(received, vec![message("/first", 1), message("/last", 3)]);
    }
}
