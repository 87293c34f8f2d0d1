//! The relay's long-poll, driven through `Relay` on the in-memory engine with tokio's clock
//! paused: time only moves when every task waits, so "woken by the send" and "ran out its wait"
//! are told apart exactly, not by a stopwatch.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mtproto_crypto::{rand_core::OsRng, ServerSigningKey};
use mtproto_session::{
    wire::Bytes, ClientHandshake, ClientId, ClientSession, PendingHandshake, ServerPin, ServerSession,
    UnixTime,
};
use relay_core::api::{Call, Endpoint, EnvelopeRequest};
use relay_core::{
    AuthKeyId, AuthKeyRecord, Clock, Commit, Engine, EngineError, MailboxEntry, MemoryEngine, Nonce128,
    Outcome, Peer, Relay, RelayConfig, SessionRecord, SystemClock,
};
use serde_json::Value;

/// The in-memory engine, except that its mailbox reads hand the scheduler `turns` turns after
/// reading and before answering, as a real store's round trip would: that is the window in
/// which a send can land between a poll's read and its wait.
#[derive(Default)]
struct Slow {
    inner: MemoryEngine,
    turns: AtomicUsize,
}

impl Slow {
    async fn pause(&self) {
        for _ in 0..self.turns.load(Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
    }
}

#[async_trait::async_trait]
impl Engine for Slow {
    fn name(&self) -> &'static str {
        "slow-memory"
    }
    async fn put_pending(&self, p: PendingHandshake, max: usize, now: UnixTime) -> Result<(), EngineError> {
        self.inner.put_pending(p, max, now).await
    }
    async fn get_pending(&self, sn: Nonce128) -> Result<Option<PendingHandshake>, EngineError> {
        self.inner.get_pending(sn).await
    }
    async fn advance_pending(&self, p: PendingHandshake) -> Result<bool, EngineError> {
        self.inner.advance_pending(p).await
    }
    async fn take_pending(&self, sn: Nonce128) -> Result<Option<PendingHandshake>, EngineError> {
        self.inner.take_pending(sn).await
    }
    async fn create_account(
        &self,
        k: AuthKeyRecord,
        s: ServerSession,
        now: UnixTime,
    ) -> Result<(), EngineError> {
        self.inner.create_account(k, s, now).await
    }
    async fn auth_key(&self, key_id: AuthKeyId) -> Result<Option<AuthKeyRecord>, EngineError> {
        self.inner.auth_key(key_id).await
    }
    async fn owner(&self, c: &ClientId) -> Result<Option<AuthKeyRecord>, EngineError> {
        self.inner.owner(c).await
    }
    async fn take_over_account(
        &self,
        k: AuthKeyRecord,
        s: ServerSession,
        old: AuthKeyId,
        now: UnixTime,
    ) -> Result<(), EngineError> {
        self.inner.take_over_account(k, s, old, now).await
    }
    async fn session(&self, key_id: AuthKeyId, c: &ClientId) -> Result<Option<SessionRecord>, EngineError> {
        self.inner.session(key_id, c).await
    }
    async fn commit(&self, c: Commit) -> Result<Outcome, EngineError> {
        self.inner.commit(c).await
    }
    async fn commit_and_fetch(
        &self,
        c: Commit,
        limit: usize,
    ) -> Result<(Outcome, Vec<MailboxEntry>), EngineError> {
        let r = self.inner.commit_and_fetch(c, limit).await;
        self.pause().await;
        r
    }
    async fn outcome(
        &self,
        key_id: AuthKeyId,
        c: &ClientId,
        msg_id: u64,
    ) -> Result<Option<Outcome>, EngineError> {
        self.inner.outcome(key_id, c, msg_id).await
    }
    async fn fetch(
        &self,
        c: &ClientId,
        limit: usize,
        now: UnixTime,
    ) -> Result<Vec<MailboxEntry>, EngineError> {
        let r = self.inner.fetch(c, limit, now).await;
        self.pause().await;
        r
    }
    async fn peers_page(
        &self,
        prefix: &str,
        after: Option<&ClientId>,
        limit: usize,
    ) -> Result<Vec<Peer>, EngineError> {
        self.inner.peers_page(prefix, after, limit).await
    }

    async fn purge_accounts(
        &self,
        now: UnixTime,
        policy: relay_core::AccountExpiry,
        max: usize,
    ) -> Result<Vec<AuthKeyId>, EngineError> {
        self.inner.purge_accounts(now, policy, max).await
    }
    async fn peer(&self, c: &ClientId) -> Result<Option<Peer>, EngineError> {
        self.inner.peer(c).await
    }
    async fn purge_expired(&self, now: UnixTime) -> Result<Vec<ClientId>, EngineError> {
        self.inner.purge_expired(now).await
    }
}

