//! Receiving: long-polls, opening entries end to end, what is handed to the caller and
//! acknowledged, delivery receipts (control messages) as [`Event::Delivered`].

use std::ops::Range;
use std::time::Duration;

use futures::Stream;
use mtproto_session::Delivery;
use relay_api::{AckRef, Call, EntryKind, ErrorCode, PollAnswer};

use crate::conversations::Opened;
use crate::{
    Client, ClientError, KeptMessage, KeyStatus, Receipt, SendState, State, MAX_OUTBOX, ONE_TIME_PREKEYS_LOW,
};

/// Something received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A decrypted message.
    Message {
        /// The sender.
        from: String,
        /// The plaintext.
        body: Vec<u8>,
        /// Its sequence number in the conversation.
        seq: u32,
        /// The sender's clock, ms.
        sent_at_ms: u64,
        /// Whether earlier messages are missing or this one came late.
        delivery: Delivery,
    },
    /// A message from `from` could not be opened because its identity key changed: verify and
    /// [`Client::accept_peer_key`]; the message stays on the relay until then.
    PeerKeyChanged {
        /// The peer.
        from: String,
    },
    /// Messages from `from` with these conversation sequence numbers were given up: they did
    /// not arrive within the receive window (`docs/protocol.md` §3). Reported once; one that
    /// arrives after all is delivered with [`Delivery::Recovered`].
    Lost {
        /// The sender.
        from: String,
        /// The sequence numbers.
        seqs: Range<u32>,
    },
    /// A message from `from` that cannot be opened now (its sender has no key in the
    /// directory, ...): left on the relay and tried again with every poll; reported once.
    Held {
        /// The claimed sender.
        from: String,
        /// Why.
        reason: String,
    },
    /// A message in the outbox was settled by a flush after its `send` returned: stored or
    /// refused.
    Outbox(Receipt),
    /// The relay no longer knew this client's auth key — it lost its data, or was restored
    /// from an old backup — so the client registered again. Messages the relay held for us,
    /// and ones we sent that were not yet delivered, may have been lost: tell the user.
    /// (Messages still in our outbox are resent.) Reported once, with the next poll.
    RelayLostData,
    /// A message that was replayed, forged or broke the conversation's counters: dropped.
    Rejected {
        /// The claimed sender.
        from: String,
        /// Why.
        reason: String,
    },
    /// `from` received your messages with these conversation sequence numbers (a receipt).
    Delivered {
        /// The peer.
        from: String,
        /// The sequence numbers ([`Client::send`] returns the conversation seq in
        /// [`Receipt::seq`]).
        seqs: Vec<u32>,
    },
    /// A message you sent expired on the relay before `to` received it.
    Expired {
        /// The recipient.
        to: String,
        /// Its mailbox sequence number.
        seq: u64,
    },
    /// A conversation under the double ratchet with `peer` started without a one-time prekey:
    /// the peer's relay had none left, so the start used its signed prekey only. Tell the
    /// user: until the peer's signed prekey rotates, a thief of it could read the first
    /// messages, and a recorded start can be replayed (the receive window refuses its
    /// message). `initiated`: this client started it (reported with the poll after the send);
    /// else the peer's start was accepted (reported before its message).
    /// [`Client::conversation`] tells it too.
    StartedWithoutOneTimePrekey {
        /// The peer.
        peer: String,
        /// This client started it.
        initiated: bool,
    },
}

/// The JSON of a control message (after its 0x00 byte); unknown fields are ignored.
#[derive(serde::Deserialize)]
struct Control {
    receipt: Option<Vec<u32>>,
}

/// Most sequence numbers one receipt names (more are left out: "delivered" is a courtesy).
const MAX_RECEIPT_SEQS: usize = 1000;

/// Most acknowledgements sent with one poll (the relay's default limit, `--max-acks`).
const MAX_ACKS_PER_POLL: usize = 1024;

