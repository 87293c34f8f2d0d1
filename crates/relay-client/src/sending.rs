//! Sending: sealing once into the outbox, transmitting in order, honest outcomes, retries.

use mtproto_crypto::rand_core::OsRng;
use mtproto_session::{wire::Bytes, ClientId, MsgId};
use relay_api::{Call, EnvelopeRequest, EnvelopeResponse, ErrorCode, SendAnswer, OUTCOME_TTL_SECS};

use crate::connection::SessionHost;
use crate::{
    now, outbox, peer_name, Client, ClientError, OutboxEntry, OutboxId, PostedEnvelope, Receipt, Refusal,
    SendState, State, MAX_OUTBOX,
};

/// How old (seconds, server time) an envelope may be and still be resent as is: the relay
/// answers a resend of a committed request from its stored outcome for
/// [`OUTCOME_TTL_SECS`] (even past the msg_id time window and the replay
/// window); ten minutes are kept for clock drift. Past it a new envelope carries the same
/// end-to-end packet.
const REUSE_ENVELOPE_SECS: u64 = OUTCOME_TTL_SECS - 600;

/// What became of a posted envelope.
enum Posted {
    /// The relay's answer (stored).
    Answered(Vec<u8>),
    /// Refused for good: the code and the relay's message.
    Refused(ErrorCode, String),
    /// No answer, or a refusal that leaves the message sending: why.
    Unanswered(String),
}

/// What to do after the relay refused an envelope.
enum AfterRefusal {
    /// Post again in a new envelope (a notice applied, a new handshake, an envelope the relay
    /// cannot place).
    Again,
    /// Leave the message sending, with this reason.
    LeaveSending(String),
    /// Record this.
    Posted(Posted),
}

impl Client {
    /// Encrypts `body` end to end for `peer` (once), puts it in the outbox (saved in the
    /// profile), then flushes the outbox: older waiting messages first, then this one.
    ///
    /// It goes under a ratchet conversation with `peer` when there is one (see
    /// [`Client::conversation`]); otherwise the client fetches the peer's prekey bundle and
    /// starts one (without a one-time prekey when the relay had none left:
    /// [`Event::StartedWithoutOneTimePrekey`](crate::Event::StartedWithoutOneTimePrekey) with
    /// the next poll). Only a peer that published no prekeys (an older client) gets the message
    /// under the static chat key.
    ///
    /// The receipt says what became of it: [`SendState::Stored`]; [`SendState::Sending`] when
    /// the relay could not be reached or was unavailable for about 5 s (it stays in the outbox
    /// and is resent by the next [`Client::flush_outbox`]); [`SendState::Refused`] with the
    /// relay's reason (`mailbox_full`, `sender_quota`, `unknown_peer`, `payload_too_large`).
    ///
    /// # Errors
    /// [`ClientError::PeerKeyChanged`], [`ClientError::NoPeerKey`] and transport errors while
    /// looking up a new peer's key or fetching its prekey bundle,
    /// [`ClientError::SigningKeyChanged`] for a bundle signed by another key than the first one,
    /// [`ClientError::OutboxFull`], protocol errors while sealing,
    /// profile errors — all before the message is queued, except a profile error.
    pub async fn send(&self, peer: &str, body: &[u8]) -> Result<Receipt, ClientError> {
        let peer = peer_name(peer)?;
        self.ensure_chat(&peer).await?;
        self.prepare_conversation(&peer).await?;
        let id = {
            let mut st = self.state.lock().await;
            if st.outbox.len() >= MAX_OUTBOX {
                return Err(ClientError::OutboxFull { max: MAX_OUTBOX });
            }
            let entry = self.seal_entry(&mut st, &peer, body)?;
            let id = entry.id;
            st.outbox.insert(id, entry);
            // Its receipt is this call's, even if a concurrent poll's flush settles it.
            st.awaited.insert(id);
            if let Err(e) = self.save(&st).await {
                st.awaited.remove(&id);
                return Err(e);
            }
            id
        };
        self.flush_and_report(id).await
    }

