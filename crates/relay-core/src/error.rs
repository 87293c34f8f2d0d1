//! Errors of the relay domain, each with a stable code that the HTTP layer maps to a status.

use mtproto_session::BadMsgCode;
use relay_api::ErrorCode;

/// Errors a storage engine reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Another request changed the session first; retry the request from the start.
    #[error("concurrent update")]
    Conflict,
    /// The client id already belongs to another auth key.
    #[error("client id already taken")]
    ClientIdTaken,
    /// The recipient is not registered.
    #[error("unknown peer")]
    UnknownPeer,
    /// The recipient's mailbox is at its cap.
    #[error("mailbox full ({cap} messages)")]
    MailboxFull {
        /// The cap.
        cap: usize,
    },
    /// The sender has as much waiting in the recipient's mailbox as one sender may.
    #[error("sender's quota in this mailbox reached")]
    SenderQuota,
    /// The recipient's key version is not the one the send expected.
    #[error("the recipient's key is now version {current}")]
    PeerKeyChanged {
        /// The recipient's key version now.
        current: u32,
    },
    /// The requester publishes prekeys without an identity key.
    #[error("no identity key published")]
    NoIdentityKey,
    /// A publish would leave more one-time prekeys than `max` (`held` already, `adding` new).
    #[error("{held} one-time prekeys held and {adding} more would exceed {max}")]
    PrekeyQuota {
        /// One-time prekeys held now.
        held: usize,
        /// New ones in the publish (ids not held yet).
        adding: usize,
        /// The cap.
        max: usize,
    },
    /// The peer has no prekeys for its current identity key.
    #[error("no prekeys for the current identity key")]
    NoPrekeys,
    /// Too many handshakes are pending.
    #[error("too many pending handshakes ({max})")]
    TooManyHandshakes {
        /// The limit.
        max: usize,
    },
    /// The storage itself failed (disk, database, connection).
    #[error("storage failure: {0}")]
    Storage(String),
}

