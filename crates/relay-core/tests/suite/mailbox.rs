//! The mailbox cases of the conformance suite: sequence numbers, acknowledgements, outcomes
//! kept for resends, fetch order and expiry, concurrent sends, quotas.

use super::*;

pub async fn send_assigns_increasing_sequence_numbers(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    let mut last = 0;
    for i in 0..5u8 {
        let Outcome::Sent { seq, .. } = send(e, &alice, "bob", &[i]).await.unwrap() else {
            panic!()
        };
        assert!(seq > last);
        last = seq;
    }
    let got = e.fetch(&bob.client, 100, t0()).await.unwrap();
    assert_eq!(
        got.iter().map(|m| m.payload.0[0]).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(got
        .iter()
        .all(|m| m.from == "alice" && m.kind == EntryKind::Message));
    // Sequence numbers never go back, even after acks empty the mailbox.
    let seqs: Vec<AckRef> = got.iter().map(|m| AckRef::new(m.seq, m.timestamp_ms)).collect();
    commit_op(e, &bob, Op::Ack { seqs }, 1000, false, t0())
        .await
        .unwrap();
    let Outcome::Sent { seq, .. } = send(e, &alice, "bob", b"z").await.unwrap() else {
        panic!()
    };
    assert!(seq > last);
}

pub async fn acks_remove_only_own_entries(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    send(e, &alice, "bob", b"for bob").await.unwrap();
    send(e, &bob, "alice", b"for alice").await.unwrap();
    let bobs = e.fetch(&bob.client, 10, t0()).await.unwrap();
    let alices = e.fetch(&alice.client, 10, t0()).await.unwrap();
    // Alice acks the sequence numbers of Bob's entries: nothing of Bob's goes.
    // (Bare sequence numbers, as older clients send them.)
    let seqs: Vec<AckRef> = bobs.iter().map(|m| AckRef::from(m.seq)).collect();
    let Outcome::Acked { removed } = commit_op(e, &alice, Op::Ack { seqs: seqs.clone() }, 4000, false, t0())
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        removed,
        usize::from(alices.iter().any(|a| seqs.iter().any(|s| s.seq == a.seq)))
    );
    assert_eq!(e.fetch(&bob.client, 10, t0()).await.unwrap().len(), 1);
    let Outcome::Acked { removed } = commit_op(e, &bob, Op::Ack { seqs }, 4004, false, t0())
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(removed, 1);
    assert!(e.fetch(&bob.client, 10, t0()).await.unwrap().is_empty());
}

pub async fn outcomes_are_kept_for_resends(e: &dyn Engine) {
    let (alice, _bob) = two_accounts(e).await;
    // A client msg_id as the session accepts it: the client's clock in the high 32 bits.
    let msg_id = (t0().as_secs() << 32) | 4444;
    let out = commit_op(
        e,
        &alice,
        Op::Send {
            to: ClientId::new("bob").unwrap(),
            payload: vec![1],
            quota: entries(10),
            ttl_secs: 60,
            key_version: None,
        },
        msg_id,
        true,
        t0(),
    )
    .await
    .unwrap();
    assert_eq!(
        e.outcome(alice.key_id, &alice.client, msg_id).await.unwrap(),
        Some(out.clone())
    );
    assert_eq!(
        e.outcome(alice.key_id, &alice.client, msg_id + 4).await.unwrap(),
        None
    );
    // Housekeeping well inside the outcome's lifetime keeps it.
    e.purge_expired(t0().plus_secs(600)).await.unwrap();
    assert_eq!(
        e.outcome(alice.key_id, &alice.client, msg_id).await.unwrap(),
        Some(out)
    );
    e.purge_expired(t0().plus_secs(relay_core::engine::OUTCOME_TTL_SECS + 1))
        .await
        .unwrap();
    assert_eq!(
        e.outcome(alice.key_id, &alice.client, msg_id).await.unwrap(),
        None
    );
}

pub async fn fetch_is_ordered_limited_and_hides_expired(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    send_with(e, &alice, "bob", b"short", 100, 10, t0())
        .await
        .unwrap();
    for i in 0..5u8 {
        send_with(e, &alice, "bob", &[i], 100, 3600, t0()).await.unwrap();
    }
    assert_eq!(e.fetch(&bob.client, 3, t0()).await.unwrap().len(), 3);
    let later = e.fetch(&bob.client, 100, t0().plus_secs(20)).await.unwrap();
    assert_eq!(later.len(), 5);
    assert!(later.windows(2).all(|w| w[0].seq < w[1].seq));
}

pub async fn expiry_tells_the_sender(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    let Outcome::Sent { seq, .. } = send_with(e, &alice, "bob", b"late", 100, 10, t0()).await.unwrap() else {
        panic!()
    };
    let notified = e.purge_expired(t0().plus_secs(11)).await.unwrap();
    assert_eq!(notified, vec![alice.client.clone()]);
    assert!(e
        .fetch(&bob.client, 10, t0().plus_secs(11))
        .await
        .unwrap()
        .is_empty());
    let notes = e.fetch(&alice.client, 10, t0().plus_secs(11)).await.unwrap();
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].from, "relay");
    // Every engine spells "never" the same way, exact in a JavaScript number.
    assert_eq!(notes[0].expires_at, relay_core::engine::NEVER_EXPIRES);
    assert_eq!(
        notes[0].kind,
        EntryKind::Expired {
            to: bob.client.clone(),
            message_seq: seq
        }
    );
}

