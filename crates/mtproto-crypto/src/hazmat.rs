//! Raw AES-256 block modes, in place on caller buffers, without padding or authentication.
//!
//! # Security
//! These modes give confidentiality only. Use [`crate::Framing`], which adds MTProto's msg_key
//! check, unless you are implementing another MTProto construction (the handshake's temporary
//! key encryption uses IGE directly).

//! The ciphers built here from secret keys are dropped before each function returns; `aes` and
//! `cbc` are built with their `zeroize` feature, so that drop wipes the AES round keys and the
//! CBC decryptor's chaining block. The CBC encryption chain is always the last ciphertext block,
//! which is public; IGE's chains pass through a scratch block (`IgeScratch`), which is wiped.
//!
//! # How the serial modes are driven
//! CBC encryption and IGE (both directions) are one dependent AES block after another, so their
//! speed is the AES latency plus whatever sits between two blocks. They are written as a
//! [`BlockClosure`] handed to `aes`'s `encrypt_with_backend` / `decrypt_with_backend`: `aes`
//! picks its backend at run time (AES-NI through `cpufeatures`, else the constant-time software
//! one) and calls the closure once, inside a function compiled for that backend, so the whole
//! loop is compiled with the backend's block function inlined and the chaining value stays in a
//! register between blocks. Going through `encrypt_block` per block instead re-checks the CPU
//! feature, calls a non-inlined function that reloads the 15 round keys, and round-trips the
//! chaining value through memory; the `cbc` crate's encryptor copies the block and chain through
//! memory in the same way. CBC decryption has no chain to wait for (8 blocks are decrypted at
//! once) and stays with the `cbc` crate.

use aes::cipher::{
    block_padding::NoPadding, BlockBackend, BlockCipher, BlockClosure, BlockDecrypt, BlockDecryptMut,
    BlockEncrypt, BlockSizeUser, KeyInit, KeyIvInit,
};
use aes::{Aes256Dec, Aes256Enc};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{Error, Result};

fn check_blocks(buf: &[u8]) -> Result<()> {
    if buf.len().is_multiple_of(16) {
        Ok(())
    } else {
        Err(Error::NotBlockAligned { got: buf.len() })
    }
}

type U16 = aes::cipher::consts::U16;

/// One AES block through the backend, in place.
#[inline(always)]
fn encrypt_in_place<B: BlockBackend<BlockSize = U16>>(backend: &mut B, block: &mut [u8; 16]) {
    let block: &mut aes::Block = block.into();
    backend.proc_block(block.into());
}

#[inline(always)]
fn xor16(a: &mut [u8; 16], b: &[u8; 16]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// The CBC encryption loop, run by the AES backend: `c_i = E(p_i ^ c_{i-1})`, `c_0 = iv`.
struct CbcEncrypt<'a> {
    iv: &'a [u8; 16],
    blocks: &'a mut [[u8; 16]],
}

impl BlockSizeUser for CbcEncrypt<'_> {
    type BlockSize = U16;
}

impl BlockClosure for CbcEncrypt<'_> {
    #[inline(always)]
    fn call<B: BlockBackend<BlockSize = U16>>(self, backend: &mut B) {
        // The chain is always the previous ciphertext block (public): nothing secret to wipe.
        let mut chain = *self.iv;
        for block in self.blocks {
            xor16(&mut chain, block);
            encrypt_in_place(backend, &mut chain);
            *block = chain;
        }
    }
}

/// AES-256-CBC encryption in place. `buf.len()` must be a multiple of 16.
///
/// # Errors
/// [`Error::NotBlockAligned`]; the buffer is then left untouched.
pub fn aes256_cbc_encrypt(key: &[u8; 32], iv: &[u8; 16], buf: &mut [u8]) -> Result<()> {
    check_blocks(buf)?;
    let (blocks, _) = buf.as_chunks_mut::<16>();
    Aes256Enc::new(key.into()).encrypt_with_backend(CbcEncrypt { iv, blocks });
    Ok(())
}