/// Every way a relay operation can fail. [`RelayError::code`] is stable: clients may match on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    // --- the client's mistakes ----------------------------------------------------------------
    /// A field is missing, of the wrong type or malformed.
    #[error("invalid field {field}: {reason}")]
    InvalidField {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The handshake this message continues is unknown (never started, finished or expired).
    #[error("unknown or finished handshake")]
    UnknownHandshake,
    /// The handshake expired.
    #[error("handshake expired")]
    HandshakeExpired,
    /// A nonce does not match.
    #[error("{0} does not match")]
    NonceMismatch(&'static str),
    /// The proof of work is wrong.
    #[error("wrong proof-of-work answer")]
    BadProofOfWork,
    /// A DH value is out of range.
    #[error("Diffie-Hellman value rejected")]
    BadDh,
    /// The step was already done or done out of order.
    #[error("handshake step out of order")]
    HandshakeOutOfOrder,
    /// The client id belongs to another key.
    #[error("client id already taken by another key (its owner can move it with a recovery code)")]
    ClientIdTaken,
    /// A recovery proof did not verify against the account's recovery key, or the account has
    /// none.
    #[error("the recovery code does not match this account")]
    RecoveryRefused,
    /// No auth key with this id.
    #[error("unknown auth key")]
    UnknownAuthKey,
    /// The envelope failed to decrypt or authenticate (opaque).
    #[error("message rejected")]
    DecryptFailed,
    /// The envelope names another session.
    #[error("unknown session")]
    BadSession,
    /// An MTProto bad-message rule (msg_id window, low bits, seq_no, salt).
    #[error("bad message: code {}", .code.code())]
    BadMsg {
        /// The MTProto code.
        code: BadMsgCode,
        /// A sealed notice the client can authenticate (base64 packet), when one was made.
        notice: Option<Vec<u8>>,
    },
    /// A clear field disagrees with the authenticated envelope.
    #[error("clear field {0} does not match the envelope")]
    FieldMismatch(&'static str),
    /// The envelope's body is for another endpoint.
    #[error("the envelope's method is not this endpoint's")]
    MethodMismatch,
    /// The recipient is not registered.
    #[error("unknown peer")]
    UnknownPeer,
    /// The recipient's mailbox is full (entries or bytes): the recipient must read first.
    #[error("the recipient's mailbox is full; it must be read before more can be sent")]
    MailboxFull,
    /// The sender already has as many messages (or bytes) waiting in this recipient's mailbox
    /// as one sender may: wait until the recipient reads them.
    #[error("too many of your messages are waiting for this recipient; wait until they read them")]
    SenderQuota,
    /// The recipient's identity key changed since the message was sealed: nothing was stored.
    #[error("the recipient's identity key is now version {current}; look it up, verify it and seal the message again")]
    PeerKeyChanged {
        /// The recipient's key version now.
        current: u32,
    },
    /// Prekeys published before the identity key they are signed for.
    #[error("publish the identity key (/publish_key) before prekeys")]
    NoIdentityKey,
    /// A publish would leave the relay holding more one-time prekeys than the cap: nothing
    /// was stored.
    #[error("{held} one-time prekeys held; {adding} more would exceed the {max} the relay keeps")]
    PrekeyQuota {
        /// One-time prekeys held now.
        held: usize,
        /// New ones in the publish.
        adding: usize,
        /// The cap.
        max: usize,
    },
    /// The peer published no prekeys for its current identity key.
    #[error("the peer has no prekeys for its current identity key")]
    NoPrekeys,
    /// The msg_id was already used by a request to another endpoint (a client bug: msg_ids
    /// must be unique per session).
    #[error("msg_id already used by another request")]
    MsgIdReused,
    /// A payload is larger than allowed.
    #[error("payload of {got} bytes exceeds {max}")]
    PayloadTooLarge {
        /// Its size.
        got: usize,
        /// The limit.
        max: usize,
    },
    // --- limits of the server -----------------------------------------------------------------
    /// This source sent too many requests of this kind: retry after `retry_after_secs`.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a retry can succeed.
        retry_after_secs: u64,
    },
    /// Too many handshakes in progress: try again shortly.
    #[error("too many handshakes in progress")]
    Busy,
    /// The storage is unreachable or failing, or the session stayed contended: retry the same
    /// request shortly (a resent envelope is answered from its stored outcome, never run twice).
    #[error("storage unavailable; retry the same request shortly")]
    Unavailable(String),
    // --- our fault -------------------------------------------------------------------------------
    /// An internal failure; nothing was accepted.
    #[error("internal error")]
    Internal(String),
}

impl RelayError {
    /// The stable error code sent to clients.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidField { .. } => ErrorCode::InvalidField,
            Self::UnknownHandshake => ErrorCode::UnknownHandshake,
            Self::HandshakeExpired => ErrorCode::HandshakeExpired,
            Self::NonceMismatch(_) => ErrorCode::NonceMismatch,
            Self::BadProofOfWork => ErrorCode::BadProofOfWork,
            Self::BadDh => ErrorCode::BadDhValue,
            Self::HandshakeOutOfOrder => ErrorCode::HandshakeOutOfOrder,
            Self::ClientIdTaken => ErrorCode::ClientIdTaken,
            Self::RecoveryRefused => ErrorCode::RecoveryRefused,
            Self::UnknownAuthKey => ErrorCode::UnknownAuthKey,
            Self::DecryptFailed => ErrorCode::DecryptFailed,
            Self::BadSession => ErrorCode::BadSession,
            Self::BadMsg {
                code: BadMsgCode::BadServerSalt,
                ..
            } => ErrorCode::BadServerSalt,
            Self::BadMsg { .. } => ErrorCode::BadMsg,
            Self::FieldMismatch(_) => ErrorCode::FieldMismatch,
            Self::MethodMismatch => ErrorCode::MethodMismatch,
            Self::UnknownPeer => ErrorCode::UnknownPeer,
            Self::MailboxFull => ErrorCode::MailboxFull,
            Self::SenderQuota => ErrorCode::SenderQuota,
            Self::PeerKeyChanged { .. } => ErrorCode::PeerKeyChanged,
            Self::MsgIdReused => ErrorCode::MsgIdReused,
            Self::NoIdentityKey => ErrorCode::NoIdentityKey,
            Self::PrekeyQuota { .. } => ErrorCode::PrekeyQuota,
            Self::NoPrekeys => ErrorCode::NoPrekeys,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::Busy => ErrorCode::Busy,
            Self::Unavailable(_) => ErrorCode::StorageUnavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<EngineError> for RelayError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::ClientIdTaken => Self::ClientIdTaken,
            EngineError::UnknownPeer => Self::UnknownPeer,
            EngineError::MailboxFull { .. } => Self::MailboxFull,
            EngineError::SenderQuota => Self::SenderQuota,
            EngineError::PeerKeyChanged { current } => Self::PeerKeyChanged { current },
            EngineError::TooManyHandshakes { .. } => Self::Busy,
            EngineError::NoIdentityKey => Self::NoIdentityKey,
            EngineError::PrekeyQuota { held, adding, max } => Self::PrekeyQuota { held, adding, max },
            EngineError::NoPrekeys => Self::NoPrekeys,
            EngineError::Conflict => Self::Unavailable("unresolved concurrent update".into()),
            EngineError::Storage(s) => Self::Unavailable(s),
        }
    }
}

