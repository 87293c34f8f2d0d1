//! The end-to-end layer per message: seal + open of a 100-byte body under the static chat key
//! (ChatState, today) and under the double ratchet (RatchetChat) — one way (a chain step per
//! message) and ping-pong (a DH ratchet step on every message) — and a session start (X3DH).
//!
//! `CARGO_TARGET_DIR=/work/target-ratchet cargo bench -p mtproto-session --bench ratchet`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use mtproto_crypto::{rand_core::OsRng, IdentitySecret, IdentitySigningKey};
use mtproto_session::{x3dh, ChatState, Prekeys, RatchetChat, UnixTime};

const BODY: &[u8] = &[7u8; 100];

fn now() -> UnixTime {
    UnixTime::from_secs(1_800_000_000)
}

/// A conversation and its peer's window, as a client keeps them.
type Side = (RatchetChat, ChatState);

fn pair() -> (Side, Side) {
    let (alice, bob) = (
        IdentitySecret::generate(&mut OsRng),
        IdentitySecret::generate(&mut OsRng),
    );
    let mut prekeys = Prekeys::new(&bob, &IdentitySigningKey::generate(&mut OsRng), now(), &mut OsRng);
    let opk = prekeys.generate_one_time(1, &mut OsRng).unwrap().pop();
    let mut aw = ChatState::new(&alice, bob.public()).unwrap();
    let mut bw = ChatState::new(&bob, alice.public()).unwrap();
    let (mut a, _) = RatchetChat::initiate(&alice, &prekeys.bundle(opk), &bob.public(), &mut OsRng).unwrap();
    let m = a.seal(&mut aw, b"hi", now(), &mut OsRng).unwrap();
    let (mut b, _) = RatchetChat::accept(&bob, &mut prekeys, &mut bw, &m.packet, now(), &mut OsRng).unwrap();
    let r = b.seal(&mut bw, b"hi", now(), &mut OsRng).unwrap();
    a.open(&mut aw, &r.packet, now(), &mut OsRng).unwrap();
    ((a, aw), (b, bw))
}

fn per_message(c: &mut Criterion) {
    let mut g = c.benchmark_group("e2e_per_message");
    g.sample_size(50).measurement_time(Duration::from_secs(4));

    let (alice, bob) = (
        IdentitySecret::generate(&mut OsRng),
        IdentitySecret::generate(&mut OsRng),
    );
    let mut sa = ChatState::new(&alice, bob.public()).unwrap();
    let mut sb = ChatState::new(&bob, alice.public()).unwrap();
    g.bench_function("static_seal_open", |b| {
        b.iter(|| {
            let m = sa.seal(BODY, now(), &mut OsRng).unwrap();
            black_box(sb.open(&m.packet).unwrap());
        })
    });

    let ((mut a, mut aw), (mut b, mut bw)) = pair();
    g.bench_function("ratchet_seal_open_one_way", |bench| {
        bench.iter(|| {
            let m = a.seal(&mut aw, BODY, now(), &mut OsRng).unwrap();
            black_box(b.open(&mut bw, &m.packet, now(), &mut OsRng).unwrap());
        })
    });

    let ((mut a, mut aw), (mut b, mut bw)) = pair();
    g.bench_function("ratchet_seal_open_ping_pong_2_messages", |bench| {
        bench.iter(|| {
            let m = a.seal(&mut aw, BODY, now(), &mut OsRng).unwrap();
            black_box(b.open(&mut bw, &m.packet, now(), &mut OsRng).unwrap());
            let r = b.seal(&mut bw, BODY, now(), &mut OsRng).unwrap();
            black_box(a.open(&mut aw, &r.packet, now(), &mut OsRng).unwrap());
        })
    });
    g.finish();
}

fn start(c: &mut Criterion) {
    let mut g = c.benchmark_group("e2e_start");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    let (alice, bob) = (
        IdentitySecret::generate(&mut OsRng),
        IdentitySecret::generate(&mut OsRng),
    );
    let mut prekeys = Prekeys::new(&bob, &IdentitySigningKey::generate(&mut OsRng), now(), &mut OsRng);
    let opk = prekeys.generate_one_time(1, &mut OsRng).unwrap().pop();
    let bundle = prekeys.bundle(opk);
    g.bench_function("x3dh_initiate", |b| {
        b.iter(|| black_box(x3dh::initiate(&alice, &bundle, &bob.public(), &mut OsRng).unwrap()))
    });
    let a = x3dh::initiate(&alice, &bundle, &bob.public(), &mut OsRng).unwrap();
    g.bench_function("x3dh_respond", |b| {
        b.iter(|| black_box(x3dh::respond(&bob, &prekeys, &a.start).unwrap()))
    });
    g.bench_function("session_start_initiate_seal_accept", |b| {
        b.iter(|| {
            // Fresh windows (each a static chat key: the cost `initiate` and `accept` carried
            // when they made their own windows).
            let mut aw = ChatState::new(&alice, bob.public()).unwrap();
            let mut bw = ChatState::new(&bob, alice.public()).unwrap();
            let (mut chat, _) = RatchetChat::initiate(&alice, &bundle, &bob.public(), &mut OsRng).unwrap();
            let m = chat.seal(&mut aw, BODY, now(), &mut OsRng).unwrap();
            // `accept` deletes the one-time prekey; a copy of the store per iteration keeps it.
            let mut p = prekeys.clone();
            black_box(RatchetChat::accept(&bob, &mut p, &mut bw, &m.packet, now(), &mut OsRng).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, per_message, start);
criterion_main!(benches);
