//! The end-to-end layer between two peers: a conversation with a tamperable channel between.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use mtproto_crypto::{rand_core::OsRng, IdentitySecret};
use mtproto_session::{ChatState, ChatStateData, Delivery, E2eError, UnixTime};

fn pair() -> (ChatState, ChatState) {
    let a = IdentitySecret::generate(&mut OsRng);
    let b = IdentitySecret::generate(&mut OsRng);
    (
        ChatState::new(&a, b.public()).unwrap(),
        ChatState::new(&b, a.public()).unwrap(),
    )
}

fn now() -> UnixTime {
    UnixTime::from_nanos(1_800_000_000_123_000_000)
}

#[test]
fn a_conversation_both_ways() {
    let (mut alice, mut bob) = pair();
    assert_eq!(alice.fingerprint().to_string(), bob.fingerprint().to_string());
    for i in 0..4u32 {
        let m = alice.seal(format!("a{i}").as_bytes(), now(), &mut OsRng).unwrap();
        let r = bob.open(&m.packet).unwrap();
        assert_eq!(
            (r.body, r.seq, r.delivery, r.random_id),
            (format!("a{i}").into_bytes(), i, Delivery::InOrder, m.random_id)
        );
        assert_eq!(r.sent_at_ms, 1_800_000_000_123);
        let m = bob.seal(b"reply", now(), &mut OsRng).unwrap();
        assert_eq!(alice.open(&m.packet).unwrap().delivery, Delivery::InOrder);
    }
}

#[test]
fn a_replayed_message_is_refused() {
    let (mut alice, mut bob) = pair();
    let m = alice.seal(b"once", now(), &mut OsRng).unwrap();
    bob.open(&m.packet).unwrap();
    assert_eq!(bob.open(&m.packet).unwrap_err(), E2eError::Replay { seq: 0 });
}

#[test]
fn reordering_and_drops_are_reported() {
    let (mut alice, mut bob) = pair();
    let m: Vec<_> = (0..4)
        .map(|i| alice.seal(&[i], now(), &mut OsRng).unwrap())
        .collect();
    bob.open(&m[0].packet).unwrap();
    // m[1] is delayed, m[2] arrives: a gap is reported.
    assert_eq!(
        bob.open(&m[2].packet).unwrap().delivery,
        Delivery::AfterGap { missing: 1..2 }
    );
    assert_eq!(bob.missing(), vec![1]);
    // m[1] arrives late: accepted, marked late, the gap is closed.
    assert_eq!(bob.open(&m[1].packet).unwrap().delivery, Delivery::Late);
    assert!(bob.missing().is_empty());
    assert_eq!(bob.open(&m[3].packet).unwrap().delivery, Delivery::InOrder);
    // Every one of them replayed now is refused.
    for x in &m {
        assert!(matches!(bob.open(&x.packet), Err(E2eError::Replay { .. })));
    }
    // A dropped message stays reported.
    let lost = alice.seal(b"lost", now(), &mut OsRng).unwrap();
    let next = alice.seal(b"next", now(), &mut OsRng).unwrap();
    assert_eq!(
        bob.open(&next.packet).unwrap().delivery,
        Delivery::AfterGap {
            missing: lost.seq..next.seq
        }
    );
    assert_eq!(bob.missing(), vec![lost.seq]);
}

#[test]
fn forged_corrupted_and_reflected_messages_are_refused() {
    let (mut alice, mut bob) = pair();
    let m = alice.seal(b"hello", now(), &mut OsRng).unwrap();
    for bit in (0..m.packet.len() * 8).step_by(5) {
        let mut bad = m.packet.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(bob.open(&bad).unwrap_err(), E2eError::Decrypt, "bit {bit}");
    }
    // Alice's own message reflected back to her: wrong direction.
    assert_eq!(alice.open(&m.packet).unwrap_err(), E2eError::Decrypt);
    // A third party's chat key.
    let (mut eve, _) = pair();
    let forged = eve.seal(b"hi bob", now(), &mut OsRng).unwrap();
    assert_eq!(bob.open(&forged.packet).unwrap_err(), E2eError::Decrypt);
    // The untouched message still opens: nothing above advanced bob's state.
    assert_eq!(bob.open(&m.packet).unwrap().body, b"hello");
}

/// Bob says he received 5 messages from alice, whose counter says none: alice's state went
/// back (it cannot be told from a lie, which costs only bob's own conversation), so her counter
/// moves to 5 rather than her messages being refused for good.
#[test]
fn a_peer_ahead_of_our_counter_moves_it_up() {
    let (mut alice, bob) = pair();
    let mut data: ChatStateData = bob.data();
    data.recv_low = 5;
    let mut ahead = ChatState::restore(data).unwrap();
    let m = ahead.seal(b"x", now(), &mut OsRng).unwrap();
    assert_eq!(alice.open(&m.packet).unwrap().own_counter_moved, Some(0..5));
    assert_eq!(alice.seal(b"y", now(), &mut OsRng).unwrap().seq, 5);
}

