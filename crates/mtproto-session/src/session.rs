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
//! cryptographic failure is the one opaque [`Error::Decrypt`].

use std::collections::VecDeque;

use mtproto_crypto::{
    rand_core::{CryptoRng, RngCore},
    AuthKey, AuthKeyId, Direction, Framing, Layout, Mode, ServerPublicKey,
};
use serde::{Deserialize, Serialize};

use crate::{
    replay::{ReplayWindow, Verdict},
    salt::SaltSchedule,
    wire::{fixed, Bytes},
    BadMsgCode, ClientId, Error, MsgId, MsgIdGen, Result, SecretBytes, Sender, SeqNoGen, ServerSalt,
    SessionId, UnixTime,
};

/// The framing of every envelope: AES-256-CBC, MTProto's header with opaque (JSON) data.
pub const ENVELOPE: Framing = Framing::new(Mode::Cbc, Layout::MTPROTO_OPAQUE);
/// Largest body an envelope carries (1 MiB).
pub const MAX_BODY: usize = 1 << 20;

/// A decrypted, authenticated envelope before the session checks.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The salt the sender used.
    pub salt: ServerSalt,
    /// The session the sender names.
    pub session_id: SessionId,
    /// The message id.
    pub msg_id: MsgId,
    /// The seq_no.
    pub seq_no: u32,
    /// The body.
    pub body: Vec<u8>,
}

/// Opens a packet under `key` (crypto checks only: length, key id, msg_key, padding).
///
/// # Errors
/// [`Error::Decrypt`] for every failure.
pub fn open_envelope(key: &AuthKey, direction: Direction, packet: &[u8]) -> Result<Envelope> {
    open_envelope_with(ENVELOPE, key, direction, packet)
}

/// [`open_envelope`] with another framing, e.g. genuine MTProto packets (`Mode::Ige`,
/// `Layout::MTPROTO`): the header parsing is the same.
///
/// # Errors
/// [`Error::Decrypt`] for every cryptographic failure; [`Error::Limit`] for a body over
/// [`MAX_BODY`].
pub fn open_envelope_with(
    framing: Framing,
    key: &AuthKey,
    direction: Direction,
    packet: &[u8],
) -> Result<Envelope> {
    if packet.len() > MAX_BODY + 32 + 24 + mtproto_crypto::MAX_PADDING {
        return Err(Error::Limit {
            what: "envelope",
            max: MAX_BODY as u64,
        });
    }
    let opened = framing.open(key, direction, packet)?;
    let p = opened.payload();
    let field = |r: core::ops::Range<usize>| p.get(r).ok_or(Error::Decrypt);
    let salt = ServerSalt(fixed("salt", field(0..8)?).map_err(|_| Error::Decrypt)?);
    let session_id = SessionId(fixed("session_id", field(8..16)?).map_err(|_| Error::Decrypt)?);
    let msg_id = MsgId(u64::from_le_bytes(
        fixed("msg_id", field(16..24)?).map_err(|_| Error::Decrypt)?,
    ));
    let seq_no = u32::from_le_bytes(fixed("seq_no", field(24..28)?).map_err(|_| Error::Decrypt)?);
    Ok(Envelope {
        salt,
        session_id,
        msg_id,
        seq_no,
        body: opened.data().to_vec(),
    })
}

/// The auth key id a packet names (its first 8 bytes), to find the key.
///
/// # Errors
/// [`Error::Malformed`] for a packet shorter than 8 bytes.
pub fn packet_key_id(packet: &[u8]) -> Result<AuthKeyId> {
    let id = packet.get(..8).ok_or(Error::Malformed {
        field: "packet",
        reason: "too short",
    })?;
    Ok(AuthKeyId::from_bytes(fixed("auth_key_id", id)?))
}

/// The plaintext header fields of an envelope.
struct Header {
    salt: ServerSalt,
    session_id: SessionId,
    msg_id: MsgId,
    seq_no: u32,
}

