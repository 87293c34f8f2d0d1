//! What a node keeps in memory besides long-polls: auth keys and sessions (bounded caches,
//! one lock per key), and presence for the directory.

use mtproto_crypto::AuthKeyId;
use std::sync::Arc;

use mtproto_crypto::AuthKey;
use mtproto_session::{ClientId, UnixTime};

use super::{Relay, LEGACY_AUTH_KEY_LEN, SEAL_AUTH_KEY, TOUCH_EVERY_SECS};
use crate::{api::PeerInfo, RelayError};

/// An auth key as the relay uses it on every request: parsed once, cached (auth keys never
/// change once created, so a cache is safe on every node; a recovery on another node, which
/// deletes the old key there, is caught before mail is handed out: see `Relay::long_poll`).
pub(crate) struct CachedKey {
    pub(crate) key: AuthKey,
    pub(crate) client_id: ClientId,
}

/// Most auth keys kept parsed in memory (the cache is cleared past this).
pub(crate) const KEY_CACHE_MAX: usize = 200_000;

/// Per-key locks: one key's requests go through read → accept → commit one at a time on this
/// node, so a busy client never starves its own long-poll. Across nodes the session version's
/// compare-and-swap (with retries) keeps them consistent.
#[derive(Default)]
pub(crate) struct KeyLocks {
    map: std::sync::Mutex<std::collections::HashMap<AuthKeyId, std::sync::Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyLocks {
    pub(crate) fn get(&self, key_id: AuthKeyId) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = map.get(&key_id).and_then(std::sync::Weak::upgrade) {
            return l;
        }
        if map.len() > 4096 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key_id, Arc::downgrade(&l));
        l
    }
}

impl Relay {
    pub(crate) async fn auth_key(&self, key_id: AuthKeyId) -> Result<Arc<CachedKey>, RelayError> {
        if let Some(k) = self.keys.read().unwrap_or_else(|p| p.into_inner()).get(&key_id) {
            return Ok(k.clone());
        }
        let record = self
            .engine
            .auth_key(key_id)
            .await?
            .ok_or(RelayError::UnknownAuthKey)?;
        let stored = record.auth_key.expose();
        let key = if stored.len() == LEGACY_AUTH_KEY_LEN {
            // Written before keys were sealed: still served (docs/security.md, "Data at rest").
            AuthKey::from_slice(stored)
        } else {
            let plain = self
                .seal
                .open(SEAL_AUTH_KEY, key_id.as_bytes(), stored)
                .map_err(|_| {
                    RelayError::Unavailable("a stored auth key does not open under this server key".into())
                })?;
            AuthKey::from_slice(&plain)
        }
        .map_err(|_| RelayError::Internal("stored key".into()))?;
        let cached = Arc::new(CachedKey {
            key,
            client_id: record.client_id,
        });
        let mut map = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= KEY_CACHE_MAX {
            map.clear();
        }
        map.insert(key_id, cached.clone());
        Ok(cached)
    }

    pub(crate) fn cached_session(&self, key_id: AuthKeyId) -> Option<crate::SessionRecord> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key_id)
            .cloned()
    }

    pub(crate) fn cache_session(&self, key_id: AuthKeyId, record: crate::SessionRecord) {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= KEY_CACHE_MAX {
            map.clear();
        }
        map.insert(key_id, record);
    }

    /// Drops an auth key and its session from this node's caches (the key no longer holds its
    /// name: the next request reads storage, which no longer has it).
    pub(crate) fn forget_key(&self, key_id: AuthKeyId) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key_id);
        self.forget_session(key_id);
    }

    pub(crate) fn forget_session(&self, key_id: AuthKeyId) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key_id);
    }

    /// Whether a request of `key_id` at `now` should be committed even if it changes nothing:
    /// the first on this node, then once every [`TOUCH_EVERY_SECS`] (or a quarter of the idle
    /// expiry, if shorter): it records last-seen.
    pub(crate) fn touch_due(&self, key_id: AuthKeyId, now: UnixTime) -> bool {
        let now = now.as_secs();
        // Often enough that an account that only polls never looks idle.
        let every = TOUCH_EVERY_SECS.min(self.config.accounts.idle_secs / 4);
        let mut map = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key_id) {
            Some(at) if now.saturating_sub(*at) < every => false,
            _ => {
                if map.len() >= KEY_CACHE_MAX {
                    map.clear();
                }
                map.insert(key_id, now);
                true
            }
        }
    }

    /// Records that `client` made an authenticated request at `now` (presence, in memory).
    pub(crate) fn mark_present(&self, client: &ClientId, now: UnixTime) {
        let mut map = self.present.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= KEY_CACHE_MAX && !map.contains_key(client) {
            map.clear();
        }
        map.insert(client.clone(), now.as_secs());
    }

    /// A directory entry with the presence this node saw (the later of it and the stored one).
    pub(crate) fn with_presence(&self, p: crate::model::Peer) -> PeerInfo {
        let seen = self
            .present
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&p.client_id)
            .copied();
        let mut info = PeerInfo::from(p);
        if let Some(s) = seen {
            info.last_seen = info.last_seen.max(s);
        }
        info
    }
}
