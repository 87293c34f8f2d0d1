//! The writer thread (group commit) and the syncer thread (pipelined fsync).

use super::*;

pub(super) type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A request: run on the connection inside the batch's transaction, or (given `None`) not run at
/// all and only answered, when the batch cannot start.
pub(super) type Job = Box<dyn FnOnce(Option<&Connection>) -> Ran + Send>;

/// One request, run.
pub(super) struct Ran {
    /// Answers the request once its batch is committed (or failed).
    pub(super) reply: Reply,
    /// SQLite failed under it: the batch's transaction must be rolled back.
    pub(super) broke: bool,
}

/// Most requests folded into one transaction.
pub(super) const MAX_BATCH: usize = 512;

/// How long a write probe's result stands (so that `/healthz`, which anyone may call, costs at
/// most one small write and fsync a second).
pub(super) const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What the writer and the syncer have done, for `/healthz` and tests.
#[derive(Default)]
pub(super) struct Counters {
    /// Transactions committed that wrote something (to the WAL, not yet necessarily on disk).
    pub(super) commits: AtomicU64,
    /// Requests run.
    pub(super) jobs: AtomicU64,
    /// Committed transactions known to be on disk (the syncer's fsync covered them).
    pub(super) durable: AtomicU64,
    /// fsync calls.
    pub(super) fsyncs: AtomicU64,
    /// Set when an fsync failed: nothing is accepted any more.
    pub(super) failed: AtomicBool,
}

/// One committed batch waiting for its fsync.
pub(super) struct Committed {
    /// The write commit that must be on disk before the batch is answered: its own, or for
    /// a batch that only read, the last one before it (whose data it may have read).
    pub(super) needs: u64,
    pub(super) replies: Vec<Reply>,
}

/// `relay.db` → `relay.db-wal`.
pub(super) fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Makes a directory's entries (a newly created file) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), EngineError> {
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
pub(super) fn exec_cached(conn: &Connection, sql: &str) -> Result<(), String> {
    conn.prepare_cached(sql)
        .and_then(|mut st| st.execute([]).map(|_| ()))
        .map_err(|e| e.to_string())
}

pub(super) fn writer(
    conn: Connection,
    jobs: mpsc::Receiver<Job>,
    synced: mpsc::Sender<Committed>,
    counters: &Counters,
) {
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
pub(super) fn syncer(wal: std::fs::File, batches: mpsc::Receiver<Committed>, counters: &Counters) {
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
