//! Starting a relay: the data directory, the server key file, the storage engine, and the
//! checks that refuse to start on a damaged store.

use std::path::Path;
use std::sync::Arc;

use mtproto_crypto::{rand_core::OsRng, ServerSigningKey};
use relay_core::{Engine, MemoryEngine, Relay, SqliteEngine};

use crate::{metrics, Command, Config, EngineKind};

/// Runs a [`Command`]: returns the line to print, or why it failed.
///
/// # Errors
/// The engine's refusal, as text for the operator.
pub fn run_command(config: &Config, command: &Command) -> Result<String, String> {
    let db = config.data_dir.join("relay.db");
    let show = |what: &str, r: relay_core::sqlite_backup::BackupReport| {
        format!(
            "{what}: {} accounts, {} messages waiting, {} bytes",
            r.accounts, r.messages, r.bytes
        )
    };
    match command {
        Command::Backup { to } => relay_core::sqlite_backup::backup(&db, to)
            .map(|r| show(&format!("backed up {} to {}", db.display(), to.display()), r))
            .map_err(|e| e.to_string()),
        Command::Restore { from, replace } => {
            let report =
                relay_core::sqlite_backup::restore(from, &db, *replace).map_err(|e| e.to_string())?;
            let key = if config.key_path().exists() {
                String::new()
            } else {
                format!(
                    "\nno server key at {}: put the key file of the backed-up relay there before starting",
                    config.key_path().display()
                )
            };
            Ok(format!(
                "{}{key}",
                show(
                    &format!("restored {} from {}", db.display(), from.display()),
                    report
                )
            ))
        }
    }
}

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory or key file could not be used.
    #[error("{0}")]
    Io(String),
    /// The storage engine failed to open.
    #[error("storage: {0}")]
    Engine(String),
    /// The limits given do not fit together.
    #[error("configuration: {0}")]
    Config(String),
    /// The database is gone while its server key remains.
    #[error("{0}")]
    DataLost(String),
}

/// Makes `dir` (created if missing) and the files in it readable by the owner only: 0700 for
/// the directory, 0600 for its files. Existing ones with wider permissions are narrowed, with a
/// warning (they may have been read already).
///
/// # Errors
/// [`StartError::Io`] when the directory cannot be created or its permissions set.
pub fn secure_data_dir(dir: &Path) -> Result<(), StartError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
    narrow_permissions(dir, 0o700)?;
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, &e))? {
        let path = entry.map_err(|e| io_error(dir, &e))?.path();
        if path.is_file() {
            narrow_permissions(&path, 0o600)?;
        }
    }
    Ok(())
}

fn io_error(p: &Path, e: &std::io::Error) -> StartError {
    StartError::Io(format!("{}: {e}", p.display()))
}

