//! The Redis engine: several relay nodes share one user base through one Redis.
//!
//! Every operation that must be atomic is one Lua script (one round trip). Key layout, with hash
//! tags so that one user's data (peer record, owner, mailbox) shares a slot and one key's data
//! (record, session, outcomes) shares a slot:
//!
//! ```text
//! P:{hs}:idx              ZSET   pending handshakes by creation time (the bound)
//! P:{hs}:<server_nonce>   STRING pending handshake (JSON), PX 2·TTL
//! P:{k:<key_id>}:key      STRING auth key record (JSON)
//! P:{k:<key_id>}:sess     HASH   data (session JSON), version
//! P:{k:<key_id>}:out:<id> STRING outcome of a committed request, EX 3600
//! P:{u:<client>}:owner    STRING key_id (hex) that owns the client id
//! P:{u:<client>}:peer     HASH   key, kv, reg, seen, next
//! P:{u:<client>}:mbox     ZSET   mailbox entries (JSON) scored by sequence number
//! P:peers                 SET    the directory
//! P:expiry                ZSET   "<to>|<seq>|<from>" scored by expiry time
//! P:wake                  pub/sub channel: recipient ids, a hint for long-polls on any node
//! ```
//!
//! A send touches the sender's key slot and the recipient's user slot, so on Redis Cluster the
//! script would span two slots; this engine targets a single Redis (with replicas/Sentinel for
//! availability). See `docs/deployment.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use mtproto_session::{ClientId, PendingHandshake, ServerSession, UnixTime};
use redis::{aio::ConnectionManager, AsyncCommands, Script};

use super::{Engine, OUTCOME_TTL_SECS};
use crate::{AuthKeyRecord, Commit, EngineError, MailboxEntry, Notifier, Op, Outcome, Peer, SessionRecord};

fn storage<E: std::fmt::Display>(e: E) -> EngineError {
    EngineError::Storage(e.to_string())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

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

const CREATE_ACCOUNT: &str = r"
local o = redis.call('GET', KEYS[1])
if o and o ~= ARGV[1] then return redis.error_reply('TAKEN') end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], 'data', ARGV[3], 'version', 0)
if redis.call('EXISTS', KEYS[4]) == 0 then
  redis.call('HSET', KEYS[4], 'key', '', 'kv', 0, 'reg', ARGV[5], 'seen', ARGV[5], 'next', 0)
end
redis.call('SADD', KEYS[5], ARGV[4])
return 1";

/// KEYS: sess, outcome, my peer, my mailbox, target peer, target mailbox, expiry.
/// ARGV: version, session, op, now_s, keep, then per op: send: to, from, payload, ts_ms,
/// expires, cap, channel; ack: seqs (comma-separated), fetch limit; publish: key hex.
const COMMIT: &str = r#"
local v = redis.call('HGET', KEYS[1], 'version')
if not v or v ~= ARGV[1] then return redis.error_reply('CONFLICT') end
local op = ARGV[3]
local result
local stored
if op == 'send' then
  if redis.call('EXISTS', KEYS[5]) == 0 then return redis.error_reply('UNKNOWN_PEER') end
  if redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[11]) then return redis.error_reply('MAILBOX_FULL') end
  local seq = redis.call('HINCRBY', KEYS[5], 'next', 1)
  local entry = '{"seq":' .. seq .. ',"from":' .. cjson.encode(ARGV[7]) .. ',"kind":"message","payload":"' .. ARGV[8] ..
    '","timestamp_ms":' .. ARGV[9] .. ',"expires_at":' .. ARGV[10] .. '}'
  redis.call('ZADD', KEYS[6], seq, entry)
  redis.call('ZADD', KEYS[7], ARGV[10], ARGV[6] .. '|' .. seq .. '|' .. ARGV[7])
  redis.call('PUBLISH', ARGV[12], ARGV[6])
  result = {'sent', seq, ARGV[9]}
  stored = 'sent|' .. seq .. '|' .. ARGV[9]
elseif op == 'ack' then
  local removed = 0
  for s in string.gmatch(ARGV[6], '%d+') do
    removed = removed + redis.call('ZREMRANGEBYSCORE', KEYS[4], s, s)
  end
  local limit = tonumber(ARGV[7])
  local entries = {}
  if limit > 0 then entries = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '+inf', 'LIMIT', 0, limit) end
  result = {'acked', removed, entries}
  stored = 'acked|' .. removed .. '|0'
