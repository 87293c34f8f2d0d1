//! Long-polls: waiting for a mailbox to fill, woken by the notifier, ended at shutdown.

use mtproto_crypto::AuthKeyId;
use std::sync::Arc;
use std::time::Duration;

use mtproto_session::ClientId;

use super::Relay;
use crate::RelayError;

/// A long-poll's wake-up, armed (enabled) before the mailbox read it guards.
pub(crate) type Armed = std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>;

/// Arms a wake-up on `notify`: from now on a notification is not missed, polled or not.
pub(crate) fn arm(notify: Arc<tokio::sync::Notify>) -> Armed {
    let mut n = Box::pin(notify.notified_owned());
    n.as_mut().enable();
    n
}

impl Relay {
    /// Returns at once when entries wait; otherwise waits until one arrives or `wait` passes.
    /// Arms the wake-up before each read, so an arrival between the read and the wait is not
    /// lost. `armed`: a wake-up armed before a read that already found nothing — the first wait
    /// starts without reading again.
    pub(crate) async fn long_poll(
        &self,
        client: &ClientId,
        key_id: AuthKeyId,
        wait: Duration,
        limit: usize,
        mut armed: Option<Armed>,
    ) -> Result<Vec<crate::MailboxEntry>, RelayError> {
        let deadline = tokio::time::Instant::now() + wait;
        let notify = self.notifier.subscribe(client.as_str());
        let mut closing = self.closing.subscribe();
        loop {
            let mut notified = match armed.take() {
                Some(n) => n,
                None => {
                    let n = arm(notify.clone());
                    let entries = self.engine.fetch(client, limit, self.clock.now()).await?;
                    if !entries.is_empty() {
                        // Entries go only to the key that holds the name now. This read is
                        // not the commit's (whose session compare-and-swap proves that): a
                        // recovery may have moved the name while this poll waited, or — for a
                        // poll that acknowledged nothing and was checked against this node's
                        // cached session — on another node before it came.
                        if self
                            .engine
                            .owner(client)
                            .await?
                            .is_none_or(|o| o.key_id != key_id)
                        {
                            self.forget_key(key_id);
                            return Err(RelayError::UnknownAuthKey);
                        }
                        return Ok(entries);
                    }
                    n
                }
            };
            if tokio::time::Instant::now() >= deadline || *closing.borrow_and_update() {
                return Ok(Vec::new());
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                _ = closing.changed() => {}
            }
        }
    }

    /// Ends every long-poll now, and every later one at once: each answers with what its
    /// mailbox holds (often nothing), as if its wait had run out. Call it when the node stops, so
    /// that a graceful shutdown need not wait out the polls and clients re-poll elsewhere.
    /// Everything else goes on working.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use relay_core::{MemoryEngine, Relay, RelayConfig};
    /// # use mtproto_crypto::{rand_core::OsRng, ServerSigningKey};
    /// let relay = Relay::new(Arc::new(MemoryEngine::new()), ServerSigningKey::generate(&mut OsRng), RelayConfig::default());
    /// relay.end_long_polls();
    /// assert!(relay.long_polls_ended());
    /// ```
    pub fn end_long_polls(&self) {
        self.closing.send_replace(true);
    }

    /// Whether [`Relay::end_long_polls`] was called.
    pub fn long_polls_ended(&self) -> bool {
        *self.closing.borrow()
    }
}