    /// Flushes the outbox up to `id` and reports where `id` stands: settled (stored or refused,
    /// taken from the unreported ones) or still in the outbox.
    /// The caller put `id` in `awaited` (under the lock that queued it); it is taken out here.
    pub(crate) async fn flush_and_report(&self, id: OutboxId) -> Result<Receipt, ClientError> {
        let flushed = self.flush_outbox_for(Some(id)).await;
        let mut st = self.state.lock().await;
        st.awaited.remove(&id);
        flushed?;
        if let Some(i) = st.settled.iter().position(|r| r.id == id) {
            return Ok(st.settled.remove(i));
        }
        st.outbox
            .get(&id)
            .map(OutboxEntry::receipt)
            .ok_or(ClientError::NotInOutbox(id))
    }

    /// Seals `body` as the next message to `peer` in a new outbox entry (not yet inserted):
    /// under the ratchet conversation that sends, else under the static key when that is
    /// allowed ([`Client::prepare_conversation`] ran first).
    pub(crate) fn seal_entry(
        &self,
        st: &mut State,
        peer: &str,
        body: &[u8],
    ) -> Result<OutboxEntry, ClientError> {
        let may_send_static = st.may_send_static(peer, self.prekeys_on);
        let window = st
            .chats
            .get_mut(peer)
            .ok_or_else(|| ClientError::NoPeerKey(peer.into()))?;
        let sealed = match st.ratchets.get_mut(peer).and_then(|r| r.sender()) {
            Some(conv) => conv.chat.seal(window, body, now(), &mut OsRng)?,
            None if may_send_static => window.seal(body, now(), &mut OsRng)?,
            None => {
                return Err(ClientError::Invalid(format!(
                    "no conversation with {peer} to send under yet (its prekey bundle was not fetched)"
                )))
            }
        };
        let key_version = st.peers.get(peer).map(|k| k.key_version);
        let id = OutboxId(st.next_outbox_id);
        st.next_outbox_id += 1;
        Ok(OutboxEntry {
            id,
            to: peer.to_owned(),
            body: Bytes(body.to_vec()),
            packet: Bytes(sealed.packet),
            seq: sealed.seq,
            envelope: None,
            maybe_stored: false,
            released: false,
            control: false,
            key_version,
            state: SendState::Sending { last_error: None },
        })
    }

    /// Resends every message of the outbox still sending, oldest first, and returns the ones
    /// settled now (stored or refused) that no `send` call has reported. Stops at the first
    /// that stays sending (the relay is unreachable: the rest would fail too). Run
    /// automatically at the start of every [`Client::poll`] and [`Client::send`].
    ///
    /// # Errors
    /// Profile errors, and protocol errors of a new handshake.
    pub async fn flush_outbox(&self) -> Result<Vec<Receipt>, ClientError> {
        self.flush_outbox_for(None).await?;
        Ok(self.state.lock().await.take_unawaited_receipts())
    }

    /// The messages waiting in the outbox: sending or refused, oldest first.
    pub async fn outbox(&self) -> Vec<Receipt> {
        self.state
            .lock()
            .await
            .outbox
            .values()
            .filter(|e| !e.control)
            .map(OutboxEntry::receipt)
            .collect()
    }

