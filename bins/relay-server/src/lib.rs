//! The relay server's wiring: configuration, the server key file, engines, HTTP routes and the
//! one place where relay errors become HTTP statuses. The binary (`main.rs`) only reads the
//! configuration, sets up logging, binds and calls [`run`].
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Service as _;
use actix_web::{http::StatusCode, web, App, HttpResponse};
use mtproto_crypto::{rand_core::OsRng, ServerSigningKey};
use relay_api::{Endpoint, EnvelopeRequest, ErrorBody, ErrorCode};
use relay_core::{
    limits::{Rate, SourceLimitsConfig, Step, WorkPolicy},
    AccountExpiry, Engine, MemoryEngine, Relay, RelayConfig, RelayError, SendQuota, SqliteEngine,
};
use serde::Serialize;

mod assets;
mod conn;
pub mod metrics;
pub mod tls;

pub use conn::{client_ip, raise_open_file_limit, BodyTimedOut, ConnLimits, OpenFileLimit};

/// Which storage engine to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// SQLite in the data directory: durable, the default.
    Sqlite,
    /// In memory: nothing survives a restart (tests, demos).
    Memory,
    /// Redis: several relay nodes share one user base (`--redis-url`).
    Redis,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the request id as a field of the span.
    Json,
}

/// What `relay-server` does besides serving (`docs/deployment.md` "Backups").
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Copies the SQLite database of `--data-dir` to FILE — consistent (one commit's state)
    /// while the relay keeps running. The server key is not in it: back the key file up apart.
    Backup {
        /// The new file (must not exist).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
    /// Puts a backup in place as the database of `--data-dir`. Refused while a relay runs on
    /// the directory, and when a database is already there unless `--replace`.
    Restore {
        /// The backup file.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// Overwrite an existing database (its data is lost).
        #[arg(long)]
        replace: bool,
    },
}

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

/// Command-line and environment configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "relay-server",
    version,
    about = "MTProto-style end-to-end encrypted message relay"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "RELAY_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Directory for the database and the server key.
    #[arg(long, env = "RELAY_DATA_DIR", default_value = "relay-data")]
    pub data_dir: PathBuf,
    /// Storage engine.
    #[arg(long, env = "RELAY_ENGINE", value_enum, default_value = "sqlite")]
    pub engine: EngineKind,
    /// Server signing key file (created on first start, mode 0600). Default: DATA_DIR/server_key.
    #[arg(long, env = "RELAY_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Most entries in one mailbox.
    #[arg(long, env = "RELAY_MAILBOX_CAP", default_value_t = 10_000)]
    pub mailbox_cap: usize,
    /// Most payload bytes in one mailbox.
    #[arg(long, env = "RELAY_MAILBOX_BYTES", default_value_t = 64 << 20)]
    pub mailbox_bytes: u64,
    /// Most messages one sender may have waiting in one mailbox.
    #[arg(long, env = "RELAY_SENDER_CAP", default_value_t = 500)]
    pub sender_cap: usize,
    /// Most payload bytes one sender may have waiting in one mailbox.
    #[arg(long, env = "RELAY_SENDER_BYTES", default_value_t = 4 << 20)]
    pub sender_bytes: u64,
    /// Authenticated requests one account may make at once (a poll costs one more per 16
    /// acknowledgements it carries).
    #[arg(long, env = "RELAY_ACCOUNT_BURST", default_value_t = 300)]
    pub account_burst: u32,
    /// Authenticated requests per second one account may make in the long run.
    #[arg(long, env = "RELAY_ACCOUNT_RATE", default_value_t = 30.0)]
    pub account_rate: f64,
    /// Most acknowledgements in one poll.
    #[arg(long, env = "RELAY_MAX_ACKS", default_value_t = 1024)]
    pub max_acks: usize,
    /// Most payload bytes in one poll answer (at least one message is always sent).
    #[arg(long, env = "RELAY_POLL_BYTES", default_value_t = 256 << 10)]
    pub poll_bytes: usize,
    /// An account that publishes no identity key is removed (and its name freed) after this
    /// many seconds.
    #[arg(long, env = "RELAY_UNPUBLISHED_ACCOUNT_TTL", default_value_t = 3600)]
    pub unpublished_account_ttl_secs: u64,
    /// An account with no request for this many seconds and no mail waiting is removed (and its
    /// name freed).
    #[arg(long, env = "RELAY_IDLE_ACCOUNT_TTL", default_value_t = 180 * 24 * 3600)]
    pub idle_account_ttl_secs: u64,
    /// Proof-of-work bits asked of every new handshake (0: none; each bit doubles the
    /// client's expected work).
    #[arg(long, env = "RELAY_POW_BITS", default_value_t = 14)]
    pub pow_bits: u8,
    /// The most proof-of-work bits asked under load (at most 24).
    #[arg(long, env = "RELAY_POW_MAX_BITS", default_value_t = 22)]
    pub pow_max_bits: u8,
    /// Handshakes per second on this node above which the proof of work grows (one bit per
    /// doubling of the rate).
    #[arg(long, env = "RELAY_POW_CALM_RATE", default_value_t = 50)]
    pub pow_calm_rate: u32,
    /// Handshake steps one source may make at once (a handshake is three).
    #[arg(long, env = "RELAY_HANDSHAKE_BURST", default_value_t = 30)]
    pub handshake_burst: u32,
    /// Handshake steps per second one source may make in the long run.
    #[arg(long, env = "RELAY_HANDSHAKE_RATE", default_value_t = 2.0)]
    pub handshake_rate: f64,
    /// Registrations (completed handshakes) one source may make at once.
    #[arg(long, env = "RELAY_REGISTER_BURST", default_value_t = 10)]
    pub register_burst: u32,
    /// Registrations per hour one source may make in the long run.
    #[arg(long, env = "RELAY_REGISTER_PER_HOUR", default_value_t = 120.0)]
    pub register_per_hour: f64,
    /// Handshakes one source may have pending at once.
    #[arg(long, env = "RELAY_PENDING_PER_SOURCE", default_value_t = 16)]
    pub pending_per_source: usize,
    /// Seconds between housekeeping runs (expired messages; every tenth run, unused accounts).
    #[arg(long, env = "RELAY_PURGE_INTERVAL", default_value_t = 30)]
    pub purge_interval_secs: u64,
    /// Address for the operator-only Prometheus metrics (`GET /metrics`) and counters
    /// (`GET /stats`); off unless given. Keep it off the public network.
    #[arg(long, env = "RELAY_METRICS_BIND")]
    pub metrics_bind: Option<String>,
    /// Start even though the server key exists and the database is missing or empty (its data
    /// was lost): begin with an empty store. Clients must register again; undelivered messages
    /// are gone.
    #[arg(long, env = "RELAY_START_FRESH", default_value_t = false)]
    pub start_fresh: bool,
    /// Serve HTTPS with this PEM certificate chain (with `--tls-key`); reloaded on SIGHUP.
    #[arg(long, env = "RELAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, env = "RELAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// With TLS: also listen for plain HTTP here and redirect every request to HTTPS (308).
    #[arg(long, env = "RELAY_TLS_REDIRECT_BIND", requires = "tls_cert")]
    pub tls_redirect_bind: Option<String>,
    /// Log lines as text (for people) or JSON (one object a line, for log collectors).
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Instead of serving: back up or restore the SQLite store of `--data-dir`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Message time to live, seconds.
    #[arg(long, env = "RELAY_MESSAGE_TTL", default_value_t = 7 * 24 * 3600)]
    pub message_ttl_secs: u64,
    /// Largest end-to-end payload, bytes.
    #[arg(long, env = "RELAY_MAX_PAYLOAD", default_value_t = 64 * 1024)]
    pub max_payload: usize,
    /// Most handshakes pending at once.
    #[arg(long, env = "RELAY_MAX_PENDING_HANDSHAKES", default_value_t = 10_000)]
    pub max_pending_handshakes: usize,
    /// Longest long-poll, seconds.
    #[arg(long, env = "RELAY_POLL_MAX", default_value_t = 30)]
    pub poll_max_secs: u64,
    /// Redis URL for `--engine redis`; with `--redis-cluster`, a comma-separated list of
    /// cluster nodes to start from (one is enough, more survive one being down).
    #[arg(long, env = "RELAY_REDIS_URL", default_value = "redis://127.0.0.1:6379/0")]
    pub redis_url: String,
    /// The Redis at `--redis-url` is a Redis Cluster.
    #[arg(long, env = "RELAY_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,
    /// Key prefix in Redis (several deployments can share one Redis).
    #[arg(long, env = "RELAY_REDIS_PREFIX", default_value = "mr")]
    pub redis_prefix: String,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "RELAY_WORKERS")]
    pub workers: Option<usize>,
    /// Also serve `POST /echo` (a plain JSON echo, for load-test comparisons).
    #[arg(long, env = "RELAY_ECHO", default_value_t = false)]
    pub echo: bool,
    // Connections and timeouts (`conn.rs`, docs/deployment.md).
    /// Seconds a new connection has to send its request head (request line and headers).
    #[arg(long, env = "RELAY_HEADER_TIMEOUT", default_value_t = conn::DEFAULT_HEADER_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Seconds a request has to send its body, from the end of its head; later: 408.
    #[arg(long, env = "RELAY_BODY_TIMEOUT", default_value_t = conn::DEFAULT_BODY_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,
    /// Seconds an idle kept-alive connection stays open (0: close after each answer).
    #[arg(long, env = "RELAY_KEEP_ALIVE", default_value_t = conn::DEFAULT_KEEP_ALIVE_SECS)]
    pub keep_alive_secs: u64,
    /// Seconds to finish closing a connection (flushing the last answer) before dropping it.
    #[arg(long, env = "RELAY_DISCONNECT_TIMEOUT", default_value_t = conn::DEFAULT_DISCONNECT_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub disconnect_timeout_secs: u64,
    /// Most connections open at once from one source (an IPv4 address or an IPv6 /64); more
    /// are closed at accept. Trusted proxies are exempt.
    #[arg(long, env = "RELAY_MAX_CONNS_PER_SOURCE", default_value_t = conn::DEFAULT_MAX_CONNS_PER_SOURCE,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_conns_per_source: usize,
    /// Most connections open at once in all (lowered to fit the open-file limit); more are
    /// closed at accept.
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", default_value_t = conn::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// A reverse proxy's address (repeatable; env: comma-separated): exempt from the
    /// per-source cap, and its `X-Forwarded-For` names the client.
    #[arg(long = "trusted-proxy", env = "RELAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpAddr>,
}

