//! MQTT payload bytes ⇄ JSON values. Pure: no I/O, no state.
//!
//! Outgoing, a route picks a [`PayloadFormat`]; incoming, [`decode`] takes
//! JSON when the payload is JSON and plain text otherwise, so both
//! `{"on":true}` and `ON` from a device reach the router as something useful.

use base64::Engine as _;
use serde_json::Value;

use crate::message::Body;

/// How a value is written into an MQTT payload; in a route,
/// `payload = "auto" | "json" | "text"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// Objects and arrays as JSON text; scalars as plain text: strings
    /// unquoted, numbers and booleans as their JSON text, null as an empty
    /// payload. What most MQTT devices and dashboards expect.
    #[default]
    Auto,
    /// Always JSON text, so strings keep their quotes and null is `null`.
    Json,
    /// Plain text; objects and arrays, which have no plain form, fall back
    /// to JSON text. Gives the same bytes as `Auto` for every value; it
    /// states in the route that the topic carries text.
    Text,
}

/// The payload for `body`. A [`Body::Trigger`] carries nothing: a route that
/// wants the trigger's name on the wire hands it over as a string value.
pub fn encode(body: &Body, format: PayloadFormat) -> Vec<u8> {
    let value = match body {
        Body::Trigger => return Vec::new(),
        Body::Value(value) => value,
    };
    match (format, value) {
        (PayloadFormat::Json, value) => json_text(value),
        (PayloadFormat::Auto | PayloadFormat::Text, Value::String(text)) => {
            text.as_bytes().to_vec()
        }
        (PayloadFormat::Auto | PayloadFormat::Text, Value::Null) => Vec::new(),
        // Numbers, booleans, objects and arrays: their JSON text.
        (PayloadFormat::Auto | PayloadFormat::Text, value) => json_text(value),
    }
}

fn json_text(value: &Value) -> Vec<u8> {
    // Serialising a `Value` into memory cannot fail: its keys are strings
    // and its numbers are finite by construction.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The value of an incoming payload:
/// - empty → `null`;
/// - JSON text (`{"a":1}`, `12.5`, `true`, `"quoted"`) → that JSON;
/// - any other UTF-8 text → a string;
/// - anything else (binary) → `{"base64": true, "data": "<standard base64>"}`,
///   so no byte is lost or replaced.
pub fn decode(payload: &[u8]) -> Value {
    if payload.is_empty() {
        return Value::Null;
    }
    match std::str::from_utf8(payload) {
        Ok(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned())),
        Err(_) => serde_json::json!({
            "base64": true,
            "data": base64::engine::general_purpose::STANDARD.encode(payload),
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn auto(value: Value) -> String {
        String::from_utf8(encode(&Body::Value(value), PayloadFormat::Auto)).expect("utf-8")
    }

    fn as_json(value: Value) -> String {
        String::from_utf8(encode(&Body::Value(value), PayloadFormat::Json)).expect("utf-8")
    }

    fn as_text(value: Value) -> String {
        String::from_utf8(encode(&Body::Value(value), PayloadFormat::Text)).expect("utf-8")
    }

    #[test]
    fn auto_writes_objects_and_arrays_as_json_and_scalars_as_text() {
        assert_eq!(auto(json!({"a": 1, "b": [true, null]})), r#"{"a":1,"b":[true,null]}"#);
        assert_eq!(auto(json!([1, "x"])), r#"[1,"x"]"#);
        assert_eq!(auto(json!("hello world")), "hello world");
        assert_eq!(auto(json!(12.5)), "12.5");
        assert_eq!(auto(json!(-3)), "-3");
        assert_eq!(auto(json!(true)), "true");
        assert_eq!(auto(json!(null)), "");
    }

    #[test]
    fn json_quotes_strings_and_spells_out_null() {
        assert_eq!(as_json(json!("hello")), r#""hello""#);
        assert_eq!(as_json(json!(null)), "null");
        assert_eq!(as_json(json!(7)), "7");
        assert_eq!(as_json(json!({"k": "v"})), r#"{"k":"v"}"#);
    }

    #[test]
    fn text_falls_back_to_json_for_objects_and_arrays() {
        assert_eq!(as_text(json!("ON")), "ON");
        assert_eq!(as_text(json!(false)), "false");
        assert_eq!(as_text(json!({"k": 1})), r#"{"k":1}"#);
        assert_eq!(as_text(json!([1, 2])), "[1,2]");
    }

    #[test]
    fn a_trigger_has_an_empty_payload_in_every_format() {
        for format in [PayloadFormat::Auto, PayloadFormat::Json, PayloadFormat::Text] {
            assert!(encode(&Body::Trigger, format).is_empty());
        }
    }

    #[test]
    fn json_payloads_decode_to_their_value() {
        assert_eq!(decode(br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(decode(b"12.5"), json!(12.5));
        assert_eq!(decode(b"true"), json!(true));
        assert_eq!(decode(br#""quoted""#), json!("quoted"));
        assert_eq!(decode(b" [1, 2] \n"), json!([1, 2]));
        assert_eq!(decode(b"null"), Value::Null);
    }

    #[test]
    fn other_text_decodes_to_a_string() {
        assert_eq!(decode(b"ON"), json!("ON"));
        assert_eq!(decode(b"not json {"), json!("not json {"));
        assert_eq!(decode("grüße".as_bytes()), json!("grüße"));
        assert_eq!(decode(b"NaN"), json!("NaN"));
    }

    #[test]
    fn the_format_reads_from_lowercase_names() {
        #[derive(serde::Deserialize)]
        struct Route {
            payload: PayloadFormat,
        }
        for (name, format) in [
            ("auto", PayloadFormat::Auto),
            ("json", PayloadFormat::Json),
            ("text", PayloadFormat::Text),
        ] {
            let route: Route =
                serde_json::from_value(json!({ "payload": name })).expect("known format");
            assert_eq!(route.payload, format);
        }
        assert!(serde_json::from_value::<Route>(json!({"payload": "JSON"})).is_err());
    }

    #[test]
    fn an_empty_payload_is_null() {
        assert_eq!(decode(b""), Value::Null);
    }

    #[test]
    fn binary_payloads_are_carried_as_base64() {
        assert_eq!(decode(&[0xff, 0xfe, 0x00, 0x80]), json!({"base64": true, "data": "//4AgA=="}));
    }

    #[test]
    fn what_auto_writes_decodes_back_for_objects_numbers_and_plain_strings() {
        for value in [json!({"x": [1, 2.5, "s"]}), json!(42), json!(false), json!("plain words")] {
            let bytes = encode(&Body::Value(value.clone()), PayloadFormat::Auto);
            assert_eq!(decode(&bytes), value);
        }
    }
}
