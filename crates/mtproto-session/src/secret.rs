//! Secret bytes inside serializable state: marked, zeroized on drop, never printed.

use core::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Secret bytes that state structs persist (auth keys, chat keys, DH exponents). Serialized as
/// base64 so a store can keep them; zeroized on drop; `Debug` prints only the length.
///
/// # Security
/// Whatever stores a serialized state holds these secrets: protect it like the key itself.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes, <redacted>)", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = crate::wire::b64(&self.0);
        let r = s.serialize_str(&text);
        text.zeroize();
        r
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut text = String::deserialize(d)?;
        let bytes = crate::wire::from_b64(&text);
        text.zeroize();
        bytes
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom("invalid base64"))
    }
}

/// A 32-byte secret key inside serializable state (a root, chain or message key, an X25519
/// secret). Serialized as base64; zeroized on drop; `Debug` prints nothing of it; compared in
/// constant time.
///
/// # Security
/// Whatever stores a serialized state holds these secrets: protect it like the key itself.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey32([u8; 32]);

impl SecretKey32 {
    /// Wraps 32 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The secret bytes.
    pub const fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl subtle::ConstantTimeEq for SecretKey32 {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        self.0.ct_eq(&other.0)
    }
}

impl fmt::Debug for SecretKey32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey32(<redacted>)")
    }
}

impl Serialize for SecretKey32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut text = crate::wire::b64(&self.0);
        let r = s.serialize_str(&text);
        text.zeroize();
        r
    }
}

impl<'de> Deserialize<'de> for SecretKey32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut bytes = SecretBytes::deserialize(d)?;
        let out = <[u8; 32]>::try_from(bytes.expose())
            .map(Self)
            .map_err(|_| serde::de::Error::custom("a 32-byte key"));
        bytes.zeroize();
        out
    }
}
