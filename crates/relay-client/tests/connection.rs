//! `Connection`: the relay's API without the end-to-end layer, through the real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::Server;
use mtproto_crypto::rand_core::OsRng;
use mtproto_session::{wire::Bytes, ClientId};
use relay_client::api::{Call, PeersAnswer, PollAnswer, PublishAnswer, SendAnswer};
use relay_client::{ClientConfig, ClientError, Connection, ErrorCode, Pin, Transport};

fn publish() -> Call {
    let key = mtproto_crypto::IdentitySecret::generate(&mut OsRng).public();
    Call::PublishKey {
        identity_key: Bytes(key.as_bytes().to_vec()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_on_one_transport_relay_bytes_without_the_end_to_end_layer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let config = |name: &str| ClientConfig::new(&server.url, name, server.pin());
    let a = Connection::open(&config("conn-a")).await.unwrap();
    let b = Connection::open_on(a.transport().clone(), &config("conn-b"))
        .await
        .unwrap();
    assert_eq!(a.server_key(), server.relay.server_key().public());
    assert_ne!(
        a.recovery_code().to_string(),
        b.recovery_code().to_string(),
        "each handshake registers its own recovery code"
    );
    for c in [&a, &b] {
        let _: PublishAnswer = c.call(&publish()).await.unwrap();
    }
    // A connection is shared across tasks: its calls are `Send` futures.
    let a = std::sync::Arc::new(a);
    let shared = a.clone();
    let peers: PeersAnswer = tokio::spawn(async move { shared.call(&Call::list_peers()).await })
        .await
        .unwrap()
        .unwrap();
    let names: Vec<&str> = peers.peers.iter().map(|p| p.client_id.as_str()).collect();
    assert_eq!(names, ["conn-a", "conn-b"]);

    // The payload is whatever the caller sealed end to end (here: nothing), relayed as is.
    let send = Call::SendMessage {
        target_peer: ClientId::new("conn-b").unwrap(),
        payload: Bytes(b"opaque bytes".to_vec()),
        key_version: None,
    };
    let _: SendAnswer = a.call(&send).await.unwrap();
    let poll = |ack| Call::PollMessages {
        ack,
        timeout_ms: Some(2_000),
        limit: None,
    };
    let got: PollAnswer = b.call(&poll(vec![])).await.unwrap();
    assert_eq!(got.messages.len(), 1);
    assert_eq!(
        (got.messages[0].from.as_str(), &got.messages[0].payload.0[..]),
        ("conn-a", &b"opaque bytes"[..])
    );
    let acked: PollAnswer = b.call(&poll(vec![got.messages[0].ack()])).await.unwrap();
    assert_eq!(acked.acked, 1);
    assert!(server.mailbox("conn-b").await.is_empty());

    // A refusal is the relay's code; the connection stays usable.
    let to_nobody = Call::SendMessage {
        target_peer: ClientId::new("nobody").unwrap(),
        payload: Bytes(vec![1]),
        key_version: None,
    };
    match a.call::<SendAnswer>(&to_nobody).await {
        Err(ClientError::Server {
            status: 404,
            code: ErrorCode::UnknownPeer,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let _: PeersAnswer = a.call(&Call::list_peers()).await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_refuses_a_server_that_is_not_the_pinned_one_and_reports_a_taken_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let other = mtproto_crypto::ServerSigningKey::generate(&mut OsRng).public();
    let pinned_elsewhere = ClientConfig::new(&server.url, "careful", Pin::Key(other));
    match Connection::open(&pinned_elsewhere).await {
        Err(ClientError::UntrustedServer { .. }) => {}
        other => panic!("{other:?}"),
    }
    let first = ClientConfig::new(&server.url, "taken", server.pin());
    let _owner = Connection::open(&first).await.unwrap();
    let again = Transport::new(&first.clone().with_retries(false)).unwrap();
    match Connection::open_on(again, &first).await {
        Err(ClientError::Server {
            status: 409,
            code: ErrorCode::ClientIdTaken,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // Not a name the relay accepts.
    match Connection::open(&ClientConfig::new(&server.url, "no spaces", server.pin())).await {
        Err(ClientError::Invalid(_)) => {}
        other => panic!("{other:?}"),
    }
    server.stop().await;
}