    /// Sends a waiting message again now: a refused one is resent (its number given back
    /// earlier, it is sealed again under a new one), a sending one is flushed.
    ///
    /// # Errors
    /// [`ClientError::NotInOutbox`]; as [`Client::flush_outbox`].
    pub async fn retry(&self, id: OutboxId) -> Result<Receipt, ClientError> {
        let to = self.state.lock().await.outbox.get(&id).map(|e| e.to.clone());
        if let Some(to) = to {
            // A message sealed again goes under a ratchet conversation if the peer has prekeys.
            self.prepare_conversation(&to).await?;
        }
        {
            let mut st = self.state.lock().await;
            let entry = st.outbox.get(&id).ok_or(ClientError::NotInOutbox(id))?;
            if matches!(entry.state, SendState::Refused { .. }) {
                let to = entry.to.clone();
                if let Some(&new_version) = st.key_changed.get(&to) {
                    return Err(ClientError::PeerKeyChanged {
                        old_version: st.peers.get(&to).map_or(0, |k| k.key_version),
                        peer: to,
                        new_version,
                    });
                }
                // Sealed for a key the user has replaced since (by accepting the new one): it
                // is sealed again under the chat with the accepted key.
                let stale_key = entry.key_version.is_some()
                    && entry.key_version != st.peers.get(&to).map(|k| k.key_version);
                let fresh = if entry.released || stale_key {
                    // Its number was given back: seal it again as a new message.
                    let body = entry.body.0.clone();
                    let mut fresh = self.seal_entry(&mut st, &to, &body)?;
                    fresh.id = id;
                    Some(fresh)
                } else {
                    None
                };
                if let Some(e) = st.outbox.get_mut(&id) {
                    match fresh {
                        Some(f) => *e = f,
                        None => e.state = SendState::Sending { last_error: None },
                    }
                }
                self.save(&st).await?;
            }
            // Its receipt is this call's, even if a concurrent poll's flush settles it.
            st.awaited.insert(id);
        }
        self.flush_and_report(id).await
    }

    /// Stops sending a waiting message and removes it from the outbox. Its sequence number is
    /// given back when no copy of it can have been stored and it is the last one sealed for
    /// its peer; otherwise the peer will report it lost.
    ///
    /// # Errors
    /// [`ClientError::NotInOutbox`]; profile errors.
    ///
    /// # Security
    /// A message that was posted without an answer may have been stored anyway: abandoning it
    /// does not unsend it (the peer may still receive it).
    pub async fn abandon(&self, id: OutboxId) -> Result<Receipt, ClientError> {
        let _flush = self.flushing.lock().await;
        let mut st = self.state.lock().await;
        let mut entry = st.outbox.remove(&id).ok_or(ClientError::NotInOutbox(id))?;
        entry.drop_envelope();
        if !entry.maybe_stored && !entry.released {
            if let Some(chat) = st.chats.get_mut(&entry.to) {
                entry.released = chat.release_unsent(entry.seq);
            }
        }
        self.save(&st).await?;
        Ok(entry.receipt())
    }

    /// Transmits the outbox (only `only` when given, else every entry still sending).
    pub(crate) async fn flush_outbox_for(&self, only: Option<OutboxId>) -> Result<(), ClientError> {
        let _flush = self.flushing.lock().await;
        let ids: Vec<OutboxId> = {
            let st = self.state.lock().await;
            st.outbox
                .values()
                .filter(|e| matches!(e.state, SendState::Sending { .. }))
                .map(|e| e.id)
                .collect()
        };
        for id in ids {
            let state = self.transmit(id).await?;
            if matches!(state, Some(SendState::Sending { .. })) {
                break;
            }
            if let Some(SendState::Refused {
                code: ErrorCode::PeerKeyChanged,
                ..
            }) = state
            {
                // The recipient has another key now: the directory lookup marks it changed,
                // so later sends fail fast with `PeerKeyChanged` until the user accepts it.
                let to = self.state.lock().await.outbox.get(&id).map(|e| e.to.clone());
                if let Some(to) = to {
                    if let Err(e) = self.lookup(&[to.as_str()]).await {
                        tracing::debug!(peer = %to, error = %e, "could not refresh a changed key");
                    }
                }
            }
            if only == Some(id) {
                break;
            }
        }
        Ok(())
    }