impl Client {
    /// Flushes the outbox, acknowledges what was handed out before, then long-polls (up to
    /// `wait`) and decrypts.
    ///
    /// Which entries are acknowledged (deleted by the relay): those handed to the caller as an
    /// [`Event`] — a message (with [`Event::Lost`] before it when the window gave numbers up),
    /// a [`Event::Rejected`] one (forged, counters impossible), an expiry notice — and true
    /// duplicates of messages handed out before. Entries that cannot be opened now stay on the
    /// relay: under a changed peer key ([`Event::PeerKeyChanged`], once), from a sender with no
    /// key ([`Event::Held`], once), or when the directory cannot be reached (silently, tried
    /// again with the next poll).
    ///
    /// # Errors
    /// Transport, protocol and server errors of the poll itself (the outbox flush reports
    /// through [`Event::Outbox`] and [`Client::outbox`]). Undecryptable entries are events, not
    /// errors.
    pub async fn poll(&self, wait: Duration) -> Result<Vec<Event>, ClientError> {
        self.prekey_upkeep().await;
        if self.receipts {
            let due: Vec<String> = self.state.lock().await.receipts_due.keys().cloned().collect();
            for peer in due {
                if let Err(e) = self.prepare_conversation(&peer).await {
                    tracing::debug!(peer, error = %e, "cannot start a conversation for a receipt yet");
                }
            }
            let mut st = self.state.lock().await;
            self.queue_receipts(&mut st)?;
            self.save(&st).await?;
        }
        if let Err(e) = self.flush_outbox_for(None).await {
            tracing::warn!(error = %e, "outbox flush failed");
        }
        let ack = self.acks_for_one_poll().await;
        let call = Call::PollMessages {
            ack: ack.clone(),
            timeout_ms: Some(wait.as_millis() as u64),
            limit: None,
        };
        // On an error, or if this future is dropped mid-request, the acks stay queued for the
        // next poll (an ack for an entry already gone is ignored by the relay).
        let answer: PollAnswer = self.call(&call).await?;
        self.acknowledged(&ack).await;
        let mut events: Vec<Event> = {
            let mut st = self.state.lock().await;
            let lost = std::mem::take(&mut st.relay_lost_data);
            let settled = st.take_unawaited_receipts();
            let notices = std::mem::take(&mut st.notices);
            lost.then_some(Event::RelayLostData)
                .into_iter()
                .chain(notices)
                .chain(settled.into_iter().map(Event::Outbox))
                .collect()
        };
        for entry in answer.messages {
            match &entry.kind {
                EntryKind::Expired { to, message_seq } => {
                    events.push(Event::Expired {
                        to: to.to_string(),
                        seq: *message_seq,
                    });
                    self.state
                        .lock()
                        .await
                        .to_ack
                        .push(AckRef::new(entry.seq, entry.timestamp_ms));
                }
                EntryKind::Message => {
                    events.extend(
                        self.open_entry(
                            &entry.from,
                            AckRef::new(entry.seq, entry.timestamp_ms),
                            &entry.payload.0,
                        )
                        .await,
                    );
                }
            }
        }
        {
            let st = self.state.lock().await;
            if let Err(e) = self.save(&st).await {
                // The events are handed out anyway: losing them would be worse than a profile
                // one poll behind (its chats then report later messages after a gap).
                tracing::warn!(error = %e, "saving the profile after a poll failed");
            }
        }
        // Accepted starts (with or without a one-time prekey): top the relay up if it runs low.
        self.prekey_upkeep().await;
        Ok(events)
    }

    /// Holds back mailbox entry `seq` (not acknowledged), reporting `event` the first time.
    pub(crate) async fn hold(&self, seq: u64, event: Event) -> Vec<Event> {
        if self.state.lock().await.held.insert(seq) {
            vec![event]
        } else {
            Vec::new()
        }
    }

    /// Opens one mailbox entry. Never fails: every outcome is events (possibly none) and a
    /// decision to acknowledge the entry or leave it on the relay (see [`Client::poll`]).
    pub(crate) async fn open_entry(&self, from: &str, entry: AckRef, packet: &[u8]) -> Vec<Event> {
        let seq = entry.seq;
        let held = |reason: String| Event::Held {
            from: from.into(),
            reason,
        };
        match self.ensure_chat(from).await {
            Ok(()) => {}
            Err(ClientError::PeerKeyChanged { .. }) => {
                return self.hold(seq, Event::PeerKeyChanged { from: from.into() }).await;
            }
            Err(e @ (ClientError::Transport(_) | ClientError::Server { .. })) => {
                // The directory cannot be asked now: left on the relay, tried next poll.
                tracing::debug!(from, error = %e, "cannot check the sender's key yet");
                return Vec::new();
            }
            Err(e) => return self.hold(seq, held(e.to_string())).await,
        }
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        if !st.chats.contains_key(from) {
            drop(guard);
            return self
                .hold(seq, held("no conversation with this sender".to_owned()))
                .await;
        }
        let events = match self.open_packet(st, from, packet) {
            Ok(opened) => self.opened(st, from, entry, opened),
            Err(mtproto_session::E2eError::Decrypt | mtproto_session::E2eError::PeerIdentityMismatch) => {
                // Under another key: perhaps the peer rotated. Hold it and say so once.
                let opened_with = st.chats.get(from).map(|c| *c.peer().as_bytes());
                drop(guard);
                return self.not_authentic(from, entry, opened_with).await;
            }
            Err(
                mtproto_session::E2eError::Replay { .. } | mtproto_session::E2eError::MessageKeyGone { .. },
            ) => self.seen_before(st, from, entry, packet),
            Err(e) => vec![Event::Rejected {
                from: from.into(),
                reason: e.to_string(),
            }],
        };
        st.to_ack.push(entry);
        events
    }

