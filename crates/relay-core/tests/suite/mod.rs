//! The shared conformance suite (included by each engine's test file).
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use mtproto_session::{
    ClientId, PendingHandshake, SecretBytes, ServerSalt, ServerSession, SessionId, Stage, UnixTime,
};
use relay_core::{
    AccountExpiry, AckRef, AuthKeyId, AuthKeyRecord, Commit, Engine, EngineError, EntryKind, Nonce128, Op,
    Outcome, SendQuota,
};

mod accounts;
mod mailbox;
mod prekeys;
pub use accounts::*;
pub use mailbox::*;
pub use prekeys::{
    a_new_identity_key_makes_old_prekeys_unusable, a_publish_over_the_cap_is_refused_whole,
    a_purged_account_leaves_no_prekeys, a_retried_fetch_takes_one_one_time_prekey,
    one_time_prekeys_are_handed_out_once_under_concurrent_fetches,
    prekeys_need_an_identity_key_and_keep_held_ids,
};
pub use prekeys::{fetch as fetch_bundle, publish as publish_prekeys, publish_key, upload as prekey_upload};

pub fn t0() -> UnixTime {
    UnixTime::from_secs(1_800_000_000)
}

pub struct Account {
    pub key_id: AuthKeyId,
    pub client: ClientId,
}

pub async fn account(e: &dyn Engine, name: &str, key_byte: u8) -> Account {
    let key_id = AuthKeyId::from_bytes([key_byte; 8]);
    let record = AuthKeyRecord {
        key_id,
        auth_key: SecretBytes::new(vec![key_byte; 256]),
        client_id: ClientId::new(name).unwrap(),
        created_at: t0(),
        recovery_key: None,
    };
    e.create_account(
        record,
        ServerSession::new(SessionId([key_byte; 8]), ServerSalt([1; 8]), t0()),
        t0(),
    )
    .await
    .unwrap();
    Account {
        key_id,
        client: ClientId::new(name).unwrap(),
    }
}

pub async fn two_accounts(e: &dyn Engine) -> (Account, Account) {
    (account(e, "alice", 1).await, account(e, "bob", 2).await)
}

pub fn pending(nonce: u8, at: UnixTime) -> PendingHandshake {
    PendingHandshake {
        nonce: [nonce; 16],
        server_nonce: [nonce; 16],
        p: 3,
        q: 5,
        created_at: at,
        stage: Stage::AwaitingDhParams,
        pow_bits: 0,
    }
}

pub async fn commit_op(
    e: &dyn Engine,
    from: &Account,
    op: Op,
    msg_id: u64,
    keep: bool,
    now: UnixTime,
) -> Result<Outcome, EngineError> {
    let rec = e.session(from.key_id, &from.client).await.unwrap().unwrap();
    e.commit(Commit {
        key_id: from.key_id,
        client: from.client.clone(),
        session: rec.session,
        expected_version: rec.version,
        msg_id,
        op,
        keep_outcome: keep,
        now,
    })
    .await
}

static NEXT_MSG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(4);

pub async fn send(e: &dyn Engine, from: &Account, to: &str, payload: &[u8]) -> Result<Outcome, EngineError> {
    send_with(e, from, to, payload, 100, 3600, t0()).await
}

pub async fn send_with(
    e: &dyn Engine,
    from: &Account,
    to: &str,
    payload: &[u8],
    cap: usize,
    ttl: u64,
    now: UnixTime,
) -> Result<Outcome, EngineError> {
    send_quota(e, from, to, payload, entries(cap), ttl, now).await
}

/// A quota of `cap` entries in the mailbox, nothing else limited.
pub fn entries(cap: usize) -> SendQuota {
    SendQuota {
        mailbox_entries: cap,
        ..SendQuota::UNLIMITED
    }
}

pub async fn send_quota(
    e: &dyn Engine,
    from: &Account,
    to: &str,
    payload: &[u8],
    quota: SendQuota,
    ttl: u64,
    now: UnixTime,
) -> Result<Outcome, EngineError> {
    let msg_id = NEXT_MSG.fetch_add(4, std::sync::atomic::Ordering::Relaxed);
    let op = Op::Send {
        to: ClientId::new(to).unwrap(),
        payload: payload.to_vec(),
        quota,
        ttl_secs: ttl,
        key_version: None,
    };
    commit_op(e, from, op, msg_id, true, now).await
}