elseif op == 'publish' then
  local cur = redis.call('HGET', KEYS[3], 'key')
  if not cur then return redis.error_reply('UNKNOWN_PEER') end
  local kv = tonumber(redis.call('HGET', KEYS[3], 'kv'))
  local changed = 0
  if cur ~= ARGV[6] then
    changed = 1
    kv = kv + 1
    redis.call('HSET', KEYS[3], 'key', ARGV[6], 'kv', kv)
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
  redis.call('SET', KEYS[2], stored, 'EX', ARGV[13])
  redis.call('ZADD', ARGV[14], ARGV[4], KEYS[2])
end
return result"#;

/// KEYS: expiry, outcome index, handshake index. ARGV: now, prefix, channel, ts_ms, outcome
/// cutoff, handshake cutoff. Removes expired messages (telling senders), old outcomes and expired
/// handshakes (TTLs on those keys are only a safety net: expiry follows the relay's clock).
const PURGE: &str = r#"
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])) do redis.call('DEL', k) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
for _, sn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])) do redis.call('DEL', ARGV[2] .. ':{hs}:' .. sn) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1000)
local told = {}
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[1], m)
  local to, seq, from = string.match(m, '^(.-)|(%d+)|(.*)$')
  if to then
    local removed = redis.call('ZREMRANGEBYSCORE', ARGV[2] .. ':{u:' .. to .. '}:mbox', seq, seq)
    local speer = ARGV[2] .. ':{u:' .. from .. '}:peer'
    if removed > 0 and redis.call('EXISTS', speer) == 1 then
      local n = redis.call('HINCRBY', speer, 'next', 1)
      local entry = '{"seq":' .. n .. ',"from":"relay","kind":"expired","to":' .. cjson.encode(to) .. ',"message_seq":' .. seq ..
        ',"payload":"","timestamp_ms":' .. ARGV[4] .. ',"expires_at":4611686018427387903}'
      redis.call('ZADD', ARGV[2] .. ':{u:' .. from .. '}:mbox', n, entry)
      redis.call('PUBLISH', ARGV[3], from)
      table.insert(told, from)
    end
  end
end
return told"#;

/// Redis storage, shared by any number of relay nodes.
pub struct RedisEngine {
    conn: ConnectionManager,
    prefix: String,
    notifier: Arc<OnceLock<Arc<Notifier>>>,
    trips: Arc<AtomicU64>,
    scripts: Scripts,
    subscriber: tokio::task::JoinHandle<()>,
}

