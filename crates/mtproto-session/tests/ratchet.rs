//! The double ratchet in MTProto packets: conversation, start without a one-time prekey,
//! tampering, persistence, and property tests over interleaving and reordering. Forward secrecy
//! and post-compromise security: `ratchet_secrecy.rs`; the bounds on skipped keys:
//! `ratchet_bounds.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use base64::Engine as _;
use common::{answered, load, now, peers, saved, started, Side, TestRng};
use mtproto_crypto::IdentitySigningKey;
use mtproto_session::{
    packet_kind, ratchet::MAX_SKIP, ChatState, Delivery, E2eError, PacketKind, RatchetChat,
};
use proptest::prelude::*;

#[test]
fn a_conversation_both_ways_with_dh_steps() {
    let (mut p, mut a, mut b) = started(b"both ways");
    assert!(
        a.start_pending(),
        "Alice repeats the start until she hears from Bob"
    );
    for round in 0..5u8 {
        for i in 0..3u8 {
            let m = b.seal(&[round, i, 1], now(), &mut p.rng).unwrap();
            assert_eq!(packet_kind(&m.packet), Some(PacketKind::Ratchet));
            assert_eq!(a.open(&m.packet, now(), &mut p.rng).unwrap().body, [round, i, 1]);
        }
        assert!(!a.start_pending());
        for i in 0..3u8 {
            let m = a.seal(&[round, i, 2], now(), &mut p.rng).unwrap();
            assert_eq!(packet_kind(&m.packet), Some(PacketKind::Ratchet));
            let r = b.open(&m.packet, now(), &mut p.rng).unwrap();
            assert_eq!(r.body, [round, i, 2]);
            assert_eq!(r.delivery, Delivery::InOrder);
        }
    }
    assert_eq!(a.fingerprint(), b.fingerprint());
    // The safety number is the static chat's: a ratchet changes no key users compare.
    let st = ChatState::new(&p.alice, p.bob.public()).unwrap();
    assert_eq!(st.fingerprint(), a.fingerprint());
    assert_eq!(a.ratchet().skipped_count(), 0);
}

#[test]
fn the_start_message_carries_x3dh_and_is_repeated_until_answered() {
    let mut p = peers(b"start repeated");
    let opk = p.bob_prekeys.generate_one_time(2, &mut p.rng).unwrap().pop();
    let bundle = p.bob_prekeys.bundle(opk);
    let (mut a, _) = Side::initiate(&p.alice, &bundle, &p.bob, &mut p.rng).unwrap();
    let m1 = a.seal(b"one", now(), &mut p.rng).unwrap();
    let m2 = a.seal(b"two", now(), &mut p.rng).unwrap();
    assert_eq!(packet_kind(&m1.packet), Some(PacketKind::Start));
    assert_eq!(packet_kind(&m2.packet), Some(PacketKind::Start));
    // The second start arrives first: Bob starts from it, then the first opens late.
    let (mut b, acc) = Side::accept(
        &p.bob,
        &mut p.bob_prekeys,
        &p.alice,
        &m2.packet,
        now(),
        &mut p.rng,
    )
    .unwrap();
    assert_eq!(acc.received.body, b"two");
    assert_eq!(acc.peer, p.alice.public());
    assert!(matches!(acc.received.delivery, Delivery::AfterGap { .. }));
    let r1 = b.open(&m1.packet, now(), &mut p.rng).unwrap();
    assert_eq!((r1.body.as_slice(), r1.delivery), (&b"one"[..], Delivery::Late));
    assert_eq!(
        p.bob_prekeys.one_time_count(),
        1,
        "the used one-time prekey is deleted"
    );
    // A replayed start cannot open a second conversation: its one-time prekey is gone.
    let again = Side::accept(
        &p.bob,
        &mut p.bob_prekeys,
        &p.alice,
        &m1.packet,
        now(),
        &mut p.rng,
    );
    assert!(matches!(
        again,
        Err(E2eError::UnknownPrekey {
            which: "one-time",
            ..
        })
    ));
}

