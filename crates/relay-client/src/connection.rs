//! The connection to the relay, without the end-to-end layer: HTTP with retries, the
//! handshake (and a new one when the relay lost our key), authenticated calls in envelopes, and
//! the sealed notices that correct a stale salt or clock.

use std::time::Duration;

use mtproto_crypto::{rand_core::OsRng, IdentitySecret};
use mtproto_session::{wire::Bytes, ClientHandshake, DhGenOk, ResPq, ServerDhParams};
use relay_api::{Call, EnvelopeRequest, EnvelopeResponse, ErrorBody, ErrorCode, PublishAnswer};

use crate::{now, Client, ClientError, Pin, RecoveryCode, Refusal, State};

/// Attempts per request when the relay is unreachable or answers 503 (storage unavailable,
/// too busy): waits 0.2, 0.4, 0.8, 1.6 and 2 s between them, about 5 s in all — long enough
/// for a Redis restart or failover.
const RETRIES: usize = 6;

fn backoff(attempt: usize) -> Duration {
    Duration::from_millis((200u64 << attempt.saturating_sub(1).min(4)).min(2000))
}

/// The longest the client waits in all for a rate limit (429 `rate_limited`, `Retry-After`)
/// before it reports the refusal.
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(60);

impl Client {
    pub(crate) async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let resp = self.post_raw(path, body).await??;
        serde_json::from_slice(&resp).map_err(|e| ClientError::Transport(format!("{path}: bad answer: {e}")))
    }

    /// POSTs JSON; retries transport failures and 503 answers (the same bytes each time: the
    /// relay answers a resent envelope from its stored outcome, never running it twice). The
    /// outer error is the transport's, the inner one the server's refusal.
    pub(crate) async fn post_raw(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<Result<Vec<u8>, Refusal>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut last = String::new();
        let mut rate_limited = Duration::ZERO;
        let mut attempt = 0;
        while attempt < RETRIES {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            attempt += 1;
            let resp = match self.http.post(&url).json(body).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let bytes = match resp.bytes().await {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            if status.is_success() {
                return Ok(Ok(bytes));
            }
            let body: ErrorBody = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| ErrorBody::new(ErrorCode::Unknown, status.to_string()));
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && attempt < RETRIES {
                tracing::debug!(path, code = %body.error, "relay unavailable; retrying");
                continue;
            }
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS && body.error == ErrorCode::RateLimited {
                // The relay says when a retry can pass: wait that long, within our patience.
                let wait = Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 30));
                if rate_limited + wait <= RATE_LIMIT_PATIENCE {
                    tracing::info!(path, wait_secs = wait.as_secs(), "relay rate limit; waiting");
                    rate_limited += wait;
                    tokio::time::sleep(wait).await;
                    attempt = 0;
                    continue;
                }
            }
            return Ok(Err(Refusal {
                status: status.as_u16(),
                body,
            }));
        }
        Err(ClientError::Transport(last))
    }

    pub(crate) async fn handshake(&self, st: &mut State) -> Result<(), ClientError> {
        // A key seen before (trust on first use, or pinned by the profile) is pinned exactly.
        let pin = st.server_key.map_or(self.pin, Pin::Key);
        let untrusted = |e: mtproto_session::HandshakeError| match e {
            mtproto_session::HandshakeError::UntrustedServer { got, expected } => {
                ClientError::UntrustedServer { got, expected }
            }
            other => other.into(),
        };
        let (c, req) = ClientHandshake::start(pin, st.client_id.clone(), &mut OsRng);
        let res: ResPq = self.post_json("/req_pq", &req).await?;
        let (c, req) = c.handle_res_pq(&res).map_err(untrusted)?;
        let res: ServerDhParams = self.post_json("/req_dh_params", &req).await?;
        let (c, mut req) = c
            .handle_server_dh_params(&res, now(), &mut OsRng)
            .map_err(untrusted)?;
        // Every handshake registers a fresh recovery code — a recovery too, which also proves the
        // old one: the code used to recover (typed on a new device, perhaps seen by someone)
        // stops working, and the new one is shown.
        let recover = st.recover_with.take();
        let fresh = RecoveryCode::generate(&mut OsRng);
        c.prove_recovery(&mut req, Some(fresh.public()), recover.as_ref());
        let server_key = *c.server_key();
        let res: DhGenOk = self.post_json("/set_client_dh_params", &req).await?;
        let session = c.handle_dh_gen_ok(&res)?;
        st.recovery_code = Some(fresh);
        tracing::info!(client_id = %st.client_id, server = %server_key.fingerprint(), "handshake complete");
        st.server_key = Some(server_key);
        st.session = Some(session);
        Ok(())
    }

    /// One authenticated call: seals `call`, posts it, opens the answer. Handles a stale salt or
    /// a clock notice (resends with a fresh msg_id), a lost auth key (new handshake), and
    /// transport failures (resends the same envelope, which the relay answers only once).
    pub(crate) async fn call<T: serde::de::DeserializeOwned>(&self, call: &Call) -> Result<T, ClientError> {
        match self.call_inner(call).await {
            Err(ClientError::Server {
                code: ErrorCode::UnknownAuthKey,
                ..
            }) => {
                self.handshake_again(!matches!(call, Call::PublishKey { .. }))
                    .await?;
                self.call_inner(call).await
            }
            other => other,
        }
    }

    /// The server lost our key (and with it, perhaps, all it knew of us): a new handshake, and
    /// the identity key published again when `publish`.
    pub(crate) async fn handshake_again(&self, publish: bool) -> Result<(), ClientError> {
        {
            let mut st = self.state.lock().await;
            st.session = None;
            self.handshake(&mut st).await?;
            st.relay_lost_data = true;
            // It lost our prekeys too: published again with the next poll.
            st.prekeys_due = Some(crate::ONE_TIME_PREKEYS_TARGET);
            tracing::warn!(
                "the relay no longer knew our auth key: registered again; undelivered messages may be lost"
            );
            self.save(&st).await?;
        }
        if publish {
            let key = self.state.lock().await.identity.public();
            let publish = Call::PublishKey {
                identity_key: Bytes(key.as_bytes().to_vec()),
            };
            let _: PublishAnswer = self.call_inner(&publish).await?;
        }
        Ok(())
    }

    pub(crate) async fn call_inner<T: serde::de::DeserializeOwned>(
        &self,
        call: &Call,
    ) -> Result<T, ClientError> {
        let path = call.endpoint().path();
        let body = serde_json::to_vec(call).map_err(|e| ClientError::Invalid(e.to_string()))?;
        for _ in 0..3 {
            let packet = {
                let mut st = self.state.lock().await;
                let session = st
                    .session
                    .as_mut()
                    .ok_or_else(|| ClientError::Invalid("no session".into()))?;
                let out = session.encode_request(&body, now(), &mut OsRng)?;
                self.save(&st).await?;
                out.packet
            };
            let raw = match self.post_raw(path, &EnvelopeRequest::packet(packet)).await? {
                Ok(raw) => raw,
                Err(r) => {
                    // A stale salt or clock: the refusal carries a sealed notice; it is applied
                    // only if it authenticates and names a message this session sent.
                    if let Some(notice) = &r.body.notice {
                        if self.apply_notice(&notice.0).await? {
                            continue;
                        }
                    }
                    return Err(r.into());
                }
            };
            let answer: EnvelopeResponse = serde_json::from_slice(&raw)
                .map_err(|e| ClientError::Transport(format!("bad answer: {e}")))?;
            let mut st = self.state.lock().await;
            let session = st
                .session
                .as_mut()
                .ok_or_else(|| ClientError::Invalid("no session".into()))?;
            let incoming = session.decode_response(&answer.packet.0, now())?;
            self.save(&st).await?;
            return serde_json::from_slice(&incoming.body)
                .map_err(|e| ClientError::Transport(format!("bad body: {e}")));
        }
        Err(ClientError::Transport("gave up after repeated refusals".into()))
    }

    pub(crate) async fn apply_notice(&self, notice: &[u8]) -> Result<bool, ClientError> {
        let mut st = self.state.lock().await;
        let Some(session) = st.session.as_mut() else {
            return Ok(false);
        };
        let Ok(incoming) = session.decode_response(notice, now()) else {
            return Ok(false);
        };
        let applied = session.handle_notice(&incoming, now()).is_some();
        self.save(&st).await?;
        Ok(applied)
    }

    /// Publishes this client's identity key (done by `connect`; call again after a rotation).
    ///
    /// # Errors
    /// Transport, protocol and server errors.
    pub async fn publish_key(&self) -> Result<PublishAnswer, ClientError> {
        let key = self.state.lock().await.identity.public();
        self.call(&Call::PublishKey {
            identity_key: Bytes(key.as_bytes().to_vec()),
        })
        .await
    }

    /// Replaces this client's identity key with a new one (peers will see a key change), with
    /// new prekeys for it (published, unless the client was made
    /// [`with_prekeys(false)`](crate::ClientConfig::with_prekeys)); every conversation starts
    /// again.
    ///
    /// # Errors
    /// As [`Client::publish_key`]; publishing the new prekeys may fail without an error (they
    /// go again with the next poll).
    pub async fn rotate_identity(&self) -> Result<PublishAnswer, ClientError> {
        {
            let mut guard = self.state.lock().await;
            let st = &mut *guard;
            st.identity = IdentitySecret::generate(&mut OsRng);
            st.prekeys = mtproto_session::x3dh::Prekeys::new(&st.identity, &st.signing, now(), &mut OsRng);
            st.chats.clear();
            st.ratchets.clear();
            st.no_prekeys_until.clear();
            self.save(st).await?;
        }
        let answer = self.publish_key().await?;
        if self.prekeys_on {
            self.state.lock().await.prekeys_due = Some(crate::ONE_TIME_PREKEYS_TARGET);
            self.prekey_upkeep().await;
        }
        Ok(answer)
    }
}
