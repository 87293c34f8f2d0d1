//! Wake-ups for long-polls: one `Notify` per waiting client, in this process only. Engines that
//! span nodes forward their cross-node hints here; the stored data stays the truth.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// Per-client wake-ups.
#[derive(Debug, Default)]
pub struct Notifier {
    waiters: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Notifier {
    /// A notifier with no waiters.
    pub fn new() -> Self {
        Self::default()
    }

    /// The wake-up handle for `client`. Create the `notified()` future and `enable()` it *before*
    /// reading the mailbox, so that a message arriving between the read and the wait is not missed.
    pub fn subscribe(&self, client: &str) -> Arc<Notify> {
        let mut map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(client).and_then(Weak::upgrade) {
            return n;
        }
        if map.len() > 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let n = Arc::new(Notify::new());
        map.insert(client.to_owned(), Arc::downgrade(&n));
        n
    }

    /// Wakes every waiter of `client`.
    pub fn notify(&self, client: &str) {
        let map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(client).and_then(Weak::upgrade) {
            n.notify_waiters();
        }
    }

    /// How many clients have a live subscription.
    pub fn live(&self) -> usize {
        let map = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }
}
