//! The prekey calls through a `Relay` (real envelopes from a real client session): what the
//! relay checks before anything is stored (identity key published, signature over it, key
//! sizes and low-order points), a resent fetch, the hand-out budget, and a whole X3DH start
//! made from what the relay handed out; and the hand-out budgets against an attacker with
//! accounts (the review of issue 15 found each of the last four tests draining a peer before
//! its fix). The engines' side is the conformance suite's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::{atomic::AtomicU64, Arc};

use common::{client, envelope, Manual};
use mtproto_crypto::{rand_core::OsRng, IdentitySecret, IdentitySigningKey, RecoveryCode, ServerSigningKey};
use mtproto_session::{wire::Bytes, x3dh, ClientId, ClientSession, UnixTime};
use relay_core::api::{
    Call, OneTimePrekeyUpload, PrekeyBundleAnswer, PublishAnswer, PublishPrekeysAnswer, SignedPrekeyUpload,
};
use relay_core::{limits::Rate, MemoryEngine, Relay, RelayConfig, RelayError};

const T0: u64 = 1_800_000_000;

fn at() -> UnixTime {
    UnixTime::from_secs(T0)
}

fn relay(config: RelayConfig) -> Relay {
    Relay::new(
        Arc::new(MemoryEngine::new()),
        ServerSigningKey::generate(&mut OsRng),
        config,
    )
    .with_clock(Arc::new(Manual(AtomicU64::new(T0))))
}

/// Seals `call`, has the relay handle it, opens the answer.
async fn call<T: serde::de::DeserializeOwned>(
    relay: &Relay,
    session: &mut ClientSession,
    call: &Call,
) -> Result<T, RelayError> {
    let packet = session
        .encode_request(&serde_json::to_vec(call).unwrap(), at(), &mut OsRng)
        .unwrap()
        .packet;
    answer(relay, session, call, &packet).await
}

async fn answer<T: serde::de::DeserializeOwned>(
    relay: &Relay,
    session: &mut ClientSession,
    call: &Call,
    packet: &[u8],
) -> Result<T, RelayError> {
    let out = relay.handle(call.endpoint(), &envelope(packet)).await?;
    let body = session.decode_response(&out.packet.0, at()).unwrap().body;
    Ok(serde_json::from_slice(&body).unwrap())
}

/// A client with an identity key and prekeys for it.
struct Peer {
    session: ClientSession,
    identity: IdentitySecret,
    signing: IdentitySigningKey,
    prekeys: x3dh::Prekeys,
}

async fn peer(relay: &Relay, name: &str) -> Peer {
    let identity = IdentitySecret::generate(&mut OsRng);
    let signing = IdentitySigningKey::generate(&mut OsRng);
    let prekeys = x3dh::Prekeys::new(&identity, &signing, at(), &mut OsRng);
    Peer {
        session: client(relay, name, at()).await,
        identity,
        signing,
        prekeys,
    }
}

impl Peer {
    async fn publish_key(&mut self, relay: &Relay) -> u32 {
        let c = Call::PublishKey {
            identity_key: Bytes(self.identity.public().as_bytes().to_vec()),
        };
        call::<PublishAnswer>(relay, &mut self.session, &c)
            .await
            .unwrap()
            .key_version
    }

    /// How many one-time prekeys the relay holds (an empty publish asks).
    async fn held(&mut self, relay: &Relay) -> usize {
        let c = self.publish_call(0);
        call::<PublishPrekeysAnswer>(relay, &mut self.session, &c)
            .await
            .unwrap()
            .one_time_prekeys
    }

    fn publish_call(&mut self, one_time: usize) -> Call {
        let keys = self.prekeys.generate_one_time(one_time, &mut OsRng).unwrap();
        let bundle = self.prekeys.bundle(None);
        Call::PublishPrekeys {
            signing_key: Bytes(bundle.signing_key.to_vec()),
            signed_prekey: SignedPrekeyUpload::from(&bundle.signed_prekey),
            one_time_prekeys: keys.iter().map(OneTimePrekeyUpload::from).collect(),
        }
    }
}

fn fetch_call(name: &str) -> Call {
    Call::PrekeyBundle {
        peer: ClientId::new(name).unwrap(),
    }
}

fn refused_field<T: std::fmt::Debug>(r: Result<T, RelayError>) -> String {
    match r {
        Err(RelayError::InvalidField { field, .. }) => field,
        other => panic!("not an invalid field: {other:?}"),
    }
}

