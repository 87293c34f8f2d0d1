//! The account cases of the conformance suite: names bound to keys, identity key versions,
//! the paged directory, expiry of unused accounts, recovery.

use super::*;

pub async fn client_ids_bind_to_the_first_key(e: &dyn Engine) {
    let a = account(e, "alice", 1).await;
    let other = AuthKeyRecord {
        key_id: AuthKeyId::from_bytes([9; 8]),
        auth_key: SecretBytes::new(vec![9; 256]),
        client_id: a.client.clone(),
        created_at: t0(),
        recovery_key: None,
    };
    let s = ServerSession::new(SessionId([9; 8]), ServerSalt([1; 8]), t0());
    assert_eq!(
        e.create_account(other, s, t0()).await,
        Err(EngineError::ClientIdTaken)
    );
    assert!(
        e.auth_key(AuthKeyId::from_bytes([9; 8])).await.unwrap().is_none(),
        "nothing stored"
    );
    assert_eq!(
        e.auth_key(AuthKeyId::from_bytes([1; 8]))
            .await
            .unwrap()
            .unwrap()
            .client_id,
        a.client
    );
    assert!(e.peer(&a.client).await.unwrap().is_some());
    assert!(e.peer(&ClientId::new("nobody").unwrap()).await.unwrap().is_none());
}

pub async fn identity_keys_have_versions(e: &dyn Engine) {
    let (alice, _bob) = two_accounts(e).await;
    let publish = |k: u8, id: u64| commit_op(e, &alice, Op::PublishKey { key: [k; 32] }, id, true, t0());
    assert_eq!(
        publish(7, 100).await.unwrap(),
        Outcome::KeyPublished {
            changed: true,
            key_version: 1
        }
    );
    assert_eq!(
        publish(7, 104).await.unwrap(),
        Outcome::KeyPublished {
            changed: false,
            key_version: 1
        }
    );
    assert_eq!(
        publish(8, 108).await.unwrap(),
        Outcome::KeyPublished {
            changed: true,
            key_version: 2
        }
    );
    let p = e.peer(&alice.client).await.unwrap().unwrap();
    assert_eq!((p.identity_key, p.key_version), (Some([8; 32]), 2));
}

pub async fn a_send_sealed_for_an_old_key_is_refused_and_stores_nothing(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    let publish = |k: u8, id: u64| commit_op(e, &bob, Op::PublishKey { key: [k; 32] }, id, true, t0());
    publish(7, 200).await.unwrap();
    let send = |version: u32, id: u64| {
        let op = Op::Send {
            to: bob.client.clone(),
            payload: vec![version as u8],
            quota: entries(10),
            ttl_secs: 60,
            key_version: Some(version),
        };
        commit_op(e, &alice, op, id, true, t0())
    };
    assert!(matches!(send(1, 300).await, Ok(Outcome::Sent { .. })));
    publish(8, 204).await.unwrap(); // bob rotates: version 2
    assert_eq!(
        send(1, 304).await,
        Err(EngineError::PeerKeyChanged { current: 2 })
    );
    assert!(matches!(send(2, 308).await, Ok(Outcome::Sent { .. })));
    let held: Vec<Vec<u8>> = e
        .fetch(&bob.client, 10, t0())
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.payload.0)
        .collect();
    assert_eq!(held, vec![vec![1], vec![2]], "the refused send stored nothing");
    // A version for a recipient that does not exist is still `unknown_peer`.
    let op = Op::Send {
        to: ClientId::new("nobody").unwrap(),
        payload: vec![1],
        quota: entries(10),
        ttl_secs: 60,
        key_version: Some(1),
    };
    assert_eq!(
        commit_op(e, &alice, op, 312, true, t0()).await,
        Err(EngineError::UnknownPeer)
    );
}

