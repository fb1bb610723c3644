//! SocketCluster wire codec: text frames to typed packets and back.
//!
//! Pure functions, no sockets. Pings are recognised on the raw text before any
//! JSON decoding, because the protocol v2 ping is an empty frame, which is not
//! JSON. A frame may hold one packet (a JSON object) or a batch (a JSON array
//! of packets); every element of a batch is decoded on its own so that one bad
//! element does not spoil the others.

use serde::Serialize;
use serde_json::Value;

/// The protocol version spoken on the link. It decides the ping/pong tokens
/// and nothing else: every other frame is identical in v1 and v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// SocketCluster <= 14: ping `#1`, pong `#2`.
    V1,
    /// SocketCluster >= 15 (the default): ping and pong are empty frames.
    #[default]
    V2,
}

impl Protocol {
    /// The pong that answers this version's ping.
    pub fn pong(self) -> &'static str {
        match self {
            Protocol::V1 => "#2",
            Protocol::V2 => "",
        }
    }

    /// The number users write in the config (`protocol = 1` or `2`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::V1 => 1,
            Protocol::V2 => 2,
        }
    }
}

/// A ping frame, and which protocol version's token it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping(pub Protocol);

/// Recognises a server ping from the raw frame text, before JSON decoding.
///
/// Both tokens are recognised whatever the configured version is, so that a
/// mismatched `protocol` setting costs a warning instead of a dead link.
pub fn ping_token(text: &str) -> Option<Ping> {
    match text {
        "" => Some(Ping(Protocol::V2)),
        "#1" => Some(Ping(Protocol::V1)),
        _ => None,
    }
}

/// One decoded packet from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    /// An event: a transmit when `cid` is `None`, an invoke otherwise.
    Event { event: String, data: Option<Value>, cid: Option<u64> },
    /// The reply to one of our invokes, matched by `rid` alone.
    Response { rid: u64, result: Result<Option<Value>, RemoteError> },
}

/// An error reply from the other side. The wire allows any JSON here; `name`
/// and `message` are read when present and the raw value is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteError {
    pub name: Option<String>,
    pub message: Option<String>,
    pub raw: Value,
}

impl RemoteError {
    /// Reads `name` and `message` from whatever JSON the server sent.
    pub fn from_value(raw: Value) -> Self {
        let field = |key: &str| raw.get(key).and_then(Value::as_str).map(str::to_owned);
        let (name, message) = match &raw {
            Value::String(text) => (None, Some(text.clone())),
            _ => (field("name"), field("message")),
        };
        RemoteError { name, message, raw }
    }
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.name, &self.message) {
            (Some(name), Some(message)) => write!(f, "{name}: {message}"),
            (Some(name), None) => f.write_str(name),
            (None, Some(message)) => f.write_str(message),
            (None, None) => write!(f, "{}", self.raw),
        }
    }
}

/// Why a frame, or one element of a batch, could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not JSON: {0}")]
    NotJson(String),
    #[error("packet is neither an event nor a response: {0}")]
    NotAPacket(String),
}

/// What one incoming text frame holds.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Ping(Ping),
    /// One packet, or every element of a batch in order; elements that failed
    /// to decode are reported in place so the caller can count them.
    Packets(Vec<Result<Packet, DecodeError>>),
}

/// Decodes one text frame from the server.
pub fn decode(text: &str) -> Frame {
    if let Some(ping) = ping_token(text) {
        return Frame::Ping(ping);
    }
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(err) => return Frame::Packets(vec![Err(DecodeError::NotJson(err.to_string()))]),
    };
    match value {
        Value::Array(items) => Frame::Packets(items.into_iter().map(packet_from_value).collect()),
        other => Frame::Packets(vec![packet_from_value(other)]),
    }
}

