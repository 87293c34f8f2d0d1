#![doc = include_str!("../README.md")]
//!
//! An async Rust client for mtproto-relay. It drives mtproto-session's client side and adds only
//! I/O (HTTP through reqwest) and storage (a profile file):
//!
//! - connect: handshake with the pq proof of work, the server key pinned by fingerprint (or trust
//!   on first use, then pinned), DH checks and key confirmation; a new handshake when the server
//!   has lost the key;
//! - a profile (auth key, session, identity key, pinned server key, known peer keys, chats) in an
//!   owner-only file, so a restarted client resumes without a new handshake or identity;
//! - forward secrecy: an Ed25519 identity signing key and prekeys (published on connect, topped
//!   up, rotated weekly), conversations under the double ratchet started from the peer's prekey
//!   bundle, and the static chat key only for peers that published no prekeys (older clients):
//!   [`Client::conversation`], [`Event::StartedWithoutOneTimePrekey`];
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
use std::path::PathBuf;

use std::time::Duration;

use mtproto_crypto::{rand_core::OsRng, IdentityPublic, IdentitySecret, IdentitySigningKey, ServerPublicKey};
use mtproto_session::{x3dh::Prekeys, ChatState, ClientId, ClientSession, SecretBytes, UnixTime};
use relay_api::AckRef;

mod config;
mod connection;
mod conversations;
mod directory;
mod error;
mod inbox;
mod outbox;
mod prekeys;
mod profile;
mod sending;
mod transport;

pub use config::{ClientConfig, NO_PREKEYS_RETRY};
pub use connection::Connection;
pub use conversations::{ConvData, Conversation, KeptMessage, RatchetsData};
pub use directory::{KeyStatus, PeerView};
pub use error::ClientError;
pub use inbox::Event;
pub use mtproto_crypto::{RecoveryCode, ServerKeyFingerprint};
pub use mtproto_session::Delivery;
/// How the client trusts the server: a key, its fingerprint, or the first key seen (then
/// pinned in the profile). The handshake's own type, re-exported.
pub use mtproto_session::ServerPin as Pin;
pub use outbox::{OutboxEntry, OutboxId, PostedEnvelope, Receipt, SendState, MAX_OUTBOX};
pub use prekeys::{ONE_TIME_PREKEYS_LOW, ONE_TIME_PREKEYS_TARGET, SIGNED_PREKEY_MAX_AGE_SECS};
pub use profile::{KnownPeer, Profile};
/// The wire contract (relay-api): the calls a [`Connection`] makes and their answers.
pub use relay_api as api;
pub use relay_api::ErrorCode;
pub use transport::{Transport, MAX_ANSWER_BYTES};

use conversations::{KeptKey, PeerRatchets};
use error::Refusal;

struct State {
    client_id: ClientId,
    identity: IdentitySecret,
    server_key: Option<ServerPublicKey>,
    session: Option<ClientSession>,
    peers: BTreeMap<String, KnownPeer>,
    /// Per peer, the static conversation: the chat key and THE receive window of the pair,
    /// which numbers static and ratchet messages alike.
    chats: BTreeMap<String, ChatState>,
    /// The Ed25519 identity signing key that signs the prekeys.
    signing: IdentitySigningKey,
    /// The prekey secrets (signed prekeys, one-time prekeys).
    prekeys: Prekeys,
    /// Per peer, the ratchet conversations (`ours`, `theirs`).
    ratchets: BTreeMap<String, PeerRatchets>,
    /// Peers whose relay answered `no_prekeys`: under the static key until then.
    no_prekeys_until: BTreeMap<String, UnixTime>,
    /// Opened messages handed out and not yet acknowledged, by mailbox entry.
    kept: BTreeMap<KeptKey, KeptMessage>,
    /// Events to report with the next poll (conversations this client started).
    notices: Vec<Event>,
    /// The relay's prekeys need a check and perhaps a top-up (a start was accepted, with or
    /// without a one-time prekey; the relay lost our data; or a publish failed).
    prekeys_due: Option<usize>,
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
    /// Outbox entries a `send` or `retry` call is waiting on: their receipts go to that call,
    /// never to a concurrent poll's events (else the call found nothing: "not in the outbox").
    awaited: BTreeSet<OutboxId>,
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

/// A connected client. Cheap to share behind an `Arc`; methods take `&self`.
pub struct Client {
    transport: Transport,
    pin: Pin,
    profile_path: Option<PathBuf>,
    state: tokio::sync::Mutex<State>,
    /// Held while the outbox is transmitted: one flush at a time, in order.
    flushing: tokio::sync::Mutex<()>,
    /// Held while prekeys are published: one top-up at a time.
    publishing: tokio::sync::Mutex<()>,
    receipts: bool,
    /// Whether this client publishes prekeys and starts ratchet conversations.
    prekeys_on: bool,
    /// How long a peer's `no_prekeys` answer is believed.
    no_prekeys_retry: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.transport.base())
            .finish_non_exhaustive()
    }
}

