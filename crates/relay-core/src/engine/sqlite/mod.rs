//! The embedded durable engine: SQLite (bundled) in WAL mode.
//!
//! One thread owns the connection and runs every request, reads included (measured: faster than
//! a pool of WAL reader connections behind `spawn_blocking`, because reads ride along in the
//! writer's batches). Requests queue on a channel; the writer runs every queued request in one
//! transaction and commits once: **group commit**. Each request checks everything that can refuse
//! it (a session conflict, an unknown peer, a full mailbox) before it writes, so a refusal leaves
//! nothing behind and needs no savepoint; a failure of SQLite itself rolls back the whole batch
//! and every request in it is answered with that error (none of them was committed).
//!
//! **Pipelined durability.** SQLite runs with `synchronous = NORMAL`, so `COMMIT` writes the
//! transaction's frames to the WAL file without waiting for the disk. The writer then hands the
//! batch's answers to a second thread, the syncer, and goes on with the next batch; the syncer
//! `fsync`s the WAL file and only then answers the batch. Every request (a read too) is answered
//! only after everything committed up to and including its own batch is on disk, so nothing a
//! client is told survives less than `synchronous = FULL` would keep; the disk's flush time
//! overlaps the next batch's work instead of stalling the writer. One fsync covers every batch
//! committed since the previous one. If an fsync ever fails the engine refuses all further
//! requests (the state of the file is then unknown; restarting recovers from the WAL).
use mtproto_crypto::{AuthKeyId, Nonce128};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use mtproto_session::{wire::Bytes, ClientId, PendingHandshake, ServerSession, Stage, UnixTime};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

pub mod backup;
mod ops;
mod prekeys;
mod purge;
mod schema;
mod writer;

use ops::*;
use schema::*;
use writer::*;

use super::{Engine, NEVER_EXPIRES, OUTCOME_TTL_SECS, RELAY_SENDER};
use crate::{
    AccountExpiry, AuthKeyRecord, Commit, EngineError, EntryKind, MailboxEntry, Op, Outcome, Peer, SendQuota,
    SessionRecord,
};

/// The SQLite engine.
pub struct SqliteEngine {
    jobs: mpsc::Sender<Job>,
    counters: Arc<Counters>,
    /// The last write probe of [`Engine::health`]: when, and what it found.
    probe: std::sync::Mutex<Option<(std::time::Instant, Result<(), EngineError>)>>,
    /// `relay.lock` beside the database, locked for as long as this engine lives.
    _lock: std::fs::File,
}

/// Takes the lock file beside the database: a second process (or engine) on the same database
/// is refused — two writers would fight, and one's wake-ups would not reach the other's
/// long-polls.
fn lock_beside(db: &Path) -> Result<std::fs::File, EngineError> {
    let path = db.with_file_name("relay.lock");
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts
        .open(&path)
        .map_err(|e| EngineError::Storage(format!("{}: {e}", path.display())))?;
    // A relay restarted in the same process may still be letting go of its engine (actix
    // workers drop their handles as they wind down): wait a moment before calling it another.
    let mut tries = 0;
    let locked = loop {
        match file.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if tries < 40 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => break other,
        }
    };
    match locked {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(EngineError::Storage(format!(
            "another relay-server is using {} (it holds {}); stop it first",
            db.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(EngineError::Storage(format!("{}: {e}", path.display()))),
    }
}

impl SqliteEngine {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// # Errors
    /// [`EngineError::Storage`] when the file cannot be opened or the schema created.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let lock = lock_beside(path)?;
        let conn = Connection::open(path).map_err(storage)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(storage)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(EngineError::Storage(format!(
                "SQLite could not use WAL mode for {} (got {mode})",
                path.display()
            )));
        }
        // The syncer makes each commit durable before it is answered (see the module docs).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(storage)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(storage)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(storage)?;
        // Every statement the engine runs stays prepared (rusqlite keeps 16 by default, fewer
        // than we use, and re-parsing the evicted ones cost ~5% of the writer's time).
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&conn)?;
        // One write (the version again: `migrate` may have had nothing to do) creates the WAL
        // file, which must exist and be durable before the syncer opens it.
        let wal = wal_path(path);
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(storage)?;
        let wal_file = std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .map_err(|e| EngineError::Storage(format!("{}: {e}", wal.display())))?;
        wal_file.sync_all().map_err(storage)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            sync_dir(dir)?;
        }
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let (sync_tx, sync_rx) = mpsc::channel::<Committed>();
        let c = counters.clone();
        std::thread::Builder::new()
            .name("sqlite-syncer".into())
            .spawn(move || syncer(wal_file, sync_rx, &c))
            .map_err(storage)?;
        let c = counters.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer(conn, rx, sync_tx, &c))
            .map_err(storage)?;
        Ok(Self {
            jobs: tx,
            counters,
            probe: std::sync::Mutex::new(None),
            _lock: lock,
        })
    }

    /// Runs `f` inside the next batch's transaction and answers after its commit.
    ///
    /// `f` must return any refusal other than [`EngineError::Storage`] before it writes
    /// anything; a `Storage` error rolls back the whole batch.
    async fn call<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, EngineError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, EngineError>>();
        let job: Job = Box::new(move |conn: Option<&Connection>| {
            let result = match conn {
                Some(conn) => f(conn),
                None => Err(EngineError::Storage("not run".into())),
            };
            Ran {
                broke: matches!(result, Err(EngineError::Storage(_))),
                reply: Box::new(move |committed: Result<(), String>| {
                    let _ = tx.send(committed.map_err(EngineError::Storage).and(result));
                }),
            }
        });
        self.jobs
            .send(job)
            .map_err(|_| EngineError::Storage("writer thread stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Storage("writer thread stopped".into()))?
    }
}

