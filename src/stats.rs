//! Named monotonic counters. Every place that can drop a message bumps one
//! named after the reason; logs and `/metrics` read them by name. Also the
//! pacing of the log lines that go with them, and the cut of values shown
//! in a log line, so that neither a flood nor a huge value floods the log.

/// Declares a struct of `AtomicU64` counters with a `snapshot()` by name.
macro_rules! counters {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $( $(#[$doc:meta])* $field:ident ),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $( $(#[$doc])* pub $field: std::sync::atomic::AtomicU64, )*
        }

        impl $name {
            /// Every counter by name.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($field), self.$field.load(std::sync::atomic::Ordering::Relaxed)), )*]
            }

            /// Every counter by name, to read or carry over.
            pub fn counters(&self) -> Vec<(&'static str, &std::sync::atomic::AtomicU64)> {
                vec![$( (stringify!($field), &self.$field), )*]
            }
        }
    };
}
pub(crate) use counters;

/// Adds one to a counter.
pub fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
    counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// Reads a counter.
pub fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// Adds one to a counter; returns the new count when it is worth a log
/// line ([`worth_logging`]). The one way drops are counted and said.
pub fn bump_loggable(counter: &std::sync::atomic::AtomicU64) -> Option<u64> {
    let count = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    worth_logging(count).then_some(count)
}

/// Paces the log lines of drops that are routine rather than faults (a
/// message no route wants, a publish on a channel nothing listens to), which
/// can come thousands a second: the first is said at once, then at most one
/// line a minute, with the count so far.
#[derive(Debug, Default)]
pub struct Routine {
    next_line: Option<std::time::Instant>,
}

impl Routine {
    /// How long a line keeps the next one back.
    pub const QUIET: std::time::Duration = std::time::Duration::from_secs(60);

    /// Adds one to a counter; returns the new count when a line is due.
    pub fn bump(&mut self, counter: &std::sync::atomic::AtomicU64) -> Option<u64> {
        self.bump_at(counter, std::time::Instant::now())
    }

    fn bump_at(
        &mut self,
        counter: &std::sync::atomic::AtomicU64,
        now: std::time::Instant,
    ) -> Option<u64> {
        let count = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if self.next_line.is_some_and(|next| now < next) {
            return None;
        }
        self.next_line = Some(now + Self::QUIET);
        Some(count)
    }
}

/// Paces lines that are wanted one per message (a channel subscribed to
/// be watched): at most [`Watched::PER_SECOND`] a second; the ones beyond
/// are counted, and the next line says how many it stands for.
#[derive(Debug, Default)]
pub struct Watched {
    window: Option<std::time::Instant>,
    lines: u32,
    unsaid: u64,
}

impl Watched {
    /// The most lines a second.
    pub const PER_SECOND: u32 = 20;

    /// `Some(lines left unsaid since the last one)` when this message gets
    /// a line; otherwise it is counted in `unlogged`.
    pub fn line(&mut self, unlogged: &std::sync::atomic::AtomicU64) -> Option<u64> {
        self.line_at(unlogged, std::time::Instant::now())
    }

    fn line_at(
        &mut self,
        unlogged: &std::sync::atomic::AtomicU64,
        now: std::time::Instant,
    ) -> Option<u64> {
        let second = std::time::Duration::from_secs(1);
        if self.window.is_none_or(|start| now >= start + second) {
            self.window = Some(now);
            self.lines = 0;
        }
        if self.lines >= Self::PER_SECOND {
            self.unsaid += 1;
            unlogged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        self.lines += 1;
        Some(std::mem::take(&mut self.unsaid))
    }
}

/// At most `max` characters of a value's text for a log line, with the
/// length of the whole when it was cut.
pub fn excerpt(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()).into(),
    }
}

/// Takes up to `limit` bytes of JSON text, keeping them only when asked,
/// then refuses: serialising a huge value costs no more than the limit.
struct Bounded {
    kept: Option<Vec<u8>>,
    written: usize,
    limit: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = self.limit - self.written;
        let taken = bytes.len().min(room);
        if let Some(kept) = &mut self.kept {
            kept.extend_from_slice(&bytes[..taken]);
        }
        self.written += taken;
        if taken < bytes.len() {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(taken)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether a value's JSON text is at most `limit` bytes; nothing is kept.
pub fn json_fits(value: &serde_json::Value, limit: usize) -> bool {
    let mut counted = Bounded { kept: None, written: 0, limit };
    serde_json::to_writer(&mut counted, value).is_ok()
}

/// A value's JSON text when it is at most `limit` bytes; otherwise `Err`
/// with its first `limit` bytes (a character cut in two is replaced).
pub fn json_within(value: &serde_json::Value, limit: usize) -> Result<String, String> {
    let mut text = Bounded { kept: Some(Vec::new()), written: 0, limit };
    let whole = serde_json::to_writer(&mut text, value).is_ok();
    let text = String::from_utf8_lossy(text.kept.as_deref().unwrap_or_default()).into_owned();
    if whole { Ok(text) } else { Err(text) }
}

/// True for the counts worth a log line when something keeps failing: the
/// first, then powers of two, then every thousandth. Keeps a flood of bad
/// input from flooding the journal too, while the counter stays exact.
pub fn worth_logging(count: u64) -> bool {
    count.is_power_of_two() || count % 1000 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    #[test]
    fn watched_lines_are_paced_per_second_and_say_what_they_left_out() {
        let (mut watched, unlogged, start) =
            (Watched::default(), AtomicU64::new(0), Instant::now());
        let said: Vec<Option<u64>> = (0..25).map(|_| watched.line_at(&unlogged, start)).collect();
        assert_eq!(said.iter().filter(|s| s.is_some()).count(), Watched::PER_SECOND as usize);
        assert!(said[20..].iter().all(Option::is_none));
        assert_eq!(get(&unlogged), 5);
        let next = start + std::time::Duration::from_secs(1);
        assert_eq!(watched.line_at(&unlogged, next), Some(5), "the next line counts the unsaid");
        assert_eq!(watched.line_at(&unlogged, next), Some(0));
    }

    #[test]
    fn json_within_gives_the_whole_text_or_its_start() {
        let value = serde_json::json!({"a": "ééé"});
        assert_eq!(json_within(&value, 100), Ok(r#"{"a":"ééé"}"#.to_owned()));
        assert_eq!(json_within(&value, 9), Err("{\"a\":\"é\u{fffd}".to_owned()));
        assert!(json_fits(&value, 14) && !json_fits(&value, 13), "14 bytes of JSON");
    }

    #[test]
    fn an_excerpt_cuts_long_text_on_a_character_and_gives_its_length() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("ééééé", 2), "éé… (10 bytes)");
    }

    #[test]
    fn a_routine_drop_is_said_first_then_once_a_minute_and_always_counted() {
        let (counter, mut routine, start) = (AtomicU64::new(0), Routine::default(), Instant::now());
        assert_eq!(routine.bump_at(&counter, start), Some(1));
        assert_eq!(routine.bump_at(&counter, start + Routine::QUIET / 2), None);
        assert_eq!(routine.bump_at(&counter, start + Routine::QUIET), Some(3));
        assert_eq!(routine.bump_at(&counter, start + Routine::QUIET * 3 / 2), None);
        assert_eq!(get(&counter), 4);
    }

    #[test]
    fn a_failing_drop_is_said_at_powers_of_two_then_every_thousandth() {
        let said: Vec<u64> = (1..=3000).filter(|&n| worth_logging(n)).collect();
        assert_eq!(said, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1024, 2000, 2048, 3000]);
    }
}
