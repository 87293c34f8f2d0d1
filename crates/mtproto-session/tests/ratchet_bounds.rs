//! The double ratchet's bounds: how far a header may skip, how many skipped keys are kept and
//! for how long, and the per-sender skip budget that makes forged packets cheap to refuse.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use common::{answered, load, now, saved, started};
use mtproto_session::{
    ratchet::{MAX_SKIP, MAX_SKIPPED_AGE_SECS, MAX_SKIPPED_KEYS, MAX_SKIPPED_KEYS_TOTAL},
    skip_budget::{SKIP_BUDGET, SKIP_BUDGET_REFILL_SECS},
    Delivery, E2eError, RatchetChat, UnixTime,
};

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
