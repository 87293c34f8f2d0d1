//! A resent envelope is answered from its stored outcome even after it left the session's replay
//! window (128 requests) and its msg_id time window (300 s) — so an outbox that resends after a long outage is told "stored",
//! never refused as if its message had not been stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{client, envelope, relay_at};

use mtproto_crypto::rand_core::OsRng;
use mtproto_session::{wire::Bytes, ClientId, UnixTime};
use relay_core::api::{Call, Endpoint};
use relay_core::RelayError;

#[tokio::test]
async fn a_committed_send_resent_after_the_time_window_is_answered_from_its_outcome() {
    let t0 = 1_800_000_000;
    let (relay, clock) = relay_at(t0);
    let at = UnixTime::from_secs(t0);
    let mut alice = client(&relay, "alice", at).await;
    client(&relay, "bob", at).await;
    let send = |to: &str| Call::SendMessage {
        target_peer: ClientId::new(to).unwrap(),
        payload: Bytes(b"sealed once".to_vec()),
        key_version: None,
    };
    let packet = alice
        .encode_request(&serde_json::to_vec(&send("bob")).unwrap(), at, &mut OsRng)
        .unwrap()
        .packet;
    let first = relay
        .handle(Endpoint::SecureMessage, &envelope(&packet))
        .await
        .unwrap();
    // 130 later requests push it out of the session's 128-entry replay window.
    for _ in 0..130 {
        let p = alice
            .encode_request(&serde_json::to_vec(&send("bob")).unwrap(), at, &mut OsRng)
            .unwrap()
            .packet;
        relay
            .handle(Endpoint::SecureMessage, &envelope(&p))
            .await
            .unwrap();
    }
    // Ten minutes later (the answer was lost; the relay was away): the very same envelope.
    clock.set(t0 + 600);
    let again = relay
        .handle(Endpoint::SecureMessage, &envelope(&packet))
        .await
        .unwrap();
    assert_eq!(
        first.clear.unwrap().mailbox_seq,
        again.clear.unwrap().mailbox_seq,
        "answered from the stored outcome, stored once"
    );
    // An envelope as old that was never committed is still refused as too old (16).
    let stale = alice
        .encode_request(&serde_json::to_vec(&send("bob")).unwrap(), at, &mut OsRng)
        .unwrap()
        .packet;
    match relay.handle(Endpoint::SecureMessage, &envelope(&stale)).await {
        Err(RelayError::BadMsg { code, .. }) => assert_eq!(code.code(), 16),
        other => panic!("a stale, never-stored envelope was not refused: {other:?}"),
    }
}