pub async fn the_directory_is_paged_and_searched_by_prefix(e: &dyn Engine) {
    let names = ["amy", "ann", "anna", "annie", "bob", "zed"];
    for (i, n) in names.iter().enumerate() {
        let a = account(e, n, 10 + i as u8).await;
        if *n != "annie" {
            commit_op(
                e,
                &a,
                Op::PublishKey {
                    key: [i as u8 + 1; 32],
                },
                100,
                true,
                t0(),
            )
            .await
            .unwrap();
        }
    }
    let ids = |v: Vec<relay_core::Peer>| v.into_iter().map(|p| p.client_id.to_string()).collect::<Vec<_>>();
    // Only published keys are listed; in name order; bounded.
    assert_eq!(
        ids(e.peers_page("", None, 100).await.unwrap()),
        ["amy", "ann", "anna", "bob", "zed"]
    );
    assert_eq!(ids(e.peers_page("", None, 2).await.unwrap()), ["amy", "ann"]);
    let ann = ClientId::new("ann").unwrap();
    assert_eq!(
        ids(e.peers_page("", Some(&ann), 2).await.unwrap()),
        ["anna", "bob"]
    );
    assert_eq!(ids(e.peers_page("an", None, 10).await.unwrap()), ["ann", "anna"]);
    assert_eq!(ids(e.peers_page("an", Some(&ann), 10).await.unwrap()), ["anna"]);
    let amy = ClientId::new("amy").unwrap();
    assert_eq!(
        ids(e.peers_page("ann", Some(&amy), 10).await.unwrap()),
        ["ann", "anna"]
    );
    assert!(e.peers_page("c", None, 10).await.unwrap().is_empty());
    assert_eq!(ids(e.peers_page("zed", None, 10).await.unwrap()), ["zed"]);
    // The unpublished account still exists for exact lookups.
    assert!(e.peer(&ClientId::new("annie").unwrap()).await.unwrap().is_some());
}

pub async fn unused_accounts_are_removed_and_their_names_freed(e: &dyn Engine) {
    let policy = AccountExpiry {
        unpublished_secs: 100,
        idle_secs: 1000,
    };
    let silent = account(e, "silent", 1).await; // never publishes a key
    let idle = account(e, "idle", 2).await; // publishes, then stays away
    let busy = account(e, "busy", 3).await; // publishes and keeps coming back
    let waiting = account(e, "waiting", 4).await; // never publishes, but has mail waiting
    for (a, id) in [(&idle, 10), (&busy, 11)] {
        commit_op(e, a, Op::PublishKey { key: [id as u8; 32] }, id, true, t0())
            .await
            .unwrap();
    }
    send(e, &busy, "waiting", b"hi").await.unwrap();
    assert!(e
        .purge_accounts(t0().plus_secs(99), policy, 100)
        .await
        .unwrap()
        .is_empty());
    let gone = e.purge_accounts(t0().plus_secs(100), policy, 100).await.unwrap();
    assert_eq!(gone, vec![silent.key_id]);
    assert!(e.auth_key(silent.key_id).await.unwrap().is_none());
    assert!(e.session(silent.key_id, &silent.client).await.unwrap().is_none());
    assert!(e.peer(&silent.client).await.unwrap().is_none());
    // The name is free for a new key.
    let again = account(e, "silent", 9).await;
    assert_eq!(
        e.auth_key(again.key_id).await.unwrap().unwrap().client_id,
        again.client
    );
    commit_op(e, &again, Op::PublishKey { key: [12; 32] }, 21, true, t0())
        .await
        .unwrap();
    // Idle time counts from the last request.
    commit_op(e, &busy, Op::Touch, 20, false, t0().plus_secs(900))
        .await
        .unwrap();
    commit_op(e, &again, Op::Touch, 22, false, t0().plus_secs(900))
        .await
        .unwrap();
    let gone = e.purge_accounts(t0().plus_secs(1000), policy, 100).await.unwrap();
    assert_eq!(gone, vec![idle.key_id]);
    assert!(e.peer(&idle.client).await.unwrap().is_none());
    assert!(e.peer(&busy.client).await.unwrap().is_some());
    assert!(
        e.peer(&waiting.client).await.unwrap().is_some(),
        "mail waiting keeps an account"
    );
    // Bounded per call.
    let many = e
        .purge_accounts(t0().plus_secs(1_000_000), policy, 1)
        .await
        .unwrap();
    assert_eq!(many.len(), 1);
}

