//! What the relay stores.

use mtproto_crypto::AuthKeyId;
use mtproto_session::{wire::Bytes, ClientId, SecretBytes, ServerSession, UnixTime};
use serde::{Deserialize, Serialize};

use relay_api::{AckRef, EntryKind, PeerInfo, PolledEntry, NEVER_EXPIRES};

use crate::EngineError;

/// An auth key and the client id it claimed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthKeyRecord {
    /// `SHA1(auth_key)[12..20]`.
    #[serde(with = "key_id_bytes")]
    pub key_id: AuthKeyId,
    /// The key (secret).
    pub auth_key: SecretBytes,
    /// The client id bound to it.
    pub client_id: ClientId,
    /// When the handshake finished.
    pub created_at: UnixTime,
    /// The public half of the account's recovery code (`docs/protocol.md` §1 "Recovery");
    /// absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<[u8; 32]>,
}

/// An [`AuthKeyId`] stored as its 8 bytes (as records written before it was typed).
mod key_id_bytes {
    use mtproto_crypto::AuthKeyId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(id: &AuthKeyId, s: S) -> Result<S::Ok, S::Error> {
        id.as_bytes().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AuthKeyId, D::Error> {
        <[u8; 8]>::deserialize(d).map(AuthKeyId::from_bytes)
    }
}

/// A session with a version for optimistic concurrency: a commit names the version it read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session state.
    pub session: ServerSession,
    /// Incremented by every commit.
    pub version: u64,
}

/// One entry of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxEntry {
    /// Monotonically increasing per mailbox.
    pub seq: u64,
    /// The sender (`relay` for notices).
    pub from: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: EntryKind,
    /// The opaque end-to-end ciphertext.
    pub payload: Bytes,
    /// Server time it was stored, ms since the epoch.
    pub timestamp_ms: u64,
    /// When it expires, unix seconds.
    pub expires_at: u64,
}

impl From<MailboxEntry> for PolledEntry {
    /// The entry as a poll returns it; every "never" is spelled [`NEVER_EXPIRES`].
    fn from(e: MailboxEntry) -> Self {
        Self {
            seq: e.seq,
            from: e.from,
            kind: e.kind,
            payload: e.payload,
            timestamp_ms: e.timestamp_ms,
            expires_at: e.expires_at.min(NEVER_EXPIRES),
        }
    }
}

/// A registered client as the directory shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The client id.
    pub client_id: ClientId,
    /// Its X25519 identity public key, once published.
    pub identity_key: Option<[u8; 32]>,
    /// 0 before the first publication, then +1 for every change of key.
    pub key_version: u32,
    /// When it registered, unix seconds.
    pub registered_at: u64,
    /// Its last authenticated request, unix seconds.
    pub last_seen: u64,
}

impl From<Peer> for PeerInfo {
    fn from(p: Peer) -> Self {
        let fingerprint = p
            .identity_key
            .map(|k| mtproto_crypto::IdentityPublic::from_bytes(k).short_fingerprint());
        Self {
            client_id: p.client_id,
            identity_key: p.identity_key.map(|k| Bytes(k.to_vec())),
            fingerprint,
            key_version: p.key_version,
            last_seen: p.last_seen,
            registered_at: p.registered_at,
        }
    }
}

/// The result of a committed request, kept so that a resent envelope gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing beyond the session update.
    Done,
    /// A message was stored.
    Sent {
        /// Its sequence number in the recipient's mailbox.
        seq: u64,
        /// Server time it was stored, ms.
        timestamp_ms: u64,
    },
    /// Acknowledged entries were removed.
    Acked {
        /// How many existed and were removed.
        removed: usize,
    },
    /// The identity key was published.
    KeyPublished {
        /// Whether it differs from the previous key.
        changed: bool,
        /// The key version now.
        key_version: u32,
    },
    /// Prekeys were published.
    PrekeysPublished {
        /// How many one-time prekeys the account holds now.
        one_time_prekeys: usize,
    },
    /// A peer's prekey bundle was handed out (with the one-time prekey it took, if any: a
    /// resend gets this same bundle and takes nothing more).
    PrekeyBundle {
        /// The bundle.
        bundle: mtproto_session::PrekeyBundle,
        /// The peer's identity key version.
        key_version: u32,
    },
}

