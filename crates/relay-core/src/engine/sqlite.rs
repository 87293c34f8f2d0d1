//! The embedded durable engine: SQLite (bundled) in WAL mode with `synchronous = FULL`.
//!
//! One thread owns the connection and runs every request, reads included (measured: faster than
//! a pool of WAL reader connections behind `spawn_blocking`, because reads ride along in the
//! writer's batches). Requests queue on a channel; the thread runs every
//! queued request in one transaction (each in its own savepoint, so one failure rolls back only
//! itself), commits once, and only then answers them all: **group commit** — a send is answered
//! only after it is on disk, and N queued sends cost one fsync, not N.

use std::path::Path;
use std::sync::mpsc;

use mtproto_session::{wire::Bytes, ClientId, PendingHandshake, ServerSession, Stage, UnixTime};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;

use super::{Engine, OUTCOME_TTL_SECS, RELAY_SENDER};
use crate::{AuthKeyRecord, Commit, EngineError, EntryKind, MailboxEntry, Op, Outcome, Peer, SessionRecord};

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&Connection) -> Reply + Send>;

/// Most requests folded into one transaction.
const MAX_BATCH: usize = 512;

/// The SQLite engine.
pub struct SqliteEngine {
    jobs: mpsc::Sender<Job>,
}

fn storage<E: std::fmt::Display>(e: E) -> EngineError {
    EngineError::Storage(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> Result<String, EngineError> {
    serde_json::to_string(v).map_err(storage)
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T, EngineError> {
    serde_json::from_str(s).map_err(storage)
}

/// One JSON column of at most one row, parsed.
fn json_row<T: DeserializeOwned>(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Option<T>, EngineError> {
    let data: Option<String> = c
        .prepare_cached(sql)
        .map_err(storage)?
        .query_row(args, |r| r.get(0))
        .optional()
        .map_err(storage)?;
    data.map(|d| from_json(&d)).transpose()
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn as_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pending (server_nonce BLOB PRIMARY KEY, data TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS auth_keys (key_id BLOB PRIMARY KEY, client_id TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (key_id BLOB PRIMARY KEY, data TEXT NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outcomes (key_id BLOB NOT NULL, msg_id INTEGER NOT NULL, data TEXT NOT NULL,
    created_at INTEGER NOT NULL, PRIMARY KEY (key_id, msg_id));
CREATE TABLE IF NOT EXISTS peers (client_id TEXT PRIMARY KEY, identity_key BLOB, key_version INTEGER NOT NULL,
    registered_at INTEGER NOT NULL, last_seen INTEGER NOT NULL, next_seq INTEGER NOT NULL,
    mailbox_count INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS mailbox (recipient TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
    kind TEXT NOT NULL, payload BLOB NOT NULL, ts INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (recipient, seq));
CREATE INDEX IF NOT EXISTS mailbox_expiry ON mailbox (expires_at);
";

impl SqliteEngine {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the file cannot be opened or the schema created.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let conn = Connection::open(path).map_err(storage)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(storage)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(storage)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(storage)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(storage)?;
        conn.execute_batch(SCHEMA).map_err(storage)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer(conn, rx))
            .map_err(storage)?;
        Ok(Self { jobs: tx })
    }

    /// Runs `f` inside the next batch's transaction and answers after its commit.
    async fn call<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, EngineError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, EngineError>>();
        let job: Job = Box::new(move |conn: &Connection| {
            let exec = |sql: &str| {
                conn.prepare_cached(sql)
                    .and_then(|mut st| st.execute([]).map(|_| ()))
            };
            let result = match exec("SAVEPOINT job") {
                Ok(()) => {
                    let r = f(conn);
                    let end = if r.is_ok() {
                        Ok(())
                    } else {
                        exec("ROLLBACK TO job")
                    };
                    match end.and_then(|()| exec("RELEASE job")) {
                        Ok(()) => r,
                        Err(e) => Err(storage(e)),
                    }
                }
                Err(e) => Err(storage(e)),
            };
            Box::new(move |committed: Result<(), String>| {
                let _ = tx.send(committed.map_err(EngineError::Storage).and(result));
            })
        });
        self.jobs
            .send(job)
            .map_err(|_| EngineError::Storage("writer thread stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Storage("writer thread stopped".into()))?
    }
}

fn writer(conn: Connection, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = e.to_string();
            // Run nothing; answer every job with the failure.
            for job in batch {
                let _ = conn.execute_batch("ROLLBACK");
                let reply = job(&conn);
                reply(Err(msg.clone()));
            }
            continue;
        }
        let replies: Vec<Reply> = batch.into_iter().map(|job| job(&conn)).collect();
        let committed = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for reply in replies {
            reply(committed.clone());
        }
    }
}

fn get_peer(conn: &Connection, client: &str) -> Result<Option<(Peer, u64)>, EngineError> {
    conn.query_row(
        "SELECT client_id, identity_key, key_version, registered_at, last_seen, next_seq FROM peers WHERE client_id = ?1",
        params![client],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        },
    )
    .optional()
    .map_err(storage)?
    .map(row_to_peer)
    .transpose()
}

type PeerRow = (String, Option<Vec<u8>>, i64, i64, i64, i64);

fn row_to_peer((id, key, version, registered, seen, next): PeerRow) -> Result<(Peer, u64), EngineError> {
    let client_id = ClientId::new(&id).map_err(storage)?;
    let identity_key = match key {
        Some(k) => Some(<[u8; 32]>::try_from(k.as_slice()).map_err(storage)?),
        None => None,
    };
    Ok((
        Peer {
            client_id,
            identity_key,
            key_version: u32::try_from(version).unwrap_or(0),
            registered_at: as_u64(registered),
            last_seen: as_u64(seen),
        },
        as_u64(next),
    ))
}

#[allow(clippy::too_many_arguments)] // one row's columns; a struct would only rename them
fn append(
    conn: &Connection,
    to: &str,
    from: &str,
    kind: &EntryKind,
    payload: &[u8],
    now: UnixTime,
    expires_at: u64,
    cap: Option<usize>,
) -> Result<u64, EngineError> {
    let cap = as_i64(cap.map_or(u64::MAX / 2, |c| c as u64));
    let seq: Option<i64> = conn
        .prepare_cached(
            "UPDATE peers SET next_seq = next_seq + 1, mailbox_count = mailbox_count + 1 \
             WHERE client_id = ?1 AND mailbox_count < ?2 RETURNING next_seq",
        )
        .map_err(storage)?
        .query_row(params![to, cap], |r| r.get(0))
        .optional()
        .map_err(storage)?;
    let Some(seq) = seq else {
        // Tell the two refusals apart (the rare path).
        return Err(match get_peer(conn, to)? {
            None => EngineError::UnknownPeer,
            Some(_) => EngineError::MailboxFull {
                cap: usize::try_from(cap).unwrap_or(usize::MAX),
            },
        });
    };
    conn.prepare_cached(
        "INSERT INTO mailbox (recipient, seq, sender, kind, payload, ts, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .map_err(storage)?
    .execute(params![to, seq, from, to_json(kind)?, payload, as_i64(now.as_nanos() / 1_000_000), as_i64(expires_at)])
    .map_err(storage)?;
    Ok(as_u64(seq))
}

/// Deletes one mailbox entry and keeps the count; returns whether it existed.
fn remove_entry(conn: &Connection, recipient: &str, seq: i64) -> Result<bool, EngineError> {
    let n = conn
        .prepare_cached("DELETE FROM mailbox WHERE recipient = ?1 AND seq = ?2")
        .map_err(storage)?
        .execute(params![recipient, seq])
        .map_err(storage)?;
    if n > 0 {
        conn.prepare_cached("UPDATE peers SET mailbox_count = mailbox_count - ?2 WHERE client_id = ?1")
            .map_err(storage)?
            .execute(params![recipient, as_i64(n as u64)])
            .map_err(storage)?;
    }
    Ok(n > 0)
}

/// One request's commit (see [`Engine::commit`]), inside the writer's transaction.
fn commit_in(c: &Connection, cm: &Commit) -> Result<Outcome, EngineError> {
    let key = cm.key_id.to_vec();
    let updated = c
        .prepare_cached(
            "UPDATE sessions SET data = ?2, version = version + 1 WHERE key_id = ?1 AND version = ?3",
        )
        .map_err(storage)?
        .execute(params![key, to_json(&cm.session)?, as_i64(cm.expected_version)])
        .map_err(storage)?;
    if updated != 1 {
        return Err(EngineError::Conflict);
    }
    let now_s = cm.now.as_secs();
    let me = cm.client.as_str();
    let outcome = match &cm.op {
        Op::Touch => Outcome::Done,
        Op::Send {
            to,
            payload,
            cap,
            ttl_secs,
        } => {
            let seq = append(
                c,
                to.as_str(),
                me,
                &EntryKind::Message,
                payload,
                cm.now,
                now_s + ttl_secs,
                Some(*cap),
            )?;
            Outcome::Sent {
                seq,
                timestamp_ms: cm.now.as_nanos() / 1_000_000,
            }
        }
        Op::Ack { seqs } => {
            let mut removed = 0;
            for s in seqs {
                removed += usize::from(remove_entry(c, me, as_i64(*s))?);
            }
            Outcome::Acked { removed }
        }
        Op::PublishKey { key } => {
            let (peer, _) = get_peer(c, me)?.ok_or(EngineError::UnknownPeer)?;
            let changed = peer.identity_key != Some(*key);
            let version = peer.key_version + u32::from(changed);
            c.execute(
                "UPDATE peers SET identity_key = ?2, key_version = ?3 WHERE client_id = ?1",
                params![me, key.to_vec(), i64::from(version)],
            )
            .map_err(storage)?;
            Outcome::KeyPublished {
                changed,
                key_version: version,
            }
        }
    };
    c.prepare_cached("UPDATE peers SET last_seen = ?2 WHERE client_id = ?1 AND last_seen <> ?2")
        .map_err(storage)?
        .execute(params![me, as_i64(now_s)])
        .map_err(storage)?;
    if cm.keep_outcome {
        c.prepare_cached(
            "INSERT OR REPLACE INTO outcomes (key_id, msg_id, data, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(storage)?
        .execute(params![key, as_i64(cm.msg_id), to_json(&outcome)?, as_i64(now_s)])
        .map_err(storage)?;
    }
    Ok(outcome)
}

/// Up to `limit` unexpired entries of `client`'s mailbox, oldest first.
fn fetch_in(
    c: &Connection,
    client: &str,
    limit: usize,
    now: UnixTime,
) -> Result<Vec<MailboxEntry>, EngineError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT seq, sender, kind, payload, ts, expires_at FROM mailbox WHERE recipient = ?1 AND expires_at > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(storage)?;
    let rows = stmt
        .query_map(
            params![client, as_i64(now.as_secs()), as_i64(limit as u64)],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .map_err(storage)?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, from, kind, payload, ts, exp) = row.map_err(storage)?;
        out.push(MailboxEntry {
            seq: as_u64(seq),
            from,
            kind: from_json(&kind)?,
            payload: Bytes(payload),
            timestamp_ms: as_u64(ts),
            expires_at: as_u64(exp),
        });
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Engine for SqliteEngine {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn put_pending(
        &self,
        pending: PendingHandshake,
        max: usize,
        now: UnixTime,
    ) -> Result<(), EngineError> {
        self.call(move |c| {
            let count: i64 = c
                .query_row("SELECT COUNT(*) FROM pending", [], |r| r.get(0))
                .map_err(storage)?;
            if as_u64(count) >= max as u64 {
                let cutoff = now
                    .as_secs()
                    .saturating_sub(mtproto_session::handshake::HANDSHAKE_TTL_SECS);
                c.execute(
                    "DELETE FROM pending WHERE created_at <= ?1",
                    params![as_i64(cutoff)],
                )
                .map_err(storage)?;
                let count: i64 = c
                    .query_row("SELECT COUNT(*) FROM pending", [], |r| r.get(0))
                    .map_err(storage)?;
                if as_u64(count) >= max as u64 {
                    return Err(EngineError::TooManyHandshakes { max });
                }
            }
            c.execute(
                "INSERT INTO pending (server_nonce, data, created_at) VALUES (?1, ?2, ?3)",
                params![
                    pending.server_nonce.to_vec(),
                    to_json(&pending)?,
                    as_i64(pending.created_at.as_secs())
                ],
            )
            .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn get_pending(&self, server_nonce: [u8; 16]) -> Result<Option<PendingHandshake>, EngineError> {
        self.call(move |c| {
            json_row(
                c,
                "SELECT data FROM pending WHERE server_nonce = ?1",
                params![server_nonce.to_vec()],
            )
        })
        .await
    }

    async fn advance_pending(&self, pending: PendingHandshake) -> Result<bool, EngineError> {
        self.call(move |c| {
            let old: Option<PendingHandshake> = json_row(
                c,
                "SELECT data FROM pending WHERE server_nonce = ?1",
                params![pending.server_nonce.to_vec()],
            )?;
            let Some(old) = old else {
                return Ok(false);
            };
            if !matches!(old.stage, Stage::AwaitingDhParams) {
                return Ok(false);
            }
            c.execute(
                "UPDATE pending SET data = ?2 WHERE server_nonce = ?1",
                params![pending.server_nonce.to_vec(), to_json(&pending)?],
            )
            .map_err(storage)?;
            Ok(true)
        })
        .await
    }

    async fn take_pending(&self, server_nonce: [u8; 16]) -> Result<Option<PendingHandshake>, EngineError> {
        self.call(move |c| {
            json_row(
                c,
                "DELETE FROM pending WHERE server_nonce = ?1 RETURNING data",
                params![server_nonce.to_vec()],
            )
        })
        .await
    }

    async fn create_account(
        &self,
        key: AuthKeyRecord,
        session: ServerSession,
        now: UnixTime,
    ) -> Result<(), EngineError> {
        self.call(move |c| {
            let owner: Option<Vec<u8>> = c
                .query_row("SELECT key_id FROM auth_keys WHERE client_id = ?1", params![key.client_id.as_str()], |r| r.get(0))
                .optional()
                .map_err(storage)?;
            if owner.is_some_and(|o| o != key.key_id) {
                return Err(EngineError::ClientIdTaken);
            }
            c.execute(
                "INSERT OR REPLACE INTO auth_keys (key_id, client_id, data) VALUES (?1, ?2, ?3)",
                params![key.key_id.to_vec(), key.client_id.as_str(), to_json(&key)?],
            )
            .map_err(storage)?;
            c.execute(
                "INSERT OR REPLACE INTO sessions (key_id, data, version) VALUES (?1, ?2, 0)",
                params![key.key_id.to_vec(), to_json(&session)?],
            )
            .map_err(storage)?;
            let t = as_i64(now.as_secs());
            c.execute(
                "INSERT OR IGNORE INTO peers (client_id, identity_key, key_version, registered_at, last_seen, next_seq, mailbox_count) VALUES (?1, NULL, 0, ?2, ?2, 0, 0)",
                params![key.client_id.as_str(), t],
            )
            .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn auth_key(&self, key_id: [u8; 8]) -> Result<Option<AuthKeyRecord>, EngineError> {
        self.call(move |c| {
            json_row(
                c,
                "SELECT data FROM auth_keys WHERE key_id = ?1",
                params![key_id.to_vec()],
            )
        })
        .await
    }

    async fn session(&self, key_id: [u8; 8]) -> Result<Option<SessionRecord>, EngineError> {
        self.call(move |c| {
            let row: Option<(String, i64)> = c
                .prepare_cached("SELECT data, version FROM sessions WHERE key_id = ?1")
                .map_err(storage)?
                .query_row(params![key_id.to_vec()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(storage)?;
            row.map(|(d, v)| {
                Ok(SessionRecord {
                    session: from_json(&d)?,
                    version: as_u64(v),
                })
            })
            .transpose()
        })
        .await
    }

    async fn commit(&self, cm: Commit) -> Result<Outcome, EngineError> {
        self.call(move |c| commit_in(c, &cm)).await
    }

    async fn commit_and_fetch(
        &self,
        cm: Commit,
        limit: usize,
    ) -> Result<(Outcome, Vec<MailboxEntry>), EngineError> {
        // One trip through the writer: the acks and the read share a transaction.
        self.call(move |c| {
            let outcome = commit_in(c, &cm)?;
            Ok((outcome, fetch_in(c, cm.client.as_str(), limit, cm.now)?))
        })
        .await
    }

    async fn outcome(&self, key_id: [u8; 8], msg_id: u64) -> Result<Option<Outcome>, EngineError> {
        self.call(move |c| {
            json_row(
                c,
                "SELECT data FROM outcomes WHERE key_id = ?1 AND msg_id = ?2",
                params![key_id.to_vec(), as_i64(msg_id)],
            )
        })
        .await
    }

    async fn fetch(
        &self,
        client: &ClientId,
        limit: usize,
        now: UnixTime,
    ) -> Result<Vec<MailboxEntry>, EngineError> {
        let client = client.as_str().to_owned();
        self.call(move |c| fetch_in(c, &client, limit, now)).await
    }

    async fn peers(&self) -> Result<Vec<Peer>, EngineError> {
        self.call(|c| {
            let mut stmt = c
                .prepare_cached("SELECT client_id, identity_key, key_version, registered_at, last_seen, next_seq FROM peers ORDER BY client_id")
                .map_err(storage)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
                .map_err(storage)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row_to_peer(row.map_err(storage)?)?.0);
            }
            Ok(out)
        })
        .await
    }

    async fn peer(&self, client: &ClientId) -> Result<Option<Peer>, EngineError> {
        let client = client.as_str().to_owned();
        self.call(move |c| Ok(get_peer(c, &client)?.map(|(p, _)| p)))
            .await
    }

    async fn purge_expired(&self, now: UnixTime) -> Result<Vec<ClientId>, EngineError> {
        self.call(move |c| {
            let secs = as_i64(now.as_secs());
            let cutoff = now
                .as_secs()
                .saturating_sub(mtproto_session::handshake::HANDSHAKE_TTL_SECS);
            c.execute(
                "DELETE FROM pending WHERE created_at <= ?1",
                params![as_i64(cutoff)],
            )
            .map_err(storage)?;
            c.execute(
                "DELETE FROM outcomes WHERE created_at + ?2 <= ?1",
                params![secs, as_i64(OUTCOME_TTL_SECS)],
            )
            .map_err(storage)?;
            let mut stmt = c
                .prepare("DELETE FROM mailbox WHERE expires_at <= ?1 RETURNING recipient, seq, sender, kind")
                .map_err(storage)?;
            let rows: Vec<(String, i64, String, String)> = stmt
                .query_map(params![secs], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(storage)?
                .collect::<Result<_, _>>()
                .map_err(storage)?;
            drop(stmt);
            let mut notified = Vec::new();
            for (to, seq, from, kind) in rows {
                if from_json::<EntryKind>(&kind)? != EntryKind::Message {
                    continue;
                }
                let (Ok(sender), Ok(to)) = (ClientId::new(&from), ClientId::new(&to)) else {
                    continue;
                };
                let notice = EntryKind::Expired {
                    to,
                    message_seq: as_u64(seq),
                };
                append(
                    c,
                    sender.as_str(),
                    RELAY_SENDER,
                    &notice,
                    &[],
                    now,
                    u64::MAX / 4,
                    None,
                )?;
                notified.push(sender);
            }
            Ok(notified)
        })
        .await
    }
}
