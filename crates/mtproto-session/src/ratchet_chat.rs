//! A conversation under the double ratchet, in MTProto 2.0 packets: X3DH start
//! ([`crate::x3dh`]), ratchet keys ([`crate::ratchet`]), the existing `E2E` framing
//! ([`crate::e2e::E2E`]: msg_key, KDF, AES-256-CBC) under each message's key, and the receive
//! window of [`ChatState`] for replay, gap and late detection. `docs/protocol.md` §3.2.
//!
//! ```text
//! packet   = prefix ‖ frame
//! prefix   = 0x01 ‖ header                                                   (41 bytes)
//!          | 0x02 ‖ IK_A (32) ‖ EK_A (32) ‖ spk_id (4, LE) ‖ has_opk (1) ‖ opk_id (4, LE)
//!                 ‖ header                                                   (114 bytes)
//! header   = ratchet key (32) ‖ pn (4, LE) ‖ n (4, LE)
//! frame    = key_id (8) ‖ msg_key (16) ‖ AES-256-CBC(payload ‖ padding)    -- E2E framing
//! payload  = length(data) (4, LE) ‖ data
//! data     = prefix ‖ random_id (8) ‖ out_seq (4, LE) ‖ in_seq (4, LE) ‖ sent_at_ms (8, LE) ‖ body
//! K (256)  = HKDF-SHA256(salt = "mtproto-relay/ratchet/packet-key/v1", ikm = mk,
//!                        info = AD = IK_A ‖ IK_B, L = 256)
//! ```
//!
//! The prefix travels in clear (the receiver needs it to find the key) and again inside the
//! encrypted data, where msg_key covers it: a packet whose clear prefix differs from its
//! encrypted copy is refused, so the header is authenticated. The initiator sends the `0x02`
//! prefix until it has received a message from the responder (X3DH §3.3). Packet lengths are
//! `≡ 1 (mod 16)` for `0x01`, `≡ 10 (mod 16)` for `0x02`, and `≡ 8 (mod 16)` for the static
//! chat key's packets: [`packet_kind`] tells them apart.
//!
//! Every message to or from a peer — under the static chat key or in any ratchet conversation
//! with that peer — is numbered by and checked against one receive window, the peer's
//! [`ChatState`]: the caller keeps one per peer and passes it to [`RatchetChat::seal`],
//! [`RatchetChat::open`] and [`RatchetChat::accept`]. A replay is refused even when it comes
//! through another conversation (a replayed start without a one-time prekey, say).
//!
//! ```
//! use mtproto_crypto::{rand_core::OsRng, IdentitySecret, IdentitySigningKey};
//! use mtproto_session::{x3dh::Prekeys, ChatState, RatchetChat, UnixTime};
//!
//! let now = UnixTime::from_secs(1_800_000_000);
//! let (alice, bob) = (IdentitySecret::generate(&mut OsRng), IdentitySecret::generate(&mut OsRng));
//! let mut bob_prekeys = Prekeys::new(&bob, &IdentitySigningKey::generate(&mut OsRng), now, &mut OsRng);
//! let opk = bob_prekeys.generate_one_time(1, &mut OsRng)?.pop();
//! let bundle = bob_prekeys.bundle(opk); // what the relay hands Alice
//! // Each side's window with the other (the static conversation they may already have).
//! let mut alice_window = ChatState::new(&alice, bob.public())?;
//! let mut bob_window = ChatState::new(&bob, alice.public())?;
//!
//! let (mut a, started) = RatchetChat::initiate(&alice, &bundle, &bob.public(), &mut OsRng)?;
//! assert!(started.one_time_prekey.is_some());
//! let first = a.seal(&mut alice_window, b"hi Bob", now, &mut OsRng)?;
//! let (mut b, accepted) =
//!     RatchetChat::accept(&bob, &mut bob_prekeys, &mut bob_window, &first.packet, now, &mut OsRng)?;
//! assert_eq!(accepted.received.body, b"hi Bob");
//! assert_eq!(accepted.peer, alice.public());
//! assert_eq!(a.start_ephemeral(), b.start_ephemeral());
//!
//! let reply = b.seal(&mut bob_window, b"hi Alice", now, &mut OsRng)?;
//! assert_eq!(a.open(&mut alice_window, &reply.packet, now, &mut OsRng)?.body, b"hi Alice");
//! // Each key opens once: a replay is refused.
//! assert!(a.open(&mut alice_window, &reply.packet, now, &mut OsRng).is_err());
//! // The safety number is the static chat's: the window's.
//! assert_eq!(alice_window.fingerprint(), bob_window.fingerprint());
//! # Ok::<(), mtproto_session::Error>(())
//! ```

