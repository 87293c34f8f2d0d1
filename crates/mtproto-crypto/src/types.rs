//! Newtypes for the public values of the protocol: nonces, key ids, message keys.

use core::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{Error, Result};

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            s.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    s
}

/// The value of one ASCII hex digit (`0-9`, `a-f`, `A-F`); `None` for anything else, signs and
/// whitespace included (unlike `u8::from_str_radix`, which accepts a leading `+`).
pub(crate) fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub(crate) fn array_from_slice<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| Error::InvalidLength {
        what,
        got: bytes.len(),
        expected: N,
    })
}

macro_rules! public_bytes {
    ($(#[$meta:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Wraps a fixed-size array.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Parses a slice.
            ///
            /// # Errors
            /// [`Error::InvalidLength`] unless the slice is exactly [`Self::LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self> {
                array_from_slice($what, bytes).map(Self)
            }

            /// The bytes, in wire order.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lower-case hex of the bytes in wire order.
            pub fn to_hex(&self) -> String {
                hex(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex(&self.0))
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }
        }
    };
}

public_bytes!(
    /// A 128-bit nonce (`int128` in MTProto): opaque bytes, never a number, so leading zero bytes survive.
    Nonce128, 16, "nonce"
);
public_bytes!(
    /// The 64-bit id of a 256-byte key: the lower-order 64 bits of SHA-1(key), `SHA1(key)[12..20]`
    /// (MTProto "auth_key_id"; for a chat key, Telegram's "key_fingerprint").
    AuthKeyId, 8, "auth_key_id"
);
public_bytes!(
    /// MTProto 2.0 msg_key: the middle 128 bits of SHA-256 over key part, plaintext and padding.
    MsgKey, 16, "msg_key"
);

impl AuthKeyId {
    /// The id as MTProto's little-endian `long`.
    pub const fn to_u64_le(&self) -> u64 {
        u64::from_le_bytes(self.0)
    }
}

/// A 256-bit nonce (`int256`, MTProto's `new_nonce`). It may be secret, so it is zeroized on drop
/// and `Debug` does not print it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Nonce256([u8; 32]);

impl Nonce256 {
    /// Wraps a fixed-size array.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses a slice.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] unless the slice is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        array_from_slice("new_nonce", bytes).map(Self)
    }

    /// The bytes, in wire order.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Nonce256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nonce256(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_keeps_leading_zero_bytes() {
        let mut b = [0u8; 16];
        b[15] = 1;
        let n = Nonce128::from_slice(&b).unwrap();
        assert_eq!(n.as_bytes()[0], 0);
        assert_eq!(n.to_hex().len(), 32);
    }

    #[test]
    fn slice_constructors_reject_wrong_lengths() {
        assert_eq!(
            Nonce128::from_slice(&[0; 15]),
            Err(Error::InvalidLength {
                what: "nonce",
                got: 15,
                expected: 16
            })
        );
        assert!(MsgKey::from_slice(&[0; 17]).is_err());
        assert!(Nonce256::from_slice(&[0; 31]).is_err());
        assert!(format!("{:?}", Nonce256::from_bytes([7; 32])).contains("redacted"));
    }
}
