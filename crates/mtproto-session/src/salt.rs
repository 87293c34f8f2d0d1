//! Server salts with validity windows and rotation (MTProto "Detailed Description", "Server
//! Salt"): a new salt every 30 minutes, the previous one still accepted for 30 more.

use serde::{Deserialize, Serialize};

use crate::{ServerSalt, UnixTime};

/// How long one salt is the current one.
pub const SALT_PERIOD_SECS: u64 = 30 * 60;
/// How long a salt stays accepted after it stops being current.
pub const SALT_GRACE_SECS: u64 = 30 * 60;
/// How many future salts the schedule keeps ahead.
const SALTS_AHEAD: usize = 2;

/// One salt and when it is valid: `[valid_since, valid_until)`, `valid_until` including the grace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FutureSalt {
    /// The salt.
    pub salt: ServerSalt,
    /// First second it is accepted (unix seconds).
    pub valid_since: u64,
    /// First second it is no longer accepted (unix seconds).
    pub valid_until: u64,
}

/// A session's salts, ordered by `valid_since`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaltSchedule {
    salts: Vec<FutureSalt>,
}

impl SaltSchedule {
    /// A schedule whose first salt starts at `now`.
    pub fn new(first: ServerSalt, now: UnixTime) -> Self {
        let since = now.as_secs();
        Self {
            salts: vec![FutureSalt {
                salt: first,
                valid_since: since,
                valid_until: since + SALT_PERIOD_SECS + SALT_GRACE_SECS,
            }],
        }
    }

    /// Drops expired salts and appends new ones (drawn with `draw`) so the schedule covers
    /// `now` plus two (`SALTS_AHEAD`) periods. Returns whether anything changed.
    pub fn rotate(&mut self, now: UnixTime, mut draw: impl FnMut() -> ServerSalt) -> bool {
        self.rotate_with(now, |_| draw())
    }

    /// As [`SaltSchedule::rotate`], with each new salt made by `derive` from the second it
    /// becomes valid. A deterministic `derive` (a keyed hash of the session and that second)
    /// makes the schedule the same whether or not the rotated state is ever saved: a server
    /// that rotates in memory for a request it then refuses, or does not commit, announces a
    /// salt that the next request's rotation makes again.
    pub fn rotate_with(&mut self, now: UnixTime, mut derive: impl FnMut(u64) -> ServerSalt) -> bool {
        let now = now.as_secs();
        let before = self.salts.len();
        self.salts.retain(|s| s.valid_until > now);
        let mut changed = self.salts.len() != before;
        let mut next_since = self
            .salts
            .last()
            .map_or(now, |s| s.valid_since + SALT_PERIOD_SECS);
        while self.salts.iter().filter(|s| s.valid_since > now).count() < SALTS_AHEAD {
            // After a long idle time, start the chain at now rather than in the past.
            if next_since + SALT_PERIOD_SECS + SALT_GRACE_SECS <= now {
                next_since = now;
            }
            self.salts.push(FutureSalt {
                salt: derive(next_since),
                valid_since: next_since,
                valid_until: next_since + SALT_PERIOD_SECS + SALT_GRACE_SECS,
            });
            next_since += SALT_PERIOD_SECS;
            changed = true;
        }
        changed
    }

    /// The salt to use at `now`: the newest one already valid.
    pub fn current(&self, now: UnixTime) -> Option<ServerSalt> {
        let now = now.as_secs();
        self.salts
            .iter()
            .filter(|s| s.valid_since <= now && now < s.valid_until)
            .max_by_key(|s| s.valid_since)
            .map(|s| s.salt)
    }

    /// Whether `salt` is accepted at `now` (the current one or one still in its grace period).
    pub fn accepts(&self, salt: ServerSalt, now: UnixTime) -> bool {
        let now = now.as_secs();
        self.salts
            .iter()
            .any(|s| s.salt == salt && s.valid_since <= now && now < s.valid_until)
    }

    /// A schedule of stored salts, or `None` unless they are ordered by `valid_since` and each
    /// ends after it starts.
    pub fn from_salts(salts: Vec<FutureSalt>) -> Option<Self> {
        let each = salts.iter().all(|s| s.valid_since < s.valid_until);
        let ordered = salts.windows(2).all(|w| match w {
            [a, b] => a.valid_since <= b.valid_since,
            _ => true,
        });
        (each && ordered).then_some(Self { salts })
    }

    /// All salts, for `get_future_salts`-style answers.
    pub fn salts(&self) -> &[FutureSalt] {
        &self.salts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_rotate_with_grace() {
        let t0 = UnixTime::from_secs(1_000_000);
        let mut n = 0u8;
        let mut draw = || {
            n += 1;
            ServerSalt([n; 8])
        };
        let mut s = SaltSchedule::new(ServerSalt([0; 8]), t0);
        s.rotate(t0, &mut draw);
        assert_eq!(s.current(t0), Some(ServerSalt([0; 8])));
        let t1 = t0.plus_secs(SALT_PERIOD_SECS + 1);
        s.rotate(t1, &mut draw);
        assert_eq!(s.current(t1), Some(ServerSalt([1; 8])));
        assert!(
            s.accepts(ServerSalt([0; 8]), t1),
            "the old salt is in its grace period"
        );
        let t2 = t0.plus_secs(SALT_PERIOD_SECS + SALT_GRACE_SECS);
        s.rotate(t2, &mut draw);
        assert!(!s.accepts(ServerSalt([0; 8]), t2), "grace is over");
        assert!(!s.accepts(ServerSalt([9; 8]), t2));
        // Long idle: the chain restarts at now.
        let t3 = t0.plus_secs(100 * SALT_PERIOD_SECS);
        s.rotate(t3, &mut draw);
        assert!(s.current(t3).is_some());
    }
}
