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
//! P:{u:<client>}:peer           HASH   key, kv, reg, seen, next
//! P:{u:<client>}:mbox           ZSET   mailbox entries (JSON) scored by sequence number
//! P:{u:<client>}:expiry         ZSET   sequence numbers of the mailbox's messages by expiry time
//! P:{u:<client>}:sess:<key_id>  HASH   data (`ServerSession::to_bytes`), version
//! P:{u:<client>}:out:<key_id>:<msg_id>  STRING outcome of a committed request, EX 3600
//! P:{u:<client>}:outidx         ZSET   those outcome keys by creation time (relay clock)
//! P:{u:<to>}:dup:<key_id>:<msg_id>      STRING sequence number a send got (Cluster), EX 3600
//! P:peers                       SET    the directory
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use mtproto_session::{ClientId, PendingHandshake, ServerSession, UnixTime};
use redis::{aio::ConnectionManager, AsyncCommands, Script};
use zeroize::Zeroizing;

use super::{Engine, OUTCOME_TTL_SECS, RELAY_SENDER};
use crate::{AuthKeyRecord, Commit, EngineError, MailboxEntry, Notifier, Op, Outcome, Peer, SessionRecord};

fn storage<E: std::fmt::Display>(e: E) -> EngineError {
    EngineError::Storage(e.to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Expiry of notices from the relay: never (they are removed by their ack).
const NEVER: u64 = 4_611_686_018_427_387_903;
/// Most users one purge visits (the next purge goes on from there).
const PURGE_USERS_PER_CALL: usize = 5_000;

const PUT_PENDING: &str = r"
for _, sn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])) do redis.call('DEL', ARGV[7] .. sn) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return redis.error_reply('TOO_MANY') end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
return 1";

const ADVANCE_PENDING: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v or not string.find(v, '"stage":"AwaitingDhParams"', 1, true) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return 1"#;

const TAKE_PENDING: &str = r"
local v = redis.call('GET', KEYS[1])
if v then redis.call('DEL', KEYS[1]); redis.call('ZREM', KEYS[2], ARGV[1]) end
return v";

/// KEYS: handshake index. ARGV: cutoff, key prefix of handshakes (same slot).
const PURGE_HANDSHAKES: &str = r"
for _, sn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do redis.call('DEL', ARGV[2] .. sn) end
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])";

/// One user's slot. KEYS: owner, session, peer. ARGV: key id (hex), session, now.
const CREATE_ACCOUNT: &str = r"
local o = redis.call('GET', KEYS[1])
if o and o ~= ARGV[1] then return redis.error_reply('TAKEN') end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'data', ARGV[2], 'version', 0)
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HSET', KEYS[3], 'key', '', 'kv', 0, 'reg', ARGV[3], 'seen', ARGV[3], 'next', 0)
end
return 1";

/// KEYS: 1 session, 2 outcome, 3 my peer, 4 my mailbox, 5 my outcome index, 6 target peer,
/// 7 target mailbox, 8 target expiry (the client's own for every op but a one-script send).
/// ARGV: 1 version, 2 session, 3 op, 4 now_s, 5 keep outcome, 6 outcome TTL, then per op —
/// send: 7 to, 8 from, 9 payload, 10 ts_ms, 11 expires, 12 cap, 13 channel; ack: 7 seqs
/// (comma-separated), 8 fetch limit; publish: 7 key hex; delivered (Cluster, the sender's half
/// of a send whose entry `DELIVER` stored): 7 seq, 8 ts_ms.
const COMMIT: &str = r#"
local v = redis.call('HGET', KEYS[1], 'version')
if not v or v ~= ARGV[1] then return redis.error_reply('CONFLICT') end
local op = ARGV[3]
local result
local stored
if op == 'send' then
  if redis.call('EXISTS', KEYS[6]) == 0 then return redis.error_reply('UNKNOWN_PEER') end
  if redis.call('ZCARD', KEYS[7]) >= tonumber(ARGV[12]) then return redis.error_reply('MAILBOX_FULL') end
  local seq = redis.call('HINCRBY', KEYS[6], 'next', 1)
  local entry = '{"seq":' .. seq .. ',"from":' .. cjson.encode(ARGV[8]) .. ',"kind":"message","payload":"' .. ARGV[9] ..
    '","timestamp_ms":' .. ARGV[10] .. ',"expires_at":' .. ARGV[11] .. '}'
  redis.call('ZADD', KEYS[7], seq, entry)
  redis.call('ZADD', KEYS[8], ARGV[11], seq)
  redis.call('PUBLISH', ARGV[13], ARGV[7])
  result = {'sent', seq, ARGV[10]}
  stored = 'sent|' .. seq .. '|' .. ARGV[10]