impl Config {
    /// The relay limits from this configuration.
    pub fn relay_config(&self) -> RelayConfig {
        let poll_max = Duration::from_secs(self.poll_max_secs.max(1));
        RelayConfig {
            max_pending_handshakes: self.max_pending_handshakes,
            quota: SendQuota {
                mailbox_entries: self.mailbox_cap,
                mailbox_bytes: self.mailbox_bytes,
                sender_entries: self.sender_cap,
                sender_bytes: self.sender_bytes,
            },
            poll_bytes: self.poll_bytes,
            accounts: AccountExpiry {
                unpublished_secs: self.unpublished_account_ttl_secs,
                idle_secs: self.idle_account_ttl_secs,
            },
            work: WorkPolicy {
                base_bits: self.pow_bits,
                max_bits: self.pow_max_bits,
                calm_rate: self.pow_calm_rate,
            },
            sources: SourceLimitsConfig {
                handshake: Rate {
                    burst: self.handshake_burst,
                    per_sec: self.handshake_rate,
                },
                register: Rate {
                    burst: self.register_burst,
                    per_sec: self.register_per_hour / 3600.0,
                },
                pending_per_source: self.pending_per_source,
                ..SourceLimitsConfig::default()
            },
            purge_interval: Duration::from_secs(self.purge_interval_secs.max(1)),
            account_rate: Rate {
                burst: self.account_burst,
                per_sec: self.account_rate,
            },
            max_acks: self.max_acks,
            message_ttl_secs: self.message_ttl_secs,
            max_payload: self.max_payload,
            poll_default: poll_max.min(Duration::from_secs(25)),
            poll_max,
            poll_limit: 100,
        }
    }

