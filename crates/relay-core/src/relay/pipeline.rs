//! The authenticated-request pipeline: open and check the envelope, plan the call, commit it
//! with retry, answer.

use std::sync::Arc;
use std::time::Duration;

use mtproto_crypto::{
    rand_core::{OsRng, RngCore},
    AuthKeyId, Direction,
};

use mtproto_session::{
    session::{open_envelope, packet_key_id},
    BadMsgCode, Envelope, EnvelopeError as SessionError, Notice, Responder, ServerSalt, ServerSession,
    UnixTime,
};

use super::{answers::Reply, caches::CachedKey, long_poll::arm, Relay};
use crate::{
    api::{Call, Endpoint, EnvelopeRequest, EnvelopeResponse, MAX_LOOKUP_NAMES},
    limits::KeyLimits,
    Commit, EngineError, Op, Outcome, RelayError,
};

/// How often a commit is retried when another request of the same session won the race.
const COMMIT_ATTEMPTS: usize = 16;

/// A request whose envelope opened under a known auth key and whose call parsed: what every
/// attempt to commit it works on.
struct Opened<'r> {
    endpoint: Endpoint,
    req: &'r EnvelopeRequest,
    key_id: AuthKeyId,
    cached: Arc<CachedKey>,
    env: Envelope,
    call: Call,
}

impl Opened<'_> {
    /// Whom an answer to `msg_id`/`seq_no` is sealed for.
    fn reply(&self, responder: Responder, msg_id: u64, seq_no: u32) -> Reply<'_> {
        Reply {
            key: &self.cached.key,
            client: &self.cached.client_id,
            responder,
            msg_id,
            seq_no,
        }
    }
}

/// The session as one attempt found it and accepted the request into it.
struct Accepted {
    session: ServerSession,
    /// The stored record's version, for the compare-and-swap.
    version: u64,
    /// The highest seq_no the stored window held before this request.
    highest_stored: u32,
    msg_id: u64,
    seq_no: u32,
    now: UnixTime,
}

/// Why an attempt ended without an answer: try again.
enum Again {
    /// Another request of the session committed first: back off a little, read again.
    Conflict,
    /// The refusal came from this node's cached session: read storage at once.
    Recheck,
}

impl Relay {
    /// An authenticated call on `endpoint`.
    ///
    /// # Errors
    /// Every [`RelayError`] an envelope or its call can cause; nothing is stored on error.
    pub async fn handle(
        &self,
        endpoint: Endpoint,
        req: &EnvelopeRequest,
    ) -> Result<EnvelopeResponse, RelayError> {
        let opened = self.open_request(endpoint, req).await?;
        let lock = self.locks.get(opened.key_id);
        let mut again = Again::Recheck;
        for attempt in 0..COMMIT_ATTEMPTS {
            if attempt > 0 && matches!(again, Again::Conflict) {
                // Another node won the race: back off a little before reading again.
                tokio::time::sleep(Duration::from_millis(1 + u64::from(OsRng.next_u32() % 10))).await;
            }
            match self.attempt(&opened, &lock, attempt == 0).await? {
                Ok(answer) => return Ok(answer),
                Err(a) => again = a,
            }
        }
        Err(RelayError::Unavailable("session contended".into()))
    }

