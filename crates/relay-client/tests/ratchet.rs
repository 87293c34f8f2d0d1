//! Conversations under the double ratchet through a real relay (issue 15): the relay stores
//! ratchet packets, older clients get static ones, simultaneous starts converge, starts without
//! a one-time prekey are reported, the relay's prekeys are topped up, a restarted client goes
//! on, a crash redelivers the kept copy once, and a saved profile cannot open what it read.
//! Skipped message keys (bursts, reordering, budgets, the client-wide cap): `skipped_keys.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{drain, poll_messages, Server};
use mtproto_crypto::rand_core::OsRng;
use mtproto_session::{packet_kind, ChatState, PacketKind, RatchetChat, UnixTime};
use relay_client::{Client, ClientConfig, Event, Profile};

/// A server whose prekey hand-out budgets let one test drain a peer's bundle.
async fn generous_server(dir: &Path) -> Server {
    let d = dir.to_str().unwrap();
    Server::start_with(
        &[
            "relay-server",
            "--data-dir",
            d,
            "--prekey-handouts-per-hour",
            "1000",
            "--prekey-target-handouts-per-hour",
            "1000",
        ],
        "127.0.0.1:0",
    )
    .await
}

/// Fetches `peer`'s bundle until the relay hands out no one-time prekey; returns how many it did.
async fn drain_one_time_prekeys(by: &Client, peer: &str) -> usize {
    for taken in 0..=300 {
        if by
            .prekey_bundle(peer)
            .await
            .unwrap()
            .bundle
            .one_time_prekey
            .is_none()
        {
            return taken;
        }
    }
    panic!("the relay kept handing out one-time prekeys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_converse_under_the_ratchet_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let alice = server.connect("alice").await;
    let bob = server.connect("bob").await;
    for text in ["one", "two"] {
        alice.send("bob", text.as_bytes()).await.unwrap();
    }
    // Alice repeats her start until she hears from Bob; the relay sees no static packet.
    assert_eq!(
        server.mailbox_kinds("bob").await,
        vec![Some(PacketKind::Start); 2]
    );
    let (bodies, others) = drain(&bob, 2).await;
    assert_eq!(bodies, vec![b"one".to_vec(), b"two".to_vec()]);
    assert!(
        others.is_empty(),
        "a start with a one-time prekey: no notice: {others:?}"
    );
    bob.send("alice", b"three").await.unwrap();
    assert_eq!(
        server.mailbox_kinds("alice").await,
        vec![Some(PacketKind::Ratchet)]
    );
    assert_eq!(drain(&alice, 1).await.0, vec![b"three".to_vec()]);
    alice.send("bob", b"four").await.unwrap();
    assert_eq!(
        server.mailbox_kinds("bob").await,
        vec![Some(PacketKind::Ratchet)],
        "she heard back: no start any more"
    );
    assert_eq!(drain(&bob, 1).await.0, vec![b"four".to_vec()]);

    let a = alice.conversation("bob").await.unwrap().unwrap();
    let b = bob.conversation("alice").await.unwrap().unwrap();
    assert!(a.forward_secret && b.forward_secret);
    assert!(a.initiated && !b.initiated);
    assert!(!a.without_one_time_prekey && !b.without_one_time_prekey);
    assert_eq!(alice.conversation("carol").await.unwrap(), None);
    // The safety number is still the identity keys'.
    assert_eq!(
        alice.fingerprint("bob").await.unwrap(),
        bob.fingerprint("alice").await.unwrap()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_prekeys_gets_static_messages_until_it_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let alice = Client::connect(
        ClientConfig::new(&server.url, "alice", server.pin()).with_no_prekeys_retry(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    // Bob's client is an older one: no prekeys.
    let b_cfg =
        ClientConfig::new(&server.url, "bob", server.pin()).with_profile(profiles.path().join("bob.json"));
    let bob = Client::connect(b_cfg.clone().with_prekeys(false)).await.unwrap();
    let mut seqs = vec![alice.send("bob", b"static one").await.unwrap().seq];
    let c = alice.conversation("bob").await.unwrap().unwrap();
    assert!(!c.forward_secret && c.peer_has_no_prekeys, "{c:?}");
    // Remembered: the next send does not ask again, and goes static too.
    seqs.push(alice.send("bob", b"static two").await.unwrap().seq);
    assert_eq!(
        server.mailbox_kinds("bob").await,
        vec![Some(PacketKind::Static); 2]
    );
    assert_eq!(drain(&bob, 2).await.0.len(), 2);
    bob.send("alice", b"static reply").await.unwrap();
    assert_eq!(
        server.mailbox_kinds("alice").await,
        vec![Some(PacketKind::Static)]
    );
    assert_eq!(drain(&alice, 1).await.0, vec![b"static reply".to_vec()]);

    // Bob updates (same profile): his client publishes prekeys on connect. Once Alice's
    // "no prekeys" answer is old, her next send starts a ratchet conversation.
    drop(bob);
    let bob = Client::connect(b_cfg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    seqs.push(alice.send("bob", b"ratchet three").await.unwrap().seq);
    assert_eq!(server.mailbox_kinds("bob").await, vec![Some(PacketKind::Start)]);
    assert_eq!(
        seqs,
        vec![0, 1, 2],
        "one numbering for static and ratchet messages"
    );
    // `drain` insists on in-order delivery: the window is the static conversation's.
    assert_eq!(drain(&bob, 1).await.0, vec![b"ratchet three".to_vec()]);
    assert!(alice.conversation("bob").await.unwrap().unwrap().forward_secret);
    bob.send("alice", b"ratchet reply").await.unwrap();
    assert_eq!(
        server.mailbox_kinds("alice").await,
        vec![Some(PacketKind::Ratchet)]
    );
    assert_eq!(drain(&alice, 1).await.0, vec![b"ratchet reply".to_vec()]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_starts_converge_on_the_lower_initiator() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let alice = server.connect("alice").await;
    let bob = server.connect("bob").await;
    // Both send first, before either heard from the other: two conversations.
    let (a, b) = tokio::join!(alice.send("bob", b"a0"), bob.send("alice", b"b0"));
    a.unwrap();
    b.unwrap();
    assert_eq!(server.mailbox_kinds("bob").await, vec![Some(PacketKind::Start)]);
    assert_eq!(server.mailbox_kinds("alice").await, vec![Some(PacketKind::Start)]);
    let mut got_a = drain(&alice, 1).await.0;
    let mut got_b = drain(&bob, 1).await.0;
    let alice_lower = alice.identity_key().await.as_bytes() < bob.identity_key().await.as_bytes();
    for round in 1..4 {
        alice.send("bob", format!("a{round}").as_bytes()).await.unwrap();
        bob.send("alice", format!("b{round}").as_bytes()).await.unwrap();
        // Both send with the conversation the lower identity key started.
        let a = alice.conversation("bob").await.unwrap().unwrap();
        let b = bob.conversation("alice").await.unwrap().unwrap();
        assert_eq!((a.initiated, b.initiated), (alice_lower, !alice_lower));
        got_a.extend(drain(&alice, 1).await.0);
        got_b.extend(drain(&bob, 1).await.0);
    }
    // Every message opened exactly once, in order (`drain` checks the order).
    let want = |p: &str| (0..4).map(|i| format!("{p}{i}").into_bytes()).collect::<Vec<_>>();
    assert_eq!(got_a, want("b"));
    assert_eq!(got_b, want("a"));
    // Neither side goes on repeating a start: the conversation that sends has heard back.
    alice.send("bob", b"last").await.unwrap();
    bob.send("alice", b"last").await.unwrap();
    assert_eq!(server.mailbox_kinds("bob").await, vec![Some(PacketKind::Ratchet)]);
    assert_eq!(
        server.mailbox_kinds("alice").await,
        vec![Some(PacketKind::Ratchet)]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_a_one_time_prekey_works_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = generous_server(dir.path()).await;
    let alice = server.connect("alice").await;
    let bob = server.connect("bob").await;
    let carol = server.connect("carol").await;
    assert_eq!(
        drain_one_time_prekeys(&carol, "bob").await,
        100,
        "connect published 100"
    );
    alice.send("bob", b"no one-time prekey").await.unwrap();
    assert_eq!(server.mailbox_kinds("bob").await, vec![Some(PacketKind::Start)]);
    let c = alice.conversation("bob").await.unwrap().unwrap();
    assert!(c.forward_secret && c.without_one_time_prekey, "{c:?}");
    // Alice is told with her next poll; Bob before the message.
    let (_, others) = poll_messages(&alice).await;
    assert_eq!(
        others,
        vec![Event::StartedWithoutOneTimePrekey {
            peer: "bob".into(),
            initiated: true
        }]
    );
    let (msgs, others) = poll_messages(&bob).await;
    assert_eq!(msgs, vec![("alice".into(), b"no one-time prekey".to_vec(), 0)]);
    assert_eq!(
        others,
        vec![Event::StartedWithoutOneTimePrekey {
            peer: "alice".into(),
            initiated: false
        }]
    );
    assert!(
        bob.conversation("alice")
            .await
            .unwrap()
            .unwrap()
            .without_one_time_prekey
    );
    bob.send("alice", b"it works").await.unwrap();
    assert_eq!(drain(&alice, 1).await.0, vec![b"it works".to_vec()]);
    // Reported once each.
    assert!(poll_messages(&bob).await.1.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replenishment_tops_the_relay_back_up() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = generous_server(dir.path()).await;
    let b_profile = profiles.path().join("bob.json");
    let bob = Client::connect(ClientConfig::new(&server.url, "bob", server.pin()).with_profile(&b_profile))
        .await
        .unwrap();
    let alice = server.connect("alice").await;
    let carol = server.connect("carol").await;
    // Others fetch 60 of Bob's 100: the relay holds 40.
    for _ in 0..60 {
        assert!(carol
            .prekey_bundle("bob")
            .await
            .unwrap()
            .bundle
            .one_time_prekey
            .is_some());
    }
    // Alice's start uses one (39 left); accepting it, Bob finds fewer than 50 and tops up.
    alice.send("bob", b"hi").await.unwrap();
    assert_eq!(drain(&bob, 1).await.0, vec![b"hi".to_vec()]);
    let dave = server.connect("dave").await;
    assert_eq!(
        drain_one_time_prekeys(&dave, "bob").await,
        100,
        "topped up to 100"
    );
    // Bob kept the private halves: 100 made on connect, one used, 61 more.
    let saved = Profile::load(&b_profile).unwrap().unwrap();
    assert_eq!(saved.prekeys.unwrap().one_time_count(), 160);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_without_a_one_time_prekey_makes_the_client_check_and_top_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = generous_server(dir.path()).await;
    let alice = server.connect("alice").await;
    let bob = server.connect("bob").await;
    let carol = server.connect("carol").await;
    // Someone drains Bob's one-time prekeys; Bob stays connected (no reconnect tops up).
    assert_eq!(drain_one_time_prekeys(&carol, "bob").await, 100);
    alice.send("bob", b"after the drain").await.unwrap();
    let (msgs, others) = poll_messages(&bob).await;
    assert_eq!(msgs, vec![("alice".into(), b"after the drain".to_vec(), 0)]);
    assert!(others.contains(&Event::StartedWithoutOneTimePrekey {
        peer: "alice".into(),
        initiated: false
    }));
    // Accepting a start without a one-time prekey made Bob ask the relay, and top it up.
    let dave = server.connect("dave").await;
    assert_eq!(
        drain_one_time_prekeys(&dave, "bob").await,
        100,
        "topped up after the start that had no one-time prekey"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_continues_the_ratchet() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let cfg = |name: &str| {
        ClientConfig::new(&server.url, name, server.pin())
            .with_profile(profiles.path().join(format!("{name}.json")))
    };
    let alice = Client::connect(cfg("alice")).await.unwrap();
    let bob = Client::connect(cfg("bob")).await.unwrap();
    alice.send("bob", b"before").await.unwrap();
    assert_eq!(drain(&bob, 1).await.0, vec![b"before".to_vec()]);
    bob.send("alice", b"reply").await.unwrap();
    assert_eq!(drain(&alice, 1).await.0, vec![b"reply".to_vec()]);
    drop((alice, bob));

    let alice = Client::connect(cfg("alice")).await.unwrap();
    let bob = Client::connect(cfg("bob")).await.unwrap();
    let r = alice.send("bob", b"after the restart").await.unwrap();
    assert_eq!(r.seq, 1);
    // The same conversation goes on: a ratchet message, not a new start.
    assert_eq!(server.mailbox_kinds("bob").await, vec![Some(PacketKind::Ratchet)]);
    assert_eq!(drain(&bob, 1).await.0, vec![b"after the restart".to_vec()]);
    bob.send("alice", b"and back").await.unwrap();
    assert_eq!(
        server.mailbox_kinds("alice").await,
        vec![Some(PacketKind::Ratchet)]
    );
    assert_eq!(drain(&alice, 1).await.0, vec![b"and back".to_vec()]);
    let c = alice.conversation("bob").await.unwrap().unwrap();
    assert!(c.forward_secret && c.initiated);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_redelivers_the_kept_copy_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let alice = server.connect("alice").await;
    let b_profile = profiles.path().join("bob.json");
    let b_cfg = ClientConfig::new(&server.url, "bob", server.pin()).with_profile(&b_profile);
    let bob = Client::connect(b_cfg.clone()).await.unwrap();
    for text in ["one", "two"] {
        alice.send("bob", text.as_bytes()).await.unwrap();
    }
    let first = poll_messages(&bob).await.0;
    assert_eq!(first.len(), 2);
    drop(bob); // handed out, never acknowledged: the application may not have kept them
               // The relay's copies are ratchet packets whose keys Bob deleted when he opened them.
    assert_eq!(
        server.mailbox_kinds("bob").await,
        vec![Some(PacketKind::Start); 2]
    );
    let crashed: serde_json::Value = serde_json::from_slice(&std::fs::read(&b_profile).unwrap()).unwrap();
    assert_eq!(crashed["kept"].as_array().unwrap().len(), 2);
    // Writes the crashed profile back, with the newest session to the relay (a session whose
    // seq_no went back is refused) and `kept` as given.
    let restore = |kept: serde_json::Value| {
        let newest: serde_json::Value = serde_json::from_slice(&std::fs::read(&b_profile).unwrap()).unwrap();
        let mut p = crashed.clone();
        p["session"] = newest["session"].clone();
        p["kept"] = kept;
        std::fs::write(&b_profile, serde_json::to_vec(&p).unwrap()).unwrap();
    };

    // Control: without the kept copies the relay's copies cannot be opened again, and nothing
    // is handed out. (One poll, then gone: its acknowledgements never leave.)
    restore(serde_json::json!([]));
    let bob = Client::connect(b_cfg.clone()).await.unwrap();
    let (msgs, others) = poll_messages(&bob).await;
    assert!(msgs.is_empty() && others.is_empty(), "{msgs:?} {others:?}");
    drop(bob);

    restore(crashed["kept"].clone());
    let bob = Client::connect(b_cfg).await.unwrap();
    assert_eq!(poll_messages(&bob).await.0, first, "the kept copies, same seqs");
    assert!(
        poll_messages(&bob).await.0.is_empty(),
        "acknowledged: exactly once"
    );
    assert_eq!(server.mailbox_kinds("bob").await, vec![], "acknowledged");
    let saved = Profile::load(&b_profile).unwrap().unwrap();
    assert!(saved.kept.is_empty(), "the copies go with the acknowledgement");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_profile_cannot_open_an_earlier_recorded_message() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let alice = server.connect("alice").await;
    let b_profile = profiles.path().join("bob.json");
    let bob = Client::connect(ClientConfig::new(&server.url, "bob", server.pin()).with_profile(&b_profile))
        .await
        .unwrap();
    alice.send("bob", b"hello").await.unwrap();
    assert_eq!(drain(&bob, 1).await.0.len(), 1);
    bob.send("alice", b"hi").await.unwrap();
    assert_eq!(drain(&alice, 1).await.0.len(), 1);
    // The message an eavesdropper records (from the relay's store), and Bob's profile just
    // before he opens it.
    alice.send("bob", b"recorded").await.unwrap();
    let recorded = server.mailbox("bob").await.pop().unwrap();
    assert_eq!(packet_kind(&recorded), Some(PacketKind::Ratchet));
    let before = Profile::load(&b_profile).unwrap().unwrap();
    assert_eq!(drain(&bob, 1).await.0, vec![b"recorded".to_vec()]);
    // The chains move on.
    for i in 0..3 {
        bob.send("alice", format!("r{i}").as_bytes()).await.unwrap();
        drain(&alice, 1).await;
        alice.send("bob", format!("m{i}").as_bytes()).await.unwrap();
        drain(&bob, 1).await;
    }
    let after = Profile::load(&b_profile).unwrap().unwrap();

    // Whatever Bob's saved profile holds, every conversation with its window: opens it?
    let opens = |p: &Profile| {
        let window = p.chats["alice"].clone();
        let r = &p.ratchets["alice"];
        [&r.ours, &r.theirs].into_iter().flatten().any(|c| {
            let mut chat = RatchetChat::restore(c.chat.clone()).unwrap();
            let mut w = ChatState::restore(window.clone()).unwrap();
            chat.open(&mut w, &recorded, UnixTime::from_system(), &mut OsRng)
                .is_ok()
        }) || ChatState::restore(window.clone())
            .unwrap()
            .open(&recorded)
            .is_ok()
    };
    assert!(opens(&before), "control: the profile from before opens it");
    assert!(!opens(&after), "forward secrecy: the saved profile cannot");
    // Nor does the kept copy outlive the acknowledgement.
    assert!(after.kept.is_empty());
    let names: BTreeSet<&str> = after.ratchets.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["alice"]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_signed_prekey_is_rotated_and_the_profile_debug_shows_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let b_profile = profiles.path().join("bob.json");
    let b_cfg = ClientConfig::new(&server.url, "bob", server.pin()).with_profile(&b_profile);
    let bob = Client::connect(b_cfg.clone()).await.unwrap();
    let alice = server.connect("alice").await;
    let first = alice.prekey_bundle("bob").await.unwrap().bundle.signed_prekey;
    drop(bob);
    // A week and more later (the profile says the signed prekey was made at the epoch).
    let mut p: serde_json::Value = serde_json::from_slice(&std::fs::read(&b_profile).unwrap()).unwrap();
    let signed = p["prekeys"]["signed"].as_array_mut().unwrap();
    assert_eq!(signed.len(), 1);
    signed[0]["created"] = serde_json::json!(0);
    std::fs::write(&b_profile, serde_json::to_vec(&p).unwrap()).unwrap();
    let bob = Client::connect(b_cfg).await.unwrap();
    let second = alice.prekey_bundle("bob").await.unwrap().bundle.signed_prekey;
    assert_ne!(first.id, second.id, "rotated on connect");
    // A start from the rotated bundle opens; the previous signed prekey is kept too.
    alice.send("bob", b"with the bundle of now").await.unwrap();
    assert_eq!(drain(&bob, 1).await.0.len(), 1);

    let saved = Profile::load(&b_profile).unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&b_profile).unwrap()).unwrap();
    assert_eq!(json["prekeys"]["signed"].as_array().unwrap().len(), 2);
    let debug = format!("{saved:?}");
    let theirs = &json["ratchets"]["alice"]["theirs"]["chat"]["ratchet"];
    for secret in [
        &json["signing_key"],
        &json["identity"],
        &json["prekeys"]["signed"][0]["pair"]["secret"],
        &theirs["root"],
        &theirs["dh_self"]["secret"],
    ] {
        let s = secret.as_str().unwrap_or_else(|| panic!("{secret}"));
        assert!(!debug.contains(s), "Debug printed a secret");
    }
    server.stop().await;
}
