//! The cables.gl side of SocketCluster: one cables "Channel" `C` is the
//! SocketCluster channels `C/objects`, `C/triggers` and `C/control`, each
//! message an envelope `{...extra, "topic", "clientId", "payload"}`.
//!
//! Pure: decoding envelopes into [`Message`]s, building envelopes, and the
//! Allow Send / Allow Multiple Senders arbitration, as the cables
//! SocketCluster ops do it.

use serde_json::{Map, Value};

use crate::message::{Message, SourceKind};

/// The topic of the client op's own control messages.
pub const CONTROL_TOPIC: &str = "cablescontrol";

/// The validated `[cables]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct CablesConfig {
    /// The cables "Channel" name.
    pub channel: String,
    /// Our own client id: sent in every envelope; messages carrying it are ours.
    pub client_id: String,
    /// Take in our own messages as the server echoes them (cables' "Receive Own Data").
    pub receive_own: bool,
    /// Send at all (cables' "Allow Send").
    pub allow_send: bool,
    /// Keep sending when another client announces it sends (cables' "Allow Multiple Senders").
    pub allow_multiple_senders: bool,
    /// "Additional serverdata": merged at the top level of every envelope.
    pub extra: Map<String, Value>,
}

/// What one message on a cables channel turned out to be.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// An object or a trigger for the router.
    Message(Message),
    /// Another client's control message: its Allow Send, and whether it
    /// changed our right to send.
    Control { from: String, allow_send: bool, changed: bool },
    /// One of our own messages echoed back by the server.
    OwnEcho,
    /// Our own Allow Send announcement echoed back; nothing to do.
    OwnAnnouncement,
    /// Not an envelope (missing or mistyped keys).
    Malformed(&'static str),
    /// Not one of this cables channel's SocketCluster channels; the data is
    /// handed back untouched.
    NotCables(Value),
}

/// The cables channel state: who may send.
#[derive(Debug)]
pub struct Cables {
    config: CablesConfig,
    objects: String,
    triggers: String,
    control: String,
    /// The client whose `allowSend: true` silenced us, if one did.
    silenced_by: Option<String>,
}

impl Cables {
    pub fn new(config: CablesConfig) -> Self {
        let channel = &config.channel;
        Cables {
            objects: format!("{channel}/objects"),
            triggers: format!("{channel}/triggers"),
            control: format!("{channel}/control"),
            config,
            silenced_by: None,
        }
    }

    pub fn config(&self) -> &CablesConfig {
        &self.config
    }

    /// The SocketCluster channels to subscribe.
    pub fn channels(&self) -> [&str; 3] {
        [&self.objects, &self.triggers, &self.control]
    }

    pub fn objects_channel(&self) -> &str {
        &self.objects
    }

    pub fn triggers_channel(&self) -> &str {
        &self.triggers
    }

    pub fn control_channel(&self) -> &str {
        &self.control
    }

    /// Whether sends go out now (cables' "Can Send").
    pub fn can_send(&self) -> bool {
        self.config.allow_send && self.silenced_by.is_none()
    }

    /// Carries over who silenced us from the state before a reload, when
    /// the channel is the same and we still give way to other senders.
    pub fn keep_arbitration(&mut self, before: &Cables) {
        if before.config.channel == self.config.channel && !self.config.allow_multiple_senders {
            self.silenced_by.clone_from(&before.silenced_by);
        }
    }

    /// Who silenced us, if anyone.
    pub fn silenced_by(&self) -> Option<&str> {
        self.silenced_by.as_deref()
    }

    /// The envelope for a payload on a topic. The three keys win over `extra`.
    pub fn envelope(&self, topic: &str, payload: Value) -> Value {
        let mut fields = self.config.extra.clone();
        fields.insert("topic".into(), Value::String(topic.to_owned()));
        fields.insert("clientId".into(), Value::String(self.config.client_id.clone()));
        fields.insert("payload".into(), payload);
        Value::Object(fields)
    }

    /// Our Allow Send announcement on the control channel. `sends_here`
    /// says whether any route sends to this cables channel: one that only
    /// receives announces `false`, so that it never silences a patch whose
    /// Allow Multiple Senders is off.
    pub fn announcement(&self, sends_here: bool) -> Value {
        let mut payload = Map::new();
        payload.insert("allowSend".into(), Value::Bool(self.config.allow_send && sends_here));
        self.envelope(CONTROL_TOPIC, Value::Object(payload))
    }

    /// Takes apart one publish from SocketCluster.
    pub fn receive(&mut self, channel: &str, data: Value) -> Received {
        let kind = if channel == self.objects {
            SourceKind::CablesObject
        } else if channel == self.triggers {
            SourceKind::CablesTrigger
        } else if channel == self.control {
            return self.receive_control(data);
        } else {
            return Received::NotCables(data);
        };
        let Value::Object(mut envelope) = data else {
            return Received::Malformed("the envelope is not a JSON object");
        };
        let Some(Value::String(client_id)) = envelope.remove("clientId") else {
            return Received::Malformed("the envelope has no clientId string");
        };
        if client_id == self.config.client_id && !self.config.receive_own {
            return Received::OwnEcho;
        }
        let payload = envelope.remove("payload").unwrap_or(Value::Null);
        match kind {
            SourceKind::CablesTrigger => match payload {
                // A named trigger's payload is its name; the topic is the
                // ReceiveTrigger op's own topic.
                Value::String(name) => Received::Message(Message::trigger(kind, name)),
                _ => Received::Malformed("a trigger's payload is not its name as a string"),
            },
            _ => match envelope.remove("topic") {
                Some(Value::String(topic)) => {
                    Received::Message(Message::value(kind, topic, payload))
                }
                _ => Received::Malformed("the envelope has no topic string"),
            },
        }
    }

