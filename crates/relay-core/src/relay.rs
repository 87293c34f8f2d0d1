//! The relay: handshakes, authenticated calls, long-poll. Brings the clock, the RNG and the
//! storage to the sans-IO session layer.

use std::sync::Arc;
use std::time::Duration;

use mtproto_crypto::{
    rand_core::{OsRng, RngCore},
    AuthKey, DhGroup, Direction, IdentityPublic, ServerSigningKey,
};
use mtproto_session::{
    session::{open_envelope, packet_key_id},
    wire::Bytes,
    ClientId, DhGenOk, Error as SessionError, Notice, ReqDhParams, ReqPq, ResPq, SecretBytes, ServerDhParams,
    ServerHandshake, SetClientDhParams, UnixTime,
};

use crate::{
    api::{
        iso8601, Call, Endpoint, EnvelopeRequest, EnvelopeResponse, PeerInfo, PeersAnswer, PollAnswer,
        PolledEntry, PublishAnswer, SendAnswer, MAX_LOOKUP_NAMES, MAX_PEERS_PAGE, STATUS_RECEIVED,
    },
    limits::{KeyLimits, Rate, SourceLimits, SourceLimitsConfig, WorkMeter, WorkPolicy},
    seal::StorageSeal,
    AccountExpiry, AuthKeyRecord, Commit, Engine, EngineError, Notifier, Op, Outcome, RelayError, SendQuota,
};

/// Client ids nobody may register: the relay signs its own notices with them.
pub const RESERVED_CLIENT_IDS: &[&str] = &["relay", "server", "admin"];

/// Limits and timings, all configurable.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most handshakes pending at once (a `req_pq` flood cannot exhaust the server).
    pub max_pending_handshakes: usize,
    /// What one mailbox may hold, in all and from one sender.
    pub quota: SendQuota,
    /// Most payload bytes one poll answer carries (it always carries at least one entry when
    /// one is waiting; the rest comes with the next poll). Keeps every answer far below the
    /// envelope's 1 MiB limit, whatever others put in the mailbox.
    pub poll_bytes: usize,
    /// When unused accounts are removed and their names released.
    pub accounts: AccountExpiry,
    /// The proof of work asked of new handshakes.
    pub work: WorkPolicy,
    /// Per-source limits on unauthenticated work ([`Relay::sources`]; the HTTP layer applies
    /// them).
    pub sources: SourceLimitsConfig,
    /// Authenticated requests per account ([`KeyLimits`]: a request is one token, plus one per
    /// 16 acknowledgements).
    pub account_rate: Rate,
    /// Most acknowledgements in one poll (a poll answer holds at most `poll_limit` entries).
    pub max_acks: usize,
    /// How often the node runs [`Relay::purge`] (and, every tenth time,
    /// [`Relay::purge_accounts`]).
    pub purge_interval: Duration,
    /// How long an unacknowledged message is kept, seconds.
    pub message_ttl_secs: u64,
    /// Largest end-to-end payload, bytes.
    pub max_payload: usize,
    /// Default long-poll wait.
    pub poll_default: Duration,
    /// Longest long-poll wait a client may ask for.
    pub poll_max: Duration,
    /// Most entries one poll returns.
    pub poll_limit: usize,
}

impl RelayConfig {
    /// The largest payload this relay can accept: one entry must always fit in a poll answer
    /// (base64 inside JSON inside a 1 MiB envelope).
    ///
    /// 256 KiB: the payload crosses HTTP base64-encoded twice (inside the envelope's JSON body,
    /// then the packet inside the request's JSON), which must stay under the 512 KiB request
    /// body limit.
    pub const MAX_PAYLOAD_LIMIT: usize = 256 << 10;