    /// Posts one outbox entry and records the answer; returns its state after (None if it is no
    /// longer in the outbox). The caller holds `flushing`.
    pub(crate) async fn transmit(&self, id: OutboxId) -> Result<Option<SendState>, ClientError> {
        // A handful of fresh envelopes at most: a stale salt or clock, a new handshake.
        for _ in 0..4 {
            let Some(packet) = self.envelope_for(id).await? else {
                return Ok(None);
            };
            let req = EnvelopeRequest::packet(packet);
            let answer = self
                .transport
                .post_raw(relay_api::Endpoint::SecureMessage.path(), &req)
                .await;
            let posted = match answer {
                Err(e) => Posted::Unanswered(e.to_string()),
                Ok(Ok(raw)) => Posted::Answered(raw),
                Ok(Err(refusal)) => match self.after_refusal(id, refusal).await? {
                    AfterRefusal::Again => continue,
                    AfterRefusal::LeaveSending(why) => return self.leave_sending(id, why).await,
                    AfterRefusal::Posted(posted) => posted,
                },
            };
            let mut st = self.state.lock().await;
            let state = Self::record(&mut st, id, posted);
            if state.is_some() {
                self.save(&st).await?;
            }
            return Ok(state);
        }
        self.leave_sending(id, "gave up after repeated refusals".into())
            .await
    }

    /// The envelope entry `id` goes in, saved before it leaves (None if it is no longer in the
    /// outbox).
    async fn envelope_for(&self, id: OutboxId) -> Result<Option<Vec<u8>>, ClientError> {
        let mut st = self.state.lock().await;
        let st = &mut *st;
        let Some(entry) = st.outbox.get_mut(&id) else {
            return Ok(None);
        };
        let session = st
            .session
            .as_mut()
            .ok_or_else(|| ClientError::Invalid("no session".into()))?;
        let server_now = now().offset_secs(session.time_offset()).as_secs();
        // docs/protocol.md §3 "The sender's outbox": the same envelope while the relay
        // can still recognise its msg_id (same session, within the msg_id window, with
        // a minute to spare), else a new envelope around the same end-to-end packet.
        let reusable = entry.envelope.as_ref().is_some_and(|env| {
            env.session_id == session.session_id()
                && MsgId(env.msg_id).secs() + REUSE_ENVELOPE_SECS >= server_now
        });
        if !reusable {
            entry.drop_envelope();
            let target = ClientId::new(&entry.to).map_err(|e| ClientError::Invalid(e.to_string()))?;
            let call = Call::SendMessage {
                target_peer: target,
                payload: entry.packet.clone(),
                key_version: entry.key_version,
            };
            let body = serde_json::to_vec(&call).map_err(|e| ClientError::Invalid(e.to_string()))?;
            let out = session.encode_request(&body, now(), &mut OsRng)?;
            entry.envelope = Some(PostedEnvelope {
                msg_id: out.msg_id.0,
                session_id: session.session_id(),
                packet: Bytes(out.packet),
                uncertain: true,
            });
        }
        // Saved as "may be stored" before it leaves: if this process dies before the
        // answer, the envelope may have been stored, so its sequence number must never
        // be given back. Only a definitive refusal of this envelope clears it.
        if let Some(env) = entry.envelope.as_mut() {
            env.uncertain = true;
        }
        let packet = entry
            .envelope
            .as_ref()
            .map(|e| e.packet.0.clone())
            .unwrap_or_default();
        // Saved before it leaves: a restarted client resends these very bytes.
        self.save(st).await?;
        Ok(Some(packet))
    }

    /// What a refusal of entry `id`'s envelope means.
    async fn after_refusal(&self, id: OutboxId, refusal: Refusal) -> Result<AfterRefusal, ClientError> {
        if let Some(notice) = &refusal.body.notice {
            // A stale salt or clock (checked before anything is stored): apply the
            // notice and make a new envelope.
            if SessionHost::apply_notice(self, &notice.0).await? {
                if let Some(e) = self.state.lock().await.outbox.get_mut(&id) {
                    e.drop_envelope();
                }
                return Ok(AfterRefusal::Again);
            }
            if refusal.body.error != ErrorCode::BadMsg {
                let why = format!("{}: {}", refusal.body.error, refusal.body.message);
                return Ok(AfterRefusal::LeaveSending(why));
            }
            // A bad_msg notice with nothing to apply (20: this envelope fell below
            // the relay's replay window): a new envelope, below; resending this one
            // would be refused the same way every time.
        }
        let code = refusal.body.error;
        if code == ErrorCode::UnknownAuthKey {
            self.handshake_again(true).await?;
            return Ok(AfterRefusal::Again);
        }
        if matches!(code, ErrorCode::BadMsg | ErrorCode::MsgIdReused) {
            // The relay cannot tell whether it saw this envelope: a new one; the
            // first may have been stored (then the peer drops the copy).
            if let Some(e) = self.state.lock().await.outbox.get_mut(&id) {
                if let Some(env) = e.envelope.as_mut() {
                    env.uncertain = true;
                }
                e.drop_envelope();
            }
            return Ok(AfterRefusal::Again);
        }
        Ok(AfterRefusal::Posted(if outbox::is_final_refusal(code) {
            Posted::Refused(code, refusal.body.message)
        } else {
            Posted::Unanswered(format!("{code}: {}", refusal.body.message))
        }))
    }

