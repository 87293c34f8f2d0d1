//! A dudect-style timing test of the secret-exponent paths of `DhGroup` (Reparaz, Balasch and
//! Verbauwhede, "Dude, is my code constant time?", DATE 2017): two classes of inputs, a fixed
//! secret exponent and fresh random ones, interleaved in a random order; each call is timed and
//! Welch's t statistic compares the two timing distributions, on all measurements and on the
//! measurements below several percentiles (cropping, as dudect does, removes the long tail that
//! interrupts add on a shared machine). |t| above 4.5 means the classes are distinguishable: a
//! leak. Below it, no leak was detected at this sample size.
//!
//! Ignored by default (it takes about a minute, and it measures time): run it with
//! `cargo test --release -p mtproto-crypto --test dh_timing -- --ignored --nocapture`
//! (`DH_TIMING_SAMPLES`, default 20000 per operation). It prints its figures and asserts nothing
//! about them; they go to `docs/benchmarks.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;
use std::time::Instant;

use mtproto_crypto::rand_core::{OsRng, RngCore};
use mtproto_crypto::{DhGroup, DhSecret, EXPONENT_BITS};

/// Running mean and variance (Welford).
#[derive(Default, Clone, Copy)]
struct Moments {
    n: f64,
    mean: f64,
    m2: f64,
}

impl Moments {
    fn push(&mut self, x: f64) {
        self.n += 1.0;
        let d = x - self.mean;
        self.mean += d / self.n;
        self.m2 += d * (x - self.mean);
    }
    fn var(&self) -> f64 {
        self.m2 / (self.n - 1.0)
    }
}

/// Welch's t statistic of two samples.
fn welch_t(a: &Moments, b: &Moments) -> f64 {
    (a.mean - b.mean) / (a.var() / a.n + b.var() / b.n).sqrt()
}

/// Fixed exponent: top bit set (as every fresh exponent) and nothing else, so nearly every window
/// is zero, which is where a shortcut (skipping a multiplication by one) would show.
fn fixed_exponent() -> [u8; EXPONENT_BITS / 8] {
    let mut e = [0u8; EXPONENT_BITS / 8];
    e[0] = 0x80;
    e
}

fn random_exponent() -> [u8; EXPONENT_BITS / 8] {
    let mut e = [0u8; EXPONENT_BITS / 8];
    OsRng.fill_bytes(&mut e);
    e[0] |= 0x80;
    e
}

/// Times `op` on `samples` inputs of the two classes in random order; prints |t| over all
/// measurements and over those below the 50th, 75th, 90th and 99th percentile of all of them, and
/// returns the largest |t|.
fn dudect(name: &str, samples: usize, mut op: impl FnMut(&DhSecret)) -> f64 {
    let mut classes = vec![0u8; samples];
    OsRng.fill_bytes(&mut classes);
    let inputs: Vec<(bool, DhSecret)> = classes
        .iter()
        .map(|c| {
            let fixed = c & 1 == 0;
            let e = if fixed {
                fixed_exponent()
            } else {
                random_exponent()
            };
            (fixed, DhSecret::from_be_bytes(&e).unwrap())
        })
        .collect();
    // Warm up caches and the CPU's frequency.
    for (_, s) in inputs.iter().take(200) {
        op(s);
    }
    let mut times = Vec::with_capacity(samples);
    for (fixed, s) in &inputs {
        let start = Instant::now();
        op(black_box(s));
        times.push((*fixed, start.elapsed().as_nanos() as f64));
    }
    let mut sorted: Vec<f64> = times.iter().map(|t| t.1).collect();
    sorted.sort_by(f64::total_cmp);
    let mut line = format!("{name}: {samples} samples");
    let mut worst: f64 = 0.0;
    for (label, pct) in [
        ("all", 1.0),
        ("p99", 0.99),
        ("p90", 0.90),
        ("p75", 0.75),
        ("p50", 0.50),
    ] {
        let cut = sorted[((sorted.len() as f64 * pct) as usize).min(sorted.len() - 1)];
        let (mut f, mut r) = (Moments::default(), Moments::default());
        for &(fixed, t) in &times {
            if t <= cut {
                if fixed {
                    f.push(t)
                } else {
                    r.push(t)
                }
            }
        }
        let t = welch_t(&f, &r);
        worst = worst.max(t.abs());
        line += &format!(
            "; {label}: |t| = {:.2} (fixed {:.1} µs, random {:.1} µs)",
            t.abs(),
            f.mean / 1000.0,
            r.mean / 1000.0
        );
    }
    println!("{line}; max |t| = {worst:.2}");
    worst
}

#[test]
#[ignore = "a timing measurement of about a minute; run with --ignored --nocapture"]
fn secret_exponent_paths_show_no_timing_difference() {
    let samples = std::env::var("DH_TIMING_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let group = DhGroup::mtproto();
    let with_table = DhGroup::mtproto().with_generator_table();
    let (_, peer) = group.generate(&mut OsRng).unwrap();
    let agree = dudect("agree (peer^secret, 4-bit windows)", samples, |s| {
        black_box(group.agree(s, &peer));
    });
    let keygen = dudect("public_value with generator table (g^secret)", samples, |s| {
        // An out-of-range result (probability ~2^-63) would be an Err; the time is the same.
        let _ = black_box(with_table.public_value(s));
    });
    let plain = dudect(
        "public_value without table (g^secret, 4-bit windows)",
        samples / 4,
        |s| {
            let _ = black_box(group.public_value(s));
        },
    );
    println!("max |t|: agree {agree:.2}, keygen with table {keygen:.2}, keygen without {plain:.2} (4.5 = leak threshold)");
}