#[test]
fn state_survives_serialization() {
    let (mut alice, bob) = pair();
    let saved = serde_json::to_string(&bob.data()).unwrap();
    assert!(format!("{:?}", bob.data()).contains("redacted"));
    let m = alice.seal(b"later", now(), &mut OsRng).unwrap();
    let mut bob = ChatState::restore(serde_json::from_str(&saved).unwrap()).unwrap();
    assert_eq!(bob.open(&m.packet).unwrap().body, b"later");
}

/// Issue 12: one lost message must not make a conversation unreadable. The window slides: the
/// lost message is given up (reported once), and every later message opens.
#[test]
fn one_lost_message_then_five_thousand_all_open() {
    let (mut alice, mut bob) = pair();
    let lost = alice.seal(b"lost", now(), &mut OsRng).unwrap();
    let mut reported = Vec::new();
    for i in 1..=5000u32 {
        let m = alice.seal(&i.to_le_bytes(), now(), &mut OsRng).unwrap();
        let r = bob
            .open(&m.packet)
            .unwrap_or_else(|e| panic!("message {i} refused: {e}"));
        assert_eq!((r.seq, r.body), (i, i.to_le_bytes().to_vec()));
        reported.extend(r.lost);
        assert!(bob.data().recv_above.len() <= mtproto_session::e2e::MAX_GAPS);
    }
    assert_eq!(
        reported,
        vec![0..1],
        "the lost message is reported lost exactly once"
    );
    assert!(bob.missing().is_empty());
    // It arrives after all: delivered once, marked as recovered; a second copy is a replay.
    let r = bob.open(&lost.packet).unwrap();
    assert_eq!(
        (r.seq, r.delivery, r.body),
        (0, Delivery::Recovered, b"lost".to_vec())
    );
    assert_eq!(bob.open(&lost.packet).unwrap_err(), E2eError::Replay { seq: 0 });
}

/// A given-up message that arrives later is told apart from a replay of a received one.
#[test]
fn a_message_later_than_the_window_is_not_a_replay() {
    let (mut alice, mut bob) = pair();
    let m: Vec<_> = (0..1100u32)
        .map(|i| alice.seal(&i.to_le_bytes(), now(), &mut OsRng).unwrap())
        .collect();
    bob.open(&m[0].packet).unwrap();
    // 1..=10 delayed; 11.. arrive; at 1035 the window gives up 1..=10.
    let mut lost = Vec::new();
    for x in &m[11..] {
        lost.extend(bob.open(&x.packet).unwrap().lost.into_iter().flatten());
    }
    assert_eq!(lost, (1..11).collect::<Vec<u32>>());
    // 0 was received: a replay. 5 was given up: it opens, once.
    assert_eq!(bob.open(&m[0].packet).unwrap_err(), E2eError::Replay { seq: 0 });
    assert_eq!(bob.open(&m[5].packet).unwrap().delivery, Delivery::Recovered);
    assert_eq!(bob.open(&m[5].packet).unwrap_err(), E2eError::Replay { seq: 5 });
    assert_eq!(bob.open(&m[4].packet).unwrap().delivery, Delivery::Recovered);
    assert_eq!(bob.open(&m[6].packet).unwrap().delivery, Delivery::Recovered);
}

/// A peer jumping far ahead: accepted, the skipped numbers given up in one range, memory bounded.
#[test]
fn a_peer_jumping_ahead_gives_up_one_range() {
    let (mut a2, b2) = pair();
    let mut d = b2.data();
    d.sent = 5000;
    let mut far = ChatState::restore(d).unwrap();
    let m = far.seal(b"x", now(), &mut OsRng).unwrap();
    let r = a2.open(&m.packet).unwrap();
    assert_eq!(r.delivery, Delivery::AfterGap { missing: 0..5000 });
    assert_eq!(r.lost, vec![0..5000 - mtproto_session::e2e::MAX_GAPS as u32]);
    assert_eq!(a2.missing().len(), mtproto_session::e2e::MAX_GAPS);
}

/// Sequence numbers near the end of the range never overflow.
#[test]
fn the_end_of_the_sequence_range_does_not_panic() {
    let (alice, mut bob) = pair();
    let mut d = alice.data();
    d.sent = u32::MAX - 3;
    let mut alice = ChatState::restore(d).unwrap();
    let m: Vec<_> = (0..3)
        .map(|_| alice.seal(b"x", now(), &mut OsRng).unwrap())
        .collect();
    for x in m.iter().rev() {
        bob.open(&x.packet).unwrap();
    }
    for x in &m {
        assert!(bob.open(&x.packet).is_err());
    }
}

/// A profile saved before the window slid (no `given_up` field) still loads.
#[test]
fn a_state_saved_by_an_older_version_loads() {
    let (_, bob) = pair();
    let mut v = serde_json::to_value(bob.data()).unwrap();
    v.as_object_mut().unwrap().remove("given_up");
    let data: ChatStateData = serde_json::from_value(v).unwrap();
    assert!(data.given_up.is_empty());
    ChatState::restore(data).unwrap();
}