/// Reads a packet's fields straight out of its JSON object (no copy).
/// Unknown fields are ignored, as the server ignores them too; a present
/// `data: null` stays `Some(Value::Null)`, distinct from no `data` key, as
/// it is on the wire.
fn packet_from_value(value: Value) -> Result<Packet, DecodeError> {
    let Value::Object(mut fields) = value else {
        return Err(DecodeError::NotAPacket(truncated(&value)));
    };
    let event = fields.remove("event");
    let data = fields.remove("data");
    match event {
        Some(Value::String(event)) => {
            // A cid that is not a non-negative integer makes the packet a
            // transmit, exactly as the server treats it.
            let cid = fields.get("cid").and_then(Value::as_u64);
            return Ok(Packet::Event { event, data, cid });
        }
        // Not an event; kept so an error shows the packet whole.
        Some(other) => {
            fields.insert("event".into(), other);
        }
        None => {}
    }
    if let Some(rid) = fields.get("rid").and_then(Value::as_u64) {
        // `"error": null` is no error, as socketcluster-client reads it.
        let result = match fields.remove("error") {
            Some(error) if !error.is_null() => Err(RemoteError::from_value(error)),
            _ => Ok(data),
        };
        return Ok(Packet::Response { rid, result });
    }
    if let Some(data) = data {
        fields.insert("data".into(), data);
    }
    Err(DecodeError::NotAPacket(truncated(&Value::Object(fields))))
}

fn truncated(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > 120 {
        let mut cut = 120;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[derive(Serialize)]
struct OutEvent<'a, D: Serialize> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cid: Option<u64>,
}

/// Encodes an event: a transmit without `cid`, an invoke with one.
pub fn encode_event<D: Serialize>(event: &str, data: Option<D>, cid: Option<u64>) -> String {
    let packet = OutEvent { event, data, cid };
    // Serialising plain structs of strings, numbers and `serde_json::Value`
    // cannot fail; an empty object is the harmless fallback all the same.
    serde_json::to_string(&packet).unwrap_or_else(|_| String::from("{}"))
}

/// The `data` of a `#publish` packet.
#[derive(Serialize)]
pub struct PublishData<'a> {
    pub channel: &'a str,
    pub data: &'a Value,
}

/// Encodes a `#publish` event; with a cid it is an invoke the server acks.
pub fn encode_publish(channel: &str, data: &Value, cid: Option<u64>) -> String {
    encode_event("#publish", Some(PublishData { channel, data }), cid)
}

/// The handshake: always an invoke (a cid-less handshake is closed with 4008).
pub fn encode_handshake(auth_token: Option<&str>, cid: u64) -> String {
    #[derive(Serialize)]
    struct HandshakeData<'a> {
        #[serde(rename = "authToken")]
        auth_token: Option<&'a str>,
    }
    encode_event("#handshake", Some(HandshakeData { auth_token }), Some(cid))
}

/// A `#subscribe` invoke. It must carry a cid: the server ignores one without.
pub fn encode_subscribe(channel: &str, wait_for_auth: bool, cid: u64) -> String {
    #[derive(Serialize)]
    struct SubscribeData<'a> {
        channel: &'a str,
        #[serde(rename = "waitForAuth", skip_serializing_if = "std::ops::Not::not")]
        wait_for_auth: bool,
    }
    encode_event("#subscribe", Some(SubscribeData { channel, wait_for_auth }), Some(cid))
}

/// A `#unsubscribe` transmit; its data is the bare channel name.
pub fn encode_unsubscribe(channel: &str) -> String {
    encode_event("#unsubscribe", Some(channel), None)
}

