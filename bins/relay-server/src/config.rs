//! The relay's configuration: flags, environment, subcommands.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use relay_core::{
    limits::{Rate, SourceLimitsConfig, WorkPolicy},
    AccountExpiry, RelayConfig, SendQuota,
};

use crate::conn;

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
    /// One-time prekeys one account may be handed out per hour by this node (`/prekey_bundle`);
    /// past it, bundles come without a one-time prekey.
    #[arg(long, env = "RELAY_PREKEY_HANDOUTS_PER_HOUR", default_value_t = 50)]
    pub prekey_handouts_per_hour: u32,
    /// One-time prekeys of one account that this node may hand out per hour, to all
    /// requesters together; past it, bundles for that account come without one.
    #[arg(long, env = "RELAY_PREKEY_TARGET_HANDOUTS_PER_HOUR", default_value_t = 100)]
    pub prekey_target_handouts_per_hour: u32,
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
            prekey_handouts: Rate {
                burst: self.prekey_handouts_per_hour,
                per_sec: f64::from(self.prekey_handouts_per_hour) / 3600.0,
            },
            prekey_handouts_per_target: Rate {
                burst: self.prekey_target_handouts_per_hour,
                per_sec: f64::from(self.prekey_target_handouts_per_hour) / 3600.0,
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
