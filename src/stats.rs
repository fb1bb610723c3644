//! Named monotonic counters. Every place that can drop a message bumps one
//! named after the reason; logs and `/metrics` read them by name.

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

/// True for the counts worth a log line when something keeps failing: the
/// first, then powers of two, then every thousandth. Keeps a flood of bad
/// input from flooding the journal too, while the counter stays exact.
pub fn worth_logging(count: u64) -> bool {
    count.is_power_of_two() || count % 1000 == 0
}
