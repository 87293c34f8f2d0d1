//! A peer's long-term Ed25519 identity signing key, beside its X25519 identity key: it signs the
//! peer's prekeys (X3DH). X25519 cannot sign; see `docs/crypto.md` for why this is a separate
//! Ed25519 key rather than XEdDSA over the X25519 key.

use core::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::{types::hex, Error, Result};

/// A peer's identity signing key (Ed25519, RFC 8032).
///
/// Boxed, like [`crate::ServerSigningKey`]: moving it moves a pointer; `ed25519-dalek` wipes
/// the seed on drop and each signature's expanded secret after use. `Debug` prints the public
/// key only.
///
/// ```
/// use mtproto_crypto::IdentitySigningKey;
/// let key = IdentitySigningKey::generate(&mut rand_core::OsRng);
/// let sig = key.sign(b"statement");
/// key.public().verify(b"statement", &sig)?;
/// assert!(key.public().verify(b"another", &sig).is_err());
/// # Ok::<(), mtproto_crypto::Error>(())
/// ```
pub struct IdentitySigningKey {
    key: Box<SigningKey>,
}

/// The public half of an [`IdentitySigningKey`], published beside the X25519 identity key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentitySigningPublic([u8; 32]);

impl IdentitySigningKey {
    /// A fresh key from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        Self::from_seed_ref(&seed)
    }

    /// Restores a key from its stored 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        Self::from_seed_ref(&seed)
    }

    fn from_seed_ref(seed: &[u8; 32]) -> Self {
        Self {
            key: Box::new(SigningKey::from_bytes(seed)),
        }
    }

    /// The seed, for storage.
    ///
    /// # Security
    /// Whoever has it can sign prekeys in this identity's name.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.key.as_bytes())
    }

    /// The public key.
    pub fn public(&self) -> IdentitySigningPublic {
        IdentitySigningPublic(self.key.verifying_key().to_bytes())
    }

    /// Signs `msg` (deterministic: the same key and message give the same signature).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

impl fmt::Debug for IdentitySigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentitySigningKey(public={})", self.public().to_hex())
    }
}

impl IdentitySigningPublic {
    /// Wraps 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses 32 bytes.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] unless the slice is 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        crate::types::array_from_slice("identity signing key", bytes).map(Self)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Hex of the 32 bytes.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A signing key as published: 32 bytes that are the canonical encoding of a curve point
    /// of more than small order. A small-order key (the identity point among them) has signatures that verify for
    /// many messages without any secret: refused.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] for another length, [`Error::BadSignature`] for a key that is
    /// not a point or is of small order.
    pub fn validated(bytes: &[u8]) -> Result<Self> {
        let key = Self::from_slice(bytes)?;
        match VerifyingKey::from_bytes(&key.0) {
            // Canonical too: the point's own encoding, not one of its aliases (y ≥ p).
            Ok(k) if !k.is_weak() && k.to_edwards().compress().to_bytes() == key.0 => Ok(key),
            _ => Err(Error::BadSignature),
        }
    }

    /// Verifies an Ed25519 signature strictly (RFC 8032 without the cofactor; non-canonical
    /// `S`, and small-order keys or `R`, refused: ed25519-dalek's `verify_strict`), so no
    /// signature verifies without the key's secret.
    ///
    /// # Errors
    /// [`Error::BadSignature`], whatever the cause.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| Error::BadSignature)?;
        let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| Error::BadSignature)?;
        key.verify_strict(msg, &sig).map_err(|_| Error::BadSignature)
    }
}

impl fmt::Debug for IdentitySigningPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentitySigningPublic({})", self.to_hex())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// The identity point as a key, with R = identity and S = 0: a "signature" that a
    /// cofactorless, non-strict check accepts for every message (found by the review of issue
    /// 15). Refused as a key and as a signature.
    #[test]
    fn small_order_keys_and_signatures_are_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let key = IdentitySigningPublic::from_bytes(identity);
        assert_eq!(key.verify(b"any statement", &forged), Err(Error::BadSignature));
        assert_eq!(
            IdentitySigningPublic::validated(&identity),
            Err(Error::BadSignature)
        );
        // Not a point / a non-canonical alias / a wrong length.
        assert_eq!(
            IdentitySigningPublic::validated(&[0xff; 32]),
            Err(Error::BadSignature)
        );
        assert!(matches!(
            IdentitySigningPublic::validated(&[9; 31]),
            Err(Error::InvalidLength { .. })
        ));
        // A real key passes both.
        let real = IdentitySigningKey::from_seed([3; 32]);
        let sig = real.sign(b"statement");
        assert_eq!(
            IdentitySigningPublic::validated(real.public().as_bytes()),
            Ok(real.public())
        );
        assert_eq!(real.public().verify(b"statement", &sig), Ok(()));
        assert_eq!(real.public().verify(b"another", &sig), Err(Error::BadSignature));
    }
}