elseif op == 'delivered' then
  result = {'sent', tonumber(ARGV[7]), ARGV[8]}
  stored = 'sent|' .. ARGV[7] .. '|' .. ARGV[8]
elseif op == 'ack' then
  local removed = 0
  for s in string.gmatch(ARGV[7], '%d+') do
    removed = removed + redis.call('ZREMRANGEBYSCORE', KEYS[4], s, s)
    redis.call('ZREM', KEYS[8], s)
  end
  local limit = tonumber(ARGV[8])
  local entries = {}
  if limit > 0 then entries = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '+inf', 'LIMIT', 0, limit) end
  result = {'acked', removed, entries}
  stored = 'acked|' .. removed .. '|0'
elseif op == 'publish' then
  local cur = redis.call('HGET', KEYS[3], 'key')
  if not cur then return redis.error_reply('UNKNOWN_PEER') end
  local kv = tonumber(redis.call('HGET', KEYS[3], 'kv'))
  local changed = 0
  if cur ~= ARGV[7] then
    changed = 1
    kv = kv + 1
    redis.call('HSET', KEYS[3], 'key', ARGV[7], 'kv', kv)
  end
  result = {'published', changed, kv}
  stored = 'published|' .. changed .. '|' .. kv
else
  result = {'done', 0, 0}
  stored = 'done|0|0'
end
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], 'seen', ARGV[4]) end
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'version', tonumber(ARGV[1]) + 1)
if ARGV[5] == '1' then
  redis.call('SET', KEYS[2], stored, 'EX', ARGV[6])
  redis.call('ZADD', KEYS[5], ARGV[4], KEYS[2])
end
return result"#;

/// Recipient's slot: appends once per marker. KEYS: 1 peer, 2 mailbox, 3 expiry, 4 marker.
/// ARGV: 1 from, 2 payload (base64), 3 ts_ms, 4 expires, 5 cap, 6 channel, 7 recipient,
/// 8 marker TTL, 9 kind (`message` or `expired`), 10 expired: to, 11 expired: message_seq.
/// Returns the entry's sequence number (the first one, when the marker exists).
const DELIVER: &str = r#"
local done = redis.call('GET', KEYS[4])
if done then return tonumber(done) end
if redis.call('EXISTS', KEYS[1]) == 0 then return redis.error_reply('UNKNOWN_PEER') end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return redis.error_reply('MAILBOX_FULL') end
local seq = redis.call('HINCRBY', KEYS[1], 'next', 1)
local entry
if ARGV[9] == 'message' then
  entry = '{"seq":' .. seq .. ',"from":' .. cjson.encode(ARGV[1]) .. ',"kind":"message","payload":"' .. ARGV[2] ..
    '","timestamp_ms":' .. ARGV[3] .. ',"expires_at":' .. ARGV[4] .. '}'
  redis.call('ZADD', KEYS[3], ARGV[4], seq)
else
  entry = '{"seq":' .. seq .. ',"from":' .. cjson.encode(ARGV[1]) .. ',"kind":"expired","to":' .. cjson.encode(ARGV[10]) ..
    ',"message_seq":' .. ARGV[11] .. ',"payload":"","timestamp_ms":' .. ARGV[3] .. ',"expires_at":' .. ARGV[4] .. '}'
