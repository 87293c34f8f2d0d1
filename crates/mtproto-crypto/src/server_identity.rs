//! The server's long-term Ed25519 identity: it signs its handshake answers, clients pin it.

use core::fmt;

use rand_core::{CryptoRng, RngCore};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use zeroize::Zeroizing;

use crate::{kdf::sha256, types::hex, Error, Result};

/// The server's signing key (ring's Ed25519). Stored as its 32-byte seed.
pub struct ServerSigningKey {
    seed: Zeroizing<[u8; 32]>,
    pair: Ed25519KeyPair,
}

/// The server's public key, which clients pin by [`ServerKeyFingerprint`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerPublicKey([u8; 32]);

/// The 64-bit fingerprint of a server key: the lower-order 64 bits of SHA-256 of the public key,
/// `SHA256(pk)[24..32]`, as MTProto names RSA keys by the lower 64 bits of a hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerKeyFingerprint([u8; 8]);

impl ServerSigningKey {
    /// A fresh key from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        Self::from_seed(*seed)
    }

    /// Restores a key from its stored 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        // `from_seed_unchecked` only fails on a wrong length, which the array type rules out;
        // ring derives the public key itself, so there is nothing else to check.
        let pair = match Ed25519KeyPair::from_seed_unchecked(&seed[..]) {
            Ok(pair) => pair,
            Err(_) => unreachable_seed(),
        };
        Self { seed, pair }
    }

    /// The seed, for storage.
    ///
    /// # Security
    /// Whoever has it can impersonate the server to every client.
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The public key.
    pub fn public(&self) -> ServerPublicKey {
        let mut pk = [0u8; 32];
        pk.copy_from_slice(self.pair.public_key().as_ref());
        ServerPublicKey(pk)
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(msg).as_ref());
        sig
    }
}

#[allow(clippy::panic)] // a 32-byte seed is the only input ring checks; the type guarantees it
#[cold]
fn unreachable_seed() -> ! {
    panic!("ring rejected a 32-byte Ed25519 seed")
}

impl fmt::Debug for ServerSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerSigningKey(fingerprint={})", self.public().fingerprint())
    }
}

impl ServerPublicKey {
    /// Wraps 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses 32 bytes.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] unless the slice is 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        crate::types::array_from_slice("server public key", bytes).map(Self)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64-bit fingerprint clients pin.
    pub fn fingerprint(&self) -> ServerKeyFingerprint {
        let h = sha256(&[&self.0]);
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&h[24..]);
        ServerKeyFingerprint(fp)
    }

    /// Verifies an Ed25519 signature (ring: strict, rejects non-canonical `S`).
    ///
    /// # Errors
    /// [`Error::BadSignature`], whatever the cause.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(msg, sig)
            .map_err(|_| Error::BadSignature)
    }
}

impl fmt::Debug for ServerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerPublicKey({})", hex(&self.0))
    }
}

impl ServerKeyFingerprint {
    /// Wraps 8 bytes.
    pub const fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }

    /// Parses 16 hex digits.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] unless `s` is 16 hex digits.
    pub fn from_hex(s: &str) -> Result<Self> {
        let bad = Error::InvalidLength {
            what: "fingerprint (hex digits)",
            got: s.len(),
            expected: 16,
        };
        if s.len() != 16 || !s.is_ascii() {
            return Err(bad);
        }
        let mut fp = [0u8; 8];
        for (i, b) in fp.iter_mut().enumerate() {
            *b = s
                .get(2 * i..2 * i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or(bad.clone())?;
        }
        Ok(Self(fp))
    }

    /// The 8 bytes.
    pub const fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Display for ServerKeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for ServerKeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerKeyFingerprint({})", hex(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_fingerprint_round_trip() {
        let k = ServerSigningKey::generate(&mut rand_core::OsRng);
        let sig = k.sign(b"transcript");
        k.public().verify(b"transcript", &sig).unwrap();
        assert_eq!(k.public().verify(b"transcripT", &sig), Err(Error::BadSignature));
        let fp = k.public().fingerprint();
        assert_eq!(ServerKeyFingerprint::from_hex(&fp.to_string()).unwrap(), fp);
        assert!(ServerKeyFingerprint::from_hex("zz").is_err());
        assert!(ServerKeyFingerprint::from_hex("0123456789abcdeg").is_err());
        let again = ServerSigningKey::from_seed(*k.seed());
        assert_eq!(again.public(), k.public());
        assert!(!format!("{k:?}").contains(&hex(k.seed())));
    }
}