#[tokio::test]
async fn prekeys_are_checked_against_the_identity_key_published_now_before_anything_is_stored() {
    let relay = relay(RelayConfig::default());
    let mut bob = peer(&relay, "bob").await;
    let mut carol = peer(&relay, "carol").await;
    // No identity key published yet.
    let c = bob.publish_call(3);
    let r = call::<PublishPrekeysAnswer>(&relay, &mut bob.session, &c).await;
    assert_eq!(r.unwrap_err(), RelayError::NoIdentityKey);
    bob.publish_key(&relay).await;
    // Signed for another identity key.
    let other = x3dh::Prekeys::new(
        &IdentitySecret::generate(&mut OsRng),
        &bob.signing,
        at(),
        &mut OsRng,
    );
    let mut forged = bob.publish_call(3);
    if let Call::PublishPrekeys { signed_prekey, .. } = &mut forged {
        *signed_prekey = SignedPrekeyUpload::from(&other.signed_prekey());
    }
    let r = call::<PublishPrekeysAnswer>(&relay, &mut bob.session, &forged).await;
    assert_eq!(refused_field(r), "signed_prekey.signature");
    // A low-order one-time prekey (all zero), a short signing key.
    let mut low = bob.publish_call(2);
    if let Call::PublishPrekeys { one_time_prekeys, .. } = &mut low {
        one_time_prekeys[1].public = Bytes(vec![0; 32]);
    }
    let r = call::<PublishPrekeysAnswer>(&relay, &mut bob.session, &low).await;
    assert_eq!(refused_field(r), "one_time_prekeys[1].public");
    let mut short = bob.publish_call(0);
    if let Call::PublishPrekeys { signing_key, .. } = &mut short {
        signing_key.0.pop();
    }
    let r = call::<PublishPrekeysAnswer>(&relay, &mut bob.session, &short).await;
    assert_eq!(refused_field(r), "signing_key");
    // None of it was stored.
    let r = call::<PrekeyBundleAnswer>(&relay, &mut carol.session, &fetch_call("bob")).await;
    assert_eq!(r.unwrap_err(), RelayError::NoPrekeys);
    let r = call::<PrekeyBundleAnswer>(&relay, &mut carol.session, &fetch_call("nobody")).await;
    assert_eq!(r.unwrap_err(), RelayError::UnknownPeer);

    let c = bob.publish_call(4);
    let a: PublishPrekeysAnswer = call(&relay, &mut bob.session, &c).await.unwrap();
    assert_eq!(a.one_time_prekeys, 4);
    // Carol starts a conversation from the bundle the relay hands out; Bob answers it.
    let got: PrekeyBundleAnswer = call(&relay, &mut carol.session, &fetch_call("bob"))
        .await
        .unwrap();
    assert_eq!(got.key_version, 1);
    let start = x3dh::initiate(&carol.identity, &got.bundle, &bob.identity.public(), &mut OsRng).unwrap();
    assert!(start.one_time_prekey.is_some());
    let answered = x3dh::respond(&bob.identity, &bob.prekeys, &start.start).unwrap();
    assert_eq!(start.shared_secret().expose(), answered.shared_secret().expose());
    assert_eq!(bob.held(&relay).await, 3, "one handed out");

    // A new identity key: the prekeys signed for the old one are no longer handed out.
    bob.identity = IdentitySecret::generate(&mut OsRng);
    assert_eq!(bob.publish_key(&relay).await, 2);
    let r = call::<PrekeyBundleAnswer>(&relay, &mut carol.session, &fetch_call("bob")).await;
    assert_eq!(r.unwrap_err(), RelayError::NoPrekeys);
    // The old prekeys' signature is over the old key: refused for the new one.
    let stale = bob.publish_call(1);
    let r = call::<PublishPrekeysAnswer>(&relay, &mut bob.session, &stale).await;
    assert_eq!(refused_field(r), "signed_prekey.signature");
}

#[tokio::test]
async fn a_resent_fetch_gets_the_same_bundle_and_takes_nothing_more() {
    let relay = relay(RelayConfig::default());
    let mut bob = peer(&relay, "bob").await;
    let mut carol = peer(&relay, "carol").await;
    bob.publish_key(&relay).await;
    let c = bob.publish_call(3);
    let _: PublishPrekeysAnswer = call(&relay, &mut bob.session, &c).await.unwrap();
    let fetch = fetch_call("bob");
    let packet = carol
        .session
        .encode_request(&serde_json::to_vec(&fetch).unwrap(), at(), &mut OsRng)
        .unwrap()
        .packet;
    // The answer to the resend repeats the first (same msg_id), which a session accepts once:
    // a copy of the session, as it was, opens it.
    let mut before = ClientSession::restore(carol.session.state()).unwrap();
    let first: PrekeyBundleAnswer = answer(&relay, &mut carol.session, &fetch, &packet).await.unwrap();
    let again: PrekeyBundleAnswer = answer(&relay, &mut before, &fetch, &packet).await.unwrap();
    assert!(first.bundle.one_time_prekey.is_some());
    assert_eq!(first, again);
    let next: PrekeyBundleAnswer = call(&relay, &mut carol.session, &fetch).await.unwrap();
    assert_ne!(next.bundle.one_time_prekey, first.bundle.one_time_prekey);
    assert!(next.bundle.one_time_prekey.is_some());
    assert_eq!(bob.held(&relay).await, 1);
}