    /// Checks that the limits fit together.
    ///
    /// # Errors
    /// A sentence naming the limit that does not fit.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_payload == 0 || self.max_payload > Self::MAX_PAYLOAD_LIMIT {
            return Err(format!(
                "the largest payload must be 1..={} bytes (one must fit in a poll answer)",
                Self::MAX_PAYLOAD_LIMIT
            ));
        }
        if self.poll_bytes > Self::MAX_PAYLOAD_LIMIT {
            return Err(format!(
                "a poll answer may carry at most {} bytes",
                Self::MAX_PAYLOAD_LIMIT
            ));
        }
        if self.work.max_bits > mtproto_session::work::MAX_CLIENT_BITS
            || self.work.base_bits > mtproto_session::work::MAX_CLIENT_BITS
        {
            return Err(format!(
                "clients refuse more than {} bits of proof of work",
                mtproto_session::work::MAX_CLIENT_BITS
            ));
        }
        Ok(())
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_pending_handshakes: 10_000,
            quota: SendQuota {
                mailbox_entries: 10_000,
                mailbox_bytes: 64 << 20,
                sender_entries: 500,
                sender_bytes: 4 << 20,
            },
            poll_bytes: 256 << 10,
            accounts: AccountExpiry {
                unpublished_secs: 3600,
                idle_secs: 180 * 24 * 3600,
            },
            work: WorkPolicy::default(),
            sources: SourceLimitsConfig::default(),
            purge_interval: Duration::from_secs(30),
            account_rate: Rate {
                burst: 300,
                per_sec: 30.0,
            },
            max_acks: 1024,
            message_ttl_secs: 7 * 24 * 3600,
            max_payload: 64 * 1024,
            poll_default: Duration::from_secs(25),
            poll_max: Duration::from_secs(30),
            poll_limit: 100,
        }
    }
}

/// Where the relay gets the time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> UnixTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_system()
    }
}

/// An auth key as the relay uses it on every request: parsed once, cached (auth keys never
/// change once created, so a cache is safe on every node).
struct CachedKey {
    key: AuthKey,
    client_id: ClientId,
}

/// Most auth keys kept parsed in memory (the cache is cleared past this).
const KEY_CACHE_MAX: usize = 200_000;

/// Per-key locks: one key's requests go through read → accept → commit one at a time on this
/// node, so a busy client never starves its own long-poll. Across nodes the session version's
/// compare-and-swap (with retries) keeps them consistent.
#[derive(Default)]
struct KeyLocks {
    map: std::sync::Mutex<std::collections::HashMap<[u8; 8], std::sync::Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyLocks {
    fn get(&self, key_id: [u8; 8]) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = map.get(&key_id).and_then(std::sync::Weak::upgrade) {
            return l;
        }
        if map.len() > 4096 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key_id, Arc::downgrade(&l));
        l
    }
}

/// The relay.
pub struct Relay {
    /// Sessions as this node last committed them. A stale entry (another node committed since)
    /// fails the commit's compare-and-swap and is re-read, so the cache only saves reads.
    sessions: std::sync::Mutex<std::collections::HashMap<[u8; 8], crate::SessionRecord>>,
    locks: KeyLocks,
    keys: std::sync::RwLock<std::collections::HashMap<[u8; 8], Arc<CachedKey>>>,
    engine: Arc<dyn Engine>,
    key: ServerSigningKey,
    group: DhGroup,
    config: RelayConfig,
    notifier: Arc<Notifier>,
    /// Set once the node stops: long-polls answer at once instead of waiting.
    closing: tokio::sync::watch::Sender<bool>,
    clock: Arc<dyn Clock>,
    seal: StorageSeal,
    work: WorkMeter,
    sources: SourceLimits,
    accounts: KeyLimits,
    /// When each key's last request was committed (unix seconds), so that a client that only
    /// polls still counts as active for account expiry without a write on every poll.
    touched: std::sync::Mutex<std::collections::HashMap<[u8; 8], u64>>,
    observer: Arc<dyn crate::Observer>,
    /// Presence: when each client's last authenticated request reached this node (unix
    /// seconds), polls included, kept in memory only (never committed). The directory answers
    /// the later of this and the stored `last_seen`, so a page that long-polls shows online and
    /// goes stale as soon as its polls stop (issue 13). Per node: behind several nodes a client
    /// looks as recent as the node the asker reached last saw it.
    present: std::sync::Mutex<std::collections::HashMap<ClientId, u64>>,
}

/// A poll that changes nothing is committed anyway (to record last-seen) at most this often.
const TOUCH_EVERY_SECS: u64 = 12 * 3600;