/// AES-256-CBC decryption in place. `buf.len()` must be a multiple of 16.
///
/// # Errors
/// [`Error::NotBlockAligned`]; the buffer is then left untouched.
pub fn aes256_cbc_decrypt(key: &[u8; 32], iv: &[u8; 16], buf: &mut [u8]) -> Result<()> {
    check_blocks(buf)?;
    let len = buf.len();
    cbc::Decryptor::<Aes256Dec>::new(key.into(), iv.into())
        .decrypt_padded_mut::<NoPadding>(buf)
        .map(|_| ())
        .map_err(|_| Error::NotBlockAligned { got: len })
}

/// The IGE chain and the block being worked on. Every field can hold plaintext or a value from
/// which the plaintext follows, so it is wiped when the loop ends and again on drop. The loop
/// itself keeps these values in locals (registers, once compiled) and hands them back here at
/// the end to be wiped.
#[derive(Default, Zeroize, ZeroizeOnDrop)]
pub(crate) struct IgeScratch {
    prev_c: [u8; 16],
    prev_p: [u8; 16],
    held: [u8; 16],
    block: [u8; 16],
}

impl IgeScratch {
    fn start(&mut self, iv: &[u8; 32]) {
        let (c, p) = iv.split_at(16);
        self.prev_c.copy_from_slice(c);
        self.prev_p.copy_from_slice(p);
    }
}

/// One IGE pass, run by the block cipher's backend. Encryption is
/// `c_i = E(p_i ^ c_{i-1}) ^ p_{i-1}` and decryption `p_i = D(c_i ^ p_{i-1}) ^ c_{i-1}`: the
/// same loop with the roles of the two chains swapped, so `before`/`after` are the chain XORed
/// in before / after the block function (encryption: `c`, `p`; decryption: `p`, `c`).
struct IgePass<'a> {
    scratch: &'a mut IgeScratch,
    blocks: &'a mut [[u8; 16]],
}

impl BlockSizeUser for IgePass<'_> {
    type BlockSize = U16;
}

impl IgePass<'_> {
    #[inline(always)]
    fn run<B: BlockBackend<BlockSize = U16>>(self, backend: &mut B, encrypt: bool) {
        let s = self.scratch;
        let (mut before, mut after) = if encrypt {
            (s.prev_c, s.prev_p)
        } else {
            (s.prev_p, s.prev_c)
        };
        let mut input = [0u8; 16];
        for block in self.blocks {
            input = *block;
            xor16(&mut before, &input);
            encrypt_in_place(backend, &mut before);
            xor16(&mut before, &after);
            *block = before;
            after = input;
        }
        // Hand the last values (one of them plaintext) to the scratch, which the caller wipes.
        s.held = input;
        s.block = before;
        s.prev_p = after;
    }
}

/// [`IgePass`] for encryption (the backend given to it is an encrypting one).
struct IgeEncrypt<'a>(IgePass<'a>);
/// [`IgePass`] for decryption (the backend given to it is a decrypting one).
struct IgeDecrypt<'a>(IgePass<'a>);

impl BlockSizeUser for IgeEncrypt<'_> {
    type BlockSize = U16;
}
impl BlockSizeUser for IgeDecrypt<'_> {
    type BlockSize = U16;
}
impl BlockClosure for IgeEncrypt<'_> {
    #[inline(always)]
    fn call<B: BlockBackend<BlockSize = U16>>(self, backend: &mut B) {
        self.0.run(backend, true);
    }
}
impl BlockClosure for IgeDecrypt<'_> {
    #[inline(always)]
    fn call<B: BlockBackend<BlockSize = U16>>(self, backend: &mut B) {
        self.0.run(backend, false);
    }
}

/// IGE encryption with any 128-bit block cipher: `c_i = E(p_i ^ c_{i-1}) ^ p_{i-1}`, with
/// `c_0 = iv[0..16]` and `p_0 = iv[16..32]` (the convention of OpenSSL, tdlib and Telegram).
pub(crate) fn ige_encrypt_with<C>(cipher: &C, iv: &[u8; 32], buf: &mut [u8]) -> Result<()>
where
    C: BlockEncrypt + BlockCipher<BlockSize = U16>,
{
    ige_encrypt_in(cipher, iv, buf, &mut IgeScratch::default())
}