/// The number of a refused message can be given back only while it is the last one sealed.
#[test]
fn only_the_last_sealed_number_can_be_given_back() {
    let (mut alice, mut bob) = pair();
    let a = alice.seal(b"a", now(), &mut OsRng).unwrap();
    let b = alice.seal(b"b", now(), &mut OsRng).unwrap();
    assert!(!alice.release_unsent(a.seq), "not the last");
    assert!(alice.release_unsent(b.seq));
    let c = alice.seal(b"c", now(), &mut OsRng).unwrap();
    assert_eq!(c.seq, b.seq);
    bob.open(&a.packet).unwrap();
    let r = bob.open(&c.packet).unwrap();
    assert_eq!((r.delivery, r.lost), (Delivery::InOrder, vec![]));
}

/// A peer whose state went back (its profile restored from an older copy) reuses numbers: its
/// new messages open as `Reused` (another random id), copies of old ones stay replays, and our
/// reply tells it to move its counter past what we received (review finding F2).
#[test]
fn a_peer_restored_from_an_older_copy_is_heard_not_dropped() {
    let (mut alice, mut bob) = pair();
    let saved = alice.data(); // alice's profile as an old backup has it
    let old: Vec<_> = (0..3)
        .map(|i| alice.seal(&[i], now(), &mut OsRng).unwrap())
        .collect();
    for m in &old {
        assert_eq!(bob.open(&m.packet).unwrap().delivery, Delivery::InOrder);
    }
    // Alice's device is restored from the backup: she seals 0 and 1 again, new messages.
    let mut restored = ChatState::restore(saved).unwrap();
    let again = restored.seal(b"after restore", now(), &mut OsRng).unwrap();
    assert_eq!(again.seq, 0);
    let r = bob.open(&again.packet).unwrap();
    assert_eq!(
        (r.delivery, r.body),
        (Delivery::Reused, b"after restore".to_vec())
    );
    // Copies, old or new, are still replays.
    assert_eq!(bob.open(&again.packet).unwrap_err(), E2eError::Replay { seq: 0 });
    assert_eq!(bob.open(&old[1].packet).unwrap_err(), E2eError::Replay { seq: 1 });
    // Bob's reply says he received 3: alice's counter moves to 3, her next message is in order.
    let mut b_alice = ChatState::restore(bob.data()).unwrap();
    let reply = b_alice.seal(b"reply", now(), &mut OsRng).unwrap();
    let r = restored.open(&reply.packet).unwrap();
    assert_eq!(r.own_counter_moved, Some(1..3));
    let next = restored.seal(b"next", now(), &mut OsRng).unwrap();
    assert_eq!(next.seq, 3);
    assert_eq!(bob.open(&next.packet).unwrap().delivery, Delivery::InOrder);
}

/// A peer claiming to have received far more than we ever sent is an impossible counter, and
/// the refusal changes nothing.
#[test]
fn an_in_seq_far_beyond_our_counter_is_refused() {
    let (mut alice, bob) = pair();
    let mut d = bob.data();
    d.recv_low = mtproto_session::e2e::MAX_OWN_ROLLBACK + 1;
    let mut liar = ChatState::restore(d).unwrap();
    let m = liar.seal(b"x", now(), &mut OsRng).unwrap();
    let before = serde_json::to_string(&alice.data()).unwrap();
    assert!(matches!(alice.open(&m.packet), Err(E2eError::Protocol { .. })));
    assert_eq!(serde_json::to_string(&alice.data()).unwrap(), before);
}

mod window {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// Any subset and order of deliveries (with repeats): no panic, memory bounded, every
        /// sequence number opens at most once, and every one is either opened or reported lost
        /// (or still inside the window).
        #[test]
        fn any_delivery_order_is_safe(
            n in 1usize..2500,
            order in proptest::collection::vec((0usize..2500, any::<bool>()), 0..3000),
        ) {
            let (mut alice, mut bob) = pair();
            let m: Vec<_> = (0..n).map(|_| alice.seal(b"", now(), &mut OsRng).unwrap()).collect();
            let mut opened = BTreeSet::new();
            let mut lost = BTreeSet::new();
            for (i, twice) in order {
                let x = &m[i % n];
                for _ in 0..if twice { 2 } else { 1 } {
                    if let Ok(r) = bob.open(&x.packet) {
                        prop_assert!(opened.insert(r.seq), "seq {} opened twice", r.seq);
                        for range in r.lost {
                            for s in range {
                                prop_assert!(!opened.contains(&s), "{} opened and lost", s);
                                prop_assert!(lost.insert(s), "{} lost twice", s);
                            }
                        }
                    }
                    let d = bob.data();
                    prop_assert!(d.recv_above.len() <= mtproto_session::e2e::MAX_GAPS);
                    prop_assert!(d.given_up.len() <= mtproto_session::e2e::MAX_GIVEN_UP_RANGES);
                    prop_assert!(bob.missing().len() <= mtproto_session::e2e::MAX_GAPS);
                }
            }
        }
    }
}
