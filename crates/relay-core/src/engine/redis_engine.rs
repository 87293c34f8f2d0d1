//! The Redis engine: several relay nodes share one user base through one Redis primary or a
//! Redis Cluster.
//!
//! Every operation that must be atomic is one Lua script (one round trip). Keys carry hash tags
//! so that **everything of one user shares one Cluster slot** — their peer record, mailbox,
//! expiry index, and the sessions, outcomes and delivery markers of their auth keys:
//!
//! ```text
//! P:{hs}:idx                    ZSET   pending handshakes by creation time (the bound)
//! P:{hs}:<server_nonce>         STRING pending handshake (JSON), PX 2·TTL
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
//! P:peers                       SET    the directory: every registered client
//! P:names                       ZSET   clients that published an identity key, score 0 (by name)
//! P:wake                        pub/sub channel: recipient ids, a hint for long-polls on any node
//! ```
//!
//! A commit touches only its client's slot, except a send, which also touches the recipient's.
//! On a single Redis a send is one script over both. On Cluster it is two: first the
//! recipient's script, which refuses without writing (unknown recipient, full mailbox) or
//! appends the entry with a marker keyed by the sender's key and msg_id — run twice, it appends
//! once and returns the first sequence number; then the sender's script (session
//! compare-and-swap, outcome `sent` with that number). A send interrupted between the two is
//! completed by its resend, which finds the marker. See `docs/deployment.md`.
//!
//! Quotas ([`crate::SendQuota`]) are checked inside the script that appends, against counters
//! kept in the recipient's slot (`bytes` in its peer hash, its `senders` hash) and updated by
//! every script that appends or removes an entry, so a refused send writes nothing and a check
//! costs no round trip. The directory is paged from `P:names` (`ZRANGEBYLEX`), which a publish
//! updates with its own command (on Cluster it lives in another slot than the user).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use mtproto_session::{ClientId, PendingHandshake, ServerSession, UnixTime};
use redis::{aio::ConnectionManager, AsyncCommands, Script};
use zeroize::Zeroizing;

use super::{Engine, NEVER_EXPIRES, OUTCOME_TTL_SECS, RELAY_SENDER};
use crate::{
    AccountExpiry, AuthKeyRecord, Commit, EngineError, MailboxEntry, Notifier, Op, Outcome, Peer, SendQuota,
    SessionRecord,
};