/// A successful reply to one of the server's invokes.
pub fn encode_response(rid: u64, data: Option<&Value>) -> String {
    #[derive(Serialize)]
    struct OutResponse<'a> {
        rid: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a Value>,
    }
    serde_json::to_string(&OutResponse { rid, data }).unwrap_or_else(|_| String::from("{}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn single(text: &str) -> Packet {
        match decode(text) {
            Frame::Packets(mut packets) if packets.len() == 1 => {
                packets.remove(0).expect("packet decodes")
            }
            other => panic!("expected one packet, got {other:?}"),
        }
    }

    #[test]
    fn both_ping_tokens_are_recognised_before_json() {
        assert_eq!(decode(""), Frame::Ping(Ping(Protocol::V2)));
        assert_eq!(decode("#1"), Frame::Ping(Ping(Protocol::V1)));
        assert_eq!(Protocol::V1.pong(), "#2");
        assert_eq!(Protocol::V2.pong(), "");
    }

    #[test]
    fn handshake_reply_is_a_response_with_data() {
        let packet = single(
            r#"{"rid":1,"data":{"id":"BfK_uCkz7b3RSGhuAAAA","pingTimeout":30000,"isAuthenticated":false}}"#,
        );
        let Packet::Response { rid: 1, result: Ok(Some(data)) } = packet else {
            panic!("not a handshake reply: {packet:?}");
        };
        assert_eq!(data["pingTimeout"], 30000);
    }

    #[test]
    fn ack_without_data_keeps_data_absent() {
        assert_eq!(single(r#"{"rid":5}"#), Packet::Response { rid: 5, result: Ok(None) });
    }

    #[test]
    fn publish_push_with_null_data_keeps_the_null() {
        let packet = single(r##"{"event":"#publish","data":{"channel":"a","data":null}}"##);
        let Packet::Event { data: Some(data), cid: None, .. } = packet else {
            panic!("{packet:?}");
        };
        assert_eq!(data, json!({"channel": "a", "data": null}));
    }

    #[test]
    fn server_invoke_in_any_key_order_has_its_cid() {
        let packet = single(r#"{"event":"hello","cid":1,"data":{"q":42}}"#);
        assert_eq!(
            packet,
            Packet::Event { event: "hello".into(), data: Some(json!({"q": 42})), cid: Some(1) }
        );
    }

    #[test]
    fn a_string_cid_makes_a_transmit() {
        let packet = single(r#"{"event":"x","cid":"1"}"#);
        assert_eq!(packet, Packet::Event { event: "x".into(), data: None, cid: None });
    }

    #[test]
    fn free_form_errors_keep_name_message_or_raw_value() {
        let packet =
            single(r#"{"rid":5,"error":{"message":"fail requested","name":"CustomError"}}"#);
        let Packet::Response { result: Err(err), .. } = packet else { panic!() };
        assert_eq!(err.to_string(), "CustomError: fail requested");
        let Packet::Response { result: Err(err), .. } = single(r#"{"rid":6,"error":"nope"}"#)
        else {
            panic!()
        };
        assert_eq!(err.to_string(), "nope");
        let Packet::Response { result: Err(err), .. } = single(r#"{"rid":7,"error":42}"#) else {
            panic!()
        };
        assert_eq!(err.to_string(), "42");
    }

    #[test]
    fn a_batch_decodes_element_by_element_and_reports_bad_elements_in_place() {
        let Frame::Packets(packets) =
            decode(r##"[{"rid":2},42,{"event":"#publish","data":{"channel":"bat","data":2}}]"##)
        else {
            panic!()
        };
        assert_eq!(packets.len(), 3);
        assert!(packets[0].is_ok());
        assert!(matches!(packets[1], Err(DecodeError::NotAPacket(_))));
        assert!(packets[2].is_ok());
    }

    #[test]
    fn a_packet_that_is_neither_is_shown_whole_in_its_error() {
        let Frame::Packets(packets) = decode(r#"{"event":42,"data":{"a":1},"x":true}"#) else {
            panic!()
        };
        assert_eq!(
            packets,
            vec![Err(DecodeError::NotAPacket(r#"{"data":{"a":1},"event":42,"x":true}"#.into()))]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "{not json",
            "plain text",
            "\"a json string\"",
            "{\"foo\":1}",
            "{\"event\":42}",
            "null",
            "[]x",
        ] {
            match decode(text) {
                Frame::Packets(packets) => {
                    assert!(packets.iter().all(Result::is_err), "{text} decoded: {packets:?}")
                }
                Frame::Ping(_) => panic!("{text} taken for a ping"),
            }
        }
    }

    #[test]
    fn encoded_frames_match_what_the_js_client_sends() {
        assert_eq!(
            encode_handshake(None, 1),
            r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##
        );
        assert_eq!(
            encode_subscribe("chB", true, 3),
            r##"{"event":"#subscribe","data":{"channel":"chB","waitForAuth":true},"cid":3}"##
        );
        assert_eq!(
            encode_subscribe("chA", false, 2),
            r##"{"event":"#subscribe","data":{"channel":"chA"},"cid":2}"##
        );
        assert_eq!(
            encode_publish("chA", &json!("plain string"), None),
            r##"{"event":"#publish","data":{"channel":"chA","data":"plain string"}}"##
        );
        assert_eq!(encode_unsubscribe("chA"), r##"{"event":"#unsubscribe","data":"chA"}"##);
        assert_eq!(encode_response(1, Some(&json!("hi back"))), r#"{"rid":1,"data":"hi back"}"#);
        assert_eq!(encode_response(2, None), r#"{"rid":2}"#);
    }
}
