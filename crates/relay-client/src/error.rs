//! The client's errors.

use relay_api::{ErrorBody, ErrorCode};

use crate::OutboxId;

/// Errors of the client. Nothing the server sends makes it panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached (after retries).
    #[error("transport: {0}")]
    Transport(String),
    /// The server refused the request with a stable error code.
    #[error("server refused ({code}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The relay's error code ([`ErrorCode::UnknownPeer`], [`ErrorCode::MailboxFull`], ...).
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The protocol failed: a bad signature, a wrong pin, a forged answer...
    #[error("protocol: {0}")]
    Protocol(#[from] mtproto_session::Error),
    /// The server presented a key other than the pinned one.
    #[error("the server's key {got} is not the pinned {expected}")]
    UntrustedServer {
        /// What it presented.
        got: String,
        /// What was pinned.
        expected: String,
    },
    /// The peer's identity key changed since it was accepted. Verify the new fingerprint and
    /// call [`Client::accept_peer_key`](crate::Client::accept_peer_key) before talking to it again.
    #[error("the identity key of {peer} CHANGED (version {old_version} -> {new_version}): verify before continuing")]
    PeerKeyChanged {
        /// The peer.
        peer: String,
        /// The accepted version.
        old_version: u32,
        /// The directory's version now.
        new_version: u32,
    },
    /// The relay handed out a prekey bundle for the peer's accepted identity key signed by
    /// another identity signing key than the first start with that key used (trust on first
    /// use, `docs/crypto.md`). Our clients make one signing key per profile and a new profile
    /// has a new identity key, so this is the relay (or someone) substituting prekeys: nothing
    /// was started or sent. Ask the peer to compare safety numbers; a key change resets it.
    #[error("the relay handed out prekeys for {peer} signed by another signing key than before (same identity key): nothing was sent")]
    SigningKeyChanged {
        /// The peer.
        peer: String,
    },
    /// The peer is not in the directory or has published no identity key.
    #[error("peer {0} has no identity key in the directory")]
    NoPeerKey(String),
    /// The profile file could not be read or written.
    #[error("profile: {0}")]
    Profile(String),
    /// A name or argument is invalid.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The outbox holds [`MAX_OUTBOX`](crate::MAX_OUTBOX) messages already (sending or refused): flush, retry or
    /// abandon some first.
    #[error("the outbox is full ({max} messages waiting)")]
    OutboxFull {
        /// The limit.
        max: usize,
    },
    /// No message with this id is in the outbox.
    #[error("no message {0} in the outbox")]
    NotInOutbox(OutboxId),
}

/// Each operation's error of `mtproto-session` is a protocol failure of the client.
macro_rules! protocol_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ClientError {
            fn from(e: $t) -> Self {
                Self::Protocol(e.into())
            }
        }
    )*};
}
protocol_error!(
    mtproto_session::HandshakeError,
    mtproto_session::EnvelopeError,
    mtproto_session::E2eError,
    mtproto_session::Malformed
);

/// A refusal from the server, with the sealed notice it may carry.
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) body: ErrorBody,
}

impl From<Refusal> for ClientError {
    fn from(r: Refusal) -> Self {
        Self::Server {
            status: r.status,
            code: r.body.error,
            message: r.body.message,
        }
    }
}
