//! Reading one received datagram as an OSC packet without trusting it.
//!
//! rosc decodes nested bundles by recursion and drops nested arrays by
//! recursion, so a single datagram of a few thousand nested bundles (or tens
//! of thousands of `[`) overflows the stack and aborts the whole daemon. The
//! nesting is measured here, cheaply and without recursion beyond the limit,
//! before rosc sees the bytes.

use rosc::OscPacket;

/// Deepest nesting of bundles in bundles, and of arrays in arrays, accepted
/// from the network. Real senders use one or two levels.
pub const MAX_NESTING: usize = 32;

/// Why a datagram is not an OSC packet the bridge will read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("bundles or arrays nested deeper than {MAX_NESTING} levels")]
    TooDeep,
    #[error("{0}")]
    Osc(rosc::OscError),
}

/// Decodes one datagram. Bytes after the first packet are ignored, as rosc
/// does.
pub fn decode(bytes: &[u8]) -> Result<OscPacket, DecodeError> {
    if !nesting_within_limit(bytes, 0) {
        return Err(DecodeError::TooDeep);
    }
    rosc::decoder::decode_udp(bytes).map(|(_, packet)| packet).map_err(DecodeError::Osc)
}

/// False when bundles or arrays nest deeper than [`MAX_NESTING`]. Anything
/// malformed counts as within the limit: rejecting it is rosc's job.
fn nesting_within_limit(bytes: &[u8], depth: usize) -> bool {
    if depth > MAX_NESTING {
        return false;
    }
    if let Some(mut rest) = bytes.strip_prefix(b"#bundle\0") {
        // Skip the time tag, then walk the size-prefixed elements.
        let Some(elements) = rest.get(8..) else { return true };
        rest = elements;
        while let Some(size) = rest.get(..4) {
            let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize;
            let Some(end) = size.checked_add(4) else { return true };
            let Some(element) = rest.get(4..end) else { return true };
            if !nesting_within_limit(element, depth + 1) {
                return false;
            }
            rest = &rest[end..];
        }
        return true;
    }
    array_depth(bytes) <= MAX_NESTING
}

/// The deepest `[` nesting in a message's type tag string.
fn array_depth(message: &[u8]) -> usize {
    let Some(address_len) = message.iter().position(|&b| b == 0) else { return 0 };
    // OSC strings are NUL-terminated and padded to a multiple of four bytes.
    let tags_start = (address_len / 4 + 1) * 4;
    let Some(tags) = message.get(tags_start..) else { return 0 };
    let tags = tags.iter().take_while(|&&b| b != 0);
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &tag in tags {
        match tag {
            b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use rosc::{OscArray, OscBundle, OscMessage, OscTime, OscType};

    fn nested_bundles(levels: usize) -> Vec<u8> {
        let mut packet = OscPacket::Message(OscMessage { addr: "/deep".into(), args: vec![] });
        for _ in 0..levels {
            packet = OscPacket::Bundle(OscBundle {
                timetag: OscTime { seconds: 0, fractional: 1 },
                content: vec![packet],
            });
        }
        rosc::encoder::encode(&packet).expect("encodes")
    }

    fn nested_arrays(levels: usize) -> Vec<u8> {
        let mut arg = OscType::Int(1);
        for _ in 0..levels {
            arg = OscType::Array(OscArray { content: vec![arg] });
        }
        let message = OscMessage { addr: "/deep/array".into(), args: vec![arg] };
        rosc::encoder::encode(&OscPacket::Message(message)).expect("encodes")
    }

    #[test]
    fn bundles_nested_up_to_the_limit_decode() {
        assert!(decode(&nested_bundles(MAX_NESTING)).is_ok());
    }

    #[test]
    fn bundles_nested_beyond_the_limit_are_refused_before_decoding() {
        assert!(matches!(decode(&nested_bundles(MAX_NESTING + 1)), Err(DecodeError::TooDeep)));
    }

    #[test]
    fn thousands_of_nested_bundles_are_refused_without_touching_the_stack() {
        // Hand-built, since building it with rosc would recurse as deeply.
        let mut bytes = b"/a\0\0,\0\0\0".to_vec();
        for _ in 0..3000 {
            let mut outer = b"#bundle\0\0\0\0\0\0\0\0\x01".to_vec();
            outer.extend((bytes.len() as u32).to_be_bytes());
            outer.extend(&bytes);
            bytes = outer;
        }
        assert!(matches!(decode(&bytes), Err(DecodeError::TooDeep)));
    }

    #[test]
    fn arrays_nested_up_to_the_limit_decode_and_deeper_are_refused() {
        assert!(decode(&nested_arrays(MAX_NESTING)).is_ok());
        assert!(matches!(decode(&nested_arrays(MAX_NESTING + 1)), Err(DecodeError::TooDeep)));
    }

    #[test]
    fn garbage_is_an_error_and_never_a_panic() {
        for bytes in
            [&b""[..], b"\xff\xfe", b"#bundle\0", b"#bundle\0\0\0\0\0", b"/a\0", b"/a\0\0,x\0\0"]
        {
            assert!(decode(bytes).is_err(), "{bytes:?}");
        }
    }
}
