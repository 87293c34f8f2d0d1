//! The authenticated-request pipeline: open and check the envelope, plan the call, commit it
//! with retry, answer.

use std::time::Duration;

use mtproto_crypto::{
    rand_core::{OsRng, RngCore},
    Direction,
};
use mtproto_session::{
    session::{open_envelope, packet_key_id},
    EnvelopeError as SessionError, Notice,
};

use super::{answers::Reply, long_poll::arm, Relay};
use crate::{
    api::{Call, Endpoint, EnvelopeRequest, EnvelopeResponse, MAX_LOOKUP_NAMES},
    limits::KeyLimits,
    Commit, EngineError, Op, Outcome, RelayError,
};

/// How often a commit is retried when another request of the same session won the race.
const COMMIT_ATTEMPTS: usize = 16;

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
        let packet = req.packet_bytes().ok_or_else(|| RelayError::InvalidField {
            field: "packet".into(),
            reason: "give `packet`, or `auth_key_id`, `message_key` and `encrypted_data`".into(),
        })?;
        let key_id = packet_key_id(&packet)?;
        let cached = self.auth_key(key_id).await?;
        let (key, client_id) = (&cached.key, &cached.client_id);
        let env = open_envelope(key, Direction::ClientToServer, &packet)?;
        if req.client_id.as_deref().is_some_and(|c| c != client_id.as_str()) {
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
        let lock = self.locks.get(key_id);
        // Set when a refusal came from this node's cached session: read storage at once.
        let mut recheck = false;
        for attempt in 0..COMMIT_ATTEMPTS {
            if attempt > 0 && !recheck {
                // Another node won the race: back off a little before reading again.
                tokio::time::sleep(Duration::from_millis(1 + u64::from(OsRng.next_u32() % 10))).await;
            }
            recheck = false;
            let guard = lock.lock().await;
            let now = self.clock.now();
            let cached = if attempt == 0 {
                self.cached_session(key_id)
            } else {
                None
            };
            let from_cache = cached.is_some();
            let stored = match cached {
                Some(s) => s,
                None => self
                    .engine
                    .session(key_id, client_id)
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
            session.rotate_salts_with(now, |since| self.salt_for(key_id, sid, since));
            let incoming = match session.accept(env.clone(), now) {
                Ok(incoming) => incoming,
                Err(SessionError::Duplicate { msg_id }) => {
                    let responder = session.responder();
                    // The answer may long-poll: never hold the key's lock while it waits.
                    drop(guard);
                    let to = Reply {
                        key,
                        client: client_id,
                        responder,
                        msg_id,
                        seq_no: env.seq_no,
                    };
                    return self.answer_duplicate(endpoint, req, &env.body, to).await;
                }
                Err(SessionError::BadMsg { .. }) if from_cache => {
                    // Checked against this node's cached copy, which another node's commits may
                    // have left behind (a client whose polls went elsewhere is far ahead: 33).
                    // Checked again against storage before refusing.
                    self.forget_session(key_id);
                    drop(guard);
                    recheck = true;
                    continue;
                }
                Err(e @ SessionError::BadMsg { code, .. }) => {
                    // A resend from before the session's time or replay window whose request was
                    // committed: answered from its stored outcome like any resend (outcomes are
                    // kept OUTCOME_TTL_SECS), never refused as if it had not been stored.
                    if matches!(
                        code,
                        mtproto_session::BadMsgCode::MsgIdTooLow | mtproto_session::BadMsgCode::MsgTooOld
                    ) && self
                        .engine
                        .outcome(key_id, client_id, env.msg_id.0)
                        .await?
                        .is_some()
                    {
                        let responder = session.responder();
                        drop(guard);
                        let to = Reply {
                            key,
                            client: client_id,
                            responder,
                            msg_id: env.msg_id.0,
                            seq_no: env.seq_no,
                        };
                        return self.answer_duplicate(endpoint, req, &env.body, to).await;
                    }
                    let salt = session
                        .current_salt(now)
                        .unwrap_or(mtproto_session::ServerSalt([0; 8]));
                    let notice = Notice::for_error(&e, salt)
                        .and_then(|n| session.encode_notice(key, &n, now, &mut OsRng).ok())
                        .map(|o| o.packet);
                    return Err(RelayError::BadMsg { code, notice });
                }
                Err(e) => return Err(e.into()),
            };
            let (op, keep_outcome) = match self.prekey_op(&call, client_id).await? {
                // Both change state (a one-time prekey handed out is gone): kept for resends.
                Some(op) => (op, true),
                None => self.op_for(&call)?,
            };
            self.mark_present(client_id, now);
            let to = Reply {
                key,
                client: client_id,
                responder: session.responder(),
                msg_id: incoming.msg_id.0,
                seq_no: incoming.seq_no,
            };
            // Committed anyway once its seq_no is half a step above the highest stored: the
            // client's counter climbs with every poll, and the stored window is what the next
            // request is checked against (more than MAX_SEQ_NO_STEP above it is refused, 33).
            // Without this an idle client that only polled locked itself out after 2,048 polls.
            let drifting =
                incoming.seq_no.saturating_sub(highest_stored) > mtproto_session::MAX_SEQ_NO_STEP / 2;
            if matches!(&op, Op::Ack { seqs } if seqs.is_empty()) && !drifting && !self.touch_due(key_id, now)
            {
                // A poll that acknowledges nothing changes nothing: it is checked like every
                // request but not committed (docs/protocol.md, "Reads are not committed").
                drop(guard);
                return self.answer(&call, Outcome::Acked { removed: 0 }, None, to).await;
            }
            let commit = Commit {
                key_id,
                client: client_id.clone(),
                session,
                expected_version: version,
                msg_id: incoming.msg_id.0,
                op,
                keep_outcome,
                now,
            };
            let after = commit.session.clone();
            let poll_limit = match &call {
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
                        .map(|(o, e)| (o, Some((e, armed))))
                }
                None => self.engine.commit(commit).await.map(|o| (o, None)),
            };
            self.observer
                .storage_commit(started.elapsed(), matches!(committed, Err(EngineError::Conflict)));
            let (outcome, fetched) = match committed {
                Ok(o) => {
                    self.cache_session(
                        key_id,
                        crate::SessionRecord {
                            session: after,
                            version: version + 1,
                        },
                    );
                    o
                }
                Err(EngineError::Conflict) => {
                    self.forget_session(key_id);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            drop(guard);
            if let Call::SendMessage { target_peer, .. } = &call {
                self.notifier.notify(target_peer.as_str());
            }
            return self.answer(&call, outcome, fetched, to).await;
        }
        Err(RelayError::Unavailable("session contended".into()))
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
