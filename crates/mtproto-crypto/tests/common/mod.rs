//! Helpers shared by the known-answer test files: reading `tests/data/`, hex, bit flips.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use serde_json::Value;

/// A JSON file of `tests/data/`.
pub(crate) fn load(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The bytes of a hex string.
pub(crate) fn hx(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap_or_else(|| panic!("not a hex string: {v}"))).unwrap()
}

/// The bytes of a hex string of exactly `N` bytes.
pub(crate) fn arr<const N: usize>(v: &Value) -> [u8; N] {
    hx(v).try_into().unwrap()
}

/// `b` with one bit flipped (`bit` wraps around its length).
pub(crate) fn flip(mut b: Vec<u8>, bit: usize) -> Vec<u8> {
    let i = (bit / 8) % b.len();
    b[i] ^= 1 << (bit % 8);
    b
}
