//! The connection to the relay without the end-to-end layer: the handshake, authenticated calls
//! in envelopes, and the sealed notices that correct a stale salt or clock. [`Connection`] keeps
//! its session in memory; [`Client`] keeps it in its profile (saved before every request leaves)
//! and runs the same code through [`SessionHost`].

use mtproto_crypto::{rand_core::OsRng, ServerPublicKey};
use mtproto_session::{ClientHandshake, ClientId, ClientSession, DhGenOk, ResPq, ServerDhParams};
use relay_api::{Call, EnvelopeRequest, EnvelopeResponse};

use crate::{now, Client, ClientConfig, ClientError, Pin, RecoveryCode, Transport};

/// What a handshake gives: the session, the server key it proved, and the recovery code it
/// registered for the name.
pub(crate) struct Established {
    pub(crate) session: ClientSession,
    pub(crate) server_key: ServerPublicKey,
    pub(crate) recovery_code: RecoveryCode,
}

/// The three handshake steps over `transport`. Every handshake registers a fresh recovery code —
/// a recovery with `recover` too, which also proves the old one: the code used to recover (typed
/// on a new device, perhaps seen by someone) stops working, and the new one is shown.
pub(crate) async fn handshake(
    transport: &Transport,
    pin: Pin,
    client_id: ClientId,
    recover: Option<&RecoveryCode>,
) -> Result<Established, ClientError> {
    let untrusted = |e: mtproto_session::HandshakeError| match e {
        mtproto_session::HandshakeError::UntrustedServer { got, expected } => {
            ClientError::UntrustedServer { got, expected }
        }
        other => other.into(),
    };
    let (c, req) = ClientHandshake::start(pin, client_id, &mut OsRng);
    let res: ResPq = transport.post_json("/req_pq", &req).await?;
    let (c, req) = c.handle_res_pq(&res).map_err(untrusted)?;
    let res: ServerDhParams = transport.post_json("/req_dh_params", &req).await?;
    let (c, mut req) = c
        .handle_server_dh_params(&res, now(), &mut OsRng)
        .map_err(untrusted)?;
    let fresh = RecoveryCode::generate(&mut OsRng);
    c.prove_recovery(&mut req, Some(fresh.public()), recover);
    let server_key = *c.server_key();
    let res: DhGenOk = transport.post_json("/set_client_dh_params", &req).await?;
    let session = c.handle_dh_gen_ok(&res)?;
    tracing::info!(client_id = %session.client_id(), server = %server_key.fingerprint(), "handshake complete");
    Ok(Established {
        session,
        server_key,
        recovery_code: fresh,
    })
}

/// Where a session lives between the steps of a call: each step runs under the holder's lock
/// and leaves the session's new state where the holder keeps it.
pub(crate) trait SessionHost {
    /// Seals `body` as this session's next request.
    async fn seal(&self, body: &[u8]) -> Result<Vec<u8>, ClientError>;
    /// Opens the relay's answer to one of this session's requests; returns its body.
    async fn open(&self, packet: &[u8]) -> Result<Vec<u8>, ClientError>;
    /// Applies a refusal's sealed notice, if it authenticates and names a message this session
    /// sent; whether it did.
    async fn apply_notice(&self, notice: &[u8]) -> Result<bool, ClientError>;
}

/// One authenticated call: seals `call`, posts it, opens the answer. A stale salt or clock is
/// corrected from the refusal's notice and the call sealed again (with a fresh msg_id), at most
/// three times; transport failures are retried as the transport says (the same envelope, which
/// the relay answers only once).
pub(crate) async fn sealed_call<T: serde::de::DeserializeOwned>(
    transport: &Transport,
    host: &impl SessionHost,
    call: &Call,
) -> Result<T, ClientError> {
    let path = call.endpoint().path();
    let body = serde_json::to_vec(call).map_err(|e| ClientError::Invalid(e.to_string()))?;
    for _ in 0..3 {
        let packet = host.seal(&body).await?;
        let raw = match transport.post_raw(path, &EnvelopeRequest::packet(packet)).await? {
            Ok(raw) => raw,
            Err(r) => {
                if let Some(notice) = &r.body.notice {
                    if host.apply_notice(&notice.0).await? {
                        continue;
                    }
                }
                return Err(r.into());
            }
        };
        let answer: EnvelopeResponse =
            serde_json::from_slice(&raw).map_err(|e| ClientError::Transport(format!("bad answer: {e}")))?;
        let inner = host.open(&answer.packet.0).await?;
        return serde_json::from_slice(&inner).map_err(|e| ClientError::Transport(format!("bad body: {e}")));
    }
    Err(ClientError::Transport("gave up after repeated refusals".into()))
}

