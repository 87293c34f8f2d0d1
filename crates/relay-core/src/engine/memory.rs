//! The in-memory engine: for tests and ephemeral runs. Nothing survives the process.

use mtproto_crypto::{AuthKeyId, Nonce128};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use mtproto_session::{wire::Bytes, ClientId, PendingHandshake, ServerSession, Stage, UnixTime};

use super::{Engine, NEVER_EXPIRES, OUTCOME_TTL_SECS, RELAY_SENDER};
use crate::{
    prekeys::StoredPrekeys, AccountExpiry, AuthKeyRecord, Commit, EngineError, EntryKind, MailboxEntry, Op,
    Outcome, Peer, SessionRecord,
};

#[derive(Default)]
struct Account {
    peer: Option<Peer>,
    next_seq: u64,
    mailbox: BTreeMap<u64, MailboxEntry>,
    /// Payload bytes in `mailbox`.
    bytes: u64,
    /// Messages (entries, payload bytes) waiting per sender.
    senders: HashMap<String, (usize, u64)>,
    /// Its published prekeys.
    prekeys: Option<StoredPrekeys>,
}

impl Account {
    fn insert(&mut self, entry: MailboxEntry) {
        let len = entry.payload.0.len() as u64;
        if entry.kind == EntryKind::Message {
            let s = self.senders.entry(entry.from.clone()).or_default();
            s.0 += 1;
            s.1 += len;
        }
        self.bytes += len;
        self.mailbox.insert(entry.seq, entry);
    }

    fn remove(&mut self, seq: u64) -> Option<MailboxEntry> {
        let entry = self.mailbox.remove(&seq)?;
        let len = entry.payload.0.len() as u64;
        self.bytes = self.bytes.saturating_sub(len);
        if entry.kind == EntryKind::Message {
            if let Some(s) = self.senders.get_mut(&entry.from) {
                s.0 = s.0.saturating_sub(1);
                s.1 = s.1.saturating_sub(len);
                if s.0 == 0 {
                    self.senders.remove(&entry.from);
                }
            }
        }
        Some(entry)
    }
}

#[derive(Default)]
struct State {
    pending: HashMap<Nonce128, PendingHandshake>,
    keys: HashMap<AuthKeyId, AuthKeyRecord>,
    owners: HashMap<ClientId, AuthKeyId>,
    sessions: HashMap<AuthKeyId, SessionRecord>,
    outcomes: HashMap<(AuthKeyId, u64), (Outcome, u64)>,
    accounts: BTreeMap<ClientId, Account>,
}

impl State {
    /// Runs `c`'s operation on the accounts and mailboxes (the session and the outcome are
    /// stored by the caller); nothing changes on error.
    fn apply(&mut self, c: &Commit) -> Result<Outcome, EngineError> {
        let now_s = c.now.as_secs();
        Ok(match &c.op {
            Op::Touch => Outcome::Done,
            Op::Send {
                to,
                payload,
                quota,
                ttl_secs,
                key_version,
            } => {
                let from = c.client.to_string();
                let account = self.accounts.get_mut(to).ok_or(EngineError::UnknownPeer)?;
                let current = account.peer.as_ref().ok_or(EngineError::UnknownPeer)?.key_version;
                if key_version.is_some_and(|v| v != current) {
                    return Err(EngineError::PeerKeyChanged { current });
                }
                let mine = account.senders.get(&from).copied().unwrap_or_default();
                quota.admit((account.mailbox.len(), account.bytes), mine, payload.len())?;
                account.next_seq += 1;
                let seq = account.next_seq;
                let timestamp_ms = millis(c.now);
                account.insert(MailboxEntry {
                    seq,
                    from,
                    kind: EntryKind::Message,
                    payload: Bytes(payload.clone()),
                    timestamp_ms,
                    expires_at: now_s.saturating_add(*ttl_secs),
                });
                Outcome::Sent { seq, timestamp_ms }
            }
            Op::Ack { seqs } => {
                let account = self.accounts.entry(c.client.clone()).or_default();
                let removed = seqs
                    .iter()
                    .filter(|a| {
                        let named = account
                            .mailbox
                            .get(&a.seq)
                            .is_some_and(|e| a.matches(e.seq, e.timestamp_ms));
                        named && account.remove(a.seq).is_some()
                    })
                    .count();
                Outcome::Acked { removed }
            }
            Op::PublishKey { key } => {
                let account = self.accounts.get_mut(&c.client).ok_or(EngineError::UnknownPeer)?;
                let peer = account.peer.as_mut().ok_or(EngineError::UnknownPeer)?;
                let changed = peer.identity_key != Some(*key);
                if changed {
                    peer.identity_key = Some(*key);
                    peer.key_version += 1;
                }
                Outcome::KeyPublished {
                    changed,
                    key_version: peer.key_version,
                }
            }
            Op::PublishPrekeys { key_version, prekeys } => {
                let account = self.accounts.get_mut(&c.client).ok_or(EngineError::UnknownPeer)?;
                let peer = account.peer.as_ref().ok_or(EngineError::UnknownPeer)?;
                let identity = peer.identity_key.ok_or(EngineError::NoIdentityKey)?;
                if peer.key_version != *key_version {
                    return Err(EngineError::Conflict);
                }
                let stored =
                    StoredPrekeys::publish(account.prekeys.clone(), (identity, *key_version), prekeys)?;
                let one_time_prekeys = stored.one_time.len();
                account.prekeys = Some(stored);
                Outcome::PrekeysPublished { one_time_prekeys }
            }
            Op::TakePrekeyBundle { peer, one_time } => {
                let account = self.accounts.get_mut(peer).ok_or(EngineError::UnknownPeer)?;
                let owner = account.peer.clone().ok_or(EngineError::UnknownPeer)?;
                let mut stored = account.prekeys.clone().ok_or(EngineError::NoPrekeys)?;
                let (bundle, key_version) = stored.hand_out(&owner, *one_time)?;
                account.prekeys = Some(stored);
                Outcome::PrekeyBundle { bundle, key_version }
            }
        })
    }
}

