//! The encrypted envelope: its framing, opening and sealing.

use mtproto_crypto::{
    rand_core::{CryptoRng, RngCore},
    AuthKey, AuthKeyId, Direction, Framing, Layout, Mode,
};

use crate::{wire::fixed, EnvelopeError, MsgId, Result, ServerSalt, SessionId};

/// The framing of every envelope: AES-256-CBC, MTProto's header with opaque (JSON) data.
pub const ENVELOPE: Framing = Framing::new(Mode::Cbc, Layout::MTPROTO_OPAQUE);
/// Largest body an envelope carries (1 MiB).
pub const MAX_BODY: usize = 1 << 20;

/// A decrypted, authenticated envelope before the session checks.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The salt the sender used.
    pub salt: ServerSalt,
    /// The session the sender names.
    pub session_id: SessionId,
    /// The message id.
    pub msg_id: MsgId,
    /// The seq_no.
    pub seq_no: u32,
    /// The body.
    pub body: Vec<u8>,
}

/// Opens a packet under `key` (crypto checks only: length, key id, msg_key, padding).
///
/// # Errors
/// [`EnvelopeError::Decrypt`] for every failure.
pub fn open_envelope(key: &AuthKey, direction: Direction, packet: &[u8]) -> Result<Envelope, EnvelopeError> {
    open_envelope_with(ENVELOPE, key, direction, packet)
}

/// [`open_envelope`] with another framing, e.g. genuine MTProto packets (`Mode::Ige`,
/// `Layout::MTPROTO`): the header parsing is the same.
///
/// # Errors
/// [`EnvelopeError::Decrypt`] for every cryptographic failure; [`EnvelopeError::TooLarge`] for a body over
/// [`MAX_BODY`].
pub fn open_envelope_with(
    framing: Framing,
    key: &AuthKey,
    direction: Direction,
    packet: &[u8],
) -> Result<Envelope, EnvelopeError> {
    if packet.len() > MAX_BODY + 32 + 24 + mtproto_crypto::MAX_PADDING {
        return Err(EnvelopeError::TooLarge {
            got: packet.len() as u64,
            max: MAX_BODY as u64,
        });
    }
    // Every failure of the framing is the one opaque answer.
    let opened = framing
        .open(key, direction, packet)
        .map_err(|_| EnvelopeError::Decrypt)?;
    let p = opened.payload();
    let field = |r: core::ops::Range<usize>| p.get(r).ok_or(EnvelopeError::Decrypt);
    let salt = ServerSalt(fixed("salt", field(0..8)?).map_err(|_| EnvelopeError::Decrypt)?);
    let session_id = SessionId(fixed("session_id", field(8..16)?).map_err(|_| EnvelopeError::Decrypt)?);
    let msg_id = MsgId(u64::from_le_bytes(
        fixed("msg_id", field(16..24)?).map_err(|_| EnvelopeError::Decrypt)?,
    ));
    let seq_no = u32::from_le_bytes(fixed("seq_no", field(24..28)?).map_err(|_| EnvelopeError::Decrypt)?);
    Ok(Envelope {
        salt,
        session_id,
        msg_id,
        seq_no,
        body: opened.data().to_vec(),
    })
}

/// The auth key id a packet names (its first 8 bytes), to find the key.
///
/// # Errors
/// [`EnvelopeError::Malformed`] for a packet shorter than 8 bytes.
pub fn packet_key_id(packet: &[u8]) -> Result<AuthKeyId, EnvelopeError> {
    let id = packet.get(..8).ok_or(EnvelopeError::Malformed {
        field: "packet",
        reason: "too short",
    })?;
    Ok(AuthKeyId::from_bytes(fixed("auth_key_id", id)?))
}

/// The plaintext header fields of an envelope.
pub(super) struct Header {
    pub(super) salt: ServerSalt,
    pub(super) session_id: SessionId,
    pub(super) msg_id: MsgId,
    pub(super) seq_no: u32,
}

pub(super) fn seal(
    key: &AuthKey,
    direction: Direction,
    h: Header,
    body: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, EnvelopeError> {
    let Header {
        salt,
        session_id,
        msg_id,
        seq_no,
    } = h;
    if body.len() > MAX_BODY {
        return Err(EnvelopeError::TooLarge {
            got: body.len() as u64,
            max: MAX_BODY as u64,
        });
    }
    let mut p = Vec::with_capacity(32 + body.len());
    p.extend_from_slice(&salt.0);
    p.extend_from_slice(&session_id.0);
    p.extend_from_slice(&msg_id.0.to_le_bytes());
    p.extend_from_slice(&seq_no.to_le_bytes());
    p.extend_from_slice(&(body.len() as u32).to_le_bytes());
    p.extend_from_slice(body);
    ENVELOPE
        .seal(key, direction, &p, rng)
        .map_err(|_| EnvelopeError::TooLarge {
            got: body.len() as u64,
            max: MAX_BODY as u64,
        })
}

/// A sealed envelope ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its msg_id.
    pub msg_id: MsgId,
    /// Its seq_no.
    pub seq_no: u32,
    /// The packet bytes.
    pub packet: Vec<u8>,
}

/// A received envelope that passed every check.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Its msg_id.
    pub msg_id: MsgId,
    /// Its seq_no.
    pub seq_no: u32,
    /// The body.
    pub body: Vec<u8>,
}
