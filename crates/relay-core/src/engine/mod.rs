//! Storage engines behind one trait. Every engine passes the same conformance suite
//! (`tests/conformance.rs`).
//!
//! Everything a second relay node would need lives in the engine: pending handshakes, auth keys,
//! sessions, outcomes of committed requests, the directory and the mailboxes. Only long-poll
//! waiters live in one node's memory; [`Engine::set_notifier`] lets an engine that spans nodes
//! wake them.

use mtproto_crypto::{AuthKeyId, Nonce128};
use std::sync::Arc;

use mtproto_session::{ClientId, PendingHandshake, ServerSession, UnixTime};

use crate::{
    AccountExpiry, AuthKeyRecord, Commit, EngineError, MailboxEntry, Notifier, Outcome, Peer, SessionRecord,
};

mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemoryEngine;
#[cfg(feature = "redis")]
pub use redis::RedisEngine;
#[cfg(feature = "sqlite")]
pub use sqlite::{backup as sqlite_backup, SqliteEngine};

/// The `expires_at` of the relay's notices (removed only by their acknowledgement).
pub use relay_api::NEVER_EXPIRES;
/// How long outcomes of committed requests are kept for resends (longer than the 300 s msg_id
/// window, so a resend inside the window always finds its outcome): part of the wire contract.
pub use relay_api::OUTCOME_TTL_SECS;

