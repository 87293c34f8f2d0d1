//! Two relay-server processes sharing one Redis (and, second test, one Redis Cluster of three
//! primaries): alice on node 1, bob on node 2, long-polls on opposite nodes, then node 1 is
//! killed mid-conversation and alice carries on through node 2. Last, Redis itself goes away
//! for a while: the relay answers 503 and its clients carry on once it is back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fetch_server_key, healthz, payloads, seqs, stats, Raw, ServerProcess};

/// Both nodes share the server key file, as a deployment behind one name would.
fn node(redis: &[&str], key_file: &std::path::Path, data: &std::path::Path) -> ServerProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay-server"));
    cmd.args([
        "--bind",
        "127.0.0.1:0",
        "--engine",
        "redis",
        "--workers",
        "1",
        "--metrics-bind",
        "127.0.0.1:0",
    ])
    .args(redis)
    .arg("--key-file")
    .arg(key_file)
    .arg("--data-dir")
    .arg(data)
    .stderr(Stdio::null());
    ServerProcess::spawn(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_redis_and_a_node_dies() {
    let redis = relay_test_support::RedisServer::start();
    conversation(&["--redis-url", &redis.url], "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_redis_cluster_and_a_node_dies() {
    let cluster = relay_test_support::RedisCluster::start();
    // One seed is enough; the client learns the other two primaries from it.
    conversation(
        &["--redis-cluster", "--redis-url", &cluster.urls[1]],
        "redis-cluster",
    )
    .await;
}

async fn conversation(redis: &[&str], engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("server_key");
    let n1 = node(redis, &key_file, &dir.path().join("n1"));
    let n2 = node(redis, &key_file, &dir.path().join("n2"));
    let key = fetch_server_key(&n1.url).await;
    assert_eq!(key, fetch_server_key(&n2.url).await);

    let mut alice = Raw::connect(&n1.url, "alice", key).await;
    let mut bob = Raw::connect(&n2.url, "bob", key).await;

    // Bob long-polls on node 2; alice sends on node 1: the wake-up crosses nodes.
    let wait = Duration::from_secs(20);
    let poller = tokio::spawn(async move {
        let t = Instant::now();
        let got = bob.poll(vec![], wait.as_millis() as u64).await;
        (bob, got, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alice.send("bob", b"across nodes").await.0, 200);
    let (mut bob, got, elapsed) = poller.await.unwrap();
    assert_eq!(payloads(&got), vec![b"across nodes".to_vec()]);
    assert!(
        elapsed < wait / 2,
        "the cross-node wake-up did not arrive ({elapsed:?})"
    );

    // And back: alice long-polls on node 1, bob sends on node 2.
    let poller = tokio::spawn(async move {
        let got = alice.poll(vec![], 20_000).await;
        (alice, got)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob.send("alice", b"and back").await.0, 200);
    let (mut alice, got) = poller.await.unwrap();
    assert_eq!(payloads(&got), vec![b"and back".to_vec()]);
    let alice_acks = seqs(&got);
    // Bob acknowledges what he has read so far ("across nodes").
    let seen = bob.poll(vec![], 0).await;
    bob.poll(seqs(&seen), 0).await;

    // Node 1 dies mid-conversation. Alice's session lives in Redis: she continues on node 2.
    for i in 0..3 {
        assert_eq!(
            alice.send("bob", format!("before crash {i}").as_bytes()).await.0,
            200
        );
    }
    drop(n1);
    alice.base = n2.url.clone();
    assert_eq!(alice.send("bob", b"after crash").await.0, 200);
    let after = alice.poll(alice_acks, 0).await;
    assert!(payloads(&after).is_empty(), "acks made on node 1 hold on node 2");
    let got = bob.poll(vec![], 0).await;
    let texts: Vec<String> = payloads(&got)
        .into_iter()
        .map(|p| String::from_utf8(p).unwrap())
        .collect();
    assert_eq!(
        texts,
        vec![
            "before crash 0",
            "before crash 1",
            "before crash 2",
            "after crash"
        ]
    );
    let health = stats(&n2).await;
    assert_eq!(health["engine"], engine);
    assert!(health["stats"]["redis_round_trips"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_503_and_clients_carry_on() {
    let mut redis = relay_test_support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let n = node(&["--redis-url", &redis.url], &dir.path().join("key"), dir.path());
    let server_key = fetch_server_key(&n.url).await;
    let pin = relay_client::Pin::Key(server_key);
    let connect =
        |name: &str| relay_client::Client::connect(relay_client::ClientConfig::new(&n.url, name, pin));
    let alice = connect("alice").await.unwrap();
    let bob = connect("bob").await.unwrap();
    let mut raw = Raw::connect(&n.url, "carol", server_key).await;
    alice.send("bob", b"before the outage").await.unwrap();
    assert_eq!(healthz(&n.url).await.0, 200);

    redis.kill();
    let (status, h) = healthz(&n.url).await;
    assert_eq!((status, h["status"].as_str()), (503, Some("unavailable")), "{h}");
    // A request meets a clear, retryable refusal: 503, a stable code, Retry-After.
    let packet = raw.seal(&relay_core::api::Call::SendMessage {
        target_peer: mtproto_session::ClientId::new("bob").unwrap(),
        payload: mtproto_session::wire::Bytes(b"refused".to_vec()),
        key_version: None,
    });
    let r = reqwest::Client::new()
        .post(format!("{}/secure_message", n.url))
        .json(&serde_json::json!({ "packet": mtproto_session::wire::Bytes(packet) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "storage_unavailable", "{body}");
    let refused = stats(&n).await["unavailable_answers"].as_u64().unwrap();

    // alice's client keeps retrying the same envelope; Redis comes back once it has been
    // refused at least once more.
    let sending = tokio::spawn(async move {
        let r = alice.send("bob", b"during the outage").await;
        (alice, r)
    });
    let mut retried = false;
    for _ in 0..200 {
        if stats(&n).await["unavailable_answers"].as_u64().unwrap() > refused {
            retried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(retried, "alice's send never reached the relay during the outage");
    redis.restart();
    let (_alice, sent) = sending.await.unwrap();
    let sent = sent.expect("the send went through once Redis was back");
    assert!(
        matches!(sent.state, relay_client::SendState::Stored { .. }),
        "{:?}",
        sent.state
    );
    assert_eq!(healthz(&n.url).await.0, 200);

    // Both messages, once each (the AOF kept the first; the second was stored once).
    let mut got = Vec::new();
    for _ in 0..20 {
        for ev in bob.poll(Duration::from_millis(500)).await.unwrap() {
            if let relay_client::Event::Message { body, .. } = ev {
                got.push(body);
            }
        }
        if got.len() >= 2 {
            break;
        }
    }
    let again = bob.poll(Duration::from_millis(200)).await.unwrap();
    assert!(!again
        .iter()
        .any(|e| matches!(e, relay_client::Event::Message { .. })));
    assert_eq!(
        got,
        vec![b"before the outage".to_vec(), b"during the outage".to_vec()]
    );
}