/// Calls `$callback!($($args,)* name)` for every case of the suite: the one list of cases.
macro_rules! for_each_case {
    ($callback:ident $(, $args:expr)*) => {
        $callback!($($args,)* pending_handshakes_store_advance_and_serve_once);
        $callback!($($args,)* pending_handshakes_are_bounded);
        $callback!($($args,)* client_ids_bind_to_the_first_key);
        $callback!($($args,)* send_assigns_increasing_sequence_numbers);
        $callback!($($args,)* failed_commits_store_nothing);
        $callback!($($args,)* session_versions_detect_concurrent_commits);
        $callback!($($args,)* acks_remove_only_own_entries);
        $callback!($($args,)* outcomes_are_kept_for_resends);
        $callback!($($args,)* identity_keys_have_versions);
        $callback!($($args,)* a_send_sealed_for_an_old_key_is_refused_and_stores_nothing);
        $callback!($($args,)* fetch_is_ordered_limited_and_hides_expired);
        $callback!($($args,)* expiry_tells_the_sender);
        $callback!($($args,)* concurrent_sends_all_land_once);
        $callback!($($args,)* quotas_count_entries_and_bytes_per_mailbox_and_sender);
        $callback!($($args,)* the_directory_is_paged_and_searched_by_prefix);
        $callback!($($args,)* unused_accounts_are_removed_and_their_names_freed);
        $callback!($($args,)* an_ack_never_removes_another_message_with_the_same_seq);
        $callback!($($args,)* a_recovery_moves_the_name_and_keeps_the_mailbox);
        $callback!($($args,)* prekeys_need_an_identity_key_and_keep_held_ids);
        $callback!($($args,)* a_publish_over_the_cap_is_refused_whole);
        $callback!($($args,)* one_time_prekeys_are_handed_out_once_under_concurrent_fetches);
        $callback!($($args,)* a_new_identity_key_makes_old_prekeys_unusable);
        $callback!($($args,)* a_retried_fetch_takes_one_one_time_prekey);
        $callback!($($args,)* a_purged_account_leaves_no_prekeys);
    };
}
pub(crate) use for_each_case;

/// One test function per case, each with a fresh engine from `$make`.
macro_rules! for_each_test {
    ($make:expr) => {
        use suite::case;
        suite::for_each_case!(case, $make);
    };
}
pub(crate) use for_each_test;

macro_rules! case {
    ($make:expr, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            // The guard (a temporary directory, a Redis process) lives as long as the test.
            let (engine, _guard) = ($make)().await;
            suite::$name(&*engine).await;
        }
    };
}

pub(crate) use case;
pub use relay_test_support::{RedisCluster, RedisServer};

pub async fn pending_handshakes_store_advance_and_serve_once(e: &dyn Engine) {
    e.put_pending(pending(1, t0()), 10, t0()).await.unwrap();
    assert_eq!(
        e.get_pending(Nonce128::from_bytes([1; 16]))
            .await
            .unwrap()
            .unwrap()
            .nonce,
        [1; 16]
    );
    let mut advanced = pending(1, t0());
    advanced.stage = Stage::AwaitingClientDh {
        a: SecretBytes::new(vec![5; 32]),
        g_a: vec![6; 256],
    };
    assert!(e.advance_pending(advanced.clone()).await.unwrap());
    assert!(
        !e.advance_pending(advanced).await.unwrap(),
        "advancing twice must fail"
    );
    assert!(matches!(
        e.get_pending(Nonce128::from_bytes([1; 16]))
            .await
            .unwrap()
            .unwrap()
            .stage,
        Stage::AwaitingClientDh { .. }
    ));
    assert!(e
        .take_pending(Nonce128::from_bytes([1; 16]))
        .await
        .unwrap()
        .is_some());
    assert!(
        e.take_pending(Nonce128::from_bytes([1; 16]))
            .await
            .unwrap()
            .is_none(),
        "a server nonce serves once"
    );
    assert!(!e.advance_pending(pending(9, t0())).await.unwrap());
}

