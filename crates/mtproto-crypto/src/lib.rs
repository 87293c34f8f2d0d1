#![doc = include_str!("../README.md")]
//!
//! # Contract
//! No networking, no files, no clock, no global RNG: every function that needs randomness takes
//! `&mut (impl RngCore + CryptoRng)` (pass [`rand_core::OsRng`] for the operating system's
//! generator). Secret types zeroize on drop and never print; decryption fails with one opaque
//! error.
#![forbid(unsafe_code)]

mod dh;
mod error;
mod framing;
pub mod hazmat;
pub mod kdf;
mod key;
pub mod legacy;
mod montgomery;
mod peer;
mod pq;
mod recovery;
mod server_identity;
mod signing;
mod types;

pub use dh::{DhGroup, DhPublic, DhSecret, EXPONENT_BITS, MTPROTO_DH_PRIME};
pub use error::{Error, Result};
pub use framing::{Framing, Layout, Mode, Opened, MAX_DATA_LEN, MAX_PADDING, MIN_PADDING, OUTER_HEADER_LEN};
pub use kdf::Direction;
pub use key::{AuthKey, ChatKey, FramingKey};
pub use peer::{Fingerprint, IdentityPublic, IdentitySecret};
pub use pq::{factor_pq, is_prime_u64, PqChallenge};
pub use rand_core;
pub use recovery::{RecoveryCode, RecoveryPublic};
pub use server_identity::{ServerKeyFingerprint, ServerPublicKey, ServerSigningKey};
pub use signing::{IdentitySigningKey, IdentitySigningPublic};
pub use types::{AuthKeyId, MsgKey, Nonce128, Nonce256};