/// The request's field `field` is wrong: `reason`.
pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RelayError {
    RelayError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

impl From<mtproto_session::HandshakeError> for RelayError {
    fn from(e: mtproto_session::HandshakeError) -> Self {
        use mtproto_session::HandshakeError as E;
        match e {
            E::Malformed { field, reason } => invalid(field, reason),
            E::NonceMismatch { which } => Self::NonceMismatch(which),
            E::BadProofOfWork => Self::BadProofOfWork,
            E::Dh(_) => Self::BadDh,
            E::Expired => Self::HandshakeExpired,
            E::StepOutOfOrder { .. } => Self::HandshakeOutOfOrder,
            // The client's side of the handshake: the relay never runs it, but if it did, the
            // request (not the relay) would be at fault.
            E::WorkTooHard { max, .. } => invalid("proof-of-work bits", format!("over the limit of {max}")),
            E::UntrustedServer { .. } | E::BadSignature | E::KeyConfirmation => {
                invalid("handshake", e.to_string())
            }
        }
    }
}

impl From<mtproto_session::EnvelopeError> for RelayError {
    fn from(e: mtproto_session::EnvelopeError) -> Self {
        use mtproto_session::EnvelopeError as E;
        match e {
            E::Malformed { field, reason } => invalid(field, reason),
            E::Decrypt => Self::DecryptFailed,
            E::WrongSession => Self::BadSession,
            E::BadMsg { code, .. } => Self::BadMsg { code, notice: None },
            // The pipeline answers a duplicate from its stored outcome before this conversion.
            E::Duplicate { .. } => invalid("message", e.to_string()),
            E::TooLarge { max, .. } => invalid("envelope", format!("over the limit of {max}")),
        }
    }
}

/// The crate-level error: each operation's error as above; a codec error is the request's
/// malformed field; the end-to-end layer never runs on the relay (a client-side library error,
/// said as the request's fault if it ever came here).
impl From<mtproto_session::Error> for RelayError {
    fn from(e: mtproto_session::Error) -> Self {
        use mtproto_session::Error as E;
        match e {
            E::Malformed { field, reason } => invalid(field, reason),
            E::Handshake(h) => h.into(),
            E::Envelope(v) => v.into(),
            E::E2e(x) => invalid("message", x.to_string()),
        }
    }
}
