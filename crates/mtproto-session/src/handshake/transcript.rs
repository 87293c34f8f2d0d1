//! The formulas both sides compute: the signed DH values, the key confirmation.

use mtproto_crypto::{kdf::sha256, legacy, AuthKey, Nonce128, Nonce256, ServerPublicKey};

use crate::{
    wire::{fixed, Bytes, Hex},
    ClientId, HandshakeError, Result, ServerSalt, SessionId,
};

/// The values of a `req_dh_params` answer that the server's signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedDhValues<'a> {
    /// The generator.
    pub g: u32,
    /// The prime, 256 bytes.
    pub dh_prime: &'a [u8],
    /// `g^a`, 256 bytes.
    pub g_a: &'a [u8],
    /// The server's unix time.
    pub server_time: u64,
    /// The server's key.
    pub server_key: &'a ServerPublicKey,
}

/// What the server signs in its `req_dh_params` answer: every value the client will rely on,
/// bound to both nonces and the proof-of-work challenge.
pub fn dh_params_transcript(
    nonce: &Nonce128,
    server_nonce: &Nonce128,
    pq: u64,
    v: &SignedDhValues<'_>,
) -> Vec<u8> {
    let SignedDhValues {
        g,
        dh_prime,
        g_a,
        server_time,
        server_key,
    } = *v;
    let mut t = Vec::with_capacity(64 + 2 * 256 + 64);
    t.extend_from_slice(b"mtproto-relay/server-dh-params/v1");
    t.extend_from_slice(nonce.as_bytes());
    t.extend_from_slice(server_nonce.as_bytes());
    t.extend_from_slice(&pq.to_be_bytes());
    t.extend_from_slice(&g.to_le_bytes());
    t.extend_from_slice(dh_prime);
    t.extend_from_slice(g_a);
    t.extend_from_slice(&server_time.to_le_bytes());
    t.extend_from_slice(server_key.as_bytes());
    t
}

/// The key confirmation: MTProto's `new_nonce_hash1 = SHA1(new_nonce ‖ 0x01 ‖ aux_hash)[4..20]`,
/// where our `new_nonce` (which MTProto sends RSA-encrypted, and we have no RSA step for) is a
/// hash of the whole transcript: both nonces, both DH values, the client id, the session id and
/// the salt. A tampered `client_id`, `session_id` or `salt` therefore fails the confirmation.
#[allow(clippy::too_many_arguments)]
pub fn key_confirmation(
    auth_key: &AuthKey,
    nonce: &Nonce128,
    server_nonce: &Nonce128,
    g_a: &[u8],
    g_b: &[u8],
    client_id: &ClientId,
    session_id: SessionId,
    salt: ServerSalt,
) -> [u8; 16] {
    let id = client_id.as_str().as_bytes();
    let new_nonce = Nonce256::from_bytes(sha256(&[
        b"mtproto-relay/key-confirmation/v1",
        nonce.as_bytes(),
        server_nonce.as_bytes(),
        g_a,
        g_b,
        &[id.len() as u8],
        id,
        &session_id.0,
        &salt.0,
    ]));
    legacy::new_nonce_hash(&new_nonce, 1, auth_key.aux_hash())
}

pub(super) fn nonce(field: &'static str, b: &Bytes) -> Result<Nonce128, HandshakeError> {
    Ok(Nonce128::from_bytes(fixed(field, &b.0)?))
}

pub(super) fn minimal_be(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|x| **x == 0).count().min(3);
    b.get(skip..).unwrap_or_default().to_vec()
}

pub(super) fn parse_factor(field: &'static str, h: &Hex) -> Result<u64, HandshakeError> {
    // Minimal big-endian, at most 4 bytes, as MTProto's p and q strings.
    if h.0.is_empty() || h.0.len() > 4 || h.0.first() == Some(&0) {
        return Err(HandshakeError::Malformed {
            field,
            reason: "minimal big-endian bytes of a 32-bit number",
        });
    }
    Ok(h.0.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}