/// A storage engine. All methods are atomic on their own.
#[async_trait::async_trait]
pub trait Engine: Send + Sync + 'static {
    /// A short name for logs (`memory`, `sqlite`, `redis`).
    fn name(&self) -> &'static str;

    /// Gives the engine the node's notifier, for wake-ups that come from other nodes.
    fn set_notifier(&self, _notifier: Arc<Notifier>) {}

    /// Stores a new pending handshake, after dropping expired ones.
    ///
    /// # Errors
    /// [`EngineError::TooManyHandshakes`] when `max` are pending.
    async fn put_pending(
        &self,
        pending: PendingHandshake,
        max: usize,
        now: UnixTime,
    ) -> Result<(), EngineError>;

    /// The pending handshake stored under `server_nonce`.
    async fn get_pending(&self, server_nonce: Nonce128) -> Result<Option<PendingHandshake>, EngineError>;

    /// Replaces a pending handshake that is still at the first stage; returns false if it is
    /// gone or already advanced (a concurrent duplicate request).
    async fn advance_pending(&self, pending: PendingHandshake) -> Result<bool, EngineError>;

    /// Removes and returns the pending handshake under `server_nonce`: a nonce serves once.
    async fn take_pending(&self, server_nonce: Nonce128) -> Result<Option<PendingHandshake>, EngineError>;

    /// Binds `key.client_id` to the key, registers the client in the directory (keeping its
    /// mailbox if it existed) and stores the session.
    ///
    /// # Errors
    /// [`EngineError::ClientIdTaken`] when another key holds the client id.
    async fn create_account(
        &self,
        key: AuthKeyRecord,
        session: ServerSession,
        now: UnixTime,
    ) -> Result<(), EngineError>;

    /// The auth key record that holds `client` now, if any (for a recovery: it carries the
    /// account's recovery key).
    async fn owner(&self, client: &ClientId) -> Result<Option<AuthKeyRecord>, EngineError>;

    /// A recovery: binds `key.client_id` to the new key in place of `old_key_id`, atomically
    /// with the check that `old_key_id` still holds it; removes the old key's session (the lost
    /// device is locked out) and the published identity key (the new device publishes its
    /// own, which peers see as a key change); keeps the mailbox.
    ///
    /// # Errors
    /// [`EngineError::ClientIdTaken`] when `old_key_id` no longer holds the name.
    async fn take_over_account(
        &self,
        key: AuthKeyRecord,
        session: ServerSession,
        old_key_id: AuthKeyId,
        now: UnixTime,
    ) -> Result<(), EngineError>;

    /// The auth key with this id.
    async fn auth_key(&self, key_id: AuthKeyId) -> Result<Option<AuthKeyRecord>, EngineError>;

    /// The session of this key, which belongs to `client` (the key's record names it; engines
    /// that place data by user, such as Redis Cluster, need it to find the session).
    async fn session(
        &self,
        key_id: AuthKeyId,
        client: &ClientId,
    ) -> Result<Option<SessionRecord>, EngineError>;

    /// Commits one request atomically: session compare-and-swap, the op, the outcome and
    /// last-seen. On any error nothing is stored.
    ///
    /// # Errors
    /// [`EngineError::Conflict`] when the session moved on; [`EngineError::UnknownPeer`],
    /// [`EngineError::MailboxFull`] for a send.
    async fn commit(&self, commit: Commit) -> Result<Outcome, EngineError>;

    /// Commits a poll's acknowledgements and reads the mailbox in one step (one round trip for
    /// engines that can). The default runs [`Engine::commit`] then [`Engine::fetch`].
    ///
    /// # Errors
    /// As [`Engine::commit`].
    async fn commit_and_fetch(
        &self,
        commit: Commit,
        limit: usize,
    ) -> Result<(Outcome, Vec<MailboxEntry>), EngineError> {
        let client = commit.client.clone();
        let now = commit.now;
        let outcome = self.commit(commit).await?;
        let entries = self.fetch(&client, limit, now).await?;
        Ok((outcome, entries))
    }

    /// Engine counters for `/healthz` (e.g. Redis round trips), if the engine keeps any.
    fn stats(&self) -> Option<serde_json::Value> {
        None
    }

    /// Whether the engine can serve requests now (Redis answers a `PING`; SQLite has had no
    /// failed fsync). `/healthz` reports it, so a load balancer can take a failing node out.
    ///
    /// # Errors
    /// [`EngineError::Storage`] saying what is wrong.
    async fn health(&self) -> Result<(), EngineError> {
        Ok(())
    }

    /// The stored outcome of a request of `client`'s key `key_id` that was committed.
    async fn outcome(
        &self,
        key_id: AuthKeyId,
        client: &ClientId,
        msg_id: u64,
    ) -> Result<Option<Outcome>, EngineError>;

    /// Up to `limit` entries of `client`'s mailbox, oldest first, not yet expired at `now`.
    async fn fetch(
        &self,
        client: &ClientId,
        limit: usize,
        now: UnixTime,
    ) -> Result<Vec<MailboxEntry>, EngineError>;

    /// A page of the directory: up to `limit` clients that published an identity key, whose
    /// names start with `prefix` (lower case, as every name), after `after` (exclusive) in
    /// name order.
    async fn peers_page(
        &self,
        prefix: &str,
        after: Option<&ClientId>,
        limit: usize,
    ) -> Result<Vec<Peer>, EngineError>;

    /// One registered client.
    async fn peer(&self, client: &ClientId) -> Result<Option<Peer>, EngineError>;

    /// Removes accounts that `policy` says are unused and whose mailboxes are empty: their auth
    /// keys, sessions, outcomes and directory entries, so that their names can be registered
    /// again. Removes at most `max` accounts a call; returns the removed auth key ids (a node
    /// drops them from its caches).
    async fn purge_accounts(
        &self,
        now: UnixTime,
        policy: AccountExpiry,
        max: usize,
    ) -> Result<Vec<AuthKeyId>, EngineError>;

    /// Removes expired messages (telling each sender with an `expired` entry in its own
    /// mailbox), expired pending handshakes and old outcomes. Returns the clients whose
    /// mailboxes got notices.
    async fn purge_expired(&self, now: UnixTime) -> Result<Vec<ClientId>, EngineError>;
}

/// The relay's pseudo-sender for notices.
pub const RELAY_SENDER: &str = "relay";
