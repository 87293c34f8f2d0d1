//! The server's long-term Ed25519 identity: it signs its handshake answers, clients pin it.

use core::fmt;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::{
    kdf::sha256,
    types::{hex, hex_digit},
    Error, Result,
};

/// The server's signing key (Ed25519, RFC 8032).
///
/// # Security
/// Held as `ed25519-dalek`'s `SigningKey`, in a box so that moving the key moves a pointer.
/// It wipes its seed on drop, and the expanded secret (the scalar and the nonce prefix) that
/// each signature derives from it is wiped as soon as the signature is made.
pub struct ServerSigningKey {
    key: Box<SigningKey>,
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
    /// Whoever has it can impersonate the server to every client.
    pub fn seed(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// The public key.
    pub fn public(&self) -> ServerPublicKey {
        ServerPublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `msg` (RFC 8032 Ed25519: deterministic, so the same key and message always give
    /// the same signature).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
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

    /// Verifies an Ed25519 signature: RFC 8032 §5.1.7 without the cofactor, refusing a
    /// non-canonical `S` (`S ≥ L`) and a public key or `R` that does not decode to a point;
    /// the same rules as ring's verifier, which this crate used before.
    ///
    /// # Errors
    /// [`Error::BadSignature`], whatever the cause.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| Error::BadSignature)?;
        let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|_| Error::BadSignature)?;
        key.verify(msg, &sig).map_err(|_| Error::BadSignature)
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

    /// Parses exactly 16 hex digits (`0-9`, `a-f`, `A-F`), as [`fmt::Display`] writes them.
    ///
    /// Strict, as a pin must be: no sign, no `0x` prefix, no whitespace, no separators.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] unless `s` is 16 bytes long; [`Error::InvalidHexDigit`] for any
    /// byte that is not a hex digit.
    pub fn from_hex(s: &str) -> Result<Self> {
        let digits: &[u8; 16] = s.as_bytes().try_into().map_err(|_| Error::InvalidLength {
            what: "fingerprint (hex digits)",
            got: s.len(),
            expected: 16,
        })?;
        let mut fp = [0u8; 8];
        for (i, (byte, pair)) in fp.iter_mut().zip(digits.chunks_exact(2)).enumerate() {
            let digit = |at: usize| {
                pair.get(at)
                    .copied()
                    .and_then(hex_digit)
                    .ok_or(Error::InvalidHexDigit {
                        what: "fingerprint",
                        position: 2 * i + at,
                    })
            };
            *byte = (digit(0)? << 4) | digit(1)?;
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
        let again = ServerSigningKey::from_seed(*k.seed());
        assert_eq!(again.public(), k.public());
        assert!(!format!("{k:?}").contains(&hex(k.seed())));
    }

    /// RFC 8032 §7.1 TEST 1 (empty message), from the crate's vector file: the answer ring gave
    /// before the switch to ed25519-dalek, so the same seed must still give the same public key
    /// and the same signature. `tests/vectors.rs` runs all three RFC vectors with flipped bits.
    #[test]
    fn rfc8032_test1_signature_is_unchanged() {
        let file: serde_json::Value =
            serde_json::from_str(include_str!("../tests/data/rfc_vectors.json")).unwrap();
        let t = &file["ed25519"][0];
        assert_eq!(t["source"], "RFC 8032 §7.1 TEST 1");
        let h = |k: &str| hex::decode(t[k].as_str().unwrap()).unwrap();
        assert!(h("msg").is_empty());
        let k = ServerSigningKey::from_seed(h("seed").try_into().unwrap());
        assert_eq!(k.public().as_bytes().to_vec(), h("public"));
        assert_eq!(k.sign(b"").to_vec(), h("sig"));
        k.public().verify(b"", &h("sig")).unwrap();
        assert_eq!(k.public().verify(b"", &h("sig")[..63]), Err(Error::BadSignature));
    }

    /// Moving the key moves a pointer; the secret stays in one heap allocation that
    /// `SigningKey` wipes on drop.
    #[test]
    fn signing_key_is_boxed_and_wipes_itself() {
        fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wipes_on_drop::<SigningKey>();
        assert_eq!(
            core::mem::size_of::<ServerSigningKey>(),
            core::mem::size_of::<usize>()
        );
    }

    #[test]
    fn fingerprint_pins_are_strict_hex() {
        let fp = ServerKeyFingerprint::from_hex("0123456789abcdef").unwrap();
        assert_eq!(fp.as_bytes(), &[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        assert_eq!(ServerKeyFingerprint::from_hex("0123456789ABCDEF").unwrap(), fp);
        for bad in [
            "+1+2+3+4+5+6+7+8", // u8::from_str_radix("+1", 16) == Ok(1)
            "-1-2-3-4-5-6-7-8",
            " 123456789abcdef",
            "123456789abcdef ",
            "0x23456789abcdef",
            "0123456789abcdeg",
            "01234567_9abcdef",
            "0123456789abcdé", // 16 bytes, not 16 digits
        ] {
            assert_eq!(bad.len(), 16, "{bad:?}");
            assert!(
                matches!(
                    ServerKeyFingerprint::from_hex(bad),
                    Err(Error::InvalidHexDigit { .. })
                ),
                "{bad:?} parsed"
            );
        }
        assert_eq!(
            ServerKeyFingerprint::from_hex("+123456789abcdef"),
            Err(Error::InvalidHexDigit {
                what: "fingerprint",
                position: 0
            })
        );
        for (bad, len) in [("0123456789abcde", 15), ("0123456789abcdef0", 17), ("", 0)] {
            assert_eq!(
                ServerKeyFingerprint::from_hex(bad),
                Err(Error::InvalidLength {
                    what: "fingerprint (hex digits)",
                    got: len,
                    expected: 16
                })
            );
        }
    }
}