fn seal(
    key: &AuthKey,
    direction: Direction,
    h: Header,
    body: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>> {
    let Header {
        salt,
        session_id,
        msg_id,
        seq_no,
    } = h;
    if body.len() > MAX_BODY {
        return Err(Error::Limit {
            what: "envelope body",
            max: MAX_BODY as u64,
        });
    }
    let mut p = Vec::with_capacity(32 + body.len());
    p.extend_from_slice(&salt.0);
    p.extend_from_slice(&session_id.0);
    p.extend_from_slice(&msg_id.0.to_le_bytes());
    p.extend_from_slice(&seq_no.to_le_bytes());
    p.extend_from_slice(&(body.len() as u32).to_le_bytes());
    p.extend_from_slice(body);
    Ok(ENVELOPE.seal(key, direction, &p, rng)?)
}

/// A sealed envelope ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Its msg_id.
    pub msg_id: MsgId,
    /// Its seq_no.
    pub seq_no: u32,
    /// The packet bytes.
    pub packet: Vec<u8>,
}

/// A received envelope that passed every check.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Its msg_id.
    pub msg_id: MsgId,
    /// Its seq_no.
    pub seq_no: u32,
    /// The body.
    pub body: Vec<u8>,
}

/// A server's notice about a bad message (MTProto's `bad_server_salt` and
/// `bad_msg_notification`), sent as the body of a server envelope (msg_id ≡ 3 mod 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "_", rename_all = "snake_case")]
pub enum Notice {
    /// The salt was wrong; here is the current one (code 48).
    BadServerSalt {
        /// The rejected message.
        bad_msg_id: u64,
        /// Its seq_no.
        bad_msg_seqno: u32,
        /// 48.
        error_code: u32,
        /// The salt to use.
        new_server_salt: Bytes,
    },
    /// Another msg_id or seq_no rule was broken.
    BadMsgNotification {
        /// The rejected message.
        bad_msg_id: u64,
        /// Its seq_no.
        bad_msg_seqno: u32,
        /// The MTProto code.
        error_code: u32,
    },
}

impl Notice {
    /// The notice that answers `err`, if it is a bad-message error.
    pub fn for_error(err: &Error, current_salt: ServerSalt) -> Option<Self> {
        let Error::BadMsg {
            code,
            bad_msg_id,
            bad_msg_seqno,
        } = *err
        else {
            return None;
        };
        Some(if code == BadMsgCode::BadServerSalt {
            Self::BadServerSalt {
                bad_msg_id,
                bad_msg_seqno,
                error_code: code.code(),
                new_server_salt: Bytes(current_salt.0.to_vec()),
            }
        } else {
            Self::BadMsgNotification {
                bad_msg_id,
                bad_msg_seqno,
                error_code: code.code(),
            }
        })
    }

    /// The rejected message's id.
    pub fn bad_msg_id(&self) -> u64 {
        match self {
            Self::BadServerSalt { bad_msg_id, .. } | Self::BadMsgNotification { bad_msg_id, .. } => {
                *bad_msg_id
            }
        }
    }

    /// The MTProto code, if known.
    pub fn code(&self) -> Option<BadMsgCode> {
        match self {
            Self::BadServerSalt { error_code, .. } | Self::BadMsgNotification { error_code, .. } => {
                BadMsgCode::from_code(*error_code)
            }
        }
    }
}

// ---- Server ----------------------------------------------------------------------------------------

/// The server's state of one client session. It holds no secret, so a store can keep it as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSession {
    pub(crate) session_id: SessionId,
    pub(crate) salts: SaltSchedule,
    pub(crate) seen: ReplayWindow,
    pub(crate) msg_ids: MsgIdGen,
    pub(crate) seq: SeqNoGen,
}

