//! Received OSC datagrams. Any bytes are walked and decoded without a panic
//! or a stack overflow; every message read holds arrays nested no deeper
//! than the limit, and maps to JSON.
//!
//! `src/osc/packet.rs` is compiled into this target as it is, because the
//! module is private to the crate.

#![no_main]

#[path = "../../src/osc/packet.rs"]
mod packet;

use libfuzzer_sys::fuzz_target;
use rosc::OscType;

fuzz_target!(|data: &[u8]| {
    let mut messages = Vec::new();
    let _errors = packet::decode(data, &mut messages);
    for message in &messages {
        assert!(message.args.iter().all(|arg| array_depth(arg) <= packet::MAX_NESTING));
        let _ = scbridge::osc::args_to_json(&message.args);
    }
});

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
