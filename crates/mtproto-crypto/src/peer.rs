//! Peer identity keys (X25519), the per-pair chat key, and fingerprints people can compare.

use core::fmt;

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::{kdf::sha256, types::hex, ChatKey, Direction, Result};

/// Domain-separation salt of the chat-key HKDF.
const CHAT_KEY_SALT: &[u8] = b"mtproto-relay/chat-key/v1";
/// Domain-separation prefix of the chat-key fingerprint.
const FINGERPRINT_LABEL: &[u8] = b"mtproto-relay/fingerprint/v1";

/// A long-lived X25519 identity secret. It can be stored ([`IdentitySecret::to_bytes`]) and
/// reused, unlike ring's ephemeral-only agreement keys. Zeroized on drop, never printed; boxed,
/// so that moving it moves a pointer and leaves no copy of the secret behind.
pub struct IdentitySecret(Box<StaticSecret>);

/// The public half of an identity key, published through the relay's directory.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityPublic([u8; 32]);

impl IdentitySecret {
    /// A fresh identity key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut bytes[..]);
        Self::boxed(&bytes)
    }

    /// Restores a stored identity key.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::boxed(&Zeroizing::new(bytes))
    }

    fn boxed(bytes: &[u8; 32]) -> Self {
        Self(Box::new(StaticSecret::from(*bytes)))
    }

    /// The secret bytes, for storage.
    ///
    /// # Security
    /// Whoever has them can impersonate this identity to every peer.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> IdentityPublic {
        IdentityPublic(PublicKey::from(&*self.0).to_bytes())
    }

    /// The 256-byte chat key shared with `peer`:
    ///
    /// ```text
    /// shared   = X25519(own secret, peer public)              -- rejected if all zero
    /// chat_key = HKDF-SHA256(salt = "mtproto-relay/chat-key/v1", ikm = shared,
    ///                        info = min(pub_a, pub_b) ‖ max(pub_a, pub_b), L = 256)
    /// ```
    ///
    /// Both public keys are bound in, in an order both sides compute alike, so both get the same key.
    ///
    /// ```
    /// use mtproto_crypto::IdentitySecret;
    /// let alice = IdentitySecret::generate(&mut rand_core::OsRng);
    /// let bob = IdentitySecret::generate(&mut rand_core::OsRng);
    /// let k1 = alice.chat_key(&bob.public())?;
    /// let k2 = bob.chat_key(&alice.public())?;
    /// assert_eq!(k1, k2);
    /// assert_eq!(k1.fingerprint().to_string(), k2.fingerprint().to_string());
    /// # Ok::<(), mtproto_crypto::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::LowOrderPoint`](crate::Error::LowOrderPoint) when `peer` is a low-order point (the shared secret is all zero).
    pub fn chat_key(&self, peer: &IdentityPublic) -> Result<ChatKey> {
        let shared = crate::hazmat::x25519_static(&self.0, peer.as_bytes())?;
        let own = self.public();
        let (lo, hi) = if own.0 <= peer.0 {
            (own.0, peer.0)
        } else {
            (peer.0, own.0)
        };
        let mut info = [0u8; 64];
        info[..32].copy_from_slice(&lo);
        info[32..].copy_from_slice(&hi);
        let mut okm = Zeroizing::new([0u8; 256]);
        crate::kdf::hkdf_sha256(CHAT_KEY_SALT, &shared[..], &info, &mut okm[..])?;
        Ok(ChatKey::from_bytes(*okm))
    }
}

impl IdentitySecret {
    /// The raw X25519 agreement with any X25519 public key (a peer's identity, signed prekey or
    /// ephemeral key): the DH1..DH3 of X3DH that involve an identity key. Unlike
    /// [`IdentitySecret::chat_key`], nothing is hashed: the caller feeds the output to a KDF.
    ///
    /// # Errors
    /// [`Error::LowOrderPoint`](crate::Error::LowOrderPoint) when `public` is a low-order point (the output would be all zero).
    ///
    /// # Security
    /// The output is secret; it comes back in a buffer wiped on drop.
    pub fn diffie_hellman(&self, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
        crate::hazmat::x25519_static(&self.0, public)
    }
}

impl fmt::Debug for IdentitySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentitySecret(public={})", self.public().to_hex())
    }
}

