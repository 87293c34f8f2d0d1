//! Finite-field Diffie-Hellman on MTProto's 2048-bit safe prime, with every check MTProto
//! requires of a received group and public value (MTProto "Creating an Authorization Key",
//! step 7, and "Security Guidelines", "g_a and g_b validation").
//!
//! Secret exponents go through this crate's constant-time Montgomery exponentiation
//! (`montgomery.rs`: fixed 4-bit windows, constant-time table selection), whose running time
//! depends only on the exponent's *bit length*, a public parameter. A group can carry a table of
//! its generator's powers ([`DhGroup::with_generator_table`]) that makes `g^a` about four times
//! cheaper, for a server that draws a key per handshake. See `docs/crypto.md` for the exponent
//! size.

use core::fmt;
use std::sync::Arc;

use num_bigint_dig::BigUint;
use num_traits::One;
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::montgomery::{self, FixedBaseTable, Limbs, Modulus, FIXED_BASE_BITS};
use crate::{AuthKey, Error, Result};

/// MTProto's current 2048-bit safe prime (big-endian), used with g = 3.
pub const MTPROTO_DH_PRIME: [u8; 256] = decode_hex(
    "c71caeb9c6b1c9048e6c522f70f13f73980d40238e3e21c14934d037563d930f48198a0aa7c14058229493d22530f4dbfa336f6e0ac925139543aed44cce7c3720fd51f69458705ac68cd4fe6b6b13abdc9746512969328454f18faf8c595f642477fe96bb2a941d5bcd1d4ac8cc49880708fa9b378e3c4f3a9060bee67cf9a4a4a695811051907e162753b56b0f6b410dba74d8a84b2a14b3144e0ef1284754fd17ed950d5965b4b9dd46582db1178d169c6bc465b0d6ff9ca3928fef5b9ae4e418fc15e83ebea0f87fa9ff5eed70050ded2849f47bf959d956850ce929851f0d8115f635b105ee2e4e15d04b2454bf6f4fadf034b10403119cd8e3b92fcc5b",
);

/// Bit length of freshly generated secret exponents.
///
/// RFC 7919 §5.2 and NIST SP 800-56A rev. 3 §5.6.1.1.1 allow, for safe-prime groups, a private
/// exponent of at least twice the group's security strength (2048-bit group: 112 bits, so ≥ 224).
/// 256 bits keeps a margin and costs about an eighth of a full 2048-bit exponent.
pub const EXPONENT_BITS: usize = 256;

#[allow(clippy::indexing_slicing, clippy::panic)] // const context: a bad index or digit fails the build
const fn decode_hex<const N: usize>(s: &str) -> [u8; N] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("bad hex digit"),
        }
    }
    let b = s.as_bytes();
    assert!(b.len() == 2 * N, "hex length");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// `bytes` (at most 256 of them, checked by the callers) right-aligned in 256 bytes.
fn left_pad(bytes: &[u8]) -> [u8; 256] {
    let mut buf = [0u8; 256];
    let start = 256usize.saturating_sub(bytes.len());
    for (dst, src) in buf.iter_mut().skip(start).zip(bytes) {
        *dst = *src;
    }
    buf
}

/// A secret DH exponent. Zeroized on drop, never printed; boxed, so that moving it moves a
/// pointer and leaves no copy of the exponent behind.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DhSecret {
    exp: Box<Limbs>,
    #[zeroize(skip)]
    bits: usize,
}

impl DhSecret {
    /// `bytes` (256, big-endian) as a boxed exponent, read from the slice rather than copied by value.
    fn boxed(bytes: &[u8; 256]) -> Box<Limbs> {
        let mut exp = Box::new([0u64; montgomery::LIMBS]);
        *exp = montgomery::from_be_bytes(bytes);
        exp
    }

