//! The storage conformance suite: every engine must pass every test here.
//!
//! Each test is written once against `&dyn Engine`; `engine_tests!` instantiates it for each
//! engine. The Redis instance starts a private `redis-server` per test (Debian's package).
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

type Made = (
    std::sync::Arc<dyn relay_core::Engine>,
    Box<dyn std::any::Any + Send>,
);

engine_tests!(memory, || async {
    let engine: std::sync::Arc<dyn relay_core::Engine> = std::sync::Arc::new(relay_core::MemoryEngine::new());
    (engine, Box::new(()) as Box<dyn std::any::Any + Send>) as super::Made
});
engine_tests!(sqlite, || async {
    let dir = tempfile::tempdir().unwrap();
    let engine: std::sync::Arc<dyn relay_core::Engine> =
        std::sync::Arc::new(relay_core::SqliteEngine::open(&dir.path().join("relay.db")).unwrap());
    (engine, Box::new(dir) as Box<dyn std::any::Any + Send>) as super::Made
});
engine_tests!(redis, || async {
    let server = suite::RedisProcess::start();
    let engine: std::sync::Arc<dyn relay_core::Engine> = std::sync::Arc::new(
        relay_core::RedisEngine::connect(&server.url, "test")
            .await
            .unwrap(),
    );
    (engine, Box::new(server) as Box<dyn std::any::Any + Send>) as super::Made
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
