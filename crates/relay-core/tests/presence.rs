//! Presence: the directory's `last_seen` follows every authenticated request that reached the
//! node, polls that acknowledge nothing included (they are not committed), so an open client
//! looks present and a closed one goes stale (issue 13). Kept in memory only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use common::{client, relay_at};

use mtproto_crypto::rand_core::OsRng;
use mtproto_session::{wire::Bytes, ClientId, ClientSession, UnixTime};
use relay_core::api::{Call, Endpoint, EnvelopeRequest, PeersAnswer};
use relay_core::Relay;

/// Sends `call` from `who` at `now` and returns the answer's body.
async fn call(
    relay: &Relay,
    who: &mut ClientSession,
    endpoint: Endpoint,
    call: &Call,
    now: UnixTime,
) -> Vec<u8> {
    let packet = who
        .encode_request(&serde_json::to_vec(call).unwrap(), now, &mut OsRng)
        .unwrap()
        .packet;
    let req = EnvelopeRequest {
        packet: Some(Bytes(packet)),
        ..EnvelopeRequest::default()
    };
    let res = relay.handle(endpoint, &req).await.unwrap();
    who.decode_response(&res.packet.0, now).unwrap().body
}

async fn last_seen(relay: &Relay, asker: &mut ClientSession, name: &str, now: UnixTime) -> u64 {
    let lookup = Call::ListPeers {
        names: vec![ClientId::new(name).unwrap()],
        prefix: None,
        after: None,
        limit: None,
    };
    let body = call(relay, asker, Endpoint::Peers, &lookup, now).await;
    let answer: PeersAnswer = serde_json::from_slice(&body).unwrap();
    answer.peers.first().expect("the peer is listed").last_seen
}

#[tokio::test]
async fn a_poll_that_acknowledges_nothing_still_shows_its_client_present() {
    let t0 = 1_800_000_000;
    let (relay, clock) = relay_at(t0);
    let at = |s: u64| UnixTime::from_secs(t0 + s);
    let mut alice = client(&relay, "alice", at(0)).await;
    let mut bob = client(&relay, "bob", at(0)).await;
    let poll = Call::PollMessages {
        ack: Vec::new(),
        timeout_ms: Some(0),
        limit: None,
    };
    // Bob's first request on this node is committed (last-seen recorded); later empty polls are not.
    clock.set(t0 + 10);
    call(&relay, &mut bob, Endpoint::PollMessages, &poll, at(10)).await;
    clock.set(t0 + 100);
    call(&relay, &mut bob, Endpoint::PollMessages, &poll, at(100)).await;
    assert_eq!(
        last_seen(&relay, &mut alice, "bob", at(100)).await,
        t0 + 100,
        "the uncommitted poll counts"
    );
    // Bob stops: his last_seen stays where his last request left it.
    clock.set(t0 + 160);
    assert_eq!(last_seen(&relay, &mut alice, "bob", at(160)).await, t0 + 100);
}
