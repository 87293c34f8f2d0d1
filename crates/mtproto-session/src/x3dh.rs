//! Asynchronous start of a conversation: prekeys and the X3DH agreement (Signal, "The X3DH Key
//! Agreement Protocol", revision 1, 2016-11-04), on X25519 and HKDF-SHA256.
//!
//! Each client owns an X25519 identity key (`IK`, the one safety numbers come from) and, beside
//! it, an Ed25519 identity signing key that signs its signed prekey (`docs/crypto.md` says why a
//! separate Ed25519 key rather than XEdDSA). It publishes a [`PrekeyBundle`]'s parts to the
//! relay: the signed prekey `SPK` and a batch of one-time prekeys `OPK`. The relay hands each
//! one-time prekey out once; when none is left a start still works, with `SPK` only, and says so
//! ([`Agreement::one_time_prekey`] is `None`).
//!
//! ```text
//! DH1 = X25519(IK_A, SPK_B)   DH2 = X25519(EK_A, IK_B)   DH3 = X25519(EK_A, SPK_B)
//! DH4 = X25519(EK_A, OPK_B)   (only with a one-time prekey)
//! SK  = HKDF-SHA256(salt = 32 zero bytes, ikm = 0xFF×32 ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4],
//!                   info = "mtproto-relay/x3dh/v1", L = 32)                      -- X3DH §2.2, §3.3
//! AD  = IK_A ‖ IK_B   (the two X25519 identity public keys, initiator first)    -- X3DH §3.3
//! signed prekey signature = Ed25519(signing key,
//!     "mtproto-relay/signed-prekey/v1" ‖ IK_B (32) ‖ spk_id (4, LE) ‖ SPK_B (32))
//! ```
//!
//! ```
//! use mtproto_crypto::{rand_core::OsRng, IdentitySecret, IdentitySigningKey};
//! use mtproto_session::{x3dh, UnixTime};
//!
//! let now = UnixTime::from_secs(1_800_000_000);
//! let (alice, bob) = (IdentitySecret::generate(&mut OsRng), IdentitySecret::generate(&mut OsRng));
//! let bob_signing = IdentitySigningKey::generate(&mut OsRng);
//! let mut bob_prekeys = x3dh::Prekeys::new(&bob, &bob_signing, now, &mut OsRng);
//! let one_time = bob_prekeys.generate_one_time(10, &mut OsRng)?;
//! let bundle = bob_prekeys.bundle(one_time.first().cloned());
//!
//! let a = x3dh::initiate(&alice, &bundle, &bob.public(), &mut OsRng)?;
//! let b = x3dh::respond(&bob, &bob_prekeys, &a.start)?;
//! assert_eq!(a.shared_secret().expose(), b.shared_secret().expose());
//! assert_eq!(a.ad, b.ad);
//! assert!(a.one_time_prekey.is_some());
//! # Ok::<(), mtproto_session::Error>(())
//! ```

use core::fmt;
use std::collections::BTreeMap;

use mtproto_crypto::{
    hazmat,
    kdf::hkdf_sha256,
    rand_core::{CryptoRng, RngCore},
    IdentityPublic, IdentitySecret, IdentitySigningKey, IdentitySigningPublic,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{wire, E2eError, Result, SecretKey32, UnixTime};

/// The HKDF `info` of the X3DH key derivation (X3DH §2.1 "info").
pub const X3DH_INFO: &[u8] = b"mtproto-relay/x3dh/v1";
/// The domain-separation prefix of the signed prekey's signature.
pub const SIGNED_PREKEY_LABEL: &[u8] = b"mtproto-relay/signed-prekey/v1";
/// Most one-time prekeys a client holds secrets for (and so may have published).
pub const MAX_ONE_TIME_PREKEYS: usize = 200;
/// How many signed prekeys a client keeps: the current one and older ones, for starts made
/// with a bundle fetched before the rotation.
pub const MAX_SIGNED_PREKEYS: usize = 3;
/// The X25519 base point (u = 9), to compute a public key from a secret.
const BASE_POINT: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 9;
    b
};

