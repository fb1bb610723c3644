//! `delay_ms`: outputs held for their route's delay. They wait inside the
//! router rather than in tasks of their own, so that when their time comes
//! they go out through the links, counters and routing table in force at
//! that moment, and a reload or a stop can see and account for every one.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use tokio::time::Instant;

use crate::route::Outbound;

/// The most bytes waiting at once (see [`Outbound::held_bytes`]): with
/// large values (an image as a data URL) the count alone would allow
/// gigabytes.
pub(super) const MAX_BYTES: usize = 32 << 20;

/// Outputs waiting for their delay, earliest due first; bounded in count
/// and in bytes.
pub(super) struct DelayLine {
    waiting: BinaryHeap<Reverse<Held>>,
    capacity: usize,
    bytes: usize,
    /// Breaks ties between equal due times, so outputs keep their order.
    next_seq: u64,
}

struct Held {
    due: Instant,
    seq: u64,
    bytes: usize,
    out: Outbound,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

impl DelayLine {
    pub(super) fn new(capacity: usize) -> Self {
        DelayLine { waiting: BinaryHeap::new(), capacity, bytes: 0, next_seq: 0 }
    }

    /// Holds `out` until `due`; hands it back when the line is full.
    pub(super) fn hold(&mut self, out: Outbound, due: Instant) -> Result<(), Outbound> {
        let bytes = out.held_bytes();
        if self.waiting.len() >= self.capacity || self.bytes + bytes > MAX_BYTES {
            return Err(out);
        }
        self.bytes += bytes;
        self.waiting.push(Reverse(Held { due, seq: self.next_seq, bytes, out }));
        self.next_seq += 1;
        Ok(())
    }

    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// When the earliest output is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.waiting.peek().map(|Reverse(held)| held.due)
    }

    /// Takes every output due at `now`, in due order.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Outbound> {
        let mut due = Vec::new();
        while self.waiting.peek().is_some_and(|Reverse(held)| held.due <= now) {
            if let Some(Reverse(held)) = self.waiting.pop() {
                self.bytes = self.bytes.saturating_sub(held.bytes);
                due.push(held.out);
            }
        }
        due
    }

    /// After a reload: `renew` points each output at its route in the new
    /// table and says whether it still belongs there. Those that do keep
    /// their due time; the others are taken out and returned.
    pub(super) fn renew(&mut self, mut renew: impl FnMut(&mut Outbound) -> bool) -> Vec<Outbound> {
        let mut orphans = Vec::new();
        let mut kept = Vec::with_capacity(self.waiting.len());
        for Reverse(mut held) in std::mem::take(&mut self.waiting).into_vec() {
            if renew(&mut held.out) {
                kept.push(Reverse(held));
            } else {
                self.bytes = self.bytes.saturating_sub(held.bytes);
                orphans.push(held.out);
            }
        }
        self.waiting = kept.into();
        orphans
    }

    /// Empties the line (at the stop).
    pub(super) fn drain(&mut self) -> Vec<Outbound> {
        self.bytes = 0;
        std::mem::take(&mut self.waiting).into_iter().map(|Reverse(held)| held.out).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::message::Body;
    use crate::route::{RouteId, Target};

    fn out(route: usize, name: &str) -> Outbound {
        Outbound {
            route: RouteId(route),
            destination: 0,
            target: Target::CablesObject,
            name: name.into(),
            body: Body::Value(serde_json::Value::Null),
        }
    }

    fn names(outs: &[Outbound]) -> Vec<&str> {
        outs.iter().map(|o| o.name.as_str()).collect()
    }

    #[test]
    fn the_line_refuses_what_would_pass_its_bytes_and_takes_more_once_they_go() {
        let start = Instant::now();
        let mut line = DelayLine::new(10);
        let large = |name: &str| Outbound {
            body: Body::Value(serde_json::Value::String("x".repeat(MAX_BYTES / 2))),
            ..out(0, name)
        };
        assert!(line.hold(large("a"), start).is_ok());
        assert!(line.hold(large("b"), start).is_err(), "two halves and their overhead pass it");
        assert!(line.hold(out(0, "small"), start).is_ok());
        assert_eq!(names(&line.take_due(start)), ["a", "small"]);
        assert!(line.hold(large("b"), start).is_ok(), "the bytes were given back");
    }

    #[test]
    fn outputs_come_out_when_due_earliest_first_and_in_order_on_ties() {
        let start = Instant::now();
        let mut line = DelayLine::new(10);
        let later = start + Duration::from_secs(2);
        let sooner = start + Duration::from_secs(1);
        for (name, due) in [("b1", later), ("a", sooner), ("b2", later)] {
            assert!(line.hold(out(0, name), due).is_ok());
        }
        assert_eq!(line.next_due(), Some(sooner));
        assert!(line.take_due(start).is_empty());
        assert_eq!(names(&line.take_due(sooner)), ["a"]);
        assert_eq!(names(&line.take_due(later + Duration::from_millis(1))), ["b1", "b2"]);
        assert_eq!(line.next_due(), None);
    }

    #[test]
    fn a_full_line_hands_the_output_back() {
        let now = Instant::now();
        let mut line = DelayLine::new(1);
        assert!(line.hold(out(0, "kept"), now).is_ok());
        let refused = line.hold(out(0, "refused"), now).expect_err("full");
        assert_eq!(refused.name, "refused");
        assert_eq!(line.len(), 1);
    }

    #[test]
    fn a_renewal_repoints_survivors_keeps_their_time_and_returns_the_rest() {
        let now = Instant::now();
        let due = now + Duration::from_secs(1);
        let mut line = DelayLine::new(10);
        for (route, name) in [(0, "moved"), (1, "removed"), (0, "moved too")] {
            assert!(line.hold(out(route, name), due).is_ok());
        }
        let orphans = line.renew(|out| {
            if out.route == RouteId(0) {
                out.route = RouteId(5);
                true
            } else {
                false
            }
        });
        assert_eq!(names(&orphans), ["removed"]);
        assert!(line.take_due(now).is_empty(), "survivors keep their due time");
        let due_now = line.take_due(due);
        assert_eq!(names(&due_now), ["moved", "moved too"]);
        assert!(due_now.iter().all(|o| o.route == RouteId(5)));
    }
}
