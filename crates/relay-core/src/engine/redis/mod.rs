//! The Redis engine: several relay nodes share one user base through one Redis primary or a
//! Redis Cluster.
//!
//! Every operation that must be atomic is one Lua script (one round trip). Keys carry hash tags
//! so that **everything of one user shares one Cluster slot** — their peer record, mailbox,
//! expiry index, and the sessions, outcomes and delivery markers of their auth keys:
//!
//! ```text
//! P:{hs}:idx                    ZSET   pending handshakes by creation time (the bound)
//! P:{hs}:h:<server_nonce>       HASH   pending handshake: stage (its name), rec (JSON); PX 2·TTL
//! P:{k:<key_id>}:key            STRING auth key record (JSON, names its client): key id → user
//! P:{u:<client>}:owner          STRING key id (hex) that owns the client id
//! P:{u:<client>}:peer           HASH   key, kv, reg, seen, next, bytes (payload bytes waiting)
//! P:{u:<client>}:mbox           ZSET   mailbox entries (JSON) scored by sequence number
//! P:{u:<client>}:expiry         ZSET   sequence numbers of the mailbox's messages by expiry time
//! P:{u:<client>}:sess:<key_id>  HASH   data (`ServerSession::to_bytes`), version
//! P:{u:<client>}:out:<key_id>:<msg_id>  STRING outcome of a committed request, EX 3600
//! P:{u:<client>}:outidx         ZSET   those outcome keys by creation time (relay clock)
//! P:{u:<to>}:dup:<key_id>:<msg_id>      STRING sequence number a send got (Cluster), EX 3600
//! P:{u:<client>}:senders        HASH   n:<sender>, b:<sender>: messages, payload bytes waiting
//! P:{u:<client>}:gone           STRING key id (hex) of a removed account until its key record goes
//! P:{u:<client>}:pk             HASH   kv, key (the identity key and version they are for), signed
//!                                      (JSON: signing key and signed prekey)
//! P:{u:<client>}:otp            LIST   one-time prekeys (JSON), oldest first, at most 200
//! P:{u:<peer>}:ptake:<key_id>:<msg_id>  STRING the bundle a fetch took (JSON), EX 3600
//! P:peers                       SET    the directory: every registered client
//! P:names                       ZSET   clients that published an identity key, score 0 (by name)
//! P:wake                        pub/sub channel: recipient ids, a hint for long-polls on any node
//! ```
//!
//! A commit touches only its client's slot, except a send, which also touches the recipient's,
//! and a prekey bundle fetch, which takes from the peer's (always two scripts; see `prekeys`).
//! On a single Redis a send is one script over both. On Cluster it is a read and two scripts:
//! the sender's stored session version (a node's cached session may be stale: after a recovery
//! elsewhere it would let the old key deliver as the name), then the recipient's script, which
//! refuses without writing (unknown recipient, full mailbox) or appends the entry with a marker
//! keyed by the sender's key and msg_id — run twice, it appends once and returns the first
//! sequence number; then the sender's script (session compare-and-swap, outcome `sent` with that
//! number). A send interrupted between the two is
//! completed by its resend, which finds the marker. See `docs/deployment.md`.
//!
//! Quotas ([`crate::SendQuota`]) are checked inside the script that appends, against counters
//! kept in the recipient's slot (`bytes` in its peer hash, its `senders` hash) and updated by
//! every script that appends or removes an entry, so a refused send writes nothing and a check
//! costs no round trip. The directory is paged from `P:names` (`ZRANGEBYLEX`), which a publish
//! updates with its own command (on Cluster it lives in another slot than the user).

use mtproto_crypto::{AuthKeyId, Nonce128};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use mtproto_session::{ClientId, PendingHandshake, ServerSession, Stage, UnixTime};
use redis::{aio::ConnectionManager, AsyncCommands, Script};
use zeroize::Zeroizing;

use super::{Engine, NEVER_EXPIRES, OUTCOME_TTL_SECS, RELAY_SENDER};

mod codec;
mod commit;
mod conn;
mod keys;
mod prekeys;
mod purge;
mod scripts;
mod upgrade;

