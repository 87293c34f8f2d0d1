//! The errors of this crate (one enum per operation, wrapped by [`Error`]), and MTProto's
//! bad_msg_notification codes.

use serde::{Deserialize, Serialize};

/// MTProto's `bad_msg_notification` error codes (service messages about messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BadMsgCode {
    /// 16: msg_id too low (more than 300 s in the past): resync the clock, resend with a new id.
    MsgIdTooLow,
    /// 17: msg_id too high (more than 30 s in the future): resync the clock, resend.
    MsgIdTooHigh,
    /// 18: wrong two low bits of msg_id (client ids are divisible by 4, server ids are 1 or 3 mod 4).
    MsgIdBadLowBits,
    /// 19: a container msg_id equal to one already received.
    ContainerMsgIdReused,
    /// 20: too old: below the replay window, so it cannot be told whether it was received.
    MsgTooOld,
    /// 32: msg_seqno too low.
    SeqNoTooLow,
    /// 33: msg_seqno too high.
    SeqNoTooHigh,
    /// 34: an even seqno was expected (not content-related), an odd one received.
    SeqNoExpectedEven,
    /// 35: an odd seqno was expected (content-related), an even one received.
    SeqNoExpectedOdd,
    /// 48: wrong server salt; the answer carries the current one.
    BadServerSalt,
    /// 64: invalid container.
    InvalidContainer,
}

impl BadMsgCode {
    /// The numeric code MTProto uses.
    pub const fn code(self) -> u32 {
        match self {
            Self::MsgIdTooLow => 16,
            Self::MsgIdTooHigh => 17,
            Self::MsgIdBadLowBits => 18,
            Self::ContainerMsgIdReused => 19,
            Self::MsgTooOld => 20,
            Self::SeqNoTooLow => 32,
            Self::SeqNoTooHigh => 33,
            Self::SeqNoExpectedEven => 34,
            Self::SeqNoExpectedOdd => 35,
            Self::BadServerSalt => 48,
            Self::InvalidContainer => 64,
        }
    }

    /// The code for a number, if MTProto defines it.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            16 => Self::MsgIdTooLow,
            17 => Self::MsgIdTooHigh,
            18 => Self::MsgIdBadLowBits,
            19 => Self::ContainerMsgIdReused,
            20 => Self::MsgTooOld,
            32 => Self::SeqNoTooLow,
            33 => Self::SeqNoTooHigh,
            34 => Self::SeqNoExpectedEven,
            35 => Self::SeqNoExpectedOdd,
            48 => Self::BadServerSalt,
            64 => Self::InvalidContainer,
            _ => return None,
        })
    }

    /// Whether resending the same content with a fresh msg_id (after a clock or salt fix) can
    /// succeed, as grammers' `BadMessage::retryable` says.
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            Self::MsgIdTooLow | Self::MsgIdTooHigh | Self::BadServerSalt | Self::MsgTooOld
        )
    }
}

/// A field that could not be decoded (bad base64 or hex, a wrong length, bad JSON). Every
/// operation's error wraps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed {field}: {reason}")]
pub struct Malformed {
    /// The field.
    pub field: &'static str,
    /// What was wrong (a fixed description, never secret data).
    pub reason: &'static str,
}

/// Why a handshake step failed ([`crate::handshake`], [`crate::work`]), on either side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// A field of the step could not be decoded.
    #[error("malformed {field}: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// A nonce in the message did not match this handshake.
    #[error("{which} does not match this handshake")]
    NonceMismatch {
        /// `nonce` or `server_nonce`.
        which: &'static str,
    },
    /// The client's answer to the pq proof of work is wrong (or missing).
    #[error("wrong proof-of-work answer")]
    BadProofOfWork,
    /// The server asked for a proof of work harder than a client accepts to do.
    #[error("the server asks for {bits} bits of proof of work, more than {max}")]
    WorkTooHard {
        /// The bits asked.
        bits: u8,
        /// The most a client does.
        max: u8,
    },
    /// The server's key is not the pinned one.
    #[error("server key fingerprint {got} is not the pinned {expected}")]
    UntrustedServer {
        /// The fingerprint the server presented.
        got: String,
        /// The pinned fingerprint.
        expected: String,
    },
    /// The server's signature over the handshake transcript is invalid.
    #[error("server signature over the handshake is invalid")]
    BadSignature,
    /// A DH value or group failed a check.
    #[error("Diffie-Hellman check failed: {0}")]
    Dh(mtproto_crypto::Error),
    /// The key confirmation (new_nonce_hash1) did not match: the server does not hold our key.
    #[error("key confirmation failed")]
    KeyConfirmation,
    /// The pending handshake expired.
    #[error("handshake expired")]
    Expired,
    /// A step came out of order (a step repeated, or one skipped).
    #[error("handshake step {got} out of order: the handshake is at {expected}")]
    StepOutOfOrder {
        /// The step the handshake waits for.
        expected: &'static str,
        /// The step that came.
        got: &'static str,
    },
}

/// Why an envelope (the auth-key layer between a client and the relay, [`crate::session`])
/// could not be made or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// A field could not be decoded.
    #[error("malformed {field}: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// The packet failed to decrypt or authenticate. Opaque on purpose.
    #[error("message rejected")]
    Decrypt,
    /// The message is for another session.
    #[error("unknown session")]
    WrongSession,
    /// MTProto's bad_msg_notification: the message breaks a msg_id, seq_no or salt rule.
    #[error("bad message {bad_msg_id} (code {})", .code.code())]
    BadMsg {
        /// The MTProto code.
        code: BadMsgCode,
        /// The offending message's id.
        bad_msg_id: u64,
        /// The offending message's seq_no.
        bad_msg_seqno: u32,
    },
    /// The msg_id was already received: a resend or a replay.
    #[error("duplicate msg_id {msg_id}")]
    Duplicate {
        /// The repeated id.
        msg_id: u64,
    },
    /// The body (or the packet around it) is over the limit.
    #[error("envelope of {got} bytes, over the limit of {max}")]
    TooLarge {
        /// Its size.
        got: u64,
        /// The limit.
        max: u64,
    },
}

