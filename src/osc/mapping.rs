//! JSON ⇄ OSC argument mapping, with no sockets: how a [`Body`] becomes OSC
//! messages for one target (per-route [`OscOutOptions`]), and how received
//! OSC packets and arguments become names and JSON values.
//!
//! The defaults suit TouchDesigner, the main OSC consumer: its OSC In CHOP
//! keeps only float32 and int32 arguments, so numbers and booleans go out as
//! float32 unless a route asks otherwise.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use rosc::{OscMessage, OscType};
use serde_json::{Map, Number, Value};

use super::config::MAX_UDP_PAYLOAD;
use crate::message::Body;

/// How numbers go out. Float32 is the default (TouchDesigner CHOPs take only
/// `f` and `i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberType {
    /// `f`; values beyond the float32 range saturate.
    #[default]
    #[serde(alias = "float")]
    Float32,
    /// `i`; rounded to the nearest integer, saturating at the int32 range.
    #[serde(alias = "int")]
    Int32,
    /// `d`.
    Double,
}

/// How booleans go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoolStyle {
    /// 1 or 0 in the route's number type.
    #[default]
    Number,
    /// The argument-less `T` and `F` tags.
    TrueFalse,
}

/// How JSON `null` goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NullStyle {
    /// The `N` tag.
    #[default]
    Nil,
    /// No argument at all.
    Omit,
}

/// How JSON objects go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectStyle {
    /// One message per leaf key, `/prefix/key value`; nested keys are joined
    /// with `/`.
    #[default]
    Split,
    /// One string argument holding the compact JSON text.
    Json,
}

/// How a trigger (a message with no value) goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerStyle {
    /// A message with no arguments.
    #[default]
    NoArgs,
    /// A single argument 1 in the route's number type.
    One,
}

/// One entry of a fixed type list: the OSC type an argument is coerced to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeTag {
    /// `i`
    Int32,
    /// `f`
    Float32,
    /// `d`
    Double,
    /// `h`
    Int64,
    /// `s`: strings as they are, anything else as its JSON text.
    String,
    /// `T` or `F` in a type list: `T` or `F` on the wire, from the value's
    /// truthiness (JavaScript's rules, as SocketCluster peers use them).
    Bool,
    /// `N`: the value is dropped and a nil goes out in its place.
    Nil,
}

impl TypeTag {
    /// The character that names the tag in a type list.
    pub fn as_char(self) -> char {
        match self {
            TypeTag::Int32 => 'i',
            TypeTag::Float32 => 'f',
            TypeTag::Double => 'd',
            TypeTag::Int64 => 'h',
            TypeTag::String => 's',
            TypeTag::Bool => 'T',
            TypeTag::Nil => 'N',
        }
    }

    fn is_numeric(self) -> bool {
        matches!(self, TypeTag::Int32 | TypeTag::Float32 | TypeTag::Double | TypeTag::Int64)
    }
}

/// Per-destination options of an OSC route; `Default` gives the defaults of
/// each field's type and no fixed type list.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OscOutOptions {
    pub numbers: NumberType,
    pub bools: BoolStyle,
    pub null: NullStyle,
    pub objects: ObjectStyle,
    pub trigger: TriggerStyle,
    /// A fixed type list such as `ffi` or `sf`: argument i is coerced to tag
    /// i, and a value with a different number of arguments is an error.
    pub types: Option<Vec<TypeTag>>,
}

impl OscOutOptions {
    /// Parses a fixed type list as written in the config (`"ffi"`, `"sfT"`).
    /// The error names the first character that is not a type tag.
    pub fn parse_types(text: &str) -> Result<Vec<TypeTag>, String> {
        if text.is_empty() {
            return Err("the type list is empty; leave `types` out to send each value \
                        with the type its JSON has"
                .into());
        }
        text.chars()
            .enumerate()
            .map(|(index, c)| match c {
                'i' => Ok(TypeTag::Int32),
                'f' => Ok(TypeTag::Float32),
                'd' => Ok(TypeTag::Double),
                'h' => Ok(TypeTag::Int64),
                's' => Ok(TypeTag::String),
                'T' | 'F' => Ok(TypeTag::Bool),
                'N' => Ok(TypeTag::Nil),
                other => Err(format!(
                    "{other:?} (character {}) is not a type tag; use i (int32), f (float32), \
                     d (double), h (int64), s (string), T or F (bool), N (nil)",
                    index + 1
                )),
            })
            .collect()
    }
}