fn storage<E: std::fmt::Display>(e: E) -> EngineError {
    EngineError::Storage(e.to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Most users one purge visits (the next purge goes on from there).
const PURGE_USERS_PER_CALL: usize = 5_000;

/// KEYS: handshake index, handshake. ARGV: 1 created_at, 2 expiry cutoff, 3 max, 4 server
/// nonce (hex), 5 handshake, 6 TTL ms, 7 key prefix of handshakes (same slot).
const PUT_PENDING: &str = include_str!("redis/put_pending.lua");

/// KEYS: handshake. ARGV: the advanced handshake. Returns 1 if it was at the first stage.
const ADVANCE_PENDING: &str = include_str!("redis/advance_pending.lua");

/// KEYS: handshake, handshake index. ARGV: server nonce (hex).
const TAKE_PENDING: &str = include_str!("redis/take_pending.lua");

/// KEYS: handshake index. ARGV: cutoff, key prefix of handshakes (same slot).
const PURGE_HANDSHAKES: &str = include_str!("redis/purge_handshakes.lua");

/// One user's slot. KEYS: owner, session, peer. ARGV: key id (hex), session, now.
const CREATE_ACCOUNT: &str = include_str!("redis/create_account.lua");
const TAKE_OVER_ACCOUNT: &str = include_str!("redis/take_over_account.lua");

/// KEYS: 1 session, 2 outcome, 3 my peer, 4 my mailbox, 5 my outcome index, 6 target peer,
/// 7 target mailbox, 8 target expiry, 9 target senders (the client's own for every op but a
/// one-script send). ARGV: 1 version, 2 session, 3 op, 4 now_s, 5 keep outcome, 6 outcome TTL,
/// then per op — send: 7 to, 8 from, 9 payload, 10 ts_ms, 11 expires, 12-15 the quota
/// (mailbox entries, mailbox bytes, sender entries, sender bytes), 16 payload length,
/// 17 channel; ack: 7 seqs (comma-separated), 8 fetch limit; publish: 7 key hex; delivered
/// (Cluster, the sender's half of a send whose entry `DELIVER` stored): 7 seq, 8 ts_ms.
const COMMIT: &str = concat!(include_str!("redis/quota.lua"), include_str!("redis/commit.lua"));

/// Recipient's slot: appends once per marker. KEYS: 1 peer, 2 mailbox, 3 expiry, 4 marker,
/// 5 senders. ARGV: 1 from, 2 payload (base64), 3 ts_ms, 4 expires, 5 channel, 6 recipient,
/// 7 marker TTL, 8 kind (`message` or `expired`), 9 expired: to, 10 expired: message_seq,
/// 11-14 message: the quota (as `COMMIT`), 15 message: payload length. Only messages count
/// against the quota. Returns the entry's sequence number (the first one, when the marker
/// exists).
const DELIVER: &str = concat!(include_str!("redis/quota.lua"), include_str!("redis/deliver.lua"));

/// One user's slot. KEYS: expiry, mailbox, outcome index. ARGV: now, outcome cutoff.
/// Drops old outcomes and the expiry entries of messages already acknowledged; returns the
/// expired messages still waiting as `seq, sender` pairs (removed by `REMOVE_EXPIRED` once their
/// senders are told, so a crash in between tells twice at worst, never not at all).
const SCAN_EXPIRED: &str = include_str!("redis/scan_expired.lua");

/// One user's slot. KEYS: expiry, mailbox, peer, senders. ARGV: sequence numbers.
const REMOVE_EXPIRED: &str = concat!(
    include_str!("redis/quota.lua"),
    include_str!("redis/remove_expired.lua")
);

/// One user's slot: removes the account if it is unused (`purge_accounts`). KEYS: 1 peer,
/// 2 mailbox, 3 owner, 4 senders, 5 expiry, 6 outcome index, 7 tomb. ARGV: 1 now,
/// 2 unpublished_secs, 3 idle_secs, 4 the user's key prefix (its session and outcomes are
/// found from there, in the same slot). Returns `{status, removed key id, stale key id}`:
/// status 1 removed, 0 kept, 2 no account (a directory entry left behind); the stale key id
/// (hex, or empty) is a removal's tomb whose key record is still to be deleted.
const PURGE_ACCOUNT: &str = include_str!("redis/purge_account.lua");

/// A connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

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

struct Scripts {
    put_pending: Script,
    advance_pending: Script,
    take_pending: Script,
    purge_handshakes: Script,
    create_account: Script,
    take_over_account: Script,
    commit: Script,
    deliver: Script,
    scan_expired: Script,
    remove_expired: Script,
    purge_account: Script,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// Listens for wake-ups on `channel`, reconnecting (to the next of `urls`) whenever the
/// subscription ends. A classic `PUBLISH` reaches every node of a cluster, so one node is enough.
async fn subscribe(urls: Vec<String>, channel: String, notifier: Arc<OnceLock<Arc<Notifier>>>) {
    let mut attempt = 0usize;
    loop {
        let url = urls.get(attempt % urls.len().max(1)).cloned().unwrap_or_default();
        attempt += 1;
        let subscribed = async {
            let mut pubsub = redis::Client::open(url.as_str())?.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(mut pubsub) => {
                let mut stream = pubsub.on_message();
                while let Some(msg) = stream.next().await {
                    if let (Ok(client), Some(notifier)) = (msg.get_payload::<String>(), notifier.get()) {
                        // A hint only: the mailbox in Redis stays the truth.
                        notifier.notify(&client);
                    }
                }
                tracing::warn!(%url, "redis wake-up subscription ended; reconnecting");
            }
            Err(e) => tracing::warn!(%url, error = %e, "redis wake-up subscription failed; retrying"),
        }
        // Until it is back, long-polls fall back to their timeout.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// How long to wait for a connection to Redis before the request is refused (503).
const REDIS_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long to wait for Redis to answer a command or script before the request is refused.
const REDIS_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl RedisEngine {
    /// Connects to one Redis at `url` (e.g. `redis://127.0.0.1:6379/0`); `prefix` namespaces
    /// the keys. Subscribes to the wake-up channel so long-polls on this node wake for sends on
    /// any node.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when Redis cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, EngineError> {
        let client = redis::Client::open(url).map_err(storage)?;
        // The crate's defaults wait minutes between reconnection attempts, and forever for an
        // answer: while Redis is away, requests would hang instead of being refused.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_max_delay(1000)
            .set_connection_timeout(REDIS_CONNECT_TIMEOUT)
            .set_response_timeout(REDIS_RESPONSE_TIMEOUT);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(storage)?;
        let engine = Self::build(Conn::Single(conn), false, vec![url.to_owned()], prefix);
        engine.upgrade_layout().await?;
        Ok(engine)
    }

    /// Connects to a Redis Cluster through any of its `nodes` (e.g. `redis://10.0.0.5:7000`);
    /// the client learns the rest of the cluster and follows slot moves and failovers.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when no node can be reached.
    pub async fn connect_cluster(nodes: &[String], prefix: &str) -> Result<Self, EngineError> {
        // Slot moves and failovers are retried (the crate's defaults, about 4 s to ride out a
        // promotion); a node that does not answer at all is given up on after the timeouts.
        let client = redis::cluster::ClusterClient::builder(nodes.to_vec())
            .connection_timeout(REDIS_CONNECT_TIMEOUT)
            .response_timeout(REDIS_RESPONSE_TIMEOUT)
            .build()
            .map_err(storage)?;
        let conn = client.get_async_connection().await.map_err(storage)?;
        let engine = Self::build(Conn::Cluster(conn), true, nodes.to_vec(), prefix);
        engine.upgrade_layout().await?;
        Ok(engine)
    }

    fn build(conn: Conn, cluster: bool, urls: Vec<String>, prefix: &str) -> Self {
        let notifier: Arc<OnceLock<Arc<Notifier>>> = Arc::new(OnceLock::new());
        let subscriber = tokio::spawn(subscribe(urls, format!("{prefix}:wake"), notifier.clone()));
        Self {
            conn,
            cluster,
            prefix: prefix.to_owned(),
            notifier,
            trips: Arc::new(AtomicU64::new(0)),
            scripts: Scripts {
                put_pending: Script::new(PUT_PENDING),
                advance_pending: Script::new(ADVANCE_PENDING),
                take_pending: Script::new(TAKE_PENDING),
                purge_handshakes: Script::new(PURGE_HANDSHAKES),
                create_account: Script::new(CREATE_ACCOUNT),
                take_over_account: Script::new(TAKE_OVER_ACCOUNT),
                commit: Script::new(COMMIT),
                deliver: Script::new(DELIVER),
                scan_expired: Script::new(SCAN_EXPIRED),
                remove_expired: Script::new(REMOVE_EXPIRED),
                purge_account: Script::new(PURGE_ACCOUNT),
            },
            subscriber,
            sweep: tokio::sync::Mutex::new(0),
            account_sweep: tokio::sync::Mutex::new(0),
        }
    }

    fn trip(&self) -> Conn {
        self.trips.fetch_add(1, Ordering::Relaxed);
        self.conn.clone()
    }

    fn hs(&self, rest: &str) -> String {
        format!("{}:{{hs}}:{rest}", self.prefix)
    }

    fn key_record(&self, key_id: &[u8; 8]) -> String {
        format!("{}:{{k:{}}}:key", self.prefix, hex(key_id))
    }

    fn u(&self, client: &str, rest: &str) -> String {
        format!("{}:{{u:{client}}}:{rest}", self.prefix)
    }

    fn sess(&self, client: &str, key_id: &[u8; 8]) -> String {
        self.u(client, &format!("sess:{}", hex(key_id)))
    }

    fn out(&self, client: &str, key_id: &[u8; 8], msg_id: u64) -> String {
        self.u(client, &format!("out:{}:{msg_id}", hex(key_id)))
    }

    fn marker(&self, to: &str, key_id: &[u8; 8], msg_id: u64) -> String {
        self.u(to, &format!("dup:{}:{msg_id}", hex(key_id)))
    }

    fn key_record_hex(&self, key_id_hex: &str) -> String {
        format!("{}:{{k:{key_id_hex}}}:key", self.prefix)
    }

    fn directory(&self) -> String {
        format!("{}:peers", self.prefix)
    }

    /// The directory's index of clients that published an identity key.
    fn names(&self) -> String {
        format!("{}:names", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:wake", self.prefix)
    }

    /// Round trips to Redis made by this engine so far.
    pub fn round_trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Whether this engine talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }
}

/// The key layout this code writes, kept in `PREFIX:layout`.
const LAYOUT: &str = "3";

/// Copies a version-1 session (JSON under the key's tag) to its version-2 place (binary, under
/// the user's tag) unless a session is there already. KEYS: new session. ARGV: data, version.
const MOVE_SESSION: &str = include_str!("redis/move_session.lua");

impl RedisEngine {
    /// Brings data written by earlier releases to this layout, once. Every step is idempotent
    /// and never overwrites newer data, so nodes starting together may all run it.
    ///
    /// - Layout 1 (the first release) to 2: see [`RedisEngine::upgrade_from_1`].
    /// - Layout 2 to 3: the directory's name index `P:names` is built from the directory set
    ///   and the peer records. The quota counters need no upgrade: missing counters read as 0,
    ///   so a mailbox holding mail from before is undercounted until it empties once.
    ///
    /// A node of an older release refuses to start on a newer layout. One still running during
    /// a rolling upgrade keeps no quota counters (they heal when a mailbox empties) and does not
    /// list a publish in `P:names` (the client is listed at its next publish).
    async fn upgrade_layout(&self) -> Result<(), EngineError> {
        let layout_key = format!("{}:layout", self.prefix);
        let mut conn = self.trip();
        let layout: Option<String> = conn.get(&layout_key).await.map_err(storage)?;
        match layout.as_deref() {
            Some(LAYOUT) => return Ok(()),
            None => self.upgrade_from_1().await?,
            Some("2") => {}
            Some(other) => {
                return Err(storage(format!(
                    "Redis holds key layout {other} under prefix {}; this relay writes layout {LAYOUT}",
                    self.prefix
                )))
            }
        }
        let listed = self.index_names().await?;
        let mut conn = self.trip();
        let _: () = conn.set(&layout_key, LAYOUT).await.map_err(storage)?;
        if listed > 0 {
            tracing::info!(listed, "Redis data upgraded to key layout {LAYOUT}");
        }
        Ok(())
    }

    /// Lists every client that published an identity key in `P:names`; returns how many.
    async fn index_names(&self) -> Result<usize, EngineError> {
        let mut listed = 0;
        let mut cursor = 0u64;
        loop {
            let mut conn = self.trip();
            let (next, users): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(self.directory())
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(storage)?;
            for peer in self.read_peers(&users).await?.into_iter().flatten() {
                if peer.identity_key.is_some() {
                    let mut conn = self.trip();
                    let _: i64 = conn
                        .zadd(self.names(), peer.client_id.as_str(), 0)
                        .await
                        .map_err(storage)?;
                    listed += 1;
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(listed);
            }
        }
    }

    /// Layout 1 to 2: sessions move from `{k:<key_id>}:sess` (JSON) to
    /// `{u:<client>}:sess:<key_id>` (binary) and the global `expiry` index is split per user.
    /// Mailboxes, peers, owners and key records keep their keys; outcomes of layout 1 are left
    /// to expire (a resend without one is refused, never run twice).
    async fn upgrade_from_1(&self) -> Result<(), EngineError> {
        let mut conn = self.trip();
        let users: Vec<String> = conn.smembers(self.directory()).await.map_err(storage)?;
        let mover = Script::new(MOVE_SESSION);
        for user in &users {
            let mut conn = self.trip();
            let owner: Option<String> = conn.get(self.u(user, "owner")).await.map_err(storage)?;
            let Some(kid_hex) = owner else { continue };
            let old = format!("{}:{{k:{kid_hex}}}:sess", self.prefix);
            let mut conn = self.trip();
            let (data, version): (Option<String>, Option<u64>) = redis::cmd("HMGET")
                .arg(&old)
                .arg("data")
                .arg("version")
                .query_async(&mut conn)
                .await
                .map_err(storage)?;
            let (Some(data), Some(version)) = (data, version) else {
                continue;
            };
            let session: ServerSession = serde_json::from_str(&data).map_err(storage)?;
            let new = self.u(user, &format!("sess:{kid_hex}"));
            let mut conn = self.trip();
            let _: i64 = mover
                .key(&new)
                .arg(session.to_bytes())
                .arg(version)
                .invoke_async(&mut conn)
                .await
                .map_err(storage)?;
            let mut conn = self.trip();
            let _: i64 = conn.del(&old).await.map_err(storage)?;
        }
        let old_expiry = format!("{}:expiry", self.prefix);
        let mut conn = self.trip();
        let due: Vec<(String, u64)> = conn
            .zrange_withscores(&old_expiry, 0, -1)
            .await
            .map_err(storage)?;
        for (member, expires) in due {
            let mut parts = member.splitn(3, '|');
            if let (Some(to), Some(seq)) = (parts.next(), parts.next()) {
                let mut conn = self.trip();
                let _: i64 = conn
                    .zadd(self.u(to, "expiry"), seq, expires)
                    .await
                    .map_err(storage)?;
            }
        }
        let mut conn = self.trip();
        let _: i64 = conn.del(&old_expiry).await.map_err(storage)?;
        if !users.is_empty() {
            tracing::info!(users = users.len(), "Redis data upgraded from key layout 1");
        }
        Ok(())
    }
}

/// Parses a stored record that holds secrets, wiping the JSON text afterwards.
fn secret_json<T: serde::de::DeserializeOwned>(v: Option<String>) -> Result<Option<T>, EngineError> {
    v.map(|s| {
        let s = Zeroizing::new(s);
        serde_json::from_str(&s).map_err(storage)
    })
    .transpose()
}

fn script_error(e: redis::RedisError) -> EngineError {
    let text = e.to_string();
    if text.contains("CONFLICT") {
        EngineError::Conflict
    } else if text.contains("UNKNOWN_PEER") {
        EngineError::UnknownPeer
    } else if text.contains("TAKEN") {
        EngineError::ClientIdTaken
    } else {
        storage(text)
    }
}

/// Like [`script_error`], and a refusal by the quota becomes [`EngineError::MailboxFull`]
/// (`cap`: the quota's mailbox entries) or [`EngineError::SenderQuota`].
fn send_error(e: redis::RedisError, cap: usize) -> EngineError {
    match script_error(e) {
        EngineError::Storage(s) if s.contains("MAILBOX_FULL") => EngineError::MailboxFull { cap },
        EngineError::Storage(s) if s.contains("SENDER_QUOTA") => EngineError::SenderQuota,
        EngineError::Storage(s) if s.contains("PEER_KEY_CHANGED") => {
            let current = s
                .split("PEER_KEY_CHANGED:")
                .nth(1)
                .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
                .and_then(|digits| digits.parse().ok());
            match current {
                Some(current) => EngineError::PeerKeyChanged { current },
                None => EngineError::Storage(s),
            }
        }
        other => other,
    }
}

/// The quota as script arguments: mailbox entries, mailbox bytes, sender entries, sender bytes.
fn quota_args(q: &SendQuota) -> [String; 4] {
    [
        q.mailbox_entries.to_string(),
        q.mailbox_bytes.to_string(),
        q.sender_entries.to_string(),
        q.sender_bytes.to_string(),
    ]
}

fn parse_outcome(s: &str) -> Result<Outcome, EngineError> {
    let mut it = s.split('|');
    let (kind, a, b) = (
        it.next().unwrap_or(""),
        it.next().unwrap_or("0"),
        it.next().unwrap_or("0"),
    );
    let n = |x: &str| x.parse::<u64>().map_err(storage);
    Ok(match kind {
        "sent" => Outcome::Sent {
            seq: n(a)?,
            timestamp_ms: n(b)?,
        },
        "acked" => Outcome::Acked {
            removed: usize::try_from(n(a)?).unwrap_or(0),
        },
        "published" => Outcome::KeyPublished {
            changed: a == "1",
            key_version: u32::try_from(n(b)?).unwrap_or(0),
        },
        "done" => Outcome::Done,
        other => return Err(storage(format!("unknown outcome {other}"))),
    })
}

fn parse_entries(raw: Vec<String>, now: UnixTime) -> Result<Vec<MailboxEntry>, EngineError> {
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let e: MailboxEntry = serde_json::from_str(&r).map_err(storage)?;
        if e.expires_at > now.as_secs() {
            out.push(e);
        }
    }
    Ok(out)
}

type CommitReply = (String, u64, redis::Value);

/// What `DELIVER` appends.
enum Delivery<'a> {
    /// A message, within the quota, if the recipient's key is still the version given.
    Message(&'a SendQuota, Option<u32>),
    /// A relay notice: a message to `to` expired.
    Expired {
        /// The recipient of the message.
        to: &'a str,
        /// Its sequence number there.
        message_seq: &'a str,
    },
}

/// What the commit script is asked to do.
enum ScriptOp<'a> {
    /// The op itself (a send only on a single Redis, where one script spans both users).
    Whole(&'a Op),
    /// Cluster send, second step: the sender's side of a send `DELIVER` stored as `seq`.
    Delivered { seq: u64 },
}

impl RedisEngine {
    async fn run_commit(
        &self,
        c: &Commit,
        op: ScriptOp<'_>,
        fetch_limit: usize,
    ) -> Result<CommitReply, EngineError> {
        let me = c.client.as_str();
        let ts = (c.now.as_nanos() / 1_000_000).to_string();
        let (target, name, args): (&str, &str, Vec<String>) = match op {
            ScriptOp::Whole(Op::Touch) => (me, "touch", vec![]),
            ScriptOp::Whole(Op::Send {
                to,
                payload,
                quota,
                ttl_secs,
                key_version,
            }) => {
                let mut args = vec![
                    to.as_str().into(),
                    me.into(),
                    mtproto_session::wire::b64(payload),
                    ts,
                    (c.now.as_secs() + ttl_secs).to_string(),
                ];
                args.extend(quota_args(quota));
                args.push(payload.len().to_string());
                args.push(self.channel());
                args.push(key_version.map(|v| v.to_string()).unwrap_or_default());
                (to.as_str(), "send", args)
            }
            ScriptOp::Delivered { seq } => (me, "delivered", vec![seq.to_string(), ts]),
            ScriptOp::Whole(Op::Ack { seqs }) => (
                me,
                "ack",
                vec![
                    seqs.iter()
                        .map(|a| match a.ts {
                            Some(ts) => format!("{}:{ts}", a.seq),
                            None => a.seq.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    fetch_limit.to_string(),
                ],
            ),
            ScriptOp::Whole(Op::PublishKey { key }) => (me, "publish", vec![hex(key)]),
        };
        let mut inv = self.scripts.commit.prepare_invoke();
        inv.key(self.sess(me, &c.key_id))
            .key(self.out(me, &c.key_id, c.msg_id))
            .key(self.u(me, "peer"))
            .key(self.u(me, "mbox"))
            .key(self.u(me, "outidx"))
            .key(self.u(target, "peer"))
            .key(self.u(target, "mbox"))
            .key(self.u(target, "expiry"))
            .key(self.u(target, "senders"))
            .arg(c.expected_version.to_string())
            .arg(c.session.to_bytes())
            .arg(name)
            .arg(c.now.as_secs().to_string())
            .arg(if c.keep_outcome { "1" } else { "0" })
            .arg(OUTCOME_TTL_SECS.to_string());
        for a in &args {
            inv.arg(a);
        }
        let mut conn = self.trip();
        let cap = match op {
            ScriptOp::Whole(Op::Send { quota, .. }) => quota.mailbox_entries,
            _ => 0,
        };
        let reply: redis::Value = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| send_error(e, cap))?;
        let redis::Value::Array(items) = reply else {
            return Err(storage("unexpected commit reply"));
        };
        let mut it = items.into_iter();
        let kind: String =
            redis::from_redis_value(&it.next().unwrap_or(redis::Value::Nil)).map_err(storage)?;
        let a: u64 = redis::from_redis_value(&it.next().unwrap_or(redis::Value::Nil)).unwrap_or(0);
        let rest = it.next().unwrap_or(redis::Value::Nil);
        Ok((kind, a, rest))
    }

    /// Appends to `to`'s mailbox once per `marker`; returns the entry's sequence number.
    #[allow(clippy::too_many_arguments)] // the entry's fields
    async fn deliver(
        &self,
        to: &str,
        marker: &str,
        from: &str,
        payload: &[u8],
        now: UnixTime,
        expires: u64,
        kind: Delivery<'_>,
    ) -> Result<u64, EngineError> {
        let mut conn = self.trip();
        let (name, notice_to, message_seq, quota, key_version) = match kind {
            Delivery::Message(q, v) => ("message", "", "", *q, v.map(|v| v.to_string())),
            // Notices count against nothing.
            Delivery::Expired { to, message_seq } => ("expired", to, message_seq, SendQuota::UNLIMITED, None),
        };
        self.scripts
            .deliver
            .key(self.u(to, "peer"))
            .key(self.u(to, "mbox"))
            .key(self.u(to, "expiry"))
            .key(marker)
            .key(self.u(to, "senders"))
            .arg(from)
            .arg(mtproto_session::wire::b64(payload))
            .arg(now.as_nanos() / 1_000_000)
            .arg(expires)
            .arg(self.channel())
            .arg(to)
            .arg(OUTCOME_TTL_SECS)
            .arg(name)
            .arg(notice_to)
            .arg(message_seq)
            .arg(&quota_args(&quota)[..])
            .arg(payload.len())
            .arg(key_version.unwrap_or_default())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| send_error(e, quota.mailbox_entries))
    }

    /// A send on Redis Cluster (see the module docs): delivery (or refusal), then the sender's
    /// commit. If that commit loses its compare-and-swap, the relay re-reads the session and
    /// runs this again: the delivery then finds its marker and appends nothing.
    async fn cluster_send(&self, c: &Commit) -> Result<Outcome, EngineError> {
        let Op::Send {
            to,
            payload,
            quota,
            ttl_secs,
            key_version,
        } = &c.op
        else {
            return Err(storage("cluster_send without a send"));
        };
        let to = to.as_str();
        let marker = self.marker(to, &c.key_id, c.msg_id);
        let seq = self
            .deliver(
                to,
                &marker,
                c.client.as_str(),
                payload,
                c.now,
                c.now.as_secs() + ttl_secs,
                Delivery::Message(quota, *key_version),
            )
            .await?;
        to_outcome(&self.run_commit(c, ScriptOp::Delivered { seq }, 0).await?)
    }

    /// Expired messages of one user: their senders are told, then they are removed.
    async fn purge_user(
        &self,
        user: &str,
        now: UnixTime,
        told: &mut Vec<ClientId>,
    ) -> Result<(), EngineError> {
        let mut conn = self.trip();
        let due: Vec<String> = self
            .scripts
            .scan_expired
            .key(self.u(user, "expiry"))
            .key(self.u(user, "mbox"))
            .key(self.u(user, "outidx"))
            .arg(now.as_secs())
            .arg(now.as_secs().saturating_sub(OUTCOME_TTL_SECS))
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        if due.is_empty() {
            return Ok(());
        }
        let mut seqs = Vec::new();
        for pair in due.chunks_exact(2) {
            let [seq, sender] = pair else { continue };
            seqs.push(seq.clone());
            let Ok(sender) = ClientId::new(sender) else {
                continue;
            };
            let marker = self.u(sender.as_str(), &format!("dup:exp:{user}:{seq}"));
            match self
                .deliver(
                    sender.as_str(),
                    &marker,
                    RELAY_SENDER,
                    &[],
                    now,
                    NEVER_EXPIRES,
                    Delivery::Expired {
                        to: user,
                        message_seq: seq,
                    },
                )
                .await
            {
                Ok(_) => told.push(sender),
                // A sender that is no longer registered has no mailbox to tell.
                Err(EngineError::UnknownPeer) => {}
                Err(e) => return Err(e),
            }
        }
        let mut conn = self.trip();
        let _: i64 = self
            .scripts
            .remove_expired
            .key(self.u(user, "expiry"))
            .key(self.u(user, "mbox"))
            .key(self.u(user, "peer"))
            .key(self.u(user, "senders"))
            .arg(seqs)
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn read_peer(&self, id: &str) -> Result<Option<Peer>, EngineError> {
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
}

fn to_outcome((kind, a, rest): &CommitReply) -> Result<Outcome, EngineError> {
    let b: u64 = redis::from_redis_value::<String>(rest)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| redis::from_redis_value::<u64>(rest).unwrap_or(0));
    Ok(match kind.as_str() {
        "sent" => Outcome::Sent {
            seq: *a,
            timestamp_ms: b,
        },
        "acked" => Outcome::Acked {
            removed: usize::try_from(*a).unwrap_or(0),
        },
        "published" => Outcome::KeyPublished {
            changed: *a == 1,
            key_version: u32::try_from(b).unwrap_or(0),
        },
        "done" => Outcome::Done,
        other => return Err(storage(format!("unknown commit reply {other}"))),
    })
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
            .key(self.hs(&sn))
            .arg(p.created_at.as_secs())
            .arg(now.as_secs().saturating_sub(ttl))
            .arg(max)
            .arg(&sn)
            .arg(data.as_str())
            .arg(ttl * 2000)
            .arg(self.hs(""))
            .invoke_async(&mut conn)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("TOO_MANY") => Err(EngineError::TooManyHandshakes { max }),
            Err(e) => Err(storage(e)),
        }
    }

    async fn get_pending(&self, server_nonce: [u8; 16]) -> Result<Option<PendingHandshake>, EngineError> {
        let mut conn = self.trip();
        let v: Option<String> = conn.get(self.hs(&hex(&server_nonce))).await.map_err(storage)?;
        secret_json(v)
    }

    async fn advance_pending(&self, p: PendingHandshake) -> Result<bool, EngineError> {
        let data = Zeroizing::new(serde_json::to_string(&p).map_err(storage)?);
        let mut conn = self.trip();
        let done: i64 = self
            .scripts
            .advance_pending
            .key(self.hs(&hex(&p.server_nonce)))
            .arg(data.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        Ok(done == 1)
    }

    async fn take_pending(&self, server_nonce: [u8; 16]) -> Result<Option<PendingHandshake>, EngineError> {
        let sn = hex(&server_nonce);
        let mut conn = self.trip();
        let v: Option<String> = self
            .scripts
            .take_pending
            .key(self.hs(&sn))
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
            .arg(hex(&key.key_id))
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
        old_key_id: [u8; 8],
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
            .arg(hex(&key.key_id))
            .arg(session.to_bytes())
            .arg(hex(&old_key_id))
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

    async fn auth_key(&self, key_id: [u8; 8]) -> Result<Option<AuthKeyRecord>, EngineError> {
        let mut conn = self.trip();
        let v: Option<String> = conn.get(self.key_record(&key_id)).await.map_err(storage)?;
        secret_json(v)
    }

    async fn session(
        &self,
        key_id: [u8; 8],
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
        key_id: [u8; 8],
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
    ) -> Result<Vec<[u8; 8]>, EngineError> {
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

impl RedisEngine {
    /// The records of `ids`, in order (`None` for a client without one).
    async fn read_peers(&self, ids: &[String]) -> Result<Vec<Option<Peer>>, EngineError> {
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

    /// Removes one user's account if `policy` says it is unused and its mailbox is empty; the
    /// `Some` of its key id (if it had one) when it did. The user's keys go atomically in one
    /// script in their slot (a commit racing it finds no session: a conflict, then no session,
    /// so the relay answers "unknown auth key"); then, each idempotently, the key record (the
    /// script left its id in a tomb, so a crash here is finished by the next purge), the
    /// directory entries, and the tomb. A new account of the same name created meanwhile is
    /// listed again (`create_account` lists its client after its script, too).
    async fn purge_account(
        &self,
        user: &str,
        now: UnixTime,
        policy: AccountExpiry,
    ) -> Result<Option<Option<[u8; 8]>>, EngineError> {
        let mut conn = self.trip();
        let (status, key, stale): (i64, String, String) = self
            .scripts
            .purge_account
            .key(self.u(user, "peer"))
            .key(self.u(user, "mbox"))
            .key(self.u(user, "owner"))
            .key(self.u(user, "senders"))
            .key(self.u(user, "expiry"))
            .key(self.u(user, "outidx"))
            .key(self.u(user, "gone"))
            .arg(now.as_secs())
            .arg(policy.unpublished_secs)
            .arg(policy.idle_secs)
            .arg(self.u(user, ""))
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        for kid in [&stale, &key] {
            if !kid.is_empty() {
                let mut conn = self.trip();
                let _: i64 = conn.del(self.key_record_hex(kid)).await.map_err(storage)?;
            }
        }
        if status != 0 {
            // Removed, or a directory entry without an account (a registration that crashed
            // before its script, or a removal that crashed after it).
            let mut conn = self.trip();
            let _: i64 = conn.srem(self.directory(), user).await.map_err(storage)?;
            let mut conn = self.trip();
            let _: i64 = conn.zrem(self.names(), user).await.map_err(storage)?;
            let mut conn = self.trip();
            let again: bool = conn.exists(self.u(user, "peer")).await.map_err(storage)?;
            if again {
                let mut conn = self.trip();
                let _: i64 = conn.sadd(self.directory(), user).await.map_err(storage)?;
                let mut conn = self.trip();
                let _: i64 = conn.zadd(self.names(), user, 0).await.map_err(storage)?;
            }
        }
        if status == 1 || !stale.is_empty() {
            let mut conn = self.trip();
            let _: i64 = conn.del(self.u(user, "gone")).await.map_err(storage)?;
        }
        if status != 1 {
            return Ok(None);
        }
        let key_id = (key.len() == 16)
            .then(|| {
                let bytes: Vec<u8> = (0..8)
                    .filter_map(|i| {
                        key.get(2 * i..2 * i + 2)
                            .and_then(|d| u8::from_str_radix(d, 16).ok())
                    })
                    .collect();
                <[u8; 8]>::try_from(bytes.as_slice()).ok()
            })
            .flatten();
        Ok(Some(key_id))
    }

    async fn purge_expired_inner(&self, now: UnixTime) -> Result<Vec<ClientId>, EngineError> {
        let mut conn = self.trip();
        let _: i64 = self
            .scripts
            .purge_handshakes
            .key(self.hs("idx"))
            .arg(
                now.as_secs()
                    .saturating_sub(mtproto_session::handshake::HANDSHAKE_TTL_SECS),
            )
            .arg(self.hs(""))
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        let mut cursor = self.sweep.lock().await;
        let mut told = Vec::new();
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
                self.purge_user(user, now, &mut told).await?;
            }
            visited += users.len();
            *cursor = next;
            if next == 0 || visited >= PURGE_USERS_PER_CALL {
                break;
            }
        }
        Ok(told)
    }
}

type PeerRow = (Option<String>, Option<u32>, Option<u64>, Option<u64>);

fn to_peer(id: &str, row: PeerRow) -> Result<Option<Peer>, EngineError> {
    let (key, kv, reg, seen) = row;
    let (Some(kv), Some(reg), Some(seen)) = (kv, reg, seen) else {
        return Ok(None);
    };
    let identity_key = match key.as_deref() {
        None | Some("") => None,
        Some(h) => {
            let bytes: Vec<u8> = (0..h.len() / 2)
                .filter_map(|i| {
                    h.get(2 * i..2 * i + 2)
                        .and_then(|d| u8::from_str_radix(d, 16).ok())
                })
                .collect();
            Some(<[u8; 32]>::try_from(bytes.as_slice()).map_err(storage)?)
        }
    };
    Ok(Some(Peer {
        client_id: ClientId::new(id).map_err(storage)?,
        identity_key,
        key_version: kv,
        registered_at: reg,
        last_seen: seen,
    }))
}