    /// The key file path.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("server_key"))
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

// ---- HTTP -------------------------------------------------------------------------------------

/// Largest request body accepted (a 64 KiB payload as a JSON byte array is about 4× that).
pub const MAX_BODY_BYTES: usize = 512 * 1024;

/// The HTTP status of a relay error: its code's ([`ErrorCode::http_status`], one table for
/// the server, the clients and the OpenAPI document).
pub fn status_of(e: &RelayError) -> StatusCode {
    StatusCode::from_u16(e.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The JSON error response for `e`.
pub fn error_response(e: &RelayError) -> HttpResponse {
    let status = status_of(e);
    if matches!(e, RelayError::Busy) {
        // A flood of new handshakes: one line a second, not one per refusal.
        let second = unix_second();
        if BUSY_LOGGED.swap(second, Ordering::Relaxed) != second {
            tracing::warn!("too many handshakes pending; answering 503 busy");
        }
    } else if let RelayError::Unavailable(why) = e {
        // During an outage every request fails the same way: one line a second, with a count.
        let refused = UNAVAILABLE_ANSWERS.fetch_add(1, Ordering::Relaxed) + 1;
        let second = unix_second();
        if UNAVAILABLE_LOGGED.swap(second, Ordering::Relaxed) != second {
            tracing::error!(error = %why, refused_since_start = refused, "storage unavailable; answering 503");
        }
    } else if status.is_server_error() {
        tracing::error!(error = ?e, "request failed");
    } else {
        tracing::debug!(code = e.code().as_str(), "request refused");
    }
    let (mtproto_code, notice) = match e {
        RelayError::BadMsg { code, notice } => (
            Some(code.code()),
            notice.clone().map(mtproto_session::wire::Bytes),
        ),
        _ => (None, None),
    };
    // Internal details go to the log above, never to the client.
    let message = match e {
        RelayError::Internal(_) => "internal error; nothing was stored".to_owned(),
        other => other.to_string(),
    };
    let mut answer = HttpResponse::build(status);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        answer.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
    }
    if let RelayError::RateLimited { retry_after_secs } = e {
        RATE_LIMITED_ANSWERS.fetch_add(1, Ordering::Relaxed);
        answer.insert_header((actix_web::http::header::RETRY_AFTER, retry_after_secs.to_string()));
    }
    metrics::metrics().refusal(e.code().as_str());
    answer.json(ErrorBody {
        error: e.code(),
        message,
        mtproto_code,
        notice,
    })
}

/// A refusal made by the HTTP layer itself (the body could not be read or parsed, no route).
fn client_error(code: ErrorCode, message: String) -> HttpResponse {
    metrics::metrics().refusal(code.as_str());
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    HttpResponse::build(status).json(ErrorBody::new(code, message))
}

/// Reads a JSON body, answering malformed or oversized input with a JSON error.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per request
fn parse<T: serde::de::DeserializeOwned>(
    body: Result<web::Bytes, actix_web::Error>,
) -> Result<T, HttpResponse> {
    let body = body.map_err(|e| {
        let too_large = e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE;
        if too_large {
            client_error(
                ErrorCode::PayloadTooLarge,
                format!("body over {MAX_BODY_BYTES} bytes"),
            )
        } else if let Some(late) = conn::body_timed_out(&e) {
            client_error(ErrorCode::RequestTimeout, late.to_string())
        } else {
            client_error(ErrorCode::BadRequest, e.to_string())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        let code = if e.is_data() {
            ErrorCode::InvalidField
        } else {
            ErrorCode::MalformedJson
        };
        client_error(code, e.to_string())
    })
}

fn respond<T: Serialize>(r: Result<T, RelayError>) -> HttpResponse {
    match r {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => error_response(&e),
    }
}

type Body = Result<web::Bytes, actix_web::Error>;

/// Counts a request as in flight until its answer is ready (for the shutdown's drain).
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`).
#[derive(Debug, Clone, Default)]
struct TrustedProxies(Arc<Vec<std::net::IpAddr>>);

/// The address limits count a request against: the peer, or behind a trusted proxy the client
/// it names ([`client_ip`]).
fn source_of(req: &actix_web::HttpRequest) -> std::net::IpAddr {
    let trusted = req
        .app_data::<TrustedProxies>()
        .map(|t| t.0.as_slice())
        .unwrap_or_default();
    client_ip(req, trusted).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Admits an unauthenticated step from the request's source before any work is done on it;
/// the refusal to answer with when it is not admitted.
fn refuse(relay: &Relay, req: &actix_web::HttpRequest, step: Step) -> Option<HttpResponse> {
    relay
        .sources()
        .admit(source_of(req), step, std::time::Instant::now())
        .err()
        .map(|e| error_response(&e))
}

async fn req_pq(relay: web::Data<Relay>, http: actix_web::HttpRequest, body: Body) -> HttpResponse {
    if let Some(refused) = refuse(&relay, &http, Step::ReqPq) {
        return refused;
    }
    match parse(body) {
        Ok(req) => respond(relay.req_pq(&req).await),
        Err(resp) => resp,
    }
}

async fn req_dh_params(relay: web::Data<Relay>, http: actix_web::HttpRequest, body: Body) -> HttpResponse {
    if let Some(refused) = refuse(&relay, &http, Step::ReqDhParams) {
        return refused;
    }
    match parse(body) {
        Ok(req) => respond(relay.req_dh_params(&req).await),
        Err(resp) => resp,
    }
}

async fn set_client_dh_params(
    relay: web::Data<Relay>,
    http: actix_web::HttpRequest,
    body: Body,
) -> HttpResponse {
    if let Some(refused) = refuse(&relay, &http, Step::SetClientDhParams) {
        return refused;
    }
    match parse(body) {
        Ok(req) => {
            let done = relay.set_client_dh_params(&req).await;
            if done.is_ok() {
                relay.sources().finished(source_of(&http));
            }
            respond(done)
        }
        Err(resp) => resp,
    }
}

async fn envelope(relay: web::Data<Relay>, endpoint: Endpoint, body: Body) -> HttpResponse {
    match parse::<EnvelopeRequest>(body) {
        Ok(req) => respond(relay.handle(endpoint, &req).await),
        Err(resp) => resp,
    }
}

/// Answers refused with 503 `storage_unavailable` since start-up (for `/stats`).
static UNAVAILABLE_ANSWERS: AtomicU64 = AtomicU64::new(0);
/// The Unix second in which the last `busy` refusal was logged.
static BUSY_LOGGED: AtomicU64 = AtomicU64::new(0);

fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Answers refused with 429 `rate_limited` since start-up (for `/stats`).
static RATE_LIMITED_ANSWERS: AtomicU64 = AtomicU64::new(0);
/// The Unix second in which the last such refusal was logged.
static UNAVAILABLE_LOGGED: AtomicU64 = AtomicU64::new(0);

/// 200 `{"status": "ok", "storage": "ok"}` while the engine can serve; 503 with
/// `"unavailable"` otherwise. Public: it says up or down and nothing else (the details go to
/// the log; counters to the operator-only `/stats`).
async fn healthz(relay: web::Data<Relay>) -> HttpResponse {
    let (status, state) = match relay.engine().health().await {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(e) => {
            tracing::warn!(error = %e, "health check: storage unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    };
    HttpResponse::build(status).json(serde_json::json!({ "status": state, "storage": state }))
}

/// The operator-only counters, served on `--metrics-bind` only.
async fn stats(relay: web::Data<Relay>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "engine": relay.engine().name(),
        "fingerprint": relay.server_key().public().fingerprint().to_string(),
        "stats": relay.engine().stats(),
        "long_polls": relay.notifier().live(),
        "unavailable_answers": UNAVAILABLE_ANSWERS.load(Ordering::Relaxed),
        "rate_limited_answers": RATE_LIMITED_ANSWERS.load(Ordering::Relaxed),
        "tracked_sources": relay.sources().tracked_sources(),
    }))
}

/// The Prometheus metrics (`docs/deployment.md` "Metrics"), served on `--metrics-bind` only.
async fn prometheus(relay: web::Data<Relay>) -> HttpResponse {
    match metrics::metrics().render(&relay) {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

/// Serves the operator-only counters (`GET /stats`) and metrics (`GET /metrics`) on `listener`
/// until the process ends.
///
/// # Errors
/// I/O errors from the listener.
pub async fn serve_stats(relay: Arc<Relay>, listener: TcpListener) -> std::io::Result<()> {
    let data = web::Data::from(relay);
    actix_web::HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/stats", web::get().to(stats))
            .route("/metrics", web::get().to(prometheus))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run()
    .await
}

/// The OpenAPI 3.1 document of the HTTP API (`bins/relay-server/openapi.json`): the routes and
/// the carriers; docs/protocol.md describes what travels inside envelopes. Kept in step with the
/// code by `tests/openapi.rs` and exercised by `scripts/api-fuzz.sh` (schemathesis).
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .body(OPENAPI)
}

async fn server_key(relay: web::Data<Relay>) -> HttpResponse {
    let pk = relay.server_key().public();
    HttpResponse::Ok().json(serde_json::json!({
        "fingerprint": pk.fingerprint().to_string(),
        "public_key": mtproto_session::wire::b64(pk.as_bytes()),
    }))
}

async fn echo(body: Body) -> HttpResponse {
    match parse::<serde_json::Value>(body) {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(resp) => resp,
    }
}

/// Resolves on SIGINT or SIGTERM; never, if they cannot be watched (a warning says so).
async fn termination_signal() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot watch SIGINT");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => {}
        () = int => {}
    }
}

/// Every route. `echo` adds the plain `/echo` endpoint used as the load-test baseline. The web
/// clients answer from the prepared pages that [`run_with_limits`] puts in the app data.
pub fn routes(cfg: &mut web::ServiceConfig, echo_route: bool) {
    cfg.route("/req_pq", web::post().to(req_pq))
        .route("/req_dh_params", web::post().to(req_dh_params))
        .route("/set_client_dh_params", web::post().to(set_client_dh_params))
        .route(
            "/secure_message",
            web::post().to(|r, b| envelope(r, Endpoint::SecureMessage, b)),
        )
        .route(
            "/poll_messages",
            web::post().to(|r, b| envelope(r, Endpoint::PollMessages, b)),
        )
        .route("/peers", web::post().to(|r, b| envelope(r, Endpoint::Peers, b)))
        .route(
            "/publish_key",
            web::post().to(|r, b| envelope(r, Endpoint::PublishKey, b)),
        )
        .route("/healthz", web::get().to(healthz))
        .route("/healthz", web::head().to(healthz))
        .route("/server_key", web::get().to(server_key))
        .route("/server_key", web::head().to(server_key))
        .route("/openapi.json", web::get().to(openapi));
    assets::routes(cfg);
    if echo_route {
        cfg.route("/echo", web::post().to(echo));
    }
}

/// Reloads the certificate from its files on every SIGHUP (new handshakes get the new one;
/// connections already open keep going). A failed reload keeps the old certificate.
async fn reload_on_sighup(store: Arc<tls::CertStore>) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP: the certificate will not be reloaded");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match store.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificate NOT reloaded; the old one stays")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = store;
}

/// Answers every plain-HTTP request on `listener` with a 308 to the same path over HTTPS on
/// `https_port` (same host name).
///
/// # Errors
/// I/O errors from the listener.
pub async fn serve_https_redirect(listener: TcpListener, https_port: u16) -> std::io::Result<()> {
    actix_web::HttpServer::new(move || {
        App::new().default_service(web::to(move |req: actix_web::HttpRequest| async move {
            // The Host header only (never X-Forwarded-Host), and only a plain host name or
            // address: anything else gets no redirect to follow.
            let host = req
                .headers()
                .get(actix_web::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let plain = !host.is_empty()
                && host.len() <= 255
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
            if !plain {
                return client_error(ErrorCode::BadRequest, "a Host header is needed".into());
            }
            // The host without its port (IPv6 literals keep their brackets).
            let name = match host.rsplit_once(':') {
                Some((name, port)) if !port.contains(']') => name.to_owned(),
                _ => host,
            };
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", actix_web::http::uri::PathAndQuery::as_str)
                .to_owned();
            HttpResponse::PermanentRedirect()
                .insert_header((
                    actix_web::http::header::LOCATION,
                    format!("https://{name}:{https_port}{path}"),
                ))
                .finish()
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run()
    .await
}

/// The header that carries a request's id back to the client: the same id is on every log line
/// about the request, so a user's report can be matched with the log.
pub const REQUEST_ID: &str = "x-request-id";

/// Gives each request an id (16 hex digits, random), answers it in [`REQUEST_ID`], runs the
/// request inside a span carrying it (every log line of the request names it), and logs one
/// line per request at debug — at warn for a server error (5xx).
fn request_log<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
{
    use mtproto_crypto::rand_core::RngCore;
    use tracing::Instrument;
    let id = format!("{:016x}", OsRng.next_u64());
    let span = tracing::info_span!("request", id = %id);
    let (method, path) = (req.method().clone(), req.path().to_owned());
    let started = std::time::Instant::now();
    let answer = {
        let _entered = span.enter();
        srv.call(req)
    };
    async move {
        let mut res = answer.await?;
        let status = res.status().as_u16();
        let took = started.elapsed();
        metrics::metrics().request(&method, &path, status, took);
        let ms = took.as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::warn!(%method, %path, status, ms, "request failed");
        } else {
            tracing::debug!(%method, %path, status, ms, "request");
        }
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&id) {
            res.headers_mut()
                .insert(actix_web::http::header::HeaderName::from_static(REQUEST_ID), v);
        }
        Ok(res)
    }
    .instrument(span)
}

/// [`run_with_limits`] with the default [`ConnLimits`].
///
/// # Errors
/// I/O errors from the listener.
pub async fn run(
    relay: Arc<Relay>,
    listener: TcpListener,
    workers: Option<usize>,
    echo_route: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with_limits(
        relay,
        listener,
        workers,
        echo_route,
        ConnLimits::default(),
        shutdown,
    )
    .await
}

/// Serves `relay` on `listener` within `limits` until `shutdown` completes (or
/// SIGINT/SIGTERM): then stops accepting, answers every waiting long-poll at once
/// ([`Relay::end_long_polls`]), lets in-flight requests finish (up to 10 s), and returns.
///
/// # Errors
/// I/O errors from the listener.
pub async fn run_with_limits(
    relay: Arc<Relay>,
    listener: TcpListener,
    workers: Option<usize>,
    echo_route: bool,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let data = web::Data::from(relay.clone());
    // The web clients, pinned and compressed once for every worker.
    let assets = web::Data::new(assets::Assets::new(&relay));
    let body_timeout = limits.body_timeout;
    let trusted = TrustedProxies(Arc::new(limits.trusted_proxies.clone()));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let draining = in_flight.clone();
    let certs = match &limits.tls {
        Some(files) => Some(Arc::new(
            tls::CertStore::load(files.clone()).map_err(|e| std::io::Error::other(e.to_string()))?,
        )),
        None => None,
    };
    let tls_config = match &certs {
        Some(store) => Some(
            store
                .server_config()
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        ),
        None => None,
    };
    if let Some(store) = certs.clone() {
        tokio::spawn(reload_on_sighup(store));
    }
    let hsts = certs.is_some();
    let server = conn::serve(listener, workers, &limits, tls_config, move || {
        let mut headers = actix_web::middleware::DefaultHeaders::new()
            .add((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .add((actix_web::http::header::X_FRAME_OPTIONS, "DENY"))
            .add((actix_web::http::header::REFERRER_POLICY, "no-referrer"));
        if hsts {
            // Browsers that saw the relay over HTTPS once never use plain HTTP with it again.
            headers = headers.add((
                actix_web::http::header::STRICT_TRANSPORT_SECURITY,
                "max-age=31536000",
            ));
        }
        App::new()
            .app_data(data.clone())
            .app_data(assets.clone())
            .app_data(trusted.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .wrap_fn(request_log)
            // On every answer (the pages add their CSP): no sniffing, no framing, no referrer;
            // HSTS over TLS.
            .wrap(headers)
            .wrap_fn({
                let in_flight = in_flight.clone();
                move |req, srv| {
                    let counted = InFlight::enter(&in_flight);
                    let answer = srv.call(conn::with_body_deadline(req, body_timeout));
                    async move {
                        let answer = answer.await;
                        drop(counted);
                        answer
                    }
                }
            })
            .configure(|cfg| routes(cfg, echo_route))
            .default_service(web::to(|| async {
                client_error(ErrorCode::NotFound, "no such endpoint".to_owned())
            }))
    })?;
    let handle = server.handle();
    let purge_relay = relay.clone();
    let purger = tokio::spawn(async move {
        for round in 0u64.. {
            tokio::time::sleep(purge_relay.config().purge_interval).await;
            if let Err(e) = purge_relay.purge().await {
                tracing::warn!(error = %e, "purge failed");
            }
            // Unused accounts: every tenth run (5 minutes by default), a bounded batch.
            if round % 10 == 0 {
                if let Err(e) = purge_relay.purge_accounts(1_000).await {
                    tracing::warn!(error = %e, "account purge failed");
                }
            }
        }
    });
    let stopping = relay.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = shutdown => {}
            () = termination_signal() => {}
        }
        tracing::info!("stopping: no new connections, long-polls answered now, in-flight requests finish");
        handle.pause().await;
        stopping.end_long_polls();
        // actix's graceful stop looks at its connections once a second; we know when the last
        // request was answered, so wait for that (at most the 10 s grace), give the answer a
        // moment to leave, then close what is left (idle kept-alive connections).
        let grace = std::time::Instant::now() + Duration::from_secs(10);
        while draining.load(Ordering::Acquire) > 0 && std::time::Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.stop(false).await;
    });
    let result = server.await;
    purger.abort();
    result
}