/// An X25519 key pair held in serializable state: a prekey, an ephemeral key, a ratchet key.
/// The secret zeroizes on drop; `Debug` prints the public key only.
#[derive(Clone, Serialize, Deserialize)]
pub struct X25519KeyPair {
    secret: SecretKey32,
    #[serde(with = "wire::b64_32")]
    public: [u8; 32],
}

impl X25519KeyPair {
    /// A fresh key pair: 32 bytes from `rng` (clamped by X25519 itself).
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut secret[..]);
        Self::from_secret(*secret)
    }

    /// The key pair of a known secret (test vectors, restored state).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let secret = SecretKey32::from_bytes(secret);
        // The base point is not a low-order point, so this cannot fail; all-zero is unreachable.
        let public = hazmat::x25519(secret.expose(), &BASE_POINT)
            .map(|p| *p)
            .unwrap_or_default();
        Self { secret, public }
    }

    /// The public key.
    pub const fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// X25519 with `peer`.
    ///
    /// # Errors
    /// [`E2eError::Dh`] when `peer` is a low-order point.
    pub fn diffie_hellman(&self, peer: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, E2eError> {
        Ok(hazmat::x25519(self.secret.expose(), peer)?)
    }
}

impl fmt::Debug for X25519KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "X25519KeyPair(public={})", hex::encode(self.public))
    }
}

/// A signed prekey as published: id, public key and the identity signing key's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPrekeyPublic {
    /// Its id (the start message names it).
    pub id: u32,
    /// The X25519 public key.
    #[serde(with = "wire::b64_32")]
    pub public: [u8; 32],
    /// Ed25519 over `"mtproto-relay/signed-prekey/v1" ‖ IK (32) ‖ id (4, LE) ‖ public (32)`.
    #[serde(with = "wire::b64_64")]
    pub signature: [u8; 64],
}

/// A one-time prekey as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePrekeyPublic {
    /// Its id (the start message names it).
    pub id: u32,
    /// The X25519 public key.
    #[serde(with = "wire::b64_32")]
    pub public: [u8; 32],
}

/// What the relay hands out to start a conversation with one peer: its identity keys, its
/// current signed prekey and at most one one-time prekey (each handed out once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyBundle {
    /// The peer's X25519 identity public key.
    #[serde(with = "wire::b64_32")]
    pub identity: [u8; 32],
    /// The peer's Ed25519 identity signing key.
    #[serde(with = "wire::b64_32")]
    pub signing_key: [u8; 32],
    /// The signed prekey.
    pub signed_prekey: SignedPrekeyPublic,
    /// A one-time prekey, absent when the relay has none left.
    pub one_time_prekey: Option<OneTimePrekeyPublic>,
}

/// The bytes the signed prekey's signature covers.
fn signed_prekey_statement(identity: &[u8; 32], id: u32, public: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_PREKEY_LABEL.len() + 68);
    m.extend_from_slice(SIGNED_PREKEY_LABEL);
    m.extend_from_slice(identity);
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(public);
    m
}

impl PrekeyBundle {
    /// Checks the signed prekey's signature under the bundle's signing key.
    ///
    /// # Errors
    /// [`E2eError::BadPrekeySignature`].
    pub fn verify(&self) -> Result<(), E2eError> {
        let statement =
            signed_prekey_statement(&self.identity, self.signed_prekey.id, &self.signed_prekey.public);
        IdentitySigningPublic::from_bytes(self.signing_key)
            .verify(&statement, &self.signed_prekey.signature)
            .map_err(|_| E2eError::BadPrekeySignature)
    }
}

/// A signed prekey with its secret, as its owner keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SignedPrekey {
    id: u32,
    pair: X25519KeyPair,
    #[serde(with = "wire::b64_64")]
    signature: [u8; 64],
    created: UnixTime,
}

/// The prekey secrets a client keeps: its signed prekeys (the current one last) and its
/// unused one-time prekeys. Serializable (it holds secrets: store it like the identity key);
/// `Debug` prints public keys only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prekeys {
    identity: [u8; 32],
    signing_key: [u8; 32],
    signed: Vec<SignedPrekey>,
    one_time: BTreeMap<u32, X25519KeyPair>,
    next_id: u32,
}

