//! Constant-time Montgomery arithmetic modulo a 2048-bit odd number, and the fixed-window
//! exponentiations that [`crate::DhGroup`] runs on secret exponents.
//!
//! Numbers are 32 little-endian 64-bit limbs. Every function here runs the same instructions and
//! touches the same memory whatever the values: loops have fixed trip counts, the final
//! subtraction of a Montgomery product is a masked select, and a table entry is chosen by reading
//! every entry and keeping one with `subtle`'s constant-time select. Only the exponent's bit
//! length (public: 256 for fresh exponents) shapes the work.
//!
//! Multiplication and squaring are product scanning with the reduction interleaved ("finely
//! integrated product scanning", Koç, Acar and Kaliski, "Analyzing and Comparing Montgomery
//! Multiplication Algorithms", IEEE Micro 1996, §FIPS): column `k` of the result sums every
//! `a[i]·b[k-i]` and `m[j]·p[k-j]` into a three-limb accumulator, so each product costs one
//! multiplication and three additions with carry, and no limb is stored and reloaded between
//! products. Squaring sums each cross product once and doubles the column (HAC 14.16). The column
//! code is written out product by product by `build.rs`: as loops, the 64 columns' 1 to 32
//! products each ended in a loop exit the branch predictor missed, about a third of the time of a
//! squaring (docs/benchmarks.md, "DH in straight-line code").
#![allow(clippy::indexing_slicing)] // fixed-size arrays indexed by counters bounded by their length

use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroize;

/// Limbs in a 2048-bit number.
pub(crate) const LIMBS: usize = 32;

/// A 2048-bit number, least significant limb first.
pub(crate) type Limbs = [u64; LIMBS];

/// Window width of the exponentiations, in bits.
const WINDOW: usize = 4;
/// Entries in one window's table.
const TABLE: usize = 1 << WINDOW;

/// `a + b + carry` as (sum, carry out); `u64::carrying_add` of Rust 1.91, for our 1.89.
#[inline(always)]
fn carrying_add(a: u64, b: u64, carry: bool) -> (u64, bool) {
    let (s, c1) = a.overflowing_add(b);
    let (s, c2) = s.overflowing_add(u64::from(carry));
    (s, c1 | c2)
}

/// `a - b - borrow` as (difference, borrow out: 0 or 1).
#[inline(always)]
fn sbb(a: u64, b: u64, borrow: u64) -> (u64, u64) {
    let t = u128::from(a).wrapping_sub(u128::from(b) + u128::from(borrow));
    (t as u64, ((t >> 64) as u64) & 1)
}

/// Big-endian bytes as limbs.
pub(crate) fn from_be_bytes(bytes: &[u8; 256]) -> Limbs {
    let mut out = [0u64; LIMBS];
    for (limb, chunk) in out.iter_mut().zip(bytes.as_chunks::<8>().0.iter().rev()) {
        *limb = u64::from_be_bytes(*chunk);
    }
    out
}

/// Limbs as big-endian bytes.
pub(crate) fn to_be_bytes(x: &Limbs) -> [u8; 256] {
    let mut out = [0u8; 256];
    for (chunk, limb) in out.as_chunks_mut::<8>().0.iter_mut().rev().zip(x) {
        *chunk = limb.to_be_bytes();
    }
    out
}

/// An odd 2048-bit modulus `p` with `2^2047 < p`, and the constants of Montgomery arithmetic
/// with `R = 2^2048`.
#[derive(Clone)]
pub(crate) struct Modulus {
    p: Limbs,
    /// `-p^-1 mod 2^64`.
    p_inv: u64,
    /// `R mod p`: one in Montgomery form.
    one: Limbs,
    /// `R^2 mod p`, to bring numbers into Montgomery form.
    r2: Limbs,
}

