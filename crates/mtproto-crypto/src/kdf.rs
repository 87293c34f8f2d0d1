//! The MTProto 2.0 message key and AES key/IV derivation (MTProto "Mobile Protocol: Detailed
//! Description", section "Defining AES Key and Initialization Vector").

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::MsgKey;

/// Which way a message travels; it selects the key slices through MTProto's `x`.
///
/// For an end-to-end chat the peer whose identity public key sorts first plays "client"
/// (its messages use x = 0), as Telegram's secret chats give x = 0 to the chat's originator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// x = 0.
    ClientToServer,
    /// x = 8.
    ServerToClient,
}

impl Direction {
    /// MTProto's `x`: 0 or 8.
    pub const fn x(self) -> usize {
        match self {
            Self::ClientToServer => 0,
            Self::ServerToClient => 8,
        }
    }

    /// The other direction.
    pub const fn reverse(self) -> Self {
        match self {
            Self::ClientToServer => Self::ServerToClient,
            Self::ServerToClient => Self::ClientToServer,
        }
    }
}

/// An AES-256 key and the 32-byte IV that the KDF derives for one message. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct AesKeyIv {
    /// The AES-256 key.
    pub key: [u8; 32],
    /// The 32-byte IV. IGE uses all of it; CBC uses `iv[0..16]` (see [`AesKeyIv::cbc_iv`]).
    pub iv: [u8; 32],
}

impl AesKeyIv {
    /// The 16-byte IV for AES-256-CBC: the **first** 16 bytes of the 32-byte KDF IV.
    ///
    /// Those are the bytes IGE uses as its initial "previous ciphertext" block, which is exactly
    /// the role a CBC IV plays. Every client of this system (including the browser) must use the
    /// same rule.
    pub fn cbc_iv(&self) -> Zeroizing<[u8; 16]> {
        let mut iv = Zeroizing::new([0u8; 16]);
        iv.copy_from_slice(&self.iv[..16]);
        iv
    }
}

/// `msg_key = SHA256(substr(key, 88+x, 32) + plaintext_with_padding)[8..24]`.
///
/// ```
/// use mtproto_crypto::{kdf::{msg_key, Direction}};
/// let k = msg_key(&[0u8; 256], Direction::ClientToServer, b"sixteen byte msg");
/// assert_eq!(k.as_bytes().len(), 16);
/// ```
// The ranges below use x ∈ {0, 8} (from the `Direction` enum), so they all lie within the
// 256-byte array: at most 120 + 8 = 128.
#[allow(clippy::indexing_slicing)]
pub fn msg_key(key: &[u8; 256], direction: Direction, plaintext_with_padding: &[u8]) -> MsgKey {
    let x = direction.x();
    // The whole digest is wiped: only its middle 16 bytes are sent.
    let mut large = Zeroizing::new([0u8; 32]);
    Sha256::new()
        .chain_update(&key[88 + x..120 + x])
        .chain_update(plaintext_with_padding)
        .finalize_into((&mut *large).into());
    let mut out = [0u8; 16];
    out.copy_from_slice(&large[8..24]);
    MsgKey::from_bytes(out)
}

/// Derives the AES-256 key and IV from the key and msg_key:
///
/// ```text
/// sha256_a = SHA256(msg_key + substr(key, x, 36))
/// sha256_b = SHA256(substr(key, 40+x, 36) + msg_key)
/// aes_key  = sha256_a[0:8] + sha256_b[8:24] + sha256_a[24:32]
/// aes_iv   = sha256_b[0:8] + sha256_a[8:24] + sha256_b[24:32]
/// ```
#[allow(clippy::indexing_slicing)] // x ∈ {0, 8}: at most 76 + 8 = 84 < 256
pub fn derive_aes(key: &[u8; 256], msg_key: &MsgKey, direction: Direction) -> AesKeyIv {
    let x = direction.x();
    // Both digests are key material: they are written into, and wiped from, buffers of ours.
    let mut a = Zeroizing::new([0u8; 32]);
    let mut b = Zeroizing::new([0u8; 32]);
    Sha256::new()
        .chain_update(msg_key.as_bytes())
        .chain_update(&key[x..x + 36])
        .finalize_into((&mut *a).into());
    Sha256::new()
        .chain_update(&key[40 + x..76 + x])
        .chain_update(msg_key.as_bytes())
        .finalize_into((&mut *b).into());
    let mut out = AesKeyIv {
        key: [0; 32],
        iv: [0; 32],
    };
    out.key[..8].copy_from_slice(&a[..8]);
    out.key[8..24].copy_from_slice(&b[8..24]);
    out.key[24..].copy_from_slice(&a[24..]);
    out.iv[..8].copy_from_slice(&b[..8]);
    out.iv[8..24].copy_from_slice(&a[8..24]);
    out.iv[24..].copy_from_slice(&b[24..]);
    out
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info` into `out`.
///
/// # Security
/// The output goes only into `out`, which the caller owns and should wipe. The HMAC state that
/// holds the pseudorandom key inside `hkdf` is not wiped on drop: the RustCrypto hash crates
/// (`digest` 0.10) have no way to zeroize their state.
///
/// # Errors
/// [`crate::Error::LengthOutOfRange`] when `out` is longer than 255 · 32 bytes.
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) -> crate::Result<()> {
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .map_err(|_| crate::Error::LengthOutOfRange {
            what: "HKDF output",
            got: out.len(),
            min: 0,
            max: 255 * 32,
        })
}

/// HMAC-SHA256 (RFC 2104, FIPS 198-1) of the concatenation of `parts` under `key`: the chain
/// step of the double ratchet (Signal, "The Double Ratchet Algorithm" §5.2, `KDF_CK`).
///
/// ```
/// // RFC 4231 §4.2, test case 1.
/// let tag = mtproto_crypto::kdf::hmac_sha256(&[0x0b; 20], &[b"Hi There"]);
/// assert_eq!(tag[..4], [0xb0, 0x34, 0x4c, 0x61]);
/// ```
///
/// # Security
/// The tag comes back in a buffer that is wiped on drop (a chain step's output is a key). As
/// for [`hkdf_sha256`], the HMAC state itself cannot be wiped.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    use hmac::Mac as _;
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; the fallback is never
    // taken (an empty key is a valid HMAC key too).
    let mut mac = match hmac::Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => hmac::Hmac::<Sha256>::new(&Default::default()),
    };
    for p in parts {
        mac.update(p);
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the KDF hands out wipes itself (this fails to compile if a plain array comes back).
    #[test]
    fn derived_key_and_ivs_wipe_themselves() {
        fn wipes_on_drop<T: ZeroizeOnDrop>(_: &T) {}
        let key = core::array::from_fn(|i| i as u8);
        let aes = derive_aes(&key, &MsgKey::from_bytes([3; 16]), Direction::ServerToClient);
        wipes_on_drop(&aes);
        let cbc_iv = aes.cbc_iv();
        wipes_on_drop(&cbc_iv);
        assert_eq!(cbc_iv[..], aes.iv[..16]);
    }
}
