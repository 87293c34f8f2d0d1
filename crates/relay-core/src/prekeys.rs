//! What the relay keeps of an account's prekeys (`docs/protocol.md` §2.3 `publish_prekeys`,
//! `prekey_bundle`) and the one rule for publishing and handing them out.
//!
//! The memory and SQLite engines keep one [`StoredPrekeys`] record per account and apply
//! [`StoredPrekeys::publish`] and [`StoredPrekeys::hand_out`] inside their atomic commit; the
//! Redis engine's scripts (`commit.lua`'s `prekeys`, `take_prekey.lua`) implement the same rule
//! over a hash and a list. The conformance suite holds all three to it.
//!
//! The rule:
//! - prekeys are stored for the identity key the account has published *now*, recorded by the
//!   key and its `key_version` (both: a name removed for disuse and registered again starts its
//!   versions over, with another key); once the account publishes another key (or a recovery
//!   withdraws it), a fetch answers `no_prekeys` until it publishes prekeys again, and that
//!   publish drops the one-time prekeys left from the old key;
//! - a publish replaces the signing key and the signed prekey and adds the one-time prekeys
//!   whose ids are not held yet (the others are ignored); if the account would then hold more
//!   than [`MAX_ONE_TIME_PREKEYS`], nothing is stored;
//! - a fetch hands out the oldest one-time prekey, when asked to take one, and removes it.

use std::collections::{BTreeSet, VecDeque};

use mtproto_session::{
    x3dh::{OneTimePrekeyPublic, SignedPrekeyPublic},
    PrekeyBundle,
};
use relay_api::MAX_ONE_TIME_PREKEYS;
use serde::{Deserialize, Serialize};

use crate::{EngineError, Peer};

/// A checked `/publish_prekeys` upload: every key 32 bytes and not low-order, the signed
/// prekey's signature verified under `signing_key` for the account's current identity key,
/// one-time prekey ids unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrekeyUpload {
    /// The Ed25519 identity signing key.
    pub signing_key: [u8; 32],
    /// The signed prekey (replaces the stored one).
    pub signed_prekey: SignedPrekeyPublic,
    /// One-time prekeys to add, in the order given, ids unique.
    pub one_time: Vec<OneTimePrekeyPublic>,
}

/// An account's prekeys as the memory and SQLite engines store them (JSON in SQLite).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredPrekeys {
    /// The account's `key_version` when they were published…
    pub(crate) key_version: u32,
    /// … and its identity key then: they belong to that key.
    pub(crate) identity: [u8; 32],
    /// The Ed25519 identity signing key.
    pub(crate) signing_key: [u8; 32],
    /// The signed prekey.
    pub(crate) signed_prekey: SignedPrekeyPublic,
    /// One-time prekeys not handed out yet, oldest first.
    pub(crate) one_time: VecDeque<OneTimePrekeyPublic>,
}

impl StoredPrekeys {
    /// The record after `upload`, published by an account whose identity key is `identity` at
    /// `key_version`, over what it held before (`previous`).
    ///
    /// # Errors
    /// [`EngineError::PrekeyQuota`] when it would hold more than [`MAX_ONE_TIME_PREKEYS`]
    /// one-time prekeys (the caller then stores nothing).
    pub(crate) fn publish(
        previous: Option<Self>,
        (identity, key_version): ([u8; 32], u32),
        upload: &PrekeyUpload,
    ) -> Result<Self, EngineError> {
        // One-time prekeys of an earlier identity key are of no use to anyone: dropped.
        let mut one_time = previous
            .filter(|p| p.key_version == key_version && p.identity == identity)
            .map(|p| p.one_time)
            .unwrap_or_default();
        let mut held: BTreeSet<u32> = one_time.iter().map(|k| k.id).collect();
        let adding: Vec<&OneTimePrekeyPublic> =
            upload.one_time.iter().filter(|k| held.insert(k.id)).collect();
        if one_time.len().saturating_add(adding.len()) > MAX_ONE_TIME_PREKEYS {
            return Err(EngineError::PrekeyQuota {
                held: one_time.len(),
                adding: adding.len(),
                max: MAX_ONE_TIME_PREKEYS,
            });
        }
        one_time.extend(adding.into_iter().cloned());
        Ok(Self {
            key_version,
            identity,
            signing_key: upload.signing_key,
            signed_prekey: upload.signed_prekey.clone(),
            one_time,
        })
    }