use core::fmt;

use mtproto_crypto::{
    kdf::hkdf_sha256,
    rand_core::{CryptoRng, RngCore},
    ChatKey, Direction, IdentityPublic, IdentitySecret,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{
    e2e::{Inner, E2E, INNER_HEADER},
    ratchet::{Header, MessageKey, Ratchet, HEADER_LEN},
    wire,
    x3dh::{self, PrekeyBundle, Prekeys, Start, X25519KeyPair},
    ChatState, E2eError, Received, Result, Sealed, UnixTime,
};

/// First byte of a ratchet message.
pub const KIND_RATCHET: u8 = 0x01;
/// First byte of a start message (a ratchet message carrying the X3DH start).
pub const KIND_START: u8 = 0x02;
/// Bytes of a ratchet message's prefix.
pub const RATCHET_PREFIX_LEN: usize = 1 + HEADER_LEN;
/// Bytes of a start message's prefix.
pub const START_PREFIX_LEN: usize = 1 + 32 + 32 + 4 + 1 + 4 + HEADER_LEN;
/// The HKDF salt that expands a message key into the 256-byte key of the `E2E` framing.
pub const PACKET_KEY_LABEL: &[u8] = b"mtproto-relay/ratchet/packet-key/v1";
/// Frame bytes before the ciphertext (key id and msg_key).
const FRAME_HEAD: usize = mtproto_crypto::OUTER_HEADER_LEN;

/// Which end-to-end packet this is, from its length and first byte (nothing is decrypted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// Under the static chat key ([`ChatState`]).
    Static,
    /// A double-ratchet message.
    Ratchet,
    /// A double-ratchet message with the X3DH start: may open a new conversation.
    Start,
}

/// Tells the kind of an end-to-end packet, or `None` for a length no kind has.
pub fn packet_kind(packet: &[u8]) -> Option<PacketKind> {
    let framed = |prefix: usize| {
        packet
            .len()
            .checked_sub(prefix + FRAME_HEAD)
            .is_some_and(|rest| rest >= 16 && rest % 16 == 0)
    };
    if framed(0) {
        Some(PacketKind::Static)
    } else if packet.first() == Some(&KIND_RATCHET) && framed(RATCHET_PREFIX_LEN) {
        Some(PacketKind::Ratchet)
    } else if packet.first() == Some(&KIND_START) && framed(START_PREFIX_LEN) {
        Some(PacketKind::Start)
    } else {
        None
    }
}

/// The X3DH start a start message carries (its clear prefix; nothing is decrypted, so nothing
/// in it is authenticated yet): who claims to start, and `EK_A`, which tells a repeated start of
/// a conversation ([`RatchetChat::start_ephemeral`]) from a new one.
///
/// # Errors
/// [`E2eError::Protocol`] for a packet that is not a start; [`E2eError::Decrypt`] for a
/// malformed prefix.
pub fn start_of(packet: &[u8]) -> Result<Start, E2eError> {
    decode_prefix(packet)?.start.ok_or(E2eError::Protocol {
        reason: "not a start message",
    })
}

/// The encoded prefix of a message.
fn encode_prefix(start: Option<&Start>, header: &Header) -> Vec<u8> {
    let mut p = Vec::with_capacity(START_PREFIX_LEN);
    match start {
        None => p.push(KIND_RATCHET),
        Some(s) => {
            p.push(KIND_START);
            p.extend_from_slice(&s.identity);
            p.extend_from_slice(&s.ephemeral);
            p.extend_from_slice(&s.signed_prekey_id.to_le_bytes());
            p.push(u8::from(s.one_time_prekey_id.is_some()));
            p.extend_from_slice(&s.one_time_prekey_id.unwrap_or(0).to_le_bytes());
        }
    }
    p.extend_from_slice(&header.encode());
    p
}

/// A decoded prefix and its length.
struct Prefix {
    start: Option<Start>,
    header: Header,
    len: usize,
}