pub async fn pending_handshakes_are_bounded(e: &dyn Engine) {
    for i in 0..3 {
        e.put_pending(pending(i, t0()), 3, t0()).await.unwrap();
    }
    assert_eq!(
        e.put_pending(pending(7, t0()), 3, t0()).await,
        Err(EngineError::TooManyHandshakes { max: 3 })
    );
    // Once the old ones expire there is room again.
    let later = t0().plus_secs(61);
    e.put_pending(pending(8, later), 3, later).await.unwrap();
    assert!(e
        .get_pending(Nonce128::from_bytes([0; 16]))
        .await
        .unwrap()
        .is_none());
}

pub async fn failed_commits_store_nothing(e: &dyn Engine) {
    let (alice, bob) = two_accounts(e).await;
    let before = e
        .session(alice.key_id, &alice.client)
        .await
        .unwrap()
        .unwrap()
        .version;
    assert_eq!(
        send(e, &alice, "nobody", b"x").await,
        Err(EngineError::UnknownPeer)
    );
    send_with(e, &alice, "bob", b"1", 2, 3600, t0()).await.unwrap();
    send_with(e, &alice, "bob", b"2", 2, 3600, t0()).await.unwrap();
    assert_eq!(
        send_with(e, &alice, "bob", b"3", 2, 3600, t0()).await,
        Err(EngineError::MailboxFull { cap: 2 })
    );
    assert_eq!(e.fetch(&bob.client, 100, t0()).await.unwrap().len(), 2);
    assert_eq!(
        e.session(alice.key_id, &alice.client)
            .await
            .unwrap()
            .unwrap()
            .version,
        before + 2,
        "failed commits leave the session"
    );
}

pub async fn session_versions_detect_concurrent_commits(e: &dyn Engine) {
    let (alice, _bob) = two_accounts(e).await;
    let rec = e.session(alice.key_id, &alice.client).await.unwrap().unwrap();
    let c = |msg_id, expected_version| Commit {
        key_id: alice.key_id,
        client: alice.client.clone(),
        session: rec.session.clone(),
        expected_version,
        msg_id,
        op: Op::Send {
            to: ClientId::new("bob").unwrap(),
            payload: vec![1],
            quota: entries(10),
            ttl_secs: 60,
            key_version: None,
        },
        keep_outcome: true,
        now: t0(),
    };
    let bob = ClientId::new("bob").unwrap();
    e.commit(c(4, rec.version)).await.unwrap();
    assert_eq!(e.commit(c(8, rec.version)).await, Err(EngineError::Conflict));
    // A Cluster send delivers (under a marker keyed by the sender's key and msg_id) before the
    // sender's compare-and-swap, but reads the session's version first (session 12): a stale
    // version stores nothing there either. (A commit of the same key between that read and the
    // delivery can still leave the losing request's entry, which its retry finds by the marker;
    // a recovery in that window leaves it with no outcome — docs/security.md.)
    let held = e.fetch(&bob, 10, t0()).await.unwrap().len();
    assert_eq!(held, 1, "a lost compare-and-swap stores nothing");
    assert!(e.outcome(alice.key_id, &alice.client, 8).await.unwrap().is_none());
    // What the relay does after a conflict: read the session again and commit again. Every
    // engine then holds the message once, under the sequence number the first send left free.
    let fresh = e
        .session(alice.key_id, &alice.client)
        .await
        .unwrap()
        .unwrap()
        .version;
    let out = e.commit(c(8, fresh)).await.unwrap();
    assert!(matches!(out, Outcome::Sent { seq: 2, .. }), "{out:?}");
    assert_eq!(e.fetch(&bob, 10, t0()).await.unwrap().len(), 2);
    assert_eq!(
        e.outcome(alice.key_id, &alice.client, 8).await.unwrap(),
        Some(out)
    );
    assert_eq!(
        send_with(e, &alice, "bob", b"full", 2, 60, t0()).await,
        Err(EngineError::MailboxFull { cap: 2 })
    );
}
