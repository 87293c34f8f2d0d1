//! The real binary as a process: durability across SIGKILL, and no plaintext in its files or logs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fetch_server_key, payloads, seqs, stats, Raw, ServerProcess};
use mtproto_session::wire::Bytes;

fn spawn(data: &Path, log: Option<&Path>) -> ServerProcess {
    let mut cmd = common::relay_command(data, "127.0.0.1:0", 2);
    cmd.args(["--metrics-bind", "127.0.0.1:0"])
        .env("RUST_LOG", "debug");
    match log {
        Some(p) => cmd.stderr(std::fs::File::create(p).unwrap()),
        None => cmd.stderr(Stdio::null()),
    };
    ServerProcess::spawn(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_send_survives_sigkill_and_is_delivered_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(dir.path(), None);
    let key = fetch_server_key(&p.url).await;
    let mut alice = Raw::connect(&p.url, "alice", key).await;
    let mut bob = Raw::connect(&p.url, "bob", key).await;
    // Send until 40 are answered, then kill -9 while more are in flight.
    let mut answered = Vec::new();
    let mut i = 0u32;
    let sender = loop {
        let payload = format!("m{i}").into_bytes();
        let (s, _, _) = alice.send("bob", &payload).await;
        assert_eq!(s, 200);
        answered.push(payload);
        i += 1;
        if answered.len() == 40 {
            // Fire a few without waiting for their answers, then kill.
            let url = p.url.clone();
            let packets: Vec<Vec<u8>> = (0..5)
                .map(|k| {
                    let call = relay_core::api::Call::SendMessage {
                        target_peer: mtproto_session::ClientId::new("bob").unwrap(),
                        payload: Bytes(format!("inflight{k}").into_bytes()),
                        key_version: None,
                    };
                    alice.seal(&call)
                })
                .collect();
            break tokio::spawn(async move {
                let http = reqwest::Client::new();
                for pk in packets {
                    let _ = http
                        .post(format!("{url}/secure_message"))
                        .json(&serde_json::json!({"packet": Bytes(pk)}))
                        .send()
                        .await;
                }
            });
        }
    };
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();
    let _ = sender.await;
    // Restart on the same data directory.
    let mut p = spawn(dir.path(), None);
    assert_eq!(fetch_server_key(&p.url).await, key, "the server key survives too");
    bob.base = p.url.clone();
    let got = bob.poll(vec![], 0).await;
    let delivered = payloads(&got);
    for a in &answered {
        assert_eq!(
            delivered.iter().filter(|d| *d == a).count(),
            1,
            "{} lost or duplicated",
            String::from_utf8_lossy(a)
        );
    }
    // Acknowledged: exactly once, never again.
    let after = bob.poll(seqs(&got), 0).await;
    assert!(payloads(&after).is_empty());
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let p = spawn(dir.path(), None);
    bob.base = p.url.clone();
    assert!(
        payloads(&bob.poll(vec![], 0).await).is_empty(),
        "acks are durable too"
    );
    let mut p = p;
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_waiting_long_polls_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(dir.path(), None);
    let key = fetch_server_key(&p.url).await;
    let mut alice = Raw::connect(&p.url, "alice", key).await;
    let mut bob = Raw::connect(&p.url, "bob", key).await;
    let mut carol = Raw::connect(&p.url, "carol", key).await;
    // bob waits far longer than the server's 10 s shutdown grace.
    let waiting = tokio::spawn(async move {
        let answer = bob.poll(vec![], 30_000).await;
        (bob, answer)
    });
    let mut held = false;
    for _ in 0..200 {
        if stats(&p).await["long_polls"] == 1 {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(held, "the server never held bob's long-poll");
    // Accepted just before the stop: it must not be lost.
    let (s, _, _) = alice.send("carol", b"sent before the stop").await;
    assert_eq!(s, 200);
    Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    // An answer, not a connection cut when the grace runs out.
    let (_, answer) = waiting.await.expect("bob's long-poll got an answer");
    assert_eq!(answer["messages"], serde_json::json!([]));
    assert!(p.child.wait().unwrap().success(), "a clean exit");
    let p = spawn(dir.path(), None);
    carol.base = p.url.clone();
    assert_eq!(
        payloads(&carol.poll(vec![], 0).await),
        vec![b"sent before the stop".to_vec()]
    );
    let mut p = p;
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_never_sees_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let data = dir.path().join("data");
    let mut p = spawn(&data, Some(&log));
    let pin = relay_client::Pin::Key(fetch_server_key(&p.url).await);
    let alice = relay_client::Client::connect(relay_client::ClientConfig::new(&p.url, "alice", pin))
        .await
        .unwrap();
    let bob = relay_client::Client::connect(relay_client::ClientConfig::new(&p.url, "bob", pin))
        .await
        .unwrap();
    let canary_a = b"CANARY-plaintext-from-alice-7f3a9";
    let canary_b = b"CANARY-plaintext-from-bob-51c2e";
    alice.send("bob", canary_a).await.unwrap();
    bob.send("alice", canary_b).await.unwrap();
    // Leave them undelivered, then also deliver a second copy, so both states are on disk.
    let mut got = Vec::new();
    for _ in 0..10 {
        for ev in bob.poll(Duration::from_millis(500)).await.unwrap() {
            if let relay_client::Event::Message { body, .. } = ev {
                got.push(body);
            }
        }
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got, vec![canary_a.to_vec()]);
    // Graceful stop (SIGTERM) so logs are flushed.
    Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    p.child.wait().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !contains(&bytes, canary_a) && !contains(&bytes, canary_b),
            "plaintext on disk"
        );
        checked += 1;
    }
    assert!(checked >= 2, "database and key files were checked");
    let logs = std::fs::read(&log).unwrap();
    assert!(contains(&logs, b"auth key established"), "the log was captured");
    assert!(
        !contains(&logs, canary_a) && !contains(&logs, canary_b),
        "plaintext in the logs"
    );
}
