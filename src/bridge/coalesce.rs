//! `max_rate`: at most one output per interval per destination name, the
//! newest value winning.

use std::collections::HashMap;
use std::time::Duration;

use crate::route::Outbound;

/// Names tracked at most; idle ones are forgotten first.
const TRACKED_NAMES: usize = 10_000;
/// The most bytes of values waiting for their turn (see
/// [`Outbound::held_bytes`]); beyond, a value goes out at once rather than
/// wait, still replacing the one that waited.
pub(super) const MAX_WAITING_BYTES: usize = 32 << 20;
/// How often, at most, a full table is swept for idle names: a sweep walks
/// every name, and a flood of new names must not pay for one each.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// What happened to an output offered to the coalescer.
pub(super) enum Offer {
    SendNow(Outbound),
    /// Sent now, and the older value that was waiting is dropped: its turn
    /// had come but the timer had not fired yet, and sending it afterwards
    /// would leave the destination on a stale value.
    SendNowReplacing(Outbound),
    /// Held until its name's interval has passed.
    Waiting,
    /// Held, replacing an older value that was waiting.
    Replaced,
}

/// One destination name of one route: (route, destination, name).
pub(super) type OutputKey = (usize, usize, String);

/// Per destination name: at most one output per interval, the newest value
/// winning. Keeps a value stream (500 faders at 60 Hz) from flooding the
/// SocketCluster server, while the last value always arrives.
#[derive(Default)]
pub(super) struct Coalescer {
    slots: HashMap<OutputKey, Slot>,
    /// Due times of waiting values, earliest first.
    due: std::collections::BinaryHeap<std::cmp::Reverse<(tokio::time::Instant, OutputKey)>>,
    /// When the table was last swept for idle names.
    swept_at: Option<tokio::time::Instant>,
    /// New names sent without a rate limit because the table was full.
    untracked: u64,
    /// The bytes of the values waiting.
    waiting_bytes: usize,
    /// Values sent at once because waiting would pass `MAX_WAITING_BYTES`.
    over_budget: u64,
}

struct Slot {
    /// When the next output for this name may go.
    next: tokio::time::Instant,
    interval: Duration,
    /// The newest value waiting for `next`.
    waiting: Option<Outbound>,
    /// Its [`Outbound::held_bytes`], kept so that it is measured once.
    waiting_size: usize,
}

impl Coalescer {
    pub(super) fn offer(
        &mut self,
        out: Outbound,
        interval: Duration,
        now: tokio::time::Instant,
    ) -> Offer {
        let key = (out.route.0, out.destination, out.name.clone());
        match self.slots.get_mut(&key) {
            Some(slot) if slot.next > now => {
                let before = std::mem::take(&mut slot.waiting_size);
                let bytes = out.held_bytes();
                if self.waiting_bytes.saturating_sub(before) + bytes > MAX_WAITING_BYTES {
                    // No room to wait: out at once, and the older value
                    // that waited is replaced by it all the same.
                    self.waiting_bytes = self.waiting_bytes.saturating_sub(before);
                    self.over_budget += 1;
                    if crate::stats::worth_logging(self.over_budget) {
                        tracing::warn!(
                            bytes = MAX_WAITING_BYTES,
                            count = self.over_budget,
                            "max_rate: too many bytes waiting; a value went out before its turn"
                        );
                    }
                    return match slot.waiting.take() {
                        Some(_) => Offer::SendNowReplacing(out),
                        None => Offer::SendNow(out),
                    };
                }
                self.waiting_bytes = self.waiting_bytes.saturating_sub(before) + bytes;
                slot.waiting_size = bytes;
                if slot.waiting.replace(out).is_some() {
                    Offer::Replaced
                } else {
                    self.due.push(std::cmp::Reverse((slot.next, key)));
                    Offer::Waiting
                }
            }
            Some(slot) => {
                slot.next = now + interval;
                slot.interval = interval;
                // Its entry in `due` finds nothing waiting and is skipped.
                if slot.waiting.take().is_some() {
                    let size = std::mem::take(&mut slot.waiting_size);
                    self.waiting_bytes = self.waiting_bytes.saturating_sub(size);
                    Offer::SendNowReplacing(out)
                } else {
                    Offer::SendNow(out)
                }
            }
            None => {
                if self.slots.len() >= TRACKED_NAMES {
                    self.forget_idle(now);
                }
                if self.slots.len() >= TRACKED_NAMES {
                    // Every tracked name is within its interval. The new one
                    // goes out, unlimited, rather than growing the table.
                    self.untracked += 1;
                    if crate::stats::worth_logging(self.untracked) {
                        tracing::warn!(
                            tracked = TRACKED_NAMES,
                            count = self.untracked,
                            "max_rate: too many distinct names at once; a new one went out unlimited"
                        );
                    }
                    return Offer::SendNow(out);
                }
                self.slots.insert(
                    key,
                    Slot { next: now + interval, interval, waiting: None, waiting_size: 0 },
                );
                Offer::SendNow(out)
            }
        }
    }

    /// Forgets the names whose interval has passed with nothing waiting.
    fn forget_idle(&mut self, now: tokio::time::Instant) {
        if self.swept_at.is_some_and(|at| now < at + SWEEP_EVERY) {
            return;
        }
        self.swept_at = Some(now);
        self.slots.retain(|_, slot| slot.next > now || slot.waiting.is_some());
    }

    pub(super) fn next_due(&self) -> Option<tokio::time::Instant> {
        self.due.peek().map(|std::cmp::Reverse((at, _))| *at)
    }

