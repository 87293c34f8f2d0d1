//! Sessions and the encrypted envelope.
//!
//! ```text
//! envelope plaintext = salt (8) ‖ session_id (8) ‖ msg_id (8, LE) ‖ seq_no (4, LE)
//!                      ‖ length (4, LE) ‖ body (JSON, `length` bytes) ‖ padding (12..=1024)
//! packet             = auth_key_id (8) ‖ msg_key (16) ‖ AES-256-CBC(plaintext)
//! ```
//!
//! Requests travel with x = 0 (client → server), answers with x = 8. Decoding runs every check
//! and names the one that failed with MTProto's bad_msg_notification code, except that every
//! cryptographic failure is the one opaque [`EnvelopeError::Decrypt`](crate::EnvelopeError::Decrypt).

mod client;
mod envelope;
mod notice;
mod server;

pub use client::{ClientSession, ClientSessionState};
pub use envelope::{
    open_envelope, open_envelope_with, packet_key_id, Envelope, Incoming, Outgoing, ENVELOPE, MAX_BODY,
};
pub use notice::Notice;
pub use server::{Responder, ServerSession};

use envelope::{seal, Header};
