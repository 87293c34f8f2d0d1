//! The server side of a session: checks on every request, answers and notices.

use mtproto_crypto::{
    rand_core::{CryptoRng, RngCore},
    AuthKey, Direction,
};
use serde::{Deserialize, Serialize};

use super::{open_envelope, seal, Envelope, Header, Incoming, Notice, Outgoing};
use crate::{
    replay::{ReplayWindow, Verdict},
    salt::SaltSchedule,
    BadMsgCode, EnvelopeError, MsgId, MsgIdGen, Result, Sender, SeqNoGen, ServerSalt, SessionId, UnixTime,
};

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

    /// The highest seq_no this session accepted and remembers (0 for none): a request more than
    /// [`crate::MAX_SEQ_NO_STEP`] above it is refused (code 33).
    ///
    /// ```
    /// use mtproto_session::{ServerSalt, ServerSession, SessionId, UnixTime};
    /// let s = ServerSession::new(SessionId([1; 8]), ServerSalt([2; 8]), UnixTime::from_secs(1_700_000_000));
    /// assert_eq!(s.highest_seq_no(), 0);
    /// ```
    pub fn highest_seq_no(&self) -> u32 {
        self.seen.entries().last().map_or(0, |e| e.1)
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
    /// [`EnvelopeError::WrongSession`], [`EnvelopeError::Duplicate`], [`EnvelopeError::BadMsg`].
    pub fn accept(&mut self, env: Envelope, now: UnixTime) -> Result<Incoming, EnvelopeError> {
        if env.session_id != self.session_id {
            return Err(EnvelopeError::WrongSession);
        }
        let bad = |code| EnvelopeError::BadMsg {
            code,
            bad_msg_id: env.msg_id.0,
            bad_msg_seqno: env.seq_no,
        };
        if !env.msg_id.0.is_multiple_of(4) {
            return Err(bad(BadMsgCode::MsgIdBadLowBits));
        }
        if self.seen.contains(env.msg_id) {
            return Err(EnvelopeError::Duplicate { msg_id: env.msg_id.0 });
        }
        env.msg_id.validate(Sender::Client, now).map_err(bad)?;
        if !self.salts.accepts(env.salt, now) {
            return Err(bad(BadMsgCode::BadServerSalt));
        }
        if env.seq_no & 1 == 0 {
            return Err(bad(BadMsgCode::SeqNoExpectedOdd));
        }
        match self.seen.check(env.msg_id, env.seq_no).map_err(bad)? {
            Verdict::Duplicate => return Err(EnvelopeError::Duplicate { msg_id: env.msg_id.0 }),
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
    pub fn decode_request(
        &mut self,
        key: &AuthKey,
        packet: &[u8],
        now: UnixTime,
    ) -> Result<Incoming, EnvelopeError> {
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
    ) -> Result<Outgoing, EnvelopeError> {
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
    /// [`EnvelopeError::TooLarge`] for a body over [`MAX_BODY`](super::MAX_BODY).
    pub fn encode_response(
        &mut self,
        key: &AuthKey,
        body: &[u8],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing, EnvelopeError> {
        self.encode(key, body, true, now, rng)
    }

    /// Seals a notice (msg_id ≡ 3 mod 4, not content-related).
    ///
    /// # Errors
    /// [`EnvelopeError::TooLarge`] never in practice (notices are small).
    pub fn encode_notice(
        &mut self,
        key: &AuthKey,
        notice: &Notice,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing, EnvelopeError> {
        let body = serde_json::to_vec(notice).map_err(|_| EnvelopeError::Malformed {
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
    /// [`EnvelopeError::TooLarge`] for a body over [`MAX_BODY`](super::MAX_BODY).
    pub fn encode_response(
        &mut self,
        key: &AuthKey,
        body: &[u8],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing, EnvelopeError> {
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
    /// [`EnvelopeError::TooLarge`] for a body over [`MAX_BODY`](super::MAX_BODY).
    pub fn encode_response_to(
        &mut self,
        key: &AuthKey,
        body: &[u8],
        request: MsgId,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing, EnvelopeError> {
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
    ) -> Result<Outgoing, EnvelopeError> {
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
