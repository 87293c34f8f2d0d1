//! An async Rust client for mtproto-relay. It drives mtproto-session's client side and adds only
//! I/O (HTTP through reqwest) and storage (a profile file):
//!
//! - connect: handshake with the pq proof of work, the server key pinned by fingerprint (or trust
//!   on first use, then pinned), DH checks and key confirmation; a new handshake when the server
//!   has lost the key;
//! - a profile (auth key, session, identity key, pinned server key, known peer keys, chats) in an
//!   owner-only file, so a restarted client resumes without a new handshake or identity;
//! - the directory, per-peer chat keys and fingerprints, and a loud [`ClientError::PeerKeyChanged`]
//!   when a peer's identity key changed (never re-keyed silently);
//! - send with safe retries, for about 5 s when the relay is unreachable or answers 503 (a
//!   retry resends the same envelope: the relay answers with the original result, so nothing
//!   is delivered twice); receive as a stream, acknowledging only
//!   after the message was handed to the caller.
//!
//! ```no_run
//! # async fn demo() -> Result<(), relay_client::ClientError> {
//! use relay_client::{Client, ClientConfig, Pin};
//! let alice = Client::connect(ClientConfig::new("http://127.0.0.1:8080", "alice", Pin::TrustOnFirstUse)).await?;
//! alice.send("bob", b"hello bob").await?;
//! for event in alice.poll(std::time::Duration::from_secs(25)).await? {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use futures::Stream;
use mtproto_crypto::{
    rand_core::OsRng, Fingerprint, IdentityPublic, IdentitySecret, ServerKeyFingerprint, ServerPublicKey,
};
use mtproto_session::{
    wire::Bytes, ChatState, ClientHandshake, ClientId, ClientSession, DhGenOk, ResPq, SecretBytes,
    ServerDhParams, ServerPin, UnixTime,
};
use relay_core::{
    api::{Call, PeersAnswer, PollAnswer, PublishAnswer, SendAnswer},
    EntryKind,
};
use serde::Deserialize;

mod profile;
pub use mtproto_session::Delivery;

pub use profile::{KnownPeer, Profile};

/// Errors of the client. Nothing the server sends makes it panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached (after retries).
    #[error("transport: {0}")]
    Transport(String),
    /// The server refused the request with a stable error code.
    #[error("server refused ({code}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The relay's error code (`unknown_peer`, `mailbox_full`, ...).
        code: String,
        /// Its message.
        message: String,
    },
    /// The protocol failed: a bad signature, a wrong pin, a forged answer...
    #[error("protocol: {0}")]
    Protocol(#[from] mtproto_session::Error),
    /// The server presented a key other than the pinned one.
    #[error("the server's key {got} is not the pinned {expected}")]
    UntrustedServer {
        /// What it presented.
        got: String,
        /// What was pinned.
        expected: String,
    },
    /// The peer's identity key changed since it was accepted. Verify the new fingerprint and
    /// call [`Client::accept_peer_key`] before talking to it again.
    #[error("the identity key of {peer} CHANGED (version {old_version} -> {new_version}): verify before continuing")]
    PeerKeyChanged {
        /// The peer.
        peer: String,
        /// The accepted version.
        old_version: u32,
        /// The directory's version now.
        new_version: u32,
    },
    /// The peer is not in the directory or has published no identity key.
    #[error("peer {0} has no identity key in the directory")]
    NoPeerKey(String),
    /// The profile file could not be read or written.
    #[error("profile: {0}")]
    Profile(String),
    /// A name or argument is invalid.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// How the client trusts the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// Only a server whose key has this 64-bit fingerprint.
    Fingerprint(ServerKeyFingerprint),
    /// Only this key.
    Key(ServerPublicKey),
    /// The first key seen, then pinned in the profile.
    TrustOnFirstUse,
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// The client id to register or resume.
    pub name: String,
    /// Server trust.
    pub pin: Pin,
    /// Profile file; `None` keeps everything in memory.
    pub profile: Option<PathBuf>,
}

