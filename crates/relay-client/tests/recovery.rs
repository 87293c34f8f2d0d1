//! A user who lost their device takes their name back with the recovery code shown at sign-up
//! (issue 13, defect 4), through a real relay.
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
use relay_client::{Client, ClientConfig, ClientError, ErrorCode, KeyStatus, RecoveryCode};

fn refused_with(r: Result<Client, ClientError>) -> (u16, ErrorCode) {
    match r {
        Err(ClientError::Server { status, code, .. }) => (status, code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_device_is_replaced_with_the_recovery_code_and_peers_see_a_key_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let old = server.connect("alice").await;
    let code = old.take_recovery_code().await.expect("a new account gets a code");
    assert!(old.take_recovery_code().await.is_none(), "shown once");
    let bob = server.connect("bob").await;
    bob.send("alice", b"hi alice").await.unwrap();
    let old_fp = bob.fingerprint("alice").await.unwrap();
    let first = old.poll(Duration::from_millis(500)).await.unwrap();
    assert!(
        first
            .iter()
            .any(|e| matches!(e, relay_client::Event::Message { .. })),
        "{first:?}"
    );

    // The lost device (a thief, say) keeps a long-poll open across the recovery: mail sent
    // after it must not reach that poll.
    let thief_poll = {
        let old = std::sync::Arc::new(old);
        let waiting = old.clone();
        (
            old,
            tokio::spawn(async move { waiting.poll(Duration::from_secs(6)).await }),
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = thief_poll.0;

    // A new device (no profile): the name is taken, and a wrong code does not move it.
    let cfg = || ClientConfig::new(&server.url, "alice", server.pin());
    assert_eq!(
        refused_with(Client::connect(cfg()).await),
        (409, ErrorCode::ClientIdTaken)
    );
    let wrong = RecoveryCode::generate(&mut mtproto_crypto::rand_core::OsRng);
    assert_eq!(
        refused_with(Client::connect(cfg().with_recovery_code(wrong)).await),
        (403, ErrorCode::RecoveryRefused)
    );
    // The code as the user typed it back.
    let typed = RecoveryCode::parse(&code.to_string().to_uppercase()).unwrap();
    let new = Client::connect(cfg().with_recovery_code(typed)).await.unwrap();
    let second = new
        .take_recovery_code()
        .await
        .expect("a recovery registers a new code, shown once");
    assert_ne!(second.to_string(), code.to_string());

    bob.send("alice", b"after the recovery").await.unwrap();
    let got_by_thief = thief_poll.1.await.unwrap();
    assert!(
        !matches!(&got_by_thief, Ok(events) if events.iter().any(|e| matches!(e, relay_client::Event::Message { .. }))),
        "the old device's waiting poll got mail sent after the recovery: {got_by_thief:?}"
    );
    // The lost device is locked out: its key is gone and the name is not free.
    assert!(old.poll(Duration::from_millis(100)).await.is_err());
    // Bob sees a key change, never a silent switch; after he accepts, they talk.
    let view = bob.lookup(&["alice"]).await.unwrap();
    assert_eq!(view[0].key_status, KeyStatus::Changed);
    assert!(matches!(
        bob.send("alice", b"to whom?").await,
        Err(ClientError::PeerKeyChanged { .. })
    ));
    bob.accept_peer_key("alice").await.unwrap();
    assert_ne!(
        bob.fingerprint("alice").await.unwrap().to_string(),
        old_fp.to_string()
    );
    bob.send("alice", b"welcome back").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        for ev in new.poll(Duration::from_millis(300)).await.unwrap() {
            if let relay_client::Event::Message { body, .. } = ev {
                got.push(body);
            }
        }
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got, vec![b"welcome back".to_vec()]);

    // The code used for the recovery no longer works; the new one does, from yet another device.
    assert_eq!(
        refused_with(Client::connect(cfg().with_recovery_code(code)).await),
        (403, ErrorCode::RecoveryRefused)
    );
    let again = Client::connect(cfg().with_recovery_code(second)).await.unwrap();
    assert!(
        new.poll(Duration::from_millis(100)).await.is_err(),
        "the previous device is out"
    );
    assert!(
        again.take_recovery_code().await.is_some(),
        "and a third code replaces it"
    );
    drop(again);
    server.stop().await;
}