/// Why a value could not be turned into OSC messages.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    /// OSC addresses start with `/`.
    #[error("OSC address {0:?} does not start with '/' (or holds a NUL character)")]
    Address(String),
    /// An address no UDP datagram can carry.
    #[error("OSC address of {bytes} bytes ({start:?}…) does not fit in a UDP datagram")]
    AddressTooLong { start: String, bytes: usize },
    /// An object that splits into more than one message may make.
    #[error(
        "{address}: the object splits into more than {MAX_SPLIT_MESSAGES} messages or \
         {MAX_SPLIT_ADDRESS_BYTES} bytes of addresses (objects = \"json\" sends it whole)"
    )]
    SplitTooLarge { address: String },
    /// The fixed type list and the value disagree on the number of arguments.
    #[error(
        "{address}: the fixed types \"{types}\" need {expected} argument(s), \
         the value gives {actual}"
    )]
    TypeCount { address: String, types: TypeList, expected: usize, actual: usize },
    /// An argument cannot become the number its fixed type tag asks for.
    #[error("{address}: argument {index} ({value}) cannot become a number for type tag '{tag}'")]
    NotANumber { address: String, index: usize, tag: char, value: String },
}

/// A fixed type list, shown the way it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeList(pub Vec<TypeTag>);

impl fmt::Display for TypeList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|tag| write!(f, "{}", tag.as_char()))
    }
}

/// The most messages one object splits into. With the next limit, this
/// bounds what a single incoming message can make the bridge build: without
/// them a long key above many small leaves costs memory quadratic in its size.
pub const MAX_SPLIT_MESSAGES: usize = 4096;

/// The most bytes of addresses one object's split may build, all levels
/// counted.
pub const MAX_SPLIT_ADDRESS_BYTES: usize = 1 << 20;

/// Characters an OSC address may not hold (they are pattern syntax or
/// separators); object keys carrying them are rewritten to `_`.
const FORBIDDEN_IN_ADDRESS: &[char] = &[' ', '#', '*', ',', '?', '[', ']', '{', '}', '\0'];

/// Turns a body into the OSC messages one target receives (usually one; an
/// object split per key gives one per leaf, an empty object none).
pub fn to_osc(
    address: &str,
    body: &Body,
    options: &OscOutOptions,
) -> Result<Vec<OscMessage>, MapError> {
    if !address.starts_with('/') || address.contains('\0') {
        return Err(MapError::Address(address.to_owned()));
    }
    fits_in_a_datagram(address)?;
    let one = Value::from(1);
    let mut parts: Vec<(Cow<'_, str>, &Value)> = Vec::new();
    match body {
        Body::Trigger => {
            let args = match options.trigger {
                TriggerStyle::NoArgs => Vec::new(),
                TriggerStyle::One => vec![Cow::Borrowed(&one)],
            };
            return Ok(vec![message(address, args, options)?]);
        }
        Body::Value(Value::Object(map)) if options.objects == ObjectStyle::Split => {
            let mut budget = SplitBudget {
                messages: MAX_SPLIT_MESSAGES,
                address_bytes: MAX_SPLIT_ADDRESS_BYTES,
            };
            split(Cow::Borrowed(address), map, &mut parts, &mut budget).map_err(
                |err| match err {
                    SplitError::TooLarge => MapError::SplitTooLarge { address: address.to_owned() },
                    SplitError::Map(err) => err,
                },
            )?;
        }
        Body::Value(value) => parts.push((Cow::Borrowed(address), value)),
    }
    parts
        .into_iter()
        .map(|(address, value)| {
            let mut args = Vec::new();
            flatten(value, options, &mut args);
            message(&address, args, options)
        })
        .collect()
}

/// What is left of [`MAX_SPLIT_MESSAGES`] and [`MAX_SPLIT_ADDRESS_BYTES`].
struct SplitBudget {
    messages: usize,
    address_bytes: usize,
}

enum SplitError {
    TooLarge,
    Map(MapError),
}

/// Collects the leaves of an object with their addresses, depth first in the
/// map's key order.
fn split<'a>(
    prefix: Cow<'_, str>,
    map: &'a Map<String, Value>,
    out: &mut Vec<(Cow<'a, str>, &'a Value)>,
    budget: &mut SplitBudget,
) -> Result<(), SplitError> {
    for (key, value) in map {
        // Checked before the address is built, charged at its real length
        // after (an empty level adds a `_`).
        let length = prefix.len() + key.len() + 1;
        if length > budget.address_bytes {
            return Err(SplitError::TooLarge);
        }
        let mut address = String::with_capacity(length);
        address.push_str(&prefix);
        if !address.ends_with('/') {
            address.push('/');
        }
        // A key may hold levels of its own (`"/fader1"`, `"a/b"`): slashes
        // at its ends are separators, and an empty level becomes `_`, since
        // `//` is a wildcard in OSC 1.1.
        for (index, level) in key.trim_matches('/').split('/').enumerate() {
            if index > 0 {
                address.push('/');
            }
            if level.is_empty() {
                address.push('_');
            } else {
                address.extend(
                    level.chars().map(|c| if FORBIDDEN_IN_ADDRESS.contains(&c) { '_' } else { c }),
                );
            }
        }
        budget.address_bytes =
            budget.address_bytes.checked_sub(address.len()).ok_or(SplitError::TooLarge)?;
        fits_in_a_datagram(&address).map_err(SplitError::Map)?;
        match value {
            Value::Object(inner) => split(Cow::Owned(address), inner, out, budget)?,
            leaf => {
                budget.messages = budget.messages.checked_sub(1).ok_or(SplitError::TooLarge)?;
                out.push((Cow::Owned(address), leaf));
            }
        }
    }
    Ok(())
}