#[test]
fn a_start_without_one_time_prekey_works_and_says_so() {
    let mut p = peers(b"no opk");
    let bundle = p.bob_prekeys.bundle(None);
    let (mut a, started) = Side::initiate(&p.alice, &bundle, &p.bob, &mut p.rng).unwrap();
    assert_eq!(started.one_time_prekey, None);
    let m = a.seal(b"hi", now(), &mut p.rng).unwrap();
    let (mut b, acc) =
        Side::accept(&p.bob, &mut p.bob_prekeys, &p.alice, &m.packet, now(), &mut p.rng).unwrap();
    assert_eq!(acc.one_time_prekey, None);
    let r = b.seal(b"yo", now(), &mut p.rng).unwrap();
    assert_eq!(a.open(&r.packet, now(), &mut p.rng).unwrap().body, b"yo");
}

#[test]
fn bundles_for_another_identity_or_with_a_bad_signature_are_refused() {
    let mut p = peers(b"bad bundles");
    let bundle = p.bob_prekeys.bundle(None);
    let mallory = mtproto_crypto::IdentitySecret::generate(&mut p.rng);
    assert_eq!(
        RatchetChat::initiate(&p.alice, &bundle, &mallory.public(), &mut p.rng).unwrap_err(),
        E2eError::PeerIdentityMismatch
    );
    let mut forged = bundle.clone();
    forged.signed_prekey.public[0] ^= 1;
    assert_eq!(
        RatchetChat::initiate(&p.alice, &forged, &p.bob.public(), &mut p.rng).unwrap_err(),
        E2eError::BadPrekeySignature
    );
    // A relay substituting its own signing key and signed prekey: the signature verifies under
    // the substituted key, so the bundle is only as good as that key (docs/crypto.md); a
    // signature by another key over Bob's prekey does not verify.
    let other = IdentitySigningKey::generate(&mut p.rng);
    let mut resigned = bundle.clone();
    resigned.signing_key = *other.public().as_bytes();
    assert_eq!(resigned.verify().unwrap_err(), E2eError::BadPrekeySignature);
    // A start naming an unknown signed prekey.
    let mut stale = bundle;
    stale.signed_prekey.id = 999;
    assert!(stale.verify().is_err());
}

#[test]
fn a_rotated_signed_prekey_still_accepts_starts_in_flight() {
    let mut p = peers(b"rotation");
    let old_bundle = p.bob_prekeys.bundle(None);
    p.bob_prekeys
        .rotate_signed_prekey(&p.bob_signing, now(), &mut p.rng);
    let (mut a, _) = Side::initiate(&p.alice, &old_bundle, &p.bob, &mut p.rng).unwrap();
    let m = a.seal(b"late start", now(), &mut p.rng).unwrap();
    assert!(Side::accept(&p.bob, &mut p.bob_prekeys, &p.alice, &m.packet, now(), &mut p.rng).is_ok());
    // After enough rotations the old prekey is deleted and its starts are refused.
    for _ in 0..3 {
        p.bob_prekeys
            .rotate_signed_prekey(&p.bob_signing, now(), &mut p.rng);
    }
    assert!(matches!(
        Side::accept(&p.bob, &mut p.bob_prekeys, &p.alice, &m.packet, now(), &mut p.rng),
        Err(E2eError::UnknownPrekey { which: "signed", .. })
    ));
}

// ---- One window per peer ---------------------------------------------------------------------

