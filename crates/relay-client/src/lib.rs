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
//! - an outbox: [`Client::send`] seals a message end to end once and keeps it (in the profile)
//!   until the relay's answer says stored or refused. It retries for about 5 s when the relay is
//!   unreachable or answers 503, then leaves the message "sending"; [`Client::flush_outbox`]
//!   (run at the start of every `poll` and `send`) resends it — the same envelope while the relay
//!   can still recognise it, so nothing is delivered twice, else the same end-to-end packet in a
//!   new envelope, which the peer drops as a replay if the first copy got through;
//! - receive as a stream, acknowledging an entry only after it was handed to the caller as an
//!   [`Event`] (a message, a rejection, an expiry) or when it is a duplicate of one that was;
//!   an entry that cannot be opened now (a changed key, a directory that cannot be reached) is
//!   left on the relay.
//!
//! ```no_run
//! # async fn demo() -> Result<(), relay_client::ClientError> {
//! use relay_client::{Client, ClientConfig, Pin};
//! let alice = Client::connect(ClientConfig::new("http://127.0.0.1:8080", "alice", Pin::TrustOnFirstUse)).await?;
//! let receipt = alice.send("bob", b"hello bob").await?;
//! println!("{:?}", receipt.state); // Stored, Sending (kept in the outbox) or Refused
//! for event in alice.poll(std::time::Duration::from_secs(25)).await? {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use futures::Stream;
use mtproto_crypto::{
    rand_core::OsRng, Fingerprint, IdentityPublic, IdentitySecret, ServerKeyFingerprint, ServerPublicKey,
};
use mtproto_session::{
    wire::Bytes, ChatState, ClientHandshake, ClientId, ClientSession, DhGenOk, MsgId, ResPq, SecretBytes,
    ServerDhParams, ServerPin, UnixTime,
};
use relay_api::{
    AckRef, Call, EntryKind, EnvelopeRequest, EnvelopeResponse, ErrorBody, PeersAnswer, PollAnswer,
    PublishAnswer, SendAnswer, MAX_LOOKUP_NAMES, OUTCOME_TTL_SECS,
};

mod outbox;
mod profile;
pub use mtproto_crypto::RecoveryCode;
pub use mtproto_session::Delivery;
pub use relay_api::ErrorCode;

pub use outbox::{OutboxEntry, OutboxId, PostedEnvelope, Receipt, SendState, MAX_OUTBOX};

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
        /// The relay's error code ([`ErrorCode::UnknownPeer`], [`ErrorCode::MailboxFull`], ...).
        code: ErrorCode,
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
    /// The outbox holds [`MAX_OUTBOX`] messages already (sending or refused): flush, retry or
    /// abandon some first.
    #[error("the outbox is full ({max} messages waiting)")]
    OutboxFull {
        /// The limit.
        max: usize,
    },
    /// No message with this id is in the outbox.
    #[error("no message {0} in the outbox")]
    NotInOutbox(OutboxId),
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
    /// Whether to send delivery receipts (off by default; see [`ClientConfig::with_receipts`]).
    pub receipts: bool,
    /// The recovery code that moves the name to this client (see
    /// [`ClientConfig::with_recovery_code`]).
    pub recovery: Option<RecoveryCode>,
    /// Extra PEM root certificates trusted for `https://` relays, beside the usual web roots.
    pub root_certificates: Vec<Vec<u8>>,
}

impl ClientConfig {
    /// A configuration without a profile file.
    pub fn new(server: &str, name: &str, pin: Pin) -> Self {
        Self {
            server: server.trim_end_matches('/').to_owned(),
            name: name.to_owned(),
            pin,
            profile: None,
            receipts: false,
            recovery: None,
            root_certificates: Vec::new(),
        }
    }

    /// Trusts `pem` (a PEM certificate) as a root for an `https://` relay — a private CA or a
    /// self-signed relay certificate — besides the web's usual roots. The relay's own key is
    /// pinned by the handshake either way; TLS hides who talks to the relay and when.
    pub fn with_root_certificate(mut self, pem: &[u8]) -> Self {
        self.root_certificates.push(pem.to_vec());
        self
    }