impl Prekeys {
    /// Prekeys for `identity` with a first signed prekey, signed by `signing`.
    pub fn new(
        identity: &IdentitySecret,
        signing: &IdentitySigningKey,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        let mut p = Self {
            identity: *identity.public().as_bytes(),
            signing_key: *signing.public().as_bytes(),
            signed: Vec::new(),
            one_time: BTreeMap::new(),
            next_id: 1,
        };
        p.rotate_signed_prekey(signing, now, rng);
        p
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        // Ids are never reused: past u32::MAX the counter stays (4 billion prekeys first).
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    /// Makes a new signed prekey current and returns it for publication. The
    /// [`MAX_SIGNED_PREKEYS`]` - 1` previous ones are kept for starts in flight; older ones are
    /// deleted (forward secrecy of the starts made with them).
    pub fn rotate_signed_prekey(
        &mut self,
        signing: &IdentitySigningKey,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> SignedPrekeyPublic {
        let id = self.take_id();
        let pair = X25519KeyPair::generate(rng);
        let signature = signing.sign(&signed_prekey_statement(&self.identity, id, pair.public()));
        self.signed.push(SignedPrekey {
            id,
            pair,
            signature,
            created: now,
        });
        if self.signed.len() > MAX_SIGNED_PREKEYS {
            let excess = self.signed.len() - MAX_SIGNED_PREKEYS;
            self.signed.drain(..excess);
        }
        self.signed_prekey()
    }

    /// The current signed prekey, for publication.
    pub fn signed_prekey(&self) -> SignedPrekeyPublic {
        self.signed
            .last()
            .map(|s| SignedPrekeyPublic {
                id: s.id,
                public: *s.pair.public(),
                signature: s.signature,
            })
            // `new` makes one and rotation never empties the list.
            .unwrap_or(SignedPrekeyPublic {
                id: 0,
                public: [0; 32],
                signature: [0; 64],
            })
    }

    /// When the current signed prekey was made (the client rotates it, e.g. weekly).
    pub fn signed_prekey_created(&self) -> Option<UnixTime> {
        self.signed.last().map(|s| s.created)
    }

    /// Makes `count` new one-time prekeys and returns them for publication.
    ///
    /// # Errors
    /// [`E2eError::TooManyPrekeys`] when that would hold more than [`MAX_ONE_TIME_PREKEYS`]; nothing is made.
    pub fn generate_one_time(
        &mut self,
        count: usize,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<OneTimePrekeyPublic>, E2eError> {
        if self.one_time.len().saturating_add(count) > MAX_ONE_TIME_PREKEYS {
            return Err(E2eError::TooManyPrekeys {
                max: MAX_ONE_TIME_PREKEYS as u64,
            });
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let id = self.take_id();
            let pair = X25519KeyPair::generate(rng);
            out.push(OneTimePrekeyPublic {
                id,
                public: *pair.public(),
            });
            self.one_time.insert(id, pair);
        }
        Ok(out)
    }

    /// Makes room for `count` new one-time prekeys within [`MAX_ONE_TIME_PREKEYS`] by deleting
    /// the oldest unused ones (the lowest ids: made first). Returns how many were deleted. A
    /// start that names a deleted one is refused ([`E2eError::UnknownPrekey`]): call it only
    /// when the newer keys matter more (a client tops up the relay's copies; the oldest were
    /// handed out longest ago, or are the relay's oldest).
    ///
    /// ```
    /// # use mtproto_crypto::{rand_core::OsRng, IdentitySecret, IdentitySigningKey};
    /// # use mtproto_session::{x3dh::{Prekeys, MAX_ONE_TIME_PREKEYS}, UnixTime};
    /// let id = IdentitySecret::generate(&mut OsRng);
    /// let mut p = Prekeys::new(&id, &IdentitySigningKey::generate(&mut OsRng), UnixTime::from_secs(0), &mut OsRng);
    /// let first = p.generate_one_time(MAX_ONE_TIME_PREKEYS, &mut OsRng)?;
    /// assert_eq!(p.make_room_for_one_time(10), 10);
    /// p.generate_one_time(10, &mut OsRng)?;
    /// assert!(!p.consume_one_time(first[0].id), "the oldest went first");
    /// assert!(p.consume_one_time(first[10].id));
    /// # Ok::<(), mtproto_session::E2eError>(())
    /// ```
    pub fn make_room_for_one_time(&mut self, count: usize) -> usize {
        let keep = MAX_ONE_TIME_PREKEYS.saturating_sub(count);
        let mut deleted = 0;
        while self.one_time.len() > keep {
            self.one_time.pop_first();
            deleted += 1;
        }
        deleted
    }

    /// How many one-time prekeys are unused (the client replenishes below a threshold).
    pub fn one_time_count(&self) -> usize {
        self.one_time.len()
    }

    /// Deletes a one-time prekey once the start that used it opened: it never serves twice.
    /// Returns whether it was held.
    pub fn consume_one_time(&mut self, id: u32) -> bool {
        self.one_time.remove(&id).is_some()
    }

    /// A bundle as the relay would hand it out, with the current signed prekey.
    pub fn bundle(&self, one_time_prekey: Option<OneTimePrekeyPublic>) -> PrekeyBundle {
        PrekeyBundle {
            identity: self.identity,
            signing_key: self.signing_key,
            signed_prekey: self.signed_prekey(),
            one_time_prekey,
        }
    }

    fn signed_pair(&self, id: u32) -> Result<&X25519KeyPair, E2eError> {
        self.signed
            .iter()
            .find(|s| s.id == id)
            .map(|s| &s.pair)
            .ok_or(E2eError::UnknownPrekey { which: "signed", id })
    }
}

/// What the initiator sends in its start messages so that the responder can repeat the
/// agreement (X3DH §3.3 "initial message").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    /// The initiator's X25519 identity public key `IK_A`.
    #[serde(with = "wire::b64_32")]
    pub identity: [u8; 32],
    /// The initiator's ephemeral public key `EK_A`.
    #[serde(with = "wire::b64_32")]
    pub ephemeral: [u8; 32],
    /// The responder's signed prekey used.
    pub signed_prekey_id: u32,
    /// The responder's one-time prekey used, if any.
    pub one_time_prekey_id: Option<u32>,
}

/// The result of an agreement, on either side.
pub struct Agreement {
    shared: SecretKey32,
    /// `AD = IK_A ‖ IK_B`.
    pub ad: [u8; 64],
    /// What the start messages carry.
    pub start: Start,
    /// The responder's signed prekey public key: the initiator's first remote ratchet key.
    pub signed_prekey: [u8; 32],
    /// The one-time prekey used; `None` when the start used the signed prekey only (the relay
    /// had none left): the first messages then have no one-time forward secrecy against a later
    /// theft of the responder's signed prekey and identity key.
    pub one_time_prekey: Option<u32>,
}

impl Agreement {
    /// The shared secret `SK` (the double ratchet's first root key).
    ///
    /// # Security
    /// Secret: it decrypts the conversation until the first DH ratchet steps.
    pub fn shared_secret(&self) -> &SecretKey32 {
        &self.shared
    }
}

impl fmt::Debug for Agreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agreement")
            .field("start", &self.start)
            .field("one_time_prekey", &self.one_time_prekey)
            .finish_non_exhaustive()
    }
}