#[test]
fn static_and_ratchet_messages_to_one_peer_share_one_numbering() {
    let mut p = peers(b"one window");
    // A static conversation first (an older client, or before the peer published prekeys).
    let mut aw = ChatState::new(&p.alice, p.bob.public()).unwrap();
    let mut bw = ChatState::new(&p.bob, p.alice.public()).unwrap();
    for body in [&b"static 0"[..], b"static 1"] {
        let s = aw.seal(body, now(), &mut p.rng).unwrap();
        assert_eq!(bw.open(&s.packet).unwrap().body, body);
    }
    // Then a ratchet conversation without a one-time prekey: its numbers continue the window's.
    let bundle = p.bob_prekeys.bundle(None);
    let (mut a, _) = RatchetChat::initiate(&p.alice, &bundle, &p.bob.public(), &mut p.rng).unwrap();
    let start = a.seal(&mut aw, b"ratchet 2", now(), &mut p.rng).unwrap();
    assert_eq!(start.seq, 2, "the window's next number");
    let (mut b, acc) = RatchetChat::accept(
        &p.bob,
        &mut p.bob_prekeys,
        &mut bw,
        &start.packet,
        now(),
        &mut p.rng,
    )
    .unwrap();
    assert_eq!((acc.received.seq, acc.received.delivery), (2, Delivery::InOrder));
    assert_eq!(a.start_ephemeral(), b.start_ephemeral());
    // Bob answers under the ratchet, then under the static key: one numbering for both ways.
    let r = b.seal(&mut bw, b"reply 0", now(), &mut p.rng).unwrap();
    let s = bw.seal(b"static reply 1", now(), &mut p.rng).unwrap();
    assert_eq!((r.seq, s.seq), (0, 1));
    let got = a.open(&mut aw, &r.packet, now(), &mut p.rng).unwrap();
    assert_eq!((got.seq, got.delivery), (0, Delivery::InOrder));
    let got = aw.open(&s.packet).unwrap();
    assert_eq!((got.seq, got.delivery), (1, Delivery::InOrder));
    let next = a.seal(&mut aw, b"ratchet 3", now(), &mut p.rng).unwrap();
    assert_eq!(next.seq, 3);
    assert_eq!(b.open(&mut bw, &next.packet, now(), &mut p.rng).unwrap().seq, 3);

    // The start, replayed: without a one-time prekey it opens a second conversation's
    // keys, but the shared window refuses its message as a replay, and nothing changes.
    let before = (saved_window(&bw), p.bob_prekeys.one_time_count());
    let again = RatchetChat::accept(
        &p.bob,
        &mut p.bob_prekeys,
        &mut bw,
        &start.packet,
        now(),
        &mut p.rng,
    );
    assert_eq!(again.unwrap_err(), E2eError::Replay { seq: 2 });
    assert_eq!((saved_window(&bw), p.bob_prekeys.one_time_count()), before);
    // A replayed ratchet message through the other conversation's window is refused too: its
    // key is gone in `b`, and a fresh conversation of the same start cannot reach it.
    assert!(b.open(&mut bw, &next.packet, now(), &mut p.rng).is_err());
    assert_eq!(saved_window(&bw), before.0);
}

fn saved_window(w: &ChatState) -> String {
    serde_json::to_string(&w.data()).unwrap()
}

#[test]
fn a_window_or_start_of_another_peer_is_refused() {
    let (mut p, mut a, mut b) = answered(b"other window");
    let carol = mtproto_crypto::IdentitySecret::generate(&mut p.rng);
    let mut alice_carol = ChatState::new(&p.alice, carol.public()).unwrap();
    assert_eq!(
        a.chat
            .seal(&mut alice_carol, b"x", now(), &mut p.rng)
            .unwrap_err(),
        E2eError::PeerIdentityMismatch
    );
    let m = a.seal(b"for bob", now(), &mut p.rng).unwrap();
    let mut bob_carol = ChatState::new(&p.bob, carol.public()).unwrap();
    assert_eq!(
        b.chat
            .open(&mut bob_carol, &m.packet, now(), &mut p.rng)
            .unwrap_err(),
        E2eError::PeerIdentityMismatch
    );
    // A start from Alice presented in the window with Carol: refused before any prekey is used.
    let opk = p.bob_prekeys.generate_one_time(1, &mut p.rng).unwrap().pop();
    let (mut a2, _) = Side::initiate(&p.alice, &p.bob_prekeys.bundle(opk), &p.bob, &mut p.rng).unwrap();
    let start = a2.seal(b"new start", now(), &mut p.rng).unwrap();
    assert_eq!(
        mtproto_session::start_of(&start.packet).unwrap().identity,
        *p.alice.public().as_bytes()
    );
    assert_eq!(
        RatchetChat::accept(
            &p.bob,
            &mut p.bob_prekeys,
            &mut bob_carol,
            &start.packet,
            now(),
            &mut p.rng
        )
        .unwrap_err(),
        E2eError::PeerIdentityMismatch
    );
    assert_eq!(
        p.bob_prekeys.one_time_count(),
        5,
        "the one-time prekey is still there"
    );
    assert!(b.open(&m.packet, now(), &mut p.rng).is_ok());
}