impl ClientConfig {
    /// A configuration without a profile file.
    pub fn new(server: &str, name: &str, pin: Pin) -> Self {
        Self {
            server: server.trim_end_matches('/').to_owned(),
            name: name.to_owned(),
            pin,
            profile: None,
        }
    }

    /// Keeps the profile in `path`.
    pub fn with_profile(mut self, path: impl Into<PathBuf>) -> Self {
        self.profile = Some(path.into());
        self
    }
}

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
        /// The sequence numbers ([`Receipt`]s do not carry them; [`Client::send`] returns the
        /// conversation seq in [`Receipt::seq`]).
        seqs: Vec<u32>,
    },
    /// A message you sent expired on the relay before `to` received it.
    Expired {
        /// The recipient.
        to: String,
        /// Its mailbox sequence number.
        seq: u64,
    },
}

/// A peer as the directory shows it, with what this client thinks of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// The client id.
    pub client_id: String,
    /// Its identity key, if published.
    pub identity_key: Option<IdentityPublic>,
    /// The directory's key version.
    pub key_version: u32,
    /// Last seen, unix seconds.
    pub last_seen: u64,
    /// What this client knows.
    pub key_status: KeyStatus,
}

/// Whether a peer's key is the one accepted before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// No key published yet.
    NoKey,
    /// Not seen before.
    New,
    /// The accepted key.
    Known,
    /// Different from the accepted key.
    Changed,
}

/// The receipt of a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The message's sequence number in the conversation (what a peer's receipt names).
    pub seq: u32,
    /// The envelope's msg_id.
    pub msg_id: u64,
    /// The message's sequence number in the recipient's mailbox.
    pub mailbox_seq: u64,
    /// Server time it was stored, ISO 8601.
    pub timestamp: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    message: String,
    notice: Option<Bytes>,
}

/// A refusal from the server, with the sealed notice it may carry.
struct Refusal {
    status: u16,
    body: ErrorBody,
}

impl From<Refusal> for ClientError {
    fn from(r: Refusal) -> Self {
        Self::Server {
            status: r.status,
            code: r.body.error,
            message: r.body.message,
        }
    }
}

#[derive(Deserialize)]
struct EnvelopeAnswer {
    packet: Bytes,
}

struct State {
    client_id: ClientId,
    identity: IdentitySecret,
    server_key: Option<ServerPublicKey>,
    session: Option<ClientSession>,
    peers: BTreeMap<String, KnownPeer>,
    chats: BTreeMap<String, ChatState>,
    /// Mailbox entries handed to the caller, acknowledged with the next poll.
    to_ack: Vec<u64>,
    /// Entries held back (peer key changed), reported once.
    held: BTreeSet<u64>,
}

/// Records `key` as `peer`'s accepted identity key and starts a new chat under it.
fn accept_key(st: &mut State, peer: &str, key: IdentityPublic, key_version: u32) -> Result<(), ClientError> {
    st.peers.insert(
        peer.to_owned(),
        KnownPeer {
            identity_key: *key.as_bytes(),
            key_version,
            verified: false,
        },
    );
    let chat = ChatState::new(&st.identity, key)?;
    st.chats.insert(peer.to_owned(), chat);
    Ok(())
}