    /// Takes the name over from a lost device (a new device, a cleared profile): the relay
    /// answers `client_id_taken` to a new key for a name in use, unless the handshake carries
    /// the proof made with the account's recovery code. The old device is locked out; peers
    /// see a key change. See `docs/protocol.md` §1 "Recovery".
    pub fn with_recovery_code(mut self, code: RecoveryCode) -> Self {
        self.recovery = Some(code);
        self
    }

    /// Sends delivery receipts (`docs/protocol.md` §3 "Control messages"): when the caller
    /// comes back for the next [`Client::poll`] after messages were handed out — it kept them —
    /// each sender gets one end-to-end receipt naming their sequence numbers, through the outbox
    /// (after the messages before it, never shown by [`Client::outbox`]). The peer sees
    /// [`Event::Delivered`]; the browser client shows "delivered".
    pub fn with_receipts(mut self, on: bool) -> Self {
        self.receipts = on;
        self
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

/// The JSON of a control message (after its 0x00 byte); unknown fields are ignored.
#[derive(serde::Deserialize)]
struct Control {
    receipt: Option<Vec<u32>>,
}

/// Most sequence numbers one receipt names (more are left out: "delivered" is a courtesy).
const MAX_RECEIPT_SEQS: usize = 1000;

struct State {
    client_id: ClientId,
    identity: IdentitySecret,
    server_key: Option<ServerPublicKey>,
    session: Option<ClientSession>,
    peers: BTreeMap<String, KnownPeer>,
    chats: BTreeMap<String, ChatState>,
    /// Mailbox entries handed to the caller, acknowledged with the next poll.
    /// Each names the entry's sequence number and store time, so that it can never delete
    /// another message that got the same number after a rollback on the relay.
    to_ack: Vec<AckRef>,
    /// Entries held back (peer key changed, no key), reported once.
    held: BTreeSet<u64>,
    /// Messages not yet stored (sending or refused), by id.
    outbox: BTreeMap<OutboxId, OutboxEntry>,
    /// The next outbox id.
    next_outbox_id: u64,
    /// Outbox entries settled by a flush, not yet reported (by `send` or as events).
    settled: Vec<Receipt>,
    /// Set when the relay no longer knew our key (see [`Event::RelayLostData`]).
    relay_lost_data: bool,
    /// Entries an earlier run handed out and did not acknowledge (saved in the profile): the
    /// application may not have kept them, so they are handed out again when the relay
    /// delivers them again, instead of being dropped as end-to-end replays.
    redeliver: BTreeSet<(u64, Option<u64>)>,
    /// Conversation seqs handed out per sender since the last poll: receipts due.
    receipts_due: BTreeMap<String, Vec<u32>>,
    /// The recovery code registered by this client's last handshake, until taken.
    recovery_code: Option<RecoveryCode>,
    /// The code to recover the name with, used by the first handshake only: a later one (the
    /// relay lost our key) must not take the name back from a device that recovered it since.
    recover_with: Option<RecoveryCode>,
    /// Known peers whose directory key was last seen changed (or withdrawn), with the
    /// directory's version: sending to them is refused until [`Client::accept_peer_key`].
    key_changed: BTreeMap<String, u32>,
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
    /// Held while the outbox is transmitted: one flush at a time, in order.
    flushing: tokio::sync::Mutex<()>,
    receipts: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn now() -> UnixTime {
    UnixTime::from_system()
}

/// Attempts per request when the relay is unreachable or answers 503 (storage unavailable,
/// too busy): waits 0.2, 0.4, 0.8, 1.6 and 2 s between them, about 5 s in all — long enough
/// for a Redis restart or failover.
const RETRIES: usize = 6;

fn backoff(attempt: usize) -> Duration {
    Duration::from_millis((200u64 << attempt.saturating_sub(1).min(4)).min(2000))
}

/// How old (seconds, server time) an envelope may be and still be resent as is: the relay
/// answers a resend of a committed request from its stored outcome for
/// [`OUTCOME_TTL_SECS`] (even past the msg_id time window and the replay
/// window); ten minutes are kept for clock drift. Past it a new envelope carries the same
/// end-to-end packet.
const REUSE_ENVELOPE_SECS: u64 = OUTCOME_TTL_SECS - 600;

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
            outbox: BTreeMap::new(),
            next_outbox_id: 1,
            settled: Vec::new(),
            relay_lost_data: false,
            redeliver: BTreeSet::new(),
            receipts_due: BTreeMap::new(),
            recovery_code: None,
            key_changed: BTreeMap::new(),
            recover_with: config.recovery,
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
            for entry in p.outbox {
                state.next_outbox_id = state.next_outbox_id.max(entry.id.0 + 1);
                state.outbox.insert(entry.id, entry);
            }
            state.redeliver = p.handed_out.iter().map(|a| (a.seq, a.ts)).collect();
        }
        let mut http = reqwest::Client::builder().use_rustls_tls();
        for pem in &config.root_certificates {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| ClientError::Invalid(format!("root certificate: {e}")))?;
            http = http.add_root_certificate(cert);
        }
        let http = http
            .timeout(Duration::from_secs(40))
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let client = Self {
            http,
            base: config.server.trim_end_matches('/').to_owned(),
            pin: config.pin,
            profile_path: config.profile,
            receipts: config.receipts,
            state: tokio::sync::Mutex::new(state),
            flushing: tokio::sync::Mutex::new(()),
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

    /// The recovery code this client registered with the relay when it created its account
    /// (or created it again after the relay lost its data), once: show it to the user to write
    /// down — it is not kept anywhere. `None` when there is none to show.
    pub async fn take_recovery_code(&self) -> Option<RecoveryCode> {
        self.state.lock().await.recovery_code.take()
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
            outbox: st.outbox.values().cloned().collect(),
            handed_out: st.to_ack.clone(),
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
        let (c, mut req) = c
            .handle_server_dh_params(&res, now(), &mut OsRng)
            .map_err(untrusted)?;
        // A new account registers a fresh recovery code; a recovery proves the old one (the
        // relay keeps it).
        let recover = st.recover_with.take();
        let fresh = recover.is_none().then(|| RecoveryCode::generate(&mut OsRng));
        c.prove_recovery(
            &mut req,
            fresh.as_ref().map(RecoveryCode::public),
            recover.as_ref(),
        );
        let server_key = *c.server_key();
        let res: DhGenOk = self.post_json("/set_client_dh_params", &req).await?;
        let session = c.handle_dh_gen_ok(&res)?;
        if fresh.is_some() {
            st.recovery_code = fresh;
        }
        tracing::info!(client_id = %st.client_id, server = %server_key.fingerprint(), "handshake complete");
        st.server_key = Some(server_key);
        st.session = Some(session);
        Ok(())
    }

    /// One authenticated call: seals `call`, posts it, opens the answer. Handles a stale salt or
    /// a clock notice (resends with a fresh msg_id), a lost auth key (new handshake), and
    /// transport failures (resends the same envelope, which the relay answers only once).
    async fn call<T: serde::de::DeserializeOwned>(&self, call: &Call) -> Result<T, ClientError> {
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
    async fn handshake_again(&self, publish: bool) -> Result<(), ClientError> {
        {
            let mut st = self.state.lock().await;
            st.session = None;
            self.handshake(&mut st).await?;
            st.relay_lost_data = true;
            tracing::warn!(
                "the relay no longer knew our auth key: registered again; undelivered messages may be lost"
            );
            self.save(&st)?;
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

    async fn call_inner<T: serde::de::DeserializeOwned>(&self, call: &Call) -> Result<T, ClientError> {
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
                self.save(&st)?;
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
        self.call(&Call::PublishKey {
            identity_key: Bytes(key.as_bytes().to_vec()),
        })
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
    /// [`MAX_LOOKUP_NAMES`].
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a malformed name; transport, protocol and server errors.
    pub async fn lookup(&self, names: &[&str]) -> Result<Vec<PeerView>, ClientError> {
        let ids = names
            .iter()
            .map(|n| ClientId::new(n).map_err(|e| ClientError::Invalid(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for batch in ids.chunks(MAX_LOOKUP_NAMES) {
            let answer: PeersAnswer = self.call(&Call::lookup_peers(batch.to_vec())).await?;
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
            .call(&Call::search_peers(&prefix.to_ascii_lowercase(), after))
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
        let mut st = self.state.lock().await;
        answer
            .peers
            .into_iter()
            .map(|p| {
                let key = p.identity_key.and_then(|k| IdentityPublic::from_slice(&k.0).ok());
                let known = st.peers.get(p.client_id.as_str());
                let status = match (key, known) {
                    (None, _) => KeyStatus::NoKey,
                    (Some(_), None) => KeyStatus::New,
                    (Some(k), Some(known)) if known.identity_key == *k.as_bytes() => KeyStatus::Known,
                    (Some(_), Some(_)) => KeyStatus::Changed,
                };
                // A known peer whose key changed or was withdrawn (a reset, a recovered
                // account) cannot read what we would send under the old key: blocked.
                if known.is_some() && status != KeyStatus::Known {
                    st.key_changed.insert(p.client_id.to_string(), p.key_version);
                } else {
                    st.key_changed.remove(p.client_id.as_str());
                }
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
            if let Some(&new_version) = st.key_changed.get(peer) {
                return Err(ClientError::PeerKeyChanged {
                    peer: peer.into(),
                    old_version: st.peers.get(peer).map_or(0, |k| k.key_version),
                    new_version,
                });
            }
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
        st.key_changed.remove(peer);
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

    /// Encrypts `body` end to end for `peer` (once), puts it in the outbox (saved in the
    /// profile), then flushes the outbox: older waiting messages first, then this one.
    ///
    /// The receipt says what became of it: [`SendState::Stored`]; [`SendState::Sending`] when
    /// the relay could not be reached or was unavailable for about 5 s (it stays in the outbox
    /// and is resent by the next [`Client::flush_outbox`]); [`SendState::Refused`] with the
    /// relay's reason (`mailbox_full`, `sender_quota`, `unknown_peer`, `payload_too_large`).
    ///
    /// # Errors
    /// [`ClientError::PeerKeyChanged`], [`ClientError::NoPeerKey`] and transport errors while
    /// looking up a new peer's key, [`ClientError::OutboxFull`], protocol errors while sealing,
    /// profile errors — all before the message is queued, except a profile error.
    pub async fn send(&self, peer: &str, body: &[u8]) -> Result<Receipt, ClientError> {
        let peer = peer_name(peer)?;
        self.ensure_chat(&peer).await?;
        let id = {
            let mut st = self.state.lock().await;
            if st.outbox.len() >= MAX_OUTBOX {
                return Err(ClientError::OutboxFull { max: MAX_OUTBOX });
            }
            let entry = self.seal_entry(&mut st, &peer, body)?;
            let id = entry.id;
            st.outbox.insert(id, entry);
            self.save(&st)?;
            id
        };
        self.flush_and_report(id).await
    }

    /// Flushes the outbox up to `id` and reports where `id` stands: settled (stored or refused,
    /// taken from the unreported ones) or still in the outbox.
    async fn flush_and_report(&self, id: OutboxId) -> Result<Receipt, ClientError> {
        self.flush_outbox_for(Some(id)).await?;
        let mut st = self.state.lock().await;
        if let Some(i) = st.settled.iter().position(|r| r.id == id) {
            return Ok(st.settled.remove(i));
        }
        st.outbox
            .get(&id)
            .map(OutboxEntry::receipt)
            .ok_or(ClientError::NotInOutbox(id))
    }

    /// Seals `body` as the next message to `peer` in a new outbox entry (not yet inserted).
    fn seal_entry(&self, st: &mut State, peer: &str, body: &[u8]) -> Result<OutboxEntry, ClientError> {
        let chat = st
            .chats
            .get_mut(peer)
            .ok_or_else(|| ClientError::NoPeerKey(peer.into()))?;
        let sealed = chat.seal(body, now(), &mut OsRng)?;
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
        Ok(std::mem::take(&mut self.state.lock().await.settled))
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
                self.save(&st)?;
            }
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
        self.save(&st)?;
        Ok(entry.receipt())
    }

    /// Transmits the outbox (only `only` when given, else every entry still sending).
    async fn flush_outbox_for(&self, only: Option<OutboxId>) -> Result<(), ClientError> {
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
    async fn transmit(&self, id: OutboxId) -> Result<Option<SendState>, ClientError> {
        // A handful of fresh envelopes at most: a stale salt or clock, a new handshake.
        for _ in 0..4 {
            let packet = {
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
                self.save(st)?;
                packet
            };
            let req = EnvelopeRequest::packet(packet);
            let answer = self
                .post_raw(relay_api::Endpoint::SecureMessage.path(), &req)
                .await;
            let mut st = self.state.lock().await;
            let outcome = match answer {
                Err(e) => Err(e.to_string()),
                Ok(Ok(raw)) => Self::read_send_answer(&mut st, &raw).map(Ok),
                Ok(Err(refusal)) => {
                    if let Some(notice) = &refusal.body.notice {
                        // A stale salt or clock (checked before anything is stored): apply the
                        // notice and make a new envelope.
                        drop(st);
                        if self.apply_notice(&notice.0).await? {
                            if let Some(e) = self.state.lock().await.outbox.get_mut(&id) {
                                e.drop_envelope();
                            }
                            continue;
                        }
                        let why = format!("{}: {}", refusal.body.error, refusal.body.message);
                        return self.leave_sending(id, why).await;
                    }
                    let code = refusal.body.error;
                    if code == ErrorCode::UnknownAuthKey {
                        drop(st);
                        self.handshake_again(true).await?;
                        continue;
                    }
                    if matches!(code, ErrorCode::BadMsg | ErrorCode::MsgIdReused) {
                        // The relay cannot tell whether it saw this envelope: a new one; the
                        // first may have been stored (then the peer drops the copy).
                        if let Some(e) = st.outbox.get_mut(&id) {
                            if let Some(env) = e.envelope.as_mut() {
                                env.uncertain = true;
                            }
                            e.drop_envelope();
                        }
                        drop(st);
                        continue;
                    }
                    if outbox::is_final_refusal(code) {
                        Ok(Err((code, refusal.body.message)))
                    } else {
                        Err(format!("{code}: {}", refusal.body.message))
                    }
                }
            };
            let st = &mut *st;
            let Some(entry) = st.outbox.get_mut(&id) else {
                return Ok(None);
            };
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
            self.save(st)?;
            return Ok(Some(state));
        }
        self.leave_sending(id, "gave up after repeated refusals".into())
            .await
    }

    async fn leave_sending(&self, id: OutboxId, why: String) -> Result<Option<SendState>, ClientError> {
        let mut st = self.state.lock().await;
        let Some(entry) = st.outbox.get_mut(&id) else {
            return Ok(None);
        };
        entry.state = SendState::Sending {
            last_error: Some(why),
        };
        let state = entry.state.clone();
        self.save(&st)?;
        Ok(Some(state))
    }

    /// Opens the relay's answer to a send, or says why it cannot be read (the message stays
    /// sending; the same envelope is answered again from the stored outcome).
    fn read_send_answer(st: &mut State, raw: &[u8]) -> Result<SendState, String> {
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
        if self.receipts {
            let mut st = self.state.lock().await;
            self.queue_receipts(&mut st)?;
            self.save(&st)?;
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
        let answer: PollAnswer = match self.call(&call).await {
            Ok(a) => a,
            Err(e) => {
                // Not acknowledged: keep them for the next poll.
                self.state.lock().await.to_ack.extend(ack);
                return Err(e);
            }
        };
        let mut events: Vec<Event> = {
            let mut st = self.state.lock().await;
            let lost = std::mem::take(&mut st.relay_lost_data);
            let settled = std::mem::take(&mut st.settled);
            lost.then_some(Event::RelayLostData)
                .into_iter()
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
        let st = self.state.lock().await;
        if let Err(e) = self.save(&st) {
            // The events are handed out anyway: losing them would be worse than a profile
            // one poll behind (its chats then report later messages after a gap).
            tracing::warn!(error = %e, "saving the profile after a poll failed");
        }
        Ok(events)
    }

    /// Holds back mailbox entry `seq` (not acknowledged), reporting `event` the first time.
    async fn hold(&self, seq: u64, event: Event) -> Vec<Event> {
        if self.state.lock().await.held.insert(seq) {
            vec![event]
        } else {
            Vec::new()
        }
    }

    /// Opens one mailbox entry. Never fails: every outcome is events (possibly none) and a
    /// decision to acknowledge the entry or leave it on the relay (see [`Client::poll`]).
    async fn open_entry(&self, from: &str, entry: AckRef, packet: &[u8]) -> Vec<Event> {
        let seq = entry.seq;
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
            Err(e) => {
                let reason = e.to_string();
                return self
                    .hold(
                        seq,
                        Event::Held {
                            from: from.into(),
                            reason,
                        },
                    )
                    .await;
            }
        }
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        let Some(chat) = st.chats.get_mut(from) else {
            drop(guard);
            let reason = "no conversation with this sender".to_owned();
            return self
                .hold(
                    seq,
                    Event::Held {
                        from: from.into(),
                        reason,
                    },
                )
                .await;
        };
        let events = match chat.open(packet) {
            Ok(r) => {
                if let Some(moved) = &r.own_counter_moved {
                    // Our profile went back (restored from an older copy): the chat skipped
                    // the numbers the peer had already received from us.
                    tracing::warn!(
                        peer = from,
                        ?moved,
                        "the conversation's counter was behind the peer's; moved up"
                    );
                }
                self.hand_out(st, from, r)
            }
            Err(mtproto_session::Error::Decrypt) => {
                // Under another key: perhaps the peer rotated. Hold it and say so once.
                drop(guard);
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
                    return self.hold(seq, Event::PeerKeyChanged { from: from.into() }).await;
                }
                self.state.lock().await.to_ack.push(entry);
                return vec![Event::Rejected {
                    from: from.into(),
                    reason: "message failed authentication".into(),
                }];
            }
            Err(mtproto_session::Error::E2eReplay { .. }) => {
                // Handed out by an earlier run that did not acknowledge it (it may have died
                // before the application kept it): handed out again.
                let again = st
                    .redeliver
                    .remove(&(entry.seq, entry.ts))
                    .then(|| chat.open_again(packet).ok())
                    .flatten();
                let events = match again {
                    Some(r) => self.hand_out(st, from, r),
                    // A copy of a message handed out before (our ack did not reach the relay,
                    // or the sender's outbox resent it in a new envelope): not shown.
                    None => Vec::new(),
                };
                st.to_ack.push(entry);
                return events;
            }
            Err(e) => vec![Event::Rejected {
                from: from.into(),
                reason: e.to_string(),
            }],
        };
        st.to_ack.push(entry);
        events
    }

    /// The events for an opened message: a control message (0x00 then a JSON object) becomes
    /// its event ([`Event::Delivered`] for a receipt; unknown controls are dropped), anything
    /// else — binary bodies that merely start with 0x00 too — [`Event::Message`], after
    /// [`Event::Lost`] for numbers the window gave up.
    fn hand_out(&self, st: &mut State, from: &str, r: mtproto_session::Received) -> Vec<Event> {
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
    fn queue_receipts(&self, st: &mut State) -> Result<(), ClientError> {
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
    async fn acks_for_one_poll(&self) -> Vec<AckRef> {
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
        let _: PollAnswer = self.call(&call).await?;
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