    /// The waiting values whose turn has come; each starts a new interval.
    pub(super) fn take_due(&mut self, now: tokio::time::Instant) -> Vec<Outbound> {
        let mut ready = Vec::new();
        while self.next_due().is_some_and(|at| at <= now) {
            let Some(std::cmp::Reverse((_, key))) = self.due.pop() else { break };
            // An entry left from before an early send finds its slot's turn
            // still ahead; the slot's own, later entry takes the value then.
            if let Some(slot) = self.slots.get_mut(&key)
                && slot.next <= now
                && let Some(out) = slot.waiting.take()
            {
                slot.next = now + slot.interval;
                let size = std::mem::take(&mut slot.waiting_size);
                self.waiting_bytes = self.waiting_bytes.saturating_sub(size);
                ready.push(out);
            }
        }
        ready
    }

    pub(super) fn drain(&mut self) -> Vec<Outbound> {
        self.due.clear();
        self.waiting_bytes = 0;
        self.slots.drain().filter_map(|(_, slot)| slot.waiting).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Body;
    use crate::route::{RouteId, Target};
    use serde_json::json;
    fn output(name: &str, value: f64) -> Outbound {
        Outbound {
            route: RouteId(0),
            destination: 0,
            target: Target::ScChannel,
            name: name.into(),
            body: Body::Value(json!(value)),
        }
    }

    #[test]
    fn a_value_with_no_room_to_wait_goes_out_at_once_replacing_the_one_that_waited() {
        let mut c = Coalescer::default();
        let start = tokio::time::Instant::now();
        let every = Duration::from_millis(100);
        let large = |name: &str| Outbound {
            body: Body::Value(json!("x".repeat(MAX_WAITING_BYTES / 2))),
            ..output(name, 0.0)
        };
        for name in ["/a", "/b"] {
            assert!(matches!(c.offer(output(name, 1.0), every, start), Offer::SendNow(_)));
        }
        assert!(matches!(c.offer(large("/a"), every, start), Offer::Waiting));
        assert!(matches!(c.offer(output("/b", 2.0), every, start), Offer::Waiting));
        assert!(
            matches!(c.offer(large("/b"), every, start), Offer::SendNowReplacing(_)),
            "two halves and their overhead pass the budget"
        );
        assert_eq!(c.take_due(start + every), vec![large("/a")], "/b waits no more");
        assert_eq!(c.waiting_bytes, 0, "every byte given back");
        assert!(
            matches!(c.offer(large("/a"), every, start + every), Offer::Waiting),
            "with the bytes back, a large value waits its turn again"
        );
    }

    #[test]
    fn the_coalescer_sends_at_most_one_per_interval_and_always_the_latest() {
        let mut c = Coalescer::default();
        let start = tokio::time::Instant::now();
        let every = Duration::from_millis(100);
        assert!(matches!(c.offer(output("/a", 1.0), every, start), Offer::SendNow(_)));
        assert!(matches!(c.offer(output("/a", 2.0), every, start), Offer::Waiting));
        assert!(matches!(c.offer(output("/a", 3.0), every, start), Offer::Replaced));
        assert!(
            matches!(c.offer(output("/b", 9.0), every, start), Offer::SendNow(_)),
            "names are separate"
        );
        assert!(c.take_due(start + Duration::from_millis(50)).is_empty());
        assert_eq!(c.next_due(), Some(start + every));
        let due = c.take_due(start + every);
        assert_eq!(due, vec![output("/a", 3.0)]);
        assert!(matches!(c.offer(output("/a", 4.0), every, start + every), Offer::Waiting));
        assert_eq!(c.drain(), vec![output("/a", 4.0)]);
    }

    #[test]
    fn a_value_due_before_the_timer_fired_gives_way_to_a_newer_one() {
        let mut c = Coalescer::default();
        let start = tokio::time::Instant::now();
        let every = Duration::from_millis(100);
        assert!(matches!(c.offer(output("/a", 1.0), every, start), Offer::SendNow(_)));
        assert!(matches!(c.offer(output("/a", 2.0), every, start), Offer::Waiting));
        // The interval has passed, but the timer has not taken 2.0 out yet.
        let late = start + every + Duration::from_millis(1);
        match c.offer(output("/a", 3.0), every, late) {
            Offer::SendNowReplacing(out) => assert_eq!(out, output("/a", 3.0)),
            _ => panic!("3.0 must go out at once and replace 2.0"),
        }
        assert!(c.take_due(late).is_empty(), "2.0 never goes out after 3.0");
        // A value within the new interval waits for it, even though the
        // old due entry is still there.
        assert!(matches!(c.offer(output("/a", 4.0), every, late), Offer::Waiting));
        assert!(c.take_due(late + Duration::from_millis(50)).is_empty());
        assert_eq!(c.take_due(late + every), vec![output("/a", 4.0)]);
        assert_eq!(c.drain(), vec![]);
    }

    #[test]
    fn a_flood_of_new_names_cannot_grow_the_table_past_its_bound() {
        let mut c = Coalescer::default();
        let start = tokio::time::Instant::now();
        let every = Duration::from_secs(1);
        for n in 0..TRACKED_NAMES {
            assert!(matches!(
                c.offer(output(&format!("/n{n}"), 0.0), every, start),
                Offer::SendNow(_)
            ));
        }
        assert!(
            matches!(c.offer(output("/one-more", 1.0), every, start), Offer::SendNow(_)),
            "a name beyond the bound still goes out"
        );
        assert_eq!(c.slots.len(), TRACKED_NAMES);
        assert_eq!(c.untracked, 1);
        // Once the intervals have passed, idle names make room again.
        let later = start + every + SWEEP_EVERY;
        assert!(matches!(c.offer(output("/fresh", 2.0), every, later), Offer::SendNow(_)));
        assert_eq!(c.slots.len(), 1);
        assert!(matches!(c.offer(output("/fresh", 3.0), every, later), Offer::Waiting));
    }
}
