//! The relay's refusals: one JSON body, one code per reason, one HTTP status per code.

use std::fmt;

use mtproto_session::wire::Bytes;
use serde::{Deserialize, Serialize};

/// Every error code the relay answers, in `ErrorBody::error`. The wire spelling is the
/// snake_case name (`MailboxFull` is `"mailbox_full"`). A code this version does not know (from a
/// newer relay) deserializes as [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// A field is present but invalid (wrong length, out of range, not a name…).
    InvalidField,
    /// The body is not JSON.
    MalformedJson,
    /// The request could not be read (e.g. a broken chunked body).
    BadRequest,
    /// The body is over the relay's size limit.
    PayloadTooLarge,
    /// The body did not arrive in time.
    RequestTimeout,
    /// No such route.
    NotFound,
    /// No pending handshake has this nonce.
    UnknownHandshake,
    /// The pending handshake timed out.
    HandshakeExpired,
    /// A nonce does not match the handshake's.
    NonceMismatch,
    /// The proof of work (p, q) is wrong.
    BadProofOfWork,
    /// A Diffie-Hellman value is out of range.
    BadDhValue,
    /// A handshake step came out of order.
    HandshakeOutOfOrder,
    /// The name belongs to another key.
    ClientIdTaken,
    /// The recovery proof does not match the name's recovery key.
    RecoveryRefused,
    /// The envelope's auth key is unknown (the client must shake hands again).
    UnknownAuthKey,
    /// The envelope did not decrypt (every cause looks the same).
    DecryptFailed,
    /// The envelope's session id is not the key's session.
    BadSession,
    /// The envelope's salt is not current; the body carries a sealed notice with the right one.
    BadServerSalt,
    /// MTProto's `bad_msg_notification` (msg_id or seq_no); `mtproto_code` says which.
    BadMsg,
    /// A clear field disagrees with the envelope.
    FieldMismatch,
    /// The sealed call's method is not this endpoint's.
    MethodMismatch,
    /// The recipient does not exist.
    UnknownPeer,
    /// The recipient's identity key is no longer the version the message was sealed for: look
    /// it up again, let the user accept or verify it, seal again (nothing was stored).
    PeerKeyChanged,
    /// The recipient's mailbox is full.
    MailboxFull,
    /// The sender has too much waiting in this recipient's mailbox.
    SenderQuota,
    /// The msg_id was used before for another request.
    MsgIdReused,
    /// `/publish_prekeys` before the account published its identity key (`/publish_key`):
    /// prekeys are signed for an identity key, so there must be one.
    NoIdentityKey,
    /// `/publish_prekeys` would leave the relay holding more than
    /// [`crate::MAX_ONE_TIME_PREKEYS`] one-time prekeys for the account (nothing was stored).
    PrekeyQuota,
    /// `/prekey_bundle`: the peer has published no prekeys for its current identity key.
    NoPrekeys,
    /// Too many requests from this account or address: retry after `Retry-After` seconds.
    RateLimited,
    /// Too many handshakes in progress: retry shortly.
    Busy,
    /// Storage cannot serve now: retry shortly (nothing was stored).
    StorageUnavailable,
    /// A fault of the relay (nothing was stored).
    Internal,
    /// A code this version does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code the relay answers (not [`ErrorCode::Unknown`]).
    pub const ALL: [Self; 33] = [
        Self::InvalidField,
        Self::MalformedJson,
        Self::BadRequest,
        Self::PayloadTooLarge,
        Self::RequestTimeout,
        Self::NotFound,
        Self::UnknownHandshake,
        Self::HandshakeExpired,
        Self::NonceMismatch,
        Self::BadProofOfWork,
        Self::BadDhValue,
        Self::HandshakeOutOfOrder,
        Self::ClientIdTaken,
        Self::RecoveryRefused,
        Self::UnknownAuthKey,
        Self::DecryptFailed,
        Self::BadSession,
        Self::BadServerSalt,
        Self::BadMsg,
        Self::FieldMismatch,
        Self::MethodMismatch,
        Self::UnknownPeer,
        Self::PeerKeyChanged,
        Self::MailboxFull,
        Self::SenderQuota,
        Self::MsgIdReused,
        Self::NoIdentityKey,
        Self::PrekeyQuota,
        Self::NoPrekeys,
        Self::RateLimited,
        Self::Busy,
        Self::StorageUnavailable,
        Self::Internal,
    ];

    /// The wire spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidField => "invalid_field",
            Self::MalformedJson => "malformed_json",
            Self::BadRequest => "bad_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::NotFound => "not_found",
            Self::UnknownHandshake => "unknown_handshake",
            Self::HandshakeExpired => "handshake_expired",
            Self::NonceMismatch => "nonce_mismatch",
            Self::BadProofOfWork => "bad_proof_of_work",
            Self::BadDhValue => "bad_dh_value",
            Self::HandshakeOutOfOrder => "handshake_out_of_order",
            Self::ClientIdTaken => "client_id_taken",
            Self::RecoveryRefused => "recovery_refused",
            Self::UnknownAuthKey => "unknown_auth_key",
            Self::DecryptFailed => "decrypt_failed",
            Self::BadSession => "bad_session",
            Self::BadServerSalt => "bad_server_salt",
            Self::BadMsg => "bad_msg",
            Self::FieldMismatch => "field_mismatch",
            Self::MethodMismatch => "method_mismatch",
            Self::UnknownPeer => "unknown_peer",
            Self::PeerKeyChanged => "peer_key_changed",
            Self::MailboxFull => "mailbox_full",
            Self::SenderQuota => "sender_quota",
            Self::MsgIdReused => "msg_id_reused",
            Self::NoIdentityKey => "no_identity_key",
            Self::PrekeyQuota => "prekey_quota",
            Self::NoPrekeys => "no_prekeys",
            Self::RateLimited => "rate_limited",
            Self::Busy => "busy",
            Self::StorageUnavailable => "storage_unavailable",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }

    /// The HTTP status the relay answers with this code ([`ErrorCode::Unknown`]: 400).
    pub const fn http_status(self) -> u16 {
        match self {
            Self::UnknownHandshake | Self::UnknownPeer | Self::NotFound | Self::NoPrekeys => 404,
            Self::HandshakeExpired => 410,
            Self::ClientIdTaken
            | Self::MsgIdReused
            | Self::PeerKeyChanged
            | Self::NoIdentityKey
            | Self::PrekeyQuota => 409,
            Self::RecoveryRefused => 403,
            Self::UnknownAuthKey => 401,
            Self::MailboxFull | Self::SenderQuota | Self::RateLimited => 429,
            Self::PayloadTooLarge => 413,
            Self::RequestTimeout => 408,
            Self::Busy | Self::StorageUnavailable => 503,
            Self::Internal => 500,
            Self::InvalidField
            | Self::MalformedJson
            | Self::BadRequest
            | Self::NonceMismatch
            | Self::BadProofOfWork
            | Self::BadDhValue
            | Self::HandshakeOutOfOrder
            | Self::DecryptFailed
            | Self::BadSession
            | Self::BadServerSalt
            | Self::BadMsg
            | Self::FieldMismatch
            | Self::MethodMismatch
            | Self::Unknown => 400,
        }
    }

    /// Whether the same request may pass later unchanged (the relay was busy, unavailable or
    /// rate-limiting): the client should wait and retry rather than report a failure.
    pub const fn is_transient(self) -> bool {
        matches!(self, Self::Busy | Self::StorageUnavailable | Self::RateLimited)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every refusal.
///
/// ```
/// use relay_api::{ErrorBody, ErrorCode};
/// let body = ErrorBody::new(ErrorCode::UnknownPeer, "no such peer");
/// let json = serde_json::to_string(&body).unwrap();
/// assert_eq!(json, r#"{"error":"unknown_peer","message":"no such peer"}"#);
/// assert_eq!(serde_json::from_str::<ErrorBody>(&json).unwrap().error, ErrorCode::UnknownPeer);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The stable code.
    pub error: ErrorCode,
    /// For people; not stable.
    #[serde(default)]
    pub message: String,
    /// With [`ErrorCode::BadMsg`]: MTProto's `bad_msg_notification` error code (16…64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtproto_code: Option<u32>,
    /// With [`ErrorCode::BadServerSalt`] and [`ErrorCode::BadMsg`]: the notice sealed under the
    /// client's auth key, which the client can authenticate (the clear fields it cannot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<Bytes>,
}

impl ErrorBody {
    /// A refusal without a notice.
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            mtproto_code: None,
            notice: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_spelled_as_serde_writes_it() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
            assert!((400..600).contains(&code.http_status()));
        }
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn a_code_from_a_newer_relay_is_unknown_not_an_error() {
        let body: ErrorBody = serde_json::from_str(r#"{"error":"quantum_flux","message":"?"}"#).unwrap();
        assert_eq!(body.error, ErrorCode::Unknown);
    }
}