impl State {
    /// A new identity, signing key and prekeys for `client_id`; `recover` moves the name here
    /// with the first handshake.
    fn new(client_id: ClientId, recover: Option<RecoveryCode>) -> Self {
        let identity = IdentitySecret::generate(&mut OsRng);
        let signing = IdentitySigningKey::generate(&mut OsRng);
        let prekeys = Prekeys::new(&identity, &signing, now(), &mut OsRng);
        State {
            client_id,
            identity,
            server_key: None,
            session: None,
            peers: BTreeMap::new(),
            chats: BTreeMap::new(),
            signing,
            prekeys,
            ratchets: BTreeMap::new(),
            no_prekeys_until: BTreeMap::new(),
            kept: BTreeMap::new(),
            notices: Vec::new(),
            prekeys_due: None,
            to_ack: Vec::new(),
            held: BTreeSet::new(),
            outbox: BTreeMap::new(),
            next_outbox_id: 1,
            settled: Vec::new(),
            awaited: BTreeSet::new(),
            relay_lost_data: false,
            redeliver: BTreeSet::new(),
            receipts_due: BTreeMap::new(),
            recovery_code: None,
            key_changed: BTreeMap::new(),
            recover_with: recover,
        }
    }

    /// Takes what a saved profile holds (of this client's name): keys, session, peers,
    /// conversations, the outbox and the copies of what was handed out.
    fn restore(&mut self, p: Profile) -> Result<(), ClientError> {
        let secret: [u8; 32] = p
            .identity
            .expose()
            .try_into()
            .map_err(|_| ClientError::Profile("identity key".into()))?;
        self.identity = IdentitySecret::from_bytes(secret);
        self.server_key = p.server_key.map(ServerPublicKey::from_bytes);
        self.session = p.session.map(ClientSession::restore).transpose()?;
        self.peers = p.peers;
        for (peer, data) in p.chats {
            self.chats.insert(peer, ChatState::restore(data)?);
        }
        if let Some(seed) = &p.signing_key {
            let seed: [u8; 32] = seed
                .expose()
                .try_into()
                .map_err(|_| ClientError::Profile("identity signing key".into()))?;
            self.signing = IdentitySigningKey::from_seed(seed);
        }
        // Prekeys for this identity and signing key; new ones otherwise (older profiles).
        let own = self.identity.public();
        self.prekeys = p
            .prekeys
            .filter(|k| {
                let b = k.bundle(None);
                b.identity == *own.as_bytes() && b.signing_key == *self.signing.public().as_bytes()
            })
            .unwrap_or_else(|| Prekeys::new(&self.identity, &self.signing, now(), &mut OsRng));
        for (peer, data) in p.ratchets {
            if let Some(window) = self.chats.get(&peer) {
                let r = PeerRatchets::restore(data, window.peer())?;
                self.ratchets.insert(peer, r);
            }
        }
        // A profile over the client-wide bound (an older version's) is trimmed, not refused.
        conversations::cap_skipped_keys(&mut self.ratchets);
        self.no_prekeys_until = p.no_prekeys_until;
        for entry in p.outbox {
            self.next_outbox_id = self.next_outbox_id.max(entry.id.0 + 1);
            self.outbox.insert(entry.id, entry);
        }
        self.redeliver = p.handed_out.iter().map(|a| (a.seq, a.ts)).collect();
        // Kept copies of what was handed out and not acknowledged; no more.
        self.kept = p
            .kept
            .into_iter()
            .map(|k| (k.key(), k))
            .filter(|(key, _)| self.redeliver.contains(key))
            .collect();
        Ok(())
    }

