//! Backups of a running SQLite relay and their restore (`docs/deployment.md` "Backups").
//!
//! [`backup`] opens the database read-only beside the running relay (WAL mode lets a reader and
//! the writer work at once) and copies it with SQLite's online backup API in one step, inside
//! one read transaction: the copy is the database as of one commit, never half of one. The copy
//! is written owner-only to a temporary file, checked (`PRAGMA integrity_check`), synced and
//! renamed into place. [`restore`] refuses a data directory a relay is using (its `relay.lock`
//! is held), checks the backup the same way, removes a stale WAL beside the database and moves
//! the copy in. Neither touches the server key: a backup holds auth keys sealed under it, so
//! the key file is backed up apart (and kept apart: together they hold every secret).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{lock_beside, storage, SCHEMA_VERSION};
use crate::EngineError;

/// What a backup or restore holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    /// Accounts (auth keys).
    pub accounts: u64,
    /// Mailbox entries.
    pub messages: u64,
    /// Bytes of the copy.
    pub bytes: u64,
}

/// Copies the database at `db` (a relay may be running on it) to `to`, which must not exist.
///
/// # Errors
/// [`EngineError::Storage`] when `to` exists, the source cannot be read, or the copy fails its
/// integrity check (nothing is left at `to` then).
pub fn backup(db: &Path, to: &Path) -> Result<BackupReport, EngineError> {
    if to.exists() {
        return Err(EngineError::Storage(format!(
            "{} exists; give a new file",
            to.display()
        )));
    }
    if !db.exists() {
        return Err(EngineError::Storage(format!("no database at {}", db.display())));
    }
    let src = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(storage)?;
    src.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(storage)?;
    let tmp = temp_beside(to);
    // Made (new, 0600) before anything that could fail and remove it: what was there before is
    // never removed.
    drop(create_private(&tmp)?);
    let result = (|| {
        let mut dst = Connection::open(&tmp).map_err(storage)?;
        {
            use rusqlite::backup::StepResult;
            let b = rusqlite::backup::Backup::new(&src, &mut dst).map_err(storage)?;
            // Every page in one step (-1): one read transaction on the source, so one commit's
            // state. Busy or locked (a checkpoint at that moment): try again, a bounded number
            // of times.
            let mut tries = 0;
            loop {
                match b.step(-1).map_err(storage)? {
                    StepResult::Done => break,
                    _ if tries < 100 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    other => {
                        return Err(EngineError::Storage(format!(
                            "the database stayed busy ({other:?}); try again"
                        )))
                    }
                }
            }
        }
        let report = check(&dst, &tmp)?;
        dst.close().map_err(|(_, e)| storage(e))?;
        sync(&tmp)?;
        std::fs::rename(&tmp, to).map_err(storage)?;
        sync_dir(to);
        Ok(report)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Puts the backup `from` in place as the database at `db`. Refused while a relay holds the
/// data directory, and — unless `replace` — when a database is already there.
///
/// # Errors
/// [`EngineError::Storage`] for each refusal, and when the backup fails its integrity check or
/// was written by a newer relay.
pub fn restore(from: &Path, db: &Path, replace: bool) -> Result<BackupReport, EngineError> {
    // Held until the end: no relay can start on the directory halfway through.
    let _lock = lock_beside(db)
        .map_err(|e| EngineError::Storage(format!("cannot restore into a live store: {e}")))?;
    let exists = std::fs::metadata(db).is_ok_and(|m| m.len() > 0);
    if exists && !replace {
        return Err(EngineError::Storage(format!(
            "{} exists; pass --replace to overwrite it (its data is lost)",
            db.display()
        )));
    }
    let tmp = temp_beside(db);
    // Copied into the 0600 file made here (fs::copy would give it the backup's mode).
    let mut out = create_private(&tmp)?;
    let result = (|| {
        let mut src = std::fs::File::open(from)
            .map_err(|e| EngineError::Storage(format!("{}: {e}", from.display())))?;
        std::io::copy(&mut src, &mut out)
            .map_err(|e| EngineError::Storage(format!("{}: {e}", from.display())))?;
        drop(out);
        let conn = Connection::open(&tmp).map_err(storage)?;
        let report = check(&conn, &tmp)?;
        conn.close().map_err(|(_, e)| storage(e))?;
        sync(&tmp)?;
        // A WAL left by the old database would be replayed into the restored one.
        for ext in ["db-wal", "db-shm"] {
            let _ = std::fs::remove_file(db.with_extension(ext));
        }
        std::fs::rename(&tmp, db).map_err(storage)?;
        sync_dir(db);
        Ok(report)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Integrity, schema version and counts of the copy at `path`.
fn check(conn: &Connection, path: &Path) -> Result<BackupReport, EngineError> {
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(storage)?;
    if ok != "ok" {
        return Err(EngineError::Storage(format!(
            "{}: integrity check: {ok}",
            path.display()
        )));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(storage)?;
    if version > SCHEMA_VERSION {
        return Err(EngineError::Storage(format!(
            "{}: schema version {version} is newer than this relay's {SCHEMA_VERSION}",
            path.display()
        )));
    }
    let count = |sql: &str| -> Result<u64, EngineError> {
        conn.query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(|e| EngineError::Storage(format!("{}: not a relay database: {e}", path.display())))
    };
    Ok(BackupReport {
        accounts: count("SELECT COUNT(*) FROM auth_keys")?,
        messages: count("SELECT COUNT(*) FROM mailbox")?,
        bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
    })
}

fn temp_beside(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

/// Creates `path` new and empty with mode 0600 (the copy holds sealed keys and every mailbox).
/// Refused if anything is there already — a file (whose mode would stay) or a symlink (which
/// would be followed): `create_new` is `O_CREAT | O_EXCL`, which never follows a link.
fn create_private(path: &Path) -> Result<std::fs::File, EngineError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|e| {
        EngineError::Storage(format!(
            "{}: {e} (a leftover of an interrupted run? remove it and try again)",
            path.display()
        ))
    })
}

fn sync(path: &Path) -> Result<(), EngineError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| EngineError::Storage(format!("{}: {e}", path.display())))
}

/// Makes a rename durable (best effort: not every filesystem lets a directory be synced).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
}