/// Takes every permission beyond `mode` away from `path`, with a warning when there were any.
fn narrow_permissions(path: &Path, mode: u32) -> Result<(), StartError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, &e))?;
        let now = meta.permissions().mode() & 0o777;
        if now & !mode != 0 {
            tracing::warn!(
                path = %path.display(),
                was = format!("{now:o}"),
                now = format!("{mode:o}"),
                "data file was readable by others; narrowed to owner-only"
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_error(path, &e))?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Loads the server's signing key, creating it (owner-only permissions) on first start.
///
/// # Errors
/// [`StartError::Io`] when the file cannot be read, created or holds no valid key.
pub fn load_or_create_key(path: &Path) -> Result<ServerSigningKey, StartError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // Whatever the engine: the key file is the one secret that unseals stored keys.
            narrow_permissions(path, 0o600)?;
            let seed = hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| {
                    StartError::Io(format!("{}: not a 64-hex-digit Ed25519 seed", path.display()))
                })?;
            Ok(ServerSigningKey::from_seed(seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                secure_data_dir(dir)?;
            }
            let key = ServerSigningKey::generate(&mut OsRng);
            write_private(path, &hex::encode(key.seed()))
                .map_err(|e| StartError::Io(format!("{}: {e}", path.display())))?;
            Ok(key)
        }
        Err(e) => Err(StartError::Io(format!("{}: {e}", path.display()))),
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Refuses a database that is missing or empty while the server key was already there: the
/// store this key served was lost, and starting empty would silently drop every account and
/// waiting message. `--start-fresh` says to go on anyway.
///
/// # Errors
/// [`StartError::DataLost`].
pub fn check_database(db: &Path, key_existed: bool, start_fresh: bool) -> Result<(), StartError> {
    let state = match std::fs::metadata(db) {
        Ok(m) if m.len() > 0 && key_existed => return Ok(()),
        Ok(m) if m.len() > 0 => {
            // The other way round: data without the key that sealed its auth keys. A new key
            // would make every stored account unusable (and every pinned client refuse us).
            return Err(StartError::DataLost(format!(
                "{} holds data, but its server key is missing: restore the key file (--key-file, \
                 default DATA_DIR/server_key) from a backup; a new key cannot open the stored \
                 auth keys. To begin anew, move the database away.",
                db.display()
            )));
        }
        Ok(_) => "is empty",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "is missing",
        Err(e) => return Err(io_error(db, &e)),
    };
    if !key_existed {
        return Ok(()); // a first start
    }
    if start_fresh {
        tracing::warn!(path = %db.display(), "the database {state}; starting with an empty store (--start-fresh)");
        return Ok(());
    }
    Err(StartError::DataLost(format!(
        "{} {state}, but the server key beside it exists: this relay's data was lost or moved. \
         Restore the database from a backup, or start with --start-fresh to begin with an empty \
         store (every client must register again; undelivered messages are gone).",
        db.display()
    )))
}

/// Opens the configured engine.
///
/// # Errors
/// [`StartError`] when the data directory or database cannot be opened.
pub async fn open_engine(config: &Config) -> Result<Arc<dyn Engine>, StartError> {
    match config.engine {
        EngineKind::Memory => Ok(Arc::new(MemoryEngine::new())),
        EngineKind::Redis => {
            let engine = if config.redis_cluster {
                let nodes: Vec<String> = config
                    .redis_url
                    .split(',')
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                    .collect();
                relay_core::RedisEngine::connect_cluster(&nodes, &config.redis_prefix).await
            } else {
                relay_core::RedisEngine::connect(&config.redis_url, &config.redis_prefix).await
            }
            .map_err(|e| StartError::Engine(format!("{}: {e}", config.redis_url)))?;
            Ok(Arc::new(engine))
        }
        EngineKind::Sqlite => {
            secure_data_dir(&config.data_dir)?;
            let db = config.data_dir.join("relay.db");
            // Created owner-only before SQLite opens it; SQLite gives its -wal and -shm files
            // the database file's permissions.
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&db)
                    .map_err(|e| StartError::Io(format!("{}: {e}", db.display())))?;
            }
            let engine = SqliteEngine::open(&db).map_err(|e| StartError::Engine(e.to_string()))?;
            secure_data_dir(&config.data_dir)?;
            Ok(Arc::new(engine))
        }
    }
}

/// Builds the relay from the configuration.
///
/// # Errors
/// [`StartError`] from the key file or the engine.
pub async fn build_relay(config: &Config) -> Result<Arc<Relay>, StartError> {
    config.relay_config().validate().map_err(StartError::Config)?;
    let key_existed = config.key_path().exists();
    if config.engine == EngineKind::Sqlite {
        // Checked before a key is created: a refused start leaves no new key behind.
        check_database(&config.data_dir.join("relay.db"), key_existed, config.start_fresh)?;
    }
    let key = load_or_create_key(&config.key_path())?;
    let engine = open_engine(config).await?;
    Ok(Arc::new(
        Relay::new(engine, key, config.relay_config()).with_observer(Arc::new(metrics::RelayObserver)),
    ))
}
