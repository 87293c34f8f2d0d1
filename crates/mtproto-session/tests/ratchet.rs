//! The double ratchet in MTProto packets: conversation, start without a one-time prekey,
//! forward secrecy, post-compromise security, bounds, tampering, persistence, and property
//! tests over interleaving and reordering.
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
use mtproto_crypto::{
    hazmat,
    kdf::{hkdf_sha256, hmac_sha256},
    ChatKey, Direction, IdentitySigningKey,
};
use mtproto_session::{
    e2e::E2E,
    packet_kind,
    ratchet::ROOT_INFO,
    ratchet::{MAX_SKIP, MAX_SKIPPED_AGE_SECS, MAX_SKIPPED_KEYS, MAX_SKIPPED_KEYS_TOTAL},
    ratchet_chat::{PACKET_KEY_LABEL, RATCHET_PREFIX_LEN, START_PREFIX_LEN},
    skip_budget::{SKIP_BUDGET, SKIP_BUDGET_REFILL_SECS},
    ChatState, Delivery, E2eError, PacketKind, RatchetChat, UnixTime,
};
use proptest::prelude::*;

fn ad(p: &common::Peers) -> [u8; 64] {
    let mut ad = [0u8; 64];
    ad[..32].copy_from_slice(p.alice.public().as_bytes());
    ad[32..].copy_from_slice(p.bob.public().as_bytes());
    ad
}

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

// ---- Forward secrecy and post-compromise security ------------------------------------------

