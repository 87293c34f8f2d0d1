//! The answers to committed calls, and to resent envelopes from their stored outcomes.

use std::time::Duration;

use mtproto_crypto::{rand_core::OsRng, AuthKey, IdentityPublic};
use mtproto_session::{wire::Bytes, ClientId};

use super::{long_poll::Armed, Relay};
use crate::{
    api::{
        iso8601, Call, Endpoint, EnvelopeRequest, EnvelopeResponse, PeersAnswer, PollAnswer, PolledEntry,
        PrekeyBundleAnswer, PublishAnswer, PublishPrekeysAnswer, SendAnswer, MAX_PEERS_PAGE, STATUS_RECEIVED,
    },
    Outcome, RelayError,
};

/// What an answer is sealed for: the request's auth key and account, the session's responder
/// and the request's msg_id and seq_no.
pub(crate) struct Reply<'a> {
    pub(crate) key: &'a AuthKey,
    pub(crate) client: &'a ClientId,
    pub(crate) responder: mtproto_session::Responder,
    pub(crate) msg_id: u64,
    pub(crate) seq_no: u32,
}

impl Relay {
    /// The answer to a committed (or read-only) call, sealed for `to`. A poll that found
    /// nothing (`fetched` empty or `None`) waits here for mail, with no lock held.
    pub(crate) async fn answer(
        &self,
        call: &Call,
        outcome: Outcome,
        fetched: Option<(Vec<crate::MailboxEntry>, Armed)>,
        to: Reply<'_>,
    ) -> Result<EnvelopeResponse, RelayError> {
        let Reply {
            key,
            client,
            mut responder,
            msg_id,
            seq_no,
        } = to;
        let (body, clear) = match (call, outcome) {
            (Call::SendMessage { .. }, Outcome::Sent { seq, timestamp_ms }) => {
                self.observer.message_stored();
                let a = SendAnswer {
                    msg_id: msg_id.to_string(),
                    seq_no,
                    status: STATUS_RECEIVED.to_owned(),
                    timestamp: iso8601(timestamp_ms),
                    last_msg_id: msg_id.to_string(),
                    mailbox_seq: seq,
                };
                (to_body(&a)?, Some(a))
            }
            (
                Call::PollMessages {
                    timeout_ms, limit, ..
                },
                outcome,
            ) => {
                let acked = match outcome {
                    Outcome::Acked { removed } => removed,
                    _ => 0,
                };
                let wait = timeout_ms
                    .map_or(self.config.poll_default, Duration::from_millis)
                    .min(self.config.poll_max);
                let limit = limit
                    .unwrap_or(self.config.poll_limit)
                    .clamp(1, self.config.poll_limit);
                let messages = match fetched {
                    Some((entries, _)) if !entries.is_empty() => entries,
                    Some((_, armed)) => self.long_poll(client, key.id(), wait, limit, Some(armed)).await?,
                    None => self.long_poll(client, key.id(), wait, limit, None).await?,
                };
                let messages = fit_in_answer(messages, self.config.poll_bytes);
                self.observer.entries_acked(acked);
                self.observer.entries_delivered(messages.len());
                let messages = messages.into_iter().map(PolledEntry::from).collect();
                (to_body(&PollAnswer { messages, acked })?, None)
            }
            (Call::ListPeers { .. }, _) => (to_body(&self.peers_answer(call).await?)?, None),
            (Call::PublishKey { identity_key }, Outcome::KeyPublished { changed, key_version }) => {
                let fingerprint = IdentityPublic::from_slice(&identity_key.0)
                    .map(|k| k.short_fingerprint())
                    .unwrap_or_default();
                (
                    to_body(&PublishAnswer {
                        changed,
                        key_version,
                        fingerprint,
                    })?,
                    None,
                )
            }
            (Call::PublishPrekeys { .. }, Outcome::PrekeysPublished { one_time_prekeys }) => {
                (to_body(&PublishPrekeysAnswer { one_time_prekeys })?, None)
            }
            (Call::PrekeyBundle { .. }, Outcome::PrekeyBundle { bundle, key_version }) => {
                (to_body(&PrekeyBundleAnswer { bundle, key_version })?, None)
            }
            _ => return Err(RelayError::Internal("outcome does not match the call".into())),
        };
        let out = responder
            .encode_response_to(
                key,
                &body,
                mtproto_session::MsgId(msg_id),
                self.clock.now(),
                &mut OsRng,
            )
            .map_err(|e| RelayError::Internal(e.to_string()))?;
        Ok(EnvelopeResponse {
            packet: Bytes(out.packet),
            clear,
        })
    }