/// A connected client. Cheap to share behind an `Arc`; methods take `&self`.
pub struct Client {
    http: reqwest::Client,
    base: String,
    pin: Pin,
    profile_path: Option<PathBuf>,
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn now() -> UnixTime {
    relay_core::Clock::now(&relay_core::SystemClock)
}

/// Attempts per request when the relay is unreachable or answers 503 (storage unavailable,
/// too busy): waits 0.2, 0.4, 0.8, 1.6 and 2 s between them, about 5 s in all — long enough
/// for a Redis restart or failover.
const RETRIES: usize = 6;

fn backoff(attempt: usize) -> Duration {
    Duration::from_millis((200u64 << attempt.saturating_sub(1).min(4)).min(2000))
}

/// Most acknowledgements sent with one poll (the relay's default limit, `--max-acks`).
const MAX_ACKS_PER_POLL: usize = 1024;

/// The longest the client waits in all for a rate limit (429 `rate_limited`, `Retry-After`)
/// before it reports the refusal.
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(60);

/// A peer name as the relay keeps it (lower case), or [`ClientError::Invalid`].
fn peer_name(peer: &str) -> Result<String, ClientError> {
    ClientId::new(peer)
        .map(|id| id.to_string())
        .map_err(|e| ClientError::Invalid(e.to_string()))
}

impl Client {
    /// Loads the profile (or creates an identity), then resumes the saved session or performs a
    /// handshake, and publishes the identity key.
    ///
    /// # Errors
    /// [`ClientError::UntrustedServer`] for a server that is not the pinned one; transport,
    /// protocol and profile errors.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let client_id = ClientId::new(&config.name).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let profile = match &config.profile {
            Some(p) => Profile::load(p)?,
            None => None,
        };
        let mut state = State {
            client_id,
            identity: IdentitySecret::generate(&mut OsRng),
            server_key: None,
            session: None,
            peers: BTreeMap::new(),
            chats: BTreeMap::new(),
            to_ack: Vec::new(),
            held: BTreeSet::new(),
        };
        if let Some(p) = profile {
            if p.client_id != config.name {
                return Err(ClientError::Profile(format!(
                    "profile belongs to {}, not {}",
                    p.client_id, config.name
                )));
            }
            let secret: [u8; 32] = p
                .identity
                .expose()
                .try_into()
                .map_err(|_| ClientError::Profile("identity key".into()))?;
            state.identity = IdentitySecret::from_bytes(secret);
            state.server_key = p.server_key.map(ServerPublicKey::from_bytes);
            state.session = p.session.map(ClientSession::restore).transpose()?;
            state.peers = p.peers;
            for (peer, data) in p.chats {
                state.chats.insert(peer, ChatState::restore(data)?);
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(40))
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let client = Self {
            http,
            base: config.server.trim_end_matches('/').to_owned(),
            pin: config.pin,
            profile_path: config.profile,
            state: tokio::sync::Mutex::new(state),
        };
        {
            let mut st = client.state.lock().await;
            if st.session.is_none() {
                client.handshake(&mut st).await?;
            }
            client.save(&st)?;
        }
        client.publish_key().await?;
        Ok(client)
    }

    /// This client's id.
    pub async fn client_id(&self) -> String {
        self.state.lock().await.client_id.to_string()
    }

    /// This client's identity public key.
    pub async fn identity_key(&self) -> IdentityPublic {
        self.state.lock().await.identity.public()
    }

    /// The server key this client trusts.
    pub async fn server_key(&self) -> Option<ServerPublicKey> {
        self.state.lock().await.server_key
    }

    fn save(&self, st: &State) -> Result<(), ClientError> {
        let Some(path) = &self.profile_path else {
            return Ok(());
        };
        Profile {
            client_id: st.client_id.to_string(),
            identity: SecretBytes::new(st.identity.to_bytes().to_vec()),
            server_key: st.server_key.map(|k| *k.as_bytes()),
            session: st.session.as_ref().map(ClientSession::state),
            peers: st.peers.clone(),
            chats: st.chats.iter().map(|(k, v)| (k.clone(), v.data())).collect(),
        }
        .save(path)
    }