use crate::{
    AccountExpiry, AuthKeyRecord, Commit, EngineError, MailboxEntry, Notifier, Op, Outcome, Peer, SendQuota,
    SessionRecord,
};
use codec::*;
use commit::*;
use conn::Conn;
use prekeys::prekey_args;
use purge::PURGE_USERS_PER_CALL;
use scripts::*;

/// Redis storage, shared by any number of relay nodes.
pub struct RedisEngine {
    conn: Conn,
    cluster: bool,
    prefix: String,
    notifier: Arc<OnceLock<Arc<Notifier>>>,
    trips: Arc<AtomicU64>,
    scripts: Scripts,
    subscriber: tokio::task::JoinHandle<()>,
    /// Where the directory scan of the purge goes on (`SSCAN` cursor).
    sweep: tokio::sync::Mutex<u64>,
    /// Where the directory scan of the account purge goes on (`SSCAN` cursor).
    account_sweep: tokio::sync::Mutex<u64>,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

impl RedisEngine {
    /// Round trips to Redis made by this engine so far.
    pub fn round_trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Whether this engine talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    pub(super) async fn read_peer(&self, id: &str) -> Result<Option<Peer>, EngineError> {
        let mut conn = self.trip();
        let row: PeerRow = redis::cmd("HMGET")
            .arg(self.u(id, "peer"))
            .arg("key")
            .arg("kv")
            .arg("reg")
            .arg("seen")
            .query_async(&mut conn)
            .await
            .map_err(storage)?;
        to_peer(id, row)
    }

    /// The records of `ids`, in order (`None` for a client without one).
    pub(super) async fn read_peers(&self, ids: &[String]) -> Result<Vec<Option<Peer>>, EngineError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if self.cluster {
            // One user's record per slot: ask each where it lives, all at once.
            return futures::future::try_join_all(ids.iter().map(|id| self.read_peer(id))).await;
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.u(id, "peer"))
                .arg("key")
                .arg("kv")
                .arg("reg")
                .arg("seen");
        }
        let mut conn = self.trip();
        let rows: Vec<PeerRow> = pipe.query_async(&mut conn).await.map_err(storage)?;
        ids.iter().zip(rows).map(|(id, row)| to_peer(id, row)).collect()
    }
}

