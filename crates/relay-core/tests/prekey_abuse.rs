//! The hand-out budgets of one-time prekeys against an attacker with accounts (the review of
//! issue 15 found each of these draining a peer before the fix): through `Relay` in-process,
//! with real client sessions and envelopes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    clippy::indexing_slicing
)]

mod common;

use std::sync::{atomic::AtomicU64, Arc};

use common::{envelope, Manual};
use mtproto_crypto::{rand_core::OsRng, IdentitySecret, IdentitySigningKey, RecoveryCode, ServerSigningKey};
use mtproto_session::{wire::Bytes, x3dh, ClientHandshake, ClientId, ClientSession, ServerPin, UnixTime};
use relay_core::api::{
    Call, OneTimePrekeyUpload, PrekeyBundleAnswer, PublishAnswer, PublishPrekeysAnswer, SignedPrekeyUpload,
};
use relay_core::{limits::Rate, Relay, RelayConfig, RelayError};

const T0: u64 = 1_800_000_000;

fn at() -> UnixTime {
    UnixTime::from_secs(T0)
}

async fn call<T: serde::de::DeserializeOwned>(
    relay: &Relay,
    session: &mut ClientSession,
    call: &Call,
) -> Result<T, RelayError> {
    let packet = session
        .encode_request(&serde_json::to_vec(call).unwrap(), at(), &mut OsRng)
        .unwrap()
        .packet;
    let out = relay.handle(call.endpoint(), &envelope(&packet)).await?;
    let body = session.decode_response(&out.packet.0, at()).unwrap().body;
    Ok(serde_json::from_slice(&body).unwrap())
}

/// Registers `name` (optionally taking it over with `recover`), with `register` as recovery key.
async fn register(
    relay: &Relay,
    name: &str,
    register: Option<&RecoveryCode>,
    recover: Option<&RecoveryCode>,
) -> ClientSession {
    let pin = ServerPin::Key(relay.server_key().public());
    let (c, req) = ClientHandshake::start(pin, ClientId::new(name).unwrap(), &mut OsRng);
    let res = relay.req_pq(&req).await.unwrap();
    let (c, req) = c.handle_res_pq(&res).unwrap();
    let res = relay.req_dh_params(&req).await.unwrap();
    let (c, mut req) = c.handle_server_dh_params(&res, at(), &mut OsRng).unwrap();
    c.prove_recovery(&mut req, register.map(RecoveryCode::public), recover);
    let res = relay.set_client_dh_params(&req).await.unwrap();
    c.handle_dh_gen_ok(&res).unwrap()
}

struct Peer {
    session: ClientSession,
    identity: IdentitySecret,
    prekeys: x3dh::Prekeys,
}

async fn peer(relay: &Relay, name: &str) -> Peer {
    let identity = IdentitySecret::generate(&mut OsRng);
    let signing = IdentitySigningKey::generate(&mut OsRng);
    let prekeys = x3dh::Prekeys::new(&identity, &signing, at(), &mut OsRng);
    Peer {
        session: register(relay, name, None, None).await,
        identity,
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
    fn publish_call(&mut self, n: usize) -> Call {
        let keys = self.prekeys.generate_one_time(n, &mut OsRng).unwrap();
        let bundle = self.prekeys.bundle(None);
        Call::PublishPrekeys {
            signing_key: Bytes(bundle.signing_key.to_vec()),
            signed_prekey: SignedPrekeyUpload::from(&bundle.signed_prekey),
            one_time_prekeys: keys.iter().map(OneTimePrekeyUpload::from).collect(),
        }
    }
    async fn held(&mut self, relay: &Relay) -> usize {
        let c = self.publish_call(0);
        call::<PublishPrekeysAnswer>(relay, &mut self.session, &c)
            .await
            .unwrap()
            .one_time_prekeys
    }
}

fn fetch(name: &str) -> Call {
    Call::PrekeyBundle {
        peer: ClientId::new(name).unwrap(),
    }
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

fn memory_relay(config: RelayConfig, seed: [u8; 32]) -> Relay {
    Relay::new(
        Arc::new(relay_core::MemoryEngine::new()),
        ServerSigningKey::from_seed(seed),
        config,
    )
    .with_clock(Arc::new(Manual(AtomicU64::new(T0))))
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
        let _ = call::<PrekeyBundleAnswer>(&a, &mut twin, &fetch("bob")).await;
    }
    let held = bob.held(&a).await;
    assert!(
        held >= 28,
        "bob holds {held} of 30: drained past mallory's budget of 2"
    );
    // And her budget is spent: ordinary fetches get no one-time prekey.
    let x: PrekeyBundleAnswer = call(&a, &mut m, &fetch("bob")).await.unwrap();
    assert_eq!(x.bundle.one_time_prekey, None);
}

/// The requester's budget is per account: recovering one's own name (a new auth key) three
/// times does not refill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_does_not_refill_the_requesters_budget() {
    let a = memory_relay(budget(2, 1000), [9; 32]);
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
            let x: PrekeyBundleAnswer = call(&a, &mut m, &fetch("bob")).await.unwrap();
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
    let a = memory_relay(budget(50, 3), [10; 32]);
    let mut bob = peer(&a, "bob").await;
    bob.publish_key(&a).await;
    let c = bob.publish_call(20);
    let _: PublishPrekeysAnswer = call(&a, &mut bob.session, &c).await.unwrap();
    let mut handed = 0;
    for i in 0..6 {
        let mut m = register(&a, &format!("m{i}"), None, None).await;
        for _ in 0..3 {
            let x: PrekeyBundleAnswer = call(&a, &mut m, &fetch("bob")).await.unwrap();
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
        let a = memory_relay(budget(per_requester, per_peer), [11; 32]);
        let mut bob = peer(&a, "bob").await;
        bob.publish_key(&a).await;
        let c = bob.publish_call(10);
        let _: PublishPrekeysAnswer = call(&a, &mut bob.session, &c).await.unwrap();
        for i in 0..3 {
            let mut m = register(&a, &format!("m{i}"), None, None).await;
            let x: PrekeyBundleAnswer = call(&a, &mut m, &fetch("bob")).await.unwrap();
            assert_eq!(
                x.bundle.one_time_prekey, None,
                "budgets {per_requester}/{per_peer}"
            );
        }
        assert_eq!(bob.held(&a).await, 10);
    }
}
