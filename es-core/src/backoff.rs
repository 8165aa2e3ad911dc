//! Exponential backoff with jitter: how long to wait before the next attempt, shared by the
//! repository's conflict retries, the projection runner's handler retries and other retry loops
//! built on es.

use std::time::Duration;

/// Waits that double after each failure, from `initial` up to `max`, with "equal jitter": each
/// wait is at least half its nominal length and at most all of it, chosen at random, so that
/// processes that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The nominal wait after the first failure.
    pub initial: Duration,
    /// The longest nominal wait.
    pub max: Duration,
}

impl Backoff {
    /// Waits from `initial`, doubling, up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The nominal wait after `failures` failures (1: the first): `initial · 2^(failures-1)`,
    /// at most `max`.
    pub fn nominal(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The wait after `failures` failures: between half the nominal wait and all of it.
    pub fn delay(&self, failures: u32) -> Duration {
        let nominal = self.nominal(failures);
        let half = nominal / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_max_with_jitter_within_bounds() {
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        assert_eq!(backoff.nominal(1), Duration::from_millis(10));
        assert_eq!(backoff.nominal(2), Duration::from_millis(20));
        assert_eq!(backoff.nominal(4), Duration::from_millis(80));
        assert_eq!(backoff.nominal(5), Duration::from_millis(100));
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_millis(100));
        let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(3)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(20) && *d <= Duration::from_millis(40))
        );
        assert!(delays.iter().any(|d| *d != delays[0]), "the waits vary");
    }
}
