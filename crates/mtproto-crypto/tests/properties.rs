//! Property tests: sealing and opening are inverse for every length and padding, any single-bit
//! change is rejected, opening arbitrary bytes never panics, and DH agrees with num-bigint-dig.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use mtproto_crypto::{AuthKey, Direction, Framing, Layout, Mode, MAX_PADDING, MIN_PADDING};
use proptest::prelude::*;

fn key(seed: u8) -> AuthKey {
    AuthKey::from_bytes(core::array::from_fn(|i| {
        (i as u8).wrapping_mul(31).wrapping_add(seed)
    }))
}

fn framings() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::new(Mode::Cbc, Layout::LENGTH_PREFIXED)),
        Just(Framing::new(Mode::Ige, Layout::LENGTH_PREFIXED)),
        Just(Framing::new(Mode::Cbc, Layout::MTPROTO_OPAQUE)),
        Just(Framing::new(Mode::Ige, Layout::MTPROTO_OPAQUE)),
    ]
}

fn payload(f: Framing, data: &[u8]) -> Vec<u8> {
    let l = f.layout();
    let mut p = vec![0xa5; l.data_offset];
    p[l.length_offset..l.length_offset + 4].copy_from_slice(&(data.len() as u32).to_le_bytes());
    p.extend_from_slice(data);
    p
}