    /// A fresh [`EXPONENT_BITS`]-bit exponent from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut wiped = zeroize::Zeroizing::new([0u8; 256]);
        let bytes: &mut [u8; 256] = &mut wiped;
        rng.fill_bytes(&mut bytes[256 - EXPONENT_BITS / 8..]);
        // Fix the top bit so every exponent has the same length: 2^255 <= a < 2^256.
        bytes[256 - EXPONENT_BITS / 8] |= 0x80;
        Self {
            exp: Self::boxed(bytes),
            bits: EXPONENT_BITS,
        }
    }

    /// An exponent from big-endian bytes (1 to 256), e.g. MTProto's 2048-bit `b` from a recorded
    /// transcript. The running time depends on `bytes.len()`, not on the value.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] for an empty or longer-than-256-byte input.
    pub fn from_be_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() || bytes.len() > 256 {
            return Err(Error::InvalidLength {
                what: "DH exponent",
                got: bytes.len(),
                expected: 256,
            });
        }
        let buf = zeroize::Zeroizing::new(left_pad(bytes));
        Ok(Self {
            exp: Self::boxed(&buf),
            bits: bytes.len() * 8,
        })
    }
}

impl DhSecret {
    /// The exponent as big-endian bytes of its original length, for persisting a pending
    /// handshake.
    ///
    /// # Security
    /// Whoever has these bytes can compute the shared key.
    pub fn to_be_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let all = zeroize::Zeroizing::new(montgomery::to_be_bytes(&self.exp));
        zeroize::Zeroizing::new(all.get(256 - self.bits / 8..).unwrap_or_default().to_vec())
    }
}

impl fmt::Debug for DhSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DhSecret({} bits, <redacted>)", self.bits)
    }
}

/// A checked public DH value (`g_a` or `g_b`): 256 big-endian bytes inside the safe range.
#[derive(Clone, PartialEq, Eq)]
pub struct DhPublic(Box<[u8; 256]>);

impl DhPublic {
    /// The 256 big-endian bytes.
    pub fn as_bytes(&self) -> &[u8; 256] {
        &self.0
    }
}

impl fmt::Debug for DhPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DhPublic({}…)",
            crate::types::hex(self.0.get(..8).unwrap_or_default())
        )
    }
}

/// A checked DH group: a 2048-bit safe prime `p` and a generator `g` that generates the
/// subgroup of quadratic residues.
#[derive(Clone)]
pub struct DhGroup {
    g: u32,
    p_bytes: Box<[u8; 256]>,
    modulus: Box<Modulus>,
    /// `p - 2^(2048-64)`, big-endian: public values must lie strictly below it (and strictly
    /// above 2^(2048-64), the margin the security guidelines demand from both ends of the range).
    upper: Box<[u8; 256]>,
    /// Powers of `g` for fresh exponents, when the group was built with them.
    generator: Option<Arc<FixedBaseTable>>,
}

/// 2^(2048-64), big-endian: 1 followed by 1984 zero bits.
const MARGIN: [u8; 256] = {
    let mut m = [0u8; 256];
    m[7] = 1;
    m
};

impl fmt::Debug for DhGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DhGroup(g={}, p={}…)",
            self.g,
            crate::types::hex(self.p_bytes.get(..8).unwrap_or_default())
        )
    }
}

fn g_is_quadratic_residue(g: u32, p: &BigUint) -> Result<()> {
    let m = |k: u32| num_traits::ToPrimitive::to_u32(&(p % BigUint::from(k))).unwrap_or(u32::MAX);
    let ok = match g {
        2 => m(8) == 7,
        3 => m(3) == 2,
        4 => true,
        5 => matches!(m(5), 1 | 4),
        6 => matches!(m(24), 19 | 23),
        7 => matches!(m(7), 3 | 5 | 6),
        _ => {
            return Err(Error::BadDh {
                check: "g must be 2..=7",
            })
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Error::BadDh {
            check: "g is not a quadratic residue mod p",
        })
    }
}

impl DhGroup {
    /// MTProto's group: [`MTPROTO_DH_PRIME`] with g = 3 (checked once by this crate's tests).
    pub fn mtproto() -> Self {
        Self::unchecked(3, MTPROTO_DH_PRIME)
    }

    fn unchecked(g: u32, p_bytes: [u8; 256]) -> Self {
        // p > 2^2047 > 2^1984, so the subtraction cannot go below zero.
        let upper = BigUint::from_bytes_be(&p_bytes) - BigUint::from_bytes_be(&MARGIN);
        Self {
            g,
            p_bytes: Box::new(p_bytes),
            modulus: Box::new(Modulus::new(&montgomery::from_be_bytes(&p_bytes))),
            upper: Box::new(left_pad(&upper.to_bytes_be())),
            generator: None,
        }
    }

