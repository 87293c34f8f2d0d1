//! Conversations under the double ratchet through a real relay (issue 15): the relay stores
//! ratchet packets, older clients get static ones, simultaneous starts converge, starts without
//! a one-time prekey are reported, the relay's prekeys are topped up, a restarted client goes
//! on, a crash redelivers the kept copy once, and a saved profile cannot open what it read.
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

use common::{by_key, drain, Server};
use mtproto_crypto::rand_core::OsRng;
use mtproto_session::{
    packet_kind, wire::Bytes, ChatState, PacketKind, RatchetChat, UnixTime, MAX_SKIPPED_KEYS_TOTAL,
};
use relay_client::{Client, ClientConfig, Event, OutboxEntry, OutboxId, Profile, SendState};

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

/// Messages (from, body, seq) and the other events of one poll.
async fn poll(c: &Client) -> (Vec<(String, Vec<u8>, u32)>, Vec<Event>) {
    let mut msgs = Vec::new();
    let mut others = Vec::new();
    for ev in c.poll(Duration::from_millis(500)).await.unwrap() {
        match ev {
            Event::Message { from, body, seq, .. } => msgs.push((from, body, seq)),
            other => others.push(other),
        }
    }
    (msgs, others)
}

/// Posts everything in `sender`'s outbox (all stored), then polls `receiver` until `n` messages
/// or refusals came (at most 20 polls): the bodies, and the `Rejected` events.
async fn flush_then_read(sender: &Client, receiver: &Client, n: usize) -> (Vec<Vec<u8>>, Vec<Event>) {
    for r in sender.flush_outbox().await.unwrap() {
        assert!(matches!(r.state, SendState::Stored { .. }), "{r:?}");
    }
    let (mut bodies, mut rejected) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let (m, e) = poll(receiver).await;
        bodies.extend(m.into_iter().map(|m| m.1));
        rejected.extend(e.into_iter().filter(|e| matches!(e, Event::Rejected { .. })));
        if bodies.len() + rejected.len() >= n {
            break;
        }
    }
    (bodies, rejected)
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
    let (_, others) = poll(&alice).await;
    assert_eq!(
        others,
        vec![Event::StartedWithoutOneTimePrekey {
            peer: "bob".into(),
            initiated: true
        }]
    );
    let (msgs, others) = poll(&bob).await;
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
    assert!(poll(&bob).await.1.is_empty());
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
    let (msgs, others) = poll(&bob).await;
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

/// Skipped message keys the saved profile at `path` holds, in all its conversations.
fn skipped_total(path: &Path) -> usize {
    let p = Profile::load(path).unwrap().unwrap();
    p.ratchets
        .values()
        .flat_map(|r| [&r.ours, &r.theirs])
        .flatten()
        .map(|c| c.chat.ratchet.skipped_count())
        .sum()
}

/// Edits the saved profile of a client that is not running so that its next flush posts to
/// `victim`, under its conversation, a message 999 keys ahead, then one more 999 keys further,
/// then `late` — the message just before that one, overtaken by it (1997 keys skipped in all).
fn skip_ahead(path: &Path, victim: &str, late: &[u8]) {
    let mut p = Profile::load(path).unwrap().unwrap();
    let mut window = ChatState::restore(p.chats[victim].clone()).unwrap();
    let conv = p.ratchets.get_mut(victim).unwrap().ours.as_mut().unwrap();
    let now = UnixTime::from_system();
    let ahead = |chat: RatchetChat, keys: u32| {
        let mut data = chat.data();
        for _ in 0..keys {
            data.ratchet.next_send().unwrap();
        }
        RatchetChat::restore(data).unwrap()
    };
    let mut chat = ahead(RatchetChat::restore(conv.chat.clone()).unwrap(), 999);
    let first = chat.seal(&mut window, b"ahead", now, &mut OsRng).unwrap();
    let mut chat = ahead(chat, 998);
    let overtaken = chat.seal(&mut window, late, now, &mut OsRng).unwrap();
    let second = chat.seal(&mut window, b"further ahead", now, &mut OsRng).unwrap();
    conv.chat = chat.data();
    p.chats.insert(victim.into(), window.data());
    queue(&mut p, victim, [first, second, overtaken]);
    p.save(path).unwrap();
}