impl IdentityPublic {
    /// Wraps 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses 32 bytes.
    ///
    /// # Errors
    /// [`Error::InvalidLength`](crate::Error::InvalidLength) unless the slice is 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        crate::types::array_from_slice("identity public key", bytes).map(Self)
    }

    /// Parses 32 bytes that are safe to agree with: not a low-order point (X25519 with it would
    /// be all zero, for every peer). For keys that come from outside — what a relay accepts for
    /// its directory, what a client takes from it.
    ///
    /// ```
    /// use mtproto_crypto::{rand_core::OsRng, IdentityPublic, IdentitySecret};
    /// let good = IdentitySecret::generate(&mut OsRng).public();
    /// assert!(IdentityPublic::validated(good.as_bytes()).is_ok());
    /// assert!(IdentityPublic::validated(&[0; 32]).is_err()); // the identity point
    /// assert!(IdentityPublic::validated(&[1; 31]).is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidLength`](crate::Error::InvalidLength) unless 32 bytes,
    /// [`Error::LowOrderPoint`](crate::Error::LowOrderPoint) for a low-order point.
    pub fn validated(bytes: &[u8]) -> Result<Self> {
        let key = Self::from_slice(bytes)?;
        // Any scalar times a low-order point is the all-zero output, which x25519 refuses.
        crate::hazmat::x25519(&[9; 32], &key.0).map_err(|_| crate::Error::LowOrderPoint)?;
        Ok(key)
    }

    /// The 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Hex of the 32 bytes.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A short fingerprint of this one key for directories: the first 8 bytes of SHA-256, hex.
    pub fn short_fingerprint(&self) -> String {
        hex(&sha256(&[b"mtproto-relay/identity/v1", &self.0])[..8])
    }

    /// The KDF direction for messages this key's owner sends to `peer` in an end-to-end chat:
    /// the owner of the lower public key sends with x = 0 (as a chat's originator does in
    /// Telegram's secret chats), the other with x = 8.
    pub fn send_direction(&self, peer: &IdentityPublic) -> Direction {
        if self.0 <= peer.0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        }
    }
}

impl fmt::Debug for IdentityPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublic({})", self.to_hex())
    }
}

/// What two people compare to know they share the same chat key, like Signal's safety numbers:
/// 60 digits in 12 groups of 5, from `SHA-256("mtproto-relay/fingerprint/v1" ‖ chat_key)`.
/// Both sides of an honest pair see the same digits; a man in the middle holds two different
/// chat keys, so the two people see different digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The 12 groups of 5 digits.
    pub fn groups(&self) -> [u32; 12] {
        let mut out = [0u32; 12];
        for (i, chunk) in self.0.chunks_exact(5).take(6).enumerate() {
            let mut v = 0u64;
            for b in chunk {
                v = (v << 8) | u64::from(*b);
            }
            // Two groups per 40-bit chunk: 40 bits ≥ 10^10 values, so reduction bias is tiny.
            let v = v % 10_000_000_000;
            if let Some([hi, lo]) = out.get_mut(2 * i..2 * i + 2) {
                *hi = (v / 100_000) as u32;
                *lo = (v % 100_000) as u32;
            }
        }
        out
    }

    /// The raw 32-byte digest (hex, for machines).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.groups().iter().enumerate() {
            if i > 0 {
                f.write_str(if i % 4 == 0 { "\n" } else { " " })?;
            }
            write!(f, "{g:05}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

impl ChatKey {
    /// The fingerprint both peers compare.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut digest = sha256(&[FINGERPRINT_LABEL, &self.expose_secret()[..]]);
        let fp = Fingerprint(digest);
        digest.zeroize();
        fp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn zero_point_is_rejected() {
        let a = IdentitySecret::generate(&mut rand_core::OsRng);
        assert_eq!(
            a.chat_key(&IdentityPublic::from_bytes([0; 32])).unwrap_err(),
            Error::LowOrderPoint
        );
    }

    /// The secret lives in one heap allocation that `StaticSecret` wipes on drop (x25519-dalek's
    /// `zeroize` feature: `#[zeroize(drop)]`, which implements `Drop` but not the
    /// `ZeroizeOnDrop` marker); the struct that moves is a pointer.
    #[test]
    fn secret_is_boxed_and_wipes_itself() {
        fn zeroizable<T: Zeroize>() {}
        zeroizable::<StaticSecret>();
        assert_eq!(
            core::mem::size_of::<IdentitySecret>(),
            core::mem::size_of::<usize>()
        );
        let s = IdentitySecret::from_bytes([5; 32]);
        assert_eq!(*s.to_bytes(), [5; 32]);
    }

    #[test]
    fn directions_are_opposite() {
        let a = IdentitySecret::generate(&mut rand_core::OsRng).public();
        let b = IdentitySecret::generate(&mut rand_core::OsRng).public();
        assert_eq!(a.send_direction(&b), b.send_direction(&a).reverse());
    }

    #[test]
    fn fingerprint_renders_60_digits() {
        let k = ChatKey::from_bytes([9; 256]);
        let s = k.fingerprint().to_string();
        assert_eq!(s.chars().filter(char::is_ascii_digit).count(), 60);
        assert_eq!(s.lines().count(), 3);
        assert_ne!(s, ChatKey::from_bytes([8; 256]).fingerprint().to_string());
    }
}