fn take<const N: usize>(b: &[u8], at: &mut usize) -> Result<[u8; N], E2eError> {
    let end = at.checked_add(N).ok_or(E2eError::Decrypt)?;
    let out = b
        .get(*at..end)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(E2eError::Decrypt)?;
    *at = end;
    Ok(out)
}

/// Parses a prefix. Malformed is [`E2eError::Decrypt`]: it is attacker-controlled input.
fn decode_prefix(packet: &[u8]) -> Result<Prefix, E2eError> {
    let mut at = 1;
    let start = match packet.first() {
        Some(&KIND_RATCHET) => None,
        Some(&KIND_START) => {
            let identity = take::<32>(packet, &mut at)?;
            let ephemeral = take::<32>(packet, &mut at)?;
            let signed_prekey_id = u32::from_le_bytes(take::<4>(packet, &mut at)?);
            let [has_opk] = take::<1>(packet, &mut at)?;
            let opk = u32::from_le_bytes(take::<4>(packet, &mut at)?);
            let one_time_prekey_id = match has_opk {
                0 if opk == 0 => None,
                1 => Some(opk),
                _ => return Err(E2eError::Decrypt),
            };
            Some(Start {
                identity,
                ephemeral,
                signed_prekey_id,
                one_time_prekey_id,
            })
        }
        _ => return Err(E2eError::Decrypt),
    };
    let header = Header::decode(&take::<HEADER_LEN>(packet, &mut at)?);
    Ok(Prefix {
        start,
        header,
        len: at,
    })
}

/// `K = HKDF-SHA256(salt = PACKET_KEY_LABEL, ikm = mk, info = AD, L = 256)`.
fn packet_key(mk: &MessageKey, ad: &[u8; 64]) -> Result<ChatKey, E2eError> {
    let mut okm = Zeroizing::new([0u8; 256]);
    hkdf_sha256(PACKET_KEY_LABEL, mk.expose(), ad, &mut okm[..])?;
    Ok(ChatKey::from_bytes(*okm))
}

/// What [`RatchetChat::initiate`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The one-time prekey used; `None` when the bundle had none (the relay ran out): the
    /// start used the signed prekey only, which the user interface may say.
    pub one_time_prekey: Option<u32>,
}

/// What [`RatchetChat::accept`] reports.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The initiator's identity key, from the start: check it against the one known for that
    /// contact (directory, pinned key, safety numbers) before trusting the conversation.
    pub peer: IdentityPublic,
    /// The one-time prekey used (now deleted), or `None` for a start with the signed prekey only.
    pub one_time_prekey: Option<u32>,
    /// The first message.
    pub received: Received,
}

/// One side of a conversation under the double ratchet. `Debug` prints public values only.
pub struct RatchetChat {
    ratchet: Ratchet,
    own: IdentityPublic,
    peer: IdentityPublic,
    initiator: bool,
    pending_start: Option<Start>,
    start_ephemeral: [u8; 32],
}

/// The saved form of a [`RatchetChat`]. Holds the ratchet's secrets: store it encrypted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RatchetChatData {
    /// The double ratchet.
    pub ratchet: Ratchet,
    /// Whether this side started the conversation (`AD = IK_initiator ‖ IK_responder`).
    pub initiator: bool,
    /// The start the initiator repeats until it receives a message.
    pub pending_start: Option<Start>,
    /// Our identity public key.
    #[serde(with = "wire::b64_32")]
    pub own: [u8; 32],
    /// The peer's identity public key.
    #[serde(with = "wire::b64_32")]
    pub peer: [u8; 32],
    /// The start's ephemeral key `EK_A` (both roles): tells a repeated start of this
    /// conversation from a new one ([`RatchetChat::start_ephemeral`]).
    #[serde(with = "wire::b64_32")]
    pub start_ephemeral: [u8; 32],
}

impl fmt::Debug for RatchetChat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RatchetChat")
            .field("own", &self.own)
            .field("peer", &self.peer)
            .field("initiator", &self.initiator)
            .field("ratchet", &self.ratchet)
            .field("start_pending", &self.pending_start.is_some())
            .field("start_ephemeral", &self.start_ephemeral)
            .finish_non_exhaustive()
    }
}

