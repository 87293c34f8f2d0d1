//! 256-byte symmetric keys: the auth key shared with the server and the chat key shared by two peers.

use core::fmt;

use subtle::{Choice, ConstantTimeEq};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{legacy::sha1, AuthKeyId, Result};

/// The key material and its two SHA-1-derived values, boxed so that moves do not copy the secret.
#[derive(Zeroize, ZeroizeOnDrop)]
struct Key256 {
    bytes: Box<[u8; 256]>,
    #[zeroize(skip)]
    id: AuthKeyId,
    aux_hash: [u8; 8],
}

impl Key256 {
    fn new(bytes: Box<[u8; 256]>) -> Self {
        // MTProto "Creating an Authorization Key", step 8: the id is the lower-order 64 bits of
        // SHA1(key), the aux hash the higher-order 64 bits.
        let mut h = sha1(&[&bytes[..]]);
        let mut id = [0u8; 8];
        let mut aux_hash = [0u8; 8];
        id.copy_from_slice(&h[12..]);
        aux_hash.copy_from_slice(&h[..8]);
        h.zeroize();
        Self {
            bytes,
            id: AuthKeyId::from_bytes(id),
            aux_hash,
        }
    }
}

/// Key material that the message framing can encrypt under: an [`AuthKey`] or a [`ChatKey`].
///
/// Sealed: only this crate's key types implement it.
pub trait FramingKey: sealed::Sealed {
    /// The 256 secret bytes.
    fn expose_secret(&self) -> &[u8; 256];
    /// The public 64-bit id sent in front of every packet.
    fn key_id(&self) -> AuthKeyId;
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

macro_rules! key_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        pub struct $name(Key256);

        impl $name {
            /// Wraps 256 bytes (big-endian, left-padded, as MTProto keeps keys).
            pub fn from_bytes(bytes: [u8; 256]) -> Self {
                let mut bytes = bytes;
                let boxed = Box::new(bytes);
                bytes.zeroize();
                Self(Key256::new(boxed))
            }

            /// Parses a 256-byte slice.
            ///
            /// # Errors
            /// [`crate::Error::InvalidLength`] unless the slice is exactly 256 bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self> {
                if bytes.len() != 256 {
                    return Err(crate::Error::InvalidLength {
                        what: stringify!($name),
                        got: bytes.len(),
                        expected: 256,
                    });
                }
                // Straight from the slice into the box: no array on the stack to wipe.
                let mut boxed = Box::new([0u8; 256]);
                boxed.copy_from_slice(bytes);
                Ok(Self(Key256::new(boxed)))
            }

            /// The public 64-bit key id, `SHA1(key)[12..20]`.
            pub fn id(&self) -> AuthKeyId {
                self.0.id
            }

            /// `auth_key_aux_hash`, `SHA1(key)[0..8]`: secret, used in `new_nonce_hash`.
            pub fn aux_hash(&self) -> &[u8; 8] {
                &self.0.aux_hash
            }

            /// The raw key bytes, for persisting the key.
            ///
            /// # Security
            /// Whoever holds these bytes can read and forge every message under this key.
            pub fn expose_secret(&self) -> &[u8; 256] {
                &self.0.bytes
            }
        }

        impl FramingKey for $name {
            fn expose_secret(&self) -> &[u8; 256] {
                &self.0.bytes
            }
            fn key_id(&self) -> AuthKeyId {
                self.0.id
            }
        }

        impl sealed::Sealed for $name {}

        impl ConstantTimeEq for $name {
            fn ct_eq(&self, other: &Self) -> Choice {
                self.0.bytes[..].ct_eq(&other.0.bytes[..])
            }
        }

        /// Constant-time comparison of the whole key.
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.ct_eq(other).into()
            }
        }

        impl Eq for $name {}

        /// Prints only the public key id.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(id={})", stringify!($name), self.0.id.to_hex())
            }
        }
    };
}

key_type!(
    /// The 2048-bit MTProto authorization key shared by one client and the server.
    ///
    /// Zeroized on drop, compared in constant time; `Debug` prints only the key id.
    ///
    /// ```
    /// use mtproto_crypto::AuthKey;
    /// let key = AuthKey::from_bytes([7u8; 256]);
    /// assert!(format!("{key:?}").starts_with("AuthKey(id="));
    /// ```
    AuthKey
);
key_type!(
    /// The 256-byte end-to-end key two peers share (derived by
    /// [`IdentitySecret::chat_key`](crate::IdentitySecret::chat_key)); used like an auth key,
    /// as Telegram's secret chats use theirs.
    ChatKey
);
