//! The handshake's wire messages, as JSON.

use serde::{Deserialize, Serialize};

use crate::{
    wire::{Bytes, Hex},
    ClientId,
};

/// `POST /req_pq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReqPq {
    /// 16 random bytes.
    pub nonce: Bytes,
}

/// The answer to `req_pq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResPq {
    /// The client's nonce.
    pub nonce: Bytes,
    /// 16 random bytes from the server.
    pub server_nonce: Bytes,
    /// The proof-of-work challenge, 8 bytes big-endian, hex.
    pub pq: Hex,
    /// The 64-bit fingerprint of the server's Ed25519 key, hex.
    pub fingerprint: Hex,
    /// Leading zero bits of work asked before `req_dh_params` ([`crate::work`]); 0 or absent:
    /// none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pow_bits: u8,
}

pub(super) fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// `POST /req_dh_params`: the proof-of-work answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReqDhParams {
    /// The client's nonce.
    pub nonce: Bytes,
    /// The server's nonce.
    pub server_nonce: Bytes,
    /// The smaller factor, minimal big-endian bytes, hex.
    pub p: Hex,
    /// The larger factor, minimal big-endian bytes, hex.
    pub q: Hex,
    /// The proof of work's answer, 8 bytes hex, when `resPQ` asked for `pow_bits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pow_nonce: Option<Hex>,
}

/// The answer to `req_dh_params`, signed by the server's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerDhParams {
    /// The client's nonce.
    pub nonce: Bytes,
    /// The server's nonce.
    pub server_nonce: Bytes,
    /// The generator.
    pub g: u32,
    /// The 2048-bit safe prime, hex.
    pub dh_prime: Hex,
    /// `g^a mod p`, 256 bytes, hex.
    pub g_a: Hex,
    /// The server's unix time in seconds.
    pub server_time: u64,
    /// The server's Ed25519 public key (32 bytes, base64).
    pub server_public_key: Bytes,
    /// Ed25519 signature over [`dh_params_transcript`](crate::handshake::dh_params_transcript) (64 bytes, base64).
    pub signature: Bytes,
}

/// `POST /set_client_dh_params`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetClientDhParams {
    /// The client's nonce.
    pub nonce: Bytes,
    /// The server's nonce.
    pub server_nonce: Bytes,
    /// `g^b mod p`, 256 bytes, hex.
    pub g_b: Hex,
    /// The name the client registers under.
    pub client_id: ClientId,
    /// The public half of the user's recovery code (Ed25519, 32 bytes, base64), kept by the
    /// relay with the account: registered with a new name, or replacing the old one on a
    /// recovery. Absent: none registered (a recovery keeps the old one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_key: Option<Bytes>,
    /// A recovery: the proof (64 bytes, base64) that this handshake's key may take over the
    /// name, made with the recovery code ([`AwaitingDhGen::prove_recovery`](crate::handshake::AwaitingDhGen::prove_recovery)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_proof: Option<Bytes>,
}

/// The answer to `set_client_dh_params`. It carries no key: it proves possession of one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DhGenOk {
    /// The client's nonce.
    pub nonce: Bytes,
    /// The server's nonce.
    pub server_nonce: Bytes,
    /// `SHA1(auth_key)[12..20]`, hex.
    pub auth_key_id: Hex,
    /// MTProto's `new_nonce_hash1` over the transcript nonce (see [`key_confirmation`](crate::handshake::key_confirmation)), hex.
    pub key_confirmation: Hex,
    /// The new session's id (8 bytes, base64).
    pub session_id: Bytes,
    /// The first server salt (8 bytes, base64).
    pub salt: Bytes,
    /// [`STATUS_OK`](crate::handshake::STATUS_OK).
    pub status: String,
    /// The server's unix time in seconds.
    pub server_time: u64,
}