    async fn post_json<T: serde::de::DeserializeOwned>(
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
    async fn post_raw(
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
            let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                error: "http".into(),
                message: status.to_string(),
                notice: None,
            });
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && attempt < RETRIES {
                tracing::debug!(path, code = %body.error, "relay unavailable; retrying");
                continue;
            }
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS && body.error == "rate_limited" {
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

    async fn handshake(&self, st: &mut State) -> Result<(), ClientError> {
        let pin = match (st.server_key, self.pin) {
            (Some(k), _) => ServerPin::Key(k),
            (None, Pin::Fingerprint(f)) => ServerPin::Fingerprint(f),
            (None, Pin::Key(k)) => ServerPin::Key(k),
            (None, Pin::TrustOnFirstUse) => ServerPin::TrustOnFirstUse,
        };
        let untrusted = |e: mtproto_session::Error| match e {
            mtproto_session::Error::UntrustedServer { got, expected } => {
                ClientError::UntrustedServer { got, expected }
            }
            other => ClientError::Protocol(other),
        };
        let (c, req) = ClientHandshake::start(pin, st.client_id.clone(), &mut OsRng);
        let res: ResPq = self.post_json("/req_pq", &req).await?;
        let (c, req) = c.handle_res_pq(&res).map_err(untrusted)?;
        let res: ServerDhParams = self.post_json("/req_dh_params", &req).await?;
        let (c, req) = c
            .handle_server_dh_params(&res, now(), &mut OsRng)
            .map_err(untrusted)?;
        let server_key = *c.server_key();
        let res: DhGenOk = self.post_json("/set_client_dh_params", &req).await?;
        let session = c.handle_dh_gen_ok(&res)?;
        tracing::info!(client_id = %st.client_id, server = %server_key.fingerprint(), "handshake complete");
        st.server_key = Some(server_key);
        st.session = Some(session);
        Ok(())
    }

    /// One authenticated call: seals `call`, posts it, opens the answer. Handles a stale salt or
    /// a clock notice (resends with a fresh msg_id), a lost auth key (new handshake), and
    /// transport failures (resends the same envelope, which the relay answers only once).
    async fn call<T: serde::de::DeserializeOwned>(&self, path: &str, call: &Call) -> Result<T, ClientError> {
        match self.call_inner(path, call).await {
            Err(ClientError::Server { code, .. }) if code == "unknown_auth_key" => {
                // The server lost our key (and with it, perhaps, all it knew of us): a new
                // handshake, the identity key published again, then the call once more.
                {
                    let mut st = self.state.lock().await;
                    st.session = None;
                    self.handshake(&mut st).await?;
                    self.save(&st)?;
                }
                if !matches!(call, Call::PublishKey { .. }) {
                    let key = self.state.lock().await.identity.public();
                    let publish = Call::PublishKey {
                        identity_key: Bytes(key.as_bytes().to_vec()),
                    };
                    let _: PublishAnswer = self.call_inner("/publish_key", &publish).await?;
                }
                self.call_inner(path, call).await
            }
            other => other,
        }
    }

    async fn call_inner<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        call: &Call,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(call).map_err(|e| ClientError::Invalid(e.to_string()))?;
        for _ in 0..3 {
            let packet = {
                let mut st = self.state.lock().await;
                let session = st
                    .session
                    .as_mut()
                    .ok_or_else(|| ClientError::Invalid("no session".into()))?;
                let out = session.encode_request(&body, now(), &mut OsRng)?;
                self.save(&st)?;
                out.packet
            };
            let req = serde_json::json!({ "packet": Bytes(packet) });
            let raw = match self.post_raw(path, &req).await? {
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
            let answer: EnvelopeAnswer = serde_json::from_slice(&raw)
                .map_err(|e| ClientError::Transport(format!("bad answer: {e}")))?;
            let mut st = self.state.lock().await;
            let session = st
                .session
                .as_mut()
                .ok_or_else(|| ClientError::Invalid("no session".into()))?;
            let incoming = session.decode_response(&answer.packet.0, now())?;
            self.save(&st)?;
            return serde_json::from_slice(&incoming.body)
                .map_err(|e| ClientError::Transport(format!("bad body: {e}")));
        }
        Err(ClientError::Transport("gave up after repeated refusals".into()))
    }

    async fn apply_notice(&self, notice: &[u8]) -> Result<bool, ClientError> {
        let mut st = self.state.lock().await;
        let Some(session) = st.session.as_mut() else {
            return Ok(false);
        };
        let Ok(incoming) = session.decode_response(notice, now()) else {
            return Ok(false);
        };
        let applied = session.handle_notice(&incoming, now()).is_some();
        self.save(&st)?;
        Ok(applied)
    }

    /// Publishes this client's identity key (done by `connect`; call again after a rotation).
    ///
    /// # Errors
    /// Transport, protocol and server errors.
    pub async fn publish_key(&self) -> Result<PublishAnswer, ClientError> {
        let key = self.state.lock().await.identity.public();
        self.call(
            "/publish_key",
            &Call::PublishKey {
                identity_key: Bytes(key.as_bytes().to_vec()),
            },
        )
        .await
    }

    /// Replaces this client's identity key with a new one (peers will see a key change).
    ///
    /// # Errors
    /// As [`Client::publish_key`].
    pub async fn rotate_identity(&self) -> Result<PublishAnswer, ClientError> {
        {
            let mut st = self.state.lock().await;
            st.identity = IdentitySecret::generate(&mut OsRng);
            st.chats.clear();
            self.save(&st)?;
        }
        self.publish_key().await
    }

    /// These peers as the directory shows them now (exact names; unknown ones are left out),
    /// each key compared to the accepted one. Asks in batches of
    /// [`relay_core::api::MAX_LOOKUP_NAMES`].
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a malformed name; transport, protocol and server errors.
    pub async fn lookup(&self, names: &[&str]) -> Result<Vec<PeerView>, ClientError> {
        let ids = names
            .iter()
            .map(|n| ClientId::new(n).map_err(|e| ClientError::Invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for batch in ids.chunks(relay_core::api::MAX_LOOKUP_NAMES) {
            let answer: PeersAnswer = self.call("/peers", &Call::lookup_peers(batch.to_vec())).await?;
            out.extend(self.views(answer).await);
        }
        Ok(out)
    }

    /// One page of the directory: peers that published a key whose names start with `prefix`
    /// (empty: everyone), in name order, after `after`. The second value, when there is one, is
    /// the `after` of the next page.
    ///
    /// # Errors
    /// Transport, protocol and server errors.
    pub async fn search(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<(Vec<PeerView>, Option<String>), ClientError> {
        let after = after
            .map(|a| ClientId::new(a).map_err(|e| ClientError::Invalid(e.to_string())))
            .transpose()?;
        let answer: PeersAnswer = self
            .call("/peers", &Call::search_peers(&prefix.to_ascii_lowercase(), after))
            .await?;
        let next = answer.next.as_ref().map(ToString::to_string);
        Ok((self.views(answer).await, next))
    }

    /// The contacts: every peer whose key this client accepted, as the directory shows them now.
    ///
    /// # Errors
    /// Transport, protocol and server errors.
    pub async fn contacts(&self) -> Result<Vec<PeerView>, ClientError> {
        let names: Vec<String> = self.state.lock().await.peers.keys().cloned().collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.lookup(&names).await
    }

    async fn views(&self, answer: PeersAnswer) -> Vec<PeerView> {
        let st = self.state.lock().await;
        answer
            .peers
            .into_iter()
            .map(|p| {
                let key = p.identity_key.and_then(|k| IdentityPublic::from_slice(&k.0).ok());
                let status = match (key, st.peers.get(p.client_id.as_str())) {
                    (None, _) => KeyStatus::NoKey,
                    (Some(_), None) => KeyStatus::New,
                    (Some(k), Some(known)) if known.identity_key == *k.as_bytes() => KeyStatus::Known,
                    (Some(_), Some(_)) => KeyStatus::Changed,
                };
                PeerView {
                    client_id: p.client_id.to_string(),
                    identity_key: key,
                    key_version: p.key_version,
                    last_seen: p.last_seen,
                    key_status: status,
                }
            })
            .collect()
    }

    /// Makes sure a chat with `peer` exists under its accepted key. A first contact accepts the
    /// directory's key; a changed key is an error until [`Client::accept_peer_key`].
    async fn ensure_chat(&self, peer: &str) -> Result<(), ClientError> {
        {
            let st = self.state.lock().await;
            if st.chats.contains_key(peer) {
                return Ok(());
            }
        }
        let (key, key_version) = self.directory_key(peer).await?;
        let mut st = self.state.lock().await;
        match st.peers.get(peer) {
            Some(known) if known.identity_key != *key.as_bytes() => {
                return Err(ClientError::PeerKeyChanged {
                    peer: peer.into(),
                    old_version: known.key_version,
                    new_version: key_version,
                });
            }
            Some(_) => {}
            None => accept_key(&mut st, peer, key, key_version)?,
        }
        if !st.chats.contains_key(peer) {
            let chat = ChatState::new(&st.identity, key)?;
            st.chats.insert(peer.to_owned(), chat);
        }
        self.save(&st)
    }

    /// Accepts `peer`'s current directory key (after the user verified it), starting a new chat.
    ///
    /// # Errors
    /// [`ClientError::NoPeerKey`], transport and server errors.
    pub async fn accept_peer_key(&self, peer: &str) -> Result<(), ClientError> {
        let peer = &peer_name(peer)?;
        let (key, key_version) = self.directory_key(peer).await?;
        let mut st = self.state.lock().await;
        accept_key(&mut st, peer, key, key_version)?;
        st.held.clear();
        self.save(&st)
    }

    /// `peer`'s identity key and its version as the directory shows them now.
    async fn directory_key(&self, peer: &str) -> Result<(IdentityPublic, u32), ClientError> {
        let view = self
            .lookup(&[peer])
            .await?
            .into_iter()
            .find(|p| p.client_id == peer)
            .ok_or_else(|| ClientError::NoPeerKey(peer.into()))?;
        let key = view
            .identity_key
            .ok_or_else(|| ClientError::NoPeerKey(peer.into()))?;
        Ok((key, view.key_version))
    }

    /// The safety number to compare with `peer` (identical on both sides).
    ///
    /// # Errors
    /// As [`Client::send`] for a first contact.
    pub async fn fingerprint(&self, peer: &str) -> Result<Fingerprint, ClientError> {
        let peer = &peer_name(peer)?;
        self.ensure_chat(peer).await?;
        let st = self.state.lock().await;
        st.chats
            .get(peer)
            .map(ChatState::fingerprint)
            .ok_or_else(|| ClientError::NoPeerKey(peer.into()))
    }

    /// Marks `peer`'s accepted key as verified by the user.
    ///
    /// # Errors
    /// [`ClientError::NoPeerKey`] for an unknown peer.
    pub async fn mark_verified(&self, peer: &str) -> Result<(), ClientError> {
        let peer = &peer_name(peer)?;
        let mut st = self.state.lock().await;
        let known = st
            .peers
            .get_mut(peer)
            .ok_or_else(|| ClientError::NoPeerKey(peer.into()))?;
        known.verified = true;
        self.save(&st)
    }

    /// Encrypts `body` end to end for `peer` and stores it on the relay.
    ///
    /// # Errors
    /// [`ClientError::PeerKeyChanged`], [`ClientError::NoPeerKey`], server errors such as
    /// `mailbox_full`, transport and protocol errors.
    pub async fn send(&self, peer: &str, body: &[u8]) -> Result<Receipt, ClientError> {
        let target = ClientId::new(peer).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let peer = target.as_str();
        self.ensure_chat(peer).await?;
        let sealed = {
            let mut st = self.state.lock().await;
            let chat = st
                .chats
                .get_mut(peer)
                .ok_or_else(|| ClientError::NoPeerKey(peer.into()))?;
            let sealed = chat.seal(body, now(), &mut OsRng)?;
            self.save(&st)?;
            sealed
        };
        let answer: SendAnswer = self
            .call(
                "/secure_message",
                &Call::SendMessage {
                    target_peer: target,
                    payload: Bytes(sealed.packet),
                },
            )
            .await?;
        Ok(Receipt {
            seq: sealed.seq,
            msg_id: answer.msg_id.parse().unwrap_or(0),
            mailbox_seq: answer.mailbox_seq,
            timestamp: answer.timestamp,
        })
    }

    /// Acknowledges what was handed out before, then long-polls (up to `wait`) and decrypts.
    ///
    /// # Errors
    /// Transport, protocol and server errors. Undecryptable entries are events, not errors.
    pub async fn poll(&self, wait: Duration) -> Result<Vec<Event>, ClientError> {
        let ack = self.acks_for_one_poll().await;
        let call = Call::PollMessages {
            ack: ack.clone(),
            timeout_ms: Some(wait.as_millis() as u64),
            limit: None,
        };
        let answer: PollAnswer = match self.call("/poll_messages", &call).await {
            Ok(a) => a,
            Err(e) => {
                // Not acknowledged: keep them for the next poll.
                self.state.lock().await.to_ack.extend(ack);
                return Err(e);
            }
        };
        let mut events = Vec::new();
        for entry in answer.messages {
            match &entry.kind {
                EntryKind::Expired { to, message_seq } => {
                    events.push(Event::Expired {
                        to: to.to_string(),
                        seq: *message_seq,
                    });
                    self.state.lock().await.to_ack.push(entry.seq);
                }
                EntryKind::Message => {
                    if let Some(ev) = self.open_entry(&entry.from, entry.seq, &entry.payload.0).await? {
                        events.push(ev);
                    }
                }
            }
        }
        Ok(events)
    }

    async fn open_entry(&self, from: &str, seq: u64, packet: &[u8]) -> Result<Option<Event>, ClientError> {
        if self.ensure_chat(from).await.is_err() {
            let mut st = self.state.lock().await;
            return Ok(if st.held.insert(seq) {
                Some(Event::PeerKeyChanged { from: from.into() })
            } else {
                None
            });
        }
        let mut st = self.state.lock().await;
        let Some(chat) = st.chats.get_mut(from) else {
            return Ok(None);
        };
        let event = match chat.open(packet) {
            Ok(r) => Event::Message {
                from: from.into(),
                body: r.body,
                seq: r.seq,
                sent_at_ms: r.sent_at_ms,
                delivery: r.delivery,
            },
            Err(mtproto_session::Error::Decrypt) => {
                // Under another key: perhaps the peer rotated. Hold it and say so once.
                drop(st);
                let changed = self
                    .lookup(&[from])
                    .await?
                    .iter()
                    .any(|p| p.client_id == from && p.key_status == KeyStatus::Changed);
                let mut st = self.state.lock().await;
                if changed {
                    return Ok(if st.held.insert(seq) {
                        Some(Event::PeerKeyChanged { from: from.into() })
                    } else {
                        None
                    });
                }
                st.to_ack.push(seq);
                return Ok(Some(Event::Rejected {
                    from: from.into(),
                    reason: "message failed authentication".into(),
                }));
            }
            Err(mtproto_session::Error::E2eReplay { .. }) => {
                // Delivered again because our ack did not reach the relay: already handed out.
                st.to_ack.push(seq);
                return Ok(None);
            }
            Err(e) => Event::Rejected {
                from: from.into(),
                reason: e.to_string(),
            },
        };
        st.to_ack.push(seq);
        self.save(&st)?;
        Ok(Some(event))
    }

    /// The acknowledgements for the next poll: at most the relay's limit, oldest first; the
    /// rest go with the one after.
    async fn acks_for_one_poll(&self) -> Vec<u64> {
        let mut st = self.state.lock().await;
        let n = st.to_ack.len().min(MAX_ACKS_PER_POLL);
        st.to_ack.drain(..n).collect()
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
            ack,
            timeout_ms: Some(0),
            limit: Some(1),
        };
        let _: PollAnswer = self.call("/poll_messages", &call).await?;
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
