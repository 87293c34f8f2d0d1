//! The relay: handshakes, authenticated calls, long-poll. Brings the clock, the RNG and the
//! storage to the sans-IO session layer.

use mtproto_crypto::AuthKeyId;
use std::sync::Arc;

use mtproto_crypto::{DhGroup, ServerSigningKey};
use mtproto_session::ClientId;

use crate::{
    limits::{KeyLimits, SourceLimits, WorkMeter},
    seal::StorageSeal,
    Engine, Notifier, RelayError,
};

mod answers;
mod caches;
mod config;
mod handshake;
mod long_poll;
mod pipeline;
mod prekeys;

use caches::{CachedKey, KeyLocks};
pub use config::{Clock, RelayConfig, SystemClock};

/// Client ids nobody may register: the relay signs its own notices with them.
pub const RESERVED_CLIENT_IDS: &[&str] = &["relay", "server", "admin"];

/// The relay.
pub struct Relay {
    /// Sessions as this node last committed them. A stale entry (another node committed since)
    /// fails the commit's compare-and-swap and is re-read, so the cache only saves reads.
    sessions: std::sync::Mutex<std::collections::HashMap<AuthKeyId, crate::SessionRecord>>,
    locks: KeyLocks,
    keys: std::sync::RwLock<std::collections::HashMap<AuthKeyId, Arc<CachedKey>>>,
    engine: Arc<dyn Engine>,
    key: ServerSigningKey,
    group: DhGroup,
    config: RelayConfig,
    notifier: Arc<Notifier>,
    /// Set once the node stops: long-polls answer at once instead of waiting.
    closing: tokio::sync::watch::Sender<bool>,
    clock: Arc<dyn Clock>,
    seal: StorageSeal,
    work: WorkMeter,
    sources: SourceLimits,
    accounts: KeyLimits,
    /// Per requesting account: one-time prekeys this node may still hand out to it
    /// ([`RelayConfig::prekey_handouts`]).
    handouts: KeyLimits,
    /// Per peer: its one-time prekeys this node may still hand out, to anyone
    /// ([`RelayConfig::prekey_handouts_per_target`]).
    target_handouts: KeyLimits,
    /// When each key's last request was committed (unix seconds), so that a client that only
    /// polls still counts as active for account expiry without a write on every poll.
    touched: std::sync::Mutex<std::collections::HashMap<AuthKeyId, u64>>,
    observer: Arc<dyn crate::Observer>,
    /// Presence: when each client's last authenticated request reached this node (unix
    /// seconds), polls included, kept in memory only (never committed). The directory answers
    /// the later of this and the stored `last_seen`, so a page that long-polls shows online and
    /// goes stale as soon as its polls stop (issue 13). Per node: behind several nodes a client
    /// looks as recent as the node the asker reached last saw it.
    present: std::sync::Mutex<std::collections::HashMap<ClientId, u64>>,
}

/// A poll that changes nothing is committed anyway (to record last-seen) at most this often.
const TOUCH_EVERY_SECS: u64 = 12 * 3600;

/// Labels of the sealed records (the associated data of [`StorageSeal`]).
const SEAL_AUTH_KEY: &[u8] = b"auth_key";
const SEAL_DH_SECRET: &[u8] = b"dh_secret";
/// A 2048-bit auth key stored before keys were sealed.
const LEGACY_AUTH_KEY_LEN: usize = 256;

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("engine", &self.engine.name())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay over `engine`, signing handshakes with `key`.
    pub fn new(engine: Arc<dyn Engine>, key: ServerSigningKey, config: RelayConfig) -> Self {
        let notifier = Arc::new(Notifier::new());
        engine.set_notifier(notifier.clone());
        let seal = StorageSeal::derive(&key);
        let work = WorkMeter::new(config.work);
        let sources = SourceLimits::new(config.sources.clone());
        let accounts = KeyLimits::new(config.account_rate);
        let handouts = KeyLimits::new(config.prekey_handouts);
        let target_handouts = KeyLimits::new(config.prekey_handouts_per_target);
        Self {
            accounts,
            handouts,
            target_handouts,
            seal,
            work,
            sources,
            touched: std::sync::Mutex::new(std::collections::HashMap::new()),
            present: std::sync::Mutex::new(std::collections::HashMap::new()),
            sessions: std::sync::Mutex::new(std::collections::HashMap::new()),
            locks: KeyLocks::default(),
            keys: std::sync::RwLock::new(std::collections::HashMap::new()),
            engine,
            key,
            // The relay draws a DH secret per handshake: a table of g's powers makes that ~4x cheaper.
            group: DhGroup::mtproto().with_generator_table(),
            config,
            notifier,
            closing: tokio::sync::watch::Sender::new(false),
            clock: Arc::new(SystemClock),
            observer: Arc::new(crate::NoObserver),
        }
    }

    /// Reports what the relay does to `observer` (metrics).
    pub fn with_observer(mut self, observer: Arc<dyn crate::Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The server's signing key.
    pub fn server_key(&self) -> &ServerSigningKey {
        &self.key
    }

    /// The storage engine.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The long-poll notifier.
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    /// The per-source admission state of this node: the HTTP layer calls
    /// [`SourceLimits::admit`] before each unauthenticated step.
    pub fn sources(&self) -> &SourceLimits {
        &self.sources
    }

    /// The salt of session `sid` of key `key_id` that becomes valid at `since` (unix seconds):
    /// HKDF-SHA256 of the server key's seed, so unpredictable to anyone else and the same on
    /// every node.
    fn salt_for(
        &self,
        key_id: AuthKeyId,
        sid: mtproto_session::SessionId,
        since: u64,
    ) -> mtproto_session::ServerSalt {
        let mut info = Vec::with_capacity(24);
        info.extend_from_slice(key_id.as_bytes());
        info.extend_from_slice(&sid.0);
        info.extend_from_slice(&since.to_le_bytes());
        let mut out = [0u8; 8];
        // 8 bytes of HKDF output cannot fail; a failure would leave zeros, still a valid salt.
        let _ = mtproto_crypto::kdf::hkdf_sha256(b"mtproto-relay/salts/v1", self.key.seed(), &info, &mut out);
        mtproto_session::ServerSalt(out)
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Housekeeping: expired messages (their senders are told), handshakes and outcomes.
    ///
    /// # Errors
    /// [`RelayError::Unavailable`] when the engine fails.
    pub async fn purge(&self) -> Result<(), RelayError> {
        let notified = self.engine.purge_expired(self.clock.now()).await?;
        self.observer.expiry_notices(notified.len());
        for c in notified {
            self.notifier.notify(c.as_str());
        }
        Ok(())
    }

    /// Removes unused accounts ([`RelayConfig::accounts`]; never one with mail waiting), at
    /// most `max` in one call, and forgets their keys on this node. Returns how many.
    ///
    /// # Errors
    /// [`RelayError::Unavailable`] when the engine fails.
    pub async fn purge_accounts(&self, max: usize) -> Result<usize, RelayError> {
        let keys = self
            .engine
            .purge_accounts(self.clock.now(), self.config.accounts, max)
            .await?;
        if !keys.is_empty() {
            for k in &keys {
                self.forget_key(*k);
            }
            tracing::info!(
                removed = keys.len(),
                "unused accounts removed; their names are free again"
            );
        }
        Ok(keys.len())
    }
}
