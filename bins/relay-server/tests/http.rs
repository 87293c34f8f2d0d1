//! The relay over real HTTP on a loopback port: the protocol, delivery semantics and every bad
//! input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::time::{Duration, Instant};

use common::{healthz, payloads, post, seqs, Raw, Server};
use mtproto_session::{wire::Bytes, ClientId};
use relay_core::api::Call;
use serde_json::json;

async fn pair(server: &Server) -> (Raw, Raw) {
    let alice = Raw::connect(&server.url, "alice", server.server_key()).await;
    let bob = Raw::connect(&server.url, "bob", server.server_key()).await;
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_both_ways_and_acks_remove_them() {
    for engine in ["memory", "sqlite"] {
        let server = Server::start(&["--engine", engine]).await;
        let (mut alice, mut bob) = pair(&server).await;
        let (s, clear, inner) = alice.send("bob", b"ciphertext-1").await;
        assert_eq!(s, 200, "{clear}");
        let inner = inner.unwrap();
        assert_eq!(inner["status"], "Message received securely");
        assert_eq!(
            clear["status"], inner["status"],
            "clear fields echo the sealed answer"
        );
        assert!(inner["timestamp"].as_str().unwrap().ends_with('Z'));
        bob.send("alice", b"reply").await;
        let got = bob.poll(vec![], 0).await;
        assert_eq!(payloads(&got), vec![b"ciphertext-1".to_vec()]);
        assert_eq!(got["messages"][0]["from"], "alice");
        // Not acknowledged: it comes back.
        let again = bob.poll(vec![], 0).await;
        assert_eq!(seqs(&again), seqs(&got));
        // Acknowledged: gone.
        let after = bob.poll(seqs(&got), 0).await;
        assert_eq!(after["acked"], 1);
        assert!(payloads(&after).is_empty());
        assert_eq!(payloads(&alice.poll(vec![], 0).await), vec![b"reply".to_vec()]);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_when_a_message_arrives() {
    let server = Server::start(&["--engine", "memory"]).await;
    let (mut alice, mut bob) = pair(&server).await;
    let wait = Duration::from_secs(20);
    let poller = tokio::spawn(async move {
        let t = Instant::now();
        let got = bob.poll(vec![], wait.as_millis() as u64).await;
        (got, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send("bob", b"wake up").await;
    let (got, elapsed) = poller.await.unwrap();
    assert_eq!(payloads(&got), vec![b"wake up".to_vec()]);
    // Functional, not a speed threshold: it returned because of the message, not the deadline.
    assert!(
        elapsed < wait / 2,
        "the poll waited for its deadline ({elapsed:?})"
    );
    // An empty mailbox with no wait returns at once and empty.
    assert!(payloads(&alice.poll(vec![], 0).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_envelope_is_stored_once_and_answered_with_the_original_result() {
    let server = Server::start(&["--engine", "sqlite"]).await;
    let (mut alice, mut bob) = pair(&server).await;
    let call = Call::SendMessage {
        target_peer: ClientId::new("bob").unwrap(),
        payload: Bytes(b"once".to_vec()),
        key_version: None,
    };
    let packet = alice.seal(&call);
    let before = alice.session.state();
    let (s1, _, first) = alice.post_packet("/secure_message", &packet).await;
    // A client resends only an answer it never got: open the second as that client would.
    alice.session = mtproto_session::ClientSession::restore(before).unwrap();
    let (s2, _, second) = alice.post_packet("/secure_message", &packet).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first.unwrap()["mailbox_seq"], second.unwrap()["mailbox_seq"]);
    // Both answers carry the same msg_id (request | 1): one answer, sent twice, never two.
    assert_eq!(payloads(&bob.poll(vec![], 0).await).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_cap_and_ttl_are_reported_never_silent() {
    let server = Server::start(&[
        "--engine",
        "sqlite",
        "--mailbox-cap",
        "2",
        "--message-ttl-secs",
        "1",
    ])
    .await;
    let (mut alice, mut bob) = pair(&server).await;
    assert_eq!(alice.send("bob", b"1").await.0, 200);
    assert_eq!(alice.send("bob", b"2").await.0, 200);
    let (s, err, _) = alice.send("bob", b"3").await;
    assert_eq!((s, err["error"].as_str()), (429, Some("mailbox_full")));
    // TTL: after expiry the relay tells the sender which message was never delivered.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    server.relay.purge().await.unwrap();
    assert!(payloads(&bob.poll(vec![], 0).await).is_empty());
    let notes = alice.poll(vec![], 0).await;
    let kinds: Vec<&str> = notes["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["expired", "expired"]);
    assert_eq!(notes["messages"][0]["to"], "bob");
    // The notice names the expired message and has its own mailbox seq: no duplicate keys.
    assert!(notes["messages"][0]["message_seq"].is_u64());
    let raw = serde_json::to_string(&notes["messages"][0]).unwrap();
    assert_eq!(raw.matches("\"seq\"").count(), 1, "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_json_errors_and_store_nothing() {
    let server = Server::start(&["--engine", "sqlite", "--max-payload", "1000"]).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{}", server.url, p);
    // Malformed JSON, wrong types, missing fields, unknown fields.
    let r = http.post(url("/req_pq")).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "malformed_json"
    );
    for (path, body, code) in [
        ("/req_pq", json!({"nonce": 12}), "invalid_field"),
        ("/req_pq", json!({}), "invalid_field"),
        ("/req_pq", json!({"nonce": "AAAA"}), "invalid_field"),
        (
            "/req_pq",
            json!({"nonce": "AAAAAAAAAAAAAAAAAAAAAA==", "extra": 1}),
            "invalid_field",
        ),
        (
            "/req_dh_params",
            json!({"nonce": "AAAAAAAAAAAAAAAAAAAAAA==", "server_nonce": "AAAAAAAAAAAAAAAAAAAAAA==", "p": "01", "q": "02"}),
            "unknown_handshake",
        ),
        (
            "/set_client_dh_params",
            json!({"nonce": "AAAAAAAAAAAAAAAAAAAAAA==", "server_nonce": "AAAAAAAAAAAAAAAAAAAAAA==", "g_b": "00", "client_id": "bad id"}),
            "invalid_field",
        ),
        ("/secure_message", json!({"packet": "AAAA"}), "invalid_field"),
        (
            "/secure_message",
            json!({"auth_key_id": "0000000000000000", "message_key": [1,2], "encrypted_data": "AAAA"}),
            "unknown_auth_key",
        ),
        ("/secure_message", json!({"client_id": "x"}), "invalid_field"),
        ("/poll_messages", json!([1, 2]), "invalid_field"),
    ] {
        let (s, body) = post(&http, &url(path), &body).await;
        assert!((400..500).contains(&s), "{path}: {s} {body}");
        assert_eq!(body["error"], code, "{path}: {body}");
    }
    // Oversized body.
    let big = json!({ "packet": "A".repeat(600 * 1024) });
    let (s, body) = post(&http, &url("/secure_message"), &big).await;
    assert_eq!((s, body["error"].as_str()), (413, Some("payload_too_large")));
    // Unknown route.
    let (s, body) = post(&http, &url("/nope"), &json!({})).await;
    assert_eq!((s, body["error"].as_str()), (404, Some("not_found")));

    let (mut alice, mut bob) = pair(&server).await;
    // Wrong msg_key: one flipped bit anywhere after the key id.
    let mut packet = alice.seal(&Call::SendMessage {
        target_peer: ClientId::new("bob").unwrap(),
        payload: Bytes(b"x".to_vec()),
        key_version: None,
    });
    packet[10] ^= 1;
    let (s, body, _) = alice.post_packet("/secure_message", &packet).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("decrypt_failed")));
    // Clear fields that disagree with the envelope.
    let packet = alice.seal(&Call::SendMessage {
        target_peer: ClientId::new("bob").unwrap(),
        payload: Bytes(b"x".to_vec()),
        key_version: None,
    });
    let (s, body, _) = alice
        .post_with(
            "/secure_message",
            json!({"packet": Bytes(packet.clone()), "target_peer": "carol"}),
        )
        .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("field_mismatch")));
    let (s, body, _) = alice
        .post_with(
            "/secure_message",
            json!({"packet": Bytes(packet.clone()), "client_id": "bob"}),
        )
        .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("field_mismatch")));
    // The original API's split fields with clear ids that match are accepted.
    let (s, body, _) = alice
        .post_with(
            "/secure_message",
            json!({
                "auth_key_id": hex::encode(&packet[..8]),
                "message_key": packet[8..24].to_vec(),
                "encrypted_data": Bytes(packet[24..].to_vec()),
                "client_id": "alice",
                "target_peer": "bob",
            }),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    // An envelope for another endpoint.
    let packet = alice.seal(&Call::list_peers());
    let (s, body, _) = alice.post_packet("/secure_message", &packet).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("method_mismatch")));
    // Unknown peer; oversized payload; low-order identity key.
    let (s, body, _) = alice.send("carol", b"x").await;
    assert_eq!((s, body["error"].as_str()), (404, Some("unknown_peer")));
    let (s, body, _) = alice.send("bob", &[0u8; 1001]).await;
    assert_eq!((s, body["error"].as_str()), (413, Some("payload_too_large")));
    let (s, body, _) = alice
        .call(
            "/publish_key",
            &Call::PublishKey {
                identity_key: Bytes(vec![0; 32]),
            },
        )
        .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_field")));
    // Client id taken by another key.
    let other = Raw::connect(&server.url, "carol", server.server_key()).await;
    drop(other);
    let (s, body) = Raw::try_connect(&server.url, "alice", server.server_key(), reqwest::Client::new())
        .await
        .err()
        .unwrap();
    assert_eq!((s, body["error"].as_str()), (409, Some("client_id_taken")));
    // Only the one accepted message was stored for bob.
    assert_eq!(payloads(&bob.poll(vec![], 0).await).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_id_window_session_and_salt_errors() {
    let server = Server::start(&["--engine", "memory"]).await;
    let (mut alice, _bob) = pair(&server).await;
    // A clock 400 s slow: msg_id too low (16), with a sealed notice.
    let mut state = alice.session.state();
    state.time_offset -= 400;
    alice.session = mtproto_session::ClientSession::restore(state.clone()).unwrap();
    let (s, body, _) = alice.call("/peers", &Call::list_peers()).await;
    assert_eq!(
        (s, body["error"].as_str(), body["mtproto_code"].as_u64()),
        (400, Some("bad_msg"), Some(16))
    );
    assert!(body["notice"].is_string());
    // 60 s fast: too high (17).
    state.time_offset += 460;
    alice.session = mtproto_session::ClientSession::restore(state.clone()).unwrap();
    let (_, body, _) = alice.call("/peers", &Call::list_peers()).await;
    assert_eq!(body["mtproto_code"], 17);
    // A stale salt: bad_server_salt with the current salt in an authenticated notice.
    state.time_offset -= 60;
    state.salt = mtproto_session::ServerSalt([0xAB; 8]);
    alice.session = mtproto_session::ClientSession::restore(state.clone()).unwrap();
    let (s, body, _) = alice.call("/peers", &Call::list_peers()).await;
    assert_eq!(
        (s, body["error"].as_str(), body["mtproto_code"].as_u64()),
        (400, Some("bad_server_salt"), Some(48))
    );
    let notice: Bytes = serde_json::from_value(body["notice"].clone()).unwrap();
    let incoming = alice.session.decode_response(&notice.0, common::now()).unwrap();
    assert!(alice.session.handle_notice(&incoming, common::now()).is_some());
    let (s, _, _) = alice.call("/peers", &Call::list_peers()).await;
    assert_eq!(s, 200, "resent with the new salt");
    // Wrong session id.
    let mut st = alice.session.state();
    st.session_id = mtproto_session::SessionId([1; 8]);
    alice.session = mtproto_session::ClientSession::restore(st).unwrap();
    let (s, body, _) = alice.call("/peers", &Call::list_peers()).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("bad_session")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_is_for_authenticated_clients_and_shows_key_versions() {
    let server = Server::start(&["--engine", "memory"]).await;
    let (mut alice, mut bob) = pair(&server).await;
    let key = mtproto_crypto::IdentitySecret::generate(&mut mtproto_crypto::rand_core::OsRng).public();
    let (s, _, inner) = bob
        .call(
            "/publish_key",
            &Call::PublishKey {
                identity_key: Bytes(key.as_bytes().to_vec()),
            },
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(inner.unwrap()["key_version"], 1);
    let (_, _, inner) = alice.call("/peers", &Call::list_peers()).await;
    let peers = inner.unwrap()["peers"].as_array().unwrap().clone();
    let b = peers.iter().find(|p| p["client_id"] == "bob").unwrap();
    assert_eq!(b["key_version"], 1);
    assert_eq!(b["fingerprint"], key.short_fingerprint());
    // Without an envelope there is no directory.
    let (s, body) = post(
        &reqwest::Client::new(),
        &format!("{}/peers", server.url),
        &json!({}),
    )
    .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_field")));
    assert_eq!(healthz(&server.url).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_long_poll_does_not_block_the_clients_other_requests() {
    let server = Server::start(&["--engine", "memory"]).await;
    let (mut alice, _bob) = pair(&server).await;
    // A poll envelope, sent once (answered at once), then resent with a long wait: the resend
    // waits in the relay for up to 20 s.
    // It carries an ack, so it is committed and its resend is a duplicate.
    let packet = alice.seal(&Call::PollMessages {
        ack: vec![relay_core::AckRef::from(999_999)],
        timeout_ms: Some(20_000),
        limit: None,
    });
    let http = reqwest::Client::new();
    let url = format!("{}/poll_messages", server.url);
    let body = json!({ "packet": Bytes(packet) });
    let first = {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        tokio::spawn(async move { post(&http, &url, &body).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resent = tokio::spawn(async move { post(&http, &url, &body).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Meanwhile the same client sends: it must not wait for the parked polls.
    let t = Instant::now();
    let (s, _, _) = alice.send("bob", b"not blocked").await;
    assert_eq!(s, 200);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "a send waited behind a parked poll ({:?})",
        t.elapsed()
    );
    first.abort();
    resent.abort();
}
