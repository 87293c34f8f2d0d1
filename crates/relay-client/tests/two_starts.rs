//! Which of a pair's two ratchet conversations sends (`docs/protocol.md` §3.3), through a real
//! relay: after a profile comes back from a copy older than both conversations, a new start
//! from the peer while ours has heard back retires ours (it sends no more, it still opens), and
//! nothing is lost either way. (The other way to such a start, a late copy of the peer's first
//! one, reaches this client only from a relay holding a packet back: a refused message is
//! sealed again here, its number given back. The page resends it as it was; its test is
//! `conversations.test.mjs` "a late copy of the peer's first start …".)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use common::{by_key, drain, read_n, Server};
use mtproto_session::PacketKind;
use relay_client::{Client, Profile};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_profile_comes_back_from_an_older_copy_the_peer_answers_in_its_new_start() {
    // Found by a review: after simultaneous starts, one side's profile is restored from a copy
    // older than both conversations. Its new start was accepted, but the other side went on
    // sending in its own conversation (the lower initiator key), which the restored side no
    // longer had: every message the other way failed authentication.
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let path = |name: &str| profiles.path().join(format!("{name}.json"));
    let cfg = |name: &str| server.config_in(profiles.path(), name);
    let alice = Client::connect(cfg("alice")).await.unwrap();
    let bob = Client::connect(cfg("bob")).await.unwrap();
    // `high` is restored; `low`'s conversation is the one both send in (the lower initiator).
    let ((low, low_name), (high, high_name)) = by_key((alice, "alice"), (bob, "bob")).await;
    let copy = profiles.path().join("older-copy.json");
    std::fs::copy(path(high_name), &copy).unwrap();

    let (a, b) = tokio::join!(low.send(high_name, b"l0"), high.send(low_name, b"h0"));
    a.unwrap();
    b.unwrap();
    assert_eq!(drain(&high, 1).await.0, vec![b"l0".to_vec()]);
    assert_eq!(drain(&low, 1).await.0, vec![b"h0".to_vec()]);
    high.send(low_name, b"h1").await.unwrap();
    assert_eq!(drain(&low, 1).await.0, vec![b"h1".to_vec()]);
    assert!(low.conversation(high_name).await.unwrap().unwrap().initiated);

    // `high` comes back from the copy: neither conversation is in it.
    drop(high);
    std::fs::copy(&copy, path(high_name)).unwrap();
    let high = Client::connect(cfg(high_name)).await.unwrap();
    assert!(high.conversation(low_name).await.unwrap().is_none());
    high.send(low_name, b"h after the restore").await.unwrap();
    assert_eq!(
        server.mailbox_kinds(low_name).await,
        vec![Some(PacketKind::Start)]
    );
    assert_eq!(read_n(&low, 1).await, vec![b"h after the restore".to_vec()]);
    // `low` answers in the restored side's new start, not in the conversation it lost; that one
    // is kept, retired (it only opens), in the profile too.
    let c = low.conversation(high_name).await.unwrap().unwrap();
    assert!(
        !c.initiated,
        "low still sends in the conversation the restored side lost"
    );
    let saved = Profile::load(&path(low_name)).unwrap().unwrap();
    let r = &saved.ratchets[high_name];
    assert!(r.ours.is_some() && r.theirs.is_some() && r.ours_retired);
    for i in 0..3 {
        low.send(high_name, format!("l after the restore {i}").as_bytes())
            .await
            .unwrap();
    }
    let want: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("l after the restore {i}").into_bytes())
        .collect();
    assert_eq!(read_n(&high, 3).await, want);
    // And on, both ways, in the one conversation left.
    high.send(low_name, b"h again").await.unwrap();
    assert_eq!(read_n(&low, 1).await, vec![b"h again".to_vec()]);
    low.send(high_name, b"l again").await.unwrap();
    assert_eq!(read_n(&high, 1).await, vec![b"l again".to_vec()]);
    server.stop().await;
}
