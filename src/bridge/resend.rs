//! What `resend` sends again: the last output of each destination name of
//! every state route, bounded in entries and in bytes, so that a flood of
//! names or of large values cannot grow it without end.

use std::collections::HashMap;

use super::coalesce::OutputKey;
use crate::route::Outbound;

/// The most destination names remembered.
pub(super) const MAX_ENTRIES: usize = 10_000;
/// The most bytes remembered (see [`Outbound::held_bytes`]).
pub(super) const MAX_BYTES: usize = 32 << 20;

#[derive(Default)]
pub(super) struct ResendMemory {
    values: HashMap<OutputKey, (Outbound, usize)>,
    bytes: usize,
}

impl ResendMemory {
    /// Remembers `out` as its name's last value. False when it did not fit:
    /// the name is then forgotten, so that a resend never sends a value
    /// older than the last one sent.
    pub(super) fn remember(&mut self, out: &Outbound) -> bool {
        let key = (out.route.0, out.destination, out.name.clone());
        let size = out.held_bytes();
        let before = self.values.get(&key).map(|(_, bytes)| *bytes);
        let without = self.bytes.saturating_sub(before.unwrap_or(0));
        let room = before.is_some() || self.values.len() < MAX_ENTRIES;
        if !room || without + size > MAX_BYTES {
            if before.is_some() {
                self.values.remove(&key);
                self.bytes = without;
            }
            return false;
        }
        self.values.insert(key, (out.clone(), size));
        self.bytes = without + size;
        true
    }

    pub(super) fn len(&self) -> usize {
        self.values.len()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Outbound> {
        self.values.values().map(|(out, _)| out)
    }

    pub(super) fn clear(&mut self) {
        self.values.clear();
        self.bytes = 0;
    }

    /// After a reload: `renew` points each value at its route in the new
    /// table and says whether it still belongs there; the others go.
    pub(super) fn renew(&mut self, mut renew: impl FnMut(&mut Outbound) -> bool) {
        let old = std::mem::take(&mut self.values);
        self.bytes = 0;
        for ((_, destination, name), (mut out, size)) in old {
            if renew(&mut out) {
                self.bytes += size;
                self.values.insert((out.route.0, destination, name), (out, size));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Body;
    use crate::route::{RouteId, Target};

    fn value(name: &str, text_bytes: usize) -> Outbound {
        Outbound {
            route: RouteId(0),
            destination: 0,
            target: Target::CablesObject,
            name: name.into(),
            body: Body::Value(serde_json::Value::String("x".repeat(text_bytes))),
        }
    }

    #[test]
    fn the_memory_keeps_the_last_value_of_each_name_within_its_bytes() {
        let mut memory = ResendMemory::default();
        assert!(memory.remember(&value("a", 10)));
        assert!(memory.remember(&value("a", 20)), "a newer value replaces the older");
        assert_eq!(memory.len(), 1);
        assert!(memory.remember(&value("b", MAX_BYTES / 2)));
        assert!(!memory.remember(&value("c", MAX_BYTES / 2)), "over the byte budget");
        assert_eq!(memory.len(), 2);
        // A value too large for what is left forgets its name's older one:
        // a resend must not send a value older than the last one sent.
        assert!(!memory.remember(&value("a", MAX_BYTES)));
        let names: Vec<&str> = memory.values().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["b"]);
        assert!(memory.remember(&value("c", 10)), "room again once it was given back");
    }
}
