//! cables.gl envelopes. Any JSON on any of the cables channels is taken
//! apart without a panic and the Allow Send arbitration stays consistent;
//! an envelope from another client comes back with its topic and payload.
//!
//! Input: a flags byte and a client id, then publishes, each a channel
//! choice and JSON text; the last one is also sent through the round trip.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use scbridge::cables::{Cables, CablesConfig, Received};
use scbridge::message::{Message, SourceKind};
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let flags: u8 = u.arbitrary()?;
    let client_id: &str = u.arbitrary()?;
    let client_id = if client_id.is_empty() { "me" } else { client_id };
    let config = CablesConfig {
        channel: "show".into(),
        client_id: client_id.to_owned(),
        receive_own: flags & 1 == 1,
        allow_send: flags & 2 == 2,
        allow_multiple_senders: flags & 4 == 4,
        extra: Map::new(),
    };
    let mut cables = Cables::new(config.clone());
    let channels = ["show/objects", "show/triggers", "show/control", "show"];
    let mut last = Value::Null;
    while !u.is_empty() {
        let which = u.choose_index(channels.len())?;
        let text: &str = u.arbitrary()?;
        let Ok(value) = serde_json::from_str::<Value>(text) else { continue };
        last = value.clone();
        let received = cables.receive(channels[which], value.clone());
        let fits = match which {
            0 | 1 => matches!(
                received,
                Received::Message(_) | Received::OwnEcho | Received::Malformed(_)
            ),
            2 => matches!(
                received,
                Received::Control { .. } | Received::OwnAnnouncement | Received::Malformed(_)
            ),
            _ => received == Received::NotCables(value),
        };
        assert!(fits, "{received:?} on {}", channels[which]);
        if let Received::Control { from, .. } = &received {
            assert_ne!(from, client_id);
        }
        if config.allow_multiple_senders {
            assert_eq!(cables.silenced_by(), None);
        }
        assert_eq!(cables.can_send(), config.allow_send && cables.silenced_by().is_none());
    }

    // Another client's envelope, whatever its topic and payload, comes back whole.
    let other = Cables::new(CablesConfig { client_id: format!("{client_id}-other"), ..config });
    let topic = last.get("topic").and_then(Value::as_str).unwrap_or("t").to_owned();
    let envelope = other.envelope(&topic, last.clone());
    assert_eq!(
        cables.receive("show/objects", envelope),
        Received::Message(Message::value(SourceKind::CablesObject, topic, last))
    );
    Ok(())
}