/// Whether a message to `address` fits in a datagram at all: the address
/// with its NUL, padded to four bytes, and an empty type tag string.
fn fits_in_a_datagram(address: &str) -> Result<(), MapError> {
    if (address.len() / 4 + 1) * 4 + 4 <= MAX_UDP_PAYLOAD {
        return Ok(());
    }
    let mut end = 60;
    while !address.is_char_boundary(end) {
        end -= 1;
    }
    Err(MapError::AddressTooLong { start: address[..end].to_owned(), bytes: address.len() })
}

/// The arguments a value gives, before any type is chosen: arrays flattened,
/// objects (inside arrays, or with [`ObjectStyle::Json`]) as JSON text, and
/// omitted nulls left out.
fn flatten<'a>(value: &'a Value, options: &OscOutOptions, out: &mut Vec<Cow<'a, Value>>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, options, out)),
        Value::Object(_) => out.push(Cow::Owned(Value::String(json_text(value)))),
        Value::Null if options.null == NullStyle::Omit => {}
        scalar => out.push(Cow::Borrowed(scalar)),
    }
}

fn message(
    address: &str,
    args: Vec<Cow<'_, Value>>,
    options: &OscOutOptions,
) -> Result<OscMessage, MapError> {
    let args = match &options.types {
        None => args.iter().map(|arg| by_json_type(arg, options)).collect(),
        Some(types) => {
            if types.len() != args.len() {
                return Err(MapError::TypeCount {
                    address: address.to_owned(),
                    types: TypeList(types.clone()),
                    expected: types.len(),
                    actual: args.len(),
                });
            }
            types
                .iter()
                .zip(&args)
                .enumerate()
                .map(|(index, (tag, arg))| coerce(arg, *tag, address, index))
                .collect::<Result<_, _>>()?
        }
    };
    Ok(OscMessage { addr: address.to_owned(), args })
}

/// A scalar mapped by its own JSON type and the route's options.
fn by_json_type(value: &Value, options: &OscOutOptions) -> OscType {
    match value {
        Value::Null => OscType::Nil,
        Value::Bool(b) => match options.bools {
            BoolStyle::TrueFalse => OscType::Bool(*b),
            BoolStyle::Number => number(if *b { 1.0 } else { 0.0 }, options.numbers),
        },
        Value::Number(n) => number(n.as_f64().unwrap_or(0.0), options.numbers),
        Value::String(s) => osc_string(s.clone()),
        // `flatten` has already turned these into JSON text.
        Value::Array(_) | Value::Object(_) => osc_string(json_text(value)),
    }
}

