//! The outbox: messages sealed end to end once and kept until the relay's answer says stored or
//! refused (issue 12, `docs/protocol.md` §3 "The sender's outbox").
//!
//! An entry holds the end-to-end packet (sealed once: its sequence number never changes) and
//! the envelope it was last posted in. A resend within the relay's msg_id window posts the same
//! envelope, which the relay answers from its stored outcome; a later one wraps the same packet
//! in a new envelope, and a second copy that reaches the peer is dropped there as an end-to-end
//! replay. Entries are saved in the profile when the client keeps one.

use mtproto_session::wire::Bytes;
use relay_api::ErrorCode;
use serde::{Deserialize, Serialize};

/// Most messages waiting in the outbox (sending or refused); [`crate::Client::send`] refuses
/// more with [`crate::ClientError::OutboxFull`].
pub const MAX_OUTBOX: usize = 1000;

/// The local id of a message in the outbox (not sent to anyone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OutboxId(pub u64);

impl std::fmt::Display for OutboxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a message is on its way to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SendState {
    /// Not yet answered: the relay was unreachable or unavailable. It is resent by
    /// [`crate::Client::flush_outbox`] (at the start of every `poll` and `send`).
    Sending {
        /// The last failure, if an attempt was made.
        last_error: Option<String>,
    },
    /// Stored in the recipient's mailbox.
    Stored {
        /// The envelope's msg_id.
        msg_id: u64,
        /// The message's sequence number in the recipient's mailbox.
        mailbox_seq: u64,
        /// Server time it was stored, ISO 8601.
        timestamp: String,
    },
    /// The relay refused it (`mailbox_full`, `sender_quota`, `unknown_peer`,
    /// `payload_too_large`, ...). It stays in the outbox until [`crate::Client::retry`] or
    /// [`crate::Client::abandon`].
    Refused {
        /// The relay's error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
}

/// What became of a message: returned by [`crate::Client::send`], listed by
/// [`crate::Client::outbox`], and reported as [`crate::Event::Outbox`] when a later flush
/// settles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Its id in the outbox.
    pub id: OutboxId,
    /// The recipient.
    pub to: String,
    /// Its sequence number in the conversation (what a peer's receipt and a peer's "lost"
    /// report name).
    pub seq: u32,
    /// Its state.
    pub state: SendState,
    /// A copy may have been stored although this attempt was refused (an earlier envelope got
    /// no answer): the peer may have it. Show "possibly delivered", not "not sent".
    pub maybe_stored: bool,
}

impl Receipt {
    /// The mailbox sequence number, once stored.
    pub fn mailbox_seq(&self) -> Option<u64> {
        match &self.state {
            SendState::Stored { mailbox_seq, .. } => Some(*mailbox_seq),
            _ => None,
        }
    }

    /// The server time it was stored (ISO 8601), once stored.
    pub fn timestamp(&self) -> Option<&str> {
        match &self.state {
            SendState::Stored { timestamp, .. } => Some(timestamp),
            _ => None,
        }
    }
}

/// An envelope a message was posted in, kept to resend the very same bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostedEnvelope {
    /// Its msg_id.
    pub msg_id: u64,
    /// The session it belongs to.
    pub session_id: mtproto_session::SessionId,
    /// The packet, byte for byte.
    pub packet: Bytes,
    /// Whether it may have been stored: set before every attempt (and saved with the profile),
    /// cleared only by a definitive refusal of this envelope — so a client killed mid-post
    /// never gives back a sequence number a stored copy holds.
    pub uncertain: bool,
}

/// A message in the outbox, as the profile keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Its id.
    pub id: OutboxId,
    /// The recipient.
    pub to: String,
    /// The plaintext, kept only to seal it again when its sequence number was given back.
    pub body: Bytes,
    /// The end-to-end packet, sealed once.
    pub packet: Bytes,
    /// Its end-to-end sequence number.
    pub seq: u32,
    /// The envelope it was last posted in.
    pub envelope: Option<PostedEnvelope>,
    /// An earlier envelope was given up without an answer: a copy may be stored, so the
    /// sequence number must never be given back.
    pub maybe_stored: bool,
    /// Its sequence number was given back (refused or abandoned while the last one sealed): the
    /// packet must never be sent; a retry seals the body again under a new number.
    #[serde(default)]
    pub released: bool,
    /// A control message (a delivery receipt), not the user's: never listed nor reported.
    #[serde(default)]
    pub control: bool,
    /// The recipient's key version it was sealed for (`key_version` of the send: the relay
    /// refuses it with `peer_key_changed` once the recipient has another key). `None` in
    /// outboxes saved before it existed.
    #[serde(default)]
    pub key_version: Option<u32>,
    /// Its state (never `Stored`: stored entries leave the outbox).
    pub state: SendState,
}

impl OutboxEntry {
    /// The receipt for it now.
    pub fn receipt(&self) -> Receipt {
        Receipt {
            id: self.id,
            to: self.to.clone(),
            seq: self.seq,
            state: self.state.clone(),
            maybe_stored: self.maybe_stored || self.envelope.as_ref().is_some_and(|e| e.uncertain),
        }
    }

    /// Forgets the envelope (a new one will be made), remembering whether it may have been
    /// stored.
    pub(crate) fn drop_envelope(&mut self) {
        if let Some(env) = self.envelope.take() {
            self.maybe_stored |= env.uncertain;
        }
    }
}

/// Refusals that settle a message: the relay stored nothing and will not for this envelope.
/// Everything else (503, 429 past our patience, 5xx, an unreadable answer) leaves it sending.
pub(crate) fn is_final_refusal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::UnknownPeer
            | ErrorCode::PeerKeyChanged
            | ErrorCode::MailboxFull
            | ErrorCode::SenderQuota
            | ErrorCode::PayloadTooLarge
            | ErrorCode::InvalidField
    )
}