impl RatchetChat {
    /// Starts a conversation from the peer's bundle (X3DH initiator, then `RatchetInitAlice`).
    /// `expected_peer` is the identity key known for that contact; a bundle for another identity
    /// is refused. The randomness drawn: the ephemeral key (32 bytes), then the first ratchet
    /// key (32 bytes).
    ///
    /// # Errors
    /// [`E2eError::PeerIdentityMismatch`], [`E2eError::BadPrekeySignature`], [`E2eError::Dh`].
    pub fn initiate(
        own: &IdentitySecret,
        bundle: &PrekeyBundle,
        expected_peer: &IdentityPublic,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Self, Started), E2eError> {
        let ephemeral = X25519KeyPair::generate(rng);
        let ratchet_key = X25519KeyPair::generate(rng);
        Self::initiate_with(own, bundle, expected_peer, &ephemeral, ratchet_key)
    }

    /// [`RatchetChat::initiate`] with its two key pairs given: the pure core, for known-answer
    /// tests.
    ///
    /// # Errors
    /// As [`RatchetChat::initiate`].
    pub fn initiate_with(
        own: &IdentitySecret,
        bundle: &PrekeyBundle,
        expected_peer: &IdentityPublic,
        ephemeral: &X25519KeyPair,
        ratchet_key: X25519KeyPair,
    ) -> Result<(Self, Started), E2eError> {
        let agreement = x3dh::initiate_with_ephemeral(own, bundle, expected_peer, ephemeral)?;
        let ratchet =
            Ratchet::init_initiator_with(agreement.shared_secret(), &agreement.signed_prekey, ratchet_key)?;
        let chat = Self {
            ratchet,
            own: own.public(),
            peer: *expected_peer,
            initiator: true,
            start_ephemeral: agreement.start.ephemeral,
            pending_start: Some(agreement.start),
        };
        Ok((
            chat,
            Started {
                one_time_prekey: agreement.one_time_prekey,
            },
        ))
    }

    /// Opens a start message from the peer of `window` (X3DH responder, then `RatchetInitBob`,
    /// then the message, numbered in `window`). The one-time prekey it used is deleted from
    /// `prekeys` once the message opened, so a replayed start is refused
    /// ([`E2eError::UnknownPrekey`]).
    ///
    /// # Errors
    /// [`E2eError::Protocol`] for a packet that is not a start; [`E2eError::PeerIdentityMismatch`]
    /// for a start whose identity key is not `window.peer()`; [`E2eError::UnknownPrekey`];
    /// [`E2eError::Decrypt`]; as [`RatchetChat::open`]. On error nothing changes (neither
    /// `prekeys` nor `window`), except the window's skip budget as [`RatchetChat::open`] says.
    ///
    /// # Security
    /// A start without a one-time prekey can be replayed to open a second, identical
    /// conversation. Its messages are numbered in the shared `window`, so the replayed first
    /// message is refused as [`E2eError::Replay`]: the caller keeps one window per peer and
    /// keeps the conversation it has when a start is refused (X3DH §4.2).
    pub fn accept(
        own: &IdentitySecret,
        prekeys: &mut Prekeys,
        window: &mut ChatState,
        packet: &[u8],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Self, Accepted), E2eError> {
        let prefix = decode_prefix(packet)?;
        let start = prefix.start.ok_or(E2eError::Protocol {
            reason: "not a start message",
        })?;
        if !bool::from(start.identity.ct_eq(window.peer().as_bytes())) {
            return Err(E2eError::PeerIdentityMismatch);
        }
        let agreement = x3dh::respond(own, prekeys, &start)?;
        let spk = x3dh::signed_prekey_pair(prekeys, start.signed_prekey_id)?;
        let peer = IdentityPublic::from_bytes(start.identity);
        let mut chat = Self {
            ratchet: Ratchet::init_responder(agreement.shared_secret(), spk),
            own: own.public(),
            peer,
            initiator: false,
            pending_start: None,
            start_ephemeral: start.ephemeral,
        };
        let received = chat.open(window, packet, now, rng)?;
        if let Some(id) = start.one_time_prekey_id {
            prekeys.consume_one_time(id);
        }
        Ok((
            chat,
            Accepted {
                peer,
                one_time_prekey: start.one_time_prekey_id,
                received,
            },
        ))
    }