struct Scripts {
    put_pending: Script,
    advance_pending: Script,
    take_pending: Script,
    create_account: Script,
    commit: Script,
    purge: Script,
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

impl RedisEngine {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/0`); `prefix` namespaces the keys.
    /// Subscribes to the wake-up channel so long-polls on this node wake for sends on any node.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when Redis cannot be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, EngineError> {
        let client = redis::Client::open(url).map_err(storage)?;
        let conn = ConnectionManager::new(client.clone()).await.map_err(storage)?;
        let notifier: Arc<OnceLock<Arc<Notifier>>> = Arc::new(OnceLock::new());
        let mut pubsub = client.get_async_pubsub().await.map_err(storage)?;
        let channel = format!("{prefix}:wake");
        pubsub.subscribe(&channel).await.map_err(storage)?;
        let n = notifier.clone();
        let subscriber = tokio::spawn(async move {
            let mut stream = pubsub.on_message();
            while let Some(msg) = stream.next().await {
                if let (Ok(client), Some(notifier)) = (msg.get_payload::<String>(), n.get()) {
                    // A hint only: the mailbox in Redis stays the truth.
                    notifier.notify(&client);
                }
            }
            tracing::warn!("redis wake-up subscription ended; long-polls fall back to their timeout");
        });
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
            notifier,
            trips: Arc::new(AtomicU64::new(0)),
            scripts: Scripts {
                put_pending: Script::new(PUT_PENDING),
                advance_pending: Script::new(ADVANCE_PENDING),
                take_pending: Script::new(TAKE_PENDING),
                create_account: Script::new(CREATE_ACCOUNT),
                commit: Script::new(COMMIT),
                purge: Script::new(PURGE),
            },
            subscriber,
        })
    }

    fn trip(&self) -> ConnectionManager {
        self.trips.fetch_add(1, Ordering::Relaxed);
        self.conn.clone()
    }

    fn hs(&self, rest: &str) -> String {
        format!("{}:{{hs}}:{rest}", self.prefix)
    }

    fn k(&self, key_id: &[u8; 8], rest: &str) -> String {
        format!("{}:{{k:{}}}:{rest}", self.prefix, hex(key_id))
    }

    fn u(&self, client: &str, rest: &str) -> String {
        format!("{}:{{u:{client}}}:{rest}", self.prefix)
    }

    /// Round trips to Redis made by this engine so far.
    pub fn round_trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }
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

impl RedisEngine {
    async fn run_commit(&self, c: &Commit, fetch_limit: usize) -> Result<CommitReply, EngineError> {
        let me = c.client.as_str();
        let (target, mut args): (String, Vec<String>) = match &c.op {
            Op::Touch => (me.to_owned(), vec!["touch".into()]),
            Op::Send {
                to,
                payload,
                cap,
                ttl_secs,
            } => (
                to.as_str().to_owned(),
                vec![
                    "send".into(),
                    to.as_str().into(),
                    me.into(),
                    mtproto_session::wire::b64(payload),
                    (c.now.as_nanos() / 1_000_000).to_string(),
                    (c.now.as_secs() + ttl_secs).to_string(),
                    cap.to_string(),
                    format!("{}:wake", self.prefix),
                ],
            ),
            Op::Ack { seqs } => (
                me.to_owned(),
                vec![
                    "ack".into(),
                    seqs.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
                    fetch_limit.to_string(),
                ],
            ),
            Op::PublishKey { key } => (me.to_owned(), vec!["publish".into(), hex(key)]),
        };
        while args.len() < 8 {
            args.push(String::new());
        }
        args.push((OUTCOME_TTL_SECS * 2).to_string());
        args.push(format!("{}:outidx", self.prefix));
        let session = serde_json::to_string(&c.session).map_err(storage)?;
        let mut inv = self.scripts.commit.prepare_invoke();
        inv.key(self.k(&c.key_id, "sess"))
            .key(self.k(&c.key_id, &format!("out:{}", c.msg_id)))
            .key(self.u(me, "peer"))
            .key(self.u(me, "mbox"))
            .key(self.u(&target, "peer"))
            .key(self.u(&target, "mbox"))
            .key(format!("{}:expiry", self.prefix))
            .arg(c.expected_version.to_string())
            .arg(session)
            .arg(args.first().cloned().unwrap_or_default())
            .arg(c.now.as_secs().to_string())
            .arg(if c.keep_outcome { "1" } else { "0" });
        for a in args.iter().skip(1) {
            inv.arg(a);
        }
        let mut conn = self.trip();
        let reply: redis::Value = inv.invoke_async(&mut conn).await.map_err(script_error)?;
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
        "redis"
    }

    fn set_notifier(&self, notifier: Arc<Notifier>) {
        let _ = self.notifier.set(notifier);
    }

    fn stats(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "redis_round_trips": self.round_trips() }))
    }

    async fn put_pending(&self, p: PendingHandshake, max: usize, now: UnixTime) -> Result<(), EngineError> {
        let ttl = mtproto_session::handshake::HANDSHAKE_TTL_SECS;
        let sn = hex(&p.server_nonce);
        let data = serde_json::to_string(&p).map_err(storage)?;
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
            .arg(data)
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
        v.map(|s| serde_json::from_str(&s).map_err(storage)).transpose()
    }

    async fn advance_pending(&self, p: PendingHandshake) -> Result<bool, EngineError> {
        let data = serde_json::to_string(&p).map_err(storage)?;
        let mut conn = self.trip();
        let done: i64 = self
            .scripts
            .advance_pending
            .key(self.hs(&hex(&p.server_nonce)))
            .arg(data)
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
        v.map(|s| serde_json::from_str(&s).map_err(storage)).transpose()
    }

    async fn create_account(
        &self,
        key: AuthKeyRecord,
        session: ServerSession,
        now: UnixTime,
    ) -> Result<(), EngineError> {
        let client = key.client_id.as_str().to_owned();
        let mut conn = self.trip();
        let _: i64 = self
            .scripts
            .create_account
            .key(self.u(&client, "owner"))
            .key(self.k(&key.key_id, "key"))
            .key(self.k(&key.key_id, "sess"))
            .key(self.u(&client, "peer"))
            .key(format!("{}:peers", self.prefix))
            .arg(hex(&key.key_id))
            .arg(serde_json::to_string(&key).map_err(storage)?)
            .arg(serde_json::to_string(&session).map_err(storage)?)
            .arg(&client)
            .arg(now.as_secs())
            .invoke_async(&mut conn)
            .await
            .map_err(script_error)?;
        Ok(())
    }

    async fn auth_key(&self, key_id: [u8; 8]) -> Result<Option<AuthKeyRecord>, EngineError> {
        let mut conn = self.trip();
        let v: Option<String> = conn.get(self.k(&key_id, "key")).await.map_err(storage)?;
        v.map(|s| serde_json::from_str(&s).map_err(storage)).transpose()
    }

    async fn session(&self, key_id: [u8; 8]) -> Result<Option<SessionRecord>, EngineError> {
        let mut conn = self.trip();
        let (data, version): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.k(&key_id, "sess"))
            .arg("data")
            .arg("version")
            .query_async(&mut conn)
            .await
            .map_err(storage)?;
        match (data, version) {
            (Some(d), Some(v)) => Ok(Some(SessionRecord {
                session: serde_json::from_str(&d).map_err(storage)?,
                version: v,
            })),
            _ => Ok(None),
        }
    }

    async fn commit(&self, c: Commit) -> Result<Outcome, EngineError> {
        let reply = self.run_commit(&c, 0).await.map_err(|e| match e {
            EngineError::Storage(s) if s.contains("MAILBOX_FULL") => EngineError::MailboxFull {
                cap: if let Op::Send { cap, .. } = &c.op { *cap } else { 0 },
            },
            other => other,
        })?;
        to_outcome(&reply)
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
        let (kind, removed, rest) = self.run_commit(&c, limit.max(1)).await?;
        let raw: Vec<String> = redis::from_redis_value(&rest).map_err(storage)?;
        let outcome = to_outcome(&(kind, removed, redis::Value::Nil))?;
        Ok((outcome, parse_entries(raw, now)?))
    }

    async fn outcome(&self, key_id: [u8; 8], msg_id: u64) -> Result<Option<Outcome>, EngineError> {
        let mut conn = self.trip();
        let v: Option<String> = conn
            .get(self.k(&key_id, &format!("out:{msg_id}")))
            .await
            .map_err(storage)?;
        v.map(|s| parse_outcome(&s)).transpose()
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
        let mut ids: Vec<String> = conn
            .smembers(format!("{}:peers", self.prefix))
            .await
            .map_err(storage)?;
        ids.sort();
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
        let rows: Vec<(Option<String>, Option<u32>, Option<u64>, Option<u64>)> =
            pipe.query_async(&mut conn).await.map_err(storage)?;
        let mut out = Vec::new();
        for (id, row) in ids.iter().zip(rows) {
            if let Some(p) = to_peer(id, row)? {
                out.push(p);
            }
        }
        Ok(out)
    }

    async fn peer(&self, client: &ClientId) -> Result<Option<Peer>, EngineError> {
        let mut conn = self.trip();
        let row: (Option<String>, Option<u32>, Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.u(client.as_str(), "peer"))
            .arg("key")
            .arg("kv")
            .arg("reg")
            .arg("seen")
            .query_async(&mut conn)
            .await
            .map_err(storage)?;
        to_peer(client.as_str(), row)
    }

    async fn purge_expired(&self, now: UnixTime) -> Result<Vec<ClientId>, EngineError> {
        let mut conn = self.trip();
        let told: Vec<String> = self
            .scripts
            .purge
            .key(format!("{}:expiry", self.prefix))
            .key(format!("{}:outidx", self.prefix))
            .key(self.hs("idx"))
            .arg(now.as_secs())
            .arg(&self.prefix)
            .arg(format!("{}:wake", self.prefix))
            .arg(now.as_nanos() / 1_000_000)
            .arg(now.as_secs().saturating_sub(OUTCOME_TTL_SECS))
            .arg(
                now.as_secs()
                    .saturating_sub(mtproto_session::handshake::HANDSHAKE_TTL_SECS),
            )
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        Ok(told.iter().filter_map(|c| ClientId::new(c).ok()).collect())
    }
}

fn to_peer(
    id: &str,
    row: (Option<String>, Option<u32>, Option<u64>, Option<u64>),
) -> Result<Option<Peer>, EngineError> {
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