end
redis.call('ZADD', KEYS[2], seq, entry)
redis.call('SET', KEYS[4], seq, 'EX', ARGV[8])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return seq"#;

/// One user's slot. KEYS: expiry, mailbox, outcome index. ARGV: now, outcome cutoff.
/// Drops old outcomes and the expiry entries of messages already acknowledged; returns the
/// expired messages still waiting as `seq, sender` pairs (removed by `REMOVE_EXPIRED` once their
/// senders are told, so a crash in between tells twice at worst, never not at all).
const SCAN_EXPIRED: &str = r"
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])) do redis.call('DEL', k) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
local out = {}
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)) do
  local e = redis.call('ZRANGEBYSCORE', KEYS[2], s, s)
  if #e == 0 then
    redis.call('ZREM', KEYS[1], s)
  else
    local ok, m = pcall(cjson.decode, e[1])
    if ok and m.kind == 'message' then
      table.insert(out, s)
      table.insert(out, m.from)
    else
      redis.call('ZREM', KEYS[1], s)
    end
  end
end
return out";

/// One user's slot. KEYS: expiry, mailbox. ARGV: sequence numbers.
const REMOVE_EXPIRED: &str = r"
for _, s in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], s)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], s, s)
end
return #ARGV";

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
}

struct Scripts {
    put_pending: Script,
    advance_pending: Script,
    take_pending: Script,
    purge_handshakes: Script,
    create_account: Script,
    commit: Script,
    deliver: Script,
    scan_expired: Script,
    remove_expired: Script,
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
                commit: Script::new(COMMIT),
                deliver: Script::new(DELIVER),
                scan_expired: Script::new(SCAN_EXPIRED),
                remove_expired: Script::new(REMOVE_EXPIRED),
            },
            subscriber,
            sweep: tokio::sync::Mutex::new(0),
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

    fn directory(&self) -> String {
        format!("{}:peers", self.prefix)
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
const LAYOUT: &str = "2";

/// Copies a version-1 session (JSON under the key's tag) to its version-2 place (binary, under
/// the user's tag) unless a session is there already. KEYS: new session. ARGV: data, version.
const MOVE_SESSION: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'version', ARGV[2])
return 1";

