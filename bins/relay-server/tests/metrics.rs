//! Prometheus metrics on the operator listener move with what clients do (issue 16).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{fetch_server_key, relay_command, ServerProcess};
use relay_client::{Client, ClientConfig, Pin};

/// Every sample of the scrape, by its name with labels.
async fn scrape(url: &str) -> HashMap<String, f64> {
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_handshakes_messages_refusals_and_storage() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = relay_command(dir.path(), "127.0.0.1:0", 1);
    cmd.args(["--metrics-bind", "127.0.0.1:0"]);
    let server = ServerProcess::spawn(cmd);
    let url = server.metrics.clone().unwrap().replace("/stats", "/metrics");
    let before = scrape(&url).await;

    let pin = Pin::Key(fetch_server_key(&server.url).await);
    let alice = Client::connect(ClientConfig::new(&server.url, "alice", pin))
        .await
        .unwrap();
    let bob = Client::connect(ClientConfig::new(&server.url, "bob", pin))
        .await
        .unwrap();
    for text in ["one", "two"] {
        alice.send("bob", text.as_bytes()).await.unwrap();
    }
    let mut got = 0;
    for _ in 0..20 {
        got += bob.poll(Duration::from_millis(200)).await.unwrap().len();
        if got >= 2 {
            break;
        }
    }
    bob.ack().await.unwrap();
    let bad = reqwest::Client::new()
        .post(format!("{}/secure_message", server.url))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let after = scrape(&url).await;
    let grew = |name: &str| get(&after, name) - get(&before, name);
    assert_eq!(grew(r#"relay_handshakes_total{outcome="started"}"#), 2.0);
    assert_eq!(grew(r#"relay_handshakes_total{outcome="finished"}"#), 2.0);
    assert_eq!(grew("relay_messages_stored_total"), 2.0);
    assert!(grew("relay_entries_delivered_total") >= 2.0);
    assert_eq!(grew("relay_entries_acked_total"), 2.0);
    assert_eq!(grew(r#"relay_refusals_total{code="malformed_json"}"#), 1.0);
    assert_eq!(
        grew(r#"relay_http_requests_total{endpoint="/secure_message",status="200"}"#),
        2.0
    );
    assert_eq!(
        grew(r#"relay_http_requests_total{endpoint="/secure_message",status="400"}"#),
        1.0
    );
    assert!(grew(r#"relay_http_request_duration_seconds_count{endpoint="/poll_messages"}"#) >= 2.0);
    assert!(grew("relay_storage_commit_duration_seconds_count") >= 4.0);
    assert!(grew(r#"relay_engine_total{counter="fsyncs"}"#) > 0.0, "{after:?}");
    assert!(after.contains_key("relay_long_polls_waiting"));
}
