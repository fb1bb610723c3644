//! Reading one received datagram as OSC messages without trusting it.
//!
//! rosc decodes nested bundles by recursion and drops nested arrays by
//! recursion, so a single datagram of a few thousand nested bundles (or tens
//! of thousands of `[`) overflows the stack and aborts the whole daemon. And
//! rosc reads a bundle's elements until the first bad one, returning the
//! ones before it as if that were all. So bundles are walked here, to a
//! bounded depth, and rosc only ever sees one message at a time, its arrays
//! measured first: a bad element is reported on its own and the elements
//! after it are still read.

use rosc::{OscMessage, OscPacket};

/// Deepest nesting of bundles in bundles, and of arrays in arrays, accepted
/// from the network. Real senders use one or two levels.
pub const MAX_NESTING: usize = 32;

/// Why a datagram, or one element of its bundle, is not something the
/// bridge will read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("bundles or arrays nested deeper than {MAX_NESTING} levels")]
    TooDeep,
    #[error("bundle without a time tag")]
    NoTimeTag,
    #[error("bundle element of {size} bytes where {left} are left")]
    ElementPastEnd { size: usize, left: usize },
    #[error("bundle element of {0} bytes, not a multiple of 4")]
    Unaligned(usize),
    #[error("{0} bytes after the last bundle element, too few for another")]
    TrailingBytes(usize),
    #[error("{0}")]
    Osc(rosc::OscError),
}

/// Decodes one datagram: its messages, in order, are appended to `out`,
/// bundles unpacked (their time tags are not kept). What could not be read
/// is returned, one error per unreadable part (the datagram, or an element
/// of a bundle); an element that cannot be read costs only itself, unless
/// its size runs past the end, which leaves nothing after it to trust.
/// Bytes after a message are ignored, as rosc does.
pub fn decode(bytes: &[u8], out: &mut Vec<OscMessage>) -> Vec<DecodeError> {
    let mut errors = Vec::new();
    decode_part(bytes, 0, out, &mut errors);
    errors
}

fn decode_part(
    bytes: &[u8],
    depth: usize,
    out: &mut Vec<OscMessage>,
    errors: &mut Vec<DecodeError>,
) {
    if depth > MAX_NESTING {
        errors.push(DecodeError::TooDeep);
        return;
    }
    let Some(after_tag) = bytes.strip_prefix(b"#bundle\0") else {
        match decode_message(bytes) {
            Ok(message) => out.push(message),
            Err(err) => errors.push(err),
        }
        return;
    };
    let Some(mut rest) = after_tag.get(8..) else {
        errors.push(DecodeError::NoTimeTag);
        return;
    };
    while !rest.is_empty() {
        let Some((size, after_size)) = rest.split_first_chunk::<4>() else {
            errors.push(DecodeError::TrailingBytes(rest.len()));
            return;
        };
        let size = u32::from_be_bytes(*size) as usize;
        let Some((element, after_element)) = after_size.split_at_checked(size) else {
            errors.push(DecodeError::ElementPastEnd { size, left: after_size.len() });
            return;
        };
        // Padding is counted from the start of each element below, which
        // agrees with the start of the datagram only if sizes keep it aligned.
        if size % 4 == 0 {
            decode_part(element, depth + 1, out, errors);
        } else {
            errors.push(DecodeError::Unaligned(size));
        }
        rest = after_element;
    }
}