    /// A message that opened: kept until acknowledged (after a crash the relay's copy of a
    /// ratchet message cannot be opened again), and handed out; a start accepted makes the
    /// client check the relay's one-time prekeys.
    fn opened(&self, st: &mut State, from: &str, entry: AckRef, opened: Opened) -> Vec<Event> {
        let r = opened.received;
        if let Some(moved) = &r.own_counter_moved {
            // Our profile went back (restored from an older copy): the chat skipped
            // the numbers the peer had already received from us.
            tracing::warn!(
                peer = from,
                ?moved,
                "the conversation's counter was behind the peer's; moved up"
            );
        }
        let mut events = Vec::new();
        if let Some(one_time_prekey) = opened.accepted {
            if !one_time_prekey {
                events.push(Event::StartedWithoutOneTimePrekey {
                    peer: from.into(),
                    initiated: false,
                });
            }
            // Any accepted start makes the client ask the relay how many one-time
            // prekeys it holds: one that used none means the relay ran out (drained by
            // others, perhaps), and only a check tops it up before the next connect.
            if self.prekeys_on {
                st.prekeys_due = Some(
                    st.prekeys_due
                        .map_or(ONE_TIME_PREKEYS_LOW, |b| b.max(ONE_TIME_PREKEYS_LOW)),
                );
            }
        }
        let kept = KeptMessage {
            entry_seq: entry.seq,
            entry_ts: entry.ts,
            from: from.into(),
            seq: r.seq,
            body: mtproto_session::wire::Bytes(r.body.clone()),
            sent_at_ms: r.sent_at_ms,
            delivery: r.delivery.clone(),
        };
        st.kept.insert(kept.key(), kept);
        events.extend(self.hand_out(st, from, r));
        events
    }

    /// A packet that failed authentication under the conversation opened with `opened_with`:
    /// held if the sender's key changed in the directory; left on the relay if the user
    /// accepted a new key meanwhile; else rejected (and acknowledged).
    async fn not_authentic(&self, from: &str, entry: AckRef, opened_with: Option<[u8; 32]>) -> Vec<Event> {
        let changed = match self.lookup(&[from]).await {
            Ok(peers) => peers
                .iter()
                .any(|p| p.client_id == from && p.key_status == KeyStatus::Changed),
            Err(e) => {
                tracing::debug!(from, error = %e, "cannot check the sender's key yet");
                return Vec::new();
            }
        };
        if changed {
            return self
                .hold(entry.seq, Event::PeerKeyChanged { from: from.into() })
                .await;
        }
        let mut st = self.state.lock().await;
        if st.chats.get(from).map(|c| *c.peer().as_bytes()) != opened_with {
            // The user accepted a new key for the sender meanwhile (between the open and
            // this check): it may be sealed for that key. Left on the relay, not
            // reported: the next poll opens it under the accepted key.
            return Vec::new();
        }
        st.to_ack.push(entry);
        vec![Event::Rejected {
            from: from.into(),
            reason: "message failed authentication".into(),
        }]
    }

    /// A packet this client opened before. Handed out by an earlier run that did not
    /// acknowledge it (it may have died before the application kept it): the kept copy is
    /// handed out again (for a static packet of an older profile without copies, it is opened
    /// again). Otherwise a copy of a message handed out before (our ack did not reach the
    /// relay, or the sender's outbox resent it in a new envelope): not shown.
    fn seen_before(&self, st: &mut State, from: &str, entry: AckRef, packet: &[u8]) -> Vec<Event> {
        let key = (entry.seq, entry.ts);
        if !st.redeliver.remove(&key) {
            return Vec::new();
        }
        let again = st.kept.get(&key).map(KeptMessage::received).or_else(|| {
            let static_packet =
                mtproto_session::packet_kind(packet) == Some(mtproto_session::PacketKind::Static);
            st.chats
                .get(from)
                .filter(|_| static_packet)
                .and_then(|chat| chat.open_again(packet).ok())
        });
        match again {
            Some(r) => self.hand_out(st, from, r),
            None => Vec::new(),
        }
    }