#[tokio::test]
async fn past_its_budget_a_requester_gets_bundles_without_a_one_time_prekey() {
    let relay = relay(RelayConfig {
        prekey_handouts: Rate {
            burst: 2,
            per_sec: 0.0,
        },
        ..RelayConfig::default()
    });
    let mut bob = peer(&relay, "bob").await;
    let mut mallory = peer(&relay, "mallory").await;
    let mut carol = peer(&relay, "carol").await;
    bob.publish_key(&relay).await;
    let c = bob.publish_call(10);
    let _: PublishPrekeysAnswer = call(&relay, &mut bob.session, &c).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        let a: PrekeyBundleAnswer = call(&relay, &mut mallory.session, &fetch_call("bob"))
            .await
            .unwrap();
        a.bundle.verify().unwrap();
        got.push(a.bundle.one_time_prekey.is_some());
    }
    assert_eq!(got, [true, true, false, false, false]);
    // Bob still holds the rest, and another requester gets one.
    let a: PrekeyBundleAnswer = call(&relay, &mut carol.session, &fetch_call("bob"))
        .await
        .unwrap();
    assert!(a.bundle.one_time_prekey.is_some());
    assert_eq!(bob.held(&relay).await, 7);
}

#[tokio::test]
async fn a_publish_of_more_than_one_hundred_is_refused_and_two_hundred_are_held_at_most() {
    let relay = relay(RelayConfig::default());
    let mut bob = peer(&relay, "bob").await;
    bob.publish_key(&relay).await;
    let mut c = bob.publish_call(1);
    if let Call::PublishPrekeys { one_time_prekeys, .. } = &mut c {
        let one = one_time_prekeys[0].clone();
        assert!(bob.prekeys.consume_one_time(one.id));
        *one_time_prekeys = vec![one; 101];
    }
    let r = call::<PublishPrekeysAnswer>(&relay, &mut bob.session, &c).await;
    assert_eq!(refused_field(r), "one_time_prekeys");
    assert_eq!(bob.held(&relay).await, 0);
    for expected in [100, 200] {
        let c = bob.publish_call(100);
        let a: PublishPrekeysAnswer = call(&relay, &mut bob.session, &c).await.unwrap();
        assert_eq!(a.one_time_prekeys, expected);
    }
    // One more (from a client that lost track; its own store makes room by dropping one it
    // published): refused whole with its own code.
    assert!((1..=400).any(|id| bob.prekeys.consume_one_time(id)));
    let c = bob.publish_call(1);
    let r = call::<PublishPrekeysAnswer>(&relay, &mut bob.session, &c).await;
    assert!(
        matches!(
            r,
            Err(RelayError::PrekeyQuota {
                held: 200,
                adding: 1,
                max: 200
            })
        ),
        "{r:?}"
    );
}

/// Registers `name` (optionally taking it over with `recover`), with `register` as recovery key.
async fn register(
    relay: &Relay,
    name: &str,
    register: Option<&RecoveryCode>,
    recover: Option<&RecoveryCode>,
) -> ClientSession {
    common::register(relay, name, at(), register, recover).await
}

fn peers_call() -> Call {
    Call::lookup_peers(vec![ClientId::new("bob").unwrap()])
}

fn budget(per_requester: u32, per_peer: u32) -> RelayConfig {
    RelayConfig {
        prekey_handouts: Rate {
            burst: per_requester,
            per_sec: 0.0,
        },
        prekey_handouts_per_target: Rate {
            burst: per_peer,
            per_sec: 0.0,
        },
        ..RelayConfig::default()
    }
}