/// `SK = HKDF(salt = 0×32, ikm = 0xFF×32 ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4], info = X3DH_INFO, L = 32)`
/// (X3DH §2.2 "KDF": F is 32 0xFF bytes for X25519; salt a zero-filled hash-length sequence).
fn kdf(dhs: &[&[u8; 32]]) -> Result<SecretKey32, E2eError> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * (1 + dhs.len())));
    ikm.extend_from_slice(&[0xFF; 32]);
    for dh in dhs {
        ikm.extend_from_slice(&dh[..]);
    }
    let mut sk = Zeroizing::new([0u8; 32]);
    hkdf_sha256(&[0u8; 32], &ikm, X3DH_INFO, &mut sk[..])?;
    Ok(SecretKey32::from_bytes(*sk))
}

fn ad(initiator: &[u8; 32], responder: &[u8; 32]) -> [u8; 64] {
    let mut ad = [0u8; 64];
    for (d, s) in ad.iter_mut().zip(initiator.iter().chain(responder)) {
        *d = *s;
    }
    ad
}

/// The initiator's side (X3DH §3.3): verifies the bundle, checks that it belongs to
/// `expected_peer` (the identity pinned for this contact), and agrees with a fresh ephemeral key.
///
/// # Errors
/// [`E2eError::PeerIdentityMismatch`]; [`E2eError::BadPrekeySignature`]; [`E2eError::Dh`] for a
/// low-order key in the bundle.
pub fn initiate(
    own: &IdentitySecret,
    bundle: &PrekeyBundle,
    expected_peer: &IdentityPublic,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Agreement, E2eError> {
    initiate_with_ephemeral(own, bundle, expected_peer, &X25519KeyPair::generate(rng))
}

/// [`initiate`] with the ephemeral key given: the pure core, for known-answer tests.
///
/// # Errors
/// As [`initiate`].
pub fn initiate_with_ephemeral(
    own: &IdentitySecret,
    bundle: &PrekeyBundle,
    expected_peer: &IdentityPublic,
    ephemeral: &X25519KeyPair,
) -> Result<Agreement, E2eError> {
    if bundle.identity != *expected_peer.as_bytes() {
        return Err(E2eError::PeerIdentityMismatch);
    }
    bundle.verify()?;
    let spk = &bundle.signed_prekey.public;
    let dh1 = own.diffie_hellman(spk)?;
    let dh2 = ephemeral.diffie_hellman(&bundle.identity)?;
    let dh3 = ephemeral.diffie_hellman(spk)?;
    let shared = match &bundle.one_time_prekey {
        Some(opk) => kdf(&[&dh1, &dh2, &dh3, &*ephemeral.diffie_hellman(&opk.public)?])?,
        None => kdf(&[&dh1, &dh2, &dh3])?,
    };
    let own_public = *own.public().as_bytes();
    let one_time_prekey = bundle.one_time_prekey.as_ref().map(|o| o.id);
    Ok(Agreement {
        shared,
        ad: ad(&own_public, &bundle.identity),
        start: Start {
            identity: own_public,
            ephemeral: *ephemeral.public(),
            signed_prekey_id: bundle.signed_prekey.id,
            one_time_prekey_id: one_time_prekey,
        },
        signed_prekey: *spk,
        one_time_prekey,
    })
}

/// The responder's side (X3DH §3.4): repeats the agreement from a start. It does not delete
/// the one-time prekey: call [`Prekeys::consume_one_time`] once the first message opened (an
/// unauthenticated start must not burn a prekey).
///
/// # Errors
/// [`E2eError::UnknownPrekey`] for a prekey not held (a one-time prekey already used means a
/// replayed start); [`E2eError::Dh`] for a low-order key.
///
/// # Security
/// The caller checks `start.identity` against the identity it knows for that peer (the
/// directory, a pinned key, safety numbers) before trusting the conversation.
pub fn respond(own: &IdentitySecret, prekeys: &Prekeys, start: &Start) -> Result<Agreement, E2eError> {
    let spk = prekeys.signed_pair(start.signed_prekey_id)?;
    let dh1 = spk.diffie_hellman(&start.identity)?;
    let dh2 = own.diffie_hellman(&start.ephemeral)?;
    let dh3 = spk.diffie_hellman(&start.ephemeral)?;
    let shared = match start.one_time_prekey_id {
        Some(id) => {
            let opk = prekeys.one_time.get(&id).ok_or(E2eError::UnknownPrekey {
                which: "one-time",
                id,
            })?;
            kdf(&[&dh1, &dh2, &dh3, &*opk.diffie_hellman(&start.ephemeral)?])?
        }
        None => kdf(&[&dh1, &dh2, &dh3])?,
    };
    Ok(Agreement {
        shared,
        ad: ad(&start.identity, own.public().as_bytes()),
        start: start.clone(),
        signed_prekey: *spk.public(),
        one_time_prekey: start.one_time_prekey_id,
    })
}

/// The responder's signed prekey pair named by a start: its first ratchet key pair.
pub(crate) fn signed_prekey_pair(prekeys: &Prekeys, id: u32) -> Result<X25519KeyPair, E2eError> {
    prekeys.signed_pair(id).cloned()
}