/// As [`skip_ahead`]: `bodies`, each sealed 999 keys after the one before (999 keys lost before
/// each), posted in order at the next flush.
fn jump_ahead(path: &Path, victim: &str, bodies: &[&[u8]]) {
    let mut p = Profile::load(path).unwrap().unwrap();
    let mut window = ChatState::restore(p.chats[victim].clone()).unwrap();
    let conv = p.ratchets.get_mut(victim).unwrap().ours.as_mut().unwrap();
    let mut data = conv.chat.clone();
    let mut sealed = Vec::new();
    for body in bodies {
        for _ in 0..999 {
            data.ratchet.next_send().unwrap();
        }
        let mut chat = RatchetChat::restore(data).unwrap();
        sealed.push(
            chat.seal(&mut window, body, UnixTime::from_system(), &mut OsRng)
                .unwrap(),
        );
        data = chat.data();
    }
    conv.chat = data;
    p.chats.insert(victim.into(), window.data());
    queue(&mut p, victim, sealed);
    p.save(path).unwrap();
}

/// Appends sealed packets to `victim` to a saved profile's outbox, to be posted in this order.
fn queue(p: &mut Profile, victim: &str, sealed: impl IntoIterator<Item = mtproto_session::Sealed>) {
    queue_packets(p, victim, sealed.into_iter().map(|s| (s.packet, s.seq)));
}

/// Appends `(packet, seq)` pairs to `victim` to a saved profile's outbox, in this order.
fn queue_packets(p: &mut Profile, victim: &str, packets: impl IntoIterator<Item = (Vec<u8>, u32)>) {
    let next = p.outbox.iter().map(|e| e.id.0).max().unwrap_or(0) + 1;
    for (i, (packet, seq)) in packets.into_iter().enumerate() {
        p.outbox.push(OutboxEntry {
            id: OutboxId(next + i as u64),
            to: victim.into(),
            body: Bytes(b"-".to_vec()),
            packet: Bytes(packet),
            seq,
            envelope: None,
            maybe_stored: false,
            released: false,
            control: false,
            key_version: None,
            state: SendState::Sending { last_error: None },
        });
    }
}