/// Applies `notice` to `session`: `None` when it does not authenticate (nothing changed),
/// else whether it corrected the session.
fn apply_notice_to(session: &mut ClientSession, notice: &[u8]) -> Option<bool> {
    let incoming = session.decode_response(notice, now()).ok()?;
    Some(session.handle_notice(&incoming, now()).is_some())
}

/// An authenticated connection to the relay without the end-to-end layer: one handshake, then
/// sealed calls ([`Call`]) whose answers come back opened. The session is kept in memory only
/// (a [`Client`] keeps it in its profile). For tools that speak the relay's API directly — a
/// load generator, a bot that only reads the directory, tests.
///
/// A call is refused with [`ClientError::Server`]; a stale salt or clock is corrected from the
/// relay's sealed notice and the call made again. A relay that lost the auth key answers
/// [`ErrorCode::UnknownAuthKey`](crate::ErrorCode::UnknownAuthKey) — an answer it cannot seal,
/// so anyone on the path can forge it: open a new connection **pinned to the key this one
/// proved** (`Pin::Key(conn.server_key())`), never with [`Pin::TrustOnFirstUse`] again, or a
/// forged refusal hands the next handshake to whoever answers it.
///
/// ```no_run
/// # async fn demo(fingerprint: relay_client::ServerKeyFingerprint) -> Result<(), relay_client::ClientError> {
/// use relay_client::api::{Call, PeersAnswer};
/// use relay_client::{ClientConfig, Connection, Pin};
/// // The relay's key fingerprint, as its operator publishes it (`relay-server` prints it).
/// let config = ClientConfig::new("http://127.0.0.1:8080", "directory-bot", Pin::Fingerprint(fingerprint));
/// let conn = Connection::open(&config).await?;
/// let peers: PeersAnswer = conn.call(&Call::list_peers()).await?;
/// println!("{} peers", peers.peers.len());
/// # Ok(()) }
/// ```
pub struct Connection {
    transport: Transport,
    server_key: ServerPublicKey,
    recovery_code: RecoveryCode,
    session: tokio::sync::Mutex<ClientSession>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("transport", &self.transport)
            .field("server_key", &self.server_key.fingerprint().to_string())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A handshake with `config.server` as `config.name`, trusting the server as `config.pin`
    /// says and recovering the name with `config.recovery` when set. Uses the config's
    /// transport settings (root certificates, local address, retries); the profile and the
    /// end-to-end settings are the [`Client`]'s.
    ///
    /// # Errors
    /// [`ClientError::UntrustedServer`] for a server that is not the pinned one;
    /// [`ClientError::Server`] when the relay refuses the handshake (a name taken, a rate
    /// limit); transport and protocol errors.
    pub async fn open(config: &ClientConfig) -> Result<Self, ClientError> {
        Self::open_on(Transport::new(config)?, config).await
    }

    /// As [`Connection::open`], over `transport` (shared with other connections: one HTTP
    /// connection pool for many users, as a load generator wants). The relay's address, TLS
    /// roots, local address and retry policy are the transport's; `config` gives only the name,
    /// the pin and the recovery code.
    ///
    /// # Errors
    /// As [`Connection::open`].
    pub async fn open_on(transport: Transport, config: &ClientConfig) -> Result<Self, ClientError> {
        let client_id = ClientId::new(&config.name).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let done = handshake(&transport, config.pin, client_id, config.recovery.as_ref()).await?;
        Ok(Self {
            transport,
            server_key: done.server_key,
            recovery_code: done.recovery_code,
            session: tokio::sync::Mutex::new(done.session),
        })
    }