/// The effect a request has, applied atomically with the session update.
#[derive(Debug, Clone)]
pub enum Op {
    /// No effect beyond the session update and last-seen.
    Touch,
    /// Append a message to `to`'s mailbox, within `quota`.
    Send {
        /// The recipient.
        to: ClientId,
        /// The end-to-end ciphertext.
        payload: Vec<u8>,
        /// What the recipient's mailbox may hold, checked with the append.
        quota: SendQuota,
        /// Message time to live, seconds.
        ttl_secs: u64,
        /// Store only if the recipient's key is this version ([`EngineError::PeerKeyChanged`]
        /// otherwise), checked atomically with the append.
        key_version: Option<u32>,
    },
    /// Remove these entries from the requester's own mailbox.
    Ack {
        /// The entries to remove.
        seqs: Vec<AckRef>,
    },
    /// Publish (or rotate) the requester's identity key.
    PublishKey {
        /// The X25519 public key.
        key: [u8; 32],
    },
    /// Publish the requester's prekeys for its identity key at `key_version` (the relay checked
    /// the signature against that key). Refused with [`EngineError::NoIdentityKey`] when the
    /// requester has no identity key, [`EngineError::Conflict`] when its key is no longer at
    /// `key_version` (the relay reads and checks again), [`EngineError::PrekeyQuota`].
    PublishPrekeys {
        /// The requester's identity key version the upload was checked against.
        key_version: u32,
        /// The checked upload.
        prekeys: crate::PrekeyUpload,
    },
    /// Hand out `peer`'s prekey bundle, taking one of its one-time prekeys if `one_time` and
    /// one is left. Refused with [`EngineError::UnknownPeer`] or [`EngineError::NoPrekeys`].
    TakePrekeyBundle {
        /// Whose bundle.
        peer: ClientId,
        /// Whether to take a one-time prekey (false when the requester's hand-out budget is
        /// spent).
        one_time: bool,
    },
}

/// The limits a send must fit, checked by the engine atomically with the append. Payload bytes
/// are counted (not the entry's metadata); relay notices count against nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendQuota {
    /// Most entries in one mailbox.
    pub mailbox_entries: usize,
    /// Most payload bytes in one mailbox.
    pub mailbox_bytes: u64,
    /// Most entries one sender may have waiting in one mailbox.
    pub sender_entries: usize,
    /// Most payload bytes one sender may have waiting in one mailbox.
    pub sender_bytes: u64,
}

impl SendQuota {
    /// Quotas that never refuse (tests and tools).
    pub const UNLIMITED: Self = Self {
        mailbox_entries: usize::MAX,
        mailbox_bytes: u64::MAX,
        sender_entries: usize::MAX,
        sender_bytes: u64::MAX,
    };

    /// Which quota, if any, one more payload of `len` bytes would break, given what the
    /// mailbox holds (`entries`, `bytes`) and what this sender has in it.
    ///
    /// # Errors
    /// [`EngineError::MailboxFull`] or [`EngineError::SenderQuota`].
    pub fn admit(
        &self,
        (entries, bytes): (usize, u64),
        (sender_entries, sender_bytes): (usize, u64),
        len: usize,
    ) -> Result<(), EngineError> {
        let len = len as u64;
        if entries >= self.mailbox_entries || bytes.saturating_add(len) > self.mailbox_bytes {
            return Err(EngineError::MailboxFull {
                cap: self.mailbox_entries,
            });
        }
        if sender_entries >= self.sender_entries || sender_bytes.saturating_add(len) > self.sender_bytes {
            return Err(EngineError::SenderQuota);
        }
        Ok(())
    }
}

/// When the directory forgets an account (its keys, session, directory entry; a mailbox with
/// mail waiting keeps the account alive) and releases its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountExpiry {
    /// An account that never published an identity key is removed this long after it registered.
    pub unpublished_secs: u64,
    /// Any account is removed after this long without an authenticated request.
    pub idle_secs: u64,
}

/// One authenticated request, committed atomically: the session moves from `expected_version`,
/// the op applies, and (if `keep_outcome`) the outcome is stored under `(key_id, msg_id)`.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The requester's key.
    pub key_id: AuthKeyId,
    /// The requester.
    pub client: ClientId,
    /// The session after accepting the request.
    pub session: ServerSession,
    /// The version the session was read at.
    pub expected_version: u64,
    /// The request's msg_id.
    pub msg_id: u64,
    /// What the request does.
    pub op: Op,
    /// Whether to keep the outcome for resends.
    pub keep_outcome: bool,
    /// The time of the request.
    pub now: UnixTime,
}