/// Compact JSON text. `serde_json::to_string` writes bytes straight into a
/// buffer; `Value`'s `Display` goes through the formatter piece by piece,
/// at about twice the cost. Serialising a `Value` cannot fail: its keys are
/// strings and its numbers finite.
fn json_text(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// An OSC string ends at its first NUL, so a NUL inside would cut the rest
/// off at the receiver; NULs are left out instead (JSON text never has one
/// raw, only `\u0000` escapes, which stay as written).
fn osc_string(text: String) -> OscType {
    if text.contains('\0') {
        OscType::String(text.replace('\0', ""))
    } else {
        OscType::String(text)
    }
}

fn number(n: f64, numbers: NumberType) -> OscType {
    match numbers {
        NumberType::Float32 => OscType::Float(saturating_f32(n)),
        // `as` saturates, which is what an out-of-range value should do.
        NumberType::Int32 => OscType::Int(n.round() as i32),
        NumberType::Double => OscType::Double(n),
    }
}

fn saturating_f32(n: f64) -> f32 {
    n.clamp(f64::from(f32::MIN), f64::from(f32::MAX)) as f32
}

/// A scalar coerced to a fixed type tag.
fn coerce(value: &Value, tag: TypeTag, address: &str, index: usize) -> Result<OscType, MapError> {
    match tag {
        TypeTag::String => Ok(osc_string(match value {
            Value::String(s) => s.clone(),
            other => json_text(other),
        })),
        TypeTag::Bool => Ok(OscType::Bool(truthy(value))),
        TypeTag::Nil => Ok(OscType::Nil),
        TypeTag::Int64 => {
            let exact = match value {
                Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|_| i64::MAX)),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            };
            match exact {
                Some(n) => Ok(OscType::Long(n)),
                None => {
                    numeric(value, tag, address, index).map(|n| OscType::Long(n.round() as i64))
                }
            }
        }
        TypeTag::Int32 => {
            numeric(value, tag, address, index).map(|n| OscType::Int(n.round() as i32))
        }
        TypeTag::Float32 => {
            numeric(value, tag, address, index).map(|n| OscType::Float(saturating_f32(n)))
        }
        TypeTag::Double => numeric(value, tag, address, index).map(OscType::Double),
    }
}

fn numeric(value: &Value, tag: TypeTag, address: &str, index: usize) -> Result<f64, MapError> {
    debug_assert!(tag.is_numeric());
    let n = match value {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    };
    n.ok_or_else(|| {
        let mut shown = value.to_string();
        if shown.len() > 64 {
            let mut end = 61;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push_str("...");
        }
        MapError::NotANumber {
            address: address.to_owned(),
            index,
            tag: tag.as_char(),
            value: shown,
        }
    })
}

/// JavaScript truthiness: what a SocketCluster peer means by "true".
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0 && !n.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// The JSON value of a message's arguments: none is `null`, one is that
/// value, several are an array.
pub fn args_to_json(args: &[OscType]) -> Value {
    match args {
        [] => Value::Null,
        [one] => arg_to_json(one),
        many => Value::Array(many.iter().map(arg_to_json).collect()),
    }
}

/// Seconds between the OSC epoch (1900) and the Unix epoch (1970).
const OSC_TO_UNIX_SECONDS: f64 = 2_208_988_800.0;

fn arg_to_json(arg: &OscType) -> Value {
    match arg {
        OscType::Int(i) => Value::from(*i),
        OscType::Long(l) => Value::from(*l),
        OscType::Float(f) => float32_to_json(*f),
        OscType::Double(d) => Number::from_f64(*d).map_or(Value::Null, Value::Number),
        OscType::String(s) => Value::String(s.clone()),
        OscType::Char(c) => Value::String(c.to_string()),
        OscType::Bool(b) => Value::Bool(*b),
        OscType::Nil | OscType::Inf => Value::Null,
        // SocketCluster's own convention for binary data inside JSON.
        OscType::Blob(bytes) => serde_json::json!({
            "base64": true,
            "data": base64::engine::general_purpose::STANDARD.encode(bytes),
        }),
        OscType::Time(time) => {
            let seconds = f64::from(time.seconds) - OSC_TO_UNIX_SECONDS
                + f64::from(time.fractional) / 4_294_967_296.0;
            Number::from_f64(seconds).map_or(Value::Null, Value::Number)
        }
        OscType::Color(c) => Value::from(vec![c.red, c.green, c.blue, c.alpha]),
        OscType::Midi(m) => Value::from(vec![m.port, m.status, m.data1, m.data2]),
        OscType::Array(array) => Value::Array(array.content.iter().map(arg_to_json).collect()),
    }
}