    fn ad(&self) -> [u8; 64] {
        let (a, b) = if self.initiator {
            (&self.own, &self.peer)
        } else {
            (&self.peer, &self.own)
        };
        let mut ad = [0u8; 64];
        for (d, s) in ad.iter_mut().zip(a.as_bytes().iter().chain(b.as_bytes())) {
            *d = *s;
        }
        ad
    }

    fn send_dir(&self) -> Direction {
        self.own.send_direction(&self.peer)
    }

    /// Refuses a window for another peer (the numbering would mix two conversations).
    fn check_window(&self, window: &ChatState) -> Result<(), E2eError> {
        if bool::from(window.peer().as_bytes().ct_eq(self.peer.as_bytes())) {
            Ok(())
        } else {
            Err(E2eError::PeerIdentityMismatch)
        }
    }

    /// Seals `body` as the next message: one chain step, the key used once; its number is the
    /// next of `window` (the peer's one window: static and ratchet messages share it). The
    /// randomness drawn: the random id (8 bytes), then the framing's padding (76 bytes).
    ///
    /// # Errors
    /// [`E2eError::TooLarge`] when the body is over the framing's limit (checked before the chain
    /// moves); [`E2eError::PeerIdentityMismatch`] for a window with another peer;
    /// [`E2eError::Protocol`] as [`Ratchet::next_send`].
    pub fn seal(
        &mut self,
        window: &mut ChatState,
        body: &[u8],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Sealed, E2eError> {
        let prefix_len = if self.pending_start.is_some() {
            START_PREFIX_LEN
        } else {
            RATCHET_PREFIX_LEN
        };
        let data_len = prefix_len + INNER_HEADER + body.len();
        let too_big = E2eError::TooLarge {
            got: data_len as u64,
            max: mtproto_crypto::MAX_DATA_LEN as u64,
        };
        let len = u32::try_from(data_len).map_err(|_| too_big.clone())?;
        if data_len > mtproto_crypto::MAX_DATA_LEN {
            return Err(too_big);
        }
        self.check_window(window)?;
        let mut random_id = [0u8; 8];
        rng.fill_bytes(&mut random_id);
        let (header, mk) = self.ratchet.next_send()?;
        let prefix = encode_prefix(self.pending_start.as_ref(), &header);
        let key = packet_key(&mk, &self.ad())?;
        drop(mk);
        let (inner, seq) = window.next_inner_header(random_id, now);
        let mut payload = Zeroizing::new(Vec::with_capacity(4 + data_len));
        payload.extend_from_slice(&len.to_le_bytes());
        payload.extend_from_slice(&prefix);
        payload.extend_from_slice(&inner);
        payload.extend_from_slice(body);
        let frame = E2E
            .seal(&key, self.send_dir(), &payload, rng)
            .map_err(|_| too_big)?;
        let mut packet = prefix;
        packet.extend_from_slice(&frame);
        window.mark_sealed();
        Ok(Sealed {
            packet,
            random_id,
            seq,
        })
    }

    /// Opens a packet from the peer: finds the message key (a stored skipped key, chain steps,
    /// or a DH ratchet step drawing a new ratchet key of 32 bytes from `rng`), checks and
    /// decrypts the frame, checks the encrypted copy of the prefix, then the receive window
    /// `window` (the peer's one window). Only then does the state change: the key is deleted,
    /// skipped keys stored, the message recorded in `window`.
    ///
    /// # Errors
    /// [`E2eError::Decrypt`] for anything forged, corrupted or reflected;
    /// [`E2eError::MessageKeyGone`] for a replay or a message whose key was dropped;
    /// [`E2eError::TooManySkipped`] beyond [`crate::ratchet::MAX_SKIP`];
    /// [`E2eError::SkipBudget`] when the peer's skip budget cannot pay the chain steps; the
    /// window's errors as [`ChatState::open`] ([`E2eError::Replay`] for a number `window` has
    /// received, through any conversation); [`E2eError::PeerIdentityMismatch`] for a window
    /// with another peer. No error changes the state nor `window`, except that the steps derived
    /// stay paid from the window's skip budget ([`crate::skip_budget`]): a forged packet costs
    /// its sender's budget what it cost us.
    pub fn open(
        &mut self,
        window: &mut ChatState,
        packet: &[u8],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Received, E2eError> {
        self.check_window(window)?;
        let prefix = decode_prefix(packet)?;
        let (clear_prefix, frame) = packet.split_at_checked(prefix.len).ok_or(E2eError::Decrypt)?;
        // The steps walked before the packet can be authenticated are paid first, forged or not.
        let walk = self.ratchet.walk_cost(&prefix.header, now);
        window.skip_budget().spend(walk, now)?;
        let plan = self.ratchet.plan_open(&prefix.header, now, rng)?;
        let key = packet_key(plan.message_key(), &self.ad())?;
        let opened = E2E.open(&key, self.send_dir().reverse(), frame)?;
        let (inner_prefix, rest) = opened
            .data()
            .split_at_checked(prefix.len)
            .ok_or(E2eError::Decrypt)?;
        if inner_prefix != clear_prefix {
            return Err(E2eError::Decrypt);
        }
        // Authenticated: the skipped keys it stores are paid too (the browser derives them only
        // now); a budget that cannot pay refuses the message.
        window.skip_budget().spend(plan.skipped_len(), now)?;
        let received = window.accept(Inner::parse(rest)?)?;
        self.ratchet.commit(plan, now);
        // The responder has the conversation: stop repeating the start.
        self.pending_start = None;
        Ok(received)
    }

    /// Whether `packet` (a ratchet or start packet) belongs to a chain this conversation has
    /// seen ([`Ratchet::recognizes`]); false for anything that is not a ratchet packet.
    pub fn recognizes(&self, packet: &[u8], now: UnixTime) -> bool {
        decode_prefix(packet).is_ok_and(|p| self.ratchet.recognizes(&p.header, now))
    }

    /// The peer's identity key.
    pub fn peer(&self) -> &IdentityPublic {
        &self.peer
    }

    /// Whether this side started the conversation (sent the start). After simultaneous
    /// starts, both sides send with the conversation whose initiator has the lower identity
    /// key (`docs/protocol.md` §3).
    pub fn initiator(&self) -> bool {
        self.initiator
    }

    /// The identity key of the side that started the conversation.
    pub fn initiator_key(&self) -> &IdentityPublic {
        if self.initiator {
            &self.own
        } else {
            &self.peer
        }
    }

    /// The start's ephemeral key `EK_A`, on both sides: a start message carrying it belongs
    /// to this conversation (the initiator repeats its start until it hears back); another
    /// one is a new conversation.
    pub fn start_ephemeral(&self) -> &[u8; 32] {
        &self.start_ephemeral
    }

    /// Whether the initiator still sends the start (it has received nothing yet).
    pub fn start_pending(&self) -> bool {
        self.pending_start.is_some()
    }

    /// The double ratchet (public values through `Debug`; counters).
    pub fn ratchet(&self) -> &Ratchet {
        &self.ratchet
    }

    /// Evicts the `n` oldest skipped message keys of this conversation (see
    /// [`Ratchet::drop_oldest_skipped`]); returns how many went.
    pub fn drop_oldest_skipped(&mut self, n: usize) -> usize {
        self.ratchet.drop_oldest_skipped(n)
    }

    /// The state to save.
    pub fn data(&self) -> RatchetChatData {
        RatchetChatData {
            ratchet: self.ratchet.clone(),
            initiator: self.initiator,
            pending_start: self.pending_start.clone(),
            own: *self.own.as_bytes(),
            peer: *self.peer.as_bytes(),
            start_ephemeral: self.start_ephemeral,
        }
    }

    /// Restores a saved conversation.
    ///
    /// # Errors
    /// [`E2eError::Malformed`] for a state over its bounds, or an initiator's state whose
    /// pending start has another ephemeral key.
    pub fn restore(data: RatchetChatData) -> Result<Self, E2eError> {
        data.ratchet.check()?;
        if data
            .pending_start
            .as_ref()
            .is_some_and(|s| !data.initiator || s.ephemeral != data.start_ephemeral)
        {
            return Err(E2eError::Malformed {
                field: "ratchet chat",
                reason: "pending start disagrees with the conversation",
            });
        }
        Ok(Self {
            start_ephemeral: data.start_ephemeral,
            ratchet: data.ratchet,
            own: IdentityPublic::from_bytes(data.own),
            peer: IdentityPublic::from_bytes(data.peer),
            initiator: data.initiator,
            pending_start: data.pending_start,
        })
    }
}