impl ServerSession {
    /// A new session whose first salt is `salt`.
    pub fn new(session_id: SessionId, salt: ServerSalt, now: UnixTime) -> Self {
        Self {
            session_id,
            salts: SaltSchedule::new(salt, now),
            seen: ReplayWindow::default(),
            msg_ids: MsgIdGen::new(),
            seq: SeqNoGen::default(),
        }
    }

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// Rotates salts (call before each use); returns whether the state changed.
    pub fn rotate_salts(&mut self, now: UnixTime, rng: &mut (impl RngCore + CryptoRng)) -> bool {
        self.salts.rotate(now, || {
            let mut s = [0u8; 8];
            rng.fill_bytes(&mut s);
            ServerSalt(s)
        })
    }

    /// Rotates salts, each new one made by `derive` from the second it becomes valid (see
    /// [`SaltSchedule::rotate_with`]); returns whether the state changed.
    pub fn rotate_salts_with(&mut self, now: UnixTime, derive: impl FnMut(u64) -> ServerSalt) -> bool {
        self.salts.rotate_with(now, derive)
    }

    /// The salt clients should use now.
    pub fn current_salt(&self, now: UnixTime) -> Option<ServerSalt> {
        self.salts.current(now)
    }

    /// The salt schedule.
    pub fn salts(&self) -> &SaltSchedule {
        &self.salts
    }

    /// Runs the session checks on an opened request and records it.
    ///
    /// Order: session id; msg_id low bits (18); duplicate (so that an exact resend is always
    /// recognised, and answered with the original result by the caller); time window (16, 17);
    /// salt (48); content-related seq_no (35: every request is an RPC); replay-window order
    /// (20, 32, 33).
    ///
    /// # Errors
    /// [`Error::WrongSession`], [`Error::Duplicate`], [`Error::BadMsg`].
    pub fn accept(&mut self, env: Envelope, now: UnixTime) -> Result<Incoming> {
        if env.session_id != self.session_id {
            return Err(Error::WrongSession);
        }
        let bad = |code| Error::BadMsg {
            code,
            bad_msg_id: env.msg_id.0,
            bad_msg_seqno: env.seq_no,
        };
        if !env.msg_id.0.is_multiple_of(4) {
            return Err(bad(BadMsgCode::MsgIdBadLowBits));
        }
        if self.seen.contains(env.msg_id) {
            return Err(Error::Duplicate { msg_id: env.msg_id.0 });
        }
        env.msg_id.validate(Sender::Client, now).map_err(bad)?;
        if !self.salts.accepts(env.salt, now) {
            return Err(bad(BadMsgCode::BadServerSalt));
        }
        if env.seq_no & 1 == 0 {
            return Err(bad(BadMsgCode::SeqNoExpectedOdd));
        }
        match self.seen.check(env.msg_id, env.seq_no).map_err(bad)? {
            Verdict::Duplicate => return Err(Error::Duplicate { msg_id: env.msg_id.0 }),
            Verdict::Fresh => self.seen.record(env.msg_id, env.seq_no),
        }
        Ok(Incoming {
            msg_id: env.msg_id,
            seq_no: env.seq_no,
            body: env.body,
        })
    }

    /// Opens and accepts a request in one step.
    ///
    /// # Errors
    /// As [`open_envelope`] and [`ServerSession::accept`].
    pub fn decode_request(&mut self, key: &AuthKey, packet: &[u8], now: UnixTime) -> Result<Incoming> {
        let env = open_envelope(key, Direction::ClientToServer, packet)?;
        self.accept(env, now)
    }

