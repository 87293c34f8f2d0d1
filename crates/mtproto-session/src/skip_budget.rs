//! How much chain-key derivation one peer may make this client do for ratchet messages
//! (`docs/protocol.md` §3.3, "Skip budget").
//!
//! A ratchet header names the message's number `n`; to open message 1000 of a chain a client
//! derives the 999 chain steps before it, and once the packet authenticated it derives and
//! stores the skipped message keys on the way. [`crate::ratchet::MAX_SKIP`] bounds one packet,
//! but a sender may send many: forged packets (each costs the chain steps walked before the
//! frame fails) or real ones that jump 1000 numbers each. In Rust a step costs about a
//! microsecond; in the browser, where every HMAC is an asynchronous Web Crypto call, it costs
//! tens of microseconds, and one account's queue of such packets cost a page more than a
//! minute. The budget bounds that per peer and per hour, in both clients alike.
//!
//! The budget is counted in chain steps: before a packet is authenticated, the steps walked to
//! reach its key ([`crate::Ratchet::walk_cost`]); after, the skipped message keys stored
//! ([`crate::ratchet::OpenPlan::skipped_len`]). A packet whose steps the budget cannot pay is
//! refused ([`E2eError::SkipBudget`]) before any of them is derived. Ordinary traffic costs
//! nothing: a message in order walks no step and skips no key.

use crate::{E2eError, UnixTime};

/// Chain steps one peer may make a client derive at once, and per
/// [`SKIP_BUDGET_REFILL_SECS`]. 4000 is a sender that lost 1000 messages in a row twice in an
/// hour (walk and store, 2000 each) — far beyond ordinary loss and reordering, which cost
/// nothing or a few steps — and about 0.2–0.4 s of a browser page's time.
pub const SKIP_BUDGET: u32 = 4000;
/// The time in which an empty budget fills again (an hour), continuously.
pub const SKIP_BUDGET_REFILL_SECS: u64 = 3600;

const REFILL_MS: u64 = SKIP_BUDGET_REFILL_SECS * 1000;
/// The budget in its unit: one chain step is `REFILL_MS` units; a millisecond adds
/// `SKIP_BUDGET` units (exact, no rounding drift however often it is spent).
const CAPACITY: u64 = SKIP_BUDGET as u64 * REFILL_MS;

/// One peer's skip budget (a token bucket): full at first, refilled continuously, kept in
/// memory beside the peer's receive window ([`crate::ChatState::skip_budget`]), not saved — a
/// restart gives every peer a full budget again.
///
/// ```
/// use mtproto_session::{skip_budget::{SkipBudget, SKIP_BUDGET}, E2eError, UnixTime};
///
/// let now = UnixTime::from_secs(1_800_000_000);
/// let mut b = SkipBudget::default();
/// assert_eq!(b.left(now), u64::from(SKIP_BUDGET));
/// b.spend(3000, now)?;
/// assert!(matches!(b.spend(1500, now), Err(E2eError::SkipBudget { need: 1500, left: 1000 })));
/// // A quarter of an hour later a quarter of the budget came back.
/// assert_eq!(b.left(now.plus_secs(900)), 2000);
/// # Ok::<(), E2eError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkipBudget {
    /// Units held at `at`.
    units: u64,
    at: UnixTime,
}

impl Default for SkipBudget {
    /// A full budget (its refill time lies at the epoch, so the first look fills it).
    fn default() -> Self {
        Self {
            units: 0,
            at: UnixTime::from_nanos(0),
        }
    }
}

impl SkipBudget {
    fn units_at(&self, now: UnixTime) -> u64 {
        let ms = now.as_nanos().saturating_sub(self.at.as_nanos()) / 1_000_000;
        self.units
            .saturating_add(ms.saturating_mul(u64::from(SKIP_BUDGET)))
            .min(CAPACITY)
    }

    /// Chain steps that can be paid at `now`.
    pub fn left(&self, now: UnixTime) -> u64 {
        self.units_at(now) / REFILL_MS
    }

    /// Pays `steps` chain steps at `now`.
    ///
    /// # Errors
    /// [`E2eError::SkipBudget`] when fewer are left; then nothing changes (but a refill time
    /// later than `now`, left by a clock since set back, moves to `now`).
    pub fn spend(&mut self, steps: u64, now: UnixTime) -> Result<(), E2eError> {
        if steps == 0 {
            return Ok(());
        }
        if now < self.at {
            // The clock went back (a correction): refill from now, not from a future instant
            // that might be days away.
            self.at = now;
        }
        let units = self.units_at(now);
        let cost = steps.saturating_mul(REFILL_MS);
        if cost > units {
            return Err(E2eError::SkipBudget {
                need: steps,
                left: units / REFILL_MS,
            });
        }
        self.units = units - cost;
        self.at = now;
        Ok(())
    }
}