fn now() -> mtproto_session::UnixTime {
    SystemClock.now()
}

/// A client of `relay` with a fresh auth key (the real handshake, in process).
async fn client(relay: &Relay, name: &str) -> ClientSession {
    let pin = ServerPin::Key(relay.server_key().public());
    let (c, req) = ClientHandshake::start(pin, ClientId::new(name).unwrap(), &mut OsRng);
    let res = relay.req_pq(&req).await.unwrap();
    let (c, req) = c.handle_res_pq(&res).unwrap();
    let res = relay.req_dh_params(&req).await.unwrap();
    let (c, req) = c.handle_server_dh_params(&res, now(), &mut OsRng).unwrap();
    let res = relay.set_client_dh_params(&req).await.unwrap();
    c.handle_dh_gen_ok(&res).unwrap()
}

async fn call(relay: &Relay, s: &mut ClientSession, endpoint: Endpoint, call: &Call) -> Value {
    let packet = s
        .encode_request(&serde_json::to_vec(call).unwrap(), now(), &mut OsRng)
        .unwrap()
        .packet;
    let req = EnvelopeRequest {
        packet: Some(Bytes(packet)),
        ..EnvelopeRequest::default()
    };
    let answer = relay.handle(endpoint, &req).await.unwrap();
    let incoming = s.decode_response(&answer.packet.0, now()).unwrap();
    serde_json::from_slice(&incoming.body).unwrap()
}

fn send_to(to: &str, body: &[u8]) -> Call {
    Call::SendMessage {
        target_peer: ClientId::new(to).unwrap(),
        payload: Bytes(body.to_vec()),
        key_version: None,
    }
}

fn poll(ack: Vec<u64>, timeout_ms: u64) -> Call {
    Call::PollMessages {
        ack: ack.into_iter().map(relay_core::AckRef::from).collect(),
        timeout_ms: Some(timeout_ms),
        limit: None,
    }
}

fn seqs(answer: &Value) -> Vec<u64> {
    answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

/// Both kinds of poll — one that only reads, and one that acknowledges (its wake-up is armed
/// before its commit reads the mailbox, and it waits without reading again) — are woken by a
/// send, wherever the send lands relative to their read: before it, inside the store's round
/// trip, or during the wait.
#[tokio::test(start_paused = true)]
async fn polls_that_read_or_acknowledge_are_woken_by_a_send() {
    for slow in 0..4 {
        woken_by_a_send(slow).await;
    }
}

async fn woken_by_a_send(slow: usize) {
    let engine = Arc::new(Slow::default());
    let relay = Arc::new(Relay::new(
        engine.clone(),
        ServerSigningKey::generate(&mut OsRng),
        RelayConfig::default(),
    ));
    let mut alice = client(&relay, "alice").await;
    let mut bob = client(&relay, "bob").await;
    call(
        &relay,
        &mut alice,
        Endpoint::SecureMessage,
        &send_to("bob", b"first"),
    )
    .await;
    let first = call(&relay, &mut bob, Endpoint::PollMessages, &poll(vec![], 0)).await;
    let mut ack = seqs(&first);
    assert_eq!(ack.len(), 1);
    engine.turns.store(slow, Ordering::Relaxed);

    // Let the poll get to any point before the send: 0, 1, 2… scheduler turns.
    for turns in 0..8 {
        let wait = Duration::from_secs(20);
        let start = tokio::time::Instant::now();
        let (r, mut b) = (relay.clone(), bob);
        let acking = !ack.is_empty();
        let poller = tokio::spawn(async move {
            let got = call(&r, &mut b, Endpoint::PollMessages, &poll(ack, 20_000)).await;
            (got, b)
        });
        for _ in 0..turns {
            tokio::task::yield_now().await;
        }
        let body = format!("message {turns}");
        call(
            &relay,
            &mut alice,
            Endpoint::SecureMessage,
            &send_to("bob", body.as_bytes()),
        )
        .await;
        let (got, b) = poller.await.unwrap();
        bob = b;
        assert!(
            start.elapsed() < wait,
            "slow {slow}, turns {turns}, acking {acking}: the poll ran out its wait instead of being woken"
        );
        let msgs = got["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 1, "turns {turns}: {got}");
        // Every other round only reads (nothing to acknowledge), the others acknowledge.
        ack = if turns % 2 == 0 { seqs(&got) } else { Vec::new() };
        if turns % 2 == 1 {
            // Acknowledge what the reading round got, without waiting.
            call(&relay, &mut bob, Endpoint::PollMessages, &poll(seqs(&got), 0)).await;
        }
    }
}
