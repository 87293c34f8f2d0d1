//! Time as a value handed in by the caller (the crate never reads a clock).

use serde::{Deserialize, Serialize};

/// A point in time: nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixTime(u64);

impl UnixTime {
    /// From nanoseconds since the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// The system clock now (a clock before 1970 reads as the epoch). The one place a protocol
    /// crate reads the time itself: everything else takes the time as an argument.
    ///
    /// ```
    /// let now = mtproto_session::UnixTime::from_system();
    /// assert!(now.as_secs() > 1_700_000_000);
    /// ```
    pub fn from_system() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    /// From whole seconds since the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000_000
    }

    /// The sub-second nanoseconds.
    pub const fn subsec_nanos(self) -> u32 {
        (self.0 % 1_000_000_000) as u32
    }

    /// `self + secs` seconds (saturating).
    pub const fn plus_secs(self, secs: u64) -> Self {
        Self(self.0.saturating_add(secs.saturating_mul(1_000_000_000)))
    }

    /// Shifted by a signed offset in seconds (a client's correction towards server time).
    pub const fn offset_secs(self, offset: i64) -> Self {
        let delta = offset.unsigned_abs().saturating_mul(1_000_000_000);
        if offset >= 0 {
            Self(self.0.saturating_add(delta))
        } else {
            Self(self.0.saturating_sub(delta))
        }
    }

    /// Seconds elapsed since `earlier` (0 if `earlier` is later).
    pub const fn secs_since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0) / 1_000_000_000
    }
}