impl Modulus {
    /// `p` must be odd with its top bit set (every DH prime the crate accepts is).
    pub(crate) fn new(p: &Limbs) -> Self {
        // Newton's iteration for p^-1 mod 2^64: p·p = 1 mod 8 gives 3 bits, each step doubles.
        let mut inv = p[0];
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(p[0].wrapping_mul(inv)));
        }
        // R - p < p because p > 2^2047, so R mod p = R - p = (-p) mod R.
        let mut one = [0u64; LIMBS];
        let mut borrow = 0;
        for (o, &pi) in one.iter_mut().zip(p) {
            (*o, borrow) = sbb(0, pi, borrow);
        }
        let mut m = Self {
            p: *p,
            p_inv: inv.wrapping_neg(),
            one,
            r2: [0; LIMBS],
        };
        // 2^64·R mod p by doubling, then five Montgomery squarings: 2^64 → 2^2048, i.e. R·R.
        let mut x = one;
        for _ in 0..64 {
            x = m.double(&x);
        }
        for _ in 0..5 {
            x = m.square(&x);
        }
        m.r2 = x;
        m
    }

    /// `2x mod p` for `x < p`.
    fn double(&self, x: &Limbs) -> Limbs {
        let mut y = [0u64; LIMBS];
        let mut carry = 0;
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi = (xi << 1) | carry;
            carry = xi >> 63;
        }
        self.reduce_once(&y, carry)
    }

    /// `t + 2^2048·top - p` if that is not negative, else `t + 2^2048·top`, in constant time
    /// (`t + 2^2048·top < 2p`).
    #[inline(always)]
    fn reduce_once(&self, t: &Limbs, top: u64) -> Limbs {
        let mut d = [0u64; LIMBS];
        let mut borrow = 0;
        for i in 0..LIMBS {
            (d[i], borrow) = sbb(t[i], self.p[i], borrow);
        }
        // Keep t only when the subtraction went below zero: borrow out of the limbs not covered
        // by the top word.
        let (_, keep_t) = sbb(top, 0, borrow);
        let keep_t = Choice::from(keep_t as u8);
        for i in 0..LIMBS {
            d[i].conditional_assign(&t[i], keep_t);
        }
        d
    }

    /// Montgomery product `a·b·R^-1 mod p` for `a, b < p`; the result is `< p`.
    pub(crate) fn mul(&self, a: &Limbs, b: &Limbs) -> Limbs {
        let mut m = [0u64; LIMBS];
        let mut r = [0u64; LIMBS];
        let top = mul_columns(a, b, &self.p, self.p_inv, &mut m, &mut r);
        let out = self.reduce_once(&r, top);
        m.zeroize();
        r.zeroize();
        out
    }

    /// `a·a·R^-1 mod p` for `a < p`; the result is `< p`.
    pub(crate) fn square(&self, a: &Limbs) -> Limbs {
        let mut m = [0u64; LIMBS];
        let mut r = [0u64; LIMBS];
        let top = square_columns(a, &self.p, self.p_inv, &mut m, &mut r);
        let out = self.reduce_once(&r, top);
        m.zeroize();
        r.zeroize();
        out
    }

    /// `x·R mod p` for `x < p`.
    pub(crate) fn enter_montgomery(&self, x: &Limbs) -> Limbs {
        self.mul(x, &self.r2)
    }

    /// `x·R^-1 mod p`: out of Montgomery form.
    pub(crate) fn leave_montgomery(&self, x: &Limbs) -> Limbs {
        let mut one = [0u64; LIMBS];
        one[0] = 1;
        self.mul(x, &one)
    }

    /// `base^exp` in Montgomery form (`base` in Montgomery form), reading the low `bits` bits of
    /// `exp` (`bits` ≤ 2048) with fixed 4-bit windows: the top window's table entry starts the
    /// product, and each further window costs four squarings and one multiplication by a table
    /// entry chosen in constant time, whatever the window's value.
    pub(crate) fn pow(&self, base: &Limbs, exp: &Limbs, bits: usize) -> Limbs {
        let Some(top) = bits.div_ceil(WINDOW).checked_sub(1) else {
            return self.one;
        };
        let mut table = [self.one; TABLE];
        table[1] = *base;
        for i in 2..TABLE {
            table[i] = if i % 2 == 0 {
                self.square(&table[i / 2])
            } else {
                self.mul(&table[i - 1], base)
            };
        }
        // No squarings of one, no multiplication by it.
        let mut acc = [0u64; LIMBS];
        select(&mut acc, &table, window(exp, top));
        let mut entry = [0u64; LIMBS];
        for w in (0..top).rev() {
            for _ in 0..WINDOW {
                acc = self.square(&acc);
            }
            select(&mut entry, &table, window(exp, w));
            acc = self.mul(&acc, &entry);
        }
        entry.zeroize();
        // The table holds public powers of a public base; nothing to wipe there.
        acc
    }
}

/// The running sum of one column of a product: `lo + hi·2^64 + top·2^128`. A column of 2048-bit
/// operands adds at most 64 products below 2^128 (column 31: 32 of the operands, 32 of the
/// reduction; a square's 16 cross products count twice) and a carry below 2^71, so `top` stays
/// below 2^7.
#[derive(Default, Clone, Copy)]
struct Column {
    lo: u64,
    hi: u64,
    top: u64,
}

