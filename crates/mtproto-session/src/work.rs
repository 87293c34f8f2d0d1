//! The handshake's adjustable proof of work: a hashcash over the handshake's nonces.
//!
//! MTProto's `pq` factoring costs a fixed few milliseconds and cannot be made harder. Before the
//! server spends its Diffie-Hellman work (two 2048-bit exponentiations) on a handshake it asks
//! for `pow_bits` leading zero bits of
//!
//! ```text
//! SHA-256("mtproto-relay/pow/v1" ‖ nonce (16) ‖ server_nonce (16) ‖ pow_nonce (8))
//! ```
//!
//! where the client picks `pow_nonce`. Expected client cost: `2^pow_bits` hashes; the server's
//! check is one hash. The server raises `pow_bits` under load (see the relay's configuration).
//!
//! ```
//! use mtproto_session::work::{check, solve};
//! let (nonce, server_nonce) = ([1u8; 16], [2u8; 16]);
//! let found = solve(&nonce, &server_nonce, 8)?;
//! assert!(check(&nonce, &server_nonce, 8, &found));
//! # Ok::<(), mtproto_session::Error>(())
//! ```

use sha2::{Digest, Sha256};

use crate::{HandshakeError, Result};

/// The domain-separation label hashed first.
pub const LABEL: &[u8] = b"mtproto-relay/pow/v1";

/// The most work a client agrees to do (about 2^24 hashes, a few seconds on a phone). A server
/// asking for more is refused rather than solved forever.
pub const MAX_CLIENT_BITS: u8 = 24;

/// Leading zero bits of the work digest for this `pow_nonce`.
pub fn zero_bits(nonce: &[u8; 16], server_nonce: &[u8; 16], pow_nonce: &[u8; 8]) -> u32 {
    let digest = Sha256::new()
        .chain_update(LABEL)
        .chain_update(nonce)
        .chain_update(server_nonce)
        .chain_update(pow_nonce)
        .finalize();
    leading_zero_bits(&digest)
}

fn leading_zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for byte in digest {
        if *byte == 0 {
            bits += 8;
        } else {
            bits += byte.leading_zeros();
            break;
        }
    }
    bits
}

/// Whether `pow_nonce` carries at least `bits` of work for this handshake.
pub fn check(nonce: &[u8; 16], server_nonce: &[u8; 16], bits: u8, pow_nonce: &[u8; 8]) -> bool {
    bits == 0 || zero_bits(nonce, server_nonce, pow_nonce) >= u32::from(bits)
}

/// Finds a `pow_nonce` with `bits` of work (counting up from zero, big-endian).
///
/// # Errors
/// [`HandshakeError::WorkTooHard`] when `bits` is over [`MAX_CLIENT_BITS`].
pub fn solve(nonce: &[u8; 16], server_nonce: &[u8; 16], bits: u8) -> Result<[u8; 8], HandshakeError> {
    if bits > MAX_CLIENT_BITS {
        return Err(HandshakeError::WorkTooHard {
            bits,
            max: MAX_CLIENT_BITS,
        });
    }
    // The prefix's hash state is computed once; each try hashes only the last 8 bytes.
    let prefix = Sha256::new()
        .chain_update(LABEL)
        .chain_update(nonce)
        .chain_update(server_nonce);
    // Expected 2^bits tries; 2^(bits+8) fail with probability e^-256.
    let tries = 1u64 << (u32::from(bits) + 8);
    for counter in 0..tries {
        let candidate = counter.to_be_bytes();
        let digest = prefix.clone().chain_update(candidate).finalize();
        if leading_zero_bits(&digest) >= u32::from(bits) {
            return Ok(candidate);
        }
    }
    Err(HandshakeError::BadProofOfWork)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solutions_check_and_others_do_not() {
        let (n, s) = ([7u8; 16], [9u8; 16]);
        for bits in [0, 1, 4, 12] {
            let found = solve(&n, &s, bits).unwrap();
            assert!(check(&n, &s, bits, &found));
            assert!(zero_bits(&n, &s, &found) >= u32::from(bits));
        }
        let found = solve(&n, &s, 12).unwrap();
        // Bound to this handshake: the same nonce is (almost surely) no work for another one.
        assert!(!check(&[8u8; 16], &s, 12, &found) || !check(&n, &[8u8; 16], 12, &found));
        // Not enough bits is refused.
        let weak = (0u64..)
            .map(u64::to_be_bytes)
            .find(|c| zero_bits(&n, &s, c) == 0)
            .unwrap();
        assert!(!check(&n, &s, 1, &weak));
        assert!(check(&n, &s, 0, &weak));
        assert!(matches!(
            solve(&n, &s, MAX_CLIENT_BITS + 1),
            Err(HandshakeError::WorkTooHard { .. })
        ));
    }

    #[test]
    fn zero_bits_counts_across_bytes() {
        // A known answer computed independently: sha256("mtproto-relay/pow/v1" ‖ 0^16 ‖ 0^16 ‖ 0^8).
        let d = Sha256::new()
            .chain_update(LABEL)
            .chain_update([0u8; 40])
            .finalize();
        let expected = d
            .iter()
            .map(|b| b.leading_zeros())
            .take_while(|z| *z == 8)
            .count() as u32
            * 8
            + d.iter().find(|b| **b != 0).map_or(0, |b| b.leading_zeros());
        assert_eq!(zero_bits(&[0; 16], &[0; 16], &[0; 8]), expected);
    }
}