/// Everything in one mutex-guarded map set.
#[derive(Default)]
pub struct MemoryEngine {
    state: Mutex<State>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn millis(now: UnixTime) -> u64 {
    now.as_nanos() / 1_000_000
}

#[async_trait::async_trait]
impl Engine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn put_pending(
        &self,
        pending: PendingHandshake,
        max: usize,
        now: UnixTime,
    ) -> Result<(), EngineError> {
        let mut s = self.lock();
        if s.pending.len() >= max {
            s.pending.retain(|_, p| !p.is_expired(now));
            if s.pending.len() >= max {
                return Err(EngineError::TooManyHandshakes { max });
            }
        }
        s.pending.insert(pending.server_nonce.into(), pending);
        Ok(())
    }

    async fn get_pending(&self, server_nonce: Nonce128) -> Result<Option<PendingHandshake>, EngineError> {
        Ok(self.lock().pending.get(&server_nonce).cloned())
    }

    async fn advance_pending(&self, pending: PendingHandshake) -> Result<bool, EngineError> {
        let mut s = self.lock();
        match s.pending.get_mut(&Nonce128::from_bytes(pending.server_nonce)) {
            Some(p) if matches!(p.stage, Stage::AwaitingDhParams) => {
                *p = pending;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn take_pending(&self, server_nonce: Nonce128) -> Result<Option<PendingHandshake>, EngineError> {
        Ok(self.lock().pending.remove(&server_nonce))
    }

    async fn create_account(
        &self,
        key: AuthKeyRecord,
        session: ServerSession,
        now: UnixTime,
    ) -> Result<(), EngineError> {
        let mut s = self.lock();
        if let Some(owner) = s.owners.get(&key.client_id) {
            if *owner != key.key_id {
                return Err(EngineError::ClientIdTaken);
            }
        }
        let id = key.key_id;
        let client = key.client_id.clone();
        s.owners.insert(client.clone(), id);
        s.keys.insert(id, key);
        s.sessions.insert(id, SessionRecord { session, version: 0 });
        let account = s.accounts.entry(client.clone()).or_default();
        if account.peer.is_none() {
            account.peer = Some(Peer {
                client_id: client,
                identity_key: None,
                key_version: 0,
                registered_at: now.as_secs(),
                last_seen: now.as_secs(),
            });
        }
        Ok(())
    }

    async fn owner(&self, client: &ClientId) -> Result<Option<AuthKeyRecord>, EngineError> {
        let s = self.lock();
        Ok(s.owners.get(client).and_then(|id| s.keys.get(id)).cloned())
    }

    async fn take_over_account(
        &self,
        key: AuthKeyRecord,
        session: ServerSession,
        old_key_id: AuthKeyId,
        now: UnixTime,
    ) -> Result<(), EngineError> {
        let mut s = self.lock();
        if s.owners.get(&key.client_id) != Some(&old_key_id) {
            return Err(EngineError::ClientIdTaken);
        }
        s.keys.remove(&old_key_id);
        s.sessions.remove(&old_key_id);
        let id = key.key_id;
        let client = key.client_id.clone();
        s.owners.insert(client.clone(), id);
        s.keys.insert(id, key);
        s.sessions.insert(id, SessionRecord { session, version: 0 });
        if let Some(peer) = s.accounts.get_mut(&client).and_then(|a| a.peer.as_mut()) {
            // A new registration as far as expiry goes: the new device has the unpublished
            // account's hour to publish, counted from now. A withdrawn key is a key change:
            // key_version + 1, so a message sealed for the old key is refused.
            if peer.identity_key.take().is_some() {
                peer.key_version = peer.key_version.saturating_add(1);
            }
            peer.registered_at = now.as_secs();
            peer.last_seen = now.as_secs();
        }
        Ok(())
    }

    async fn auth_key(&self, key_id: AuthKeyId) -> Result<Option<AuthKeyRecord>, EngineError> {
        Ok(self.lock().keys.get(&key_id).cloned())
    }

    async fn session(
        &self,
        key_id: AuthKeyId,
        _client: &ClientId,
    ) -> Result<Option<SessionRecord>, EngineError> {
        Ok(self.lock().sessions.get(&key_id).cloned())
    }

    async fn commit(&self, c: Commit) -> Result<Outcome, EngineError> {
        let mut s = self.lock();
        let version = s.sessions.get(&c.key_id).map(|r| r.version);
        if version != Some(c.expected_version) {
            return Err(EngineError::Conflict);
        }
        let now_s = c.now.as_secs();
        let outcome = s.apply(&c)?;
        if let Some(peer) = s.accounts.get_mut(&c.client).and_then(|a| a.peer.as_mut()) {
            peer.last_seen = now_s;
        }
        s.sessions.insert(
            c.key_id,
            SessionRecord {
                session: c.session,
                version: c.expected_version + 1,
            },
        );
        if c.keep_outcome {
            s.outcomes.insert((c.key_id, c.msg_id), (outcome.clone(), now_s));
        }
        Ok(outcome)
    }

    async fn outcome(
        &self,
        key_id: AuthKeyId,
        _client: &ClientId,
        msg_id: u64,
    ) -> Result<Option<Outcome>, EngineError> {
        Ok(self
            .lock()
            .outcomes
            .get(&(key_id, msg_id))
            .map(|(o, _)| o.clone()))
    }

    async fn fetch(
        &self,
        client: &ClientId,
        limit: usize,
        now: UnixTime,
    ) -> Result<Vec<MailboxEntry>, EngineError> {
        let s = self.lock();
        let now = now.as_secs();
        Ok(s.accounts
            .get(client)
            .map(|a| {
                a.mailbox
                    .values()
                    .filter(|e| e.expires_at > now)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn peers_page(
        &self,
        prefix: &str,
        after: Option<&ClientId>,
        limit: usize,
    ) -> Result<Vec<Peer>, EngineError> {
        let s = self.lock();
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(a.clone()),
            None => std::ops::Bound::Unbounded,
        };
        Ok(s.accounts
            .range((start, std::ops::Bound::Unbounded))
            .skip_while(|(id, _)| id.as_str() < prefix)
            .take_while(|(id, _)| id.as_str().starts_with(prefix))
            .filter_map(|(_, a)| a.peer.clone().filter(|p| p.identity_key.is_some()))
            .take(limit)
            .collect())
    }

    async fn purge_accounts(
        &self,
        now: UnixTime,
        policy: AccountExpiry,
        max: usize,
    ) -> Result<Vec<AuthKeyId>, EngineError> {
        let mut s = self.lock();
        let secs = now.as_secs();
        let gone: Vec<ClientId> = s
            .accounts
            .iter()
            .filter(|(_, a)| {
                a.mailbox.is_empty()
                    && a.peer.as_ref().is_some_and(|p| {
                        (p.identity_key.is_none()
                            && secs.saturating_sub(p.registered_at) >= policy.unpublished_secs)
                            || secs.saturating_sub(p.last_seen) >= policy.idle_secs
                    })
            })
            .map(|(id, _)| id.clone())
            .take(max)
            .collect();
        let mut keys = Vec::new();
        for id in gone {
            s.accounts.remove(&id);
            if let Some(key_id) = s.owners.remove(&id) {
                s.keys.remove(&key_id);
                s.sessions.remove(&key_id);
                s.outcomes.retain(|(k, _), _| *k != key_id);
                keys.push(key_id);
            }
        }
        Ok(keys)
    }

    async fn peer(&self, client: &ClientId) -> Result<Option<Peer>, EngineError> {
        Ok(self.lock().accounts.get(client).and_then(|a| a.peer.clone()))
    }

    async fn purge_expired(&self, now: UnixTime) -> Result<Vec<ClientId>, EngineError> {
        let mut s = self.lock();
        let secs = now.as_secs();
        s.pending.retain(|_, p| !p.is_expired(now));
        s.outcomes.retain(|_, (_, at)| *at + OUTCOME_TTL_SECS > secs);
        let mut expired = Vec::new();
        for (to, account) in s.accounts.iter_mut() {
            let gone: Vec<u64> = account
                .mailbox
                .values()
                .filter(|e| e.expires_at <= secs)
                .map(|e| e.seq)
                .collect();
            for seq in gone {
                if let Some(e) = account.remove(seq) {
                    if e.kind == EntryKind::Message {
                        expired.push((e.from, to.clone(), seq));
                    }
                }
            }
        }
        let mut notified = Vec::new();
        for (from, to, seq) in expired {
            let Ok(sender) = ClientId::new(&from) else {
                continue;
            };
            let Some(account) = s.accounts.get_mut(&sender) else {
                continue;
            };
            account.next_seq += 1;
            let n = account.next_seq;
            account.insert(MailboxEntry {
                seq: n,
                from: RELAY_SENDER.to_owned(),
                kind: EntryKind::Expired { to, message_seq: seq },
                payload: Bytes(Vec::new()),
                timestamp_ms: millis(now),
                expires_at: NEVER_EXPIRES,
            });
            notified.push(sender);
        }
        Ok(notified)
    }
}
