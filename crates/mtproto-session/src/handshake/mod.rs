//! The handshake: MTProto's auth-key creation carried as this project's JSON.
//!
//! ```text
//! client                                                   server
//!   req_pq {nonce}                         ─────────────►
//!                  ◄───────────── {nonce, server_nonce, pq, fingerprint}
//!   (factor pq)
//!   req_dh_params {nonce, server_nonce, p, q} ──────────►  check proof of work first
//!                  ◄───────────── {g, dh_prime, g_a, server_time, server_public_key,
//!                                  signature over the transcript}
//!   (check pin, signature, group, g_a; pick b)
//!   set_client_dh_params {nonce, server_nonce, g_b, client_id} ──►
//!                  ◄───────────── {auth_key_id, key_confirmation, session_id, salt, status}
//!   (check key confirmation)
//! ```
//!
//! The server's side is a set of pure functions over a serializable [`PendingHandshake`] record,
//! so a relay can keep that record in any store (and a second node can continue it). The
//! client's side is a chain of types, each consumed by its transition: a [`ClientSession`](crate::ClientSession)
//! exists only after a verified key confirmation.

/// How long a pending handshake lives.
pub const HANDSHAKE_TTL_SECS: u64 = 60;
/// `status` of a successful `set_client_dh_params`, as in the original API.
pub const STATUS_OK: &str = "Auth key established";

mod client;
mod messages;
mod server;
mod transcript;

pub use client::{AwaitingDhGen, AwaitingDhParams, AwaitingResPq, ClientHandshake, ServerPin};
pub use messages::{DhGenOk, ReqDhParams, ReqPq, ResPq, ServerDhParams, SetClientDhParams};
pub use server::{Established, PendingHandshake, ServerHandshake, Stage};
pub use transcript::{dh_params_transcript, key_confirmation, SignedDhValues};
use transcript::{minimal_be, nonce, parse_factor};