/// Seals `bodies` in a saved profile under the conversation with `victim` that sends (the
/// lower initiator key's), and queues them for the next flush in the order `post` gives.
fn reorder_next(path: &Path, victim: &str, bodies: &[&[u8]], post: &[usize]) {
    let mut p = Profile::load(path).unwrap().unwrap();
    let mut window = ChatState::restore(p.chats[victim].clone()).unwrap();
    let r = p.ratchets.get_mut(victim).unwrap();
    let conv = match (r.ours.as_mut(), r.theirs.as_mut()) {
        (Some(o), Some(t)) => {
            let key = |c: &relay_client::ConvData| {
                *RatchetChat::restore(c.chat.clone())
                    .unwrap()
                    .initiator_key()
                    .as_bytes()
            };
            if key(o) < key(t) {
                o
            } else {
                t
            }
        }
        (Some(o), None) => o,
        (None, Some(t)) => t,
        (None, None) => panic!("no conversation"),
    };
    let mut chat = RatchetChat::restore(conv.chat.clone()).unwrap();
    let sealed: Vec<_> = bodies
        .iter()
        .map(|b| {
            chat.seal(&mut window, b, UnixTime::from_system(), &mut OsRng)
                .unwrap()
        })
        .collect();
    conv.chat = chat.data();
    p.chats.insert(victim.into(), window.data());
    let mut sealed: Vec<_> = sealed.into_iter().map(Some).collect();
    queue(&mut p, victim, post.iter().map(|&i| sealed[i].take().unwrap()));
    p.save(path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_simultaneous_starts_a_long_burst_then_reordered_messages_all_open() {
    // Review finding: with two conversations, every packet was tried first in the one that did
    // not send it, as a new chain: a burst of ~90 spent the sender's whole skip budget, and then
    // any reordered message was refused. Packets now go first to the conversation that knows
    // their ratchet key, and nothing an honest peer sends pays for the wrong one.
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let path = |n: &str| profiles.path().join(format!("{n}.json"));
    let connect = |name: &'static str| Client::connect(server.config_in(profiles.path(), name));
    let (alice, bob) = (connect("sa").await.unwrap(), connect("sb").await.unwrap());
    let (a, b) = tokio::join!(alice.send("sb", b"a0"), bob.send("sa", b"b0"));
    a.unwrap();
    b.unwrap();
    drain(&alice, 1).await;
    drain(&bob, 1).await;
    let ((low, low_name), (high, high_name)) = by_key((alice, "sa"), (bob, "sb")).await;
    // The higher key's side writes 150 messages in a row: the lower side holds two
    // conversations with it and opens them in the one that sends. The packets are kept as the
    // relay stored them (two rounds: a look at a mailbox shows at most 100).
    let mut copies = Vec::new();
    for round in 0..2 {
        for i in 0..75 {
            let text = format!("burst {}", round * 75 + i);
            high.send(low_name, text.as_bytes()).await.unwrap();
        }
        copies.extend(server.mailbox(low_name).await);
        let (got, others) = drain(&low, 75).await;
        assert_eq!(got.len(), 75);
        assert!(
            !others.iter().any(|e| matches!(e, Event::Rejected { .. })),
            "{others:?}"
        );
    }
    assert_eq!(copies.len(), 150);
    // Then a copy of each (as the outbox resends a packet in a new envelope, §3.1): acknowledged,
    // not shown, and free (a second review found each copy charged as a new chain in the other
    // conversation, which spent the budget the reversed messages below need).
    drop(high);
    let mut p = Profile::load(&path(high_name)).unwrap().unwrap();
    queue_packets(&mut p, low_name, copies.into_iter().map(|c| (c, 0)));
    p.save(&path(high_name)).unwrap();
    let high = connect(high_name).await.unwrap();
    for r in high.flush_outbox().await.unwrap() {
        assert!(matches!(r.state, SendState::Stored { .. }), "{r:?}");
    }
    let (mut shown, mut events) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let (m, e) = poll(&low).await;
        shown.extend(m);
        events.extend(e);
    }
    low.ack().await.unwrap();
    assert!(shown.is_empty(), "copies are not shown: {shown:?}");
    assert!(
        !events.iter().any(|e| matches!(e, Event::Rejected { .. })),
        "{events:?}"
    );
    assert!(
        server.mailbox(low_name).await.is_empty(),
        "the copies are acknowledged"
    );
    // Then 60 messages arrive in reverse order: 59 chain steps walked and 59 keys stored for the
    // first to arrive (before the fix, the burst had left 84 of the budget's 4000).
    drop(high);
    let texts: Vec<Vec<u8>> = (0..60).map(|i| format!("late {i}").into_bytes()).collect();
    let bodies_in: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
    let reversed: Vec<usize> = (0..60).rev().collect();
    reorder_next(&path(high_name), low_name, &bodies_in, &reversed);
    let high = connect(high_name).await.unwrap();
    let (bodies, rejected) = flush_then_read(&high, &low, 60).await;
    assert_eq!(rejected, vec![], "nothing refused");
    assert_eq!(bodies, texts.into_iter().rev().collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_keeps_skipping_keys_is_refused_past_its_budget_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let connect = |name: &str, path: &Path| {
        Client::connect(ClientConfig::new(&server.url, name, server.pin()).with_profile(path))
    };
    let vic = connect("vic2", &profiles.path().join("vic2.json")).await.unwrap();
    let mal_path = profiles.path().join("mal.json");
    let mal = connect("mal", &mal_path).await.unwrap();
    mal.send("vic2", b"start").await.unwrap();
    drop(mal);
    assert_eq!(poll(&vic).await.0.len(), 1);
    // Three messages, each after 999 lost ones: 2 × 999 chain steps each (walked, then the
    // skipped keys stored). Two fit in the budget (4000 an hour); the third is refused.
    jump_ahead(&mal_path, "vic2", &[b"jump 1", b"jump 2", b"jump 3"]);
    let mal = connect("mal", &mal_path).await.unwrap();
    let (bodies, events) = flush_then_read(&mal, &vic, 3).await;
    assert_eq!(bodies, vec![b"jump 1".to_vec(), b"jump 2".to_vec()]);
    assert!(
        matches!(&events[..], [Event::Rejected { from, reason }] if from == "mal" && reason.contains("skip budget")),
        "{events:?}"
    );
    // Acknowledged, not stuck in the mailbox; and other senders are not affected.
    poll(&vic).await;
    assert!(server.mailbox("vic2").await.is_empty());
    let other = connect("other", &profiles.path().join("other.json"))
        .await
        .unwrap();
    other.send("vic2", b"from someone else").await.unwrap();
    assert_eq!(poll(&vic).await.0[0].1, b"from someone else");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_keys_across_many_peers_stay_under_the_client_wide_cap() {
    let dir = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), "127.0.0.1:0").await;
    let v_profile = profiles.path().join("vic.json");
    let connect = |name: &str, path: &Path| {
        Client::connect(ClientConfig::new(&server.url, name, server.pin()).with_profile(path))
    };
    let vic = connect("vic", &v_profile).await.unwrap();
    let mut most = 0;
    for k in 0..5 {
        let name = format!("mal{k}");
        let path = profiles.path().join(format!("{name}.json"));
        let mal = connect(&name, &path).await.unwrap();
        mal.send("vic", b"start").await.unwrap();
        drop(mal);
        let (msgs, _) = poll(&vic).await;
        assert_eq!(msgs.len(), 1);
        // Each peer skips 1997 keys; its last message comes late.
        let late = format!("late from {name}");
        skip_ahead(&path, "vic", late.as_bytes());
        let mal = connect(&name, &path).await.unwrap();
        let (bodies, _) = flush_then_read(&mal, &vic, 3).await;
        // The newest conversation still opens its overtaken message.
        assert_eq!(
            bodies,
            vec![b"ahead".to_vec(), b"further ahead".to_vec(), late.into_bytes()]
        );
        let total = skipped_total(&v_profile);
        assert!(
            total <= MAX_SKIPPED_KEYS_TOTAL,
            "after {} peers: {total} skipped keys saved",
            k + 1
        );
        most = most.max(total);
    }
    assert!(
        most > MAX_SKIPPED_KEYS_TOTAL - 1000,
        "the cap was reached: {most}"
    );

    // A profile over the cap (an older version's) is trimmed on load, not refused.
    drop(vic);
    let mut p = Profile::load(&v_profile).unwrap().unwrap();
    for k in 0..5 {
        let (peer, copy) = (format!("mal{k}"), format!("copy{k}"));
        let window = p.chats[&peer].clone();
        let r = p.ratchets[&peer].clone();
        p.chats.insert(copy.clone(), window);
        p.ratchets.insert(copy, r);
    }
    p.save(&v_profile).unwrap();
    assert!(skipped_total(&v_profile) > MAX_SKIPPED_KEYS_TOTAL);
    let vic = connect("vic", &v_profile).await.unwrap();
    assert!(skipped_total(&v_profile) <= MAX_SKIPPED_KEYS_TOTAL);
    assert!(vic.conversation("mal4").await.unwrap().unwrap().forward_secret);
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
    let first = poll(&bob).await.0;
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
    let (msgs, others) = poll(&bob).await;
    assert!(msgs.is_empty() && others.is_empty(), "{msgs:?} {others:?}");
    drop(bob);

    restore(crashed["kept"].clone());
    let bob = Client::connect(b_cfg).await.unwrap();
    assert_eq!(poll(&bob).await.0, first, "the kept copies, same seqs");
    assert!(poll(&bob).await.0.is_empty(), "acknowledged: exactly once");
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
