//! The pq proof of work of MTProto's `resPQ` (auth key creation, steps 2-3): the server sends
//! `pq = p·q` for two distinct primes below 2^31, the client factors it.

use rand_core::{CryptoRng, RngCore};

use crate::{Error, Result};

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(m)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut acc = 1 % m;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    acc
}

/// Deterministic Miller-Rabin for every `u64` (these 12 bases suffice below 3.3·10^24).
pub fn is_prime_u64(n: u64) -> bool {
    const BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    if n < 2 {
        return false;
    }
    for p in BASES {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    'bases: for a in BASES {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One Pollard-Brent run with constant `c`; `None` if it found no proper factor within `budget`
/// iterations.
fn brent(n: u64, c: u64, budget: u64) -> Option<u64> {
    let f = |x: u64| ((u128::from(x) * u128::from(x) + u128::from(c)) % u128::from(n)) as u64;
    let (mut y, mut r, mut q, mut g) = (2u64, 1u64, 1u64, 1u64);
    let (mut x, mut ys) = (0u64, 0u64);
    let m = 128u64;
    let mut spent = 0u64;
    while g == 1 {
        x = y;
        for _ in 0..r {
            y = f(y);
        }
        let mut k = 0;
        while k < r && g == 1 {
            ys = y;
            for _ in 0..m.min(r - k) {
                y = f(y);
                q = mul_mod(q, x.abs_diff(y), n);
            }
            g = gcd(q, n);
            k += m;
            spent += m;
            if spent > budget {
                return None;
            }
        }
        r *= 2;
    }
    if g == n {
        // Backtrack one step at a time from the saved point.
        for _ in 0..=m {
            ys = f(ys);
            g = gcd(x.abs_diff(ys), n);
            if g > 1 {
                break;
            }
        }
    }
    (g != n && g != 1).then_some(g)
}

/// Factors an MTProto `pq` into `(p, q)` with `p < q`, both prime and below 2^32.
///
/// Bounded: a hostile `pq` (prime, a square, large factors) is refused rather than looped on.
///
/// ```
/// assert_eq!(mtproto_crypto::factor_pq(1468428376148703121), Ok((1008949199, 1455403679)));
/// ```
///
/// # Errors
/// [`Error::BadPq`] unless `pq` is the product of two distinct primes below 2^32.
pub fn factor_pq(pq: u64) -> Result<(u32, u32)> {
    if pq < 6 || pq.is_multiple_of(2) || is_prime_u64(pq) {
        return Err(Error::BadPq);
    }
    for c in 1..=16 {
        if let Some(d) = brent(pq, c, 1 << 22) {
            let (a, b) = (d.min(pq / d), d.max(pq / d));
            let ok = a != b && a * b == pq && is_prime_u64(a) && is_prime_u64(b);
            return match (ok, u32::try_from(a), u32::try_from(b)) {
                (true, Ok(p), Ok(q)) => Ok((p, q)),
                _ => Err(Error::BadPq),
            };
        }
    }
    Err(Error::BadPq)
}

/// The server's side of the proof of work: a fresh `pq` and its secret factors.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PqChallenge {
    p: u32,
    q: u32,
}

impl core::fmt::Debug for PqChallenge {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PqChallenge(pq={})", self.pq())
    }
}

impl PqChallenge {
    /// Two distinct random primes in `[2^30, 2^31)`, as Telegram's servers choose them.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut prime = || loop {
            let c = (rng.next_u32() & 0x3fff_ffff) | 0x4000_0001;
            if is_prime_u64(u64::from(c)) {
                break c;
            }
        };
        let p = prime();
        let mut q = prime();
        while q == p {
            q = prime();
        }
        Self {
            p: p.min(q),
            q: p.max(q),
        }
    }

    /// Rebuilds a challenge from its factors (a server that persists pending handshakes).
    ///
    /// # Errors
    /// [`Error::BadPq`] unless `p < q` are both prime.
    pub fn from_factors(p: u32, q: u32) -> Result<Self> {
        if p < q && is_prime_u64(u64::from(p)) && is_prime_u64(u64::from(q)) {
            Ok(Self { p, q })
        } else {
            Err(Error::BadPq)
        }
    }

    /// The product sent to the client.
    pub fn pq(&self) -> u64 {
        u64::from(self.p) * u64::from(self.q)
    }

    /// The factors `(p, q)`, `p < q`.
    pub fn factors(&self) -> (u32, u32) {
        (self.p, self.q)
    }

    /// Whether the client's answer is the factorisation (in order, `p < q`).
    pub fn verify(&self, p: u64, q: u64) -> bool {
        p == u64::from(self.p) && q == u64::from(self.q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_challenges_factor() {
        for _ in 0..20 {
            let c = PqChallenge::generate(&mut rand_core::OsRng);
            let (p, q) = factor_pq(c.pq()).unwrap();
            assert!(c.verify(p.into(), q.into()));
            assert!(!c.verify(q.into(), p.into()));
            assert!(c.pq() < 1 << 62);
        }
    }

    #[test]
    fn hostile_inputs_are_refused() {
        for bad in [
            0,
            1,
            4,
            6,
            2_147_483_647,
            1_000_000_007 * 2,
            65_537 * 65_537,
            u64::MAX,
        ] {
            assert_eq!(factor_pq(bad), Err(Error::BadPq), "{bad}");
        }
        // Three prime factors: a proper factor is found but the halves are not both prime.
        assert_eq!(factor_pq(3 * 5 * 7), Err(Error::BadPq));
        // Factors above 2^32 are refused.
        assert_eq!(factor_pq(4_294_967_311 * 3), Err(Error::BadPq));
    }

    #[test]
    fn primality_matches_trial_division_for_small_numbers() {
        for n in 0u64..5000 {
            let trial = n >= 2 && (2..n).take_while(|d| d * d <= n).all(|d| n % d != 0);
            assert_eq!(is_prime_u64(n), trial, "{n}");
        }
    }
}