/// [`ige_encrypt_with`] on caller-owned scratch, which is all zero again when this returns.
fn ige_encrypt_in<C>(cipher: &C, iv: &[u8; 32], buf: &mut [u8], s: &mut IgeScratch) -> Result<()>
where
    C: BlockEncrypt + BlockCipher<BlockSize = U16>,
{
    check_blocks(buf)?;
    s.start(iv);
    let (blocks, _) = buf.as_chunks_mut::<16>();
    cipher.encrypt_with_backend(IgeEncrypt(IgePass { scratch: s, blocks }));
    s.zeroize();
    Ok(())
}

/// IGE decryption with any 128-bit block cipher: `p_i = D(c_i ^ p_{i-1}) ^ c_{i-1}`.
pub(crate) fn ige_decrypt_with<C>(cipher: &C, iv: &[u8; 32], buf: &mut [u8]) -> Result<()>
where
    C: BlockDecrypt + BlockCipher<BlockSize = U16>,
{
    ige_decrypt_in(cipher, iv, buf, &mut IgeScratch::default())
}

/// [`ige_decrypt_with`] on caller-owned scratch, which is all zero again when this returns.
fn ige_decrypt_in<C>(cipher: &C, iv: &[u8; 32], buf: &mut [u8], s: &mut IgeScratch) -> Result<()>
where
    C: BlockDecrypt + BlockCipher<BlockSize = U16>,
{
    check_blocks(buf)?;
    s.start(iv);
    let (blocks, _) = buf.as_chunks_mut::<16>();
    cipher.decrypt_with_backend(IgeDecrypt(IgePass { scratch: s, blocks }));
    s.zeroize();
    Ok(())
}

/// AES-256-IGE encryption in place (MTProto's mode). `buf.len()` must be a multiple of 16.
///
/// # Errors
/// [`Error::NotBlockAligned`]; the buffer is then left untouched.
pub fn aes256_ige_encrypt(key: &[u8; 32], iv: &[u8; 32], buf: &mut [u8]) -> Result<()> {
    check_blocks(buf)?;
    ige_encrypt_with(&Aes256Enc::new(key.into()), iv, buf)
}

/// AES-256-IGE decryption in place. `buf.len()` must be a multiple of 16.
///
/// # Errors
/// [`Error::NotBlockAligned`]; the buffer is then left untouched.
pub fn aes256_ige_decrypt(key: &[u8; 32], iv: &[u8; 32], buf: &mut [u8]) -> Result<()> {
    check_blocks(buf)?;
    ige_decrypt_with(&Aes256Dec::new(key.into()), iv, buf)
}

/// Raw X25519 (RFC 7748 §5): `scalar · u`, refusing an all-zero result (a low-order `u`),
/// as RFC 7748 §6.1 allows and Wycheproof's "ZeroSharedSecret" cases require.
///
/// # Errors
/// [`Error::LowOrderPoint`] when the shared secret is all zero.
///
/// # Security
/// The shared secret comes back in a buffer that is wiped on drop.
pub fn x25519(scalar: &[u8; 32], u: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    x25519_static(&x25519_dalek::StaticSecret::from(*scalar), u)
}

