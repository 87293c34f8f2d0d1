//! A client that only polls is never locked out (the session's second and third reviews): its
//! polls commit nothing, so the stored replay window stays behind while its seq_no climbs; the
//! relay commits a poll once it is half a step ahead, and a node whose cached session is behind
//! (the polls went to another node) checks storage before refusing it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use common::{client, idle_poll, Manual};
use mtproto_crypto::ServerSigningKey;
use mtproto_session::UnixTime;
use relay_core::{limits::Rate, MemoryEngine, Relay, RelayConfig};

const T0: u64 = 1_800_000_000;

/// The per-account request budget raised: hours of polls come in a second.
fn config() -> RelayConfig {
    RelayConfig {
        account_rate: Rate {
            burst: 10_000,
            per_sec: 10_000.0,
        },
        ..RelayConfig::default()
    }
}

#[tokio::test]
async fn thousands_of_polls_that_acknowledge_nothing_never_lock_the_client_out() {
    let relay = Relay::new(
        Arc::new(MemoryEngine::new()),
        ServerSigningKey::from_seed([7; 32]),
        config(),
    )
    .with_clock(Arc::new(Manual(AtomicU64::new(T0))));
    let at = UnixTime::from_secs(T0);
    let mut alice = client(&relay, "alice", at).await;
    for i in 0..2_200 {
        idle_poll(&relay, &mut alice, at)
            .await
            .unwrap_or_else(|e| panic!("poll {i}: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_cached_session_fell_behind_checks_storage_before_refusing() {
    let server = relay_test_support::RedisServer::start();
    let clock = Arc::new(Manual(AtomicU64::new(T0)));
    let node = |e: relay_core::RedisEngine| {
        Relay::new(Arc::new(e), ServerSigningKey::from_seed([7; 32]), config()).with_clock(clock.clone())
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
    let at = UnixTime::from_secs(T0);
    let mut alice = client(&a, "alice", at).await;
    // Node a caches alice's session; then her polls go to node b for a long while.
    idle_poll(&a, &mut alice, at).await.unwrap();
    for i in 0..2_200 {
        idle_poll(&b, &mut alice, at)
            .await
            .unwrap_or_else(|e| panic!("poll {i} on node b: {e:?}"));
    }
    // Back on node a: its cached window is 4,400 behind (code 33 from the cache); storage is not.
    idle_poll(&a, &mut alice, at)
        .await
        .expect("node a checks storage before refusing");
}
