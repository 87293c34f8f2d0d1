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

use relay_core::{AuthKeyId, Nonce128};

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
    let server = suite::RedisServer::start();
    let engine: std::sync::Arc<dyn relay_core::Engine> = std::sync::Arc::new(
        relay_core::RedisEngine::connect(&server.url, "test")
            .await
            .unwrap(),
    );
    (engine, Box::new(server) as Box<dyn std::any::Any + Send>) as super::Made
});

/// Redis Cluster: one cluster for the whole suite (forming one takes a second or two), each case
/// on a fresh engine with its own key prefix, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_passes_the_suite() {
    let cluster = suite::RedisCluster::start();
    let mut ran = Vec::new();
    macro_rules! on_cluster {
        ($cluster:expr, $name:ident) => {
            let engine = relay_core::RedisEngine::connect_cluster(&$cluster.urls, stringify!($name))
                .await
                .unwrap();
            assert!(engine.is_cluster());
            suite::$name(&engine).await;
            ran.push(stringify!($name));
        };
    }
    suite::for_each_case!(on_cluster, cluster);
    assert_eq!(ran.len(), 24, "{ran:?}");
    // The harness is a real cluster: a script over two users' slots is refused, which is why
    // the engine splits a send in two there.
    let client = ::redis::cluster::ClusterClient::new(cluster.urls.clone()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let crossed: ::redis::RedisResult<i64> = ::redis::cmd("EVAL")
        .arg("return 1")
        .arg(2)
        .arg("x:{u:alice}:peer")
        .arg("x:{u:bob}:peer")
        .query_async(&mut conn)
        .await;
    let err = crossed.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("crossslot"), "{err}");
}

