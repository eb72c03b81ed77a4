//! Timestamps: microseconds since the Unix epoch, shown as RFC 3339 UTC with microseconds.

use std::fmt;

/// A point in time with microsecond precision, in UTC.
///
/// Stored as an integer so both backends sort and compare it cheaply; formatted only at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// Wraps a count of microseconds since the Unix epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        Self(chrono::Utc::now().timestamp_micros())
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// This time plus a number of seconds (saturating).
    pub const fn plus_secs(self, secs: i64) -> Self {
        Self(self.0.saturating_add(secs.saturating_mul(1_000_000)))
    }

    /// This time plus a number of milliseconds (saturating).
    pub const fn plus_millis(self, millis: i64) -> Self {
        Self(self.0.saturating_add(millis.saturating_mul(1_000)))
    }

    /// Whole seconds from `earlier` to `self`, never negative.
    pub fn secs_since(self, earlier: Timestamp) -> u64 {
        u64::try_from((self.0 - earlier.0).max(0) / 1_000_000).unwrap_or(0)
    }
}

impl fmt::Display for Timestamp {
    /// The wire form, e.g. `2025-05-13T06:42:58.291561Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_micros(self.0) {
            Some(dt) => write!(f, "{}", dt.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            None => write!(f, "invalid-timestamp({})", self.0),
        }
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_microseconds_and_z() {
        let t = Timestamp::from_micros(1_747_118_578_291_561);
        assert_eq!(t.to_string(), "2025-05-13T06:42:58.291561Z");
    }

    #[test]
    fn whole_microseconds_keep_six_digits() {
        assert_eq!(
            Timestamp::from_micros(0).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
    }
}
