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