#[async_trait::async_trait]
impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        if self.cluster {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    fn set_notifier(&self, notifier: Arc<Notifier>) {
        let _ = self.notifier.set(notifier);
    }

    fn stats(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "redis_round_trips": self.round_trips(), "cluster": self.cluster }))
    }

    async fn health(&self) -> Result<(), EngineError> {
        // Not counted as a round trip: the counter measures the message path.
        let mut conn = self.conn.clone();
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.map_err(storage)?;
        if pong != "PONG" {
            return Err(EngineError::Storage(format!("PING answered {pong:?}")));
        }
        Ok(())
    }

    async fn put_pending(&self, p: PendingHandshake, max: usize, now: UnixTime) -> Result<(), EngineError> {
        let ttl = mtproto_session::handshake::HANDSHAKE_TTL_SECS;
        let sn = hex(&p.server_nonce);
        let data = Zeroizing::new(serde_json::to_string(&p).map_err(storage)?);
        let mut conn = self.trip();
        let r: Result<i64, _> = self
            .scripts
            .put_pending
            .key(self.hs("idx"))
            .key(self.pending(&p.server_nonce.into()))
            .arg(p.created_at.as_secs())
            .arg(now.as_secs().saturating_sub(ttl))
            .arg(max)
            .arg(&sn)
            .arg(data.as_str())
            .arg(ttl * 2000)
            .arg(self.hs("h:"))
            .arg(p.stage.name())
            .invoke_async(&mut conn)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("TOO_MANY") => Err(EngineError::TooManyHandshakes { max }),
            Err(e) => Err(storage(e)),
        }
    }

    async fn get_pending(&self, server_nonce: Nonce128) -> Result<Option<PendingHandshake>, EngineError> {
        let mut conn = self.trip();
        let v: Option<String> = conn
            .hget(self.pending(&server_nonce), "rec")
            .await
            .map_err(storage)?;
        secret_json(v)
    }

    async fn advance_pending(&self, p: PendingHandshake) -> Result<bool, EngineError> {
        let data = Zeroizing::new(serde_json::to_string(&p).map_err(storage)?);
        let mut conn = self.trip();
        let done: i64 = self
            .scripts
            .advance_pending
            .key(self.pending(&p.server_nonce.into()))
            .arg(data.as_str())
            .arg(p.stage.name())
            .arg(Stage::AwaitingDhParams.name())
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        Ok(done == 1)
    }

    async fn take_pending(&self, server_nonce: Nonce128) -> Result<Option<PendingHandshake>, EngineError> {
        let sn = server_nonce.to_hex();
        let mut conn = self.trip();
        let v: Option<String> = self
            .scripts
            .take_pending
            .key(self.pending(&server_nonce))
            .key(self.hs("idx"))
            .arg(&sn)
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        secret_json(v)
    }

    /// Steps each in one slot, ordered so that a crash between them leaves nothing harmful:
    /// the directory entry first (a listed client without a peer record is skipped), then the
    /// key record (a key without a session is refused, and the client shakes hands again), then
    /// the user's script (owner, session, peer record) — the account exists only once that ran.
    /// The directory entry is added again after the script: an account purge of the name's
    /// previous holder may have taken it out in between (see `purge_account`).
    async fn create_account(
        &self,
        key: AuthKeyRecord,
        session: ServerSession,
        now: UnixTime,
    ) -> Result<(), EngineError> {
        let client = key.client_id.as_str().to_owned();
        let mut conn = self.trip();
        let _: i64 = conn.sadd(self.directory(), &client).await.map_err(storage)?;
        let mut conn = self.trip();
        let record = Zeroizing::new(serde_json::to_string(&key).map_err(storage)?);
        let _: () = conn
            .set(self.key_record(&key.key_id), record.as_str())
            .await
            .map_err(storage)?;
        let mut conn = self.trip();
        let created: Result<i64, _> = self
            .scripts
            .create_account
            .key(self.u(&client, "owner"))
            .key(self.sess(&client, &key.key_id))
            .key(self.u(&client, "peer"))
            .arg(key.key_id.to_hex())
            .arg(session.to_bytes())
            .arg(now.as_secs())
            .invoke_async(&mut conn)
            .await;
        match created.map_err(script_error) {
            Ok(_) => {
                let mut conn = self.trip();
                let _: i64 = conn.sadd(self.directory(), &client).await.map_err(storage)?;
                Ok(())
            }
            Err(e) => {
                // The key cannot be used without its account: take its record back.
                let mut conn = self.trip();
                let _: Result<i64, _> = conn.del(self.key_record(&key.key_id)).await;
                Err(e)
            }
        }
    }

    async fn owner(&self, client: &ClientId) -> Result<Option<AuthKeyRecord>, EngineError> {
        let mut conn = self.trip();
        let owner: Option<String> = conn
            .get(self.u(client.as_str(), "owner"))
            .await
            .map_err(storage)?;
        let Some(owner) = owner else {
            return Ok(None);
        };
        let mut conn = self.trip();
        let v: Option<String> = conn.get(self.key_record_hex(&owner)).await.map_err(storage)?;
        secret_json(v)
    }

    /// The key record first (a record without its owner pointer is never used), then the
    /// user's script (owner, sessions, peer) in one slot, then the old record goes.
    async fn take_over_account(
        &self,
        key: AuthKeyRecord,
        session: ServerSession,
        old_key_id: AuthKeyId,
        now: UnixTime,
    ) -> Result<(), EngineError> {
        let client = key.client_id.as_str().to_owned();
        let mut conn = self.trip();
        let record = Zeroizing::new(serde_json::to_string(&key).map_err(storage)?);
        let _: () = conn
            .set(self.key_record(&key.key_id), record.as_str())
            .await
            .map_err(storage)?;
        let mut conn = self.trip();
        let moved: Result<i64, _> = self
            .scripts
            .take_over_account
            .key(self.u(&client, "owner"))
            .key(self.sess(&client, &key.key_id))
            .key(self.u(&client, "peer"))
            .key(self.sess(&client, &old_key_id))
            .arg(key.key_id.to_hex())
            .arg(session.to_bytes())
            .arg(old_key_id.to_hex())
            .arg(now.as_secs())
            .invoke_async(&mut conn)
            .await;
        let mut conn = self.trip();
        match moved.map_err(script_error) {
            Ok(_) => {
                let _: Result<i64, _> = conn.del(self.key_record(&old_key_id)).await;
                Ok(())
            }
            Err(e) => {
                let _: Result<i64, _> = conn.del(self.key_record(&key.key_id)).await;
                Err(e)
            }
        }
    }

    async fn auth_key(&self, key_id: AuthKeyId) -> Result<Option<AuthKeyRecord>, EngineError> {
        let mut conn = self.trip();
        let v: Option<String> = conn.get(self.key_record(&key_id)).await.map_err(storage)?;
        secret_json(v)
    }

    async fn session(
        &self,
        key_id: AuthKeyId,
        client: &ClientId,
    ) -> Result<Option<SessionRecord>, EngineError> {
        let mut conn = self.trip();
        let (data, version): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.sess(client.as_str(), &key_id))
            .arg("data")
            .arg("version")
            .query_async(&mut conn)
            .await
            .map_err(storage)?;
        match (data, version) {
            (Some(d), Some(v)) => Ok(Some(SessionRecord {
                session: ServerSession::from_bytes(&d).map_err(storage)?,
                version: v,
            })),
            _ => Ok(None),
        }
    }

    /// A publish first lists the client in the directory's name index (idempotent; a listed
    /// client without a key is skipped when read), so that no crash leaves a published key
    /// unlisted.
    async fn commit(&self, c: Commit) -> Result<Outcome, EngineError> {
        if let Op::PublishKey { .. } = &c.op {
            let mut conn = self.trip();
            let _: i64 = conn
                .zadd(self.names(), c.client.as_str(), 0)
                .await
                .map_err(storage)?;
        }
        if let (true, Op::Send { .. }) = (self.cluster, &c.op) {
            return self.cluster_send(&c).await;
        }
        if let Op::TakePrekeyBundle { peer, one_time } = &c.op {
            return self.commit_bundle(&c, peer, *one_time).await;
        }
        to_outcome(&self.run_commit(&c, ScriptOp::Whole(&c.op), 0).await?)
    }

    async fn commit_and_fetch(
        &self,
        c: Commit,
        limit: usize,
    ) -> Result<(Outcome, Vec<MailboxEntry>), EngineError> {
        if !matches!(c.op, Op::Ack { .. }) {
            let client = c.client.clone();
            let now = c.now;
            let o = self.commit(c).await?;
            return Ok((o, self.fetch(&client, limit, now).await?));
        }
        let now = c.now;
        let (kind, removed, rest) = self.run_commit(&c, ScriptOp::Whole(&c.op), limit.max(1)).await?;
        let raw: Vec<String> = redis::from_redis_value(&rest).map_err(storage)?;
        let outcome = to_outcome(&(kind, removed, redis::Value::Nil))?;
        Ok((outcome, parse_entries(raw, now)?))
    }

    async fn outcome(
        &self,
        key_id: AuthKeyId,
        client: &ClientId,
        msg_id: u64,
    ) -> Result<Option<Outcome>, EngineError> {
        let mut conn = self.trip();
        let v: Option<String> = conn
            .get(self.out(client.as_str(), &key_id, msg_id))
            .await
            .map_err(storage)?;
        let Some(v) = v else { return Ok(None) };
        let Some(rest) = v.strip_prefix("sending|") else {
            return parse_outcome(&v).map(Some);
        };
        // Written only by earlier relays (their Cluster send committed the sender first, as
        // `sending`), and kept for an hour: a rolling upgrade may meet it. The sequence number is
        // in the recipient's marker, if the delivery got there.
        let (to, ts) = rest
            .rsplit_once('|')
            .ok_or_else(|| storage("bad sending outcome"))?;
        let mut conn = self.trip();
        let seq: Option<u64> = conn
            .get(self.marker(to, &key_id, msg_id))
            .await
            .map_err(storage)?;
        Ok(seq.map(|seq| Outcome::Sent {
            seq,
            timestamp_ms: ts.parse().unwrap_or(0),
        }))
    }

    async fn fetch(
        &self,
        client: &ClientId,
        limit: usize,
        now: UnixTime,
    ) -> Result<Vec<MailboxEntry>, EngineError> {
        let mut conn = self.trip();
        let raw: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.u(client.as_str(), "mbox"))
            .arg("-inf")
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(storage)?;
        parse_entries(raw, now)
    }

    /// Names from `P:names` (`ZRANGEBYLEX`, a batch at a time), then their records: one
    /// pipelined read on a single Redis, one read per user on Cluster.
    async fn peers_page(
        &self,
        prefix: &str,
        after: Option<&ClientId>,
        limit: usize,
    ) -> Result<Vec<Peer>, EngineError> {
        let mut page = Vec::new();
        if limit == 0 {
            return Ok(page);
        }
        // Names are ASCII, so every name that starts with `prefix` sorts before `prefix` + 0xff.
        let max: Vec<u8> = if prefix.is_empty() {
            b"+".to_vec()
        } else {
            [&b"["[..], prefix.as_bytes(), b"\xff"].concat()
        };
        let mut min: Vec<u8> = match after {
            Some(a) if a.as_str() >= prefix => [&b"("[..], a.as_str().as_bytes()].concat(),
            _ if prefix.is_empty() => b"-".to_vec(),
            _ => [&b"["[..], prefix.as_bytes()].concat(),
        };
        loop {
            let want = limit - page.len();
            let mut conn = self.trip();
            let names: Vec<String> = redis::cmd("ZRANGEBYLEX")
                .arg(self.names())
                .arg(&min)
                .arg(&max)
                .arg("LIMIT")
                .arg(0)
                .arg(want)
                .query_async(&mut conn)
                .await
                .map_err(storage)?;
            let last = names.last().cloned();
            let exhausted = names.len() < want;
            // Names whose account is gone, or whose key is not published yet (a publish in
            // progress, a purge that raced a new account), are skipped.
            page.extend(
                self.read_peers(&names)
                    .await?
                    .into_iter()
                    .flatten()
                    .filter(|p| p.identity_key.is_some()),
            );
            match last {
                Some(last) if !exhausted && page.len() < limit => {
                    min = [&b"("[..], last.as_bytes()].concat();
                }
                _ => return Ok(page),
            }
        }
    }

    /// Visits the directory a `SSCAN` page at a time (at most `PURGE_USERS_PER_CALL`, 5,000
    /// users, a call, the next call going on where this one stopped); see `purge_account`.
    async fn purge_accounts(
        &self,
        now: UnixTime,
        policy: AccountExpiry,
        max: usize,
    ) -> Result<Vec<AuthKeyId>, EngineError> {
        let mut removed = Vec::new();
        if max == 0 {
            return Ok(removed);
        }
        let mut cursor = self.account_sweep.lock().await;
        let mut accounts = 0;
        let mut visited = 0;
        loop {
            let mut conn = self.trip();
            let (next, users): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(self.directory())
                .arg(*cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(storage)?;
            for user in &users {
                if let Some(key) = self.purge_account(user, now, policy).await? {
                    accounts += 1;
                    removed.extend(key);
                    if accounts >= max {
                        // The cursor stays: the next call scans the rest of this page again.
                        return Ok(removed);
                    }
                }
            }
            visited += users.len();
            *cursor = next;
            if next == 0 || visited >= PURGE_USERS_PER_CALL {
                return Ok(removed);
            }
        }
    }

    async fn peer(&self, client: &ClientId) -> Result<Option<Peer>, EngineError> {
        self.read_peer(client.as_str()).await
    }

    /// Expired handshakes in one script; then the users, a directory page at a time (at most
    /// 5,000 (`PURGE_USERS_PER_CALL`) per call, the next call going on where this one stopped): each
    /// user's old outcomes and expired messages, whose senders get an `expired` notice first.
    async fn purge_expired(&self, now: UnixTime) -> Result<Vec<ClientId>, EngineError> {
        self.purge_expired_inner(now).await
    }
}