    fn receive_control(&mut self, data: Value) -> Received {
        let from = data.get("clientId").and_then(Value::as_str);
        let allow_send =
            data.get("payload").and_then(|p| p.get("allowSend")).and_then(Value::as_bool);
        let (Some(from), Some(allow_send)) = (from, allow_send) else {
            return Received::Malformed("a control message without clientId or payload.allowSend");
        };
        if from == self.config.client_id {
            return Received::OwnAnnouncement;
        }
        let before = self.can_send();
        if allow_send && !self.config.allow_multiple_senders {
            self.silenced_by = Some(from.to_owned());
        } else if !allow_send && self.silenced_by.as_deref() == Some(from) {
            // The client that took over stepped back: we may send again.
            self.silenced_by = None;
        }
        Received::Control { from: from.to_owned(), allow_send, changed: before != self.can_send() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cables(allow_multiple_senders: bool, receive_own: bool) -> Cables {
        Cables::new(CablesConfig {
            channel: "show".into(),
            client_id: "me".into(),
            receive_own,
            allow_send: true,
            allow_multiple_senders,
            extra: json!({"token": "t", "topic": "never wins"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        })
    }

    #[test]
    fn the_envelope_merges_extra_keys_under_the_three_that_always_win() {
        let c = cables(true, false);
        assert_eq!(
            c.envelope("lights/1", json!({"r": 1})),
            json!({"token": "t", "topic": "lights/1", "clientId": "me", "payload": {"r": 1}})
        );
        assert_eq!(c.channels(), ["show/objects", "show/triggers", "show/control"]);
    }

    #[test]
    fn objects_and_named_triggers_become_messages() {
        let mut c = cables(true, false);
        assert_eq!(
            c.receive(
                "show/objects",
                json!({"topic": "a", "clientId": "other", "payload": [1, 2]})
            ),
            Received::Message(Message::value(SourceKind::CablesObject, "a", json!([1, 2])))
        );
        assert_eq!(
            c.receive(
                "show/triggers",
                json!({"topic": "t", "clientId": "other", "payload": "bang"})
            ),
            Received::Message(Message::trigger(SourceKind::CablesTrigger, "bang"))
        );
        assert_eq!(c.receive("elsewhere", json!(1)), Received::NotCables(json!(1)));
    }

    #[test]
    fn our_own_echo_is_dropped_unless_receive_own_is_on() {
        let echo = json!({"topic": "a", "clientId": "me", "payload": 1});
        assert_eq!(cables(true, false).receive("show/objects", echo.clone()), Received::OwnEcho);
        assert!(matches!(cables(true, true).receive("show/objects", echo), Received::Message(_)));
    }

    #[test]
    fn envelopes_missing_keys_are_malformed() {
        let mut c = cables(true, false);
        for bad in [
            json!("text"),
            json!({"topic": "a", "payload": 1}),
            json!({"clientId": "x", "payload": 1}),
        ] {
            assert!(matches!(c.receive("show/objects", bad), Received::Malformed(_)));
        }
        assert!(matches!(
            c.receive("show/triggers", json!({"topic": "t", "clientId": "x", "payload": 5})),
            Received::Malformed(_)
        ));
    }

    #[test]
    fn another_sender_silences_us_only_without_multiple_senders_and_releases_us_when_it_stops() {
        let take_over =
            json!({"topic": CONTROL_TOPIC, "clientId": "rival", "payload": {"allowSend": true}});
        let step_back =
            json!({"topic": CONTROL_TOPIC, "clientId": "rival", "payload": {"allowSend": false}});
        let mut tolerant = cables(true, false);
        tolerant.receive("show/control", take_over.clone());
        assert!(tolerant.can_send());

        let mut exclusive = cables(false, false);
        assert_eq!(
            exclusive.receive("show/control", take_over),
            Received::Control { from: "rival".into(), allow_send: true, changed: true }
        );
        assert!(!exclusive.can_send());
        assert_eq!(exclusive.silenced_by(), Some("rival"));
        exclusive.receive("show/control", step_back);
        assert!(exclusive.can_send());
    }

    #[test]
    fn a_reload_on_the_same_channel_keeps_who_silenced_us() {
        let take_over =
            json!({"topic": CONTROL_TOPIC, "clientId": "rival", "payload": {"allowSend": true}});
        let mut before = cables(false, false);
        before.receive("show/control", take_over);
        assert!(!before.can_send());

        let mut same_channel =
            Cables::new(CablesConfig { extra: Map::new(), ..before.config.clone() });
        same_channel.keep_arbitration(&before);
        assert_eq!(same_channel.silenced_by(), Some("rival"));
        assert!(!same_channel.can_send());

        let mut elsewhere =
            Cables::new(CablesConfig { channel: "other".into(), ..before.config.clone() });
        elsewhere.keep_arbitration(&before);
        assert!(elsewhere.can_send(), "another channel has its own senders");

        let mut tolerant =
            Cables::new(CablesConfig { allow_multiple_senders: true, ..before.config.clone() });
        tolerant.keep_arbitration(&before);
        assert!(tolerant.can_send());
    }

    #[test]
    fn our_announcement_is_a_control_envelope() {
        assert_eq!(
            cables(false, false).announcement(true),
            json!({"token": "t", "topic": CONTROL_TOPIC, "clientId": "me", "payload": {"allowSend": true}})
        );
    }

    #[test]
    fn a_bridge_that_only_receives_announces_that_it_does_not_send() {
        assert_eq!(
            cables(false, false).announcement(false)["payload"],
            json!({"allowSend": false})
        );
    }
}