impl Column {
    /// Adds `a·b`.
    #[inline(always)]
    fn add_product(&mut self, a: u64, b: u64) {
        let p = u128::from(a) * u128::from(b);
        let (lo, c) = self.lo.overflowing_add(p as u64);
        let (hi, c) = carrying_add(self.hi, (p >> 64) as u64, c);
        self.lo = lo;
        self.hi = hi;
        self.top += u64::from(c);
    }

    /// The lowest limb of the sum.
    #[inline(always)]
    fn low(&self) -> u64 {
        self.lo
    }

    /// Doubles the sum (the cross products of a square).
    #[inline(always)]
    fn double(&mut self) {
        self.top = (self.top << 1) | (self.hi >> 63);
        self.hi = (self.hi << 1) | (self.lo >> 63);
        self.lo <<= 1;
    }

    /// Adds another column's sum.
    #[inline(always)]
    fn add(&mut self, other: &Column) {
        let (lo, c) = self.lo.overflowing_add(other.lo);
        let (hi, c) = carrying_add(self.hi, other.hi, c);
        self.lo = lo;
        self.hi = hi;
        self.top += other.top + u64::from(c);
    }

    /// Moves the sum one limb down, dropping the lowest (written out or reduced to zero).
    #[inline(always)]
    fn shift(&mut self) {
        self.lo = self.hi;
        self.hi = self.top;
        self.top = 0;
    }
}

// `square_columns` and `mul_columns`, written by build.rs.
include!(concat!(env!("OUT_DIR"), "/montgomery_columns.rs"));

/// Exponent window `w`: bits `4w .. 4w+4` of `exp` (0 past the end).
#[inline(always)]
fn window(exp: &Limbs, w: usize) -> u8 {
    let bit = w * WINDOW;
    let limb = exp.get(bit / 64).copied().unwrap_or(0);
    ((limb >> (bit % 64)) & (TABLE as u64 - 1)) as u8
}

/// `out = table[index]`, reading every entry.
#[inline(always)]
fn select(out: &mut Limbs, table: &[Limbs; TABLE], index: u8) {
    *out = [0; LIMBS];
    for (i, entry) in table.iter().enumerate() {
        let hit = (i as u8).ct_eq(&index);
        for (o, &e) in out.iter_mut().zip(entry) {
            o.conditional_assign(&e, hit);
        }
    }
}

/// Powers of a fixed base for exponents of up to `64·WINDOW` = 256 bits:
/// `rows[i][j] = g^(j·16^i)` in Montgomery form, 64 rows of 16 (256 KiB). `g^e` is then the
/// product of one entry per row (63 multiplications, no squaring), against about 250 squarings and
/// 64 multiplications for [`Modulus::pow`].
pub(crate) struct FixedBaseTable {
    rows: Vec<[Limbs; TABLE]>,
}

/// Exponent bits a [`FixedBaseTable`] covers.
pub(crate) const FIXED_BASE_BITS: usize = 256;

impl FixedBaseTable {
    /// The table for `g` (in Montgomery form): about 64·(4 squarings + 14 multiplications).
    pub(crate) fn new(m: &Modulus, g: &Limbs) -> Self {
        let mut rows = Vec::with_capacity(FIXED_BASE_BITS / WINDOW);
        let mut unit = *g; // g^(16^i)
        for _ in 0..FIXED_BASE_BITS / WINDOW {
            let mut row = [m.one; TABLE];
            row[1] = unit;
            for j in 2..TABLE {
                row[j] = m.mul(&row[j - 1], &unit);
            }
            for _ in 0..WINDOW {
                unit = m.square(&unit);
            }
            rows.push(row);
        }
        Self { rows }
    }

    /// `g^exp` in Montgomery form, for `exp < 2^256` (higher limbs are not read): one
    /// constant-time selection per row and a multiplication, whatever the exponent.
    pub(crate) fn pow(&self, m: &Modulus, exp: &Limbs) -> Limbs {
        // Row 0's entry starts the product (no multiplication by one).
        let mut acc = m.one;
        let mut entry = [0u64; LIMBS];
        let mut rows = self.rows.iter().enumerate();
        if let Some((w, row)) = rows.next() {
            select(&mut acc, row, window(exp, w));
        }
        for (w, row) in rows {
            select(&mut entry, row, window(exp, w));
            acc = m.mul(&acc, &entry);
        }
        entry.zeroize();
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_bigint_dig::BigUint;

    fn big(x: &Limbs) -> BigUint {
        BigUint::from_bytes_be(&to_be_bytes(x))
    }

    fn limbs(x: &BigUint) -> Limbs {
        let b = x.to_bytes_be();
        let mut buf = [0u8; 256];
        buf[256 - b.len()..].copy_from_slice(&b);
        from_be_bytes(&buf)
    }

    fn random_below(p: &BigUint, seed: u64) -> BigUint {
        // A fixed xorshift stream: reproducible, and enough to cover carries in every limb.
        let mut s = seed | 1;
        let mut bytes = [0u8; 256];
        for b in bytes.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *b = s as u8;
        }
        BigUint::from_bytes_be(&bytes) % p
    }

