//! SocketCluster text frames. Any text decodes without a panic, and a
//! session fed any frames after its handshake survives them: it sends only
//! pongs and well-formed packets, and delivers publishes only for channels
//! it holds.
//!
//! Input: a first byte that says whether the handshake is answered first,
//! then frames separated by `\n`. A line starting with `\x01` is a call
//! instead of a frame: `\x01s<channel>` subscribes, `\x01a<channel>`
//! subscribes once authenticated, `\x01u<channel>` unsubscribes, `\x01r`
//! reconnects, `\x01d` deauthenticates.

#![no_main]

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use libfuzzer_sys::fuzz_target;
use scbridge::sc::codec::{self, Frame};
use scbridge::sc::session::{Output, Session};
use scbridge::sc::{Incoming, Protocol, ScStats};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let _ = codec::decode(text);

    let protocol = if first & 2 == 0 { Protocol::V2 } else { Protocol::V1 };
    let mut session =
        Session::new(protocol, Arc::new(AtomicU64::new(1)), Arc::new(ScStats::default()));
    let hello = session.begin_handshake();
    check_sent(&hello);
    let mut out = Vec::new();
    if first & 1 == 1 {
        session.on_text(r#"{"rid":1,"data":{"id":"s","pingTimeout":5000}}"#, &mut out);
        assert!(session.is_open());
    }
    for line in text.split('\n') {
        let held: Vec<String> = session.subscriptions().into_iter().map(|(name, _)| name).collect();
        out.clear();
        match line.strip_prefix('\x01') {
            Some(call) if call.starts_with('s') => session.subscribe(&call[1..], false, &mut out),
            Some(call) if call.starts_with('a') => session.subscribe(&call[1..], true, &mut out),
            Some(call) if call.starts_with('u') => session.unsubscribe(&call[1..], &mut out),
            Some("r") => {
                session.on_closed();
                check_sent(&session.begin_handshake());
            }
            Some("d") => session.deauthenticate(&mut out),
            _ => session.on_text(line, &mut out),
        }
        for output in &out {
            match output {
                Output::Send(sent) => check_sent(sent),
                Output::Deliver(Incoming::Publish { channel, .. }) => {
                    assert!(held.contains(channel), "delivered {channel:?}, held {held:?}");
                }
                Output::Deliver(Incoming::Event { event, .. }) => {
                    assert!(!event.starts_with('#'), "delivered reserved event {event:?}");
                }
                _ => {}
            }
        }
    }
});

/// A frame the session sends is a pong or exactly one packet.
fn check_sent(text: &str) {
    if text.is_empty() || text == "#2" {
        return;
    }
    match codec::decode(text) {
        Frame::Packets(packets) => {
            assert!(packets.len() == 1 && packets[0].is_ok(), "sent a bad frame: {text}")
        }
        Frame::Ping(_) => panic!("sent a ping: {text:?}"),
    }
}
