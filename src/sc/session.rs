//! The protocol state of one SocketCluster link, free of I/O.
//!
//! It owns what outlives a single WebSocket connection (subscriptions, the
//! auth token, the cid counter) and what belongs to the current one (the
//! handshake, pending invokes). The connection task feeds it frames and
//! commands; it answers with [`Output`]s: frames to send, messages to deliver,
//! a close to perform. That keeps every protocol rule unit-testable with
//! literal frames.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::codec::{self, Frame, Packet, Protocol, RemoteError};
use super::queue::ReplySender;
use super::stats::ScStats;
use super::{Incoming, InvokeError};

/// The server's pingTimeout when its handshake reply does not say.
const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(30);

/// Something the connection task must do.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Send this text frame.
    Send(String),
    /// Hand this to the consumer.
    Deliver(Incoming),
    /// The handshake completed.
    Opened { socket_id: String, authenticated: bool, ping_timeout: Duration },
    /// The auth state changed on an open connection.
    AuthChanged { authenticated: bool },
    /// A ping arrived: the server is alive.
    Alive,
    /// Close the connection with this code.
    Close { code: u16, reason: String },
}

/// Where a subscription stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubState {
    /// Not sent on this connection yet (or waiting for auth).
    Pending,
    /// `#subscribe` sent with this cid; waiting for its ack.
    Requested { cid: u64 },
    /// Acked by the server.
    Subscribed,
}

#[derive(Debug)]
struct Subscription {
    wait_for_auth: bool,
    state: SubState,
    /// Subscription order, kept across reconnects.
    order: u64,
}

enum Pending {
    Handshake,
    Subscribe(String),
    Authenticate(Option<ReplySender>),
    User(ReplySender),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Closed,
    Handshaking { cid: u64 },
    Open { socket_id: String },
}

/// Protocol state of the link.
pub struct Session {
    protocol: Protocol,
    cids: Arc<AtomicU64>,
    stats: Arc<ScStats>,
    phase: Phase,
    authenticated: bool,
    auth_token: Option<String>,
    /// The configured token as last read, to notice when it is rotated.
    configured_token: Option<String>,
    subscriptions: HashMap<String, Subscription>,
    next_order: u64,
    pending: HashMap<u64, Pending>,
    warned_protocol_mismatch: bool,
    /// Publishes just after an unsubscribe are routine: said once a minute.
    unsubscribed_publishes: crate::stats::Routine,
}

impl Session {
    pub fn new(protocol: Protocol, cids: Arc<AtomicU64>, stats: Arc<ScStats>) -> Self {
        Session {
            protocol,
            cids,
            stats,
            phase: Phase::Closed,
            authenticated: false,
            auth_token: None,
            configured_token: None,
            subscriptions: HashMap::new(),
            next_order: 0,
            pending: HashMap::new(),
            warned_protocol_mismatch: false,
            unsubscribed_publishes: crate::stats::Routine::default(),
        }
    }

