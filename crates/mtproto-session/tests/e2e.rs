//! The end-to-end layer between two peers: a conversation with a tamperable channel between.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use mtproto_crypto::{rand_core::OsRng, IdentitySecret};
use mtproto_session::{ChatState, ChatStateData, Delivery, Error, UnixTime};

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
    assert_eq!(bob.open(&m.packet).unwrap_err(), Error::E2eReplay { seq: 0 });
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
        assert!(matches!(bob.open(&x.packet), Err(Error::E2eReplay { .. })));
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
        assert_eq!(bob.open(&bad).unwrap_err(), Error::Decrypt, "bit {bit}");
    }
    // Alice's own message reflected back to her: wrong direction.
    assert_eq!(alice.open(&m.packet).unwrap_err(), Error::Decrypt);
    // A third party's chat key.
    let (mut eve, _) = pair();
    let forged = eve.seal(b"hi bob", now(), &mut OsRng).unwrap();
    assert_eq!(bob.open(&forged.packet).unwrap_err(), Error::Decrypt);
    // The untouched message still opens: nothing above advanced bob's state.
    assert_eq!(bob.open(&m.packet).unwrap().body, b"hello");
}

#[test]
fn impossible_counters_are_refused() {
    let (alice, bob) = pair();
    // Bob's state claims he received 5 messages from alice, who sent none.
    let mut data: ChatStateData = bob.data();
    data.recv_low = 5;
    let mut lying_bob = ChatState::restore(data).unwrap();
    let m = lying_bob.seal(b"x", now(), &mut OsRng).unwrap();
    let mut alice = alice;
    assert!(matches!(alice.open(&m.packet), Err(Error::E2eProtocol { .. })));
    // A peer jumping thousands of messages ahead.
    let (mut a2, b2) = pair();
    let mut d = b2.data();
    d.sent = 5000;
    let mut far = ChatState::restore(d).unwrap();
    let m = far.seal(b"x", now(), &mut OsRng).unwrap();
    assert!(matches!(a2.open(&m.packet), Err(Error::E2eProtocol { .. })));
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
