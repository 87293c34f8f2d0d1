//! What a relay reports as it works, for metrics: an embedder implements [`Observer`] (the
//! relay-server binary turns it into Prometheus metrics) and hands it to
//! [`crate::Relay::with_observer`]. Every method has an empty default and is called on the
//! request path, so implementations must be cheap (an atomic add).
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use relay_core::Observer;
//!
//! #[derive(Default)]
//! struct Stored(AtomicU64);
//! impl Observer for Stored {
//!     fn message_stored(&self) {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!     }
//! }
//! let o = Stored::default();
//! o.message_stored();
//! o.entries_delivered(3); // default: ignored
//! assert_eq!(o.0.load(Ordering::Relaxed), 1);
//! ```

use std::time::Duration;

/// Receives the relay's events. All methods default to doing nothing.
pub trait Observer: Send + Sync {
    /// A message was stored in a mailbox (once per message, not per resend).
    fn message_stored(&self) {}
    /// A poll answer carried `n` mailbox entries.
    fn entries_delivered(&self, n: usize) {
        let _ = n;
    }
    /// A poll acknowledged (removed) `n` entries.
    fn entries_acked(&self, n: usize) {
        let _ = n;
    }
    /// An expiry run told `n` senders that messages of theirs expired undelivered.
    fn expiry_notices(&self, n: usize) {
        let _ = n;
    }
    /// One storage commit (an authenticated request's write, and the read of a poll) took
    /// `took`; `conflict` when another request won and it is retried.
    fn storage_commit(&self, took: Duration, conflict: bool) {
        let _ = (took, conflict);
    }
}

/// The observer that ignores everything (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl Observer for NoObserver {}