    /// A resent envelope (`body` is its decrypted call): answer with the original outcome;
    /// never execute twice. `to.seq_no` is not used: the answer carries 0.
    pub(crate) async fn answer_duplicate(
        &self,
        endpoint: Endpoint,
        req: &EnvelopeRequest,
        body: &[u8],
        to: Reply<'_>,
    ) -> Result<EnvelopeResponse, RelayError> {
        let (key_id, client_id, msg_id) = (to.key.id(), to.client, to.msg_id);
        let call = self.parse_call(endpoint, req, body)?;
        let outcome = match (&call, self.engine.outcome(key_id, client_id, msg_id).await?) {
            // The msg_id's stored outcome belongs to another kind of request: a client bug
            // (msg_ids are unique per session), answered as one, never as our failure.
            (Call::SendMessage { .. }, Some(o)) if !matches!(o, Outcome::Sent { .. }) => {
                return Err(RelayError::MsgIdReused)
            }
            (Call::PublishKey { .. }, Some(o)) if !matches!(o, Outcome::KeyPublished { .. }) => {
                return Err(RelayError::MsgIdReused)
            }
            (Call::PublishPrekeys { .. }, Some(o)) if !matches!(o, Outcome::PrekeysPublished { .. }) => {
                return Err(RelayError::MsgIdReused)
            }
            // A resent fetch gets the bundle it got the first time, and takes nothing more.
            (Call::PrekeyBundle { .. }, Some(o)) if !matches!(o, Outcome::PrekeyBundle { .. }) => {
                return Err(RelayError::MsgIdReused)
            }
            (Call::PollMessages { .. } | Call::ListPeers { .. }, Some(_)) => {
                return Err(RelayError::MsgIdReused)
            }
            (_, Some(o)) => o,
            // Reads (and acks, which are idempotent) can simply be answered again.
            (Call::PollMessages { .. }, None) => Outcome::Acked { removed: 0 },
            (Call::ListPeers { .. }, None) => Outcome::Done,
            (_, None) => {
                return Err(RelayError::BadMsg {
                    code: mtproto_session::BadMsgCode::MsgTooOld,
                    notice: None,
                });
            }
        };
        tracing::debug!(client_id = %client_id, msg_id, "resent envelope answered from its stored outcome");
        self.answer(&call, outcome, None, Reply { seq_no: 0, ..to }).await
    }

    pub(crate) async fn peers_answer(&self, call: &Call) -> Result<PeersAnswer, RelayError> {
        let Call::ListPeers {
            names,
            prefix,
            after,
            limit,
        } = call
        else {
            return Err(RelayError::Internal("not a directory call".into()));
        };
        if !names.is_empty() {
            let mut peers = Vec::with_capacity(names.len());
            let mut asked: Vec<&mtproto_session::ClientId> = names.iter().collect();
            asked.sort();
            asked.dedup();
            for name in asked {
                if let Some(p) = self.engine.peer(name).await? {
                    peers.push(self.with_presence(p));
                }
            }
            return Ok(PeersAnswer { peers, next: None });
        }
        let limit = limit.unwrap_or(MAX_PEERS_PAGE).clamp(1, MAX_PEERS_PAGE);
        let prefix = prefix.as_deref().unwrap_or("").to_ascii_lowercase();
        // One more than asked tells whether a next page exists.
        let mut page = self.engine.peers_page(&prefix, after.as_ref(), limit + 1).await?;
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|p| p.client_id.clone())
        } else {
            None
        };
        Ok(PeersAnswer {
            peers: page.into_iter().map(|p| self.with_presence(p)).collect(),
            next,
        })
    }
}

/// Keeps the oldest entries whose payloads fit in `budget` bytes, and always the first one.
pub(crate) fn fit_in_answer(
    mut entries: Vec<crate::MailboxEntry>,
    budget: usize,
) -> Vec<crate::MailboxEntry> {
    let mut used = 0usize;
    let keep = entries
        .iter()
        .take_while(|e| {
            used = used.saturating_add(e.payload.0.len());
            used <= budget
        })
        .count()
        .max(1);
    entries.truncate(keep);
    entries
}

pub(crate) fn to_body<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, RelayError> {
    serde_json::to_vec(v).map_err(|e| RelayError::Internal(e.to_string()))
}