    /// One authenticated call, answered with `T` (the call's answer type in `relay_api`).
    ///
    /// # Errors
    /// [`ClientError::Server`] for a refusal; transport and protocol errors.
    pub async fn call<T: serde::de::DeserializeOwned>(&self, call: &Call) -> Result<T, ClientError> {
        sealed_call(&self.transport, self, call).await
    }

    /// The server key the handshake proved.
    pub fn server_key(&self) -> ServerPublicKey {
        self.server_key
    }

    /// The recovery code the handshake registered for the name: whoever holds it can take the
    /// name over (see [`ClientConfig::with_recovery_code`]). Secret; show it only to the user.
    pub fn recovery_code(&self) -> &RecoveryCode {
        &self.recovery_code
    }

    /// The transport, to open more connections over the same HTTP pool.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The session, for tests that seal requests by hand (a session cannot be turned back into
    /// a connection). The recovery code goes with the connection: read
    /// [`recovery_code`](Self::recovery_code) first if it is needed.
    pub fn into_session(self) -> ClientSession {
        self.session.into_inner()
    }
}

impl SessionHost for Connection {
    async fn seal(&self, body: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut session = self.session.lock().await;
        Ok(session.encode_request(body, now(), &mut OsRng)?.packet)
    }

    async fn open(&self, packet: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut session = self.session.lock().await;
        Ok(session.decode_response(packet, now())?.body)
    }

    async fn apply_notice(&self, notice: &[u8]) -> Result<bool, ClientError> {
        Ok(apply_notice_to(&mut *self.session.lock().await, notice).unwrap_or(false))
    }
}

/// The client's session lives in its state and is saved with the profile after every step, so
/// a restarted client never reuses a msg_id or seq_no it sent.
impl SessionHost for Client {
    async fn seal(&self, body: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut st = self.state.lock().await;
        let session = st
            .session
            .as_mut()
            .ok_or_else(|| ClientError::Invalid("no session".into()))?;
        let packet = session.encode_request(body, now(), &mut OsRng)?.packet;
        self.save(&st).await?;
        Ok(packet)
    }

    async fn open(&self, packet: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut st = self.state.lock().await;
        let session = st
            .session
            .as_mut()
            .ok_or_else(|| ClientError::Invalid("no session".into()))?;
        let body = session.decode_response(packet, now())?.body;
        self.save(&st).await?;
        Ok(body)
    }

    async fn apply_notice(&self, notice: &[u8]) -> Result<bool, ClientError> {
        let mut st = self.state.lock().await;
        let Some(session) = st.session.as_mut() else {
            return Ok(false);
        };
        // A notice that does not authenticate changed nothing: no write for it.
        let Some(applied) = apply_notice_to(session, notice) else {
            return Ok(false);
        };
        self.save(&st).await?;
        Ok(applied)
    }
}

impl Client {
    /// A handshake for this client: the pinned key (or the one seen first), the recovery code
    /// to recover the name with on the first one only.
    pub(crate) async fn handshake(&self, st: &mut crate::State) -> Result<(), ClientError> {
        // A key seen before (trust on first use, or pinned by the profile) is pinned exactly.
        let pin = st.server_key.map_or(self.pin, Pin::Key);
        let recover = st.recover_with.take();
        let done = handshake(&self.transport, pin, st.client_id.clone(), recover.as_ref()).await?;
        st.recovery_code = Some(done.recovery_code);
        st.server_key = Some(done.server_key);
        st.session = Some(done.session);
        Ok(())
    }

    /// One authenticated call ([`sealed_call`]); when the relay lost our auth key, a new
    /// handshake and the call once more.
    pub(crate) async fn call<T: serde::de::DeserializeOwned>(&self, call: &Call) -> Result<T, ClientError> {
        match sealed_call(&self.transport, self, call).await {
            Err(ClientError::Server {
                code: crate::ErrorCode::UnknownAuthKey,
                ..
            }) => {
                self.handshake_again(!matches!(call, Call::PublishKey { .. }))
                    .await?;
                sealed_call(&self.transport, self, call).await
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
            let _: relay_api::PublishAnswer =
                sealed_call(&self.transport, self, &self.publish_call().await).await?;
        }
        Ok(())
    }
}
