//! Skipped message keys through a real relay: a long burst and reordered messages after
//! simultaneous starts all open, a sender that keeps skipping is refused past its budget (and
//! others are not), and the keys kept across many peers stay under the client-wide cap. The
//! tests write packets into the profile's outbox by hand to make the gaps.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::path::Path;

use common::{by_key, drain, poll_messages, Server};
use mtproto_crypto::rand_core::OsRng;
use mtproto_session::{wire::Bytes, ChatState, RatchetChat, UnixTime, MAX_SKIPPED_KEYS_TOTAL};
use relay_client::{Client, ClientConfig, Event, OutboxEntry, OutboxId, Profile, SendState};

/// Posts everything in `sender`'s outbox (all stored), then polls `receiver` until `n` messages
/// or refusals came (at most 20 polls): the bodies, and the `Rejected` events.
async fn flush_then_read(sender: &Client, receiver: &Client, n: usize) -> (Vec<Vec<u8>>, Vec<Event>) {
    for r in sender.flush_outbox().await.unwrap() {
        assert!(matches!(r.state, SendState::Stored { .. }), "{r:?}");
    }
    let (mut bodies, mut rejected) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let (m, e) = poll_messages(receiver).await;
        bodies.extend(m.into_iter().map(|m| m.1));
        rejected.extend(e.into_iter().filter(|e| matches!(e, Event::Rejected { .. })));
        if bodies.len() + rejected.len() >= n {
            break;
        }
    }
    (bodies, rejected)
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
        let (m, e) = poll_messages(&low).await;
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
    assert_eq!(poll_messages(&vic).await.0.len(), 1);
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
    poll_messages(&vic).await;
    assert!(server.mailbox("vic2").await.is_empty());
    let other = connect("other", &profiles.path().join("other.json"))
        .await
        .unwrap();
    other.send("vic2", b"from someone else").await.unwrap();
    assert_eq!(poll_messages(&vic).await.0[0].1, b"from someone else");
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
        let (msgs, _) = poll_messages(&vic).await;
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