fn dir(b: bool) -> Direction {
    if b {
        Direction::ClientToServer
    } else {
        Direction::ServerToClient
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn seal_open_round_trip(f in framings(), data in proptest::collection::vec(any::<u8>(), 0..2048), seed: u8, d: bool) {
        let k = key(seed);
        let p = payload(f, &data);
        let packet = f.seal(&k, dir(d), &p, &mut rand_core::OsRng).unwrap();
        prop_assert_eq!((packet.len() - 24) % 16, 0);
        let opened = f.open(&k, dir(d), &packet).unwrap();
        prop_assert_eq!(opened.payload(), p.as_slice());
        prop_assert_eq!(opened.data(), data.as_slice());
    }

    #[test]
    fn every_valid_padding_round_trips(f in framings(), len in 0usize..64, pad_blocks in 0usize..64, fill: u8) {
        let k = key(1);
        let p = payload(f, &vec![7u8; len]);
        // The smallest valid padding plus a whole number of blocks, capped at 1024.
        let min = MIN_PADDING + (16 - (p.len() + MIN_PADDING) % 16) % 16;
        let pad = min + 16 * pad_blocks;
        prop_assume!(pad <= MAX_PADDING);
        let packet = f.seal_with_padding(&k, Direction::ClientToServer, &p, &vec![fill; pad]).unwrap();
        let opened = f.open(&k, Direction::ClientToServer, &packet).unwrap();
        prop_assert_eq!(opened.payload(), p.as_slice());
    }

    #[test]
    fn any_single_bit_flip_is_rejected(f in framings(), data in proptest::collection::vec(any::<u8>(), 0..300), bit in any::<prop::sample::Index>()) {
        let k = key(2);
        let packet = f.seal(&k, Direction::ServerToClient, &payload(f, &data), &mut rand_core::OsRng).unwrap();
        let mut bad = packet.clone();
        let i = bit.index(packet.len() * 8);
        bad[i / 8] ^= 1 << (i % 8);
        prop_assert!(f.open(&k, Direction::ServerToClient, &bad).is_err());
    }

    #[test]
    fn opening_arbitrary_bytes_never_panics(f in framings(), bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let k = key(3);
        let mut packet = bytes.clone();
        if packet.len() >= 8 {
            packet[..8].copy_from_slice(k.id().as_bytes()); // get past the key-id check
        }
        prop_assert!(f.open(&k, Direction::ClientToServer, &packet).is_err());
    }

    #[test]
    fn wrong_padding_lengths_are_refused(pad in 0usize..1100) {
        let f = Framing::new(Mode::Cbc, Layout::LENGTH_PREFIXED);
        let p = payload(f, b"abcd");
        let ok = (MIN_PADDING..=MAX_PADDING).contains(&pad) && (p.len() + pad).is_multiple_of(16);
        prop_assert_eq!(f.seal_with_padding(&key(4), Direction::ClientToServer, &p, &vec![0; pad]).is_ok(), ok);
    }
}

#[test]
fn a_lying_length_field_is_refused_on_both_sides() {
    let f = Framing::new(Mode::Cbc, Layout::LENGTH_PREFIXED);
    let mut p = payload(f, b"hello");
    p[0] = 6; // claims one more byte than present
    assert!(f
        .seal(&key(5), Direction::ClientToServer, &p, &mut rand_core::OsRng)
        .is_err());
}

#[test]
fn padding_beyond_1024_bytes_is_refused_when_opening() {
    // Build a packet whose data length field leaves 1040 bytes of "padding" using the raw layers:
    // the msg_key is right, so only the padding bound can refuse it.
    use mtproto_crypto::{hazmat, kdf};
    let k = key(6);
    let mut pt = 0u32.to_le_bytes().to_vec();
    pt.resize(4 + 1036, 0); // 1040 bytes total, data length 0: 1036 bytes of padding
    let d = Direction::ClientToServer;
    let mk = kdf::msg_key(k.expose_secret(), d, &pt);
    let aes = kdf::derive_aes(k.expose_secret(), &mk, d);
    hazmat::aes256_cbc_encrypt(&aes.key, &aes.cbc_iv(), &mut pt).unwrap();
    let mut packet = k.id().as_bytes().to_vec();
    packet.extend_from_slice(mk.as_bytes());
    packet.extend_from_slice(&pt);
    let f = Framing::new(Mode::Cbc, Layout::LENGTH_PREFIXED);
    assert_eq!(
        f.open(&k, d, &packet).unwrap_err(),
        mtproto_crypto::Error::Decrypt
    );
}

// DH against an independent implementation: `num-bigint-dig`'s (variable-time) modpow. The
// Montgomery code under `agree` and `public_value` is straight-line column code written by
// build.rs; random operands reach carries in every column.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn dh_matches_an_independent_modpow(
        peer in proptest::collection::vec(any::<u8>(), 256),
        // Fresh secrets are 32 bytes (the generator table's size); replayed ones up to 256.
        secret in prop_oneof![
            proptest::collection::vec(any::<u8>(), 32),
            proptest::collection::vec(any::<u8>(), 1..=256),
        ],
    ) {
        use mtproto_crypto::{DhGroup, DhSecret};
        use num_bigint_dig::BigUint;
        let group = DhGroup::mtproto();
        let p = BigUint::from_bytes_be(group.prime());
        // A value below p, as big-endian bytes of 256.
        let below_p = (BigUint::from_bytes_be(&peer) % &p).to_bytes_be();
        let mut peer = [0u8; 256];
        peer[256 - below_p.len()..].copy_from_slice(&below_p);
        // Outside the safe range only with a chance of about 2^-63.
        prop_assume!(group.check_public(&peer).is_ok());
        let peer = group.check_public(&peer).unwrap();
        let s = DhSecret::from_be_bytes(&secret).unwrap();
        let e = BigUint::from_bytes_be(&secret);
        let want = BigUint::from_bytes_be(peer.as_bytes()).modpow(&e, &p);
        let got = group.agree(&s, &peer);
        prop_assert_eq!(BigUint::from_bytes_be(got.expose_secret()), want);
        // g^secret, with and without the relay's table of g's powers (it covers 256-bit secrets).
        let g_e = BigUint::from(group.g()).modpow(&e, &p);
        // A public value outside 2^(2048-64) .. p - 2^(2048-64) is refused (a tiny secret's).
        let margin = BigUint::from(1u8) << (2048usize - 64);
        let in_range = g_e > margin && g_e < &p - &margin;
        for group in [DhGroup::mtproto(), DhGroup::mtproto().with_generator_table()] {
            match group.public_value(&s) {
                Ok(public) => prop_assert_eq!(BigUint::from_bytes_be(public.as_bytes()), g_e.clone()),
                Err(_) => prop_assert!(!in_range),
            }
        }
    }
}