/// Why the end-to-end layer between two peers ([`crate::e2e`], [`crate::x3dh`],
/// [`crate::ratchet`], [`crate::ratchet_chat`]) refused a packet, a start or a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E2eError {
    /// A field or a saved state could not be decoded.
    #[error("malformed {field}: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// The packet failed to decrypt or authenticate. Opaque on purpose: forged, corrupted and
    /// reflected packets all look the same.
    #[error("message rejected")]
    Decrypt,
    /// A message was already received (same sequence number): a replay or a resend.
    #[error("end-to-end replay of message {seq}")]
    Replay {
        /// The repeated sequence number.
        seq: u32,
    },
    /// The peer's counters are impossible (it claims to have received more than we sent, or
    /// its counter went back), or a call came in the wrong state.
    #[error("end-to-end protocol violation: {reason}")]
    Protocol {
        /// What was violated.
        reason: &'static str,
    },
    /// The message is over the framing's limit.
    #[error("message of {got} bytes, over the limit of {max}")]
    TooLarge {
        /// Its size (bytes of framed data).
        got: u64,
        /// The limit.
        max: u64,
    },
    /// A saved window holds more gaps (or given-up runs) than allowed.
    #[error("{got} gaps, more than {max}")]
    TooManyGaps {
        /// Gaps in the saved state.
        got: u64,
        /// The limit.
        max: u64,
    },
    /// A key is a low-order point, or a DH output is zero.
    #[error("Diffie-Hellman check failed: {0}")]
    Dh(mtproto_crypto::Error),
    /// The bundle's signed prekey signature does not verify under its identity signing key.
    #[error("the signed prekey's signature is invalid")]
    BadPrekeySignature,
    /// A prekey bundle or start message names another identity than the one expected (pinned)
    /// for this peer.
    #[error("the prekey bundle belongs to another identity")]
    PeerIdentityMismatch,
    /// A start message names a prekey this side does not hold (never made, rotated out, or a
    /// one-time prekey already used: a replayed start).
    #[error("unknown {which} prekey {id}")]
    UnknownPrekey {
        /// `signed` or `one-time`.
        which: &'static str,
        /// The prekey id named.
        id: u32,
    },
    /// More one-time prekeys than a client keeps.
    #[error("more than {max} one-time prekeys")]
    TooManyPrekeys {
        /// The limit.
        max: u64,
    },
    /// The double ratchet's message key for this message was already used (a replay) or
    /// dropped (too old, evicted from the skipped-key store, or the chain moved on).
    #[error("message key {n} of its chain is gone (replay, or too late)")]
    MessageKeyGone {
        /// The message number in its chain.
        n: u32,
    },
    /// Opening this message would skip more message keys in one chain than
    /// [`crate::ratchet::MAX_SKIP`] allows.
    #[error("message skips {skip} keys of one chain, more than {max}")]
    TooManySkipped {
        /// Keys it would skip.
        skip: u64,
        /// The limit.
        max: u32,
    },
    /// 2³² − 1 messages were sent in one sending chain.
    #[error("the sending chain is exhausted")]
    ChainExhausted,
    /// Opening this message would derive more chain steps than the sender's
    /// [`crate::skip_budget::SkipBudget`] has left (it refills within the hour).
    #[error("the sender's skip budget is spent: {need} chain steps needed, {left} left")]
    SkipBudget {
        /// Chain steps the message needs.
        need: u64,
        /// Chain steps left in the budget.
        left: u64,
    },
}

/// Every way an operation of this crate can fail: one enum per operation, and the codec's
/// [`Malformed`]. Match on the operation's own error where you call it; this one is for code
/// that drives several (`?` converts each into it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field or a saved record could not be decoded.
    #[error("malformed {field}: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
    /// A handshake step.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// An envelope between a client and the relay.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The end-to-end layer between two peers.
    #[error(transparent)]
    E2e(#[from] E2eError),
}

macro_rules! from_malformed {
    ($($t:ty),*) => {$(
        impl From<Malformed> for $t {
            fn from(Malformed { field, reason }: Malformed) -> Self {
                Self::Malformed { field, reason }
            }
        }
    )*};
}
from_malformed!(Error, HandshakeError, EnvelopeError, E2eError);

impl From<mtproto_crypto::Error> for HandshakeError {
    fn from(e: mtproto_crypto::Error) -> Self {
        match e {
            mtproto_crypto::Error::BadSignature => Self::BadSignature,
            other => Self::Dh(other),
        }
    }
}

impl From<mtproto_crypto::Error> for E2eError {
    fn from(e: mtproto_crypto::Error) -> Self {
        match e {
            mtproto_crypto::Error::Decrypt => Self::Decrypt,
            other => Self::Dh(other),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in [16, 17, 18, 19, 20, 32, 33, 34, 35, 48, 64] {
            assert_eq!(BadMsgCode::from_code(c).unwrap().code(), c);
        }
        assert_eq!(BadMsgCode::from_code(21), None);
        assert!(BadMsgCode::BadServerSalt.retryable());
        assert!(!BadMsgCode::SeqNoExpectedOdd.retryable());
    }
}