#[async_trait::async_trait]
impl Engine for SqliteEngine {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn stats(&self) -> Option<serde_json::Value> {
        let c = &self.counters;
        Some(serde_json::json!({
            "requests": c.jobs.load(Ordering::Relaxed),
            "commits": c.commits.load(Ordering::Acquire),
            "durable_commits": c.durable.load(Ordering::Acquire),
            "fsyncs": c.fsyncs.load(Ordering::Relaxed),
            "failed": c.failed.load(Ordering::Acquire),
        }))
    }

    /// Fails after a failed fsync (for good), or when a real write — one row, committed and
    /// made durable like a request's — fails now (disk full, read-only filesystem, a damaged
    /// file). The write runs at most once a second; calls in between get its result.
    async fn health(&self) -> Result<(), EngineError> {
        if self.counters.failed.load(Ordering::Acquire) {
            return Err(EngineError::Storage(
                "an fsync of the WAL failed; restart the relay".into(),
            ));
        }
        if let Some((at, result)) = self.probe.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if at.elapsed() < PROBE_EVERY {
                return result.clone();
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let result = self
            .call(move |c| {
                c.prepare_cached("INSERT OR REPLACE INTO health (id, at) VALUES (1, ?1)")
                    .map_err(storage)?
                    .execute(params![as_i64(now)])
                    .map_err(storage)?;
                Ok(())
            })
            .await;
        *self.probe.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::time::Instant::now(), result.clone()));
        result
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
                purge::expired_handshakes(c, now)?;
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
                    to_json(&pending)?.as_str(),
                    as_i64(pending.created_at.as_secs())
                ],
            )
            .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn get_pending(&self, server_nonce: Nonce128) -> Result<Option<PendingHandshake>, EngineError> {
        self.call(move |c| {
            json_row(
                c,
                "SELECT data FROM pending WHERE server_nonce = ?1",
                params![server_nonce.as_bytes().to_vec()],
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
                params![pending.server_nonce.to_vec(), to_json(&pending)?.as_str()],
            )
            .map_err(storage)?;
            Ok(true)
        })
        .await
    }

    async fn take_pending(&self, server_nonce: Nonce128) -> Result<Option<PendingHandshake>, EngineError> {
        self.call(move |c| {
            json_row(
                c,
                "DELETE FROM pending WHERE server_nonce = ?1 RETURNING data",
                params![server_nonce.as_bytes().to_vec()],
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
            if owner_key_id(c, &key.client_id)?.is_some_and(|o| o != key.key_id.as_bytes()) {
                return Err(EngineError::ClientIdTaken);
            }
            c.execute(
                "INSERT OR REPLACE INTO auth_keys (key_id, client_id, data) VALUES (?1, ?2, ?3)",
                params![key.key_id.as_bytes().to_vec(), key.client_id.as_str(), to_json(&key)?.as_str()],
            )
            .map_err(storage)?;
            c.execute(
                "INSERT OR REPLACE INTO sessions (key_id, data, version) VALUES (?1, ?2, 0)",
                params![key.key_id.as_bytes().to_vec(), session.to_bytes()],
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

    async fn owner(&self, client: &ClientId) -> Result<Option<AuthKeyRecord>, EngineError> {
        let client = client.clone();
        self.call(move |c| {
            json_row(
                c,
                "SELECT data FROM auth_keys WHERE client_id = ?1",
                params![client.as_str()],
            )
        })
        .await
    }

    async fn take_over_account(
        &self,
        key: AuthKeyRecord,
        session: ServerSession,
        old_key_id: AuthKeyId,
        now: UnixTime,
    ) -> Result<(), EngineError> {
        self.call(move |c| {
            if owner_key_id(c, &key.client_id)?.as_deref() != Some(old_key_id.as_bytes().as_slice()) {
                return Err(EngineError::ClientIdTaken);
            }
            c.execute(
                "DELETE FROM sessions WHERE key_id = ?1",
                params![old_key_id.as_bytes().to_vec()],
            )
            .map_err(storage)?;
            c.execute(
                "DELETE FROM auth_keys WHERE key_id = ?1",
                params![old_key_id.as_bytes().to_vec()],
            )
            .map_err(storage)?;
            c.execute(
                "INSERT INTO auth_keys (key_id, client_id, data) VALUES (?1, ?2, ?3)",
                params![
                    key.key_id.as_bytes().to_vec(),
                    key.client_id.as_str(),
                    to_json(&key)?.as_str()
                ],
            )
            .map_err(storage)?;
            c.execute(
                "INSERT OR REPLACE INTO sessions (key_id, data, version) VALUES (?1, ?2, 0)",
                params![key.key_id.as_bytes().to_vec(), session.to_bytes()],
            )
            .map_err(storage)?;
            // A new registration as far as expiry goes (the unpublished hour counts from now).
            // A withdrawn key is a key change: key_version + 1 (SET reads the old row).
            c.execute(
                "UPDATE peers SET key_version = MIN(key_version + (identity_key IS NOT NULL), 4294967295), \
                 identity_key = NULL, registered_at = ?2, last_seen = ?2 WHERE client_id = ?1",
                params![key.client_id.as_str(), as_i64(now.as_secs())],
            )
            .map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn auth_key(&self, key_id: AuthKeyId) -> Result<Option<AuthKeyRecord>, EngineError> {
        self.call(move |c| {
            json_row(
                c,
                "SELECT data FROM auth_keys WHERE key_id = ?1",
                params![key_id.as_bytes().to_vec()],
            )
        })
        .await
    }

    async fn session(
        &self,
        key_id: AuthKeyId,
        _client: &ClientId,
    ) -> Result<Option<SessionRecord>, EngineError> {
        self.call(move |c| {
            let row: Option<(rusqlite::types::Value, i64)> = c
                .prepare_cached("SELECT data, version FROM sessions WHERE key_id = ?1")
                .map_err(storage)?
                .query_row(params![key_id.as_bytes().to_vec()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(storage)?;
            row.map(|(data, v)| {
                let session = match data {
                    rusqlite::types::Value::Blob(b) => ServerSession::from_bytes(&b).map_err(storage)?,
                    // A row a version-1 database wrote; the next commit rewrites it compactly.
                    rusqlite::types::Value::Text(t) => from_json(&t)?,
                    _ => return Err(EngineError::Storage("session row of an unknown type".into())),
                };
                Ok(SessionRecord {
                    session,
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

    async fn outcome(
        &self,
        key_id: AuthKeyId,
        _client: &ClientId,
        msg_id: u64,
    ) -> Result<Option<Outcome>, EngineError> {
        self.call(move |c| {
            json_row(
                c,
                "SELECT data FROM outcomes WHERE msg_id = ?1 AND key_id = ?2",
                params![as_i64(msg_id), key_id.as_bytes().to_vec()],
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

    async fn peers_page(
        &self,
        prefix: &str,
        after: Option<&ClientId>,
        limit: usize,
    ) -> Result<Vec<Peer>, EngineError> {
        // Names are lower-case [a-z0-9_.-]: every name with this prefix sorts below prefix‖'~'.
        let low = match after {
            Some(a) if a.as_str() >= prefix => a.as_str().to_owned(),
            _ => String::new(),
        };
        let (prefix, limit) = (prefix.to_owned(), as_i64(limit as u64));
        self.call(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT client_id, identity_key, key_version, registered_at, last_seen, next_seq FROM peers \
                     WHERE client_id >= ?1 AND client_id < ?1 || '~' AND client_id > ?2 AND identity_key IS NOT NULL \
                     ORDER BY client_id LIMIT ?3",
                )
                .map_err(storage)?;
            let rows = stmt
                .query_map(params![prefix, low, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })
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

    async fn purge_accounts(
        &self,
        now: UnixTime,
        policy: AccountExpiry,
        max: usize,
    ) -> Result<Vec<AuthKeyId>, EngineError> {
        self.call(move |c| purge::accounts(c, now, policy, max)).await
    }

    async fn purge_expired(&self, now: UnixTime) -> Result<Vec<ClientId>, EngineError> {
        self.call(move |c| purge::expired(c, now)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn after_a_failed_fsync_nothing_runs() {
        let dir = tempfile::tempdir().unwrap();
        let engine = SqliteEngine::open(&dir.path().join("relay.db")).unwrap();
        engine.counters.failed.store(true, Ordering::Release);
        let refused = engine
            .call(|c| {
                c.execute("CREATE TABLE canary (x)", []).map_err(storage)?;
                Ok(())
            })
            .await;
        assert!(
            matches!(&refused, Err(EngineError::Storage(m)) if m.contains("fsync")),
            "{refused:?}"
        );
        engine.counters.failed.store(false, Ordering::Release);
        let exists: bool = engine
            .call(|c| {
                c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'canary')",
                    [],
                    |r| r.get(0),
                )
                .map_err(storage)
            })
            .await
            .unwrap();
        assert!(!exists, "a refused request ran");
    }
}