// ---- Tampering and replay -------------------------------------------------------------------

#[test]
fn tampered_reflected_and_replayed_packets_are_refused_without_changing_state() {
    let (mut p, mut a, mut b) = answered(b"tamper");
    let m = a.seal(b"payload", now(), &mut p.rng).unwrap();
    let before = saved(&b);
    for bit in [
        0,
        8,
        8 * 33,
        8 * 37,
        8 * 40,
        8 * 41,
        8 * 50,
        8 * (m.packet.len() - 1),
    ] {
        let mut t = m.packet.clone();
        t[bit / 8] ^= 1 << (bit % 8);
        assert!(b.open(&t, now(), &mut p.rng).is_err(), "bit {bit}");
        assert_eq!(saved(&b), before, "bit {bit} changed the state");
    }
    // Reflected to its sender.
    assert!(a.open(&m.packet, now(), &mut p.rng).is_err());
    // A clear prefix that disagrees with its encrypted copy (pn changed, same key chain).
    let mut t = m.packet.clone();
    t[33] ^= 1;
    assert_eq!(b.open(&t, now(), &mut p.rng).unwrap_err(), E2eError::Decrypt);
    assert_eq!(b.open(&m.packet, now(), &mut p.rng).unwrap().body, b"payload");
    assert_eq!(
        b.open(&m.packet, now(), &mut p.rng).unwrap_err(),
        E2eError::MessageKeyGone { n: 0 }
    );
    // A replay from an earlier chain, after DH steps, is reported the same way.
    let r = b.seal(b"r", now(), &mut p.rng).unwrap();
    a.open(&r.packet, now(), &mut p.rng).unwrap();
    let m2 = a.seal(b"new chain", now(), &mut p.rng).unwrap();
    b.open(&m2.packet, now(), &mut p.rng).unwrap();
    assert!(matches!(
        b.open(&m.packet, now(), &mut p.rng),
        Err(E2eError::MessageKeyGone { .. })
    ));
}

#[test]
fn state_survives_serialization_and_debug_shows_no_secret() {
    let (mut p, mut a, b) = started(b"persist");
    let json = saved(&b);
    let mut b = load(&json);
    let m = a.seal(b"after restore", now(), &mut p.rng).unwrap();
    assert_eq!(
        b.open(&m.packet, now(), &mut p.rng).unwrap().body,
        b"after restore"
    );
    let dbg = format!(
        "{:?} {:?} {:?} {:?}",
        b.chat,
        b.chat.data(),
        b.window,
        p.bob_prekeys
    );
    let v: serde_json::Value = serde_json::from_str(&saved(&b)).unwrap();
    for secret in [
        &v["ratchet"]["root"],
        &v["ratchet"]["recv"],
        &v["ratchet"]["dh_self"]["secret"],
    ] {
        let s = secret.as_str().unwrap();
        assert!(!dbg.contains(s), "Debug printed a secret");
        let hex = hex::encode(base64::engine::general_purpose::STANDARD.decode(s).unwrap());
        assert!(!dbg.contains(&hex), "Debug printed a secret in hex");
    }
}

#[test]
fn packet_kinds_are_told_apart() {
    let (mut p, mut a, mut b) = started(b"kinds");
    let mut st = ChatState::new(&p.alice, p.bob.public()).unwrap();
    let s = st.seal(b"static", now(), &mut p.rng).unwrap();
    assert_eq!(packet_kind(&s.packet), Some(PacketKind::Static));
    let r = b.seal(b"ratchet", now(), &mut p.rng).unwrap();
    assert_eq!(packet_kind(&r.packet), Some(PacketKind::Ratchet));
    a.open(&r.packet, now(), &mut p.rng).unwrap();
    assert_eq!(packet_kind(&[0x01; 70]), None);
    // A static packet is never opened by the ratchet, nor a ratchet packet by the static state.
    assert!(a.open(&s.packet, now(), &mut p.rng).is_err());
    assert!(st.open(&r.packet).is_err());
}

