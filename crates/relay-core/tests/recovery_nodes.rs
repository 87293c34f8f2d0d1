//! A recovery on one node of a shared store, and the device the name moved away from on another:
//! that node still caches the old key and session, and a poll that acknowledges nothing is
//! checked against them and not committed. It must not hand that device the mailbox (the
//! attacker review of session 11 found it did, for up to 12 hours).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use common::{envelope, Manual};
use mtproto_crypto::{rand_core::OsRng, RecoveryCode, ServerSigningKey};
use mtproto_session::{wire::Bytes, ClientHandshake, ClientId, ClientSession, ServerPin, UnixTime};
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
    let pin = ServerPin::Key(relay.server_key().public());
    let (c, req) = ClientHandshake::start(pin, ClientId::new(name).unwrap(), &mut OsRng);
    let res = relay.req_pq(&req).await.unwrap();
    let (c, req) = c.handle_res_pq(&res).unwrap();
    let res = relay.req_dh_params(&req).await.unwrap();
    let (c, mut req) = c.handle_server_dh_params(&res, at(), &mut OsRng).unwrap();
    c.prove_recovery(&mut req, Some(register.public()), recover);
    let res = relay.set_client_dh_params(&req).await.unwrap();
    c.handle_dh_gen_ok(&res).unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_a_name_moved_away_from_reads_nothing_on_another_node() {
    let server = relay_test_support::RedisServer::start();
    let clock = Arc::new(Manual(AtomicU64::new(T0)));
    let node = |e: relay_core::RedisEngine| {
        Relay::new(
            Arc::new(e),
            ServerSigningKey::from_seed([7; 32]),
            RelayConfig::default(),
        )
        .with_clock(clock.clone())
    };
    let a = node(
        relay_core::RedisEngine::connect(&server.url, "shared")
            .await
            .unwrap(),
    );
    let b = node(
        relay_core::RedisEngine::connect(&server.url, "shared")
            .await
            .unwrap(),
    );

    // Alice's first device works through node b, which caches its key and session.
    let code = RecoveryCode::generate(&mut OsRng);
    let mut old = register(&b, "alice", &code, None).await;
    for _ in 0..2 {
        call(&b, &mut old, Endpoint::PollMessages, &idle_poll())
            .await
            .unwrap();
    }
    // The name moves to a new device through node a; then Bob writes to Alice.
    let mut new = register(&a, "alice", &RecoveryCode::generate(&mut OsRng), Some(&code)).await;
    let mut bob = register(&a, "bob", &RecoveryCode::generate(&mut OsRng), None).await;
    let send = Call::SendMessage {
        target_peer: ClientId::new("alice").unwrap(),
        payload: Bytes(b"for alice's new device".to_vec()),
        key_version: None,
    };
    call(&a, &mut bob, Endpoint::SecureMessage, &send).await.unwrap();

    // The old device polls node b: acknowledging nothing, it is not committed.
    let refused = call(&b, &mut old, Endpoint::PollMessages, &idle_poll()).await;
    assert!(matches!(refused, Err(RelayError::UnknownAuthKey)), "{refused:?}");
    // Node b forgot the old key: its next request is refused before anything is read.
    let again = call(&b, &mut old, Endpoint::PollMessages, &idle_poll()).await;
    assert!(matches!(again, Err(RelayError::UnknownAuthKey)), "{again:?}");

    // The new device gets the message, on either node.
    let got = call(&b, &mut new, Endpoint::PollMessages, &idle_poll())
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&got).unwrap();
    assert_eq!(answer["messages"].as_array().map(Vec::len), Some(1), "{answer}");
}
