//! The prekey calls end to end: relay-client against the real server over HTTP (SQLite
//! engine): publish, fetch with each one-time prekey handed out once to concurrent requesters,
//! the refusals a client meets, and bad input answered with a JSON error, never a 5xx.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::BTreeSet;

use common::Server;
use mtproto_crypto::{rand_core::OsRng, IdentitySigningKey};
use relay_client::{ClientError, ErrorCode};

fn code(e: ClientError) -> (u16, ErrorCode) {
    match e {
        ClientError::Server { status, code, .. } => (status, code),
        other => panic!("not a refusal: {other}"),
    }
}

/// Six fetches of bob's bundle by `c`, one after the other: the one-time prekey ids.
async fn fetch_six(
    c: &relay_client::Client,
    identity: [u8; 32],
    signed: &mtproto_session::x3dh::SignedPrekeyPublic,
) -> Vec<Option<u32>> {
    let mut got = Vec::new();
    for _ in 0..6 {
        let a = c.prekey_bundle("bob").await.unwrap();
        assert_eq!(a.bundle.identity, identity);
        assert_eq!(&a.bundle.signed_prekey, signed);
        assert_eq!(a.key_version, 1);
        got.push(a.bundle.one_time_prekey.map(|k| k.id));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_prekeys_go_to_one_requester_each_through_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    // Bob publishes his own prekeys here (the thin calls), so his client does not.
    let bob = relay_client::Client::connect(
        relay_client::ClientConfig::new(&server.url, "bob", server.pin()).with_prekeys(false),
    )
    .await
    .unwrap();
    let alice = server.connect("alice").await;
    let carol = server.connect("carol").await;

    // Nothing published yet.
    assert_eq!(
        code(alice.prekey_bundle("bob").await.unwrap_err()),
        (404, ErrorCode::NoPrekeys)
    );
    assert_eq!(
        code(alice.prekey_bundle("nobody").await.unwrap_err()),
        (404, ErrorCode::UnknownPeer)
    );

    let signing = IdentitySigningKey::generate(&mut OsRng);
    let mut prekeys = bob.new_prekeys(&signing).await;
    let one_time = prekeys.generate_one_time(10, &mut OsRng).unwrap();
    assert_eq!(bob.publish_prekeys(&prekeys, &one_time).await.unwrap(), 10);
    assert_eq!(bob.publish_prekeys(&prekeys, &[]).await.unwrap(), 10);

    // Two requesters, six fetches each, at the same time: the ten go out once each.
    let (identity, signed) = (*bob.identity_key().await.as_bytes(), prekeys.signed_prekey());
    let (a, c) = tokio::join!(
        fetch_six(&alice, identity, &signed),
        fetch_six(&carol, identity, &signed)
    );
    let handed: Vec<u32> = a.iter().chain(&c).flatten().copied().collect();
    let distinct: BTreeSet<u32> = handed.iter().copied().collect();
    assert_eq!(handed.len(), 10, "{a:?} {c:?}");
    assert_eq!(distinct, one_time.iter().map(|k| k.id).collect());
    assert_eq!(bob.publish_prekeys(&prekeys, &[]).await.unwrap(), 0);

    // Prekeys made for another identity key are refused by the client before sending; the
    // relay refuses them for the new key after a rotation, and hands out nothing meanwhile.
    bob.rotate_identity().await.unwrap();
    assert!(matches!(
        bob.publish_prekeys(&prekeys, &[]).await,
        Err(ClientError::Invalid(_))
    ));
    assert_eq!(
        code(alice.prekey_bundle("bob").await.unwrap_err()),
        (404, ErrorCode::NoPrekeys)
    );
    let mut fresh = bob.new_prekeys(&signing).await;
    let keys = fresh.generate_one_time(100, &mut OsRng).unwrap();
    assert_eq!(bob.publish_prekeys(&fresh, &keys).await.unwrap(), 100);
    let keys = fresh.generate_one_time(100, &mut OsRng).unwrap();
    assert_eq!(bob.publish_prekeys(&fresh, &keys).await.unwrap(), 200);
    // A 201st is refused whole with its own code (the client's store had to make room first).
    assert!(fresh.consume_one_time(keys[0].id));
    let more = fresh.generate_one_time(1, &mut OsRng).unwrap();
    assert_eq!(
        code(bob.publish_prekeys(&fresh, &more).await.unwrap_err()),
        (409, ErrorCode::PrekeyQuota)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_prekey_requests_get_a_json_refusal_not_a_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let http = reqwest::Client::new();
    for path in ["/publish_prekeys", "/prekey_bundle"] {
        for (body, status, code) in [
            ("{}", 400, "invalid_field"),
            ("{\"packet\":", 400, "malformed_json"),
            (
                "{\"packet\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}",
                401,
                "unknown_auth_key",
            ),
        ] {
            let r = http
                .post(format!("{}{path}", server.url))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), status, "{path} {body}");
            let j: serde_json::Value = r.json().await.unwrap();
            assert_eq!(j["error"], code, "{path} {body}: {j}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_signed_by_another_signing_key_than_the_first_is_refused_until_a_key_change() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let alice_profile = profiles.path().join("alice.json");
    let alice_cfg = || server.config_in(profiles.path(), "alice");
    // Bob's prekeys are published by the test: what the relay hands out is ours to choose, as a
    // relay substituting prekeys would.
    let bob = relay_client::Client::connect(
        relay_client::ClientConfig::new(&server.url, "bob", server.pin()).with_prekeys(false),
    )
    .await
    .unwrap();
    let first = IdentitySigningKey::generate(&mut OsRng);
    bob.publish_prekeys(&bob.new_prekeys(&first).await, &[])
        .await
        .unwrap();
    let alice = relay_client::Client::connect(alice_cfg()).await.unwrap();
    alice
        .send("bob", b"started with the first signing key")
        .await
        .unwrap();
    let pinned = |p: &relay_client::Profile| p.peers["bob"].signing_key;
    let profile = relay_client::Profile::load(&alice_profile).unwrap().unwrap();
    assert_eq!(pinned(&profile), Some(*first.public().as_bytes()));
    // Alice's conversation with bob is gone (so her next send fetches a bundle again).
    drop(alice);
    let mut profile = profile;
    profile.ratchets.remove("bob");
    profile.save(&alice_profile).unwrap();

    // The relay hands out prekeys for bob's identity key signed by another signing key.
    let other = IdentitySigningKey::generate(&mut OsRng);
    bob.publish_prekeys(&bob.new_prekeys(&other).await, &[])
        .await
        .unwrap();
    let alice = relay_client::Client::connect(alice_cfg()).await.unwrap();
    let err = alice.send("bob", b"never sent").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::SigningKeyChanged { peer } if peer == "bob"),
        "{err:?}"
    );
    assert!(err.to_string().contains("another signing key"), "{err}");
    let c = alice.conversation("bob").await.unwrap();
    assert!(!c.is_some_and(|c| c.forward_secret), "nothing started");
    assert!(alice.outbox().await.is_empty(), "nothing queued");
    assert_eq!(
        server.mailbox("bob").await.len(),
        1,
        "only the first message reached bob's mailbox"
    );
    // The pin survives a restart, and the first signing key is taken again.
    drop(alice);
    bob.publish_prekeys(&bob.new_prekeys(&first).await, &[])
        .await
        .unwrap();
    let alice = relay_client::Client::connect(alice_cfg()).await.unwrap();
    alice.send("bob", b"the first signing key again").await.unwrap();
    assert_eq!(server.mailbox("bob").await.len(), 2);

    // A new identity key (accepted by the user) starts without a pin: its own signing key is
    // taken and pinned.
    bob.rotate_identity().await.unwrap();
    bob.publish_prekeys(&bob.new_prekeys(&other).await, &[])
        .await
        .unwrap();
    alice.lookup(&["bob"]).await.unwrap();
    alice.accept_peer_key("bob").await.unwrap();
    alice.send("bob", b"to the new key").await.unwrap();
    let profile = relay_client::Profile::load(&alice_profile).unwrap().unwrap();
    assert_eq!(pinned(&profile), Some(*other.public().as_bytes()));
    server.stop().await;
}
