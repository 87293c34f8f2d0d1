//! Secrets at rest: auth keys and pending Diffie-Hellman exponents are stored sealed
//! (AES-256-GCM) under a key derived from the server's signing key, which lives in its own file
//! outside the database. A copy of the database, a backup or a Redis dump alone gives no one a
//! key to act as a user with.
//!
//! Sealed blob: `"s1" ‖ nonce (12, random) ‖ ciphertext ‖ tag (16)`, with the record it belongs
//! to (its label and id) as associated data, so a sealed value cannot be moved to another
//! record.
//!
//! ```
//! use mtproto_crypto::{rand_core::OsRng, ServerSigningKey};
//! use relay_core::seal::StorageSeal;
//!
//! let seal = StorageSeal::derive(&ServerSigningKey::generate(&mut OsRng));
//! let blob = seal.seal(b"auth_key", b"key id", b"secret")?;
//! assert_eq!(&*seal.open(b"auth_key", b"key id", &blob)?, b"secret");
//! assert!(seal.open(b"auth_key", b"other id", &blob).is_err());
//! # Ok::<(), relay_core::seal::SealError>(())
//! ```

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use mtproto_crypto::rand_core::{OsRng, RngCore};
use mtproto_crypto::ServerSigningKey;
use zeroize::Zeroizing;

/// The first bytes of every sealed blob.
const MAGIC: &[u8; 2] = b"s1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// What sealing adds to a secret's length.
pub const OVERHEAD: usize = MAGIC.len() + NONCE_LEN + TAG_LEN;

/// Sealing or opening failed (opaque on purpose).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed value could not be opened or made")]
pub struct SealError;

/// The sealing key of one relay deployment (every node with the same server key file has the
/// same one).
pub struct StorageSeal {
    /// The expanded key (the `aes` crate's `zeroize` feature wipes it on drop).
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for StorageSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageSeal(<redacted>)")
    }
}

impl StorageSeal {
    /// Derives the sealing key from the server's signing key:
    /// `HKDF-SHA256(ikm = seed, salt = "", info = "mtproto-relay/storage-seal/v1")`.
    pub fn derive(server_key: &ServerSigningKey) -> Self {
        let mut okm = Zeroizing::new([0u8; 32]);
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, server_key.seed());
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = hk.expand(b"mtproto-relay/storage-seal/v1", &mut okm[..]);
        Self {
            cipher: Aes256Gcm::new((&*okm).into()),
        }
    }

    /// Seals `secret` for the record (`label`, `id`).
    ///
    /// # Errors
    /// [`SealError`] when the system RNG or the cipher fails.
    pub fn seal(&self, label: &[u8], id: &[u8], secret: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.try_fill_bytes(&mut nonce).map_err(|_| SealError)?;
        let mut out = Vec::with_capacity(secret.len() + OVERHEAD);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(secret);
        let body = out.get_mut(MAGIC.len() + NONCE_LEN..).ok_or(SealError)?;
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad(label, id), body)
            .map_err(|_| SealError)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a blob made by [`StorageSeal::seal`] for the same record.
    ///
    /// # Errors
    /// [`SealError`] when the blob is not sealed, was sealed under another key, for another
    /// record, or was altered.
    pub fn open(&self, label: &[u8], id: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let rest = blob.strip_prefix(MAGIC.as_slice()).ok_or(SealError)?;
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let (body, tag) = body.split_at(body.len() - TAG_LEN);
        let mut plain = Zeroizing::new(body.to_vec());
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(nonce),
                &aad(label, id),
                &mut plain,
                Tag::from_slice(tag),
            )
            .map_err(|_| SealError)?;
        Ok(plain)
    }
}

fn aad(label: &[u8], id: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(label.len() + id.len() + 1);
    a.extend_from_slice(label);
    a.push(0);
    a.extend_from_slice(id);
    a
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mtproto_crypto::rand_core::OsRng;

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_record() {
        let server = ServerSigningKey::generate(&mut OsRng);
        let seal = StorageSeal::derive(&server);
        let blob = seal.seal(b"auth_key", &[1; 8], &[7; 256]).unwrap();
        assert_eq!(blob.len(), 256 + OVERHEAD);
        assert!(!blob.windows(256).any(|w| w == [7; 256]));
        assert_eq!(&*seal.open(b"auth_key", &[1; 8], &blob).unwrap(), &[7; 256]);
        // The same server key (another node) opens it; another server key does not.
        assert!(StorageSeal::derive(&ServerSigningKey::from_seed(*server.seed()))
            .open(b"auth_key", &[1; 8], &blob)
            .is_ok());
        let other = StorageSeal::derive(&ServerSigningKey::generate(&mut OsRng));
        assert_eq!(other.open(b"auth_key", &[1; 8], &blob), Err(SealError));
        // Bound to its record, and tamper-evident.
        assert_eq!(seal.open(b"auth_key", &[2; 8], &blob), Err(SealError));
        assert_eq!(seal.open(b"dh_secret", &[1; 8], &blob), Err(SealError));
        let mut bad = blob.clone();
        bad[20] ^= 1;
        assert_eq!(seal.open(b"auth_key", &[1; 8], &bad), Err(SealError));
        assert_eq!(seal.open(b"auth_key", &[1; 8], &[7; 256]), Err(SealError));
        assert_eq!(seal.open(b"auth_key", &[1; 8], b"s1"), Err(SealError));
        // Fresh nonces: sealing twice gives two blobs.
        assert_ne!(blob, seal.seal(b"auth_key", &[1; 8], &[7; 256]).unwrap());
    }
}
