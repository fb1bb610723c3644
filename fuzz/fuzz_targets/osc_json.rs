//! JSON ⇄ OSC mapping. Any JSON with any route options maps to OSC without
//! a panic, with exactly the argument types the options promise, and the
//! messages survive rosc encoding; any OSC arguments map back to JSON.
//!
//! Input: one byte picks the direction. JSON to OSC: an options byte, a
//! type list, an address, then JSON text (or a trigger). OSC to JSON:
//! arguments built from the remaining bytes.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use rosc::{OscArray, OscColor, OscMidiMessage, OscPacket, OscTime, OscType};
use scbridge::message::Body;
use scbridge::osc::{
    BoolStyle, NullStyle, NumberType, ObjectStyle, OscOutOptions, TriggerStyle, TypeTag,
    args_to_json, to_osc,
};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = match u.arbitrary::<bool>() {
        Ok(true) => osc_to_json(u),
        Ok(false) => json_to_osc(u),
        Err(_) => Ok(()),
    };
});

const TAGS: [TypeTag; 7] = [
    TypeTag::Int32,
    TypeTag::Float32,
    TypeTag::Double,
    TypeTag::Int64,
    TypeTag::String,
    TypeTag::Bool,
    TypeTag::Nil,
];

fn json_to_osc(mut u: Unstructured<'_>) -> Result<()> {
    let flags: u8 = u.arbitrary()?;
    let bit = |n: u8| flags >> n & 1 == 1;
    let types: Option<Vec<TypeTag>> = if bit(6) {
        let count = u.int_in_range(1..=6)?;
        Some((0..count).map(|_| u.choose(&TAGS).copied()).collect::<Result<_>>()?)
    } else {
        None
    };
    let options = OscOutOptions {
        numbers: *u.choose(&[NumberType::Float32, NumberType::Int32, NumberType::Double])?,
        bools: if bit(0) { BoolStyle::TrueFalse } else { BoolStyle::Number },
        null: if bit(1) { NullStyle::Omit } else { NullStyle::Nil },
        objects: if bit(2) { ObjectStyle::Json } else { ObjectStyle::Split },
        trigger: if bit(3) { TriggerStyle::One } else { TriggerStyle::NoArgs },
        types,
    };
    let address: &str = u.arbitrary()?;
    let body = if bit(7) {
        Body::Trigger
    } else {
        match serde_json::from_slice::<Value>(u.take_rest()) {
            Ok(value) => Body::Value(value),
            Err(_) => return Ok(()),
        }
    };
    let result = to_osc(address, &body, &options);
    if !address.starts_with('/') || address.contains('\0') {
        assert!(result.is_err(), "{address:?} accepted");
    }
    let Ok(messages) = result else { return Ok(()) };
    let number = match options.numbers {
        NumberType::Float32 => 'f',
        NumberType::Int32 => 'i',
        NumberType::Double => 'd',
    };
    for message in messages {
        let tags: String = message.args.iter().map(tag_of).collect();
        match &options.types {
            Some(types) => {
                let wanted: String = types.iter().map(|tag| tag.as_char()).collect();
                assert_eq!(tags.replace('F', "T"), wanted);
            }
            None => assert!(
                tags.chars().all(|tag| tag == number || "sNTF".contains(tag)),
                "{tags} with {options:?}"
            ),
        }
        // An OSC string ends at its first NUL, so none may hold one.
        let nul = |arg: &OscType| matches!(arg, OscType::String(s) if s.contains('\0'));
        assert!(!message.args.iter().any(nul), "{message:?}");
        let packet = OscPacket::Message(message);
        let bytes = rosc::encoder::encode(&packet).expect("a mapped message encodes");
        let (_, decoded) = rosc::decoder::decode_udp(&bytes).expect("and decodes");
        assert_eq!(decoded, packet);
    }
    Ok(())
}

fn osc_to_json(mut u: Unstructured<'_>) -> Result<()> {
    let mut args = Vec::new();
    while !u.is_empty() && args.len() < 16 {
        args.push(arg(&mut u, 0)?);
    }
    let value = args_to_json(&args);
    let each: Vec<Value> = args.iter().map(|a| args_to_json(std::slice::from_ref(a))).collect();
    match each.len() {
        0 => assert_eq!(value, Value::Null),
        1 => assert_eq!(value, each[0]),
        _ => assert_eq!(value, Value::Array(each)),
    }
    Ok(())
}

/// One OSC argument; arrays nest at most eight deep.
fn arg(u: &mut Unstructured<'_>, depth: usize) -> Result<OscType> {
    let most = if depth < 8 { 14 } else { 13 };
    Ok(match u.int_in_range(0..=most)? {
        0 => OscType::Int(u.arbitrary()?),
        1 => OscType::Float(u.arbitrary()?),
        2 => OscType::String(u.arbitrary()?),
        3 => OscType::Blob(u.arbitrary()?),
        4 => OscType::Time(OscTime { seconds: u.arbitrary()?, fractional: u.arbitrary()? }),
        5 => OscType::Long(u.arbitrary()?),
        6 => OscType::Double(u.arbitrary()?),
        7 => OscType::Char(u.arbitrary()?),
        8 => {
            let [red, green, blue, alpha] = u.arbitrary()?;
            OscType::Color(OscColor { red, green, blue, alpha })
        }
        9 => {
            let [port, status, data1, data2] = u.arbitrary()?;
            OscType::Midi(OscMidiMessage { port, status, data1, data2 })
        }
        10 => OscType::Bool(u.arbitrary()?),
        11 => OscType::Nil,
        12 => OscType::Inf,
        13 => OscType::String(String::new()),
        _ => {
            let count = u.int_in_range(0..=4)?;
            let content = (0..count).map(|_| arg(u, depth + 1)).collect::<Result<_>>()?;
            OscType::Array(OscArray { content })
        }
    })
}

fn tag_of(arg: &OscType) -> char {
    match arg {
        OscType::Int(_) => 'i',
        OscType::Float(_) => 'f',
        OscType::String(_) => 's',
        OscType::Blob(_) => 'b',
        OscType::Time(_) => 't',
        OscType::Long(_) => 'h',
        OscType::Double(_) => 'd',
        OscType::Char(_) => 'c',
        OscType::Color(_) => 'r',
        OscType::Midi(_) => 'm',
        OscType::Bool(true) => 'T',
        OscType::Bool(false) => 'F',
        OscType::Nil => 'N',
        OscType::Inf => 'I',
        OscType::Array(_) => '[',
    }
}
