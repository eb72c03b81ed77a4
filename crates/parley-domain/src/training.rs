//! Simulated replica training: a trained replica's status and progress, derived from the time.
//!
//! Nothing is trained: a replica is `started` when created and `completed` once the operator's
//! training time has passed, with `training_progress` growing linearly in between. Deriving it
//! at read needs no background job and cannot be lost by a restart.

use std::time::Duration;

use crate::Timestamp;

/// Where a replica's training stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Training {
    /// Whole percent done, 0 to 100.
    pub percent: u32,
}

impl Training {
    /// Finished, as every stock replica is.
    pub const DONE: Self = Self { percent: 100 };

    /// The training of a replica created at `created_at`, read at `now`, when training takes
    /// `takes`. It is done exactly when `takes` has passed (at once when it is zero).
    pub fn at(created_at: Timestamp, now: Timestamp, takes: Duration) -> Self {
        let total = takes.as_micros();
        let elapsed = u128::try_from((now.as_micros() - created_at.as_micros()).max(0)).unwrap_or(0);
        if elapsed >= total {
            return Self::DONE;
        }
        // Below 100 until the end, even when the last percent is a rounding away.
        let percent = u32::try_from(elapsed * 100 / total).unwrap_or(99).min(99);
        Self { percent }
    }

    /// The wire `status`: `started`, then `completed`.
    pub fn status(self) -> &'static str {
        if self.percent >= 100 {
            "completed"
        } else {
            "started"
        }
    }

    /// The wire `training_progress`, `"N/100"`.
    pub fn progress(self) -> String {
        format!("{}/100", self.percent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn at(secs: i64) -> Training {
        Training::at(
            Timestamp::from_micros(0),
            Timestamp::from_micros(secs * 1_000_000),
            MIN,
        )
    }

    #[test]
    fn progress_grows_linearly_then_completes() {
        assert_eq!((at(0).status(), at(0).progress()), ("started", "0/100".into()));
        assert_eq!(at(30).progress(), "50/100");
        assert_eq!(at(59).status(), "started");
        assert_eq!(
            (at(60).status(), at(60).progress()),
            ("completed", "100/100".into())
        );
        assert_eq!(at(3600), Training::DONE);
    }

    #[test]
    fn a_clock_behind_the_creation_time_reads_as_just_started() {
        assert_eq!(at(-5).progress(), "0/100");
    }

    #[test]
    fn no_training_time_is_done_at_once() {
        let t = Timestamp::from_micros(7);
        assert_eq!(Training::at(t, t, Duration::ZERO), Training::DONE);
    }
}