    /// This group with a table of its generator's powers (256 KiB, built once here in about as
    /// long as three exponentiations), so that [`generate`](Self::generate) and
    /// [`public_value`](Self::public_value) cost about 64 multiplications instead of about 320.
    /// Clones share the table. Worth it for a server, which draws a secret per handshake; a client
    /// that runs one handshake should not build it.
    #[must_use]
    pub fn with_generator_table(mut self) -> Self {
        let g = self
            .modulus
            .enter_montgomery(&montgomery::from_be_bytes(&left_pad(&self.g.to_be_bytes())));
        self.generator = Some(Arc::new(FixedBaseTable::new(&self.modulus, &g)));
        self
    }

    /// Checks a group received from a peer: `2^2047 < p < 2^2048`, `p` and `(p-1)/2` prime
    /// (Miller-Rabin, 20 rounds each; the known MTProto prime is recognised without the test),
    /// and `g` a quadratic residue as MTProto's table requires.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] unless `p` is 256 bytes; [`Error::BadDh`] naming the failed check.
    pub fn from_received(g: u32, p: &[u8]) -> Result<Self> {
        let p_bytes: [u8; 256] = crate::types::array_from_slice("dh_prime", p)?;
        if p_bytes[0] & 0x80 == 0 {
            return Err(Error::BadDh {
                check: "p must be a 2048-bit number",
            });
        }
        let big = BigUint::from_bytes_be(&p_bytes);
        g_is_quadratic_residue(g, &big)?;
        if p_bytes != MTPROTO_DH_PRIME {
            if !num_bigint_dig::prime::probably_prime(&big, 20) {
                return Err(Error::BadDh {
                    check: "p is not prime",
                });
            }
            let half = (&big - BigUint::one()) >> 1usize;
            if !num_bigint_dig::prime::probably_prime(&half, 20) {
                return Err(Error::BadDh {
                    check: "p is not a safe prime",
                });
            }
        }
        Ok(Self::unchecked(g, p_bytes))
    }

    /// The generator.
    pub fn g(&self) -> u32 {
        self.g
    }

    /// The prime, 256 big-endian bytes.
    pub fn prime(&self) -> &[u8; 256] {
        &self.p_bytes
    }

    /// Checks a received public value: `1 < x < p-1` and `2^(2048-64) < x < p - 2^(2048-64)`.
    ///
    /// # Errors
    /// [`Error::InvalidLength`] for a value longer than 256 bytes; [`Error::BadDh`] when out of
    /// range.
    pub fn check_public(&self, value: &[u8]) -> Result<DhPublic> {
        if value.len() > 256 {
            return Err(Error::InvalidLength {
                what: "DH public value",
                got: value.len(),
                expected: 256,
            });
        }
        let bytes = left_pad(value);
        // Big-endian arrays of one length compare as the numbers they hold. The margin check
        // implies 1 < x < p-1.
        if bytes <= MARGIN || bytes >= *self.upper {
            return Err(Error::BadDh {
                check: "public value out of the safe range",
            });
        }
        Ok(DhPublic(Box::new(bytes)))
    }

    /// `base^secret mod p` for `base < p`.
    fn pow(&self, base: &Limbs, secret: &DhSecret) -> Limbs {
        let m = &self.modulus;
        // The result (in Montgomery form) is the shared secret in `agree`: wipe it.
        let mut power = m.pow(&m.enter_montgomery(base), &secret.exp, secret.bits);
        let out = m.leave_montgomery(&power);
        power.zeroize();
        out
    }

    /// `g^secret mod p`, checked like a received value.
    ///
    /// # Errors
    /// [`Error::BadDh`] in the negligible case that the result falls outside the safe range;
    /// draw a new secret then.
    pub fn public_value(&self, secret: &DhSecret) -> Result<DhPublic> {
        let m = &self.modulus;
        let y = match &self.generator {
            Some(table) if secret.bits <= FIXED_BASE_BITS => m.leave_montgomery(&table.pow(m, &secret.exp)),
            _ => self.pow(
                &montgomery::from_be_bytes(&left_pad(&self.g.to_be_bytes())),
                secret,
            ),
        };
        self.check_public(&montgomery::to_be_bytes(&y))
    }

