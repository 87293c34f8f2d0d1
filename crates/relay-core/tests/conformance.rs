//! The storage conformance suite: every engine must pass every test here.
//!
//! Each test is written once against `&dyn Engine`; `engine_tests!` instantiates it for each
//! engine (the Redis engine joins when its server is available: see `tests/redis.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

#[path = "suite/mod.rs"]
mod suite;

macro_rules! engine_tests {
    ($engine:ident, $make:expr) => {
        mod $engine {
            use super::suite;
            suite::for_each_test!($make);
        }
    };
}

engine_tests!(memory, || async {
    std::sync::Arc::new(relay_core::MemoryEngine::new()) as std::sync::Arc<dyn relay_core::Engine>
});
engine_tests!(sqlite, || async {
    let dir = tempfile::tempdir().unwrap();
    let engine = relay_core::SqliteEngine::open(&dir.path().join("relay.db")).unwrap();
    // Keep the directory alive for the test's duration.
    std::mem::forget(dir);
    std::sync::Arc::new(engine) as std::sync::Arc<dyn relay_core::Engine>
});

#[tokio::test]
async fn sqlite_data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let e = relay_core::SqliteEngine::open(&path).unwrap();
    let (alice, bob) = suite::two_accounts(&e).await;
    suite::send(&e, &alice, "bob", b"durable").await.unwrap();
    drop(e);
    let e = relay_core::SqliteEngine::open(&path).unwrap();
    let got = e.fetch(&bob.client, 10, suite::t0()).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.0, b"durable");
    use relay_core::Engine;
}