    /// Opens the envelope, checks its clear fields against it, parses the call and charges the
    /// account: nothing is read from the session or stored yet.
    async fn open_request<'r>(
        &self,
        endpoint: Endpoint,
        req: &'r EnvelopeRequest,
    ) -> Result<Opened<'r>, RelayError> {
        let packet = req.packet_bytes().ok_or_else(|| RelayError::InvalidField {
            field: "packet".into(),
            reason: "give `packet`, or `auth_key_id`, `message_key` and `encrypted_data`".into(),
        })?;
        let key_id = packet_key_id(&packet)?;
        let cached = self.auth_key(key_id).await?;
        let env = open_envelope(&cached.key, Direction::ClientToServer, &packet)?;
        if req
            .client_id
            .as_deref()
            .is_some_and(|c| c != cached.client_id.as_str())
        {
            return Err(RelayError::FieldMismatch("client_id"));
        }
        if req.message_id.is_some_and(|m| m.0 != env.msg_id.0) {
            return Err(RelayError::FieldMismatch("message_id"));
        }
        if req.seq_no.is_some_and(|s| s != env.seq_no) {
            return Err(RelayError::FieldMismatch("seq_no"));
        }
        // Charged once the envelope proved who sent it (a forged one cannot drain a victim's
        // bucket), before any storage work.
        let call = self.parse_call(endpoint, req, &env.body)?;
        let acks = match &call {
            Call::PollMessages { ack, .. } => ack.len(),
            _ => 0,
        };
        self.accounts.admit(
            *key_id.as_bytes(),
            KeyLimits::cost(acks),
            std::time::Instant::now(),
        )?;
        Ok(Opened {
            endpoint,
            req,
            key_id,
            cached,
            env,
            call,
        })
    }

    /// One read → accept → commit under the key's lock (on the first attempt from this node's
    /// cached session). The answer, or why to try again.
    async fn attempt(
        &self,
        o: &Opened<'_>,
        lock: &tokio::sync::Mutex<()>,
        first: bool,
    ) -> Result<Result<EnvelopeResponse, Again>, RelayError> {
        let guard = lock.lock().await;
        let now = self.clock.now();
        let cached = if first {
            self.cached_session(o.key_id)
        } else {
            None
        };
        let from_cache = cached.is_some();
        let stored = match cached {
            Some(s) => s,
            None => self
                .engine
                .session(o.key_id, &o.cached.client_id)
                .await?
                .ok_or(RelayError::UnknownAuthKey)?,
        };
        let version = stored.version;
        let mut session = stored.session;
        let highest_stored = session.highest_seq_no();
        // Derived, not drawn: a rotation this request does not commit (a refusal, a poll
        // that changes nothing) is made again identically by the next one, so the salt a
        // bad_server_salt notice announces is the one the next request is checked against.
        let sid = session.session_id();
        session.rotate_salts_with(now, |since| self.salt_for(o.key_id, sid, since));
        let incoming = match session.accept(o.env.clone(), now) {
            Ok(incoming) => incoming,
            Err(SessionError::Duplicate { msg_id }) => {
                let to = o.reply(session.responder(), msg_id, o.env.seq_no);
                // The answer may long-poll: never hold the key's lock while it waits.
                drop(guard);
                return self
                    .answer_duplicate(o.endpoint, o.req, &o.env.body, to)
                    .await
                    .map(Ok);
            }
            Err(SessionError::BadMsg { .. }) if from_cache => {
                // Checked against this node's cached copy, which another node's commits may
                // have left behind (a client whose polls went elsewhere is far ahead: 33).
                // Checked again against storage before refusing.
                self.forget_session(o.key_id);
                return Ok(Err(Again::Recheck));
            }
            Err(e @ SessionError::BadMsg { .. }) => {
                return self.refuse(o, &mut session, e, now, guard).await.map(Ok)
            }
            Err(e) => return Err(e.into()),
        };
        let accepted = Accepted {
            session,
            version,
            highest_stored,
            msg_id: incoming.msg_id.0,
            seq_no: incoming.seq_no,
            now,
        };
        self.commit_call(o, accepted, guard).await
    }

    /// A request the session refused (`e`, a bad_msg): answered from its stored outcome if it
    /// is a resend from before the session's time or replay window whose request was committed
    /// (outcomes are kept OUTCOME_TTL_SECS), never refused as if it had not been stored;
    /// otherwise the refusal, with a sealed notice that lets the client correct its clock or
    /// salt.
    async fn refuse(
        &self,
        o: &Opened<'_>,
        session: &mut ServerSession,
        e: SessionError,
        now: UnixTime,
        guard: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<EnvelopeResponse, RelayError> {
        let SessionError::BadMsg { code, .. } = e else {
            return Err(e.into());
        };
        if matches!(code, BadMsgCode::MsgIdTooLow | BadMsgCode::MsgTooOld)
            && self
                .engine
                .outcome(o.key_id, &o.cached.client_id, o.env.msg_id.0)
                .await?
                .is_some()
        {
            let to = o.reply(session.responder(), o.env.msg_id.0, o.env.seq_no);
            drop(guard);
            return self.answer_duplicate(o.endpoint, o.req, &o.env.body, to).await;
        }
        let salt = session.current_salt(now).unwrap_or(ServerSalt([0; 8]));
        let notice = Notice::for_error(&e, salt)
            .and_then(|n| session.encode_notice(&o.cached.key, &n, now, &mut OsRng).ok())
            .map(|out| out.packet);
        Err(RelayError::BadMsg { code, notice })
    }

    /// Plans the accepted call and commits it with the session (a poll that acknowledges
    /// nothing is not committed), then answers. `Again::Conflict` when another request of the
    /// session committed first.
    async fn commit_call(
        &self,
        o: &Opened<'_>,
        a: Accepted,
        guard: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<Result<EnvelopeResponse, Again>, RelayError> {
        let client_id = &o.cached.client_id;
        let (op, keep_outcome) = match self.prekey_op(&o.call, client_id).await? {
            // Both change state (a one-time prekey handed out is gone): kept for resends.
            Some(op) => (op, true),
            None => self.op_for(&o.call)?,
        };
        self.mark_present(client_id, a.now);
        let to = o.reply(a.session.responder(), a.msg_id, a.seq_no);
        // Committed anyway once its seq_no is half a step above the highest stored: the
        // client's counter climbs with every poll, and the stored window is what the next
        // request is checked against (more than MAX_SEQ_NO_STEP above it is refused, 33).
        // Without this an idle client that only polled locked itself out after 2,048 polls.
        let drifting = a.seq_no.saturating_sub(a.highest_stored) > mtproto_session::MAX_SEQ_NO_STEP / 2;
        if matches!(&op, Op::Ack { seqs } if seqs.is_empty()) && !drifting && !self.touch_due(o.key_id, a.now)
        {
            // A poll that acknowledges nothing changes nothing: it is checked like every
            // request but not committed (docs/protocol.md, "Reads are not committed").
            drop(guard);
            return self
                .answer(&o.call, Outcome::Acked { removed: 0 }, None, to)
                .await
                .map(Ok);
        }
        let after = a.session.clone();
        let commit = Commit {
            key_id: o.key_id,
            client: client_id.clone(),
            session: a.session,
            expected_version: a.version,
            msg_id: a.msg_id,
            op,
            keep_outcome,
            now: a.now,
        };
        let poll_limit = match &o.call {
            Call::PollMessages { limit, .. } => Some(
                limit
                    .unwrap_or(self.config.poll_limit)
                    .clamp(1, self.config.poll_limit),
            ),
            _ => None,
        };
        let started = std::time::Instant::now();
        let committed = match poll_limit {
            Some(limit) => {
                // A poll's wake-up is armed before its read: if the read finds nothing, the
                // wait starts at once, with no second read (one storage round trip less).
                let armed = arm(self.notifier.subscribe(client_id.as_str()));
                self.engine
                    .commit_and_fetch(commit, limit)
                    .await
                    .map(|(out, e)| (out, Some((e, armed))))
            }
            None => self.engine.commit(commit).await.map(|out| (out, None)),
        };
        self.observer
            .storage_commit(started.elapsed(), matches!(committed, Err(EngineError::Conflict)));
        let (outcome, fetched) = match committed {
            Ok(done) => done,
            Err(EngineError::Conflict) => {
                self.forget_session(o.key_id);
                return Ok(Err(Again::Conflict));
            }
            Err(e) => return Err(e.into()),
        };
        self.cache_session(
            o.key_id,
            crate::SessionRecord {
                session: after,
                version: a.version + 1,
            },
        );
        drop(guard);
        if let Call::SendMessage { target_peer, .. } = &o.call {
            self.notifier.notify(target_peer.as_str());
        }
        self.answer(&o.call, outcome, fetched, to).await.map(Ok)
    }

    pub(crate) fn parse_call(
        &self,
        endpoint: Endpoint,
        req: &EnvelopeRequest,
        body: &[u8],
    ) -> Result<Call, RelayError> {
        let call: Call = serde_json::from_slice(body).map_err(|e| RelayError::InvalidField {
            field: "envelope body".into(),
            reason: e.to_string(),
        })?;
        if call.endpoint() != endpoint {
            return Err(RelayError::MethodMismatch);
        }
        if let (Call::SendMessage { target_peer, .. }, Some(clear)) = (&call, &req.target_peer) {
            if clear != target_peer.as_str() {
                return Err(RelayError::FieldMismatch("target_peer"));
            }
        }
        Ok(call)
    }

    pub(crate) fn op_for(&self, call: &Call) -> Result<(Op, bool), RelayError> {
        Ok(match call {
            Call::SendMessage {
                target_peer,
                payload,
                key_version,
            } => {
                if payload.0.len() > self.config.max_payload {
                    return Err(RelayError::PayloadTooLarge {
                        got: payload.0.len(),
                        max: self.config.max_payload,
                    });
                }
                if payload.0.is_empty() {
                    return Err(RelayError::InvalidField {
                        field: "payload".into(),
                        reason: "empty".into(),
                    });
                }
                let op = Op::Send {
                    to: target_peer.clone(),
                    payload: payload.0.clone(),
                    quota: self.config.quota,
                    ttl_secs: self.config.message_ttl_secs,
                    key_version: *key_version,
                };
                (op, true)
            }
            Call::PollMessages { ack, .. } => {
                if ack.len() > self.config.max_acks {
                    return Err(RelayError::InvalidField {
                        field: "ack".into(),
                        reason: format!("at most {} ids", self.config.max_acks),
                    });
                }
                (Op::Ack { seqs: ack.clone() }, false)
            }
            Call::ListPeers {
                names, prefix, limit, ..
            } => {
                if names.len() > MAX_LOOKUP_NAMES {
                    return Err(RelayError::InvalidField {
                        field: "names".into(),
                        reason: format!("at most {MAX_LOOKUP_NAMES} names"),
                    });
                }
                if let Some(p) = prefix.as_deref().filter(|p| !p.is_empty()) {
                    mtproto_session::ClientId::new(p).map_err(|_| RelayError::InvalidField {
                        field: "prefix".into(),
                        reason: "the start of a name: 1-64 of A-Z a-z 0-9 _ - .".into(),
                    })?;
                }
                if limit == &Some(0) {
                    return Err(RelayError::InvalidField {
                        field: "limit".into(),
                        reason: "at least 1".into(),
                    });
                }
                (Op::Touch, false)
            }
            Call::PublishPrekeys { .. } | Call::PrekeyBundle { .. } => {
                return Err(RelayError::Internal(
                    "a prekey call's op is made by prekey_op".into(),
                ));
            }
            Call::PublishKey { identity_key } => {
                // A low-order point would give every peer an all-zero shared secret.
                let key = mtproto_crypto::IdentityPublic::validated(&identity_key.0).map_err(|e| {
                    RelayError::InvalidField {
                        field: "identity_key".into(),
                        reason: match e {
                            mtproto_crypto::Error::LowOrderPoint => "low-order point".into(),
                            _ => "must be 32 bytes".into(),
                        },
                    }
                })?;
                (Op::PublishKey { key: *key.as_bytes() }, true)
            }
        })
    }
}
