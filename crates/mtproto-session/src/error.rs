//! The one error type of this crate, and MTProto's bad_msg_notification codes.

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

/// Every way an operation of this crate can fail, sorted by who is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- malformed input -------------------------------------------------------------------
    /// A field could not be decoded (bad base64/hex, wrong length, bad JSON).
    #[error("malformed {field}: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What was wrong (a fixed description, never secret data).
        reason: &'static str,
    },

    // --- a peer breaking the protocol ------------------------------------------------------
    /// A packet failed to decrypt or authenticate. Opaque on purpose.
    #[error("message rejected")]
    Decrypt,
    /// A nonce in a handshake message did not match this handshake.
    #[error("{which} does not match this handshake")]
    NonceMismatch {
        /// `nonce` or `server_nonce`.
        which: &'static str,
    },
    /// The client's answer to the pq proof of work is wrong.
    #[error("wrong proof-of-work answer")]
    BadProofOfWork,
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
    /// End-to-end: a message was already received (same sequence number): a replay or a resend.
    #[error("end-to-end replay of message {seq}")]
    E2eReplay {
        /// The repeated sequence number.
        seq: u32,
    },
    /// End-to-end: the peer's counters are impossible (it claims to have received more than
    /// we sent, or its counter went back).
    #[error("end-to-end protocol violation: {reason}")]
    E2eProtocol {
        /// What was violated.
        reason: &'static str,
    },

    /// End-to-end: the bundle's signed prekey signature does not verify under the bundle's
    /// identity signing key.
    #[error("the signed prekey's signature is invalid")]
    BadPrekeySignature,
    /// End-to-end: a prekey bundle or start message names another identity than the one expected
    /// (pinned) for this peer.
    #[error("the prekey bundle belongs to another identity")]
    PeerIdentityMismatch,
    /// End-to-end: a start message names a prekey this side does not hold (never made, rotated
    /// out, or a one-time prekey already used: a replayed start).
    #[error("unknown {which} prekey {id}")]
    UnknownPrekey {
        /// `signed` or `one-time`.
        which: &'static str,
        /// The prekey id named.
        id: u32,
    },
    /// End-to-end (double ratchet): the message key for this message was already used (a
    /// replay) or dropped (too old, evicted from the skipped-key store, or the chain moved on).
    #[error("message key {n} of its chain is gone (replay, or too late)")]
    MessageKeyGone {
        /// The message number in its chain.
        n: u32,
    },

    // --- limits ------------------------------------------------------------------------------
    /// End-to-end (double ratchet): opening this message would skip more message keys in one
    /// chain than [`crate::ratchet::MAX_SKIP`] allows.
    #[error("message skips {skip} keys of one chain, more than {max}")]
    TooManySkipped {
        /// Keys it would skip.
        skip: u64,
        /// The limit.
        max: u32,
    },
    /// A pending handshake expired.
    #[error("handshake expired")]
    HandshakeExpired,
    /// A handshake step came out of order (a step repeated, or one skipped).
    #[error("handshake step {got} out of order: the handshake is at {expected}")]
    StepOutOfOrder {
        /// The step the handshake waits for.
        expected: &'static str,
        /// The step that came.
        got: &'static str,
    },
    /// A size or count limit was exceeded.
    #[error("{what} exceeds the limit of {max}")]
    Limit {
        /// What.
        what: &'static str,
        /// The limit.
        max: u64,
    },
}

impl From<mtproto_crypto::Error> for Error {
    fn from(e: mtproto_crypto::Error) -> Self {
        match e {
            mtproto_crypto::Error::Decrypt => Self::Decrypt,
            mtproto_crypto::Error::BadSignature => Self::BadSignature,
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