    /// RFC 7919's ffdhe2048 prime: 64 one bits at each end, so `p_inv` = 1 and the reduction's
    /// column sums are as large as a 2048-bit modulus makes them. The generated columns do not
    /// depend on the modulus; `DhGroup::from_received` accepts this group (g = 2).
    const FFDHE2048: &str = "FFFFFFFFFFFFFFFFADF85458A2BB4A9AAFDC5620273D3CF1D8B9C583CE2D3695A9E13641146433FBCC939DCE249B3EF97D2FE363630C75D8F681B202AEC4617AD3DF1ED5D5FD65612433F51F5F066ED0856365553DED1AF3B557135E7F57C935984F0C70E0E68B77E2A689DAF3EFE8721DF158A136ADE73530ACCA4F483A797ABC0AB182B324FB61D108A94BB2C8E3FBB96ADAB760D7F4681D4F42A3DE394DF4AE56EDE76372BB190B07A7C8EE0A6D709E02FCE1CDF7E2ECC03404CD28342F619172FE9CE98583FF8E4F1232EEF28183C3FE3B1B4C6FAD733BB5FCBC2EC22005C58EF1837D1683B2C6F34A26C1B2EFFA886B423861285C97FFFFFFFFFFFFFFFF";

    fn r_inv(p: &BigUint) -> BigUint {
        let r = BigUint::from(1u8) << 2048usize;
        r.modpow(&(p - BigUint::from(2u8)), p)
    }

    #[test]
    fn a_modulus_with_all_ones_limbs() {
        let p_big = BigUint::parse_bytes(FFDHE2048.as_bytes(), 16).unwrap();
        let m = Modulus::new(&limbs(&p_big));
        assert_eq!(m.p_inv, 1);
        let r_inv = r_inv(&p_big);
        let top = &p_big - BigUint::from(1u8);
        for seed in 1..20u64 {
            let a = if seed == 1 {
                top.clone()
            } else {
                random_below(&p_big, seed)
            };
            let b = if seed == 2 {
                top.clone()
            } else {
                random_below(&p_big, seed * 31)
            };
            let (la, lb) = (limbs(&a), limbs(&b));
            assert_eq!(big(&m.mul(&la, &lb)), (&a * &b * &r_inv) % &p_big, "mul {seed}");
            assert_eq!(big(&m.square(&la)), (&a * &a * &r_inv) % &p_big, "square {seed}");
        }
        let e = random_below(&p_big, 77) % (BigUint::from(1u8) << 256usize);
        let base = random_below(&p_big, 78);
        let got = m.leave_montgomery(&m.pow(&m.enter_montgomery(&limbs(&base)), &limbs(&e), 256));
        assert_eq!(big(&got), base.modpow(&e, &p_big));
    }

    /// Column 1 of this square has `hi` = 2^64 − 1 after doubling and a carry whose `hi` is 1:
    /// the carry out of `hi` in `Column::add` must reach `top` (random operands reach it with
    /// a chance of about 2^-58 per column). Found by the session-12 review, which removed that
    /// carry and saw every other test pass.
    #[test]
    fn a_square_whose_column_add_carries_out_of_hi() {
        let p_big = BigUint::from_bytes_be(&crate::MTPROTO_DH_PRIME);
        let m = Modulus::new(&from_be_bytes(&crate::MTPROTO_DH_PRIME));
        let mut a = [0u64; LIMBS];
        a[0] = 0xfa1e_b92d_9059_129e;
        a[1] = 0x8302_54f3_c14b_2152;
        let x = big(&a);
        let want = (&x * &x * r_inv(&p_big)) % &p_big;
        assert_eq!(big(&m.square(&a)), want);
        assert_eq!(big(&m.mul(&a, &a)), want);
    }