/// A recovery moves the name from the old key to a new one only while the old key holds it:
/// the old key's session is gone, the published identity key is cleared (the new device
/// publishes its own, a key change for peers), the mailbox stays, the recovery key is kept.
pub async fn a_recovery_moves_the_name_and_keeps_the_mailbox(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    commit_op(e, &bob, Op::PublishKey { key: [5; 32] }, 1, false, t0())
        .await
        .unwrap();
    send(e, &alice, "bob", b"waiting for bob").await.unwrap();
    let mut owner = e.owner(&bob.client).await.unwrap().unwrap();
    assert_eq!(owner.key_id, bob.key_id);
    owner.recovery_key = Some([7; 32]);
    let new = AuthKeyRecord {
        key_id: AuthKeyId::from_bytes([3; 8]),
        auth_key: SecretBytes::new(vec![3; 256]),
        client_id: bob.client.clone(),
        created_at: t0(),
        recovery_key: Some([7; 32]),
    };
    let s = || ServerSession::new(SessionId([3; 8]), ServerSalt([1; 8]), t0());
    // Named with the wrong old key: refused, nothing stored.
    assert_eq!(
        e.take_over_account(new.clone(), s(), AuthKeyId::from_bytes([8; 8]), t0())
            .await,
        Err(EngineError::ClientIdTaken)
    );
    assert!(e.auth_key(AuthKeyId::from_bytes([3; 8])).await.unwrap().is_none());
    assert!(e.session(bob.key_id, &bob.client).await.unwrap().is_some());
    let later = t0().plus_secs(100);
    e.take_over_account(new, s(), bob.key_id, later).await.unwrap();
    let now_owner = e.owner(&bob.client).await.unwrap().unwrap();
    assert_eq!(
        (now_owner.key_id, now_owner.recovery_key),
        (AuthKeyId::from_bytes([3; 8]), Some([7; 32]))
    );
    assert!(
        e.session(bob.key_id, &bob.client).await.unwrap().is_none(),
        "old session gone"
    );
    assert!(e.auth_key(bob.key_id).await.unwrap().is_none(), "old key gone");
    assert!(e
        .session(AuthKeyId::from_bytes([3; 8]), &bob.client)
        .await
        .unwrap()
        .is_some());
    let peer = e.peer(&bob.client).await.unwrap().unwrap();
    assert_eq!(peer.identity_key, None);
    // The withdrawal is a key change: version 1 (the published key) becomes 2, so a message
    // sealed for the withdrawn key is refused (review of issue 15: it was stored, unreadable).
    assert_eq!(peer.key_version, 2);
    let sealed_for_old = Op::Send {
        to: bob.client.clone(),
        payload: vec![1],
        quota: entries(10),
        ttl_secs: 60,
        key_version: Some(1),
    };
    assert_eq!(
        commit_op(e, &alice, sealed_for_old, 900, true, t0()).await,
        Err(EngineError::PeerKeyChanged { current: 2 })
    );
    // Expiry counts the unpublished hour from the recovery, not from the first registration.
    assert_eq!(peer.registered_at, later.as_secs());
    let got = e.fetch(&bob.client, 10, t0()).await.unwrap();
    assert_eq!(got.len(), 1, "the mailbox stays");
    // Publishing the new device's key is a change peers see.
    let new_bob = Account {
        key_id: AuthKeyId::from_bytes([3; 8]),
        client: bob.client.clone(),
    };
    let Outcome::KeyPublished { changed, .. } =
        commit_op(e, &new_bob, Op::PublishKey { key: [6; 32] }, 2, false, t0())
            .await
            .unwrap()
    else {
        panic!()
    };
    assert!(changed);
}
