#![doc = include_str!("../README.md")]
//!
//! Sans-IO MTProto-style protocol state machines for mtproto-relay: the handshake (both sides),
//! sessions with salts, msg_ids, seq_nos and a replay window, the encrypted envelope, and the
//! end-to-end layer between two peers: a static chat key ([`ChatState`]) or, with forward
//! secrecy, X3DH and the double ratchet ([`RatchetChat`], [`x3dh`], [`ratchet`]).
//!
//! No networking, no files, no clock: every function takes the bytes, the time
//! ([`UnixTime`]) and the randomness it needs, and returns messages and decisions. The relay
//! server, the Rust client and the tests all drive this same code.
//!
//! ```
//! use mtproto_crypto::{rand_core::OsRng, DhGroup, ServerSigningKey};
//! use mtproto_session::*;
//!
//! let server_key = ServerSigningKey::generate(&mut OsRng);
//! let group = DhGroup::mtproto();
//! let server = ServerHandshake::new(&server_key, &group);
//! let now = UnixTime::from_secs(1_800_000_000);
//! let pin = ServerPin::Fingerprint(server_key.public().fingerprint());
//!
//! let (client, req) = ClientHandshake::start(pin, ClientId::new("alice")?, &mut OsRng);
//! let (mut pending, res) = server.handle_req_pq(&req, now, &mut OsRng)?;
//! let (client, req) = client.handle_res_pq(&res)?;
//! let res = server.handle_req_dh_params(&mut pending, &req, now, &mut OsRng)?;
//! let (client, req) = client.handle_server_dh_params(&res, now, &mut OsRng)?;
//! let (mut est, res) = server.handle_set_client_dh_params(pending, &req, now, &mut OsRng)?;
//! let mut client = client.handle_dh_gen_ok(&res)?;
//!
//! let out = client.encode_request(br#"{"ping":1}"#, now, &mut OsRng)?;
//! let got = est.session.decode_request(&est.auth_key, &out.packet, now)?;
//! assert_eq!(got.body, br#"{"ping":1}"#);
//! # Ok::<(), mtproto_session::Error>(())
//! ```
#![forbid(unsafe_code)]

pub mod e2e;
mod error;
pub mod handshake;
mod ids;
pub mod ratchet;
pub mod ratchet_chat;
mod replay;
mod salt;
mod secret;
pub mod session;
mod session_codec;
pub mod skip_budget;
mod time;
pub mod wire;
pub mod work;
pub mod x3dh;

pub use e2e::{ChatState, ChatStateData, Delivery, Received, Sealed};
pub use error::{BadMsgCode, E2eError, EnvelopeError, Error, HandshakeError, Malformed, Result};
pub use handshake::{
    AwaitingDhGen, AwaitingDhParams, AwaitingResPq, ClientHandshake, DhGenOk, Established, PendingHandshake,
    ReqDhParams, ReqPq, ResPq, ServerDhParams, ServerHandshake, ServerPin, SetClientDhParams, Stage,
};
pub use ids::{
    ClientId, MsgId, MsgIdGen, Sender, SeqNoGen, ServerSalt, SessionId, MSG_ID_MAX_FUTURE_SECS,
    MSG_ID_MAX_PAST_SECS,
};
pub use ratchet::{
    Header, Ratchet, MAX_SKIP, MAX_SKIPPED_AGE_SECS, MAX_SKIPPED_KEYS, MAX_SKIPPED_KEYS_TOTAL,
};
pub use ratchet_chat::{packet_kind, start_of, Accepted, PacketKind, RatchetChat, RatchetChatData, Started};
pub use replay::{ReplayWindow, Verdict, MAX_SEQ_NO_STEP, REPLAY_WINDOW};
pub use salt::{FutureSalt, SaltSchedule, SALT_GRACE_SECS, SALT_PERIOD_SECS};
pub use secret::{SecretBytes, SecretKey32};
pub use session::{
    ClientSession, ClientSessionState, Envelope, Incoming, Notice, Outgoing, Responder, ServerSession,
};
pub use time::UnixTime;
pub use x3dh::{PrekeyBundle, Prekeys};