/// A primary of the cluster (three primaries, one replica each) dies; its replica takes over;
/// the engine carries on (after the cluster client learns the new primary, bounded retries) with
/// nothing that was replicated lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_carries_on_after_a_primary_fails_over() {
    use relay_core::Engine;
    let mut cluster = suite::RedisCluster::start_with(1);
    let e = relay_core::RedisEngine::connect_cluster(&cluster.urls, "fo")
        .await
        .unwrap();
    let (alice, bob) = suite::two_accounts(&e).await;
    for i in 0..5u8 {
        suite::send(&e, &alice, "bob", &[i]).await.unwrap();
    }
    let port = cluster.primary_of("fo:{u:bob}:mbox");
    cluster.wait_replicated(port);
    cluster.kill_port(port);
    cluster.wait_promoted(port, "fo:{u:bob}:mbox");
    let mut after = None;
    for _ in 0..100 {
        match suite::send(&e, &alice, "bob", b"after the failover").await {
            Ok(o) => {
                after = Some(o);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
    assert!(
        matches!(after, Some(relay_core::Outcome::Sent { seq: 6, .. })),
        "{after:?}"
    );
    let got = e.fetch(&bob.client, 100, suite::t0()).await.unwrap();
    let payloads: Vec<Vec<u8>> = got.into_iter().map(|m| m.payload.0).collect();
    assert_eq!(
        payloads,
        vec![
            vec![0],
            vec![1],
            vec![2],
            vec![3],
            vec![4],
            b"after the failover".to_vec()
        ]
    );
    assert_ne!(
        cluster.primary_of("fo:{u:bob}:mbox"),
        port,
        "a replica was promoted"
    );
}

/// Two relay nodes sharing one Redis hand out one peer's one-time prekeys: four requesters, two
/// on each node, all at once; every one-time prekey is handed out exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_nodes_sharing_one_redis_hand_out_each_one_time_prekey_once() {
    let server = suite::RedisServer::start();
    let node1 = relay_core::RedisEngine::connect(&server.url, "shared")
        .await
        .unwrap();
    let node2 = relay_core::RedisEngine::connect(&server.url, "shared")
        .await
        .unwrap();
    let bob = suite::account(&node1, "bob", 2).await;
    let v = suite::publish_key(&node1, &bob, 9).await;
    assert_eq!(
        suite::publish_prekeys(&node2, &bob, v, suite::prekey_upload(1, 1..=30)).await,
        Ok(30)
    );
    let mut requesters = Vec::new();
    for i in 0..4u8 {
        let node: &dyn relay_core::Engine = if i % 2 == 0 { &node1 } else { &node2 };
        requesters.push((node, suite::account(node, &format!("r{i}"), 10 + i).await));
    }
    let runs = requesters.into_iter().map(|(node, who)| async move {
        let mut got = Vec::new();
        for _ in 0..12 {
            got.push(suite::fetch_bundle(node, &who, "bob").await.unwrap().0);
        }
        got
    });
    let all = futures::future::join_all(runs).await;
    let handed: Vec<u32> = all.iter().flatten().flatten().copied().collect();
    let distinct: std::collections::BTreeSet<u32> = handed.iter().copied().collect();
    assert_eq!(handed.len(), 30, "{all:?}");
    assert_eq!(distinct, (1..=30).collect());
}

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

/// The first release's schema (version 1), as it wrote it: the upgrade test builds such a
/// database by hand.
const SCHEMA_V1: &str = "
CREATE TABLE pending (server_nonce BLOB PRIMARY KEY, data TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE auth_keys (key_id BLOB PRIMARY KEY, client_id TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE TABLE sessions (key_id BLOB PRIMARY KEY, data TEXT NOT NULL, version INTEGER NOT NULL);
CREATE TABLE outcomes (key_id BLOB NOT NULL, msg_id INTEGER NOT NULL, data TEXT NOT NULL,
    created_at INTEGER NOT NULL, PRIMARY KEY (key_id, msg_id));
CREATE TABLE peers (client_id TEXT PRIMARY KEY, identity_key BLOB, key_version INTEGER NOT NULL,
    registered_at INTEGER NOT NULL, last_seen INTEGER NOT NULL, next_seq INTEGER NOT NULL,
    mailbox_count INTEGER NOT NULL DEFAULT 0);
CREATE TABLE mailbox (recipient TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
    kind TEXT NOT NULL, payload BLOB NOT NULL, ts INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (recipient, seq));
CREATE INDEX mailbox_expiry ON mailbox (expires_at);
";

#[tokio::test]
async fn sqlite_upgrades_a_first_release_database() {
    use mtproto_session::{ServerSalt, ServerSession, SessionId};
    use relay_core::Engine;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let session = ServerSession::new(SessionId([1; 8]), ServerSalt([1; 8]), suite::t0());
    let record = relay_core::AuthKeyRecord {
        key_id: AuthKeyId::from_bytes([1; 8]),
        auth_key: mtproto_session::SecretBytes::new(vec![1; 256]),
        client_id: mtproto_session::ClientId::new("alice").unwrap(),
        created_at: suite::t0(),
        recovery_key: None,
    };
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        c.execute(
            "INSERT INTO auth_keys VALUES (?1, 'alice', ?2)",
            rusqlite::params![vec![1u8; 8], serde_json::to_string(&record).unwrap()],
        )
        .unwrap();
        c.execute(
            "INSERT INTO sessions VALUES (?1, ?2, 5)",
            rusqlite::params![vec![1u8; 8], serde_json::to_string(&session).unwrap()],
        )
        .unwrap();
        for who in ["alice", "bob"] {
            c.execute(
                "INSERT INTO peers VALUES (?1, NULL, 0, 1800000000, 1800000000, 1, ?2)",
                rusqlite::params![who, i64::from(who == "bob")],
            )
            .unwrap();
        }
        c.execute(
            "INSERT INTO mailbox VALUES ('bob', 1, 'alice', '{\"kind\":\"message\"}', x'0102', 1800000000000, 1800003600)",
            [],
        )
        .unwrap();
        c.execute(
            "INSERT INTO outcomes VALUES (?1, 4, '{}', 1800000000)",
            rusqlite::params![vec![1u8; 8]],
        )
        .unwrap();
    }
    let e = relay_core::SqliteEngine::open(&path).unwrap();
    let alice_id = mtproto_session::ClientId::new("alice").unwrap();
    // The waiting message, the session (still JSON) and the account come through.
    let got = e
        .fetch(&mtproto_session::ClientId::new("bob").unwrap(), 10, suite::t0())
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload.0, [1, 2]);
    let stored = e
        .session(AuthKeyId::from_bytes([1; 8]), &alice_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.session, stored.version), (session, 5));
    assert_eq!(
        e.auth_key(AuthKeyId::from_bytes([1; 8]))
            .await
            .unwrap()
            .unwrap()
            .client_id
            .as_str(),
        "alice"
    );
    // The next commit works and rewrites the session in the compact form.
    let alice = suite::Account {
        key_id: AuthKeyId::from_bytes([1; 8]),
        client: mtproto_session::ClientId::new("alice").unwrap(),
    };
    let out = suite::send(&e, &alice, "bob", b"after the upgrade")
        .await
        .unwrap();
    assert!(matches!(out, relay_core::Outcome::Sent { seq: 2, .. }), "{out:?}");
    assert_eq!(
        e.session(AuthKeyId::from_bytes([1; 8]), &alice_id)
            .await
            .unwrap()
            .unwrap()
            .version,
        6
    );
    drop(e);
    let c = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 4);
    // The upgrade counted what was waiting (alice's 2-byte message), and the send after it
    // (17 bytes) added to that.
    let (count, bytes): (i64, i64) = c
        .query_row(
            "SELECT mailbox_count, mailbox_bytes FROM peers WHERE client_id = 'bob'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((count, bytes), (2, 19));
    let sender: (String, i64, i64) = c
        .query_row(
            "SELECT sender, count, bytes FROM senders WHERE recipient = 'bob'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(sender, ("alice".to_owned(), 2, 19));
    let kind: String = c
        .query_row("SELECT typeof(data) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kind, "blob");
    // And a database from a newer relay is refused, not misread.
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let err = relay_core::SqliteEngine::open(&path).err().unwrap();
    assert!(err.to_string().contains("99"), "{err}");
}

#[tokio::test]
async fn sqlite_answers_only_what_an_fsync_covered() {
    use relay_core::Engine;
    let dir = tempfile::tempdir().unwrap();
    let e = std::sync::Arc::new(relay_core::SqliteEngine::open(&dir.path().join("relay.db")).unwrap());
    let (alice, bob) = suite::two_accounts(e.as_ref()).await;
    let stats = |e: &relay_core::SqliteEngine| {
        let s = e.stats().unwrap();
        (
            s["commits"].as_u64().unwrap(),
            s["durable_commits"].as_u64().unwrap(),
        )
    };
    // One at a time: when a send is answered, its commit is durable.
    for i in 0..20u8 {
        suite::send(e.as_ref(), &alice, "bob", &[i]).await.unwrap();
        let (commits, durable) = stats(&e);
        assert_eq!(durable, commits, "answered before its fsync");
    }
    // Many at once, from concurrent tasks: each answer saw its own commit made durable.
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let e = e.clone();
        let who = if i % 2 == 0 { "alice" } else { "bob" };
        let (key, to) = if who == "alice" { (1, "bob") } else { (2, "alice") };
        tasks.push(tokio::spawn(async move {
            let from = suite::Account {
                key_id: AuthKeyId::from_bytes([key; 8]),
                client: mtproto_session::ClientId::new(who).unwrap(),
            };
            // Sends of one account race for its session: retry a conflict as the relay does.
            loop {
                // Its batch is committed after this count was read, so its number is higher.
                let before = e.stats().unwrap()["commits"].as_u64().unwrap();
                match suite::send(e.as_ref(), &from, to, &[i]).await {
                    Err(relay_core::EngineError::Conflict) => continue,
                    other => {
                        other.unwrap();
                        let durable = e.stats().unwrap()["durable_commits"].as_u64().unwrap();
                        assert!(
                            durable > before,
                            "answered before its fsync: {durable} <= {before}"
                        );
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (commits, durable) = stats(&e);
    assert_eq!(durable, commits);
    let s = e.stats().unwrap();
    assert!(s["fsyncs"].as_u64().unwrap() <= commits, "{s}");
    assert_eq!(
        e.fetch(&bob.client, 100, suite::t0()).await.unwrap().len(),
        20 + 32
    );
    let _ = alice;
}

#[tokio::test]
async fn sqlite_a_failing_statement_rolls_back_only_its_batch() {
    use relay_core::Engine;
    let dir = tempfile::tempdir().unwrap();
    let e = relay_core::SqliteEngine::open(&dir.path().join("relay.db")).unwrap();
    let (alice, bob) = suite::two_accounts(&e).await;
    e.put_pending(suite::pending(7, suite::t0()), 100, suite::t0())
        .await
        .unwrap();
    // The same server_nonce again breaks the primary key: SQLite itself fails under the request.
    let err = e
        .put_pending(suite::pending(7, suite::t0()), 100, suite::t0())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, relay_core::EngineError::Storage(m) if m.contains("UNIQUE")),
        "{err:?}"
    );
    // The engine goes on: the first handshake is intact and new requests commit.
    assert!(e
        .get_pending(Nonce128::from_bytes([7; 16]))
        .await
        .unwrap()
        .is_some());
    suite::send(&e, &alice, "bob", b"after").await.unwrap();
    assert_eq!(e.fetch(&bob.client, 10, suite::t0()).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_upgrades_a_first_release_layout() {
    use ::redis::AsyncCommands;
    use mtproto_session::{ClientId, ServerSalt, ServerSession, SessionId};
    use relay_core::Engine;
    let server = suite::RedisServer::start();
    let session = ServerSession::new(SessionId([1; 8]), ServerSalt([1; 8]), suite::t0());
    let record = relay_core::AuthKeyRecord {
        key_id: AuthKeyId::from_bytes([1; 8]),
        auth_key: mtproto_session::SecretBytes::new(vec![1; 256]),
        client_id: ClientId::new("alice").unwrap(),
        created_at: suite::t0(),
        recovery_key: None,
    };
    let kid = "0101010101010101";
    let expires = suite::t0().as_secs() + 60;
    {
        // What the first release wrote (prefix "old").
        let mut c = ::redis::Client::open(server.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = c.sadd("old:peers", &["alice", "bob"]).await.unwrap();
        let _: () = c.set("old:{u:alice}:owner", kid).await.unwrap();
        let _: () = c
            .set(
                format!("old:{{k:{kid}}}:key"),
                serde_json::to_string(&record).unwrap(),
            )
            .await
            .unwrap();
        let _: () = c
            .hset_multiple(
                format!("old:{{k:{kid}}}:sess"),
                &[
                    ("data", serde_json::to_string(&session).unwrap()),
                    ("version", "5".into()),
                ],
            )
            .await
            .unwrap();
        for (who, next) in [("alice", 0), ("bob", 1)] {
            let _: () = c
                .hset_multiple(
                    format!("old:{{u:{who}}}:peer"),
                    &[
                        ("key", String::new()),
                        ("kv", "0".into()),
                        ("reg", "1800000000".into()),
                        ("seen", "1800000000".into()),
                        ("next", next.to_string()),
                    ],
                )
                .await
                .unwrap();
        }
        let entry = format!(
            r#"{{"seq":1,"from":"alice","kind":"message","payload":"AQI=","timestamp_ms":1800000000000,"expires_at":{expires}}}"#
        );
        let _: () = c.zadd("old:{u:bob}:mbox", entry, 1).await.unwrap();
        let _: () = c.zadd("old:expiry", "bob|1|alice", expires).await.unwrap();
    }
    let e = relay_core::RedisEngine::connect(&server.url, "old")
        .await
        .unwrap();
    let alice = suite::Account {
        key_id: AuthKeyId::from_bytes([1; 8]),
        client: ClientId::new("alice").unwrap(),
    };
    let stored = e
        .session(AuthKeyId::from_bytes([1; 8]), &alice.client)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.session, stored.version), (session, 5));
    let bob = ClientId::new("bob").unwrap();
    assert_eq!(e.fetch(&bob, 10, suite::t0()).await.unwrap()[0].payload.0, [1, 2]);
    // Commits go on from the moved session.
    let out = suite::send(&e, &alice, "bob", b"after").await.unwrap();
    assert!(matches!(out, relay_core::Outcome::Sent { seq: 2, .. }), "{out:?}");
    // The moved expiry index still tells alice when her first message expires.
    let told = e.purge_expired(suite::t0().plus_secs(61)).await.unwrap();
    assert_eq!(told, vec![alice.client.clone()]);
    drop(e);
    // Connecting again finds the layout done and changes nothing.
    let e = relay_core::RedisEngine::connect(&server.url, "old")
        .await
        .unwrap();
    assert_eq!(
        e.session(AuthKeyId::from_bytes([1; 8]), &alice.client)
            .await
            .unwrap()
            .unwrap()
            .version,
        6
    );
}

/// A pending handshake's stage is a field of its own (issue 14): `advance_pending` reads the
/// field, never the JSON; a record whose JSON and field disagree follows the field. A string
/// record an earlier release left under the old key name is not read (it expires by itself).
#[tokio::test]
async fn redis_keeps_a_pending_handshakes_stage_in_its_own_field() {
    use ::redis::AsyncCommands;
    use relay_core::Engine;
    let server = suite::RedisServer::start();
    let e = relay_core::RedisEngine::connect(&server.url, "st").await.unwrap();
    let mut c = ::redis::Client::open(server.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let sn = "01".repeat(16);
    e.put_pending(suite::pending(1, suite::t0()), 10, suite::t0())
        .await
        .unwrap();
    let key = format!("st:{{hs}}:h:{sn}");
    let stage: String = c.hget(&key, "stage").await.unwrap();
    assert_eq!(stage, "AwaitingDhParams");
    let ttl: i64 = c.pttl(&key).await.unwrap();
    assert!(ttl > 0, "the record expires: {ttl}");

    // The field says the handshake moved on; its JSON still says the first stage.
    let _: () = c.hset(&key, "stage", "AwaitingClientDh").await.unwrap();
    let mut advanced = suite::pending(1, suite::t0());
    advanced.stage = mtproto_session::Stage::AwaitingClientDh {
        a: mtproto_session::SecretBytes::new(vec![5; 32]),
        g_a: vec![6; 256],
    };
    assert!(
        !e.advance_pending(advanced.clone()).await.unwrap(),
        "the stage field decides, not the JSON"
    );
    let _: () = c.hset(&key, "stage", "AwaitingDhParams").await.unwrap();
    assert!(e.advance_pending(advanced).await.unwrap());
    let stage: String = c.hget(&key, "stage").await.unwrap();
    assert_eq!(stage, "AwaitingClientDh");
    assert!(
        c.pttl::<_, i64>(&key).await.unwrap() > 0,
        "advancing keeps the TTL"
    );

    // An earlier release's string record under the old name is not read.
    let old = serde_json::to_string(&suite::pending(2, suite::t0())).unwrap();
    let _: () = c
        .set(format!("st:{{hs}}:{}", "02".repeat(16)), old)
        .await
        .unwrap();
    assert!(e
        .get_pending(Nonce128::from_bytes([2; 16]))
        .await
        .unwrap()
        .is_none());
}