/// Labels of the sealed records (the associated data of [`StorageSeal`]).
const SEAL_AUTH_KEY: &[u8] = b"auth_key";
const SEAL_DH_SECRET: &[u8] = b"dh_secret";
/// A 2048-bit auth key stored before keys were sealed.
const LEGACY_AUTH_KEY_LEN: usize = 256;

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("engine", &self.engine.name())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn nonce16(field: &'static str, b: &Bytes) -> Result<[u8; 16], RelayError> {
    b.0.as_slice().try_into().map_err(|_| RelayError::InvalidField {
        field: field.into(),
        reason: "must be 16 bytes".into(),
    })
}

/// A long-poll's wake-up, armed (enabled) before the mailbox read it guards.
type Armed = std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>;

/// Arms a wake-up on `notify`: from now on a notification is not missed, polled or not.
fn arm(notify: Arc<tokio::sync::Notify>) -> Armed {
    let mut n = Box::pin(notify.notified_owned());
    n.as_mut().enable();
    n
}

/// How often a commit is retried when another request of the same session won the race.
const COMMIT_ATTEMPTS: usize = 16;

impl Relay {
    /// A relay over `engine`, signing handshakes with `key`.
    pub fn new(engine: Arc<dyn Engine>, key: ServerSigningKey, config: RelayConfig) -> Self {
        let notifier = Arc::new(Notifier::new());
        engine.set_notifier(notifier.clone());
        let seal = StorageSeal::derive(&key);
        let work = WorkMeter::new(config.work);
        let sources = SourceLimits::new(config.sources.clone());
        let accounts = KeyLimits::new(config.account_rate);
        Self {
            accounts,
            seal,
            work,
            sources,
            touched: std::sync::Mutex::new(std::collections::HashMap::new()),
            present: std::sync::Mutex::new(std::collections::HashMap::new()),
            sessions: std::sync::Mutex::new(std::collections::HashMap::new()),
            locks: KeyLocks::default(),
            keys: std::sync::RwLock::new(std::collections::HashMap::new()),
            engine,
            key,
            // The relay draws a DH secret per handshake: a table of g's powers makes that ~4x cheaper.
            group: DhGroup::mtproto().with_generator_table(),
            config,
            notifier,
            closing: tokio::sync::watch::Sender::new(false),
            clock: Arc::new(SystemClock),
            observer: Arc::new(crate::NoObserver),
        }
    }

    /// Reports what the relay does to `observer` (metrics).
    pub fn with_observer(mut self, observer: Arc<dyn crate::Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The server's signing key.
    pub fn server_key(&self) -> &ServerSigningKey {
        &self.key
    }

    /// The storage engine.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The long-poll notifier.
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    /// Ends every long-poll now, and every later one at once: each answers with what its
    /// mailbox holds (often nothing), as if its wait had run out. Call it when the node stops, so
    /// that a graceful shutdown need not wait out the polls and clients re-poll elsewhere.
    /// Everything else goes on working.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use relay_core::{MemoryEngine, Relay, RelayConfig};
    /// # use mtproto_crypto::{rand_core::OsRng, ServerSigningKey};
    /// let relay = Relay::new(Arc::new(MemoryEngine::new()), ServerSigningKey::generate(&mut OsRng), RelayConfig::default());
    /// relay.end_long_polls();
    /// assert!(relay.long_polls_ended());
    /// ```
    pub fn end_long_polls(&self) {
        self.closing.send_replace(true);
    }

    /// Whether [`Relay::end_long_polls`] was called.
    pub fn long_polls_ended(&self) -> bool {
        *self.closing.borrow()
    }

    /// The per-source admission state of this node: the HTTP layer calls
    /// [`SourceLimits::admit`] before each unauthenticated step.
    pub fn sources(&self) -> &SourceLimits {
        &self.sources
    }

    /// The salt of session `sid` of key `key_id` that becomes valid at `since` (unix seconds):
    /// HKDF-SHA256 of the server key's seed, so unpredictable to anyone else and the same on
    /// every node.
    fn salt_for(
        &self,
        key_id: [u8; 8],
        sid: mtproto_session::SessionId,
        since: u64,
    ) -> mtproto_session::ServerSalt {
        let mut info = Vec::with_capacity(24);
        info.extend_from_slice(&key_id);
        info.extend_from_slice(&sid.0);
        info.extend_from_slice(&since.to_le_bytes());
        let mut out = [0u8; 8];
        // 8 bytes of HKDF output cannot fail; a failure would leave zeros, still a valid salt.
        let _ = mtproto_crypto::kdf::hkdf_sha256(b"mtproto-relay/salts/v1", self.key.seed(), &info, &mut out);
        mtproto_session::ServerSalt(out)
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    async fn auth_key(&self, key_id: [u8; 8]) -> Result<Arc<CachedKey>, RelayError> {
        if let Some(k) = self.keys.read().unwrap_or_else(|p| p.into_inner()).get(&key_id) {
            return Ok(k.clone());
        }
        let record = self
            .engine
            .auth_key(key_id)
            .await?
            .ok_or(RelayError::UnknownAuthKey)?;
        let stored = record.auth_key.expose();
        let key = if stored.len() == LEGACY_AUTH_KEY_LEN {
            // Written before keys were sealed: still served (docs/security.md, "Data at rest").
            AuthKey::from_slice(stored)
        } else {
            let plain = self.seal.open(SEAL_AUTH_KEY, &key_id, stored).map_err(|_| {
                RelayError::Unavailable("a stored auth key does not open under this server key".into())
            })?;
            AuthKey::from_slice(&plain)
        }
        .map_err(|_| RelayError::Internal("stored key".into()))?;
        let cached = Arc::new(CachedKey {
            key,
            client_id: record.client_id,
        });
        let mut map = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= KEY_CACHE_MAX {
            map.clear();
        }
        map.insert(key_id, cached.clone());
        Ok(cached)
    }

    fn cached_session(&self, key_id: [u8; 8]) -> Option<crate::SessionRecord> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key_id)
            .cloned()
    }