    /// Records what became of entry `id`'s envelope; its state after (None if it is no longer
    /// in the outbox). A stored or refused message is settled (its receipt reported).
    fn record(st: &mut State, id: OutboxId, posted: Posted) -> Option<SendState> {
        let outcome = match posted {
            Posted::Answered(raw) => Self::read_send_answer(st, &raw).map(Ok),
            Posted::Refused(code, message) => Ok(Err((code, message))),
            Posted::Unanswered(why) => Err(why),
        };
        let entry = st.outbox.get_mut(&id)?;
        let state = match outcome {
            Ok(Ok(stored)) => stored,
            Ok(Err((code, message))) => {
                // This envelope was refused, so it is stored nowhere; if no earlier one can
                // be either, and nothing was sealed after it, its number is given back.
                if let Some(env) = entry.envelope.as_mut() {
                    env.uncertain = false;
                }
                entry.drop_envelope();
                if !entry.maybe_stored {
                    if let Some(chat) = st.chats.get_mut(&entry.to) {
                        entry.released = chat.release_unsent(entry.seq);
                    }
                }
                SendState::Refused { code, message }
            }
            Err(why) => {
                if let Some(env) = entry.envelope.as_mut() {
                    env.uncertain = true;
                }
                SendState::Sending {
                    last_error: Some(why),
                }
            }
        };
        entry.state = state.clone();
        let control = entry.control;
        if matches!(state, SendState::Stored { .. }) {
            if let Some(done) = st.outbox.remove(&id) {
                if !control {
                    st.settled.push(done.receipt());
                }
            }
        } else if matches!(state, SendState::Refused { .. }) {
            if !control {
                st.settled.push(entry.receipt());
            } else if entry.released {
                // A receipt stored nowhere whose number was given back: no hole, dropped.
                st.outbox.remove(&id);
            }
        }
        Some(state)
    }

    pub(crate) async fn leave_sending(
        &self,
        id: OutboxId,
        why: String,
    ) -> Result<Option<SendState>, ClientError> {
        let mut st = self.state.lock().await;
        let Some(entry) = st.outbox.get_mut(&id) else {
            return Ok(None);
        };
        entry.state = SendState::Sending {
            last_error: Some(why),
        };
        let state = entry.state.clone();
        self.save(&st).await?;
        Ok(Some(state))
    }

    /// Opens the relay's answer to a send, or says why it cannot be read (the message stays
    /// sending; the same envelope is answered again from the stored outcome).
    pub(crate) fn read_send_answer(st: &mut State, raw: &[u8]) -> Result<SendState, String> {
        let answer: EnvelopeResponse = serde_json::from_slice(raw).map_err(|e| format!("bad answer: {e}"))?;
        let session = st.session.as_mut().ok_or("no session")?;
        let incoming = session
            .decode_response(&answer.packet.0, now())
            .map_err(|e| format!("answer refused: {e}"))?;
        let answer: SendAnswer =
            serde_json::from_slice(&incoming.body).map_err(|e| format!("bad body: {e}"))?;
        Ok(SendState::Stored {
            msg_id: answer.msg_id.parse().unwrap_or(0),
            mailbox_seq: answer.mailbox_seq,
            timestamp: answer.timestamp,
        })
    }
}
