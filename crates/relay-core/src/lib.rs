#![doc = include_str!("../README.md")]
//!
//! The mtproto-relay domain, without HTTP: accounts bound to auth keys, the peer directory,
//! mailboxes with at-least-once delivery, long-poll wake-ups, and the storage engines.
//!
//! ```text
//!            ┌──────────── Relay ─────────────┐
//!  HTTP ───▶ │ handshake ▸ envelope ▸ call     │ ──▶ Engine (memory | sqlite | …)
//!  layer     │ (mtproto-session, sans-IO)      │ ◀── Notifier (long-poll wake-ups)
//!            └─────────────────────────────────┘
//! ```
//!
//! Every authenticated request is committed atomically: the session's replay window moves, the
//! request's effect applies (a message appended, entries acknowledged, a key published) and its
//! outcome is stored for resends — or, on any error, nothing is stored.
#![forbid(unsafe_code)]

/// The wire contract, re-exported from [`relay_api`] (the crate clients depend on).
pub use relay_api as api;
pub mod engine;
mod error;
pub mod limits;
mod model;
mod notify;
mod observe;
mod prekeys;
mod relay;
pub mod seal;

#[cfg(feature = "redis")]
pub use engine::RedisEngine;
#[cfg(feature = "sqlite")]
pub use engine::{sqlite_backup, SqliteEngine};
pub use engine::{Engine, MemoryEngine};
pub use error::{EngineError, RelayError};
pub use model::{
    AccountExpiry, AuthKeyRecord, Commit, MailboxEntry, Op, Outcome, Peer, SendQuota, SessionRecord,
};
/// The key id and nonce type [`Engine`] methods take (re-exported: part of this crate's API).
pub use mtproto_crypto::{AuthKeyId, Nonce128};
pub use notify::Notifier;
pub use observe::{NoObserver, Observer};
pub use prekeys::PrekeyUpload;
pub use relay::{Clock, Relay, RelayConfig, SystemClock, RESERVED_CLIENT_IDS};
pub use relay_api::{AckRef, EntryKind, STATUS_RECEIVED};
