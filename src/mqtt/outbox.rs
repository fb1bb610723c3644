//! The endpoint's own store-and-forward: the bounded queue of publishes held
//! while the broker is unreachable (rumqttc drops its own on a reconnect
//! without a stored session), the link flags both tasks share, and the
//! memory of recent own publishes that recognises MQTT 3.1.1 echoes.
//!
//! Pure state: no I/O. The caller passes the function that hands a publish
//! to rumqttc.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use super::protocol::Queued;

/// How many own publishes are remembered for echo detection.
pub(crate) const ECHO_MEMORY: usize = 1024;
/// How long an own publish is expected to come back within.
pub(crate) const ECHO_MAX_AGE: Duration = Duration::from_secs(5);

/// What happened to a message handed to [`Outbox::submit`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Submitted {
    /// rumqttc took it.
    Published,
    /// Held in the queue; `dropped_oldest` were pushed out to make room.
    Queued { dropped_oldest: usize },
    /// rumqttc refused it and did not give it back (not expected).
    Lost,
}

/// Shared between the task that polls the event loop and the task that
/// takes messages from the router, behind one mutex.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// Between a CONNACK and the next connection error.
    pub connected: bool,
    /// `shutdown()` was called: no more `online`, no more reconnects.
    pub closing: bool,
    /// The final `offline` and DISCONNECT were handed to rumqttc.
    pub close_sent: bool,
    queue: VecDeque<Queued>,
    capacity: usize,
    echoes: Option<EchoFilter>,
}

impl Outbox {
    /// `recognise_echoes` is for MQTT 3.1.1, which has no No Local option.
    pub fn new(capacity: usize, recognise_echoes: bool) -> Self {
        Outbox {
            connected: false,
            closing: false,
            close_sent: false,
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            echoes: recognise_echoes.then(EchoFilter::default),
        }
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Publishes now when connected and nothing older waits; otherwise
    /// queues behind what waits, so the broker sees messages in order.
    pub fn submit(
        &mut self,
        message: Queued,
        now: Instant,
        publish: &mut impl FnMut(Queued) -> Result<(), Option<Queued>>,
    ) -> Submitted {
        if self.connected && self.queue.is_empty() {
            match self.publish(message, now, publish) {
                Ok(()) => Submitted::Published,
                Err(Some(back)) => Submitted::Queued { dropped_oldest: self.push_back(back) },
                Err(None) => Submitted::Lost,
            }
        } else {
            Submitted::Queued { dropped_oldest: self.push_back(message) }
        }
    }

    /// Hands queued messages to rumqttc in order until it refuses one or the
    /// queue is empty; returns how many went, and how many were lost.
    pub fn flush(
        &mut self,
        now: Instant,
        publish: &mut impl FnMut(Queued) -> Result<(), Option<Queued>>,
    ) -> (usize, usize) {
        let (mut sent, mut lost) = (0, 0);
        while self.connected {
            let Some(message) = self.queue.pop_front() else { break };
            match self.publish(message, now, publish) {
                Ok(()) => sent += 1,
                Err(Some(back)) => {
                    self.queue.push_front(back);
                    break;
                }
                Err(None) => lost += 1,
            }
        }
        (sent, lost)
    }

    /// Publishes one message outside the queue (availability), remembering
    /// it for echo detection like any other.
    pub fn publish(
        &mut self,
        message: Queued,
        now: Instant,
        publish: &mut impl FnMut(Queued) -> Result<(), Option<Queued>>,
    ) -> Result<(), Option<Queued>> {
        let key = self.echoes.is_some().then(|| echo_key(&message.topic, &message.payload));
        publish(message)?;
        if let (Some(echoes), Some(key)) = (&mut self.echoes, key) {
            echoes.remember(key, now);
        }
        Ok(())
    }

    /// Puts messages rumqttc gave back after a connection loss in front of
    /// the queue (they are older than everything in it). Returns how many
    /// of the oldest had to go to stay within capacity.
    pub fn requeue_front(&mut self, messages: Vec<Queued>) -> usize {
        for message in messages.into_iter().rev() {
            self.queue.push_front(message);
        }
        self.trim()
    }

    /// Takes out the queued messages `too_large` picks (those over a limit
    /// the broker announced after they were queued), keeping the order of
    /// the rest.
    pub fn take_where(&mut self, mut too_large: impl FnMut(&Queued) -> bool) -> Vec<Queued> {
        let (taken, kept): (Vec<Queued>, Vec<Queued>) =
            std::mem::take(&mut self.queue).into_iter().partition(|m| too_large(m));
        self.queue = kept.into();
        taken
    }

    /// True once for each remembered own publish of this topic and payload:
    /// the broker sent it back to us.
    pub fn take_echo(&mut self, topic: &str, payload: &[u8], now: Instant) -> bool {
        match &mut self.echoes {
            Some(echoes) => echoes.take(echo_key(topic, payload), now),
            None => false,
        }
    }

    fn push_back(&mut self, message: Queued) -> usize {
        self.queue.push_back(message);
        self.trim()
    }

    fn trim(&mut self) -> usize {
        let excess = self.queue.len().saturating_sub(self.capacity);
        self.queue.drain(..excess);
        excess
    }
}

fn echo_key(topic: &str, payload: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    topic.hash(&mut hasher);
    payload.hash(&mut hasher);
    hasher.finish()
}

/// Recent own publishes (hashes of topic and payload), oldest first.
#[derive(Debug, Default)]
struct EchoFilter {
    recent: VecDeque<(u64, Instant)>,
}

impl EchoFilter {
    fn remember(&mut self, key: u64, now: Instant) {
        self.expire(now);
        if self.recent.len() >= ECHO_MEMORY {
            self.recent.pop_front();
        }
        self.recent.push_back((key, now));
    }