    fn cache_session(&self, key_id: [u8; 8], record: crate::SessionRecord) {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= KEY_CACHE_MAX {
            map.clear();
        }
        map.insert(key_id, record);
    }

    fn forget_session(&self, key_id: [u8; 8]) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key_id);
    }

    /// Whether a request of `key_id` at `now` should be committed even if it changes nothing:
    /// the first on this node, then once every [`TOUCH_EVERY_SECS`] (or a quarter of the idle
    /// expiry, if shorter): it records last-seen.
    fn touch_due(&self, key_id: [u8; 8], now: UnixTime) -> bool {
        let now = now.as_secs();
        // Often enough that an account that only polls never looks idle.
        let every = TOUCH_EVERY_SECS.min(self.config.accounts.idle_secs / 4);
        let mut map = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key_id) {
            Some(at) if now.saturating_sub(*at) < every => false,
            _ => {
                if map.len() >= KEY_CACHE_MAX {
                    map.clear();
                }
                map.insert(key_id, now);
                true
            }
        }
    }

    /// Records that `client` made an authenticated request at `now` (presence, in memory).
    fn mark_present(&self, client: &ClientId, now: UnixTime) {
        let mut map = self.present.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= KEY_CACHE_MAX && !map.contains_key(client) {
            map.clear();
        }
        map.insert(client.clone(), now.as_secs());
    }

    /// A directory entry with the presence this node saw (the later of it and the stored one).
    fn with_presence(&self, p: crate::model::Peer) -> PeerInfo {
        let seen = self
            .present
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&p.client_id)
            .copied();
        let mut info = PeerInfo::from(p);
        if let Some(s) = seen {
            info.last_seen = info.last_seen.max(s);
        }
        info
    }

    fn handshake(&self) -> ServerHandshake<'_> {
        ServerHandshake::new(&self.key, &self.group)
    }

    /// `POST /req_pq`.
    ///
    /// # Errors
    /// [`RelayError::InvalidField`], [`RelayError::Busy`] when too many handshakes are pending.
    pub async fn req_pq(&self, req: &ReqPq) -> Result<ResPq, RelayError> {
        let now = self.clock.now();
        let bits = self.work.start(std::time::Instant::now());
        let (pending, res) = self
            .handshake()
            .with_pow_bits(bits)
            .handle_req_pq(req, now, &mut OsRng)?;
        self.engine
            .put_pending(pending, self.config.max_pending_handshakes, now)
            .await?;
        Ok(res)
    }

    /// `POST /req_dh_params`.
    ///
    /// # Errors
    /// [`RelayError::UnknownHandshake`], [`RelayError::HandshakeExpired`],
    /// [`RelayError::NonceMismatch`], [`RelayError::BadProofOfWork`],
    /// [`RelayError::HandshakeOutOfOrder`].
    pub async fn req_dh_params(&self, req: &ReqDhParams) -> Result<ServerDhParams, RelayError> {
        let now = self.clock.now();
        let sn = nonce16("server_nonce", &req.server_nonce)?;
        let mut pending = self
            .engine
            .get_pending(sn)
            .await?
            .ok_or(RelayError::UnknownHandshake)?;
        let res = self
            .handshake()
            .handle_req_dh_params(&mut pending, req, now, &mut OsRng)?;
        if let mtproto_session::Stage::AwaitingClientDh { a, .. } = &mut pending.stage {
            let sealed = self
                .seal
                .seal(SEAL_DH_SECRET, &sn, a.expose())
                .map_err(|_| RelayError::Internal("sealing the DH secret".into()))?;
            *a = SecretBytes::new(sealed);
        }
        if !self.engine.advance_pending(pending).await? {
            return Err(RelayError::HandshakeOutOfOrder);
        }
        Ok(res)
    }

    /// `POST /set_client_dh_params`: completes the handshake and registers the client id.
    ///
    /// # Errors
    /// As [`Relay::req_dh_params`], plus [`RelayError::BadDh`] and [`RelayError::ClientIdTaken`].
    pub async fn set_client_dh_params(&self, req: &SetClientDhParams) -> Result<DhGenOk, RelayError> {
        let now = self.clock.now();
        // Names are lower case (ClientId), so "Relay" and "ADMIN" are caught here too.
        if RESERVED_CLIENT_IDS.contains(&req.client_id.as_str()) {
            return Err(RelayError::InvalidField {
                field: "client_id".into(),
                reason: "reserved".into(),
            });
        }
        let sn = nonce16("server_nonce", &req.server_nonce)?;
        let recovery_key = req
            .recovery_key
            .as_ref()
            .map(|k| mtproto_crypto::RecoveryPublic::from_slice(&k.0))
            .transpose()
            .map_err(|_| RelayError::InvalidField {
                field: "recovery_key".into(),
                reason: "must be 32 bytes".into(),
            })?;
        if recovery_key.is_some_and(|k| !k.is_usable()) {
            return Err(RelayError::InvalidField {
                field: "recovery_key".into(),
                reason: "not a usable Ed25519 public key".into(),
            });
        }
        if req.recovery_proof.as_ref().is_some_and(|p| p.0.len() != 64) {
            return Err(RelayError::InvalidField {
                field: "recovery_proof".into(),
                reason: "must be 64 bytes".into(),
            });
        }
        let mut pending = self
            .engine
            .get_pending(sn)
            .await?
            .ok_or(RelayError::UnknownHandshake)?;
        if let mtproto_session::Stage::AwaitingClientDh { a, .. } = &mut pending.stage {
            // Opaque on failure: a record from before sealing, or under another server key, is
            // as good as no record.
            let plain = self
                .seal
                .open(SEAL_DH_SECRET, &sn, a.expose())
                .map_err(|_| RelayError::UnknownHandshake)?;
            *a = SecretBytes::new(plain.to_vec());
        }
        let (est, res) = self
            .handshake()
            .handle_set_client_dh_params(pending, req, now, &mut OsRng)?;
        // Only now consume the nonce, so a forged request cannot kill someone else's handshake.
        self.engine
            .take_pending(sn)
            .await?
            .ok_or(RelayError::UnknownHandshake)?;
        let key_id = *est.auth_key.id().as_bytes();
        let sealed = self
            .seal
            .seal(SEAL_AUTH_KEY, &key_id, est.auth_key.expose_secret())
            .map_err(|_| RelayError::Internal("sealing the auth key".into()))?;
        let mut record = AuthKeyRecord {
            key_id,
            auth_key: SecretBytes::new(sealed),
            client_id: est.client_id.clone(),
            created_at: now,
            recovery_key: recovery_key.map(|k| *k.as_bytes()),
        };
        let old = match &req.recovery_proof {
            Some(_) => self.engine.owner(&est.client_id).await?,
            None => None,
        };
        match (old, &req.recovery_proof) {
            (Some(old), Some(proof)) if old.key_id != key_id => {
                // docs/protocol.md §1 "Recovery": the proof names this handshake's key.
                let stored = old.recovery_key.ok_or(RelayError::RecoveryRefused)?;
                mtproto_crypto::RecoveryPublic::from_bytes(stored)
                    .verify(est.client_id.as_str(), &sn, &key_id, &proof.0)
                    .map_err(|_| RelayError::RecoveryRefused)?;
                record.recovery_key = record.recovery_key.or(Some(stored));
                self.engine
                    .take_over_account(record, est.session, old.key_id, now)
                    .await?;
                self.keys
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&old.key_id);
                self.forget_session(old.key_id);
                tracing::info!(client_id = %est.client_id, auth_key_id = %est.auth_key.id().to_hex(), "account recovered: the name moved to a new key");
                return Ok(res);
            }
            // A free name: a proof proves nothing, an ordinary registration.
            _ => self.engine.create_account(record, est.session, now).await?,
        }
        tracing::info!(client_id = %est.client_id, auth_key_id = %est.auth_key.id().to_hex(), "auth key established");
        Ok(res)
    }

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
        let key_id = *packet_key_id(&packet)?.as_bytes();
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
        self.accounts
            .admit(key_id, KeyLimits::cost(acks), std::time::Instant::now())?;
        let lock = self.locks.get(key_id);
        for attempt in 0..COMMIT_ATTEMPTS {
            if attempt > 0 {
                // Another node won the race: back off a little before reading again.
                tokio::time::sleep(Duration::from_millis(1 + u64::from(OsRng.next_u32() % 10))).await;
            }
            let guard = lock.lock().await;
            let now = self.clock.now();
            let cached = if attempt == 0 {
                self.cached_session(key_id)
            } else {
                None
            };
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
                    return self
                        .answer_duplicate(
                            endpoint, req, key, key_id, client_id, responder, msg_id, &env.body,
                        )
                        .await;
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
                        return self
                            .answer_duplicate(
                                endpoint,
                                req,
                                key,
                                key_id,
                                client_id,
                                responder,
                                env.msg_id.0,
                                &env.body,
                            )
                            .await;
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
            let (op, keep_outcome) = self.op_for(&call)?;
            self.mark_present(client_id, now);
            let responder = session.responder();
            if matches!(&op, Op::Ack { seqs } if seqs.is_empty()) && !self.touch_due(key_id, now) {
                // A poll that acknowledges nothing changes nothing: it is checked like every
                // request but not committed (docs/protocol.md, "Reads are not committed").
                drop(guard);
                return self
                    .answer(
                        &call,
                        Outcome::Acked { removed: 0 },
                        None,
                        key,
                        client_id,
                        responder,
                        incoming.msg_id.0,
                        incoming.seq_no,
                    )
                    .await;
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
            return self
                .answer(
                    &call,
                    outcome,
                    fetched,
                    key,
                    client_id,
                    responder,
                    incoming.msg_id.0,
                    incoming.seq_no,
                )
                .await;
        }
        Err(RelayError::Unavailable("session contended".into()))
    }

    fn parse_call(&self, endpoint: Endpoint, req: &EnvelopeRequest, body: &[u8]) -> Result<Call, RelayError> {
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

    fn op_for(&self, call: &Call) -> Result<(Op, bool), RelayError> {
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
            Call::PublishKey { identity_key } => {
                let key: [u8; 32] =
                    identity_key
                        .0
                        .as_slice()
                        .try_into()
                        .map_err(|_| RelayError::InvalidField {
                            field: "identity_key".into(),
                            reason: "must be 32 bytes".into(),
                        })?;
                // A low-order point would give every peer an all-zero shared secret.
                if mtproto_crypto::hazmat::x25519(&[9; 32], &key).is_err() {
                    return Err(RelayError::InvalidField {
                        field: "identity_key".into(),
                        reason: "low-order point".into(),
                    });
                }
                (Op::PublishKey { key }, true)
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        call: &Call,
        outcome: Outcome,
        fetched: Option<(Vec<crate::MailboxEntry>, Armed)>,
        key: &AuthKey,
        client: &ClientId,
        mut responder: mtproto_session::Responder,
        msg_id: u64,
        seq_no: u32,
    ) -> Result<EnvelopeResponse, RelayError> {
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
                    Some((_, armed)) => {
                        self.long_poll(client, *key.id().as_bytes(), wait, limit, Some(armed))
                            .await?
                    }
                    None => {
                        self.long_poll(client, *key.id().as_bytes(), wait, limit, None)
                            .await?
                    }
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

    /// A resent envelope: answer with the original outcome; never execute twice.
    #[allow(clippy::too_many_arguments)]
    async fn answer_duplicate(
        &self,
        endpoint: Endpoint,
        req: &EnvelopeRequest,
        key: &AuthKey,
        key_id: [u8; 8],
        client_id: &ClientId,
        responder: mtproto_session::Responder,
        msg_id: u64,
        body: &[u8],
    ) -> Result<EnvelopeResponse, RelayError> {
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
        let seq_no = 0;
        self.answer(&call, outcome, None, key, client_id, responder, msg_id, seq_no)
            .await
    }

    /// Returns at once when entries wait; otherwise waits until one arrives or `wait` passes.
    /// Arms the wake-up before each read, so an arrival between the read and the wait is not
    /// lost. `armed`: a wake-up armed before a read that already found nothing — the first wait
    /// starts without reading again.
    async fn long_poll(
        &self,
        client: &ClientId,
        key_id: [u8; 8],
        wait: Duration,
        limit: usize,
        mut armed: Option<Armed>,
    ) -> Result<Vec<crate::MailboxEntry>, RelayError> {
        let deadline = tokio::time::Instant::now() + wait;
        let notify = self.notifier.subscribe(client.as_str());
        let mut closing = self.closing.subscribe();
        let mut waited = false;
        loop {
            let mut notified = match armed.take() {
                Some(n) => n,
                None => {
                    let n = arm(notify.clone());
                    let entries = self.engine.fetch(client, limit, self.clock.now()).await?;
                    if !entries.is_empty() {
                        // Mail that arrived while this poll waited goes only to the key that
                        // still holds the name: a recovery may have moved it meanwhile.
                        if waited
                            && self
                                .engine
                                .owner(client)
                                .await?
                                .is_none_or(|o| o.key_id != key_id)
                        {
                            return Err(RelayError::UnknownAuthKey);
                        }
                        return Ok(entries);
                    }
                    n
                }
            };
            waited = true;
            if tokio::time::Instant::now() >= deadline || *closing.borrow_and_update() {
                return Ok(Vec::new());
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                _ = closing.changed() => {}
            }
        }
    }

    async fn peers_answer(&self, call: &Call) -> Result<PeersAnswer, RelayError> {
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

    /// Housekeeping: expired messages (their senders are told), handshakes and outcomes.
    ///
    /// # Errors
    /// [`RelayError::Unavailable`] when the engine fails.
    pub async fn purge(&self) -> Result<(), RelayError> {
        let notified = self.engine.purge_expired(self.clock.now()).await?;
        self.observer.expiry_notices(notified.len());
        for c in notified {
            self.notifier.notify(c.as_str());
        }
        Ok(())
    }

    /// Removes unused accounts ([`RelayConfig::accounts`]; never one with mail waiting), at
    /// most `max` in one call, and forgets their keys on this node. Returns how many.
    ///
    /// # Errors
    /// [`RelayError::Unavailable`] when the engine fails.
    pub async fn purge_accounts(&self, max: usize) -> Result<usize, RelayError> {
        let keys = self
            .engine
            .purge_accounts(self.clock.now(), self.config.accounts, max)
            .await?;
        if !keys.is_empty() {
            let mut cache = self.keys.write().unwrap_or_else(|p| p.into_inner());
            for k in &keys {
                cache.remove(k);
            }
            drop(cache);
            for k in &keys {
                self.forget_session(*k);
            }
            tracing::info!(
                removed = keys.len(),
                "unused accounts removed; their names are free again"
            );
        }
        Ok(keys.len())
    }
}

/// Keeps the oldest entries whose payloads fit in `budget` bytes, and always the first one.
fn fit_in_answer(mut entries: Vec<crate::MailboxEntry>, budget: usize) -> Vec<crate::MailboxEntry> {
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

fn to_body<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, RelayError> {
    serde_json::to_vec(v).map_err(|e| RelayError::Internal(e.to_string()))
}