/// Every 32-byte value in a saved state (secret or public), and the static chat key.
fn values_in(json: &str) -> (Vec<[u8; 32]>, Vec<[u8; 256]>) {
    fn walk(v: &serde_json::Value, k32: &mut Vec<[u8; 32]>, k256: &mut Vec<[u8; 256]>) {
        match v {
            serde_json::Value::String(s) => {
                if let Ok(b) = base64::engine::general_purpose::STANDARD.decode(s) {
                    if let Ok(a) = <[u8; 32]>::try_from(b.as_slice()) {
                        k32.push(a);
                    }
                    if let Ok(a) = <[u8; 256]>::try_from(b.as_slice()) {
                        k256.push(a);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, k32, k256)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, k32, k256)),
            _ => {}
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    walk(&serde_json::from_str(json).unwrap(), &mut a, &mut b);
    (a, b)
}

fn try_key(k: &[u8; 256], frame: &[u8]) -> bool {
    let key = ChatKey::from_bytes(*k);
    [Direction::ClientToServer, Direction::ServerToClient]
        .iter()
        .any(|d| E2E.open(&key, *d, frame).is_ok())
}

fn packet_key(mk: &[u8; 32], ad: &[u8; 64]) -> [u8; 256] {
    let mut k = [0u8; 256];
    hkdf_sha256(PACKET_KEY_LABEL, mk, ad, &mut k).unwrap();
    k
}

/// Whether anything in a saved state opens `packet`: any value as a message key; as a chain key
/// followed up to 20 steps; as a root key with any X25519 of two values (state and header),
/// then up to 3 chain steps (the messages searched for are within 3 of a chain's start); the static chat key as the packet key.
fn state_opens(json: &str, packet: &[u8], ad: &[u8; 64]) -> bool {
    let prefix = if packet[0] == 0x02 {
        START_PREFIX_LEN
    } else {
        RATCHET_PREFIX_LEN
    };
    let frame = &packet[prefix..];
    let header_dh: [u8; 32] = packet[prefix - 40..prefix - 8].try_into().unwrap();
    let (k32, k256) = values_in(json);
    if k256.iter().any(|k| try_key(k, frame)) {
        return true;
    }
    let chain_opens = |ck: [u8; 32], steps: usize| {
        let mut ck = ck;
        (0..steps).any(|_| {
            let mk = *hmac_sha256(&ck, &[&[1]]);
            ck = *hmac_sha256(&ck, &[&[2]]);
            try_key(&packet_key(&mk, ad), frame)
        })
    };
    if k32
        .iter()
        .any(|v| try_key(&packet_key(v, ad), frame) || chain_opens(*v, 20))
    {
        return true;
    }
    let mut publics = k32.clone();
    publics.push(header_dh);
    for rk in &k32 {
        for x in &k32 {
            for y in &publics {
                let Ok(dh) = hazmat::x25519(x, y) else { continue };
                let mut out = [0u8; 64];
                hkdf_sha256(rk, &dh[..], ROOT_INFO, &mut out).unwrap();
                if chain_opens(out[32..].try_into().unwrap(), 3) {
                    return true;
                }
            }
        }
    }
    false
}

#[test]
fn forward_secrecy_for_the_recipient() {
    let (mut p, mut a, mut b) = started(b"fs recipient");
    let ad = ad(&p);
    let n = a.seal(b"message N", now(), &mut p.rng).unwrap();
    let before = saved(&b);
    // Control: the harness does find the key in the state from before N was opened.
    assert!(
        state_opens(&before, &n.packet, &ad),
        "the search must be able to succeed"
    );
    assert_eq!(b.open(&n.packet, now(), &mut p.rng).unwrap().body, b"message N");
    let next = a.seal(b"N+1", now(), &mut p.rng).unwrap();
    b.open(&next.packet, now(), &mut p.rng).unwrap();
    // The whole saved state of the recipient: restored, it refuses N; searched, nothing opens it.
    let after = saved(&b);
    let mut thief = load(&after);
    assert_eq!(
        thief.open(&n.packet, now(), &mut p.rng).unwrap_err(),
        E2eError::MessageKeyGone { n: 1 }
    );
    assert!(!state_opens(&after, &n.packet, &ad));
}

#[test]
fn forward_secrecy_for_the_sender_after_a_dh_step() {
    let (mut p, mut a, mut b) = started(b"fs sender");
    let ad = ad(&p);
    let before = saved(&a);
    let m = a.seal(b"recorded", now(), &mut p.rng).unwrap();
    assert!(
        state_opens(&before, &m.packet, &ad),
        "control: the sender's old state holds the chain"
    );
    b.open(&m.packet, now(), &mut p.rng).unwrap();
    let reply = b.seal(b"reply", now(), &mut p.rng).unwrap();
    a.open(&reply.packet, now(), &mut p.rng).unwrap(); // DH ratchet step for Alice
    let _ = a.seal(b"after the step", now(), &mut p.rng).unwrap();
    assert!(!state_opens(&saved(&a), &m.packet, &ad));
    assert!(!state_opens(&saved(&b), &m.packet, &ad));
}

#[test]
fn post_compromise_security_once_each_side_sent() {
    for steal_alice in [false, true] {
        let (mut p, mut a, mut b) = started(b"pcs");
        let ad = ad(&p);
        // A steady conversation, then the theft of one side's complete state.
        let r = b.seal(b"before", now(), &mut p.rng).unwrap();
        a.open(&r.packet, now(), &mut p.rng).unwrap();
        let stolen = if steal_alice { saved(&a) } else { saved(&b) };
        let mut thief_rng = TestRng::new(b"the thief's own randomness");
        // Each side sends one message after the theft, then the conversation goes on.
        let m1 = a.seal(b"m1", now(), &mut p.rng).unwrap();
        b.open(&m1.packet, now(), &mut p.rng).unwrap();
        let m2 = b.seal(b"m2", now(), &mut p.rng).unwrap();
        a.open(&m2.packet, now(), &mut p.rng).unwrap();
        let mut new = Vec::new();
        for i in 0..3u8 {
            let x = a.seal(&[i], now(), &mut p.rng).unwrap();
            b.open(&x.packet, now(), &mut p.rng).unwrap();
            let y = b.seal(&[i], now(), &mut p.rng).unwrap();
            a.open(&y.packet, now(), &mut p.rng).unwrap();
            new.extend([x.packet, y.packet]);
        }
        // The stolen state is a real copy: it reads the first message sent to it under a key
        // it already held (Bob's m1; Alice's m2, answering her key from before the theft).
        let control = if steal_alice { &m2.packet } else { &m1.packet };
        assert!(load(&stolen).open(control, now(), &mut thief_rng).is_ok());
        // After each side sent one message, it opens none of the new ones: neither following
        // the conversation as a passive thief would, nor one by one, nor by trying every value
        // in it as a message, chain or root key (both directions).
        let to_stolen: Vec<&Vec<u8>> = new.iter().skip(usize::from(!steal_alice)).step_by(2).collect();
        let mut thief = load(&stolen);
        let _ = thief.open(control, now(), &mut thief_rng);
        for pk in to_stolen {
            assert!(thief.open(pk, now(), &mut thief_rng).is_err());
            assert!(load(&stolen).open(pk, now(), &mut thief_rng).is_err());
        }
        if !steal_alice {
            assert!(!state_opens(&stolen, &m2.packet, &ad));
        }
        for pk in &new {
            assert!(
                !state_opens(&stolen, pk, &ad),
                "stolen {}",
                if steal_alice { "Alice" } else { "Bob" }
            );
        }
    }
}

// ---- Bounds --------------------------------------------------------------------------------

#[test]
fn skipping_more_than_max_skip_is_a_clear_error_and_changes_nothing() {
    let (mut p, mut a, mut b) = started(b"max skip");
    let mut sent = Vec::new();
    for i in 0..=MAX_SKIP + 1 {
        sent.push(a.seal(&i.to_le_bytes(), now(), &mut p.rng).unwrap());
    }
    // Bob received n = 0 ("hello"); the last is n = MAX_SKIP + 2: MAX_SKIP + 1 keys to skip.
    let last = sent.last().unwrap();
    assert_eq!(
        b.open(&last.packet, now(), &mut p.rng).unwrap_err(),
        E2eError::TooManySkipped {
            skip: u64::from(MAX_SKIP) + 1,
            max: MAX_SKIP
        }
    );
    assert_eq!(b.ratchet().skipped_count(), 0);
    // Exactly MAX_SKIP is within the bounds; then everything in between opens once.
    let within = &sent[sent.len() - 2];
    b.open(&within.packet, now(), &mut p.rng).unwrap();
    assert_eq!(b.ratchet().skipped_count(), MAX_SKIP as usize);
    for m in &sent[..sent.len() - 2] {
        b.open(&m.packet, now(), &mut p.rng).unwrap();
    }
    b.open(&last.packet, now(), &mut p.rng).unwrap();
    assert_eq!(b.ratchet().skipped_count(), 0);
}

#[test]
fn the_skipped_key_store_is_capped_and_the_oldest_are_evicted() {
    let (mut p, mut a, mut b) = started(b"cap");
    let mut first_of_chain = Vec::new();
    // Three of Alice's chains, each with MAX_SKIP - 1 messages lost and the last delivered, an
    // hour apart (two such chains spend Alice's whole skip budget).
    for hour in 0..3 {
        let mut chain = Vec::new();
        for i in 0..MAX_SKIP {
            chain.push(a.seal(&i.to_le_bytes(), now(), &mut p.rng).unwrap());
        }
        let at = now().plus_secs(hour * SKIP_BUDGET_REFILL_SECS);
        b.open(&chain.last().unwrap().packet, at, &mut p.rng).unwrap();
        assert!(b.ratchet().skipped_count() <= MAX_SKIPPED_KEYS);
        first_of_chain.push(chain.swap_remove(0));
        let r = b.seal(b"ack", now(), &mut p.rng).unwrap();
        a.open(&r.packet, now(), &mut p.rng).unwrap();
    }
    assert_eq!(b.ratchet().skipped_count(), MAX_SKIPPED_KEYS);
    // The oldest chain's keys were evicted: a clear error, not a panic.
    assert!(matches!(
        b.open(&first_of_chain[0].packet, now(), &mut p.rng),
        Err(E2eError::MessageKeyGone { .. })
    ));
    // The newest chain's are kept.
    assert!(b.open(&first_of_chain[2].packet, now(), &mut p.rng).is_ok());
    // The bound survives a save: a state over it is refused.
    let mut json: serde_json::Value = serde_json::from_str(&saved(&b)).unwrap();
    let skipped = json["ratchet"]["skipped"].as_array_mut().unwrap();
    let extra = skipped[0].clone();
    while skipped.len() <= MAX_SKIPPED_KEYS {
        skipped.push(extra.clone());
    }
    assert!(RatchetChat::restore(serde_json::from_value(json).unwrap()).is_err());
}

#[test]
fn drop_oldest_skipped_evicts_the_oldest_keys_and_their_messages_are_gone() {
    let (mut p, mut a, mut b) = started(b"drop oldest");
    // Messages 1..=10 held back, 11 delivered: keys 1..=10 skipped.
    let held: Vec<_> = (1..=10u8)
        .map(|i| a.seal(&[i], now(), &mut p.rng).unwrap())
        .collect();
    let last = a.seal(b"last", now(), &mut p.rng).unwrap();
    b.open(&last.packet, now(), &mut p.rng).unwrap();
    assert_eq!(b.ratchet().skipped_count(), 10);
    assert_eq!(b.chat.drop_oldest_skipped(4), 4);
    assert_eq!(b.ratchet().skipped_count(), 6);
    // The four oldest (messages 1..=4) are gone, with the error any evicted key gives.
    for m in &held[..4] {
        assert!(matches!(
            b.open(&m.packet, now(), &mut p.rng),
            Err(E2eError::MessageKeyGone { .. })
        ));
    }
    // The newer ones still open, out of order.
    for m in held[4..].iter().rev() {
        assert!(b.open(&m.packet, now(), &mut p.rng).is_ok());
    }
    assert_eq!(b.ratchet().skipped_count(), 0);
    // More than stored: all go, no panic.
    assert_eq!(b.chat.drop_oldest_skipped(5), 0);
    assert_eq!(MAX_SKIPPED_KEYS_TOTAL, 2 * MAX_SKIPPED_KEYS);
}

#[test]
fn skipped_keys_expire() {
    let (mut p, mut a, mut b) = started(b"age");
    let lost = a.seal(b"delayed", now(), &mut p.rng).unwrap();
    let next = a.seal(b"next", now(), &mut p.rng).unwrap();
    b.open(&next.packet, now(), &mut p.rng).unwrap();
    let later = UnixTime::from_secs(now().as_secs() + MAX_SKIPPED_AGE_SECS + 1);
    let mut b2 = load(&saved(&b));
    assert_eq!(
        b2.open(&lost.packet, later, &mut p.rng).unwrap_err(),
        E2eError::MessageKeyGone { n: 1 }
    );
    // Within the age it opens.
    assert_eq!(
        b.open(&lost.packet, now().plus_secs(60), &mut p.rng)
            .unwrap()
            .delivery,
        Delivery::Late
    );
}

#[test]
fn forged_packets_spend_the_senders_skip_budget_and_then_cost_nothing() {
    let (mut p, mut a, mut b) = answered(b"budget forged");
    let real = a.seal(b"real", now(), &mut p.rng).unwrap();
    // The real packet with its number raised to MAX_SKIP: the steps before it are walked, then
    // the frame fails. Each such packet costs its sender's budget what it cost us.
    let mut forged = real.packet.clone();
    forged[37..41].copy_from_slice(&MAX_SKIP.to_le_bytes());
    let before = saved(&b);
    let walk = u64::from(MAX_SKIP); // Bob has received nothing of this chain: nr = 0
    let mut paid = 0;
    while paid + walk <= u64::from(SKIP_BUDGET) {
        assert_eq!(b.open(&forged, now(), &mut p.rng).unwrap_err(), E2eError::Decrypt);
        paid += walk;
    }
    // Spent: refused before any step, with the figures.
    assert_eq!(
        b.open(&forged, now(), &mut p.rng).unwrap_err(),
        E2eError::SkipBudget {
            need: walk,
            left: u64::from(SKIP_BUDGET) - paid
        }
    );
    assert_eq!(saved(&b), before, "nothing but the budget changed");
    // A message in order costs nothing: the conversation goes on.
    assert_eq!(b.open(&real.packet, now(), &mut p.rng).unwrap().body, b"real");
    let next = a.seal(b"next", now(), &mut p.rng).unwrap();
    assert_eq!(b.open(&next.packet, now(), &mut p.rng).unwrap().body, b"next");
    // A quarter of an hour later a quarter of the budget is back.
    let later = now().plus_secs(SKIP_BUDGET_REFILL_SECS / 4);
    assert_eq!(
        b.window.skip_budget().left(later),
        u64::from(SKIP_BUDGET) / 4 + (u64::from(SKIP_BUDGET) - paid)
    );
    assert_eq!(
        b.open(&forged, later, &mut p.rng).unwrap_err(),
        E2eError::Decrypt,
        "walked again"
    );
}

#[test]
fn the_skip_budget_refills_after_the_clock_is_set_back() {
    // Review finding: spent while the clock was a day ahead, the budget stayed empty until that
    // future instant came round again.
    let mut b = mtproto_session::skip_budget::SkipBudget::default();
    let ahead = now().plus_secs(86_400);
    b.spend(u64::from(SKIP_BUDGET), ahead).unwrap();
    // The clock corrected: nothing is left yet, and the refill runs from now.
    assert!(matches!(
        b.spend(1, now()),
        Err(E2eError::SkipBudget { need: 1, left: 0 })
    ));
    assert_eq!(
        b.left(now().plus_secs(SKIP_BUDGET_REFILL_SECS)),
        u64::from(SKIP_BUDGET)
    );
    // Huge times and steps saturate: no panic, no overflow.
    assert!(b.spend(u64::MAX, UnixTime::from_nanos(u64::MAX)).is_err());
    assert_eq!(b.left(UnixTime::from_nanos(u64::MAX)), u64::from(SKIP_BUDGET));
}

#[test]
fn a_real_sender_that_skips_too_much_is_refused_until_its_budget_refills() {
    let (mut p, mut a, mut b) = answered(b"budget real");
    // Alice's messages 1..=MAX_SKIP - 1 are lost each time; the next one is delivered. One such
    // jump costs 2 × 999 steps (walked, then stored): two fit in the budget, the third does not.
    let mut jump = |a: &mut common::Side| {
        let mut last = None;
        for i in 0..MAX_SKIP {
            last = Some(a.seal(&i.to_le_bytes(), now(), &mut p.rng).unwrap());
        }
        last.unwrap()
    };
    let first = jump(&mut a);
    let second = jump(&mut a);
    let third = jump(&mut a);
    b.open(&first.packet, now(), &mut p.rng).unwrap();
    b.open(&second.packet, now(), &mut p.rng).unwrap();
    let stored = b.ratchet().skipped_count();
    let e = b.open(&third.packet, now(), &mut p.rng).unwrap_err();
    assert!(
        matches!(e, E2eError::SkipBudget { need, .. } if need == u64::from(MAX_SKIP) - 1),
        "{e:?}"
    );
    assert_eq!(b.ratchet().skipped_count(), stored, "nothing stored for it");
    // Within the hour the budget is back and the same packet opens; the lost ones still open
    // from the store, at no cost.
    let later = now().plus_secs(SKIP_BUDGET_REFILL_SECS);
    assert_eq!(
        b.open(&third.packet, later, &mut p.rng).unwrap().body,
        (MAX_SKIP - 1).to_le_bytes()
    );
    let budget = b.window.skip_budget().left(later);
    let late = a.seal(b"in order", now(), &mut p.rng).unwrap();
    assert_eq!(b.open(&late.packet, later, &mut p.rng).unwrap().body, b"in order");
    assert_eq!(
        b.window.skip_budget().left(later),
        budget,
        "a message in order costs nothing"
    );
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