    fn take(&mut self, key: u64, now: Instant) -> bool {
        self.expire(now);
        match self.recent.iter().position(|(k, _)| *k == key) {
            Some(index) => {
                self.recent.remove(index);
                true
            }
            None => false,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.recent.front() {
            if now.saturating_duration_since(*at) <= ECHO_MAX_AGE {
                break;
            }
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::QoS;
    use super::*;

    fn msg(topic: &str, payload: &str) -> Queued {
        Queued {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    }

    fn accept_all(sent: &mut Vec<String>) -> impl FnMut(Queued) -> Result<(), Option<Queued>> + '_ {
        |m| {
            sent.push(String::from_utf8(m.payload).expect("utf-8"));
            Ok(())
        }
    }

    #[test]
    fn while_disconnected_messages_queue_and_the_oldest_overflow() {
        let now = Instant::now();
        let mut outbox = Outbox::new(3, false);
        let mut refuse = |m: Queued| Err(Some(m));
        for n in 0..3 {
            let outcome = outbox.submit(msg("t", &n.to_string()), now, &mut refuse);
            assert_eq!(outcome, Submitted::Queued { dropped_oldest: 0 });
        }
        assert_eq!(
            outbox.submit(msg("t", "3"), now, &mut refuse),
            Submitted::Queued { dropped_oldest: 1 }
        );
        assert_eq!(
            outbox.submit(msg("t", "4"), now, &mut refuse),
            Submitted::Queued { dropped_oldest: 1 }
        );
        outbox.connected = true;
        let mut sent = Vec::new();
        assert_eq!(outbox.flush(now, &mut accept_all(&mut sent)), (3, 0));
        assert_eq!(sent, ["2", "3", "4"]);
        assert_eq!(outbox.queued(), 0);
    }

    #[test]
    fn connected_with_an_empty_queue_publishes_at_once() {
        let now = Instant::now();
        let mut outbox = Outbox::new(3, false);
        outbox.connected = true;
        let mut sent = Vec::new();
        assert_eq!(
            outbox.submit(msg("t", "a"), now, &mut accept_all(&mut sent)),
            Submitted::Published
        );
        assert_eq!(sent, ["a"]);
    }

    #[test]
    fn a_refused_publish_waits_and_later_ones_queue_behind_it() {
        let now = Instant::now();
        let mut outbox = Outbox::new(10, false);
        outbox.connected = true;
        let mut refuse = |m: Queued| Err(Some(m));
        outbox.submit(msg("t", "first"), now, &mut refuse);
        let mut sent = Vec::new();
        // Nothing may overtake the waiting message, even though rumqttc
        // would take this one now.
        let outcome = outbox.submit(msg("t", "second"), now, &mut accept_all(&mut sent));
        assert_eq!(outcome, Submitted::Queued { dropped_oldest: 0 });
        assert!(sent.is_empty());
        assert_eq!(outbox.flush(now, &mut accept_all(&mut sent)), (2, 0));
        assert_eq!(sent, ["first", "second"]);
    }

    #[test]
    fn taking_out_the_too_large_keeps_the_rest_in_order() {
        let now = Instant::now();
        let mut outbox = Outbox::new(10, false);
        for p in ["a", "bbbb", "c", "dddd", "e"] {
            outbox.submit(msg("t", p), now, &mut |m| Err(Some(m)));
        }
        let taken = outbox.take_where(|m| m.payload.len() > 1);
        assert_eq!(
            taken.iter().map(|m| m.payload.as_slice()).collect::<Vec<_>>(),
            [b"bbbb", b"dddd"]
        );
        outbox.connected = true;
        let mut sent = Vec::new();
        assert_eq!(outbox.flush(now, &mut accept_all(&mut sent)), (3, 0));
        assert_eq!(sent, ["a", "c", "e"]);
    }

    #[test]
    fn flushing_stops_at_the_first_refusal_and_keeps_the_order() {
        let now = Instant::now();
        let mut outbox = Outbox::new(10, false);
        for p in ["a", "b", "c"] {
            outbox.submit(msg("t", p), now, &mut |m| Err(Some(m)));
        }
        outbox.connected = true;
        let mut budget = 1;
        let mut sent = Vec::new();
        let mut one_then_full = |m: Queued| {
            if budget == 0 {
                return Err(Some(m));
            }
            budget -= 1;
            sent.push(String::from_utf8(m.payload).expect("utf-8"));
            Ok(())
        };
        assert_eq!(outbox.flush(now, &mut one_then_full), (1, 0));
        assert_eq!(outbox.queued(), 2);
        let mut rest = Vec::new();
        outbox.flush(now, &mut accept_all(&mut rest));
        assert_eq!(sent, ["a"]);
        assert_eq!(rest, ["b", "c"]);
    }

    #[test]
    fn nothing_is_flushed_while_disconnected() {
        let now = Instant::now();
        let mut outbox = Outbox::new(10, false);
        outbox.submit(msg("t", "a"), now, &mut |m| Err(Some(m)));
        let mut sent = Vec::new();
        assert_eq!(outbox.flush(now, &mut accept_all(&mut sent)), (0, 0));
        assert_eq!(outbox.queued(), 1);
    }

    #[test]
    fn messages_given_back_after_a_loss_go_first_and_count_against_capacity() {
        let now = Instant::now();
        let mut outbox = Outbox::new(3, false);
        outbox.submit(msg("t", "new1"), now, &mut |m| Err(Some(m)));
        outbox.submit(msg("t", "new2"), now, &mut |m| Err(Some(m)));
        let dropped = outbox.requeue_front(vec![msg("t", "old1"), msg("t", "old2")]);
        assert_eq!(dropped, 1);
        outbox.connected = true;
        let mut sent = Vec::new();
        outbox.flush(now, &mut accept_all(&mut sent));
        assert_eq!(sent, ["old2", "new1", "new2"]);
    }

    #[test]
    fn an_own_publish_is_recognised_exactly_once() {
        let now = Instant::now();
        let mut outbox = Outbox::new(10, true);
        outbox.connected = true;
        let mut sent = Vec::new();
        outbox.submit(msg("t/x", "mine"), now, &mut accept_all(&mut sent));
        assert!(!outbox.take_echo("t/x", b"other", now));
        assert!(!outbox.take_echo("t/y", b"mine", now));
        assert!(outbox.take_echo("t/x", b"mine", now));
        assert!(!outbox.take_echo("t/x", b"mine", now), "a second copy is someone else's");
    }

    #[test]
    fn two_identical_own_publishes_swallow_two_echoes() {
        let now = Instant::now();
        let mut outbox = Outbox::new(10, true);
        outbox.connected = true;
        let mut sent = Vec::new();
        outbox.submit(msg("t", "same"), now, &mut accept_all(&mut sent));
        outbox.submit(msg("t", "same"), now, &mut accept_all(&mut sent));
        assert!(outbox.take_echo("t", b"same", now));
        assert!(outbox.take_echo("t", b"same", now));
        assert!(!outbox.take_echo("t", b"same", now));
    }

    #[test]
    fn echo_memory_forgets_old_publishes() {
        let start = Instant::now();
        let mut outbox = Outbox::new(10, true);
        outbox.connected = true;
        let mut sent = Vec::new();
        outbox.submit(msg("t", "late"), start, &mut accept_all(&mut sent));
        let later = start + ECHO_MAX_AGE + Duration::from_millis(1);
        assert!(!outbox.take_echo("t", b"late", later));
    }

    #[test]
    fn echo_memory_is_bounded() {
        let now = Instant::now();
        let mut outbox = Outbox::new(1, true);
        outbox.connected = true;
        let mut sent = Vec::new();
        for n in 0..=ECHO_MEMORY {
            outbox.submit(msg("t", &n.to_string()), now, &mut accept_all(&mut sent));
        }
        assert!(!outbox.take_echo("t", b"0", now), "the oldest was forgotten");
        assert!(outbox.take_echo("t", b"1", now));
        assert!(outbox.take_echo("t", ECHO_MEMORY.to_string().as_bytes(), now));
    }

    #[test]
    fn a_refused_publish_is_not_remembered_as_sent() {
        let now = Instant::now();
        let mut outbox = Outbox::new(10, true);
        outbox.connected = true;
        outbox.submit(msg("t", "held"), now, &mut |m| Err(Some(m)));
        assert!(!outbox.take_echo("t", b"held", now));
    }

    #[test]
    fn without_echo_recognition_nothing_is_swallowed() {
        let now = Instant::now();
        let mut outbox = Outbox::new(10, false);
        outbox.connected = true;
        let mut sent = Vec::new();
        outbox.submit(msg("t", "mine"), now, &mut accept_all(&mut sent));
        assert!(!outbox.take_echo("t", b"mine", now));
    }
}
