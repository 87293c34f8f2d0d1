//! The prekey cases of the conformance suite: publish, cap, hand-out once, identity changes,
//! purge. (The relay's own checks — signatures, low-order keys, the hand-out budget — are in
//! `tests/prekeys.rs`, through a `Relay`.)

use std::collections::BTreeSet;

use mtproto_session::{
    x3dh::{OneTimePrekeyPublic, SignedPrekeyPublic},
    ClientId,
};
use relay_core::{AccountExpiry, Engine, EngineError, Op, Outcome, PrekeyUpload};

use super::{account, commit_op, t0, two_accounts, Account};

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 40);

/// A fresh msg_id.
pub fn msg_id() -> u64 {
    NEXT.fetch_add(4, std::sync::atomic::Ordering::Relaxed)
}

pub fn upload(spk: u32, ids: impl IntoIterator<Item = u32>) -> PrekeyUpload {
    PrekeyUpload {
        signing_key: [5; 32],
        signed_prekey: SignedPrekeyPublic {
            id: spk,
            public: [6; 32],
            signature: [7; 64],
        },
        one_time: ids
            .into_iter()
            .map(|id| OneTimePrekeyPublic {
                id,
                public: [(id % 251) as u8 + 1; 32],
            })
            .collect(),
    }
}

pub async fn publish_key(e: &dyn Engine, who: &Account, key: u8) -> u32 {
    match commit_op(e, who, Op::PublishKey { key: [key; 32] }, msg_id(), true, t0()).await {
        Ok(Outcome::KeyPublished { key_version, .. }) => key_version,
        other => panic!("{other:?}"),
    }
}

pub async fn publish(
    e: &dyn Engine,
    who: &Account,
    key_version: u32,
    prekeys: PrekeyUpload,
) -> Result<usize, EngineError> {
    let op = Op::PublishPrekeys { key_version, prekeys };
    commit_op(e, who, op, msg_id(), true, t0())
        .await
        .map(|o| match o {
            Outcome::PrekeysPublished { one_time_prekeys } => one_time_prekeys,
            other => panic!("{other:?}"),
        })
}

/// A fetch of `peer`'s bundle by `by`: the one-time prekey's id (`None` without one) and the
/// key version.
pub async fn fetch(e: &dyn Engine, by: &Account, peer: &str) -> Result<(Option<u32>, u32), EngineError> {
    fetch_as(e, by, peer, msg_id()).await
}

pub async fn fetch_as(
    e: &dyn Engine,
    by: &Account,
    peer: &str,
    msg: u64,
) -> Result<(Option<u32>, u32), EngineError> {
    let op = Op::TakePrekeyBundle {
        peer: ClientId::new(peer).unwrap(),
        one_time: true,
    };
    commit_op(e, by, op, msg, true, t0()).await.map(|o| match o {
        Outcome::PrekeyBundle { bundle, key_version } => {
            assert_eq!(bundle.signed_prekey.signature, [7; 64]);
            (bundle.one_time_prekey.map(|k| k.id), key_version)
        }
        other => panic!("{other:?}"),
    })
}

pub async fn prekeys_need_an_identity_key_and_keep_held_ids(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    // No identity key yet: refused, nothing stored.
    assert_eq!(
        publish(e, &bob, 0, upload(1, [1, 2])).await,
        Err(EngineError::NoIdentityKey)
    );
    assert_eq!(fetch(e, &alice, "bob").await, Err(EngineError::NoPrekeys));
    assert_eq!(fetch(e, &alice, "nobody").await, Err(EngineError::UnknownPeer));
    let v = publish_key(e, &bob, 9).await;
    assert_eq!(fetch(e, &alice, "bob").await, Err(EngineError::NoPrekeys));
    assert_eq!(publish(e, &bob, v, upload(1, [1, 2, 2, 3])).await, Ok(3));
    // Ids held already are ignored; an empty publish replaces the signed prekey and asks.
    assert_eq!(publish(e, &bob, v, upload(1, [3, 4])).await, Ok(4));
    assert_eq!(publish(e, &bob, v, upload(2, [])).await, Ok(4));
    let op = Op::TakePrekeyBundle {
        peer: bob.client.clone(),
        one_time: false,
    };
    // A fetch told not to take one (the requester's budget is spent) takes none.
    match commit_op(e, &alice, op, msg_id(), true, t0()).await.unwrap() {
        Outcome::PrekeyBundle { bundle, key_version } => {
            assert_eq!((bundle.one_time_prekey, key_version), (None, v));
            assert_eq!((bundle.identity, bundle.signed_prekey.id), ([9; 32], 2));
            assert_eq!(bundle.signing_key, [5; 32]);
        }
        other => panic!("{other:?}"),
    }
    // Oldest first, each once.
    for id in 1..=4 {
        assert_eq!(fetch(e, &alice, "bob").await, Ok((Some(id), v)));
    }
    assert_eq!(fetch(e, &alice, "bob").await, Ok((None, v)));
    assert_eq!(publish(e, &bob, v, upload(2, [])).await, Ok(0));
}