/// [`x25519`] with a secret already held as a `StaticSecret` (an identity key), without copying
/// its bytes out.
pub(crate) fn x25519_static(
    secret: &x25519_dalek::StaticSecret,
    u: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*u));
    if shared.was_contributory() {
        Ok(Zeroizing::new(shared.to_bytes()))
    } else {
        Err(Error::LowOrderPoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misaligned_buffers_are_errors_not_panics() {
        let mut buf = [0u8; 17];
        let before = buf;
        assert_eq!(
            aes256_cbc_encrypt(&[0; 32], &[0; 16], &mut buf),
            Err(Error::NotBlockAligned { got: 17 })
        );
        assert_eq!(
            aes256_cbc_decrypt(&[0; 32], &[0; 16], &mut buf[..15]),
            Err(Error::NotBlockAligned { got: 15 })
        );
        assert!(aes256_ige_encrypt(&[0; 32], &[0; 32], &mut buf).is_err());
        assert!(aes256_ige_decrypt(&[0; 32], &[0; 32], &mut buf).is_err());
        assert_eq!(buf, before);
    }

    /// OpenSSL's AES-128 IGE vectors (test/igetest.c, via gotd/ige) exercise the generic IGE
    /// core with another key size; they live in the shared vector file.
    #[test]
    fn openssl_ige_aes128_vectors() {
        let file: serde_json::Value =
            serde_json::from_str(include_str!("../tests/data/mtproto_vectors.json")).unwrap();
        let mut seen = 0;
        for v in file["vectors"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap();
            if !name.starts_with("openssl_ige_aes128") {
                continue;
            }
            let h = |k: &str| hex::decode(v["inputs"][k].as_str().unwrap()).unwrap();
            let cipher = aes::Aes128::new_from_slice(&h("key")).unwrap();
            let iv: [u8; 32] = h("iv").try_into().unwrap();
            let expected = hex::decode(v["outputs"]["ciphertext"].as_str().unwrap()).unwrap();
            let mut buf = h("plaintext");
            ige_encrypt_with(&cipher, &iv, &mut buf).unwrap();
            assert_eq!(buf, expected, "{name}");
            ige_decrypt_with(&cipher, &iv, &mut buf).unwrap();
            assert_eq!(buf, h("plaintext"), "{name}");
            // One flipped bit in the IV changes the ciphertext.
            let mut iv2 = iv;
            iv2[31] ^= 1;
            let mut buf2 = h("plaintext");
            ige_encrypt_with(&cipher, &iv2, &mut buf2).unwrap();
            assert_ne!(buf2, expected, "{name}");
            seen += 1;
        }
        assert_eq!(seen, 2);
    }

    /// Fails to compile unless `aes` and `cbc` are built with their `zeroize` feature.
    #[test]
    fn ciphers_built_from_secret_keys_wipe_themselves_on_drop() {
        fn wipes_on_drop<T: ZeroizeOnDrop>() {}
        wipes_on_drop::<Aes256Enc>();
        wipes_on_drop::<Aes256Dec>();
        wipes_on_drop::<cbc::Decryptor<Aes256Dec>>();
        wipes_on_drop::<IgeScratch>();
    }

    #[test]
    fn ige_leaves_no_plaintext_in_its_scratch() {
        let key = [7u8; 32];
        let iv: [u8; 32] = core::array::from_fn(|i| i as u8);
        let plaintext: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) | 1).collect();
        let mut buf = plaintext.clone();
        let mut scratch = IgeScratch::default();
        ige_encrypt_in(&Aes256Enc::new(&key.into()), &iv, &mut buf, &mut scratch).unwrap();
        assert_eq!(scratch.prev_c, [0; 16]);
        assert_eq!(scratch.prev_p, [0; 16]);
        assert_eq!(scratch.held, [0; 16]);
        assert_eq!(scratch.block, [0; 16]);
        let mut expected = plaintext.clone();
        aes256_ige_encrypt(&key, &iv, &mut expected).unwrap();
        assert_eq!(buf, expected);

        ige_decrypt_in(&Aes256Dec::new(&key.into()), &iv, &mut buf, &mut scratch).unwrap();
        assert_eq!(buf, plaintext);
        assert_eq!(scratch.prev_c, [0; 16]);
        assert_eq!(scratch.prev_p, [0; 16]);
        assert_eq!(scratch.held, [0; 16]);
        assert_eq!(scratch.block, [0; 16]);
    }

    #[test]
    fn x25519_shared_secret_wipes_itself() {
        fn wipes_on_drop<T: ZeroizeOnDrop>(_: &T) {}
        let shared = x25519(&[1; 32], &[9; 32]).unwrap();
        wipes_on_drop(&shared);
        assert_eq!(x25519(&[1; 32], &[0; 32]), Err(Error::LowOrderPoint));
    }

    #[test]
    fn empty_buffer_is_fine() {
        let mut buf: [u8; 0] = [];
        aes256_ige_encrypt(&[1; 32], &[2; 32], &mut buf).unwrap();
        aes256_cbc_encrypt(&[1; 32], &[2; 16], &mut buf).unwrap();
    }
}
