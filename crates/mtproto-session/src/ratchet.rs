//! The double ratchet (Signal, "The Double Ratchet Algorithm", revision 1, 2016-11-20), keys
//! only: [`crate::ratchet_chat`] puts its message keys under MTProto 2.0 framing.
//!
//! ```text
//! KDF_RK(rk, dh_out) = HKDF-SHA256(salt = rk, ikm = dh_out,
//!                                  info = "mtproto-relay/ratchet/root/v1", L = 64)
//!                    → rk' = out[0..32], ck = out[32..64]                      -- §5.2
//! KDF_CK(ck)         → mk = HMAC-SHA256(ck, 0x01), ck' = HMAC-SHA256(ck, 0x02)   -- §5.2
//! header             = dh (32) ‖ pn (4, LE) ‖ n (4, LE)                         -- §3.1
//! ```
//!
//! A DH ratchet step happens whenever a message arrives under a new remote ratchet key (the
//! speaker changed, §3.5); a chain step on every message. Each message key is used once and
//! deleted. Keys skipped by out-of-order delivery are kept in a bounded store (§3.5
//! `SkipMessageKeys`): at most [`MAX_SKIP`] per chain and per message, at most
//! [`MAX_SKIPPED_KEYS`] per conversation (the oldest evicted first), none older than
//! [`MAX_SKIPPED_AGE_SECS`]; a client also bounds the sum over all its conversations
//! ([`MAX_SKIPPED_KEYS_TOTAL`], with [`Ratchet::drop_oldest_skipped`]). Opening computes a plan
//! without changing the state; the state changes only once the packet authenticated
//! ([`Ratchet::commit`]), as §3.5 asks ("if an exception is raised … discard any changes").

use std::collections::VecDeque;

use mtproto_crypto::{
    kdf::{hkdf_sha256, hmac_sha256},
    rand_core::{CryptoRng, RngCore},
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{wire, x3dh::X25519KeyPair, E2eError, Result, SecretKey32, UnixTime};

/// Most message keys one received message may skip in one chain (Signal's `MAX_SKIP`).
pub const MAX_SKIP: u32 = 1000;
/// Most skipped message keys a conversation stores; beyond, the oldest are evicted (their
/// messages then fail with [`E2eError::MessageKeyGone`]).
pub const MAX_SKIPPED_KEYS: usize = 2000;
/// Most skipped message keys a client stores across ALL its conversations (`docs/protocol.md`
/// §3.3). Without it, an attacker with N accounts gives a victim N conversations of
/// [`MAX_SKIPPED_KEYS`] each (about 250 KB of saved state each, rewritten at every save). 4000
/// is two conversations' worth: one conversation may still use its whole store, and the saved
/// skipped keys of a client stay near 500 KB however many accounts write to it. The client
/// enforces it after every commit that stores skipped keys and when it loads its state: while
/// over, the oldest keys of the conversation holding the most are evicted
/// ([`Ratchet::drop_oldest_skipped`]), so the largest stores are levelled down first.
pub const MAX_SKIPPED_KEYS_TOTAL: usize = 4000;
/// Skipped message keys older than this are deleted (30 days): a message that late fails with
/// [`E2eError::MessageKeyGone`].
pub const MAX_SKIPPED_AGE_SECS: u64 = 30 * 24 * 3600;
/// How many earlier remote ratchet keys are remembered, so that a replayed message of an old
/// chain is reported as [`E2eError::MessageKeyGone`] rather than taken for a new DH step.
pub const MAX_PREVIOUS_CHAINS: usize = 64;
/// The HKDF `info` of the root chain.
pub const ROOT_INFO: &[u8] = b"mtproto-relay/ratchet/root/v1";
/// Bytes of an encoded [`Header`].
pub const HEADER_LEN: usize = 40;

/// The ratchet header of a message (§3.1): the sender's current ratchet public key, the length
/// of its previous sending chain, and this message's number in the current chain. Public.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The sender's ratchet public key.
    #[serde(with = "wire::b64_32")]
    pub dh: [u8; 32],
    /// Messages in the sender's previous sending chain.
    pub pn: u32,
    /// This message's number in its chain.
    pub n: u32,
}