pub async fn a_publish_over_the_cap_is_refused_whole(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    let v = publish_key(e, &bob, 9).await;
    assert_eq!(publish(e, &bob, v, upload(1, 1..=150)).await, Ok(150));
    // 60 new ones would make 210: nothing of it is stored, not even the new signed prekey.
    assert_eq!(
        publish(e, &bob, v, upload(2, 151..=210)).await,
        Err(EngineError::PrekeyQuota {
            held: 150,
            adding: 60,
            max: relay_core::api::MAX_ONE_TIME_PREKEYS
        })
    );
    let op = Op::TakePrekeyBundle {
        peer: bob.client.clone(),
        one_time: false,
    };
    match commit_op(e, &alice, op, msg_id(), true, t0()).await.unwrap() {
        Outcome::PrekeyBundle { bundle, .. } => assert_eq!(bundle.signed_prekey.id, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(publish(e, &bob, v, upload(2, 100..=200)).await, Ok(200));
    assert!(matches!(
        publish(e, &bob, v, upload(2, [201])).await,
        Err(EngineError::PrekeyQuota { held: 200, .. })
    ));
    assert_eq!(fetch(e, &alice, "bob").await, Ok((Some(1), v)));
    assert_eq!(publish(e, &bob, v, upload(2, [201])).await, Ok(200));
}

pub async fn one_time_prekeys_are_handed_out_once_under_concurrent_fetches(e: &dyn Engine) {
    // Two requesters, 15 fetches each, one after the other within a requester and at the same
    // time between them, against 20 one-time prekeys: exactly the 20 are handed out, each once.
    let bob = account(e, "bob", 2).await;
    let v = publish_key(e, &bob, 9).await;
    assert_eq!(publish(e, &bob, v, upload(1, 1..=20)).await, Ok(20));
    let (alice, carol) = (account(e, "alice", 1).await, account(e, "carol", 3).await);
    let run = |who: Account| async move {
        let mut got = Vec::new();
        for _ in 0..15 {
            got.push(fetch(e, &who, "bob").await.unwrap().0);
        }
        got
    };
    let (a, c) = futures::join!(run(alice), run(carol));
    let handed: Vec<u32> = a.iter().chain(&c).flatten().copied().collect();
    let distinct: BTreeSet<u32> = handed.iter().copied().collect();
    assert_eq!(handed.len(), 20, "{a:?} {c:?}");
    assert_eq!(distinct, (1..=20).collect());
    // Each requester's own fetches took in order: once one came without, none came after.
    for got in [&a, &c] {
        let first_none = got.iter().position(Option::is_none).unwrap_or(got.len());
        assert!(got[first_none..].iter().all(Option::is_none), "{got:?}");
    }
}

pub async fn a_new_identity_key_makes_old_prekeys_unusable(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    let v1 = publish_key(e, &bob, 9).await;
    assert_eq!(publish(e, &bob, v1, upload(1, [1, 2, 3])).await, Ok(3));
    let v2 = publish_key(e, &bob, 10).await;
    assert_eq!(v2, v1 + 1);
    assert_eq!(fetch(e, &alice, "bob").await, Err(EngineError::NoPrekeys));
    // A publish checked against the old key is not committed (the relay checks again).
    assert_eq!(
        publish(e, &bob, v1, upload(2, [4])).await,
        Err(EngineError::Conflict)
    );
    // Published for the new key: the old key's one-time prekeys are gone.
    assert_eq!(publish(e, &bob, v2, upload(2, [3, 4])).await, Ok(2));
    assert_eq!(fetch(e, &alice, "bob").await, Ok((Some(3), v2)));
    assert_eq!(fetch(e, &alice, "bob").await, Ok((Some(4), v2)));
    assert_eq!(fetch(e, &alice, "bob").await, Ok((None, v2)));
}

pub async fn a_retried_fetch_takes_one_one_time_prekey(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    let v = publish_key(e, &bob, 9).await;
    assert_eq!(publish(e, &bob, v, upload(1, [1, 2, 3])).await, Ok(3));
    let msg = msg_id();
    // A commit that loses its compare-and-swap, then the same request again.
    let rec = e.session(alice.key_id, &alice.client).await.unwrap().unwrap();
    let stale = relay_core::Commit {
        key_id: alice.key_id,
        client: alice.client.clone(),
        session: rec.session.clone(),
        expected_version: rec.version + 7,
        msg_id: msg,
        op: Op::TakePrekeyBundle {
            peer: bob.client.clone(),
            one_time: true,
        },
        keep_outcome: true,
        now: t0(),
    };
    assert_eq!(e.commit(stale).await, Err(EngineError::Conflict));
    assert_eq!(fetch_as(e, &alice, "bob", msg).await, Ok((Some(1), v)));
    // The outcome is kept for a resent envelope: the same bundle.
    match e.outcome(alice.key_id, &alice.client, msg).await.unwrap() {
        Some(Outcome::PrekeyBundle { bundle, .. }) => {
            assert_eq!(bundle.one_time_prekey.map(|k| k.id), Some(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fetch(e, &alice, "bob").await, Ok((Some(2), v)));
}

pub async fn a_purged_account_leaves_no_prekeys(e: &dyn Engine) {
    let (_alice, bob) = two_accounts(e).await;
    let v = publish_key(e, &bob, 9).await;
    assert_eq!(publish(e, &bob, v, upload(1, [1, 2])).await, Ok(2));
    let later = mtproto_session::UnixTime::from_secs(t0().as_secs() + 1000);
    let policy = AccountExpiry {
        unpublished_secs: 10_000,
        idle_secs: 500,
    };
    let removed = e.purge_accounts(later, policy, 10).await.unwrap();
    assert!(removed.contains(&bob.key_id), "{removed:?}");
    // The name registered again (a new auth key) with the same identity key: version 1 again,
    // as the purged account's was — its prekeys must not come back.
    let bob2 = account(e, "bob", 40).await;
    assert_eq!(publish_key(e, &bob2, 9).await, v);
    let carol = account(e, "carol", 3).await;
    assert_eq!(fetch(e, &carol, "bob").await, Err(EngineError::NoPrekeys));
    assert_eq!(publish(e, &bob2, v, upload(1, [])).await, Ok(0));
}
