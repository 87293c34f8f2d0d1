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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use mtproto_session::{wire::Bytes, ClientId, PendingHandshake, ServerSession, Stage, UnixTime};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

pub mod backup;

use super::{Engine, NEVER_EXPIRES, OUTCOME_TTL_SECS, RELAY_SENDER};
use crate::{
    AccountExpiry, AuthKeyRecord, Commit, EngineError, EntryKind, MailboxEntry, Op, Outcome, Peer, SendQuota,
    SessionRecord,
};

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A request: run on the connection inside the batch's transaction, or (given `None`) not run at
/// all and only answered, when the batch cannot start.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Ran + Send>;

/// One request, run.
struct Ran {
    /// Answers the request once its batch is committed (or failed).
    reply: Reply,
    /// SQLite failed under it: the batch's transaction must be rolled back.
    broke: bool,
}

/// Most requests folded into one transaction.
const MAX_BATCH: usize = 512;

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

/// How long a write probe's result stands (so that `/healthz`, which anyone may call, costs at
/// most one small write and fsync a second).
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the writer and the syncer have done, for `/healthz` and tests.
#[derive(Default)]
struct Counters {
    /// Transactions committed that wrote something (to the WAL, not yet necessarily on disk).
    commits: AtomicU64,
    /// Requests run.
    jobs: AtomicU64,
    /// Committed transactions known to be on disk (the syncer's fsync covered them).
    durable: AtomicU64,
    /// fsync calls.
    fsyncs: AtomicU64,
    /// Set when an fsync failed: nothing is accepted any more.
    failed: AtomicBool,
}

/// One committed batch waiting for its fsync.
struct Committed {
    /// The write commit that must be on disk before the batch is answered: its own, or for
    /// a batch that only read, the last one before it (whose data it may have read).
    needs: u64,
    replies: Vec<Reply>,
}

fn storage<E: std::fmt::Display>(e: E) -> EngineError {
    EngineError::Storage(e.to_string())
}