    fn encode(
        &mut self,
        key: &AuthKey,
        body: &[u8],
        response: bool,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing> {
        self.rotate_salts(now, rng);
        let mut r = self.responder();
        let out = r.encode(key, body, response, now, rng)?;
        // Keep the counters the responder advanced.
        self.msg_ids = r.msg_ids;
        self.seq = r.seq;
        Ok(out)
    }

    /// What answering needs (id, salts, counters) without the replay window: cheap to copy out
    /// of the session before the session is handed to storage.
    pub fn responder(&self) -> Responder {
        Responder {
            session_id: self.session_id,
            salts: self.salts.clone(),
            msg_ids: self.msg_ids.clone(),
            seq: self.seq.clone(),
        }
    }

    /// Seals an answer to a request (msg_id ≡ 1 mod 4, content-related seq_no).
    ///
    /// # Errors
    /// [`Error::Limit`] for a body over [`MAX_BODY`].
    pub fn encode_response(
        &mut self,
        key: &AuthKey,
        body: &[u8],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing> {
        self.encode(key, body, true, now, rng)
    }

    /// Seals a notice (msg_id ≡ 3 mod 4, not content-related).
    ///
    /// # Errors
    /// [`Error::Limit`] never in practice (notices are small).
    pub fn encode_notice(
        &mut self,
        key: &AuthKey,
        notice: &Notice,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing> {
        let body = serde_json::to_vec(notice).map_err(|_| Error::Malformed {
            field: "notice",
            reason: "unserializable",
        })?;
        self.encode(key, &body, false, now, rng)
    }
}

/// Seals answers for a session: see [`ServerSession::responder`].
#[derive(Debug, Clone)]
pub struct Responder {
    session_id: SessionId,
    salts: SaltSchedule,
    msg_ids: MsgIdGen,
    seq: SeqNoGen,
}

impl Responder {
    /// As [`ServerSession::encode_response`].
    ///
    /// # Errors
    /// [`Error::Limit`] for a body over [`MAX_BODY`].
    pub fn encode_response(
        &mut self,
        key: &AuthKey,
        body: &[u8],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing> {
        self.encode(key, body, true, now, rng)
    }

    /// Seals the answer to the request `request` with msg_id `request | 1`: unique per
    /// request (the session refuses a request msg_id twice), whatever the concurrency —
    /// responders copied from one stored session, on one node or several, never hand out the
    /// same id, as drawing from copies of one generator can.
    ///
    /// ```
    /// # use mtproto_crypto::{rand_core::OsRng, AuthKey};
    /// # use mtproto_session::{MsgId, ServerSalt, ServerSession, SessionId, UnixTime};
    /// let now = UnixTime::from_secs(1_800_000_000);
    /// let session = ServerSession::new(SessionId([1; 8]), ServerSalt([2; 8]), now);
    /// let key = AuthKey::from_slice(&[7; 256]).unwrap();
    /// let (mut a, mut b) = (session.responder(), session.responder());
    /// let x = a.encode_response_to(&key, b"{}", MsgId((now.as_secs() << 32) | 4), now, &mut OsRng)?;
    /// let y = b.encode_response_to(&key, b"{}", MsgId((now.as_secs() << 32) | 8), now, &mut OsRng)?;
    /// assert_ne!(x.msg_id, y.msg_id);
    /// assert_eq!(x.msg_id.0 % 4, 1);
    /// # Ok::<(), mtproto_session::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Limit`] for a body over [`MAX_BODY`].
    pub fn encode_response_to(
        &mut self,
        key: &AuthKey,
        body: &[u8],
        request: MsgId,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing> {
        let salt = self.salts.current(now).unwrap_or(ServerSalt([0; 8]));
        // A request's msg_id is ≡ 0 mod 4 (checked on accept); | 1 makes it a response's.
        let msg_id = MsgId((request.0 & !3) | 1);
        let seq_no = self.seq.next(true);
        let packet = seal(
            key,
            Direction::ServerToClient,
            Header {
                salt,
                session_id: self.session_id,
                msg_id,
                seq_no,
            },
            body,
            rng,
        )?;
        Ok(Outgoing {
            msg_id,
            seq_no,
            packet,
        })
    }

    /// Seals a body: msg_id ≡ 1 mod 4 and an odd seq_no for a response, ≡ 3 and even otherwise.
    fn encode(
        &mut self,
        key: &AuthKey,
        body: &[u8],
        response: bool,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing> {
        let salt = self.salts.current(now).unwrap_or(ServerSalt([0; 8]));
        let msg_id = self.msg_ids.next(Sender::Server { response }, now);
        let seq_no = self.seq.next(response);
        let h = Header {
            salt,
            session_id: self.session_id,
            msg_id,
            seq_no,
        };
        let packet = seal(key, Direction::ServerToClient, h, body, rng)?;
        Ok(Outgoing {
            msg_id,
            seq_no,
            packet,
        })
    }
}

// ---- Client ----------------------------------------------------------------------------------------

/// How many sent msg_ids the client remembers, to check that a notice is about one of them.
const SENT_MEMORY: usize = 256;

/// A client's session with the server, created only by a verified handshake
/// ([`crate::AwaitingDhGen::handle_dh_gen_ok`]) or restored from its saved state.
#[derive(Debug)]
pub struct ClientSession {
    auth_key: AuthKey,
    client_id: ClientId,
    server_key: ServerPublicKey,
    session_id: SessionId,
    salt: ServerSalt,
    time_offset: i64,
    msg_ids: MsgIdGen,
    seq: SeqNoGen,
    seen: ReplayWindow,
    sent: VecDeque<u64>,
}

/// Everything a client needs to resume its session later. Holds the auth key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientSessionState {
    /// The auth key (secret).
    pub auth_key: SecretBytes,
    /// The registered client id.
    pub client_id: ClientId,
    /// The server's Ed25519 key, 32 bytes.
    pub server_key: [u8; 32],
    /// The session id.
    pub session_id: SessionId,
    /// The salt in use.
    pub salt: ServerSalt,
    /// Server time minus local time, seconds.
    pub time_offset: i64,
    /// The msg_id generator.
    pub msg_ids: MsgIdGen,
    /// The seq_no counter.
    pub seq: SeqNoGen,
    /// Server msg_ids received.
    pub seen: ReplayWindow,
}

impl ClientSession {
    pub(crate) fn established(
        auth_key: AuthKey,
        client_id: ClientId,
        server_key: ServerPublicKey,
        session_id: SessionId,
        salt: ServerSalt,
        time_offset: i64,
    ) -> Self {
        Self {
            auth_key,
            client_id,
            server_key,
            session_id,
            salt,
            time_offset,
            msg_ids: MsgIdGen::new(),
            seq: SeqNoGen::default(),
            seen: ReplayWindow::default(),
            sent: VecDeque::new(),
        }
    }

    /// Restores a saved session.
    ///
    /// # Errors
    /// [`Error::Malformed`] when the saved auth key is not 256 bytes.
    pub fn restore(state: ClientSessionState) -> Result<Self> {
        let auth_key = AuthKey::from_slice(state.auth_key.expose()).map_err(|_| Error::Malformed {
            field: "auth_key",
            reason: "must be 256 bytes",
        })?;
        Ok(Self {
            auth_key,
            client_id: state.client_id,
            server_key: ServerPublicKey::from_bytes(state.server_key),
            session_id: state.session_id,
            salt: state.salt,
            time_offset: state.time_offset,
            msg_ids: state.msg_ids,
            seq: state.seq,
            seen: state.seen,
            sent: VecDeque::new(),
        })
    }

    /// The state to save.
    pub fn state(&self) -> ClientSessionState {
        ClientSessionState {
            auth_key: SecretBytes::new(self.auth_key.expose_secret().to_vec()),
            client_id: self.client_id.clone(),
            server_key: *self.server_key.as_bytes(),
            session_id: self.session_id,
            salt: self.salt,
            time_offset: self.time_offset,
            msg_ids: self.msg_ids.clone(),
            seq: self.seq.clone(),
            seen: self.seen.clone(),
        }
    }

    /// The auth key id.
    pub fn auth_key_id(&self) -> AuthKeyId {
        self.auth_key.id()
    }

    /// The auth key (for the caller's own persistence).
    pub fn auth_key(&self) -> &AuthKey {
        &self.auth_key
    }

    /// The registered client id.
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// The server's key, verified during the handshake.
    pub fn server_key(&self) -> &ServerPublicKey {
        &self.server_key
    }

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.session_id
    }

    /// The salt in use.
    pub fn salt(&self) -> ServerSalt {
        self.salt
    }

    /// Server time minus local time, in seconds.
    pub fn time_offset(&self) -> i64 {
        self.time_offset
    }

    /// Seals a request (content-related: odd seq_no) with a fresh msg_id at server time.
    ///
    /// # Errors
    /// [`Error::Limit`] for a body over [`MAX_BODY`].
    pub fn encode_request(
        &mut self,
        body: &[u8],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing> {
        let msg_id = self
            .msg_ids
            .next(Sender::Client, now.offset_secs(self.time_offset));
        let seq_no = self.seq.next(true);
        let h = Header {
            salt: self.salt,
            session_id: self.session_id,
            msg_id,
            seq_no,
        };
        let packet = seal(&self.auth_key, Direction::ClientToServer, h, body, rng)?;
        if self.sent.len() >= SENT_MEMORY {
            self.sent.pop_front();
        }
        self.sent.push_back(msg_id.0);
        Ok(Outgoing {
            msg_id,
            seq_no,
            packet,
        })
    }

    /// Opens a server envelope: crypto checks, session id, server msg_id parity and time window
    /// (at server time), duplicates (by msg_id; server seq_nos are not ordered, see
    /// `docs/protocol.md`).
    ///
    /// # Errors
    /// [`Error::Decrypt`], [`Error::WrongSession`], [`Error::BadMsg`], [`Error::Duplicate`].
    pub fn decode_response(&mut self, packet: &[u8], now: UnixTime) -> Result<Incoming> {
        let env = open_envelope(&self.auth_key, Direction::ServerToClient, packet)?;
        if env.session_id != self.session_id {
            return Err(Error::WrongSession);
        }
        let bad = |code| Error::BadMsg {
            code,
            bad_msg_id: env.msg_id.0,
            bad_msg_seqno: env.seq_no,
        };
        env.msg_id
            .validate(
                Sender::Server { response: true },
                now.offset_secs(self.time_offset),
            )
            .map_err(bad)?;
        // Server answers are checked by msg_id only: answers to concurrent requests may be
        // produced by different workers or nodes, so their seq_nos carry no order (0 = ids only).
        match self.seen.check(env.msg_id, 0).map_err(bad)? {
            Verdict::Duplicate => return Err(Error::Duplicate { msg_id: env.msg_id.0 }),
            Verdict::Fresh => self.seen.record(env.msg_id, 0),
        }
        Ok(Incoming {
            msg_id: env.msg_id,
            seq_no: env.seq_no,
            body: env.body,
        })
    }

    /// If `incoming` is a notice about a message this session really sent, applies it — a new
    /// salt for code 48, the server's clock for 16 and 17 — and returns it, so the caller can
    /// resend with a fresh msg_id. Other bodies, and notices about unknown ids, return `None`.
    pub fn handle_notice(&mut self, incoming: &Incoming, now: UnixTime) -> Option<Notice> {
        let notice: Notice = serde_json::from_slice(&incoming.body).ok()?;
        if !self.sent.contains(&notice.bad_msg_id()) {
            return None;
        }
        match &notice {
            Notice::BadServerSalt { new_server_salt, .. } => {
                self.salt = ServerSalt(fixed("new_server_salt", &new_server_salt.0).ok()?);
            }
            Notice::BadMsgNotification {
                error_code: 16 | 17, ..
            } => {
                let server_secs = i64::try_from(incoming.msg_id.secs()).unwrap_or(i64::MAX);
                self.time_offset =
                    server_secs.saturating_sub(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
            }
            Notice::BadMsgNotification { .. } => {}
        }
        Some(notice)
    }

    /// Adopts the server's clock (e.g. from a `server_time` field).
    pub fn sync_time(&mut self, server_time_secs: u64, now: UnixTime) {
        let server = i64::try_from(server_time_secs).unwrap_or(i64::MAX);
        self.time_offset = server.saturating_sub(i64::try_from(now.as_secs()).unwrap_or(i64::MAX));
    }
}