    /// The settled receipts no `send` or `retry` call waits for: reported as events.
    fn take_unawaited_receipts(&mut self) -> Vec<Receipt> {
        let (mine, rest): (Vec<Receipt>, Vec<Receipt>) = std::mem::take(&mut self.settled)
            .into_iter()
            .partition(|r| self.awaited.contains(&r.id));
        self.settled = mine;
        rest
    }
}

fn now() -> UnixTime {
    UnixTime::from_system()
}

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
        // Built first: a bad root certificate is refused before the profile is read.
        let transport = Transport::new(&config)?;
        let mut state = State::new(client_id, config.recovery);
        if let Some(p) = profile {
            if p.client_id != config.name {
                return Err(ClientError::Profile(format!(
                    "profile belongs to {}, not {}",
                    p.client_id, config.name
                )));
            }
            state.restore(p)?;
        }
        let client = Self {
            transport,
            pin: config.pin,
            profile_path: config.profile,
            receipts: config.receipts,
            prekeys_on: config.prekeys,
            no_prekeys_retry: config.no_prekeys_retry,
            state: tokio::sync::Mutex::new(state),
            flushing: tokio::sync::Mutex::new(()),
            publishing: tokio::sync::Mutex::new(()),
        };
        {
            let mut st = client.state.lock().await;
            if st.session.is_none() {
                client.handshake(&mut st).await?;
            }
            client.save(&st).await?;
        }
        client.publish_key().await?;
        if client.prekeys_on {
            // Not fatal: the client still talks (under the static key to whoever cannot start
            // with it) and tries again with the next poll.
            if let Err(e) = client.top_up_prekeys(ONE_TIME_PREKEYS_TARGET).await {
                tracing::warn!(error = %e, "publishing prekeys failed; trying again with the next poll");
                client.state.lock().await.prekeys_due = Some(ONE_TIME_PREKEYS_TARGET);
            }
        }
        Ok(client)
    }

    /// The recovery code this client registered with the relay when it created its account,
    /// recovered it (the code used for the recovery stops working: a new one replaces it), or
    /// created it again after the relay lost its data — once: show it to the user to write
    /// down; it is not kept anywhere. `None` when there is none to show.
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

    /// Writes the profile as `st` is now (atomically, fsynced). The write runs on the blocking
    /// pool, not on the async executor's threads; the caller waits for it (the order of saves
    /// is the order of the calls, and a caller that saves before it sends knows it is on disk).
    async fn save(&self, st: &State) -> Result<(), ClientError> {
        let Some(path) = self.profile_path.clone() else {
            return Ok(());
        };
        let profile = Profile {
            client_id: st.client_id.to_string(),
            identity: SecretBytes::new(st.identity.to_bytes().to_vec()),
            server_key: st.server_key.map(|k| *k.as_bytes()),
            session: st.session.as_ref().map(ClientSession::state),
            peers: st.peers.clone(),
            chats: st.chats.iter().map(|(k, v)| (k.clone(), v.data())).collect(),
            outbox: st.outbox.values().cloned().collect(),
            handed_out: st.to_ack.clone(),
            signing_key: Some(SecretBytes::new(st.signing.seed().to_vec())),
            prekeys: Some(st.prekeys.clone()),
            ratchets: conversations::ratchets_data(&st.ratchets),
            no_prekeys_until: st.no_prekeys_until.clone(),
            kept: st.kept.values().cloned().collect(),
        };
        tokio::task::spawn_blocking(move || profile.save(&path))
            .await
            .map_err(|e| ClientError::Profile(format!("the profile writer failed: {e}")))?
    }
}