/// JSON of a record; wiped when dropped, because auth keys and handshake secrets pass through.
fn to_json<T: Serialize>(v: &T) -> Result<Zeroizing<String>, EngineError> {
    serde_json::to_string(v).map(Zeroizing::new).map_err(storage)
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T, EngineError> {
    serde_json::from_str(s).map_err(storage)
}

/// The key id that holds `client`'s name, if any (checked by registration and recovery).
fn owner_key_id(c: &Connection, client: &ClientId) -> Result<Option<Vec<u8>>, EngineError> {
    c.query_row(
        "SELECT key_id FROM auth_keys WHERE client_id = ?1",
        params![client.as_str()],
        |r| r.get(0),
    )
    .optional()
    .map_err(storage)
}

/// One JSON column of at most one row, parsed.
fn json_row<T: DeserializeOwned>(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Option<T>, EngineError> {
    let data: Option<Zeroizing<String>> = c
        .prepare_cached(sql)
        .map_err(storage)?
        .query_row(args, |r| r.get::<_, String>(0).map(Zeroizing::new))
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

/// The schema this code writes, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 3;

/// Version 2. Laid out so that one request dirties few pages, because every dirty page is
/// written to the WAL at commit (and copied again by the checkpoint). Mailbox rows (a few
/// hundred bytes) are appended to a rowid table and found through the small `(recipient, seq)`
/// index; outcomes (small rows) are a `WITHOUT ROWID` table keyed by msg_id first — msg_ids
/// follow the clock (the session refuses ids outside its time window), so new outcomes of all
/// clients land on the same few pages and old ones go by a key range; sessions are stored in
/// `ServerSession::to_bytes`'s compact form (about 0.7 KB, five to a page).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mailbox (recipient TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
    kind TEXT NOT NULL, payload BLOB NOT NULL, ts INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (recipient, seq));
CREATE INDEX IF NOT EXISTS mailbox_expiry ON mailbox (expires_at);
CREATE TABLE IF NOT EXISTS pending (server_nonce BLOB PRIMARY KEY, data TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS auth_keys (key_id BLOB PRIMARY KEY, client_id TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (key_id BLOB PRIMARY KEY, data BLOB NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS peers (client_id TEXT PRIMARY KEY, identity_key BLOB, key_version INTEGER NOT NULL,
    registered_at INTEGER NOT NULL, last_seen INTEGER NOT NULL, next_seq INTEGER NOT NULL,
    mailbox_count INTEGER NOT NULL DEFAULT 0, mailbox_bytes INTEGER NOT NULL DEFAULT 0);
";

/// The version-2 table that replaced version 1's (created with [`SCHEMA`] on a new database, by
/// [`upgrade_from_v1`] on an old one).
const SCHEMA_V2_TABLES: &str = "
CREATE TABLE outcomes (msg_id INTEGER NOT NULL, key_id BLOB NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (msg_id, key_id)) WITHOUT ROWID;
";

/// Version 3: what each sender has waiting in each mailbox (the per-sender quota), kept with
/// every append and removal.
const SCHEMA_V3_TABLES: &str = "
CREATE TABLE senders (recipient TEXT NOT NULL, sender TEXT NOT NULL, count INTEGER NOT NULL,
    bytes INTEGER NOT NULL, PRIMARY KEY (recipient, sender)) WITHOUT ROWID;
CREATE TABLE health (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);
";

/// From version 2: the byte count beside the entry count, the per-sender table filled from the
/// mailboxes, and the entry counts recomputed (version 2 did not lower them when messages
/// expired).
const UPGRADE_FROM_V2: &str = "
ALTER TABLE peers ADD COLUMN mailbox_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE peers SET
    mailbox_count = (SELECT COUNT(*) FROM mailbox WHERE recipient = peers.client_id),
    mailbox_bytes = (SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM mailbox WHERE recipient = peers.client_id);
INSERT INTO senders (recipient, sender, count, bytes)
    SELECT recipient, sender, COUNT(*), SUM(LENGTH(payload)) FROM mailbox
    WHERE sender <> 'relay' GROUP BY recipient, sender;
";

/// Creates the schema, or upgrades a version-1 database (the first release's layout) in one
/// transaction: outcomes are dropped (they only answer resends inside the replay window, and a
/// resend without one is refused, never run twice); sessions stay as they are (JSON rows are
/// still read, and rewritten compactly on their next commit); the rest is unchanged.
fn migrate(conn: &Connection) -> Result<(), EngineError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(storage)?;
    let has_mailbox: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mailbox')",
            [],
            |r| r.get(0),
        )
        .map_err(storage)?;
    let script = match (version, has_mailbox) {
        (SCHEMA_VERSION, true) => return Ok(()),
        (_, false) => format!("{SCHEMA}{SCHEMA_V2_TABLES}{SCHEMA_V3_TABLES}"),
        (0, true) => format!("{}{SCHEMA_V3_TABLES}{UPGRADE_FROM_V2}", upgrade_from_v1()),
        (2, true) => format!("{SCHEMA_V3_TABLES}{UPGRADE_FROM_V2}"),
        (v, true) => {
            return Err(EngineError::Storage(format!(
                "database schema version {v} is not one this relay knows (it writes {SCHEMA_VERSION})"
            )))
        }
    };
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {script}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))
    .map_err(storage)
}

fn upgrade_from_v1() -> String {
    format!("DROP TABLE outcomes; {SCHEMA_V2_TABLES}")
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

/// `relay.db` → `relay.db-wal`.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Makes a directory's entries (a newly created file) durable.
fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| EngineError::Storage(format!("{}: {e}", dir.display())))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Runs one statement without parameters through the statement cache.
fn exec_cached(conn: &Connection, sql: &str) -> Result<(), String> {
    conn.prepare_cached(sql)
        .and_then(|mut st| st.execute([]).map(|_| ()))
        .map_err(|e| e.to_string())
}

fn writer(conn: Connection, jobs: mpsc::Receiver<Job>, synced: mpsc::Sender<Committed>, counters: &Counters) {
    let mut number = 0u64;
    let mut queue = std::collections::VecDeque::<Job>::new();
    loop {
        if queue.is_empty() {
            match jobs.recv() {
                Ok(j) => queue.push_back(j),
                Err(_) => return,
            }
        }
        while let Ok(j) = jobs.try_recv() {
            queue.push_back(j);
        }
        let refused = if counters.failed.load(Ordering::Acquire) {
            Some("an earlier fsync failed; restart the relay".to_owned())
        } else {
            exec_cached(&conn, "BEGIN IMMEDIATE").err()
        };
        if let Some(msg) = refused {
            // Run nothing; answer every queued job with the failure.
            for job in queue.drain(..) {
                (job(None).reply)(Err(msg.clone()));
            }
            continue;
        }
        let changes_before = conn.total_changes();
        let mut replies: Vec<Reply> = Vec::with_capacity(queue.len().min(MAX_BATCH));
        let mut broke = false;
        while replies.len() < MAX_BATCH && !broke {
            let Some(job) = queue.pop_front() else { break };
            let ran = job(Some(&conn));
            broke = ran.broke;
            replies.push(ran.reply);
        }
        counters.jobs.fetch_add(replies.len() as u64, Ordering::Relaxed);
        let committed = if broke {
            // The request that broke answers with its own error (`Ok` passes its result
            // through); the others with the rollback.
            let _ = exec_cached(&conn, "ROLLBACK");
            if let Some(own) = replies.pop() {
                own(Ok(()));
            }
            Err("storage failed under another request in the same batch; nothing was committed".to_owned())
        } else {
            exec_cached(&conn, "COMMIT")
        };
        match committed {
            Ok(()) => {
                if conn.total_changes() != changes_before {
                    number += 1;
                    counters.commits.store(number, Ordering::Release);
                }
                if number <= counters.durable.load(Ordering::Acquire) {
                    // Read-only, and everything it could have read is on disk already.
                    for reply in replies {
                        reply(Ok(()));
                    }
                    continue;
                }
                let batch = Committed {
                    needs: number,
                    replies,
                };
                if let Err(mpsc::SendError(batch)) = synced.send(batch) {
                    for reply in batch.replies {
                        reply(Err("syncer thread stopped".into()));
                    }
                }
            }
            Err(msg) => {
                let _ = exec_cached(&conn, "ROLLBACK");
                for reply in replies {
                    reply(Err(msg.clone()));
                }
            }
        }
    }
}

/// Answers committed batches once an fsync of the WAL file covers them.
fn syncer(wal: std::fs::File, batches: mpsc::Receiver<Committed>, counters: &Counters) {
    while let Ok(first) = batches.recv() {
        let mut ready = vec![first];
        while let Ok(b) = batches.try_recv() {
            ready.push(b);
        }
        let needs = ready.iter().map(|b| b.needs).max().unwrap_or(0);
        let synced = if counters.failed.load(Ordering::Acquire) {
            Err("an earlier fsync failed; restart the relay".to_owned())
        } else if needs <= counters.durable.load(Ordering::Acquire) {
            Ok(())
        } else {
            counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            match wal.sync_data() {
                Ok(()) => {
                    // Every batch received was committed before this fsync began.
                    counters.durable.store(needs, Ordering::Release);
                    Ok(())
                }
                Err(e) => {
                    counters.failed.store(true, Ordering::Release);
                    tracing::error!(error = %e, "fsync of the SQLite WAL failed; refusing further requests");
                    Err(format!("fsync failed: {e}"))
                }
            }
        };
        for batch in ready {
            for reply in batch.replies {
                reply(synced.clone());
            }
        }
    }
}

fn get_peer(conn: &Connection, client: &str) -> Result<Option<(Peer, u64)>, EngineError> {
    conn.prepare_cached(
        "SELECT client_id, identity_key, key_version, registered_at, last_seen, next_seq FROM peers WHERE client_id = ?1",
    )
    .map_err(storage)?
    .query_row(
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

/// Takes the next sequence number of `to`'s mailbox for an entry of `len` payload bytes from
/// `from`, counting it, unless a quota refuses it or `to` is unknown — then nothing is written
/// and the refusal is returned. `quota: None` (relay notices) counts against nothing.
fn reserve(
    conn: &Connection,
    to: &str,
    from: &str,
    len: usize,
    quota: Option<&SendQuota>,
) -> Result<i64, EngineError> {
    if let Some(q) = quota {
        let (count, bytes): (i64, i64) = conn
            .prepare_cached("SELECT count, bytes FROM senders WHERE recipient = ?1 AND sender = ?2")
            .map_err(storage)?
            .query_row(params![to, from], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(storage)?
            .unwrap_or((0, 0));
        if as_u64(count) >= q.sender_entries as u64
            || as_u64(bytes).saturating_add(len as u64) > q.sender_bytes
        {
            return if get_peer(conn, to)?.is_some() {
                Err(EngineError::SenderQuota)
            } else {
                Err(EngineError::UnknownPeer)
            };
        }
    }
    let (max_entries, max_bytes) = quota.map_or((u64::MAX / 2, u64::MAX / 2), |q| {
        (q.mailbox_entries as u64, q.mailbox_bytes)
    });
    let len = as_i64(len as u64);
    let seq: Option<i64> = conn
        .prepare_cached(
            "UPDATE peers SET next_seq = next_seq + 1, mailbox_count = mailbox_count + 1, \
             mailbox_bytes = mailbox_bytes + ?3 \
             WHERE client_id = ?1 AND mailbox_count < ?2 AND mailbox_bytes + ?3 <= ?4 RETURNING next_seq",
        )
        .map_err(storage)?
        .query_row(params![to, as_i64(max_entries), len, as_i64(max_bytes)], |r| {
            r.get(0)
        })
        .optional()
        .map_err(storage)?;
    match (seq, quota) {
        (Some(seq), _) => Ok(seq),
        // Tell the two refusals apart (the rare path).
        (None, Some(q)) if get_peer(conn, to)?.is_some() => Err(EngineError::MailboxFull {
            cap: q.mailbox_entries,
        }),
        (None, _) => Err(EngineError::UnknownPeer),
    }
}

/// Gives back what [`reserve`] took (the same request then failed before anything else).
fn unreserve(conn: &Connection, to: &str, len: usize) -> Result<(), EngineError> {
    conn.prepare_cached(
        "UPDATE peers SET next_seq = next_seq - 1, mailbox_count = mailbox_count - 1, \
         mailbox_bytes = mailbox_bytes - ?2 WHERE client_id = ?1",
    )
    .map_err(storage)?
    .execute(params![to, as_i64(len as u64)])
    .map_err(storage)?;
    Ok(())
}

/// Counts a stored message against its sender's quota in `to`'s mailbox.
fn count_sender(conn: &Connection, to: &str, from: &str, len: usize) -> Result<(), EngineError> {
    conn.prepare_cached(
        "INSERT INTO senders (recipient, sender, count, bytes) VALUES (?1, ?2, 1, ?3) \
         ON CONFLICT (recipient, sender) DO UPDATE SET count = count + 1, bytes = bytes + ?3",
    )
    .map_err(storage)?
    .execute(params![to, from, as_i64(len as u64)])
    .map_err(storage)?;
    Ok(())
}

/// Takes removed entries (`sender`, payload length, whether a message) off `recipient`'s counts.
fn uncount(conn: &Connection, recipient: &str, removed: &[(String, i64, bool)]) -> Result<(), EngineError> {
    if removed.is_empty() {
        return Ok(());
    }
    let bytes: i64 = removed.iter().map(|r| r.1).sum();
    conn.prepare_cached(
        "UPDATE peers SET mailbox_count = MAX(mailbox_count - ?2, 0), mailbox_bytes = MAX(mailbox_bytes - ?3, 0) \
         WHERE client_id = ?1",
    )
    .map_err(storage)?
    .execute(params![recipient, as_i64(removed.len() as u64), bytes])
    .map_err(storage)?;
    let mut per_sender: std::collections::BTreeMap<&str, (i64, i64)> = std::collections::BTreeMap::new();
    for (sender, len, _) in removed.iter().filter(|r| r.2) {
        let e = per_sender.entry(sender.as_str()).or_default();
        e.0 += 1;
        e.1 += len;
    }
    for (sender, (count, bytes)) in per_sender {
        conn.prepare_cached(
            "UPDATE senders SET count = count - ?3, bytes = bytes - ?4 WHERE recipient = ?1 AND sender = ?2",
        )
        .map_err(storage)?
        .execute(params![recipient, sender, count, bytes])
        .map_err(storage)?;
        conn.prepare_cached("DELETE FROM senders WHERE recipient = ?1 AND sender = ?2 AND count <= 0")
            .map_err(storage)?
            .execute(params![recipient, sender])
            .map_err(storage)?;
    }
    Ok(())
}

/// Writes a mailbox entry under a sequence number [`reserve`] gave.
fn insert_entry(
    conn: &Connection,
    to: &str,
    seq: i64,
    from: &str,
    kind: &EntryKind,
    payload: &[u8],
    (now, expires_at): (UnixTime, u64),
) -> Result<(), EngineError> {
    conn.prepare_cached(
        "INSERT INTO mailbox (recipient, seq, sender, kind, payload, ts, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .map_err(storage)?
    .execute(params![to, seq, from, to_json(kind)?.as_str(), payload, as_i64(now.as_nanos() / 1_000_000), as_i64(expires_at)])
    .map_err(storage)?;
    Ok(())
}

/// Refuses a send sealed for another key version than `to`'s current one (before any write).
fn expect_key_version(c: &Connection, to: &str, expected: u32) -> Result<(), EngineError> {
    let (peer, _) = get_peer(c, to)?.ok_or(EngineError::UnknownPeer)?;
    if peer.key_version == expected {
        Ok(())
    } else {
        Err(EngineError::PeerKeyChanged {
            current: peer.key_version,
        })
    }
}

/// One request's commit (see [`Engine::commit`]), inside the writer's transaction.
///
/// Every refusal comes before anything is written (see `SqliteEngine::call`): a send first
/// reserves its slot in the recipient's mailbox (which refuses without writing), and gives it
/// back if the session's compare-and-swap then fails.
fn commit_in(c: &Connection, cm: &Commit) -> Result<Outcome, EngineError> {
    let key = cm.key_id.to_vec();
    let me = cm.client.as_str();
    let reserved = match &cm.op {
        Op::Send {
            to,
            quota,
            payload,
            key_version,
            ..
        } => {
            if let Some(expected) = *key_version {
                expect_key_version(c, to.as_str(), expected)?;
            }
            Some((
                to.as_str(),
                reserve(c, to.as_str(), me, payload.len(), Some(quota))?,
            ))
        }
        Op::PublishKey { .. } if get_peer(c, me)?.is_none() => return Err(EngineError::UnknownPeer),
        _ => None,
    };
    let updated = c
        .prepare_cached(
            "UPDATE sessions SET data = ?2, version = version + 1 WHERE key_id = ?1 AND version = ?3",
        )
        .map_err(storage)?
        .execute(params![key, cm.session.to_bytes(), as_i64(cm.expected_version)])
        .map_err(storage)?;
    if updated != 1 {
        if let (Some((to, _)), Op::Send { payload, .. }) = (reserved, &cm.op) {
            unreserve(c, to, payload.len())?;
        }
        return Err(EngineError::Conflict);
    }
    let now_s = as_i64(cm.now.as_secs());
    let outcome = match (&cm.op, reserved) {
        (
            Op::Send {
                payload, ttl_secs, ..
            },
            Some((to, seq)),
        ) => {
            let expires_at = cm.now.as_secs().saturating_add(*ttl_secs);
            insert_entry(c, to, seq, me, &EntryKind::Message, payload, (cm.now, expires_at))?;
            count_sender(c, to, me, payload.len())?;
            Outcome::Sent {
                seq: as_u64(seq),
                timestamp_ms: cm.now.as_nanos() / 1_000_000,
            }
        }
        (Op::Ack { seqs }, _) => {
            let mut delete = c
                .prepare_cached(
                    "DELETE FROM mailbox WHERE recipient = ?1 AND seq = ?2 AND (?4 IS NULL OR ts = ?4) \
                     RETURNING sender, LENGTH(payload), kind = ?3",
                )
                .map_err(storage)?;
            let message_kind = to_json(&EntryKind::Message)?;
            let mut gone = Vec::new();
            for s in seqs {
                let row: Option<(String, i64, bool)> = delete
                    .query_row(
                        params![me, as_i64(s.seq), message_kind.as_str(), s.ts.map(as_i64)],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(storage)?;
                gone.extend(row);
            }
            drop(delete);
            uncount(c, me, &gone)?;
            Outcome::Acked { removed: gone.len() }
        }
        (Op::PublishKey { key }, _) => {
            let (peer, _) = get_peer(c, me)?
                .ok_or_else(|| EngineError::Storage("peer vanished during its commit".into()))?;
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
        (Op::Touch, _) => Outcome::Done,
        (Op::Send { .. }, None) => {
            return Err(EngineError::Storage("send without a reserved slot".into()));
        }
    };
    c.prepare_cached("UPDATE peers SET last_seen = ?2 WHERE client_id = ?1 AND last_seen <> ?2")
        .map_err(storage)?
        .execute(params![me, now_s])
        .map_err(storage)?;
    if cm.keep_outcome {
        c.prepare_cached("INSERT OR REPLACE INTO outcomes (msg_id, key_id, data) VALUES (?1, ?2, ?3)")
            .map_err(storage)?
            .execute(params![as_i64(cm.msg_id), key, to_json(&outcome)?.as_str()])
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
                    to_json(&pending)?.as_str(),
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
                params![pending.server_nonce.to_vec(), to_json(&pending)?.as_str()],
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
            if owner_key_id(c, &key.client_id)?.is_some_and(|o| o != key.key_id) {
                return Err(EngineError::ClientIdTaken);
            }
            c.execute(
                "INSERT OR REPLACE INTO auth_keys (key_id, client_id, data) VALUES (?1, ?2, ?3)",
                params![key.key_id.to_vec(), key.client_id.as_str(), to_json(&key)?.as_str()],
            )
            .map_err(storage)?;
            c.execute(
                "INSERT OR REPLACE INTO sessions (key_id, data, version) VALUES (?1, ?2, 0)",
                params![key.key_id.to_vec(), session.to_bytes()],
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
        old_key_id: [u8; 8],
        now: UnixTime,
    ) -> Result<(), EngineError> {
        self.call(move |c| {
            if owner_key_id(c, &key.client_id)?.as_deref() != Some(old_key_id.as_slice()) {
                return Err(EngineError::ClientIdTaken);
            }
            c.execute(
                "DELETE FROM sessions WHERE key_id = ?1",
                params![old_key_id.to_vec()],
            )
            .map_err(storage)?;
            c.execute(
                "DELETE FROM auth_keys WHERE key_id = ?1",
                params![old_key_id.to_vec()],
            )
            .map_err(storage)?;
            c.execute(
                "INSERT INTO auth_keys (key_id, client_id, data) VALUES (?1, ?2, ?3)",
                params![
                    key.key_id.to_vec(),
                    key.client_id.as_str(),
                    to_json(&key)?.as_str()
                ],
            )
            .map_err(storage)?;
            c.execute(
                "INSERT OR REPLACE INTO sessions (key_id, data, version) VALUES (?1, ?2, 0)",
                params![key.key_id.to_vec(), session.to_bytes()],
            )
            .map_err(storage)?;
            // A new registration as far as expiry goes (the unpublished hour counts from now).
            c.execute(
                "UPDATE peers SET identity_key = NULL, registered_at = ?2, last_seen = ?2 WHERE client_id = ?1",
                params![key.client_id.as_str(), as_i64(now.as_secs())],
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

    async fn session(
        &self,
        key_id: [u8; 8],
        _client: &ClientId,
    ) -> Result<Option<SessionRecord>, EngineError> {
        self.call(move |c| {
            let row: Option<(rusqlite::types::Value, i64)> = c
                .prepare_cached("SELECT data, version FROM sessions WHERE key_id = ?1")
                .map_err(storage)?
                .query_row(params![key_id.to_vec()], |r| Ok((r.get(0)?, r.get(1)?)))
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
        key_id: [u8; 8],
        _client: &ClientId,
        msg_id: u64,
    ) -> Result<Option<Outcome>, EngineError> {
        self.call(move |c| {
            json_row(
                c,
                "SELECT data FROM outcomes WHERE msg_id = ?1 AND key_id = ?2",
                params![as_i64(msg_id), key_id.to_vec()],
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
    ) -> Result<Vec<[u8; 8]>, EngineError> {
        self.call(move |c| {
            let secs = now.as_secs();
            let unpublished = as_i64(secs.saturating_sub(policy.unpublished_secs));
            let idle = as_i64(secs.saturating_sub(policy.idle_secs));
            let names: Vec<String> = c
                .prepare_cached(
                    "SELECT client_id FROM peers WHERE mailbox_count = 0 AND \
                     ((identity_key IS NULL AND registered_at <= ?1) OR last_seen <= ?2) LIMIT ?3",
                )
                .map_err(storage)?
                .query_map(params![unpublished, idle, as_i64(max as u64)], |r| r.get(0))
                .map_err(storage)?
                .collect::<Result<_, _>>()
                .map_err(storage)?;
            let mut keys = Vec::new();
            for name in names {
                let key: Option<Vec<u8>> = c
                    .query_row(
                        "DELETE FROM auth_keys WHERE client_id = ?1 RETURNING key_id",
                        params![name],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(storage)?;
                c.execute("DELETE FROM peers WHERE client_id = ?1", params![name])
                    .map_err(storage)?;
                c.execute("DELETE FROM senders WHERE recipient = ?1", params![name])
                    .map_err(storage)?;
                if let Some(key) = key {
                    c.execute("DELETE FROM sessions WHERE key_id = ?1", params![key])
                        .map_err(storage)?;
                    // Its outcomes go with the hourly purge: no one holds the key to ask for them.
                    keys.extend(<[u8; 8]>::try_from(key.as_slice()).ok());
                }
            }
            Ok(keys)
        })
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
            // msg_ids carry the client's clock, which the session holds within minutes of ours.
            let oldest = now.as_secs().saturating_sub(OUTCOME_TTL_SECS) << 32;
            c.execute("DELETE FROM outcomes WHERE msg_id < ?1", params![as_i64(oldest)])
                .map_err(storage)?;
            let mut stmt = c
                .prepare(
                    "DELETE FROM mailbox WHERE expires_at <= ?1 RETURNING recipient, seq, sender, kind, LENGTH(payload)",
                )
                .map_err(storage)?;
            let rows: Vec<(String, i64, String, String, i64)> = stmt
                .query_map(params![secs], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(storage)?
                .collect::<Result<_, _>>()
                .map_err(storage)?;
            drop(stmt);
            let mut per_recipient: std::collections::BTreeMap<&str, Vec<(String, i64, bool)>> =
                std::collections::BTreeMap::new();
            for (to, _, from, kind, len) in &rows {
                let message = matches!(from_json::<EntryKind>(kind), Ok(EntryKind::Message));
                per_recipient
                    .entry(to.as_str())
                    .or_default()
                    .push((from.clone(), *len, message));
            }
            for (to, removed) in &per_recipient {
                uncount(c, to, removed)?;
            }
            let mut notified = Vec::new();
            for (to, seq, from, kind, _) in rows {
                if !matches!(from_json::<EntryKind>(&kind), Ok(EntryKind::Message)) {
                    continue;
                }
                let (Ok(sender), Ok(to)) = (ClientId::new(&from), ClientId::new(&to)) else {
                    continue;
                };
                let notice = EntryKind::Expired {
                    to,
                    message_seq: as_u64(seq),
                };
                // A sender that is not (or no longer) registered has no mailbox to tell.
                let seq = match reserve(c, sender.as_str(), RELAY_SENDER, 0, None) {
                    Ok(seq) => seq,
                    Err(EngineError::UnknownPeer) => continue,
                    Err(e) => return Err(e),
                };
                insert_entry(
                    c,
                    sender.as_str(),
                    seq,
                    RELAY_SENDER,
                    &notice,
                    &[],
                    (now, NEVER_EXPIRES),
                )?;
                notified.push(sender);
            }
            Ok(notified)
        })
        .await
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