impl Header {
    /// `dh (32) ‖ pn (4, LE) ‖ n (4, LE)`.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let bytes = self
            .dh
            .into_iter()
            .chain(self.pn.to_le_bytes())
            .chain(self.n.to_le_bytes());
        for (d, s) in out.iter_mut().zip(bytes) {
            *d = s;
        }
        out
    }

    /// Decodes [`Header::encode`]'s 40 bytes.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        let (dh, rest) = b
            .split_first_chunk::<32>()
            .map_or(([0; 32], &b[..0]), |(d, r)| (*d, r));
        let (pn, rest) = rest
            .split_first_chunk::<4>()
            .map_or(([0; 4], rest), |(p, r)| (*p, r));
        let n = rest.first_chunk::<4>().copied().unwrap_or_default();
        Self {
            dh,
            pn: u32::from_le_bytes(pn),
            n: u32::from_le_bytes(n),
        }
    }
}

/// A message key: used once, for one message, then dropped (zeroized).
pub struct MessageKey(SecretKey32);

impl MessageKey {
    /// The key bytes.
    ///
    /// # Security
    /// Secret; it opens one message.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }
}

impl core::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MessageKey(<redacted>)")
    }
}

/// A message key kept for a message not received yet.
#[derive(Clone, Serialize, Deserialize)]
struct SkippedKey {
    #[serde(with = "wire::b64_32")]
    dh: [u8; 32],
    n: u32,
    key: SecretKey32,
    stored_at: UnixTime,
}

/// `KDF_RK` (§5.2).
fn kdf_rk(rk: &SecretKey32, dh_out: &[u8; 32]) -> Result<(SecretKey32, SecretKey32), E2eError> {
    let mut out = Zeroizing::new([0u8; 64]);
    hkdf_sha256(rk.expose(), dh_out, ROOT_INFO, &mut out[..])?;
    let (a, b) = out.split_at(32);
    let mut rk2 = [0u8; 32];
    let mut ck = [0u8; 32];
    rk2.copy_from_slice(a);
    ck.copy_from_slice(b);
    Ok((SecretKey32::from_bytes(rk2), SecretKey32::from_bytes(ck)))
}

/// `KDF_CK` (§5.2): the next chain key and this step's message key.
fn kdf_ck(ck: &SecretKey32) -> (SecretKey32, SecretKey32) {
    let mk = hmac_sha256(ck.expose(), &[&[0x01]]);
    let next = hmac_sha256(ck.expose(), &[&[0x02]]);
    (SecretKey32::from_bytes(*next), SecretKey32::from_bytes(*mk))
}

/// One side's double-ratchet state (§3.2's `state`). Serializable (it holds the conversation's
/// current secrets: store it encrypted); zeroized on drop; `Debug` prints public values only.
#[derive(Clone, Serialize, Deserialize)]
pub struct Ratchet {
    root: SecretKey32,
    dh_self: X25519KeyPair,
    #[serde(with = "opt_b64_32")]
    dh_remote: Option<[u8; 32]>,
    send: Option<SecretKey32>,
    recv: Option<SecretKey32>,
    ns: u32,
    nr: u32,
    pn: u32,
    skipped: VecDeque<SkippedKey>,
    /// Earlier remote ratchet keys, newest last (public).
    #[serde(default)]
    previous_remote: VecDeque<Remote>,
}

/// A remote ratchet public key.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Remote(#[serde(with = "wire::b64_32")] [u8; 32]);

mod opt_b64_32 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct W(#[serde(with = "crate::wire::b64_32")] [u8; 32]);

    pub(super) fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        v.map(W).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

impl core::fmt::Debug for Ratchet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ratchet")
            .field("dh_self", &self.dh_self)
            .field("dh_remote", &self.dh_remote.map(hex::encode))
            .field("ns", &self.ns)
            .field("nr", &self.nr)
            .field("pn", &self.pn)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// What opening one message would change, computed without changing anything
/// ([`Ratchet::plan_open`]); applied by [`Ratchet::commit`] once the packet authenticated.
pub struct OpenPlan {
    key: MessageKey,
    /// The skipped key used (removed on commit).
    skipped_used: Option<([u8; 32], u32)>,
    /// Keys skipped on the way (stored on commit).
    newly_skipped: Vec<([u8; 32], u32, SecretKey32)>,
    /// The rest of the previous receiving chain, `(ck, dh, from, to)`: its skipped keys are
    /// derived only on commit, once the packet authenticated (a forged header's `pn` costs
    /// nothing), and stored before `newly_skipped`.
    deferred: Option<(SecretKey32, [u8; 32], u32, u32)>,
    /// The new chain state, when the message was not from the store.
    next: Option<Next>,
}

struct Next {
    root: SecretKey32,
    dh_self: X25519KeyPair,
    dh_remote: [u8; 32],
    send: Option<SecretKey32>,
    recv: SecretKey32,
    ns: u32,
    nr: u32,
    pn: u32,
}

impl OpenPlan {
    /// The message key of the message being opened.
    pub fn message_key(&self) -> &MessageKey {
        &self.key
    }

    /// How many skipped message keys the plan stores on commit: the skip budget's charge once
    /// the packet authenticated ([`crate::skip_budget`]).
    pub fn skipped_len(&self) -> u64 {
        let deferred = self
            .deferred
            .as_ref()
            .map_or(0, |(_, _, from, to)| to.saturating_sub(*from));
        self.newly_skipped.len() as u64 + u64::from(deferred)
    }
}

impl core::fmt::Debug for OpenPlan {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpenPlan")
            .field("from_store", &self.skipped_used.is_some())
            .field("skips", &self.newly_skipped.len())
            .field(
                "dh_step",
                &self.next.as_ref().map(|n| n.ns == 0 && n.send.is_some()),
            )
            .finish()
    }
}

