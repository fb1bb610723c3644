//! Received OSC datagrams. Any bytes go through the nesting guard and rosc
//! without a panic or a stack overflow; a packet the guard lets through is
//! nested no deeper than it allows, and its messages map to JSON.
//!
//! `src/osc/packet.rs` is compiled into this target as it is, because the
//! module is private to the crate.

#![no_main]

#[path = "../../src/osc/packet.rs"]
mod packet;

use libfuzzer_sys::fuzz_target;
use rosc::{OscPacket, OscType};

fuzz_target!(|data: &[u8]| {
    let Ok(decoded) = packet::decode(data) else { return };
    assert!(bundle_depth(&decoded) <= packet::MAX_NESTING);
    let mut messages = Vec::new();
    scbridge::osc::from_osc(decoded, &mut messages);
    for (_address, args) in &messages {
        assert!(args.iter().all(|arg| array_depth(arg) <= packet::MAX_NESTING));
        let _ = scbridge::osc::args_to_json(args);
    }
});

/// Bundles inside bundles, counted without recursion.
fn bundle_depth(packet: &OscPacket) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(packet, 0)];
    while let Some((packet, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        if let OscPacket::Bundle(bundle) = packet {
            stack.extend(bundle.content.iter().map(|inner| (inner, depth + 1)));
        }
    }
    deepest
}

/// Arrays inside arrays, counted without recursion.
fn array_depth(arg: &OscType) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(arg, 0)];
    while let Some((arg, depth)) = stack.pop() {
        if let OscType::Array(array) = arg {
            deepest = deepest.max(depth + 1);
            stack.extend(array.content.iter().map(|inner| (inner, depth + 1)));
        }
    }
    deepest
}