impl RedisEngine {
    /// Brings data written by the first release (layout 1) to this layout, once: sessions
    /// move from `{k:<key_id>}:sess` (JSON) to `{u:<client>}:sess:<key_id>` (binary) and the
    /// global `expiry` index is split per user. Mailboxes, peers, owners and key records keep
    /// their keys; outcomes of layout 1 are left to expire (a resend without one is refused,
    /// never run twice). Every step is idempotent and never overwrites layout-2 data, so nodes
    /// starting together may all run it.
    async fn upgrade_layout(&self) -> Result<(), EngineError> {
        let layout_key = format!("{}:layout", self.prefix);
        let mut conn = self.trip();
        let layout: Option<String> = conn.get(&layout_key).await.map_err(storage)?;
        if layout.as_deref() == Some(LAYOUT) {
            return Ok(());
        }
        if let Some(other) = layout {
            return Err(storage(format!(
                "Redis holds key layout {other} under prefix {}; this relay writes layout {LAYOUT}",
                self.prefix
            )));
        }
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
        let mut conn = self.trip();
        let _: () = conn.set(&layout_key, LAYOUT).await.map_err(storage)?;
        if !users.is_empty() {
            tracing::info!(users = users.len(), "Redis data upgraded to key layout {LAYOUT}");
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

/// Like [`script_error`], and a full mailbox becomes [`EngineError::MailboxFull`].
fn send_error(e: redis::RedisError, cap: usize) -> EngineError {
    match script_error(e) {
        EngineError::Storage(s) if s.contains("MAILBOX_FULL") => EngineError::MailboxFull { cap },
        other => other,
    }
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
                cap,
                ttl_secs,
            }) => (
                to.as_str(),
                "send",
                vec![
                    to.as_str().into(),
                    me.into(),
                    mtproto_session::wire::b64(payload),
                    ts,
                    (c.now.as_secs() + ttl_secs).to_string(),
                    cap.to_string(),
                    self.channel(),
                ],
            ),
            ScriptOp::Delivered { seq } => (me, "delivered", vec![seq.to_string(), ts]),
            ScriptOp::Whole(Op::Ack { seqs }) => (
                me,
                "ack",
                vec![
                    seqs.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
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
            ScriptOp::Whole(Op::Send { cap, .. }) => *cap,
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
        cap: usize,
        expired: Option<(&str, &str)>,
    ) -> Result<u64, EngineError> {
        let mut conn = self.trip();
        let (kind, notice_to, message_seq) = match expired {
            None => ("message", "", ""),
            Some((t, s)) => ("expired", t, s),
        };
        self.scripts
            .deliver
            .key(self.u(to, "peer"))
            .key(self.u(to, "mbox"))
            .key(self.u(to, "expiry"))
            .key(marker)
            .arg(from)
            .arg(mtproto_session::wire::b64(payload))
            .arg(now.as_nanos() / 1_000_000)
            .arg(expires)
            .arg(cap)
            .arg(self.channel())
            .arg(to)
            .arg(OUTCOME_TTL_SECS)
            .arg(kind)
            .arg(notice_to)
            .arg(message_seq)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| send_error(e, cap))
    }

    /// A send on Redis Cluster (see the module docs): delivery (or refusal), then the sender's
    /// commit. If that commit loses its compare-and-swap, the relay re-reads the session and
    /// runs this again: the delivery then finds its marker and appends nothing.
    async fn cluster_send(&self, c: &Commit) -> Result<Outcome, EngineError> {
        let Op::Send {
            to,
            payload,
            cap,
            ttl_secs,
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
                *cap,
                None,
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
                    NEVER,
                    usize::MAX / 2,
                    Some((user, seq)),
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

    /// Three steps, each in one slot, ordered so that a crash between them leaves nothing
    /// harmful: the directory entry first (a listed client without a peer record is skipped),
    /// then the key record (a key without a session is refused, and the client shakes hands
    /// again), then the user's script (owner, session, peer record) — the account exists only
    /// once that ran.
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
            Ok(_) => Ok(()),
            Err(e) => {
                // The key cannot be used without its account: take its record back.
                let mut conn = self.trip();
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

    async fn commit(&self, c: Commit) -> Result<Outcome, EngineError> {
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

    async fn peers(&self) -> Result<Vec<Peer>, EngineError> {
        let mut conn = self.trip();
        let mut ids: Vec<String> = conn.smembers(self.directory()).await.map_err(storage)?;
        ids.sort();
        let rows: Vec<Option<Peer>> = if self.cluster {
            // One user's record per slot: ask each where it lives, all at once.
            futures::future::try_join_all(ids.iter().map(|id| self.read_peer(id))).await?
        } else {
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HMGET")
                    .arg(self.u(id, "peer"))
                    .arg("key")
                    .arg("kv")
                    .arg("reg")
                    .arg("seen");
            }
            let mut conn = self.trip();
            let rows: Vec<PeerRow> = pipe.query_async(&mut conn).await.map_err(storage)?;
            ids.iter()
                .zip(rows)
                .map(|(id, row)| to_peer(id, row))
                .collect::<Result<_, _>>()?
        };
        Ok(rows.into_iter().flatten().collect())
    }

    async fn peer(&self, client: &ClientId) -> Result<Option<Peer>, EngineError> {
        self.read_peer(client.as_str()).await
    }

    /// Expired handshakes in one script; then the users, a directory page at a time (at most
    /// [`PURGE_USERS_PER_CALL`] per call, the next call going on where this one stopped): each
    /// user's old outcomes and expired messages, whose senders get an `expired` notice first.
    async fn purge_expired(&self, now: UnixTime) -> Result<Vec<ClientId>, EngineError> {
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
