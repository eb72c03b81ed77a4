//! Retry delays for jobs and webhook deliveries: exponential, capped, optionally jittered.

use std::time::Duration;

use rand::Rng;

/// `base` for the first retry, doubling with each attempt, never above `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait after `attempts` attempts so far (at least one).
    pub fn delay(self, attempts: u32) -> Duration {
        // 2^30 times any base reaches every cap in use; the shift never overflows.
        self.base
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(30))
            .min(self.max)
    }

    /// [`Backoff::delay`] times a random factor in [0.5, 1.5), so retries of many failures that
    /// happened together do not arrive together.
    pub fn jittered(self, attempts: u32) -> Duration {
        self.delay(attempts).mul_f64(rand::rng().random_range(0.5..1.5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECS: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_delay_doubles_from_the_base_up_to_the_cap() {
        let b = Backoff {
            base: SECS(1),
            max: SECS(300),
        };
        let delays: Vec<_> = [1, 2, 4, 9, 10, 50, u32::MAX].map(|n| b.delay(n)).into();
        assert_eq!(delays, [1, 2, 8, 256, 300, 300, 300].map(SECS));
    }

    #[test]
    fn a_jittered_delay_stays_within_half_and_one_and_a_half_times_the_delay() {
        let b = Backoff {
            base: SECS(1),
            max: SECS(3600),
        };
        for _ in 0..50 {
            let first = b.jittered(1);
            assert!(first >= Duration::from_millis(500) && first < Duration::from_millis(1500));
            assert!(b.jittered(40) < SECS(5400));
        }
    }
}