    fn next_cid(&self) -> u64 {
        self.cids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The token the next handshake will carry.
    pub fn auth_token(&self) -> Option<&str> {
        self.auth_token.as_deref()
    }

    /// Offers the token from the config (read again before every handshake).
    /// It replaces the stored token only when it is new or changed, so a
    /// token the server issued or removed since is not overridden by a file
    /// that stayed the same.
    pub fn offer_configured_token(&mut self, token: Option<String>) {
        if token != self.configured_token {
            self.configured_token = token.clone();
            self.auth_token = token;
        }
    }

    /// Starts the handshake on a fresh connection: the first frame to send.
    pub fn begin_handshake(&mut self) -> String {
        let cid = self.next_cid();
        self.phase = Phase::Handshaking { cid };
        self.pending.insert(cid, Pending::Handshake);
        codec::encode_handshake(self.auth_token.as_deref(), cid)
    }

    /// The connection is gone: fail what waited on it and put every
    /// subscription back to pending, to be sent again after the next handshake.
    pub fn on_closed(&mut self) {
        self.phase = Phase::Closed;
        self.authenticated = false;
        for (_, pending) in self.pending.drain() {
            match pending {
                // One whose caller gave up was counted as timed out already.
                Pending::User(reply) | Pending::Authenticate(Some(reply)) if !reply.is_closed() => {
                    ScStats::bump(&self.stats.invokes_lost);
                    let _ = reply.send(Err(InvokeError::ConnectionLost));
                }
                _ => {}
            }
        }
        for sub in self.subscriptions.values_mut() {
            sub.state = SubState::Pending;
        }
    }

    /// Adds a channel. Sent at once when the link is open (and, for a
    /// wait-for-auth channel, authenticated); otherwise after the next handshake.
    pub fn subscribe(&mut self, channel: &str, wait_for_auth: bool, out: &mut Vec<Output>) {
        if let Some(existing) = self.subscriptions.get_mut(channel) {
            existing.wait_for_auth = wait_for_auth;
            // A channel held back for auth may go now.
            self.send_pending_subscriptions(out);
            return;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.subscriptions.insert(
            channel.to_owned(),
            Subscription { wait_for_auth, state: SubState::Pending, order },
        );
        self.send_pending_subscriptions(out);
    }

    /// Drops a channel; tells the server when it knew of it.
    pub fn unsubscribe(&mut self, channel: &str, out: &mut Vec<Output>) {
        if let Some(sub) = self.subscriptions.remove(channel)
            && self.is_open()
            && sub.state != SubState::Pending
        {
            out.push(Output::Send(codec::encode_unsubscribe(channel)));
        }
    }

    /// The channels held, in subscription order, with whether each is acked.
    pub fn subscriptions(&self) -> Vec<(String, bool)> {
        let mut subs: Vec<_> = self.subscriptions.iter().collect();
        subs.sort_by_key(|(_, sub)| sub.order);
        subs.into_iter()
            .map(|(name, sub)| (name.clone(), sub.state == SubState::Subscribed))
            .collect()
    }

    /// Sends `#authenticate` with a token (stored for later handshakes too).
    pub fn authenticate(&mut self, token: String, reply: ReplySender, out: &mut Vec<Output>) {
        self.auth_token = Some(token.clone());
        if !self.is_open() {
            let _ = reply.send(Err(InvokeError::NotConnected));
            return;
        }
        let cid = self.next_cid();
        self.pending.insert(cid, Pending::Authenticate(Some(reply)));
        out.push(Output::Send(codec::encode_event("#authenticate", Some(token), Some(cid))));
    }

    /// Forgets the token and tells the server.
    pub fn deauthenticate(&mut self, out: &mut Vec<Output>) {
        self.auth_token = None;
        self.authenticated = false;
        if self.is_open() {
            out.push(Output::Send(codec::encode_event::<()>("#removeAuthToken", None, None)));
            out.push(Output::AuthChanged { authenticated: false });
        }
    }

    /// Remembers where the reply to a user invoke (sent just now) goes.
    pub fn track_invoke(&mut self, cid: u64, reply: ReplySender) {
        self.pending.insert(cid, Pending::User(reply));
    }

    /// Forgets invokes whose caller stopped waiting (its ack timeout passed).
    /// An `#authenticate` stays tracked without its caller: a late reply
    /// still tells whether the server authenticated the socket.
    pub fn forget_abandoned_invokes(&mut self) {
        self.pending.retain(|_, pending| match pending {
            Pending::User(reply) => !reply.is_closed(),
            Pending::Authenticate(reply) => {
                if reply.as_ref().is_some_and(|r| r.is_closed()) {
                    *reply = None;
                }
                true
            }
            _ => true,
        });
    }

    /// Handles one text frame from the server.
    pub fn on_text(&mut self, text: &str, out: &mut Vec<Output>) {
        ScStats::bump(&self.stats.frames_in);
        match codec::decode(text) {
            Frame::Ping(ping) => {
                ScStats::bump(&self.stats.pings);
                if ping.0 != self.protocol && !self.warned_protocol_mismatch {
                    self.warned_protocol_mismatch = true;
                    tracing::warn!(
                        configured = self.protocol.number(),
                        server = ping.0.number(),
                        "the server pings with the other protocol version's token; answering in kind (set `protocol = {}`)",
                        ping.0.number()
                    );
                }
                // Never answer before our handshake went out; it always has
                // by the time a frame can arrive, but the rule is the server's.
                if self.phase != Phase::Closed {
                    out.push(Output::Send(ping.0.pong().to_owned()));
                }
                out.push(Output::Alive);
            }
            Frame::Packets(packets) => {
                for packet in packets {
                    match packet {
                        Ok(packet) => self.on_packet(packet, out),
                        Err(err) => {
                            if let Some(count) =
                                crate::stats::bump_loggable(&self.stats.malformed_frames)
                            {
                                tracing::warn!(error = %err, count, "skipped a malformed SocketCluster frame");
                            }
                        }
                    }
                }
            }
        }
    }

    fn on_packet(&mut self, packet: Packet, out: &mut Vec<Output>) {
        match packet {
            Packet::Response { rid, result } => self.on_response(rid, result, out),
            Packet::Event { event, data, cid } => self.on_event(event, data, cid, out),
        }
    }

    fn on_response(
        &mut self,
        rid: u64,
        result: Result<Option<Value>, RemoteError>,
        out: &mut Vec<Output>,
    ) {
        let Some(pending) = self.pending.remove(&rid) else {
            ScStats::bump(&self.stats.unknown_replies);
            tracing::debug!(rid, "reply matches no pending call (timed out or unknown)");
            return;
        };
        match pending {
            Pending::Handshake => self.on_handshake_reply(result, out),
            Pending::Subscribe(channel) => {
                // Only the answer to the channel's latest request counts: an
                // unsubscribe and a new subscribe may have followed this one.
                let current = self
                    .subscriptions
                    .get(&channel)
                    .is_some_and(|sub| sub.state == SubState::Requested { cid: rid });
                match result {
                    Ok(_) if current => {
                        if let Some(sub) = self.subscriptions.get_mut(&channel) {
                            sub.state = SubState::Subscribed;
                            tracing::debug!(%channel, "subscribed");
                        }
                    }
                    Ok(_) => tracing::debug!(%channel, rid, "the ack of an earlier subscribe"),
                    Err(err) => {
                        ScStats::bump(&self.stats.subscribe_failures);
                        if current {
                            tracing::warn!(%channel, error = %err, "the server refused the subscription; dropping the channel");
                            self.subscriptions.remove(&channel);
                        } else {
                            tracing::warn!(%channel, error = %err, "the server refused an earlier subscribe of the channel; a newer one stands");
                        }
                    }
                }
            }
            Pending::Authenticate(reply) => {
                let outcome = match result {
                    Ok(data) => {
                        let authenticated = data
                            .as_ref()
                            .and_then(|d| d.get("isAuthenticated"))
                            .and_then(Value::as_bool)
                            .unwrap_or(true);
                        self.set_authenticated(authenticated, out);
                        Ok(data)
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "#authenticate was refused");
                        Err(InvokeError::Remote(err))
                    }
                };
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            Pending::User(reply) => {
                let _ = reply.send(result.map_err(InvokeError::Remote));
            }
        }
    }

    fn on_handshake_reply(
        &mut self,
        result: Result<Option<Value>, RemoteError>,
        out: &mut Vec<Output>,
    ) {
        let data = match result {
            Ok(data) => data.unwrap_or(Value::Null),
            Err(err) => {
                out.push(Output::Close { code: 4003, reason: format!("handshake failed: {err}") });
                return;
            }
        };
        let socket_id = data.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
        // A zero timeout would end the connection as soon as it opened.
        let ping_timeout = data
            .get("pingTimeout")
            .and_then(Value::as_u64)
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_PING_TIMEOUT);
        let authenticated = data.get("isAuthenticated").and_then(Value::as_bool).unwrap_or(false);
        if let Some(auth_error) = data.get("authError").filter(|e| !e.is_null()) {
            ScStats::bump(&self.stats.auth_errors);
            let err = RemoteError::from_value(auth_error.clone());
            tracing::warn!(error = %err, "the server rejected our auth token; carrying on unauthenticated");
        }
        self.phase = Phase::Open { socket_id: socket_id.clone() };
        self.authenticated = authenticated;
        ScStats::bump(&self.stats.connections);
        out.push(Output::Opened { socket_id, authenticated, ping_timeout });
        self.send_pending_subscriptions(out);
    }

    fn set_authenticated(&mut self, authenticated: bool, out: &mut Vec<Output>) {
        if self.authenticated != authenticated {
            self.authenticated = authenticated;
            out.push(Output::AuthChanged { authenticated });
        }
        if authenticated {
            self.send_pending_subscriptions(out);
        }
    }

    /// Sends `#subscribe` for every pending channel that may go now, in
    /// subscription order; each at most once per connection.
    fn send_pending_subscriptions(&mut self, out: &mut Vec<Output>) {
        if !self.is_open() {
            return;
        }
        let mut ready: Vec<(&String, &mut Subscription)> = self
            .subscriptions
            .iter_mut()
            .filter(|(_, sub)| {
                sub.state == SubState::Pending && (self.authenticated || !sub.wait_for_auth)
            })
            .collect();
        ready.sort_by_key(|(_, sub)| sub.order);
        for (channel, sub) in ready {
            let cid = self.cids.fetch_add(1, Ordering::Relaxed);
            sub.state = SubState::Requested { cid };
            out.push(Output::Send(codec::encode_subscribe(channel, sub.wait_for_auth, cid)));
            self.pending.insert(cid, Pending::Subscribe(channel.clone()));
        }
    }

    fn on_event(
        &mut self,
        event: String,
        data: Option<Value>,
        cid: Option<u64>,
        out: &mut Vec<Output>,
    ) {
        match event.as_str() {
            "#publish" => self.on_publish(data, out),
            "#kickOut" => {
                let field = |key| data.as_ref().and_then(|d| d.get(key)).and_then(Value::as_str);
                let Some(channel) = field("channel") else {
                    if let Some(count) = crate::stats::bump_loggable(&self.stats.malformed_frames) {
                        tracing::warn!(count, "#kickOut without a channel name; ignored");
                    }
                    return;
                };
                let message = field("message").unwrap_or_default();
                ScStats::bump(&self.stats.kick_outs);
                tracing::warn!(%channel, %message, "kicked out of the channel by the server; not re-subscribing");
                self.subscriptions.remove(channel);
            }
            "#setAuthToken" => {
                match data.as_ref().and_then(|d| d.get("token")).and_then(Value::as_str) {
                    Some(token) => {
                        self.auth_token = Some(token.to_owned());
                        tracing::info!("the server issued an auth token");
                        self.set_authenticated(true, out);
                    }
                    None => {
                        if let Some(count) =
                            crate::stats::bump_loggable(&self.stats.malformed_frames)
                        {
                            tracing::warn!(count, "#setAuthToken without a token; ignored");
                        }
                    }
                }
            }
            "#removeAuthToken" => {
                tracing::info!("the server removed our auth token");
                self.auth_token = None;
                self.set_authenticated(false, out);
            }
            "#disconnect" => {
                // Protocol v1 servers announce their close this way; the
                // WebSocket close that follows is what ends the connection.
                tracing::info!(data = ?data, "the server announced a disconnect");
            }
            // Every `#` name is taken as reserved, in v2 too (where the
            // protocol reserves eight): a route name cannot hold `#`, so no
            // route could take such an event.
            name if name.starts_with('#') => {
                ScStats::bump(&self.stats.unknown_events);
                tracing::debug!(event = name, "ignored an unknown reserved event");
            }
            _ => {
                ScStats::bump(&self.stats.events_in);
                out.push(Output::Deliver(Incoming::Event {
                    event,
                    data: data.unwrap_or(Value::Null),
                }));
            }
        }
        // The server may ask for an ack of anything it invokes (even
        // #setAuthToken with rejectOnFailedDelivery); a bridge has no answer
        // of its own to give, so it confirms receipt.
        if let Some(rid) = cid {
            out.push(Output::Send(codec::encode_response(rid, None)));
        }
    }

    fn on_publish(&mut self, data: Option<Value>, out: &mut Vec<Output>) {
        let Some(Value::Object(mut fields)) = data else {
            if let Some(count) = crate::stats::bump_loggable(&self.stats.malformed_frames) {
                tracing::warn!(count, "#publish without a channel; ignored");
            }
            return;
        };
        let Some(Value::String(channel)) = fields.remove("channel") else {
            if let Some(count) = crate::stats::bump_loggable(&self.stats.malformed_frames) {
                tracing::warn!(count, "#publish without a channel name; ignored");
            }
            return;
        };
        if !self.subscriptions.contains_key(&channel) {
            if let Some(count) =
                self.unsubscribed_publishes.bump(&self.stats.publishes_unsubscribed)
            {
                tracing::info!(%channel, count, "publish for a channel we do not hold; dropped");
            }
            return;
        }
        ScStats::bump(&self.stats.publishes_in);
        let data = fields.remove("data").unwrap_or(Value::Null);
        out.push(Output::Deliver(Incoming::Publish { channel, data }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session() -> Session {
        Session::new(Protocol::V2, Arc::new(AtomicU64::new(1)), Arc::new(ScStats::default()))
    }

    fn sent(out: &[Output]) -> Vec<&str> {
        out.iter()
            .filter_map(|o| if let Output::Send(text) = o { Some(text.as_str()) } else { None })
            .collect()
    }

    /// Handshakes with cid 1 and answers it.
    fn open(session: &mut Session, authenticated: bool) -> Vec<Output> {
        let hello = session.begin_handshake();
        assert!(hello.starts_with(r##"{"event":"#handshake""##), "{hello}");
        let cid =
            serde_json::from_str::<Value>(&hello).expect("json")["cid"].as_u64().expect("cid");
        let mut out = Vec::new();
        let reply = json!({"rid": cid, "data": {"id": "sock1", "pingTimeout": 5000, "isAuthenticated": authenticated}});
        session.on_text(&reply.to_string(), &mut out);
        out
    }

    #[test]
    fn a_reply_whose_error_is_null_is_a_success() {
        let mut s = session();
        open(&mut s, false);
        let mut out = Vec::new();
        s.subscribe("a", false, &mut out);
        s.on_text(r#"{"rid":2,"error":null}"#, &mut out);
        assert_eq!(s.subscriptions(), vec![("a".to_owned(), true)]);
        assert_eq!(ScStats::get(&s.stats.subscribe_failures), 0);
    }

    #[test]
    fn a_late_refusal_of_an_earlier_subscribe_leaves_the_newer_one_standing() {
        let mut s = session();
        open(&mut s, false);
        let mut out = Vec::new();
        s.subscribe("c", false, &mut out);
        s.unsubscribe("c", &mut out);
        s.subscribe("c", false, &mut out);
        assert_eq!(
            sent(&out),
            vec![
                r##"{"event":"#subscribe","data":{"channel":"c"},"cid":2}"##,
                r##"{"event":"#unsubscribe","data":"c"}"##,
                r##"{"event":"#subscribe","data":{"channel":"c"},"cid":3}"##
            ]
        );
        s.on_text(r#"{"rid":2,"error":{"name":"X","message":"refused"}}"#, &mut out);
        assert_eq!(s.subscriptions(), vec![("c".to_owned(), false)], "still requested");
        s.on_text(r#"{"rid":3}"#, &mut out);
        assert_eq!(s.subscriptions(), vec![("c".to_owned(), true)]);
        assert_eq!(ScStats::get(&s.stats.subscribe_failures), 1, "the refusal is still counted");
    }

    #[test]
    fn a_channel_no_longer_waiting_for_auth_is_subscribed_at_once() {
        let mut s = session();
        open(&mut s, false);
        let mut out = Vec::new();
        s.subscribe("x", true, &mut out);
        assert!(sent(&out).is_empty(), "it waits for auth");
        s.subscribe("x", false, &mut out);
        assert_eq!(sent(&out), vec![r##"{"event":"#subscribe","data":{"channel":"x"},"cid":2}"##]);
    }

    #[test]
    fn a_late_authenticate_reply_still_authenticates_the_link() {
        let mut s = session();
        let mut out = Vec::new();
        s.subscribe("private", true, &mut out);
        open(&mut s, false);
        let (reply, answer) = tokio::sync::oneshot::channel();
        s.authenticate("token".into(), reply, &mut out);
        drop(answer); // the caller's ack timeout passed
        s.forget_abandoned_invokes();
        let mut out = Vec::new();
        s.on_text(r#"{"rid":2,"data":{"isAuthenticated":true}}"#, &mut out);
        assert!(s.is_authenticated());
        assert_eq!(
            sent(&out),
            vec![
                r##"{"event":"#subscribe","data":{"channel":"private","waitForAuth":true},"cid":3}"##
            ]
        );
        assert_eq!(ScStats::get(&s.stats.unknown_replies), 0);
    }

    #[test]
    fn subscriptions_made_before_the_handshake_go_out_after_it_in_order() {
        let mut s = session();
        let mut out = Vec::new();
        s.subscribe("b", false, &mut out);
        s.subscribe("a", false, &mut out);
        assert!(out.is_empty(), "nothing may be sent before the handshake");
        let out = open(&mut s, false);
        assert_eq!(
            out[0],
            Output::Opened {
                socket_id: "sock1".into(),
                authenticated: false,
                ping_timeout: Duration::from_secs(5)
            }
        );
        assert_eq!(
            sent(&out),
            vec![
                r##"{"event":"#subscribe","data":{"channel":"b"},"cid":2}"##,
                r##"{"event":"#subscribe","data":{"channel":"a"},"cid":3}"##
            ]
        );
    }

    #[test]
    fn after_a_reconnect_every_channel_is_subscribed_again_exactly_once() {
        let mut s = session();
        let mut out = Vec::new();
        s.subscribe("a", false, &mut out);
        s.subscribe("b", false, &mut out);
        open(&mut s, false);
        s.on_text(r#"{"rid":2}"#, &mut out);
        s.on_text(r#"{"rid":3}"#, &mut out);
        assert_eq!(s.subscriptions(), vec![("a".into(), true), ("b".into(), true)]);
        s.on_closed();
        let out = open(&mut s, false);
        let subscribes: Vec<_> =
            sent(&out).into_iter().filter(|f| f.contains("#subscribe")).collect();
        assert_eq!(subscribes.len(), 2, "{subscribes:?}");
        // A second subscribe call for a held channel adds nothing.
        let mut more = Vec::new();
        s.subscribe("a", false, &mut more);
        assert!(sent(&more).is_empty());
    }

    #[test]
    fn a_wait_for_auth_channel_waits_for_the_token() {
        let mut s = session();
        let mut out = Vec::new();
        s.subscribe("private", true, &mut out);
        let opened = open(&mut s, false);
        assert!(sent(&opened).is_empty());
        let mut out = Vec::new();
        s.on_text(r##"{"event":"#setAuthToken","data":{"token":"jwt.a.b"}}"##, &mut out);
        assert_eq!(s.auth_token(), Some("jwt.a.b"));
        assert!(out.contains(&Output::AuthChanged { authenticated: true }));
        assert_eq!(
            sent(&out),
            vec![
                r##"{"event":"#subscribe","data":{"channel":"private","waitForAuth":true},"cid":2}"##
            ]
        );
    }

    #[test]
    fn a_rejected_token_is_counted_and_removed_and_the_link_carries_on() {
        let mut s = session();
        s.offer_configured_token(Some("bad".into()));
        let hello = s.begin_handshake();
        assert!(hello.contains(r#""authToken":"bad""#));
        let mut out = Vec::new();
        s.on_text(
            r##"[{"rid":1,"data":{"id":"x","pingTimeout":30000,"authError":{"message":"invalid token","name":"AuthTokenInvalidError","isBadToken":true},"isAuthenticated":false}},{"event":"#removeAuthToken"}]"##,
            &mut out,
        );
        assert!(s.is_open());
        assert_eq!(ScStats::get(&s.stats.auth_errors), 1);
        assert_eq!(s.auth_token(), None);
        // The same file content is not offered again; a rotated one is.
        s.offer_configured_token(Some("bad".into()));
        assert_eq!(s.auth_token(), None);
        s.offer_configured_token(Some("good".into()));
        assert_eq!(s.auth_token(), Some("good"));
    }

    #[test]
    fn publishes_reach_the_consumer_only_for_held_channels() {
        let mut s = session();
        let mut out = Vec::new();
        s.subscribe("a", false, &mut out);
        open(&mut s, false);
        let mut out = Vec::new();
        s.on_text(r##"{"event":"#publish","data":{"channel":"a","data":{"v":1}}}"##, &mut out);
        s.on_text(r##"{"event":"#publish","data":{"channel":"zzz","data":1}}"##, &mut out);
        s.on_text(r##"{"event":"#publish","data":{"channel":"a"}}"##, &mut out);
        let delivered: Vec<_> = out
            .iter()
            .filter_map(|o| if let Output::Deliver(m) = o { Some(m.clone()) } else { None })
            .collect();
        assert_eq!(
            delivered,
            vec![
                Incoming::Publish { channel: "a".into(), data: json!({"v": 1}) },
                Incoming::Publish { channel: "a".into(), data: Value::Null },
            ]
        );
        assert_eq!(ScStats::get(&s.stats.publishes_unsubscribed), 1);
    }

    #[test]
    fn kick_out_drops_the_channel_for_good() {
        let mut s = session();
        let mut out = Vec::new();
        s.subscribe("room", false, &mut out);
        open(&mut s, false);
        s.on_text(
            r##"{"event":"#kickOut","data":{"channel":"room","message":"go away"}}"##,
            &mut out,
        );
        assert!(s.subscriptions().is_empty());
        s.on_closed();
        let out = open(&mut s, false);
        assert!(sent(&out).is_empty(), "a kicked-out channel is not re-subscribed");
    }

    #[test]
    fn a_kick_out_without_a_channel_is_malformed_and_keeps_every_subscription() {
        let mut s = session();
        let mut out = Vec::new();
        s.subscribe("room", false, &mut out);
        open(&mut s, false);
        s.on_text(r##"{"event":"#kickOut","data":{"message":"go away"}}"##, &mut out);
        assert_eq!(s.subscriptions().len(), 1);
        assert_eq!(ScStats::get(&s.stats.kick_outs), 0);
        assert_eq!(ScStats::get(&s.stats.malformed_frames), 1);
    }

    #[test]
    fn server_invokes_are_delivered_and_acked() {
        let mut s = session();
        open(&mut s, false);
        let mut out = Vec::new();
        s.on_text(r#"{"event":"hello","cid":1,"data":{"q":42}}"#, &mut out);
        assert_eq!(
            out,
            vec![
                Output::Deliver(Incoming::Event { event: "hello".into(), data: json!({"q": 42}) }),
                Output::Send(r#"{"rid":1}"#.into())
            ]
        );
    }

    #[test]
    fn pings_are_answered_with_the_matching_token() {
        let mut s = session();
        s.begin_handshake();
        let mut out = Vec::new();
        s.on_text("", &mut out);
        s.on_text("#1", &mut out);
        assert_eq!(sent(&out), vec!["", "#2"]);
    }

    #[test]
    fn pending_invokes_fail_when_the_connection_goes() {
        let mut s = session();
        open(&mut s, false);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        s.track_invoke(40, tx);
        s.on_closed();
        assert_eq!(rx.try_recv().expect("answered"), Err(InvokeError::ConnectionLost));
    }

    #[test]
    fn a_refused_subscription_is_dropped_and_counted() {
        let mut s = session();
        let mut out = Vec::new();
        s.subscribe("secret", false, &mut out);
        open(&mut s, false);
        s.on_text(
            r#"{"rid":2,"error":{"message":"Not authenticated","name":"AuthRequiredError"}}"#,
            &mut out,
        );
        assert!(s.subscriptions().is_empty());
        assert_eq!(ScStats::get(&s.stats.subscribe_failures), 1);
    }

    #[test]
    fn every_captured_server_frame_decodes_without_a_malformed_count() {
        for file in [
            include_str!("../../tests/data/sc-frames-v1.jsonl"),
            include_str!("../../tests/data/sc-frames-v2.jsonl"),
        ] {
            let mut checked = 0;
            for line in file.lines().filter(|l| !l.trim().is_empty()) {
                let record: Value = serde_json::from_str(line).expect("capture line is JSON");
                if record["dir"] != "s2c" || record.get("kind").is_some() {
                    continue;
                }
                let text = record["frame"].as_str().expect("frame is text");
                match codec::decode(text) {
                    Frame::Ping(_) => {}
                    Frame::Packets(packets) => {
                        for packet in packets {
                            assert!(packet.is_ok(), "{text} failed: {packet:?}");
                        }
                    }
                }
                // And the session takes it without panicking.
                let mut s = session();
                s.begin_handshake();
                s.on_text(text, &mut Vec::new());
                assert_eq!(ScStats::get(&s.stats.malformed_frames), 0, "{text}");
                checked += 1;
            }
            assert!(checked > 50, "too few server frames checked: {checked}");
        }
    }
}
