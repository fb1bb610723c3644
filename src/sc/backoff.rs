//! Reconnect delays: a fixed delay by default (as cables.gl uses), optional
//! exponential growth and jitter, always capped.

use std::time::Duration;

/// How long to wait between reconnect attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// The delay before the first retry (SocketIO DAT's "Reconnect Delay").
    pub delay: Duration,
    /// Each further failed attempt multiplies the delay by this (1.0 = fixed).
    pub multiplier: f64,
    /// Up to this fraction of each delay is taken off at random (0.0 to 1.0),
    /// so that many bridges restarted together do not reconnect in lockstep.
    pub jitter: f64,
    /// No delay is ever longer than this.
    pub max_delay: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            delay: Duration::from_secs(1),
            multiplier: 1.0,
            jitter: 0.0,
            max_delay: Duration::from_secs(30),
        }
    }
}

/// Counts failed attempts and hands out the next delay.
#[derive(Debug)]
pub struct Backoff {
    policy: ReconnectPolicy,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    pub fn new(policy: ReconnectPolicy) -> Self {
        // Jitter needs no cryptographic quality; the clock and the process id
        // are enough to keep two bridges apart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) | 1;
        Backoff { policy, attempt: 0, seed }
    }

    /// The delay before the next attempt; each call counts one failure.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.policy.delay.as_secs_f64();
        let grown = base * self.policy.multiplier.max(1.0).powi(self.attempt.min(64) as i32);
        let capped = grown.min(self.policy.max_delay.as_secs_f64());
        self.attempt = self.attempt.saturating_add(1);
        let jitter = self.policy.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter * self.random_unit();
        Duration::from_secs_f64((capped * factor).max(0.0))
    }

    /// A successful connection starts the count again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    fn random_unit(&mut self) -> f64 {
        // xorshift64*
        self.seed ^= self.seed >> 12;
        self.seed ^= self.seed << 25;
        self.seed ^= self.seed >> 27;
        let value = self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (value >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(delay_ms: u64, multiplier: f64, jitter: f64, max_ms: u64) -> ReconnectPolicy {
        ReconnectPolicy {
            delay: Duration::from_millis(delay_ms),
            multiplier,
            jitter,
            max_delay: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn the_default_is_a_fixed_one_second_delay_like_cables() {
        let mut backoff = Backoff::new(ReconnectPolicy::default());
        for _ in 0..5 {
            assert_eq!(backoff.next_delay(), Duration::from_secs(1));
        }
    }

    #[test]
    fn exponential_backoff_grows_and_stops_at_the_cap() {
        let mut backoff = Backoff::new(policy(100, 2.0, 0.0, 500));
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
    }

    #[test]
    fn reset_starts_again_from_the_first_delay() {
        let mut backoff = Backoff::new(policy(100, 2.0, 0.0, 10_000));
        backoff.next_delay();
        backoff.next_delay();
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_only_shortens_and_never_passes_the_cap() {
        let mut backoff = Backoff::new(policy(1000, 1.5, 0.5, 2000));
        let delays: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(2000)));
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(500)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "jitter should vary the delays");
    }
}