pub async fn concurrent_sends_all_land_once(e: &dyn Engine) {
    // Many clients sending to one mailbox at once: every send lands exactly once.
    let bob = account(e, "bob", 200).await;
    let mut senders = Vec::new();
    for i in 0..20u8 {
        senders.push(account(e, &format!("s{i}"), i + 1).await);
    }
    let mut tasks = Vec::new();
    for s in senders {
        tasks.push(async move { (send(e, &s, "bob", s.client.as_str().as_bytes()).await, s) });
    }
    let results = futures::future::join_all(tasks).await;
    assert!(results.iter().all(|(r, _)| r.is_ok()));
    let got = e.fetch(&bob.client, 100, t0()).await.unwrap();
    assert_eq!(got.len(), 20);
    let mut seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), 20);
}

pub async fn quotas_count_entries_and_bytes_per_mailbox_and_sender(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    let carol = account(e, "carol", 3).await;
    let q = SendQuota {
        mailbox_entries: 4,
        mailbox_bytes: 100,
        sender_entries: 2,
        sender_bytes: 60,
    };
    let stored = |r: Result<Outcome, EngineError>| match r {
        Ok(Outcome::Sent { seq, .. }) => seq,
        other => panic!("not stored: {other:?}"),
    };
    let a1 = stored(send_quota(e, &alice, "bob", &[1; 30], q, 3600, t0()).await);
    // One sender: 30 + 31 bytes is over its 60.
    assert_eq!(
        send_quota(e, &alice, "bob", &[2; 31], q, 3600, t0()).await,
        Err(EngineError::SenderQuota)
    );
    stored(send_quota(e, &alice, "bob", &[2; 30], q, 3600, t0()).await);
    // Two entries from alice: her third is refused, carol's is not.
    assert_eq!(
        send_quota(e, &alice, "bob", &[3; 1], q, 3600, t0()).await,
        Err(EngineError::SenderQuota)
    );
    stored(send_quota(e, &carol, "bob", &[4; 30], q, 3600, t0()).await);
    // The mailbox: 90 bytes + 11 is over its 100.
    assert!(matches!(
        send_quota(e, &carol, "bob", &[5; 11], q, 3600, t0()).await,
        Err(EngineError::MailboxFull { .. })
    ));
    stored(send_quota(e, &carol, "bob", &[5; 10], q, 3600, t0()).await);
    // Four entries: full, whoever sends.
    assert!(matches!(
        send_quota(e, &carol, "alice", &[6; 1], q, 3600, t0()).await,
        Ok(Outcome::Sent { .. })
    ));
    assert!(matches!(
        send_quota(e, &alice, "bob", &[6; 1], q, 3600, t0()).await,
        Err(EngineError::MailboxFull { .. }) | Err(EngineError::SenderQuota)
    ));
    assert_eq!(e.fetch(&bob.client, 100, t0()).await.unwrap().len(), 4);
    // Reading frees the quota of whoever's entries were acknowledged.
    commit_op(
        e,
        &bob,
        Op::Ack {
            seqs: vec![AckRef::from(a1)],
        },
        5000,
        false,
        t0(),
    )
    .await
    .unwrap();
    stored(send_quota(e, &alice, "bob", &[7; 30], q, 3600, t0()).await);
    // Expired messages stop counting too.
    let ttl = SendQuota::UNLIMITED;
    let dave = account(e, "dave", 4).await;
    for _ in 0..2 {
        stored(send_quota(e, &alice, "dave", &[8; 10], entries(2), 10, t0()).await);
    }
    assert!(send_quota(e, &alice, "dave", &[8; 10], entries(2), 10, t0())
        .await
        .is_err());
    e.purge_expired(t0().plus_secs(11)).await.unwrap();
    stored(send_quota(e, &alice, "dave", &[8; 10], entries(2), 10, t0().plus_secs(11)).await);
    stored(send_quota(e, &alice, "dave", &[8; 10], ttl, 10, t0().plus_secs(11)).await);
    assert_eq!(
        e.fetch(&dave.client, 100, t0().plus_secs(11))
            .await
            .unwrap()
            .len(),
        2
    );
}

pub async fn an_ack_never_removes_another_message_with_the_same_seq(e: &dyn Engine) {
    // A rollback, as Redis with `appendfsync everysec` shows after a power cut: bob received
    // entry N, then the store lost it and its counter, and a new message got the same N. bob's
    // pending acknowledgement of the old N (it names the old store time) must not remove the
    // new one.
    let (alice, bob) = two_accounts(e).await;
    let Outcome::Sent { seq, timestamp_ms } = send(e, &alice, "bob", b"after the cut").await.unwrap() else {
        panic!()
    };
    let got = e.fetch(&bob.client, 10, t0()).await.unwrap();
    assert_eq!((got[0].seq, got[0].timestamp_ms), (seq, timestamp_ms));
    let stale = AckRef::new(seq, timestamp_ms - 1);
    let Outcome::Acked { removed } = commit_op(e, &bob, Op::Ack { seqs: vec![stale] }, 7000, false, t0())
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        removed, 0,
        "an acknowledgement of another message removed this one"
    );
    assert_eq!(e.fetch(&bob.client, 10, t0()).await.unwrap().len(), 1);
    let right = AckRef::new(seq, timestamp_ms);
    let Outcome::Acked { removed } = commit_op(e, &bob, Op::Ack { seqs: vec![right] }, 7004, false, t0())
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(removed, 1);
    assert!(e.fetch(&bob.client, 10, t0()).await.unwrap().is_empty());
    // The wire forms: `{"seq", "ts"}` and a bare number.
    let full: AckRef = serde_json::from_str(r#"{"seq":7,"ts":123}"#).unwrap();
    let bare: AckRef = serde_json::from_str("7").unwrap();
    assert_eq!((full, bare), (AckRef::new(7, 123), AckRef::from(7)));
}