/// Two nodes on one Redis; mallory's budget is 2. Node A holds a cached (stale) session; a
/// /peers with msg_id X is committed via node B; then a /prekey_bundle with the same msg_id X
/// on node A passes the stale cache, takes a one-time prekey in bob's slot, loses its commit,
/// and is answered bad_msg. Before the fix the take was never charged, and 30 rounds emptied
/// bob; now each round pays from mallory's budget first, so at most 2 are lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fetches_on_two_nodes_are_paid_for() {
    let server = relay_test_support::RedisServer::start();
    let clock = Arc::new(Manual(AtomicU64::new(T0)));
    let mk = |e: relay_core::RedisEngine| {
        Relay::new(Arc::new(e), ServerSigningKey::from_seed([7; 32]), budget(2, 1000))
            .with_clock(clock.clone())
    };
    let a = mk(relay_core::RedisEngine::connect(&server.url, "shared")
        .await
        .unwrap());
    let b = mk(relay_core::RedisEngine::connect(&server.url, "shared")
        .await
        .unwrap());
    let mut bob = peer(&a, "bob").await;
    bob.publish_key(&a).await;
    let c = bob.publish_call(30);
    let _: PublishPrekeysAnswer = call(&a, &mut bob.session, &c).await.unwrap();
    let mut m = register(&a, "mallory", None, None).await;
    for _ in 0..30 {
        let _: serde_json::Value = call(&a, &mut m, &peers_call()).await.unwrap();
        let mut twin = ClientSession::restore(m.state()).unwrap();
        let _: serde_json::Value = call(&b, &mut m, &peers_call()).await.unwrap();
        let _ = call::<PrekeyBundleAnswer>(&a, &mut twin, &fetch_call("bob")).await;
    }
    let held = bob.held(&a).await;
    assert!(
        held >= 28,
        "bob holds {held} of 30: drained past mallory's budget of 2"
    );
    // And her budget is spent: ordinary fetches get no one-time prekey.
    let x: PrekeyBundleAnswer = call(&a, &mut m, &fetch_call("bob")).await.unwrap();
    assert_eq!(x.bundle.one_time_prekey, None);
}

/// The requester's budget is per account: recovering one's own name (a new auth key) three
/// times does not refill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_does_not_refill_the_requesters_budget() {
    let a = relay(budget(2, 1000));
    let mut bob = peer(&a, "bob").await;
    bob.publish_key(&a).await;
    let c = bob.publish_call(10);
    let _: PublishPrekeysAnswer = call(&a, &mut bob.session, &c).await.unwrap();
    let code = RecoveryCode::generate(&mut OsRng);
    let mut m = register(&a, "mallory", Some(&code), None).await;
    let mut handed = 0;
    for round in 0..4 {
        if round > 0 {
            m = register(&a, "mallory", None, Some(&code)).await;
        }
        for _ in 0..3 {
            let x: PrekeyBundleAnswer = call(&a, &mut m, &fetch_call("bob")).await.unwrap();
            handed += usize::from(x.bundle.one_time_prekey.is_some());
        }
    }
    assert_eq!(handed, 2, "one account, one budget");
    assert_eq!(bob.held(&a).await, 8);
}

/// Many accounts together are held by the per-peer budget: six requesters with budgets of 50
/// get 3 of bob's one-time prekeys in all when bob's budget is 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_accounts_together_are_held_by_the_peers_budget() {
    let a = relay(budget(50, 3));
    let mut bob = peer(&a, "bob").await;
    bob.publish_key(&a).await;
    let c = bob.publish_call(20);
    let _: PublishPrekeysAnswer = call(&a, &mut bob.session, &c).await.unwrap();
    let mut handed = 0;
    for i in 0..6 {
        let mut m = register(&a, &format!("m{i}"), None, None).await;
        for _ in 0..3 {
            let x: PrekeyBundleAnswer = call(&a, &mut m, &fetch_call("bob")).await.unwrap();
            handed += usize::from(x.bundle.one_time_prekey.is_some());
        }
    }
    assert_eq!(handed, 3);
    assert_eq!(bob.held(&a).await, 17);
}

/// A budget of 0 (an operator turning hand-outs off) hands out none, to anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_budget_hands_out_none() {
    for (per_requester, per_peer) in [(0, 100), (50, 0)] {
        let a = relay(budget(per_requester, per_peer));
        let mut bob = peer(&a, "bob").await;
        bob.publish_key(&a).await;
        let c = bob.publish_call(10);
        let _: PublishPrekeysAnswer = call(&a, &mut bob.session, &c).await.unwrap();
        for i in 0..3 {
            let mut m = register(&a, &format!("m{i}"), None, None).await;
            let x: PrekeyBundleAnswer = call(&a, &mut m, &fetch_call("bob")).await.unwrap();
            assert_eq!(
                x.bundle.one_time_prekey, None,
                "budgets {per_requester}/{per_peer}"
            );
        }
        assert_eq!(bob.held(&a).await, 10);
    }
}