/// The shortest decimal that reads back as the same f32, so a float32 0.1
/// becomes JSON 0.1 rather than 0.10000000149011612.
fn float32_to_json(f: f32) -> Value {
    if !f.is_finite() {
        return Value::Null;
    }
    // Rust prints floats as the shortest text that round-trips their own type.
    let shortest = format!("{f:e}").parse::<f64>().unwrap_or(f64::from(f));
    Number::from_f64(shortest).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rosc::{OscArray, OscColor, OscMidiMessage, OscTime};
    use serde_json::json;

    fn msg(addr: &str, args: Vec<OscType>) -> OscMessage {
        OscMessage { addr: addr.into(), args }
    }

    fn out(address: &str, value: Value, options: &OscOutOptions) -> Vec<OscMessage> {
        to_osc(address, &Body::Value(value), options).expect("maps")
    }

    fn with_types(types: &str) -> OscOutOptions {
        OscOutOptions {
            types: Some(OscOutOptions::parse_types(types).expect("valid types")),
            ..OscOutOptions::default()
        }
    }

    #[test]
    fn numbers_go_out_as_float32_by_default() {
        let options = OscOutOptions::default();
        assert_eq!(out("/a", json!(0.5), &options), vec![msg("/a", vec![OscType::Float(0.5)])]);
        assert_eq!(out("/a", json!(3), &options), vec![msg("/a", vec![OscType::Float(3.0)])]);
    }

    #[test]
    fn float32_saturates_beyond_its_range() {
        let options = OscOutOptions::default();
        assert_eq!(
            out("/a", json!(1e300), &options),
            vec![msg("/a", vec![OscType::Float(f32::MAX)])]
        );
    }

    #[test]
    fn int32_rounds_and_saturates() {
        let options = OscOutOptions { numbers: NumberType::Int32, ..OscOutOptions::default() };
        assert_eq!(out("/a", json!(2.5), &options), vec![msg("/a", vec![OscType::Int(3)])]);
        assert_eq!(out("/a", json!(-2.4), &options), vec![msg("/a", vec![OscType::Int(-2)])]);
        assert_eq!(out("/a", json!(1e12), &options), vec![msg("/a", vec![OscType::Int(i32::MAX)])]);
        assert_eq!(
            out("/a", json!(-5_000_000_000i64), &options),
            vec![msg("/a", vec![OscType::Int(i32::MIN)])]
        );
    }

    #[test]
    fn double_keeps_the_full_value() {
        let options = OscOutOptions { numbers: NumberType::Double, ..OscOutOptions::default() };
        assert_eq!(out("/a", json!(0.1), &options), vec![msg("/a", vec![OscType::Double(0.1)])]);
    }

    #[test]
    fn booleans_are_one_and_zero_in_the_number_type_by_default() {
        let options = OscOutOptions::default();
        assert_eq!(
            out("/a", json!([true, false]), &options),
            vec![msg("/a", vec![OscType::Float(1.0), OscType::Float(0.0)])]
        );
        let ints = OscOutOptions { numbers: NumberType::Int32, ..OscOutOptions::default() };
        assert_eq!(out("/a", json!(true), &ints), vec![msg("/a", vec![OscType::Int(1)])]);
    }

    #[test]
    fn booleans_can_go_out_as_true_false_tags() {
        let options = OscOutOptions { bools: BoolStyle::TrueFalse, ..OscOutOptions::default() };
        assert_eq!(
            out("/a", json!([true, false]), &options),
            vec![msg("/a", vec![OscType::Bool(true), OscType::Bool(false)])]
        );
    }

    #[test]
    fn strings_go_out_as_strings() {
        assert_eq!(
            out("/a", json!("hi"), &OscOutOptions::default()),
            vec![msg("/a", vec![OscType::String("hi".into())])]
        );
    }

    #[test]
    fn null_is_nil_by_default_and_can_be_omitted() {
        assert_eq!(
            out("/a", json!(null), &OscOutOptions::default()),
            vec![msg("/a", vec![OscType::Nil])]
        );
        let omit = OscOutOptions { null: NullStyle::Omit, ..OscOutOptions::default() };
        assert_eq!(out("/a", json!(null), &omit), vec![msg("/a", vec![])]);
        assert_eq!(
            out("/a", json!([1, null, 2]), &omit),
            vec![msg("/a", vec![OscType::Float(1.0), OscType::Float(2.0)])]
        );
    }

    #[test]
    fn arrays_become_several_arguments_with_nested_arrays_flattened() {
        assert_eq!(
            out("/a", json!([1, [2, [3]], "x", null]), &OscOutOptions::default()),
            vec![msg(
                "/a",
                vec![
                    OscType::Float(1.0),
                    OscType::Float(2.0),
                    OscType::Float(3.0),
                    OscType::String("x".into()),
                    OscType::Nil,
                ]
            )]
        );
        assert_eq!(out("/a", json!([]), &OscOutOptions::default()), vec![msg("/a", vec![])]);
    }

    #[test]
    fn an_object_inside_an_array_becomes_a_json_string() {
        assert_eq!(
            out("/a", json!([1, {"k": [true]}]), &OscOutOptions::default()),
            vec![msg("/a", vec![OscType::Float(1.0), OscType::String(r#"{"k":[true]}"#.into())])]
        );
    }

    #[test]
    fn objects_split_into_one_message_per_leaf_with_nested_addresses() {
        let value = json!({"x": 0.5, "pos": {"y": 1, "deep": {"z": [1, 2]}}, "empty": {}});
        assert_eq!(
            out("/obj", value, &OscOutOptions::default()),
            vec![
                msg("/obj/pos/deep/z", vec![OscType::Float(1.0), OscType::Float(2.0)]),
                msg("/obj/pos/y", vec![OscType::Float(1.0)]),
                msg("/obj/x", vec![OscType::Float(0.5)]),
            ]
        );
    }

    #[test]
    fn split_keys_keep_slashes_and_lose_characters_osc_forbids() {
        let value = json!({"a/b": 1, "my key#1*?,[]{}": 2, "": 3});
        let addresses: Vec<String> =
            out("/o/", value, &OscOutOptions::default()).into_iter().map(|m| m.addr).collect();
        assert_eq!(addresses, vec!["/o/_", "/o/a/b", "/o/my_key_1_______"]);
    }

    #[test]
    fn slashes_at_the_ends_of_a_key_separate_and_an_empty_level_becomes_an_underscore() {
        let value = json!({"/fader1": 1, "x/": 2, "a//b": 3, "/": 4});
        let addresses: Vec<String> =
            out("/td", value, &OscOutOptions::default()).into_iter().map(|m| m.addr).collect();
        assert_eq!(addresses, vec!["/td/_", "/td/fader1", "/td/a/_/b", "/td/x"]);
        assert!(addresses.iter().all(|a| !a.contains("//")));
    }

    #[test]
    fn an_object_splits_into_at_most_the_message_limit() {
        let leaves = |n: usize| Value::Object((0..n).map(|i| (i.to_string(), json!(0))).collect());
        let at_limit = to_osc("/o", &Body::Value(leaves(MAX_SPLIT_MESSAGES)), &Default::default());
        assert_eq!(at_limit.map(|messages| messages.len()), Ok(MAX_SPLIT_MESSAGES));
        assert_eq!(
            to_osc("/o", &Body::Value(leaves(MAX_SPLIT_MESSAGES + 1)), &Default::default()),
            Err(MapError::SplitTooLarge { address: "/o".into() })
        );
    }

    #[test]
    fn a_long_key_above_many_leaves_is_refused_before_its_addresses_are_built() {
        // 100 leaves under a 20 kB key would build 2 MB of addresses.
        let leaves: Map<String, Value> = (0..100).map(|i| (i.to_string(), json!(0))).collect();
        let value = json!({ "k".repeat(20_000): leaves });
        assert_eq!(
            to_osc("/o", &Body::Value(value), &Default::default()),
            Err(MapError::SplitTooLarge { address: "/o".into() })
        );
    }

    #[test]
    fn an_address_no_datagram_can_carry_is_refused() {
        let long = format!("/{}", "é".repeat(40_000));
        let err = to_osc(&long, &Body::Trigger, &Default::default()).unwrap_err();
        assert!(matches!(&err, MapError::AddressTooLong { bytes: 80_001, .. }), "{err}");
        // The longest address whose message, NUL and padding and type tags
        // included, still fits in one datagram.
        let longest = format!("/{}", "a".repeat(65_498));
        let fits = to_osc(&longest, &Body::Trigger, &Default::default()).expect("fits");
        let packet = rosc::OscPacket::Message(fits.into_iter().next().expect("one message"));
        assert!(rosc::encoder::encode(&packet).expect("encodes").len() <= MAX_UDP_PAYLOAD);
        let one_more = format!("{longest}a");
        assert!(to_osc(&one_more, &Body::Trigger, &Default::default()).is_err());
        let key = json!({ "x".repeat(70_000): 1 });
        let err = to_osc("/o", &Body::Value(key), &Default::default()).unwrap_err();
        assert!(matches!(err, MapError::AddressTooLong { bytes: 70_003, .. }));
    }

    #[test]
    fn an_empty_object_yields_no_message() {
        assert_eq!(out("/o", json!({}), &OscOutOptions::default()), vec![]);
    }

    #[test]
    fn objects_can_go_out_as_one_json_string() {
        let options = OscOutOptions { objects: ObjectStyle::Json, ..OscOutOptions::default() };
        assert_eq!(
            out("/o", json!({"b": 1, "a": [null]}), &options),
            vec![msg("/o", vec![OscType::String(r#"{"a":[null],"b":1}"#.into())])]
        );
    }

    #[test]
    fn a_trigger_has_no_arguments_by_default() {
        assert_eq!(
            to_osc("/go", &Body::Trigger, &OscOutOptions::default()).expect("maps"),
            vec![msg("/go", vec![])]
        );
    }

    #[test]
    fn a_trigger_can_carry_a_one_in_the_number_type() {
        let options = OscOutOptions {
            trigger: TriggerStyle::One,
            numbers: NumberType::Int32,
            ..OscOutOptions::default()
        };
        assert_eq!(
            to_osc("/go", &Body::Trigger, &options).expect("maps"),
            vec![msg("/go", vec![OscType::Int(1)])]
        );
        let floats = OscOutOptions { trigger: TriggerStyle::One, ..OscOutOptions::default() };
        assert_eq!(
            to_osc("/go", &Body::Trigger, &floats).expect("maps"),
            vec![msg("/go", vec![OscType::Float(1.0)])]
        );
    }

    #[test]
    fn fixed_types_coerce_each_argument() {
        assert_eq!(
            out(
                "/a",
                json!([1.6, "2.5", true, 7, null, 0, "12345678901234567"]),
                &with_types("ifsTNFh")
            ),
            vec![msg(
                "/a",
                vec![
                    OscType::Int(2),
                    OscType::Float(2.5),
                    OscType::String("true".into()),
                    OscType::Bool(true),
                    OscType::Nil,
                    OscType::Bool(false),
                    OscType::Long(12_345_678_901_234_567),
                ]
            )]
        );
        assert_eq!(
            out("/a", json!(" 3 "), &with_types("d")),
            vec![msg("/a", vec![OscType::Double(3.0)])]
        );
        assert_eq!(
            out("/a", json!(false), &with_types("f")),
            vec![msg("/a", vec![OscType::Float(0.0)])]
        );
    }

    #[test]
    fn fixed_bool_follows_javascript_truthiness() {
        assert_eq!(
            out("/a", json!(["", "0", 0.0, 2, null, [1]]), &with_types("TTTTTT")),
            vec![msg(
                "/a",
                vec![
                    OscType::Bool(false),
                    OscType::Bool(true),
                    OscType::Bool(false),
                    OscType::Bool(true),
                    OscType::Bool(false),
                    OscType::Bool(true),
                ]
            )]
        );
    }

    #[test]
    fn fixed_string_takes_the_plain_string_or_the_json_text() {
        assert_eq!(
            out("/a", json!(["hi", 1.5, null]), &with_types("sss")),
            vec![msg(
                "/a",
                vec![
                    OscType::String("hi".into()),
                    OscType::String("1.5".into()),
                    OscType::String("null".into()),
                ]
            )]
        );
    }

    #[test]
    fn fixed_types_apply_to_each_split_message() {
        assert_eq!(
            out("/o", json!({"a": 1.2, "b": "2"}), &with_types("i")),
            vec![msg("/o/a", vec![OscType::Int(1)]), msg("/o/b", vec![OscType::Int(2)])]
        );
        let err = to_osc("/o", &Body::Value(json!({"a": 1, "b": [2, 3]})), &with_types("i"));
        assert!(
            matches!(&err, Err(MapError::TypeCount { address, actual: 2, .. })
                if address == "/o/b"),
            "{err:?}"
        );
    }

    #[test]
    fn a_fixed_type_list_of_another_length_is_an_error() {
        let err = to_osc("/a", &Body::Value(json!([1, 2, 3])), &with_types("ff")).unwrap_err();
        assert_eq!(
            err,
            MapError::TypeCount {
                address: "/a".into(),
                types: TypeList(vec![TypeTag::Float32, TypeTag::Float32]),
                expected: 2,
                actual: 3
            }
        );
        assert_eq!(
            err.to_string(),
            "/a: the fixed types \"ff\" need 2 argument(s), the value gives 3"
        );
        let trigger = to_osc("/t", &Body::Trigger, &with_types("f")).unwrap_err();
        assert!(matches!(trigger, MapError::TypeCount { expected: 1, actual: 0, .. }), "{trigger}");
    }

    #[test]
    fn a_string_that_is_no_number_cannot_take_a_numeric_tag() {
        let err = to_osc("/a", &Body::Value(json!([1, "loud"])), &with_types("fi")).unwrap_err();
        assert_eq!(
            err,
            MapError::NotANumber {
                address: "/a".into(),
                index: 1,
                tag: 'i',
                value: "\"loud\"".into()
            }
        );
        for bad in [json!(null), json!("NaN"), json!("inf"), json!([{"a": 1}])] {
            assert!(to_osc("/a", &Body::Value(bad.clone()), &with_types("f")).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_address_without_a_leading_slash_is_an_error() {
        assert_eq!(
            to_osc("a/b", &Body::Trigger, &OscOutOptions::default()),
            Err(MapError::Address("a/b".into()))
        );
    }

    #[test]
    fn type_lists_parse_and_name_a_bad_character() {
        assert_eq!(
            OscOutOptions::parse_types("ifdhsTFN"),
            Ok(vec![
                TypeTag::Int32,
                TypeTag::Float32,
                TypeTag::Double,
                TypeTag::Int64,
                TypeTag::String,
                TypeTag::Bool,
                TypeTag::Bool,
                TypeTag::Nil,
            ])
        );
        let err = OscOutOptions::parse_types("ffx").unwrap_err();
        assert!(err.starts_with("'x' (character 3) is not a type tag"), "{err}");
        assert!(OscOutOptions::parse_types("").is_err());
    }

    #[test]
    fn no_argument_is_null_one_is_a_scalar_several_are_an_array() {
        assert_eq!(args_to_json(&[]), json!(null));
        assert_eq!(args_to_json(&[OscType::Int(7)]), json!(7));
        assert_eq!(
            args_to_json(&[OscType::Int(7), OscType::String("s".into()), OscType::Bool(false)]),
            json!([7, "s", false])
        );
    }

    #[test]
    fn float32_becomes_the_shortest_decimal_that_round_trips() {
        assert_eq!(args_to_json(&[OscType::Float(0.1)]), json!(0.1));
        assert_eq!(args_to_json(&[OscType::Float(0.1)]).to_string(), "0.1");
        assert_eq!(args_to_json(&[OscType::Float(-1.5e-7)]), json!(-1.5e-7));
        assert_eq!(args_to_json(&[OscType::Float(16_777_216.0)]), json!(16_777_216.0));
        assert_eq!(args_to_json(&[OscType::Float(1e30)]), json!(1e30));
    }

    #[test]
    fn not_a_number_and_infinity_become_null() {
        assert_eq!(
            args_to_json(&[
                OscType::Float(f32::NAN),
                OscType::Double(f64::NAN),
                OscType::Double(f64::INFINITY),
                OscType::Float(f32::NEG_INFINITY),
                OscType::Inf,
                OscType::Nil,
            ]),
            json!([null, null, null, null, null, null])
        );
    }

    #[test]
    fn every_other_osc_type_has_a_json_form() {
        assert_eq!(
            args_to_json(&[
                OscType::Long(-9_000_000_000),
                OscType::Double(0.25),
                OscType::Char('x'),
                OscType::Bool(true),
                OscType::Color(OscColor { red: 1, green: 2, blue: 3, alpha: 4 }),
                OscType::Midi(OscMidiMessage { port: 0, status: 0x90, data1: 60, data2: 127 }),
                OscType::Array(OscArray {
                    content: vec![OscType::Int(1), OscType::Array(OscArray { content: vec![] })]
                }),
            ]),
            json!([-9_000_000_000i64, 0.25, "x", true, [1, 2, 3, 4], [0, 144, 60, 127], [1, []]])
        );
    }

    #[test]
    fn a_blob_becomes_socketclusters_base64_object() {
        assert_eq!(
            args_to_json(&[OscType::Blob(vec![0, 1, 2, 255])]),
            json!({"base64": true, "data": "AAEC/w=="})
        );
    }

    #[test]
    fn a_time_tag_becomes_unix_seconds() {
        let half_past = OscTime { seconds: 2_208_988_800 + 10, fractional: 1 << 31 };
        assert_eq!(args_to_json(&[OscType::Time(half_past)]), json!(10.5));
    }

    #[test]
    fn option_names_read_from_config_text() {
        #[derive(serde::Deserialize)]
        struct Names {
            numbers: NumberType,
            bools: BoolStyle,
            null: NullStyle,
            objects: ObjectStyle,
            trigger: TriggerStyle,
        }
        let names: Names = serde_json::from_value(json!({
            "numbers": "int32", "bools": "true_false", "null": "omit",
            "objects": "json", "trigger": "one"
        }))
        .expect("known names");
        assert_eq!(names.numbers, NumberType::Int32);
        assert_eq!(names.bools, BoolStyle::TrueFalse);
        assert_eq!(names.null, NullStyle::Omit);
        assert_eq!(names.objects, ObjectStyle::Json);
        assert_eq!(names.trigger, TriggerStyle::One);
    }
}
