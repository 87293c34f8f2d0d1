//! The client side of a session: msg_ids, seq_nos, salts and the clock offset.

use std::collections::VecDeque;

use mtproto_crypto::{
    rand_core::{CryptoRng, RngCore},
    AuthKey, AuthKeyId, Direction, ServerPublicKey,
};
use serde::{Deserialize, Serialize};

use super::{open_envelope, seal, Header, Incoming, Notice, Outgoing};
use crate::{
    replay::{ReplayWindow, Verdict},
    wire::fixed,
    ClientId, EnvelopeError, MsgIdGen, Result, SecretBytes, Sender, SeqNoGen, ServerSalt, SessionId,
    UnixTime,
};

/// How many sent msg_ids the client remembers, to check that a notice is about one of them.
pub(super) const SENT_MEMORY: usize = 256;

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
    sent: VecDeque<(u64, u32)>,
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
    /// [`EnvelopeError::Malformed`] when the saved auth key is not 256 bytes.
    pub fn restore(state: ClientSessionState) -> Result<Self, EnvelopeError> {
        let auth_key =
            AuthKey::from_slice(state.auth_key.expose()).map_err(|_| EnvelopeError::Malformed {
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
    /// [`EnvelopeError::TooLarge`] for a body over [`MAX_BODY`](super::MAX_BODY).
    pub fn encode_request(
        &mut self,
        body: &[u8],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Outgoing, EnvelopeError> {
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
        self.sent.push_back((msg_id.0, seq_no));
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
    /// [`EnvelopeError::Decrypt`], [`EnvelopeError::WrongSession`], [`EnvelopeError::BadMsg`], [`EnvelopeError::Duplicate`].
    pub fn decode_response(&mut self, packet: &[u8], now: UnixTime) -> Result<Incoming, EnvelopeError> {
        let env = open_envelope(&self.auth_key, Direction::ServerToClient, packet)?;
        if env.session_id != self.session_id {
            return Err(EnvelopeError::WrongSession);
        }
        let bad = |code| EnvelopeError::BadMsg {
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
            Verdict::Duplicate => return Err(EnvelopeError::Duplicate { msg_id: env.msg_id.0 }),
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
        let bad = notice.bad_msg_id();
        let sent_seq_no = self.sent.iter().find(|e| e.0 == bad)?.1;
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
            Notice::BadMsgNotification {
                error_code: 32,
                bad_msg_seqno,
                ..
            } => {
                // The notice must name the seq_no we sent with that msg_id: another one is not
                // about our message, and trusting it would let one bad notice push the counter
                // to the top for good (every call then refused with code 33).
                if *bad_msg_seqno != sent_seq_no {
                    return None;
                }
                // Our seq_no went back (a profile restored from an older copy): the relay holds a
                // higher one, H >= bad_msg_seqno. It accepts up to H + MAX_SEQ_NO_STEP, so a jump
                // to bad_msg_seqno + MAX_SEQ_NO_STEP is never too high (each notice jumps from
                // its own refused seq_no, so several at once never add up). A copy far behind
                // takes one refusal per MAX_SEQ_NO_STEP: (H - bad_msg_seqno) / 4096 of them.
                self.seq
                    .skip_to(bad_msg_seqno.saturating_add(crate::MAX_SEQ_NO_STEP));
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