    /// The bundle of `peer` (the account these prekeys belong to), taking its oldest one-time
    /// prekey when `take`. Returns the bundle and the identity key's version.
    ///
    /// # Errors
    /// [`EngineError::NoPrekeys`] when the peer has no identity key now or these prekeys were
    /// published for another one.
    pub(crate) fn hand_out(&mut self, peer: &Peer, take: bool) -> Result<(PrekeyBundle, u32), EngineError> {
        let identity = match peer.identity_key {
            Some(k) if k == self.identity && self.key_version == peer.key_version => k,
            _ => return Err(EngineError::NoPrekeys),
        };
        let one_time_prekey = if take { self.one_time.pop_front() } else { None };
        Ok((
            PrekeyBundle {
                identity,
                signing_key: self.signing_key,
                signed_prekey: self.signed_prekey.clone(),
                one_time_prekey,
            },
            peer.key_version,
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use mtproto_session::ClientId;

    fn otp(id: u32) -> OneTimePrekeyPublic {
        OneTimePrekeyPublic {
            id,
            public: [id as u8; 32],
        }
    }

    fn upload(ids: impl IntoIterator<Item = u32>) -> PrekeyUpload {
        PrekeyUpload {
            signing_key: [1; 32],
            signed_prekey: SignedPrekeyPublic {
                id: 1,
                public: [2; 32],
                signature: [3; 64],
            },
            one_time: ids.into_iter().map(otp).collect(),
        }
    }

    fn peer(key_version: u32, key: Option<[u8; 32]>) -> Peer {
        Peer {
            client_id: ClientId::new("bob").unwrap(),
            identity_key: key,
            key_version,
            registered_at: 0,
            last_seen: 0,
        }
    }

    #[test]
    fn held_ids_are_kept_the_cap_refuses_whole_and_an_old_key_drops_its_keys() {
        let first = StoredPrekeys::publish(None, ([9; 32], 1), &upload(1..=150)).unwrap();
        assert_eq!(first.one_time.len(), 150);
        // 1..=150 are held: only 151..=200 count, exactly up to the cap.
        let full = StoredPrekeys::publish(Some(first.clone()), ([9; 32], 1), &upload(100..=200)).unwrap();
        assert_eq!(full.one_time.len(), MAX_ONE_TIME_PREKEYS);
        assert_eq!(
            StoredPrekeys::publish(Some(full.clone()), ([9; 32], 1), &upload([201])),
            Err(EngineError::PrekeyQuota {
                held: 200,
                adding: 1,
                max: 200
            })
        );
        // Another identity key (version 2), or another key at the same version (a name
        // registered again): the old one-time prekeys are gone.
        let fresh = StoredPrekeys::publish(Some(full.clone()), ([9; 32], 2), &upload([500])).unwrap();
        assert_eq!(fresh.one_time.iter().map(|k| k.id).collect::<Vec<_>>(), [500]);
        let other = StoredPrekeys::publish(Some(full), ([8; 32], 1), &upload([500])).unwrap();
        assert_eq!(other.one_time.len(), 1);
    }

    #[test]
    fn hand_out_takes_the_oldest_once_and_only_for_the_current_key() {
        let mut s = StoredPrekeys::publish(None, ([9; 32], 3), &upload([7, 8])).unwrap();
        let (b, v) = s.hand_out(&peer(3, Some([9; 32])), true).unwrap();
        assert_eq!(
            (b.one_time_prekey.map(|k| k.id), v, b.identity),
            (Some(7), 3, [9; 32])
        );
        let (b, _) = s.hand_out(&peer(3, Some([9; 32])), false).unwrap();
        assert_eq!(b.one_time_prekey, None);
        assert_eq!(s.one_time.len(), 1);
        assert_eq!(
            s.hand_out(&peer(4, Some([9; 32])), true),
            Err(EngineError::NoPrekeys)
        );
        assert_eq!(s.hand_out(&peer(3, None), true), Err(EngineError::NoPrekeys));
        assert_eq!(
            s.hand_out(&peer(3, Some([8; 32])), true),
            Err(EngineError::NoPrekeys)
        );
        assert_eq!(s.one_time.len(), 1);
    }
}
