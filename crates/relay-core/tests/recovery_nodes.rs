//! A recovery on one node of a shared store, and the device the name moved away from on others:
//! those nodes still cache the old key and session, and a poll that acknowledges nothing is
//! checked against them and not committed. They must not hand that device the mailbox (the
//! attacker review of session 11 found they did, for up to 12 hours), nor deliver a message it
//! sends as the name (on Redis Cluster they did once per node: session 12's review).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use common::{envelope, Manual};
use mtproto_crypto::{rand_core::OsRng, RecoveryCode, ServerSigningKey};
use mtproto_session::{wire::Bytes, ClientId, ClientSession, UnixTime};
use relay_core::api::{Call, Endpoint};
use relay_core::{Relay, RelayConfig, RelayError};

const T0: u64 = 1_800_000_000;

fn at() -> UnixTime {
    UnixTime::from_secs(T0)
}

/// Registers `name` on `relay` with `register` as its recovery key, taking the name over with
/// `recover` when given.
async fn register(
    relay: &Relay,
    name: &str,
    register: &RecoveryCode,
    recover: Option<&RecoveryCode>,
) -> ClientSession {
    common::register(relay, name, at(), Some(register), recover).await
}

/// `call` from `c` on `relay`: the decoded answer's body, or the relay's refusal.
async fn call(
    relay: &Relay,
    c: &mut ClientSession,
    endpoint: Endpoint,
    call: &Call,
) -> Result<Vec<u8>, RelayError> {
    let packet = c
        .encode_request(&serde_json::to_vec(call).unwrap(), at(), &mut OsRng)
        .unwrap()
        .packet;
    let answer = relay.handle(endpoint, &envelope(&packet)).await?;
    Ok(c.decode_response(&answer.packet.0, at()).unwrap().body)
}

fn idle_poll() -> Call {
    Call::PollMessages {
        ack: Vec::new(),
        timeout_ms: Some(0),
        limit: None,
    }
}

fn send_to(to: &str, body: &[u8]) -> Call {
    Call::SendMessage {
        target_peer: ClientId::new(to).unwrap(),
        payload: Bytes(body.to_vec()),
        key_version: None,
    }
}

/// The payloads of a poll's answer.
fn payloads(answer: &[u8]) -> Vec<String> {
    let answer: serde_json::Value = serde_json::from_slice(answer).unwrap();
    answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap().to_owned())
        .collect()
}

/// Alice's first device works through nodes `b` and `c`, which cache its key and session; her
/// name moves to a new device through node `a`. Then the old device tries to send as Alice
/// through `c` and to read her mail through `b`.
async fn the_old_device_after_a_recovery(a: Relay, b: Relay, c: Relay) {
    let code = RecoveryCode::generate(&mut OsRng);
    let mut old = register(&b, "alice", &code, None).await;
    for node in [&b, &b, &c, &c] {
        call(node, &mut old, Endpoint::PollMessages, &idle_poll())
            .await
            .unwrap();
    }
    let mut new = register(&a, "alice", &RecoveryCode::generate(&mut OsRng), Some(&code)).await;
    let mut bob = register(&a, "bob", &RecoveryCode::generate(&mut OsRng), None).await;

    // A send through c, which checks it against its cached session: refused, and nothing reaches
    // Bob (on Redis Cluster the delivery runs before the sender's commit; it used to deliver).
    let forged = call(&c, &mut old, Endpoint::SecureMessage, &send_to("bob", b"forged")).await;
    assert!(matches!(forged, Err(RelayError::UnknownAuthKey)), "{forged:?}");
    let bobs = call(&a, &mut bob, Endpoint::PollMessages, &idle_poll())
        .await
        .unwrap();
    assert_eq!(payloads(&bobs), Vec::<String>::new());

    // Bob writes to Alice; the old device polls b, acknowledging nothing (not committed).
    call(
        &a,
        &mut bob,
        Endpoint::SecureMessage,
        &send_to("alice", b"for alice"),
    )
    .await
    .unwrap();
    let refused = call(&b, &mut old, Endpoint::PollMessages, &idle_poll()).await;
    assert!(matches!(refused, Err(RelayError::UnknownAuthKey)), "{refused:?}");
    let again = call(&b, &mut old, Endpoint::PollMessages, &idle_poll()).await;
    assert!(matches!(again, Err(RelayError::UnknownAuthKey)), "{again:?}");

    // The new device gets the message, on either node.
    let got = call(&b, &mut new, Endpoint::PollMessages, &idle_poll())
        .await
        .unwrap();
    assert_eq!(payloads(&got).len(), 1);
}

fn node(engine: relay_core::RedisEngine) -> Relay {
    Relay::new(
        Arc::new(engine),
        ServerSigningKey::from_seed([7; 32]),
        RelayConfig::default(),
    )
    .with_clock(Arc::new(Manual(AtomicU64::new(T0))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_redis_the_old_device_can_neither_send_nor_read() {
    let server = relay_test_support::RedisServer::start();
    let connect = || relay_core::RedisEngine::connect(&server.url, "shared");
    let (a, b, c) = (
        connect().await.unwrap(),
        connect().await.unwrap(),
        connect().await.unwrap(),
    );
    the_old_device_after_a_recovery(node(a), node(b), node(c)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_cluster_the_old_device_can_neither_send_nor_read() {
    let cluster = relay_test_support::RedisCluster::start();
    let connect = || relay_core::RedisEngine::connect_cluster(&cluster.urls, "shared");
    let (a, b, c) = (
        connect().await.unwrap(),
        connect().await.unwrap(),
        connect().await.unwrap(),
    );
    assert!(a.is_cluster());
    the_old_device_after_a_recovery(node(a), node(b), node(c)).await;
}