    /// The events for an opened message: a control message (0x00 then a JSON object) becomes
    /// its event ([`Event::Delivered`] for a receipt; unknown controls are dropped), anything
    /// else — binary bodies that merely start with 0x00 too — [`Event::Message`], after
    /// [`Event::Lost`] for numbers the window gave up.
    pub(crate) fn hand_out(&self, st: &mut State, from: &str, r: mtproto_session::Received) -> Vec<Event> {
        let mut events: Vec<Event> = r
            .lost
            .into_iter()
            .map(|seqs| Event::Lost {
                from: from.into(),
                seqs,
            })
            .collect();
        let control = r
            .body
            .strip_prefix(&[0u8])
            .and_then(|c| serde_json::from_slice::<Control>(c).ok());
        if let Some(control) = control {
            if let Some(seqs) = control.receipt {
                events.push(Event::Delivered {
                    from: from.into(),
                    seqs,
                });
            }
            return events;
        }
        if self.receipts {
            let due = st.receipts_due.entry(from.to_owned()).or_default();
            if due.len() < MAX_RECEIPT_SEQS {
                due.push(r.seq);
            }
        }
        events.push(Event::Message {
            from: from.into(),
            body: r.body,
            seq: r.seq,
            sent_at_ms: r.sent_at_ms,
            delivery: r.delivery,
        });
        events
    }

    /// Puts one receipt per sender whose messages the caller took since the last poll into the
    /// outbox, and makes refused receipts whose number could not be given back go again (a
    /// receipt left out would be a hole the peer reports as lost).
    pub(crate) fn queue_receipts(&self, st: &mut State) -> Result<(), ClientError> {
        // A receipt sealed for a key the peer has replaced can never be read: dropped (the
        // conversation starts again under the new key).
        st.outbox.retain(|_, e| {
            !(e.control
                && matches!(
                    e.state,
                    SendState::Refused {
                        code: ErrorCode::PeerKeyChanged,
                        ..
                    }
                ))
        });
        for e in st.outbox.values_mut() {
            if e.control && matches!(e.state, SendState::Refused { .. }) {
                e.state = SendState::Sending { last_error: None };
            }
        }
        let due = std::mem::take(&mut st.receipts_due);
        for (peer, seqs) in due {
            if st.outbox.len() >= MAX_OUTBOX || !st.chats.contains_key(&peer) {
                continue;
            }
            if !st.may_send_static(&peer, self.prekeys_on)
                && st.ratchets.get_mut(&peer).and_then(|r| r.sender()).is_none()
            {
                // No conversation to send it under yet (the bundle could not be fetched):
                // next poll.
                st.receipts_due.insert(peer, seqs);
                continue;
            }
            let mut body = vec![0u8];
            serde_json::to_writer(&mut body, &serde_json::json!({ "receipt": seqs }))
                .map_err(|e| ClientError::Invalid(e.to_string()))?;
            let mut entry = self.seal_entry(st, &peer, &body)?;
            entry.control = true;
            st.outbox.insert(entry.id, entry);
        }
        Ok(())
    }

    /// The acknowledgements for the next poll: at most the relay's limit, oldest first; the
    /// rest go with the one after.
    /// The acks one poll carries. They stay queued until the relay has answered
    /// ([`Client::acknowledged`]): a poll cancelled mid-request must not lose them.
    pub(crate) async fn acks_for_one_poll(&self) -> Vec<AckRef> {
        let st = self.state.lock().await;
        st.to_ack.iter().take(MAX_ACKS_PER_POLL).copied().collect()
    }

    /// The relay answered a request that carried `sent`: they are no longer queued.
    async fn acknowledged(&self, sent: &[AckRef]) {
        if !sent.is_empty() {
            let mut st = self.state.lock().await;
            st.to_ack.retain(|a| !sent.contains(a));
            // Acknowledged: the relay deletes them, so the kept copies go too.
            for a in sent {
                st.kept.remove(&(a.seq, a.ts));
            }
        }
    }

    /// Acknowledges everything handed out so far without waiting for the next poll.
    ///
    /// # Errors
    /// As [`Client::poll`].
    pub async fn ack(&self) -> Result<(), ClientError> {
        let ack = self.acks_for_one_poll().await;
        if ack.is_empty() {
            return Ok(());
        }
        let call = Call::PollMessages {
            ack: ack.clone(),
            timeout_ms: Some(0),
            limit: Some(1),
        };
        let _: PollAnswer = self.call(&call).await?;
        self.acknowledged(&ack).await;
        Ok(())
    }

    /// A never-ending stream of events (long-polls back to back). Transport errors are yielded
    /// and the stream goes on after a pause.
    pub fn events(&self) -> impl Stream<Item = Result<Event, ClientError>> + '_ {
        let pending: std::collections::VecDeque<Event> = std::collections::VecDeque::new();
        futures::stream::unfold((self, pending), |(client, mut pending)| async move {
            loop {
                if let Some(ev) = pending.pop_front() {
                    return Some((Ok(ev), (client, pending)));
                }
                match client.poll(Duration::from_secs(25)).await {
                    Ok(evs) if evs.is_empty() => continue,
                    Ok(evs) => pending.extend(evs),
                    Err(e) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        return Some((Err(e), (client, pending)));
                    }
                }
            }
        })
    }
}