/// One message, its arrays measured before rosc builds them.
fn decode_message(bytes: &[u8]) -> Result<OscMessage, DecodeError> {
    if array_depth(bytes) > MAX_NESTING {
        return Err(DecodeError::TooDeep);
    }
    match rosc::decoder::decode_udp(bytes).map_err(DecodeError::Osc)? {
        (_, OscPacket::Message(message)) => Ok(message),
        // Not reached: anything rosc reads as a bundle starts with the tag
        // that `decode_part` takes apart itself.
        (_, OscPacket::Bundle(_)) => {
            Err(DecodeError::Osc(rosc::OscError::BadPacket("bundle where a message was expected")))
        }
    }
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
    use rosc::{OscArray, OscBundle, OscTime, OscType};

    fn message(addr: &str, args: Vec<OscType>) -> OscPacket {
        OscPacket::Message(OscMessage { addr: addr.into(), args })
    }

    fn encoded(packet: &OscPacket) -> Vec<u8> {
        rosc::encoder::encode(packet).expect("encodes")
    }

    fn nested_bundles(levels: usize) -> Vec<u8> {
        let mut packet = message("/deep", vec![]);
        for _ in 0..levels {
            packet = OscPacket::Bundle(OscBundle {
                timetag: OscTime { seconds: 0, fractional: 1 },
                content: vec![packet],
            });
        }
        encoded(&packet)
    }

    fn nested_arrays(levels: usize) -> Vec<u8> {
        let mut arg = OscType::Int(1);
        for _ in 0..levels {
            arg = OscType::Array(OscArray { content: vec![arg] });
        }
        encoded(&message("/deep/array", vec![arg]))
    }

    /// A bundle of raw elements, each given with the size to write before it.
    fn bundle_of(elements: &[(u32, &[u8])]) -> Vec<u8> {
        let mut bytes = b"#bundle\0\0\0\0\0\0\0\0\x01".to_vec();
        for (size, element) in elements {
            bytes.extend(size.to_be_bytes());
            bytes.extend(*element);
        }
        bytes
    }

    fn addresses(bytes: &[u8]) -> (Vec<String>, Vec<DecodeError>) {
        let mut out = Vec::new();
        let errors = decode(bytes, &mut out);
        (out.into_iter().map(|m| m.addr).collect(), errors)
    }

    #[test]
    fn bundles_nested_up_to_the_limit_decode() {
        assert_eq!(addresses(&nested_bundles(MAX_NESTING)).0, ["/deep"]);
        assert!(addresses(&nested_bundles(MAX_NESTING)).1.is_empty());
    }

    #[test]
    fn bundles_nested_beyond_the_limit_are_refused_before_decoding() {
        let (delivered, errors) = addresses(&nested_bundles(MAX_NESTING + 1));
        assert!(delivered.is_empty());
        assert!(matches!(errors[..], [DecodeError::TooDeep]));
    }

    #[test]
    fn thousands_of_nested_bundles_are_refused_without_touching_the_stack() {
        // Hand-built, since building it with rosc would recurse as deeply.
        let mut bytes = b"/a\0\0,\0\0\0".to_vec();
        for _ in 0..3000 {
            let size = bytes.len() as u32;
            bytes = bundle_of(&[(size, &bytes)]);
        }
        assert!(matches!(addresses(&bytes).1[..], [DecodeError::TooDeep]));
    }

    #[test]
    fn arrays_nested_up_to_the_limit_decode_and_deeper_are_refused() {
        assert!(addresses(&nested_arrays(MAX_NESTING)).1.is_empty());
        assert!(matches!(addresses(&nested_arrays(MAX_NESTING + 1)).1[..], [DecodeError::TooDeep]));
    }

    #[test]
    fn a_bad_bundle_element_costs_only_itself() {
        let first = encoded(&message("/first", vec![OscType::Int(1)]));
        let truncated_args = b"/bad\0\0\0\0,i\0\0";
        let last = encoded(&message("/last", vec![]));
        let bytes = bundle_of(&[
            (first.len() as u32, &first),
            (0, b""),
            (truncated_args.len() as u32, truncated_args),
            (last.len() as u32, &last),
        ]);
        let (delivered, errors) = addresses(&bytes);
        assert_eq!(delivered, ["/first", "/last"]);
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn bytes_too_few_for_another_element_are_reported_after_the_elements() {
        let first = encoded(&message("/first", vec![]));
        let mut bytes = bundle_of(&[(first.len() as u32, &first)]);
        bytes.extend(b"\0\0");
        let (delivered, errors) = addresses(&bytes);
        assert_eq!(delivered, ["/first"]);
        assert!(matches!(errors[..], [DecodeError::TrailingBytes(2)]), "{errors:?}");
    }

    #[test]
    fn an_element_running_past_the_end_keeps_the_ones_before_it() {
        let first = encoded(&message("/first", vec![]));
        let bytes = bundle_of(&[(first.len() as u32, &first), (64, b"/cut\0\0\0\0")]);
        let (delivered, errors) = addresses(&bytes);
        assert_eq!(delivered, ["/first"]);
        assert!(matches!(errors[..], [DecodeError::ElementPastEnd { size: 64, left: 8 }]));
    }

    #[test]
    fn a_misaligned_element_cannot_hide_deep_arrays_from_the_guard() {
        // Padding counted from the element would find no type tags at all,
        // while padding counted from the datagram reads 20,000 `[`.
        let mut hidden = b"/a\0\0\0,".to_vec();
        hidden.extend(std::iter::repeat_n(b'[', 20_000));
        hidden.extend(std::iter::repeat_n(b']', 20_000));
        hidden.extend(b"\0\0");
        let padded_short = b"/a\0\0,\0\0\0\0\0\0";
        let bytes =
            bundle_of(&[(padded_short.len() as u32, padded_short), (hidden.len() as u32, &hidden)]);
        let (delivered, errors) = addresses(&bytes);
        assert!(matches!(errors[..], [DecodeError::Unaligned(11)]), "{errors:?}");
        // Read the way the guard measured it: an address and no type tags.
        assert_eq!(delivered, ["/a"]);
    }

    #[test]
    fn garbage_is_an_error_and_never_a_panic() {
        for bytes in [
            &b""[..],
            b"\xff\xfe",
            b"#bundle\0",
            b"#bundle\0\0\0\0\0",
            b"#bundle\0\0\0\0\0\0\0\0\0\0\0",
            b"/a\0",
            b"/a\0\0,x\0\0",
        ] {
            let (delivered, errors) = addresses(bytes);
            assert!(delivered.is_empty() && !errors.is_empty(), "{bytes:?}");
        }
    }

    #[test]
    fn nested_bundles_flatten_in_order() {
        let time = OscTime { seconds: 0, fractional: 1 };
        let bundle = |content| OscPacket::Bundle(OscBundle { timetag: time, content });
        let packet = bundle(vec![
            message("/1", vec![]),
            bundle(vec![
                message("/2", vec![OscType::Int(2)]),
                bundle(vec![]),
                message("/3", vec![]),
            ]),
            message("/4", vec![]),
        ]);
        let mut out = Vec::new();
        assert!(decode(&encoded(&packet), &mut out).is_empty());
        let names: Vec<&str> = out.iter().map(|m| m.addr.as_str()).collect();
        assert_eq!(names, ["/1", "/2", "/3", "/4"]);
        assert_eq!(out[1].args, [OscType::Int(2)]);
    }

    #[test]
    fn an_empty_bundle_is_read_as_no_messages() {
        let (delivered, errors) = addresses(&bundle_of(&[]));
        assert!(delivered.is_empty() && errors.is_empty());
    }
}