    /// A fresh secret and its public value, redrawing in the (negligible) out-of-range case.
    ///
    /// # Errors
    /// [`Error::BadDh`] if 8 draws in a row were out of range, which means a broken RNG.
    pub fn generate(&self, rng: &mut (impl RngCore + CryptoRng)) -> Result<(DhSecret, DhPublic)> {
        let mut last = Error::BadDh { check: "no draw" };
        for _ in 0..8 {
            let secret = DhSecret::generate(rng);
            match self.public_value(&secret) {
                Ok(public) => return Ok((secret, public)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The shared key `peer^secret mod p`, 256 big-endian bytes, as an [`AuthKey`].
    pub fn agree(&self, secret: &DhSecret, peer: &DhPublic) -> AuthKey {
        let mut y = self.pow(&montgomery::from_be_bytes(&peer.0), secret);
        let key = AuthKey::from_bytes(montgomery::to_be_bytes(&y));
        y.zeroize();
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtproto_prime_passes_every_check() {
        // Force the full primality path by checking the known prime as if it were unknown.
        let big = BigUint::from_bytes_be(&MTPROTO_DH_PRIME);
        assert!(num_bigint_dig::prime::probably_prime(&big, 20));
        assert!(num_bigint_dig::prime::probably_prime(
            &((&big - BigUint::one()) >> 1usize),
            20
        ));
        g_is_quadratic_residue(3, &big).unwrap();
        assert!(DhGroup::from_received(3, &MTPROTO_DH_PRIME).is_ok());
        // g = 2 needs p mod 8 = 7, which this prime does not satisfy.
        assert!(DhGroup::from_received(2, &MTPROTO_DH_PRIME).is_err());
    }

    #[test]
    fn received_groups_are_checked() {
        let mut not_prime = MTPROTO_DH_PRIME;
        not_prime[255] ^= 2; // still odd, almost surely composite
        assert_eq!(
            DhGroup::from_received(4, &not_prime).unwrap_err(),
            Error::BadDh {
                check: "p is not prime"
            }
        );
        let mut short = MTPROTO_DH_PRIME;
        short[0] = 0x7f;
        assert!(DhGroup::from_received(4, &short).is_err());
        assert!(DhGroup::from_received(3, &MTPROTO_DH_PRIME[1..]).is_err());
        assert!(DhGroup::from_received(9, &MTPROTO_DH_PRIME).is_err());
    }

    #[test]
    fn range_checks_on_public_values() {
        let g = DhGroup::mtproto();
        assert!(g.check_public(&[1]).is_err());
        assert!(g.check_public(&[0; 256]).is_err());
        assert!(g.check_public(&MTPROTO_DH_PRIME).is_err());
        let mut margin = [0u8; 256];
        margin[7] = 1;
        assert!(g.check_public(&margin).is_err()); // exactly 2^1984: strict bound
        margin[255] = 1;
        assert!(g.check_public(&margin).is_ok());
        assert!(g.check_public(&[0u8; 257]).is_err());
    }

    #[test]
    fn both_sides_agree() {
        let g = DhGroup::mtproto();
        let (a, ga) = g.generate(&mut rand_core::OsRng).unwrap();
        let (b, gb) = g.generate(&mut rand_core::OsRng).unwrap();
        assert_eq!(g.agree(&a, &gb), g.agree(&b, &ga));
        assert!(format!("{a:?}").contains("redacted"));
    }

    /// The exponent lives in one heap allocation that is wiped on drop; the struct that moves is
    /// a pointer and a bit length.
    #[test]
    fn secret_is_boxed_and_wipes_itself() {
        fn wipes_on_drop<T: ZeroizeOnDrop>() {}
        wipes_on_drop::<DhSecret>();
        assert_eq!(
            core::mem::size_of::<DhSecret>(),
            2 * core::mem::size_of::<usize>()
        );
        let s = DhSecret::from_be_bytes(&[1, 2, 3]).unwrap();
        assert_eq!(&s.to_be_bytes()[..], &[1, 2, 3]);
        assert_eq!(s.exp[0], 0x01_02_03);
    }
}
