//! SHA-1, kept only where MTProto still defines a value with it: key ids, the auth key's aux hash,
//! the handshake's temporary AES key and IV, `new_nonce_hash`, and the first server salt
//! (MTProto "Creating an Authorization Key", steps 6 and 9). Never use it for anything new.

use sha1::{Digest, Sha1};
use zeroize::Zeroizing;

use crate::{types::Nonce128, Nonce256};

/// SHA-1 of the concatenation of `parts`.
pub fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut out = [0u8; 20];
    sha1_into(parts, &mut out);
    out
}

/// SHA-1 of the concatenation of `parts`, written into a wiped-on-drop buffer (for digests of
/// secrets).
fn sha1_secret(parts: &[&[u8]]) -> Zeroizing<[u8; 20]> {
    let mut out = Zeroizing::new([0u8; 20]);
    sha1_into(parts, &mut out);
    out
}

fn sha1_into(parts: &[&[u8]], out: &mut [u8; 20]) {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize_into(out.into());
}

/// The temporary AES-256-IGE key and IV that protect MTProto's `server_DH_inner_data` and
/// `client_DH_inner_data` (MTProto auth key creation, step 6):
///
/// ```text
/// tmp_aes_key = SHA1(new_nonce + server_nonce) + SHA1(server_nonce + new_nonce)[0:12]
/// tmp_aes_iv  = SHA1(server_nonce + new_nonce)[12:20] + SHA1(new_nonce + new_nonce) + new_nonce[0:4]
/// ```
///
/// # Security
/// Both are secret (anyone with them reads the DH exchange) and are wiped on drop, as are the
/// three SHA-1 digests they are cut from.
pub fn tmp_aes_key_iv(
    new_nonce: &Nonce256,
    server_nonce: &Nonce128,
) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let nn = new_nonce.as_bytes();
    let sn = server_nonce.as_bytes();
    let (a, b, c) = (
        sha1_secret(&[nn, sn]),
        sha1_secret(&[sn, nn]),
        sha1_secret(&[nn, nn]),
    );
    let (a, b, c): (&[u8; 20], &[u8; 20], &[u8; 20]) = (&a, &b, &c);
    let mut key = Zeroizing::new([0u8; 32]);
    let mut iv = Zeroizing::new([0u8; 32]);
    {
        let (k, v): (&mut [u8; 32], &mut [u8; 32]) = (&mut key, &mut iv);
        k[..20].copy_from_slice(a);
        k[20..].copy_from_slice(&b[..12]);
        v[..8].copy_from_slice(&b[12..]);
        v[8..28].copy_from_slice(c);
        v[28..].copy_from_slice(&nn[..4]);
    }
    (key, iv)
}

/// `new_nonce_hashN = SHA1(new_nonce + byte(N) + auth_key_aux_hash)[4:20]` (step 9; N = 1 for
/// `dh_gen_ok`, 2 for retry, 3 for fail).
pub fn new_nonce_hash(new_nonce: &Nonce256, n: u8, aux_hash: &[u8; 8]) -> [u8; 16] {
    // The hash covers the secret new_nonce and aux hash; only bytes 4..20 are sent.
    let h = sha1_secret(&[new_nonce.as_bytes(), &[n], aux_hash]);
    let h: &[u8; 20] = &h;
    let mut out = [0u8; 16];
    out.copy_from_slice(&h[4..]);
    out
}

/// The first server salt: `new_nonce[0:8] XOR server_nonce[0:8]` (step 9).
pub fn initial_server_salt(new_nonce: &Nonce256, server_nonce: &Nonce128) -> [u8; 8] {
    let mut salt = [0u8; 8];
    for ((s, a), b) in salt
        .iter_mut()
        .zip(new_nonce.as_bytes())
        .zip(server_nonce.as_bytes())
    {
        *s = a ^ b;
    }
    salt
}

/// Telegram's secret-chat key visualization: `SHA1(initial_key)[0:16] ‖ SHA256(key)[0:20]`
/// (end-to-end encryption, "Key Visualization"). Provided for interoperability; this system's
/// own fingerprint is [`crate::Fingerprint`].
pub fn telegram_key_visualization(initial_key: &[u8; 256], current_key: &[u8; 256]) -> [u8; 36] {
    let mut out = [0u8; 36];
    out[..16].copy_from_slice(&sha1(&[initial_key])[..16]);
    out[16..].copy_from_slice(&crate::kdf::sha256(&[current_key])[..20]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The temporary key and IV come back in types that wipe themselves (this fails to compile
    /// if they go back to plain arrays).
    #[test]
    fn tmp_key_and_iv_wipe_themselves() {
        fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>(_: &T) {}
        let nn = Nonce256::from_bytes([1; 32]);
        let sn = Nonce128::from_bytes([2; 16]);
        let (key, iv) = tmp_aes_key_iv(&nn, &sn);
        wipes_on_drop(&key);
        wipes_on_drop(&iv);
        // Still the formula: key[0..20] = SHA1(new_nonce + server_nonce), iv ends with new_nonce[0..4].
        assert_eq!(key[..20], sha1(&[nn.as_bytes(), sn.as_bytes()]));
        assert_eq!(iv[28..], [1; 4]);
    }
}