// ---- Property tests -------------------------------------------------------------------------

/// One step of a script: `true` = someone sends (who: the bit), `false` = a packet in flight
/// (chosen by the number) is delivered.
fn run_script(script: &[(bool, bool, u16)], seed: u64) {
    let (mut p, mut a, mut b) = started(&seed.to_le_bytes());
    let mut flight: Vec<(bool, Vec<u8>, Vec<u8>)> = Vec::new(); // (to Bob?, packet, body)
    let mut count = 0u32;
    let deliver = |flight: &mut Vec<(bool, Vec<u8>, Vec<u8>)>,
                   pick: u16,
                   a: &mut Side,
                   b: &mut Side,
                   rng: &mut TestRng| {
        let (to_bob, packet, body) = flight.remove(usize::from(pick) % flight.len());
        let r = if to_bob {
            b.open(&packet, now(), rng)
        } else {
            a.open(&packet, now(), rng)
        };
        assert_eq!(r.unwrap().body, body);
        // Exactly once: the same packet again is refused.
        let again = if to_bob {
            b.open(&packet, now(), rng)
        } else {
            a.open(&packet, now(), rng)
        };
        assert!(matches!(again, Err(E2eError::MessageKeyGone { .. })), "{again:?}");
    };
    for &(send, from_alice, pick) in script {
        if send {
            count += 1;
            let body = count.to_le_bytes().to_vec();
            let packet = if from_alice {
                a.seal(&body, now(), &mut p.rng)
            } else {
                b.seal(&body, now(), &mut p.rng)
            }
            .unwrap()
            .packet;
            flight.push((from_alice, packet, body));
        } else if !flight.is_empty() {
            deliver(&mut flight, pick, &mut a, &mut b, &mut p.rng);
        }
    }
    let mut i = 0u16;
    while !flight.is_empty() {
        i = i.wrapping_mul(31).wrapping_add(7);
        deliver(&mut flight, i, &mut a, &mut b, &mut p.rng);
    }
    assert!(a.ratchet().skipped_count() == 0 && b.ratchet().skipped_count() == 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any interleaving of two peers' sends and any delivery order, within the bounds, opens
    /// every message exactly once and leaves no skipped key behind.
    #[test]
    fn any_interleaving_and_reordering_opens_every_message_once(
        script in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<u16>()), 0..80),
        seed in any::<u64>(),
    ) {
        run_script(&script, seed);
    }

    /// Beyond the bounds: a clear error, never a panic, and the state is unchanged.
    #[test]
    fn headers_beyond_the_bounds_are_clear_errors(n in (MAX_SKIP + 2)..u32::MAX, pn in any::<u32>(), flip_dh in any::<bool>()) {
        let (mut p, mut a, mut b) = answered(b"beyond");
        let m = a.seal(b"x", now(), &mut p.rng).unwrap();
        let mut t = m.packet.clone();
        if flip_dh { t[1] ^= 0x40; }
        t[33..37].copy_from_slice(&pn.to_le_bytes());
        t[37..41].copy_from_slice(&n.to_le_bytes());
        let before = saved(&b);
        let e = b.open(&t, now(), &mut p.rng).unwrap_err();
        prop_assert!(matches!(e, E2eError::TooManySkipped { max: MAX_SKIP, .. } | E2eError::Dh(_)), "{e:?}");
        prop_assert_eq!(saved(&b), before);
        prop_assert_eq!(b.open(&m.packet, now(), &mut p.rng).unwrap().body, b"x".to_vec());
    }

    /// Opening arbitrary bytes never panics and never changes the state.
    #[test]
    fn opening_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), kind in 0u8..4) {
        let (mut p, _a, mut b) = started(b"garbage");
        let mut bytes = bytes;
        if let Some(f) = bytes.first_mut() { *f = kind; }
        let before = saved(&b);
        prop_assert!(b.open(&bytes, now(), &mut p.rng).is_err());
        prop_assert_eq!(saved(&b), before);
    }
}
