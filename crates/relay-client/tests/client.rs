//! relay-client against a real relay-server on a loopback port.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::time::Duration;

use common::Server;
use relay_client::{Client, ClientConfig, ClientError, ErrorCode, Event, KeyStatus, Pin, SendState};

async fn next_message(c: &Client) -> (String, Vec<u8>) {
    for _ in 0..20 {
        for ev in c.poll(Duration::from_secs(2)).await.unwrap() {
            if let Event::Message { from, body, .. } = ev {
                return (from, body);
            }
        }
    }
    panic!("no message arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_chat_with_matching_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let alice = server.connect("alice").await;
    let bob = server.connect("bob").await;
    // Discovery: a prefix search finds bob; an exact lookup too; neither lists unknown names.
    let (found, next) = alice.search("B", None).await.unwrap();
    assert_eq!(next, None);
    assert!(found
        .iter()
        .any(|p| p.client_id == "bob" && p.key_status == KeyStatus::New));
    assert!(found.iter().all(|p| p.client_id.starts_with('b')));
    let peers = alice.lookup(&["bob", "nobody"]).await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(
        alice.fingerprint("bob").await.unwrap().to_string(),
        bob.fingerprint("alice").await.unwrap().to_string()
    );
    alice.send("bob", b"hi bob").await.unwrap();
    assert_eq!(next_message(&bob).await, ("alice".to_owned(), b"hi bob".to_vec()));
    bob.send("alice", b"hi alice").await.unwrap();
    assert_eq!(
        next_message(&alice).await,
        ("bob".to_owned(), b"hi alice".to_vec())
    );
    // Acknowledged on the next poll: nothing comes back.
    bob.ack().await.unwrap();
    assert!(bob.poll(Duration::ZERO).await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_from_its_profile_and_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let a_cfg = ClientConfig::new(&server.url, "alice", Pin::TrustOnFirstUse)
        .with_profile(profiles.path().join("alice.json"));
    let b_cfg = ClientConfig::new(&server.url, "bob", Pin::TrustOnFirstUse)
        .with_profile(profiles.path().join("bob.json"));
    let alice = Client::connect(a_cfg.clone()).await.unwrap();
    let bob = Client::connect(b_cfg.clone()).await.unwrap();
    let bob_key = bob.identity_key().await;
    alice.send("bob", b"before restart").await.unwrap();
    drop(bob);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(profiles.path().join("alice.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the profile holds secrets");
    }
    // The server restarts on the same data directory and port.
    server.stop().await;
    let server = Server::start(dir.path(), &addr).await;
    // Bob resumes: same identity, no new handshake needed, the message is still there.
    let bob = Client::connect(b_cfg).await.unwrap();
    assert_eq!(bob.identity_key().await, bob_key);
    assert_eq!(
        next_message(&bob).await,
        ("alice".to_owned(), b"before restart".to_vec())
    );
    // Alice's old client object keeps working across the restart.
    alice.send("bob", b"after restart").await.unwrap();
    assert_eq!(
        next_message(&bob).await,
        ("alice".to_owned(), b"after restart".to_vec())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_key_change_is_reported_never_silent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let alice = server.connect("alice").await;
    let bob = server.connect("bob").await;
    alice.send("bob", b"1").await.unwrap();
    assert_eq!(next_message(&bob).await.1, b"1");
    let answer = bob.rotate_identity().await.unwrap();
    assert!(answer.changed);
    // Alice's chat is under bob's old key. Her send names the key version it was sealed for,
    // so the relay refuses it (nothing stored) instead of storing what bob can no longer read.
    let refused = alice.send("bob", b"2").await.unwrap();
    assert!(
        matches!(
            &refused.state,
            SendState::Refused {
                code: ErrorCode::PeerKeyChanged,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(!refused.maybe_stored);
    // The refusal made alice look bob up: he shows as changed, and sending is blocked until
    // she accepts (or verifies) the new key.
    let peers = alice.contacts().await.unwrap();
    assert!(peers
        .iter()
        .any(|p| p.client_id == "bob" && p.key_status == KeyStatus::Changed));
    assert!(matches!(
        alice.send("bob", b"3").await,
        Err(ClientError::PeerKeyChanged { .. })
    ));
    assert!(matches!(
        alice.retry(refused.id).await,
        Err(ClientError::PeerKeyChanged { .. })
    ));
    // Bob (new key) writes to alice: alice cannot open it and is told why.
    bob.send("alice", b"from new key").await.unwrap();
    let mut saw_warning = false;
    for _ in 0..5 {
        for ev in alice.poll(Duration::from_millis(500)).await.unwrap() {
            if ev == (Event::PeerKeyChanged { from: "bob".into() }) {
                saw_warning = true;
            }
            assert!(
                !matches!(ev, Event::Message { .. }),
                "never decrypted under a silently accepted key"
            );
        }
        if saw_warning {
            break;
        }
    }
    assert!(saw_warning);
    alice.accept_peer_key("bob").await.unwrap();
    assert_eq!(
        next_message(&alice).await,
        ("bob".to_owned(), b"from new key".to_vec())
    );
    // The refused message, retried: sealed again under bob's new key, and bob reads it.
    let resent = alice.retry(refused.id).await.unwrap();
    assert!(matches!(resent.state, SendState::Stored { .. }), "{resent:?}");
    assert_eq!(next_message(&bob).await, ("alice".to_owned(), b"2".to_vec()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_client_refuses_another_server() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let impostor = Server::start(other_dir.path(), "127.0.0.1:0").await;
    let err = Client::connect(ClientConfig::new(&impostor.url, "alice", server.pin()))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::UntrustedServer { .. }), "{err}");
    // A TOFU profile pins the first server and then refuses the impostor.
    let profiles = tempfile::tempdir().unwrap();
    let cfg = ClientConfig::new(&server.url, "carol", Pin::TrustOnFirstUse)
        .with_profile(profiles.path().join("c.json"));
    drop(Client::connect(cfg.clone()).await.unwrap());
    let mut p = relay_client::Profile::load(&profiles.path().join("c.json"))
        .unwrap()
        .unwrap();
    p.session = None; // force a new handshake, against the impostor
    p.save(&profiles.path().join("c.json")).unwrap();
    let mut to_impostor = cfg;
    to_impostor.server = impostor.url.clone();
    let err = Client::connect(to_impostor).await.unwrap_err();
    assert!(matches!(err, ClientError::UntrustedServer { .. }), "{err}");
    impostor.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_shakes_hands_again_when_the_server_lost_its_key() {
    // The same server key, but the server's data (auth keys, directory, mailboxes) is gone.
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("server_key");
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |d: &std::path::Path| -> Vec<String> {
        vec![
            "relay-server".into(),
            "--data-dir".into(),
            d.to_str().unwrap().into(),
            "--key-file".into(),
            key_file.to_str().unwrap().into(),
        ]
    };
    let a1 = args(d1.path());
    let server = Server::start_with(&a1.iter().map(String::as_str).collect::<Vec<_>>(), "127.0.0.1:0").await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let alice = server.connect("alice").await;
    let bob = server.connect("bob").await;
    alice.send("bob", b"before").await.unwrap();
    assert_eq!(next_message(&bob).await.1, b"before");
    server.stop().await;
    let mut a2 = args(d2.path());
    // The operator says so: without it the relay refuses to start on lost data.
    a2.push("--start-fresh".into());
    let server = Server::start_with(&a2.iter().map(String::as_str).collect::<Vec<_>>(), &addr).await;
    // Both clients' next calls meet unknown_auth_key: they shake hands again, republish their
    // identity keys, and the conversation goes on under the same chat key.
    bob.ack().await.unwrap();
    alice
        .send("bob", b"after the server lost everything")
        .await
        .unwrap();
    // bob's next poll tells him once that the relay had lost what it held for him.
    let first = bob.poll(Duration::from_secs(2)).await.unwrap();
    assert!(matches!(first.first(), Some(Event::RelayLostData)), "{first:?}");
    assert_eq!(
        first.iter().filter(|e| matches!(e, Event::RelayLostData)).count(),
        1
    );
    let got = first.into_iter().find_map(|e| match e {
        Event::Message { from, body, .. } => Some((from, body)),
        _ => None,
    });
    let got = match got {
        Some(m) => m,
        None => next_message(&bob).await,
    };
    assert_eq!(
        got,
        ("alice".to_owned(), b"after the server lost everything".to_vec())
    );
    assert!(!bob
        .poll(Duration::ZERO)
        .await
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::RelayLostData)));
    // The new server's directory has bob's identity key again, the one alice accepted before.
    let peers = alice.lookup(&["Bob"]).await.unwrap();
    assert!(
        peers
            .iter()
            .any(|p| p.client_id == "bob" && p.key_status == KeyStatus::Known),
        "{peers:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_as_a_stream_and_are_acknowledged_after_hand_off() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let alice = server.connect("alice").await;
    let bob = server.connect("bob").await;
    for i in 0..3 {
        alice.send("bob", format!("stream {i}").as_bytes()).await.unwrap();
    }
    let got: Vec<Event> = {
        let stream = bob.events();
        futures::pin_mut!(stream);
        let mut got = Vec::new();
        while got.len() < 3 {
            let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            got.push(ev);
        }
        got
    };
    let bodies: Vec<Vec<u8>> = got
        .into_iter()
        .map(|e| match e {
            Event::Message { body, .. } => body,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        bodies,
        vec![b"stream 0".to_vec(), b"stream 1".to_vec(), b"stream 2".to_vec()]
    );
    // Handed out, so acknowledged with the next poll: nothing comes back.
    bob.ack().await.unwrap();
    assert!(bob.poll(Duration::ZERO).await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_only_polls_for_hours_is_never_locked_out() {
    // Found by a review: a poll that acknowledges nothing is not committed, so the relay's stored
    // replay window kept the seq_no of the last commit while the client's counter climbed 2 per
    // poll; past MAX_SEQ_NO_STEP (4,096) every call was refused with code 33, for good — an idle
    // page overnight (about 5.7 h of 10 s long-polls).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // The per-account request budget raised: the hours of polls come in seconds.
    let args = [
        "relay-server",
        "--data-dir",
        d,
        "--account-burst",
        "3000",
        "--account-rate",
        "3000",
    ];
    let server = Server::start_with(&args, "127.0.0.1:0").await;
    let idle = server.connect("idle").await;
    let other = server.connect("other").await;
    for _ in 0..2_100 {
        assert!(idle.poll(Duration::ZERO).await.unwrap().is_empty());
    }
    let r = idle.send("other", b"still here").await.unwrap();
    assert!(matches!(r.state, SendState::Stored { .. }), "{r:?}");
    assert_eq!(common::drain(&other, 1).await.0, vec![b"still here".to_vec()]);
    server.stop().await;
}