/// Refuses to skip more than [`MAX_SKIP`] keys from `from` to `to`.
fn check_skip(from: u32, to: u32) -> Result<(), E2eError> {
    let count = u64::from(to).saturating_sub(u64::from(from));
    if count > u64::from(MAX_SKIP) {
        return Err(E2eError::TooManySkipped {
            skip: count,
            max: MAX_SKIP,
        });
    }
    Ok(())
}

/// Derives the keys `from..to` of chain `ck` as skipped keys under `dh`, and returns the chain
/// key at `to`.
fn skip(
    ck: &SecretKey32,
    dh: &[u8; 32],
    from: u32,
    to: u32,
    out: &mut Vec<([u8; 32], u32, SecretKey32)>,
) -> Result<SecretKey32, E2eError> {
    check_skip(from, to)?;
    let mut ck = ck.clone();
    for n in from..to {
        let (next, mk) = kdf_ck(&ck);
        out.push((*dh, n, mk));
        ck = next;
    }
    Ok(ck)
}

impl Ratchet {
    /// The initiator's state (§3.3 `RatchetInitAlice`) after X3DH: `sk` the shared secret, the
    /// responder's signed prekey as its first remote ratchet key, and a fresh ratchet key pair.
    ///
    /// # Errors
    /// [`E2eError::Dh`] when `remote` is a low-order point.
    pub fn init_initiator(
        sk: &SecretKey32,
        remote: &[u8; 32],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, E2eError> {
        Self::init_initiator_with(sk, remote, X25519KeyPair::generate(rng))
    }

    /// [`Ratchet::init_initiator`] with the ratchet key pair given (known-answer tests).
    ///
    /// # Errors
    /// As [`Ratchet::init_initiator`].
    pub fn init_initiator_with(
        sk: &SecretKey32,
        remote: &[u8; 32],
        dh_self: X25519KeyPair,
    ) -> Result<Self, E2eError> {
        let dh = dh_self.diffie_hellman(remote)?;
        let (root, send) = kdf_rk(sk, &dh)?;
        Ok(Self {
            root,
            dh_self,
            dh_remote: Some(*remote),
            send: Some(send),
            recv: None,
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: VecDeque::new(),
            previous_remote: VecDeque::new(),
        })
    }

    /// The responder's state (§3.3 `RatchetInitBob`): its signed prekey pair is its first
    /// ratchet key pair; it can send once it has received.
    pub fn init_responder(sk: &SecretKey32, signed_prekey: X25519KeyPair) -> Self {
        Self {
            root: sk.clone(),
            dh_self: signed_prekey,
            dh_remote: None,
            send: None,
            recv: None,
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: VecDeque::new(),
            previous_remote: VecDeque::new(),
        }
    }

    /// The header and key of the next message to send (§3.4 `RatchetEncrypt`): one chain step.
    ///
    /// # Errors
    /// [`E2eError::Protocol`] before the responder received anything (it has no sending chain
    /// yet); [`E2eError::ChainExhausted`] after 2³² − 1 messages in one chain.
    pub fn next_send(&mut self) -> Result<(Header, MessageKey), E2eError> {
        let ck = self.send.as_ref().ok_or(E2eError::Protocol {
            reason: "no sending chain before the first received message",
        })?;
        let n = self.ns;
        let ns = n.checked_add(1).ok_or(E2eError::ChainExhausted)?;
        let (next, mk) = kdf_ck(ck);
        self.send = Some(next);
        self.ns = ns;
        Ok((
            Header {
                dh: *self.dh_self.public(),
                pn: self.pn,
                n,
            },
            MessageKey(mk),
        ))
    }

    /// Whether the store still holds a usable key for `(dh, n)`.
    fn find_skipped(&self, dh: &[u8; 32], n: u32, now: UnixTime) -> Option<&SkippedKey> {
        self.skipped
            .iter()
            .find(|s| s.n == n && s.dh == *dh && now.secs_since(s.stored_at) <= MAX_SKIPPED_AGE_SECS)
    }

    /// Whether a message with `header` belongs to a chain this state has seen: the current
    /// receiving chain, an earlier one, or a stored skipped key. A client with two
    /// conversations with one peer tries such a conversation first (`docs/protocol.md` §3.3).
    pub fn recognizes(&self, header: &Header, now: UnixTime) -> bool {
        self.dh_remote == Some(header.dh)
            || self.previous_remote.contains(&Remote(header.dh))
            || self.find_skipped(&header.dh, header.n, now).is_some()
    }

    /// The chain steps opening a message with `header` walks before its packet can be
    /// authenticated: the numbers before it in its chain (none for a key in the store, a
    /// message in order, or a header [`Ratchet::plan_open`] refuses before any step). The skip
    /// budget's charge before authentication ([`crate::skip_budget`]).
    pub fn walk_cost(&self, header: &Header, now: UnixTime) -> u64 {
        if self.find_skipped(&header.dh, header.n, now).is_some()
            || self.previous_remote.contains(&Remote(header.dh))
        {
            return 0;
        }
        let from = match (&self.recv, self.dh_remote == Some(header.dh)) {
            (Some(_), true) => self.nr,
            (None, true) => return 0,
            (_, false) => 0,
        };
        match header.n.saturating_sub(from) {
            steps if steps > MAX_SKIP => 0,
            steps => u64::from(steps),
        }
    }

    /// Computes what opening a message with `header` needs (§3.5 `RatchetDecrypt`): a stored
    /// skipped key, or chain steps in the current receiving chain, or a DH ratchet step (which
    /// draws a new ratchet key pair from `rng`). Changes nothing.
    ///
    /// # Errors
    /// [`E2eError::MessageKeyGone`] for a message whose key was used or dropped;
    /// [`E2eError::TooManySkipped`] beyond [`MAX_SKIP`]; [`E2eError::Dh`] for a low-order key.
    pub fn plan_open(
        &self,
        header: &Header,
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<OpenPlan, E2eError> {
        if let Some(s) = self.find_skipped(&header.dh, header.n, now) {
            return Ok(OpenPlan {
                key: MessageKey(s.key.clone()),
                skipped_used: Some((s.dh, s.n)),
                newly_skipped: Vec::new(),
                deferred: None,
                next: None,
            });
        }
        if self.previous_remote.contains(&Remote(header.dh)) {
            return Err(E2eError::MessageKeyGone { n: header.n });
        }
        let mut newly_skipped = Vec::new();
        let mut deferred = None;
        let same_chain = self.dh_remote == Some(header.dh);
        let next = match (&self.recv, same_chain) {
            (Some(ck), true) => {
                if header.n < self.nr {
                    return Err(E2eError::MessageKeyGone { n: header.n });
                }
                let ck = skip(ck, &header.dh, self.nr, header.n, &mut newly_skipped)?;
                let (recv, mk) = kdf_ck(&ck);
                return Ok(OpenPlan {
                    key: MessageKey(mk),
                    skipped_used: None,
                    newly_skipped,
                    deferred: None,
                    next: Some(Next {
                        root: self.root.clone(),
                        dh_self: self.dh_self.clone(),
                        dh_remote: header.dh,
                        send: self.send.clone(),
                        recv,
                        ns: self.ns,
                        nr: header.n.saturating_add(1),
                        pn: self.pn,
                    }),
                });
            }
            (None, true) => {
                // The initiator's first remote key is the responder's signed prekey, which
                // never carries messages: nothing can be received under it.
                return Err(E2eError::Protocol {
                    reason: "message under the signed prekey",
                });
            }
            (recv, false) => {
                // Check the new chain's bound before any derivation or DH work.
                if header.n > MAX_SKIP {
                    return Err(E2eError::TooManySkipped {
                        skip: u64::from(header.n),
                        max: MAX_SKIP,
                    });
                }
                // §3.5: skip the rest of the previous receiving chain (derived on commit),
                // then DHRatchet.
                if let (Some(ck), Some(dh)) = (recv, &self.dh_remote) {
                    let to = header.pn.max(self.nr);
                    check_skip(self.nr, to)?;
                    deferred = Some((ck.clone(), *dh, self.nr, to));
                }
                let dh = self.dh_self.diffie_hellman(&header.dh)?;
                let (root, recv) = kdf_rk(&self.root, &dh)?;
                let dh_self = X25519KeyPair::generate(rng);
                let dh = dh_self.diffie_hellman(&header.dh)?;
                let (root, send) = kdf_rk(&root, &dh)?;
                Next {
                    root,
                    dh_self,
                    dh_remote: header.dh,
                    send: Some(send),
                    recv,
                    ns: 0,
                    nr: 0,
                    pn: self.ns,
                }
            }
        };
        let ck = skip(&next.recv, &header.dh, 0, header.n, &mut newly_skipped)?;
        let (recv, mk) = kdf_ck(&ck);
        Ok(OpenPlan {
            key: MessageKey(mk),
            skipped_used: None,
            newly_skipped,
            deferred,
            next: Some(Next {
                recv,
                nr: header.n.saturating_add(1),
                ..next
            }),
        })
    }

    /// Applies a plan once its message authenticated: the used key is deleted, skipped keys
    /// stored — the rest of the previous receiving chain derived now — (the oldest evicted
    /// beyond [`MAX_SKIPPED_KEYS`]), expired keys deleted.
    pub fn commit(&mut self, plan: OpenPlan, now: UnixTime) {
        let OpenPlan {
            key,
            skipped_used,
            newly_skipped,
            deferred,
            next,
        } = plan;
        drop(key);
        if let Some((dh, n)) = skipped_used {
            self.skipped.retain(|s| !(s.n == n && s.dh == dh));
        }
        let mut previous = Vec::new();
        if let Some((ck, dh, from, to)) = deferred {
            // Checked against MAX_SKIP when planned: cannot fail.
            let _ = skip(&ck, &dh, from, to, &mut previous);
        }
        for (dh, n, key) in previous.into_iter().chain(newly_skipped) {
            self.skipped.push_back(SkippedKey {
                dh,
                n,
                key,
                stored_at: now,
            });
        }
        self.expire(now);
        if let Some(n) = next {
            if let Some(old) = self.dh_remote.filter(|old| *old != n.dh_remote) {
                self.previous_remote.push_back(Remote(old));
                if self.previous_remote.len() > MAX_PREVIOUS_CHAINS {
                    self.previous_remote.pop_front();
                }
            }
            self.root = n.root;
            self.dh_self = n.dh_self;
            self.dh_remote = Some(n.dh_remote);
            self.send = n.send;
            self.recv = Some(n.recv);
            self.ns = n.ns;
            self.nr = n.nr;
            self.pn = n.pn;
        }
    }

    /// Deletes skipped keys older than [`MAX_SKIPPED_AGE_SECS`] and the oldest beyond
    /// [`MAX_SKIPPED_KEYS`].
    pub fn expire(&mut self, now: UnixTime) {
        self.skipped
            .retain(|s| now.secs_since(s.stored_at) <= MAX_SKIPPED_AGE_SECS);
        while self.skipped.len() > MAX_SKIPPED_KEYS {
            self.skipped.pop_front();
        }
    }

    /// How many skipped message keys are stored.
    pub fn skipped_count(&self) -> usize {
        self.skipped.len()
    }

    /// Evicts (zeroizes) the `n` oldest skipped message keys, or all when fewer are stored;
    /// returns how many went. Their messages then fail with [`E2eError::MessageKeyGone`], as any
    /// evicted key's. For the client-wide bound [`MAX_SKIPPED_KEYS_TOTAL`].
    pub fn drop_oldest_skipped(&mut self, n: usize) -> usize {
        let n = n.min(self.skipped.len());
        // SecretKey32 zeroizes on drop.
        self.skipped.drain(..n);
        n
    }

    /// The current ratchet public key (sent in every header).
    pub fn public_key(&self) -> &[u8; 32] {
        self.dh_self.public()
    }

    /// Checks the bounds of a restored state.
    pub(crate) fn check(&self) -> Result<(), E2eError> {
        if self.skipped.len() > MAX_SKIPPED_KEYS || self.previous_remote.len() > MAX_PREVIOUS_CHAINS {
            return Err(E2eError::Malformed {
                field: "ratchet",
                reason: "more skipped keys than allowed",
            });
        }
        Ok(())
    }
}
