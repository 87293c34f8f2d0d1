//! SHA-1, kept only where MTProto still defines a value with it: key ids, the auth key's aux hash,
//! the handshake's temporary AES key and IV, `new_nonce_hash`, and the first server salt
//! (MTProto "Creating an Authorization Key", steps 6 and 9). Never use it for anything new.

use sha1::{Digest, Sha1};

use crate::{types::Nonce128, Nonce256};

/// SHA-1 of the concatenation of `parts`.
pub fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The temporary AES-256-IGE key and IV that protect MTProto's `server_DH_inner_data` and
/// `client_DH_inner_data` (MTProto auth key creation, step 6):
///
/// ```text
/// tmp_aes_key = SHA1(new_nonce + server_nonce) + SHA1(server_nonce + new_nonce)[0:12]
/// tmp_aes_iv  = SHA1(server_nonce + new_nonce)[12:20] + SHA1(new_nonce + new_nonce) + new_nonce[0:4]
/// ```
pub fn tmp_aes_key_iv(new_nonce: &Nonce256, server_nonce: &Nonce128) -> ([u8; 32], [u8; 32]) {
    let nn = new_nonce.as_bytes();
    let sn = server_nonce.as_bytes();
    let a = sha1(&[nn, sn]);
    let b = sha1(&[sn, nn]);
    let c = sha1(&[nn, nn]);
    let mut key = [0u8; 32];
    let mut iv = [0u8; 32];
    key[..20].copy_from_slice(&a);
    key[20..].copy_from_slice(&b[..12]);
    iv[..8].copy_from_slice(&b[12..]);
    iv[8..28].copy_from_slice(&c);
    iv[28..].copy_from_slice(&nn[..4]);
    (key, iv)
}

/// `new_nonce_hashN = SHA1(new_nonce + byte(N) + auth_key_aux_hash)[4:20]` (step 9; N = 1 for
/// `dh_gen_ok`, 2 for retry, 3 for fail).
pub fn new_nonce_hash(new_nonce: &Nonce256, n: u8, aux_hash: &[u8; 8]) -> [u8; 16] {
    let h = sha1(&[new_nonce.as_bytes(), &[n], aux_hash]);
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
