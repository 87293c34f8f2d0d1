//! Account recovery: a random code shown to the user once, from which an Ed25519 key pair is
//! derived. The relay keeps only the public half; a new device that knows the code signs the
//! new handshake's transcript, and the relay moves the name to the new key
//! (`docs/protocol.md` §1 "Recovery").
//!
//! ```text
//! code      = 16 random bytes, shown as 8 groups of 4 hex digits
//! seed      = SHA-256("mtproto-relay/recovery/v1" ‖ code)        (an Ed25519 seed)
//! statement = "mtproto-relay/recover/v1" ‖ len(client_id) (1) ‖ client_id ‖ server_nonce (16)
//!             ‖ auth_key_id (8)
//! proof     = Ed25519(seed, statement)
//! ```
//!
//! The statement names the new handshake's auth key, which only the two ends of that handshake
//! can compute: a proof seen on the wire cannot be reused for another key.
//!
//! ```
//! use mtproto_crypto::{rand_core::OsRng, RecoveryCode};
//! let code = RecoveryCode::generate(&mut OsRng);
//! let shown = code.to_string(); // "3f0a-…": the user writes it down
//! let typed = RecoveryCode::parse(&shown.to_uppercase().replace('-', " "))?;
//! let public = typed.public(); // what the relay keeps
//! let proof = typed.prove("alice", &[7; 16], &[9; 8]);
//! public.verify("alice", &[7; 16], &[9; 8], &proof)?;
//! assert!(public.verify("mallory", &[7; 16], &[9; 8], &proof).is_err());
//! # Ok::<(), mtproto_crypto::Error>(())
//! ```

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

use crate::kdf::sha256;
use crate::types::{hex, hex_digit};
use crate::{Error, Result};

const SEED_LABEL: &[u8] = b"mtproto-relay/recovery/v1";
const STATEMENT_LABEL: &[u8] = b"mtproto-relay/recover/v1";

/// The recovery code: 16 random bytes. Secret: zeroized on drop, never printed by `Debug`.
#[derive(Clone)]
pub struct RecoveryCode([u8; 16]);

impl RecoveryCode {
    /// A new random code.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut code = [0u8; 16];
        rng.fill_bytes(&mut code);
        Self(code)
    }

    /// Reads a code as the user typed it: 32 hex digits, in any case, with any dashes or
    /// spaces between them.
    ///
    /// # Errors
    /// [`Error::InvalidHexDigit`] for another character, [`Error::InvalidLength`] for another
    /// number of digits.
    pub fn parse(text: &str) -> Result<Self> {
        let mut digits = Zeroizing::new(Vec::with_capacity(32));
        for (position, c) in text.bytes().enumerate() {
            if c == b'-' || c.is_ascii_whitespace() {
                continue;
            }
            digits.push(hex_digit(c).ok_or(Error::InvalidHexDigit {
                what: "recovery code",
                position,
            })?);
        }
        if digits.len() != 32 {
            return Err(Error::InvalidLength {
                what: "recovery code (hex digits)",
                got: digits.len(),
                expected: 32,
            });
        }
        let mut code = [0u8; 16];
        for (b, pair) in code.iter_mut().zip(digits.chunks_exact(2)) {
            if let [hi, lo] = pair {
                *b = (hi << 4) | lo;
            }
        }
        Ok(Self(code))
    }

    fn signing_key(&self) -> SigningKey {
        let seed = Zeroizing::new(sha256(&[SEED_LABEL, &self.0]));
        SigningKey::from_bytes(&seed)
    }

    /// The public half the relay keeps.
    pub fn public(&self) -> RecoveryPublic {
        RecoveryPublic(self.signing_key().verifying_key().to_bytes())
    }

    /// The proof that moves `client_id` to the auth key `auth_key_id` of the handshake
    /// `server_nonce`.
    pub fn prove(&self, client_id: &str, server_nonce: &[u8; 16], auth_key_id: &[u8; 8]) -> [u8; 64] {
        self.signing_key()
            .sign(&statement(client_id, server_nonce, auth_key_id))
            .to_bytes()
    }
}

/// Shows the code as the user writes it down: 8 groups of 4 hex digits.
impl fmt::Display for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = Zeroizing::new(hex(&self.0));
        for (i, group) in h.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(<secret>)")
    }
}

impl Drop for RecoveryCode {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The public half of a recovery code (an Ed25519 public key).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPublic([u8; 32]);

impl RecoveryPublic {
    /// From its 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// From a slice.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] unless 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let b: [u8; 32] = bytes.try_into().map_err(|_| Error::InvalidLength {
            what: "recovery key",
            got: bytes.len(),
            expected: 32,
        })?;
        Ok(Self(b))
    }

    /// Its bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether a proof could ever verify under it: a point on the curve, not of small order
    /// (what [`RecoveryPublic::verify`] refuses). A relay stores only usable keys.
    pub fn is_usable(&self) -> bool {
        VerifyingKey::from_bytes(&self.0).is_ok_and(|k| !k.is_weak())
    }

    /// Checks a proof made by [`RecoveryCode::prove`] with the same arguments.
    ///
    /// # Errors
    /// [`Error::BadSignature`], whatever the cause.
    pub fn verify(
        &self,
        client_id: &str,
        server_nonce: &[u8; 16],
        auth_key_id: &[u8; 8],
        proof: &[u8],
    ) -> Result<()> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| Error::BadSignature)?;
        let sig = ed25519_dalek::Signature::from_slice(proof).map_err(|_| Error::BadSignature)?;
        key.verify_strict(&statement(client_id, server_nonce, auth_key_id), &sig)
            .map_err(|_| Error::BadSignature)
    }
}

impl fmt::Debug for RecoveryPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecoveryPublic({})", hex(&self.0))
    }
}

/// The signed statement (see the module documentation). Client ids are at most 64 bytes.
fn statement(client_id: &str, server_nonce: &[u8; 16], auth_key_id: &[u8; 8]) -> Vec<u8> {
    let id = client_id.as_bytes();
    let len = u8::try_from(id.len()).unwrap_or(u8::MAX);
    let mut s = Vec::with_capacity(STATEMENT_LABEL.len() + 1 + id.len() + 24);
    s.extend_from_slice(STATEMENT_LABEL);
    s.push(len);
    s.extend_from_slice(id.get(..usize::from(len)).unwrap_or(id));
    s.extend_from_slice(server_nonce);
    s.extend_from_slice(auth_key_id);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn a_code_round_trips_and_binds_every_field() {
        let code = RecoveryCode::generate(&mut OsRng);
        let text = code.to_string();
        assert_eq!(text.len(), 39);
        let again = RecoveryCode::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        assert!(again.public() == code.public());
        let proof = code.prove("alice", &[1; 16], &[2; 8]);
        assert!(code.public().verify("alice", &[1; 16], &[2; 8], &proof).is_ok());
        for (id, nonce, key) in [
            ("alicf", [1; 16], [2; 8]),
            ("alice", [0; 16], [2; 8]),
            ("alice", [1; 16], [3; 8]),
        ] {
            assert!(code.public().verify(id, &nonce, &key, &proof).is_err());
        }
        assert!(code.public().is_usable());
        assert!(!RecoveryPublic::from_bytes([0; 32]).is_usable());
        let other = RecoveryCode::generate(&mut OsRng);
        assert!(other.public().verify("alice", &[1; 16], &[2; 8], &proof).is_err());
        assert!(format!("{code:?}").contains("secret"));
        assert!(RecoveryCode::parse("12").is_err());
        assert!(RecoveryCode::parse(&"g".repeat(32)).is_err());
    }
}