    #[test]
    fn column_sums_at_their_limits() {
        let max = u64::MAX;
        // 64 products of (2^64 − 1)², the most a column adds: lo, hi, top exact.
        let mut c = Column::default();
        for _ in 0..64 {
            c.add_product(max, max);
        }
        let want = BigUint::from(64u8) * BigUint::from(max) * BigUint::from(max);
        let got = BigUint::from(c.lo) + (BigUint::from(c.hi) << 64usize) + (BigUint::from(c.top) << 128usize);
        assert_eq!(got, want);
        // Doubling, then adding a sum whose low limbs carry through both words.
        let mut d = Column {
            lo: max,
            hi: max >> 1,
            top: 3,
        };
        d.double();
        assert_eq!((d.lo, d.hi, d.top), (max - 1, max, 6));
        d.add(&Column { lo: 2, hi: 0, top: 0 });
        assert_eq!((d.lo, d.hi, d.top), (0, 0, 7));
        d.shift();
        assert_eq!((d.lo, d.hi, d.top), (0, 7, 0));
    }

    #[test]
    fn arithmetic_matches_num_bigint() {
        let p_big = BigUint::from_bytes_be(&crate::MTPROTO_DH_PRIME);
        let m = Modulus::new(&from_be_bytes(&crate::MTPROTO_DH_PRIME));
        let r = BigUint::from(1u8) << 2048usize;
        assert_eq!(big(&m.one), &r % &p_big);
        assert_eq!(big(&m.r2), (&r * &r) % &p_big);
        let r_inv = r.clone().modpow(&(&p_big - BigUint::from(2u8)), &p_big);
        let mut edge = p_big.clone() - BigUint::from(1u8); // p - 1: every limb near full
        for seed in 1..40u64 {
            let a = if seed == 1 {
                edge.clone()
            } else {
                random_below(&p_big, seed)
            };
            let b = random_below(&p_big, seed * 7919);
            let (la, lb) = (limbs(&a), limbs(&b));
            assert_eq!(big(&m.mul(&la, &lb)), (&a * &b * &r_inv) % &p_big, "mul {seed}");
            assert_eq!(big(&m.square(&la)), (&a * &a * &r_inv) % &p_big, "square {seed}");
            assert_eq!(
                big(&m.leave_montgomery(&m.enter_montgomery(&la))),
                a,
                "round trip {seed}"
            );
            edge = b;
        }
        // The largest column sums: every limb of both operands as large as a value below p allows.
        let top = p_big.clone() - BigUint::from(1u8);
        let near_r = limbs(&top);
        assert_eq!(big(&m.mul(&near_r, &near_r)), (&top * &top * &r_inv) % &p_big);
        assert_eq!(big(&m.square(&near_r)), (&top * &top * &r_inv) % &p_big);
        // One in Montgomery form: R·1·R^-1 = 1 and R·R·R^-1 = R mod p.
        let one = limbs(&BigUint::from(1u8));
        assert_eq!(big(&m.mul(&m.one, &one)), BigUint::from(1u8));
        assert_eq!(big(&m.square(&m.one)), &r % &p_big);
    }

    #[test]
    fn pow_matches_num_bigint_for_all_exponent_lengths() {
        let p_big = BigUint::from_bytes_be(&crate::MTPROTO_DH_PRIME);
        let m = Modulus::new(&from_be_bytes(&crate::MTPROTO_DH_PRIME));
        let g = m.enter_montgomery(&limbs(&BigUint::from(3u8)));
        let table = FixedBaseTable::new(&m, &g);
        for (seed, bits) in [
            (3u64, 1usize),
            (5, 8),
            (11, 255),
            (13, 256),
            (17, 1000),
            (19, 2048),
        ] {
            let base = random_below(&p_big, seed);
            let e = random_below(&p_big, seed + 100) % (BigUint::from(1u8) << bits);
            let got = m.leave_montgomery(&m.pow(&m.enter_montgomery(&limbs(&base)), &limbs(&e), bits));
            assert_eq!(big(&got), base.modpow(&e, &p_big), "{bits} bits");
            if bits <= FIXED_BASE_BITS {
                let got = m.leave_montgomery(&table.pow(&m, &limbs(&e)));
                assert_eq!(
                    big(&got),
                    BigUint::from(3u8).modpow(&e, &p_big),
                    "fixed base {bits}"
                );
            }
        }
        // Zero exponent, and an all-ones 256-bit exponent (every window 15).
        let all_ones = (BigUint::from(1u8) << 256usize) - BigUint::from(1u8);
        for e in [BigUint::from(0u8), all_ones] {
            let got = m.leave_montgomery(&table.pow(&m, &limbs(&e)));
            assert_eq!(big(&got), BigUint::from(3u8).modpow(&e, &p_big));
            let got = m.leave_montgomery(&m.pow(&g, &limbs(&e), 256));
            assert_eq!(big(&got), BigUint::from(3u8).modpow(&e, &p_big));
        }
    }
}
