//! The end-to-end layer between two peers, modelled on Telegram's secret chats. The relay only
//! carries its packets; both clients run it.
//!
//! ```text
//! data    = random_id (8) ‖ out_seq (4, LE) ‖ in_seq (4, LE) ‖ sent_at_ms (8, LE) ‖ body
//! payload = length(data) (4, LE) ‖ data
//! packet  = chat_key_id (8) ‖ msg_key (16) ‖ AES-256-CBC(payload ‖ padding)
//! ```
//!
//! `out_seq` counts the messages this side sent before this one; `in_seq` the messages it had
//! received from the peer. The direction (x = 0 or 8) is fixed by the order of the two identity
//! public keys, so a message reflected back to its sender fails its msg_key check. Replays,
//! gaps and reordering are detected and reported, never silently accepted.
//!
//! The receive window (`docs/protocol.md` §3) slides: it spans at most [`MAX_GAPS`] sequence
//! numbers above the lowest one still awaited. A message further ahead gives up the oldest
//! missing numbers — reported once in [`Received::lost`] — so no number of lost messages makes
//! a conversation unreadable, and memory stays bounded. A given-up message that arrives after
//! all opens as [`Delivery::Recovered`] (the last [`MAX_GIVEN_UP_RANGES`] runs are remembered);
//! a message already received is a replay.
//!
//! A replay is told by its random id, not by its number alone: the random ids of the last
//! [`MAX_REMEMBERED_IDS`] numbers received are kept. A packet under a number already received
//! but with another random id can only come from the peer (it authenticated under the chat
//! key): the peer's state went back (its profile was restored from an older copy), and the
//! message opens as [`Delivery::Reused`] instead of being dropped. Likewise a peer that says it
//! received more of our messages than we sent means *our* state went back: our counter moves up
//! past what the peer has seen ([`Received::own_counter_moved`]), so later messages do not reuse
//! its numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use mtproto_crypto::{
    rand_core::{CryptoRng, RngCore},
    ChatKey, Direction, Fingerprint, Framing, IdentityPublic, IdentitySecret, Layout, Mode,
};
use serde::{Deserialize, Serialize};

use crate::{skip_budget::SkipBudget, wire::fixed, E2eError, Result, SecretBytes, UnixTime};

/// The framing of end-to-end packets.
pub const E2E: Framing = Framing::new(Mode::Cbc, Layout::LENGTH_PREFIXED);
/// Bytes of inner header before the body.
pub const INNER_HEADER: usize = 24;
/// The receive window: how far above the lowest awaited sequence number a message may be before
/// the oldest missing numbers are given up (declared lost). At most this many numbers are held
/// in memory as received-above-the-window or missing.
pub const MAX_GAPS: usize = 1024;
/// How many runs of given-up sequence numbers a chat remembers, so that a given-up message that
/// arrives after all can be told from a replay. Older runs are forgotten: such a message is then
/// refused as a replay (the user had been told it was lost).
pub const MAX_GIVEN_UP_RANGES: usize = 64;
/// How many received numbers keep their random id, to tell a replay (same id) from a peer whose
/// state went back and reuses a number (another id). Older numbers seen again are replays.
pub const MAX_REMEMBERED_IDS: usize = 256;
/// How far a peer's `in_seq` may be ahead of our own counter and still move it up (our state
/// was restored from an older copy); further is an impossible counter.
pub const MAX_OWN_ROLLBACK: u32 = 1 << 16;

/// A sealed end-to-end message.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The packet the relay carries.
    pub packet: Vec<u8>,
    /// Its random id (a resend carries the same one).
    pub random_id: [u8; 8],
    /// Its sequence number in this direction.
    pub seq: u32,
}

/// How a received message fits the conversation. Serializable, so that a client can keep an
/// opened message until its application took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The next message in order.
    InOrder,
    /// Accepted, but messages `missing` have not arrived (yet): the user must be told.
    AfterGap {
        /// The sequence numbers not received.
        missing: Range<u32>,
    },
    /// A message that arrived after later ones, filling a gap.
    Late,
    /// A message that had been given up (reported in [`Received::lost`]) and arrived after all.
    Recovered,
    /// A new message under a number already received with another message: the peer's state
    /// went back (restored from an older copy). Shown, and the user may be told.
    Reused,
}

/// A received, authenticated end-to-end message.
#[derive(Debug, Clone)]
pub struct Received {
    /// The body.
    pub body: Vec<u8>,
    /// Its random id.
    pub random_id: [u8; 8],
    /// Its sequence number.
    pub seq: u32,
    /// The sender's clock when it sent the message (ms since the epoch).
    pub sent_at_ms: u64,
    /// How it fits the conversation.
    pub delivery: Delivery,
    /// Sequence numbers given up for good by this message's arrival (the window slid past
    /// them): the user must be told they were lost. Each number is reported at most once.
    pub lost: Vec<Range<u32>>,
    /// The peer had received more of our messages than our counter says (our state was
    /// restored from an older copy): the counter moved up over these numbers, so the next
    /// message does not reuse one the peer has seen.
    pub own_counter_moved: Option<Range<u32>>,
}

/// A decrypted packet's inner header and body.
pub(crate) struct Inner {
    pub(crate) random_id: [u8; 8],
    pub(crate) seq: u32,
    pub(crate) in_seq: u32,
    pub(crate) sent_at_ms: u64,
    pub(crate) body: Vec<u8>,
}

impl Inner {
    /// Splits decrypted data into the inner header and the body.
    pub(crate) fn parse(d: &[u8]) -> Result<Self, E2eError> {
        let part = |r: Range<usize>| d.get(r).ok_or(E2eError::Decrypt);
        Ok(Self {
            random_id: fixed("random_id", part(0..8)?)?,
            seq: u32::from_le_bytes(fixed("out_seq", part(8..12)?)?),
            in_seq: u32::from_le_bytes(fixed("in_seq", part(12..16)?)?),
            sent_at_ms: u64::from_le_bytes(fixed("sent_at", part(16..24)?)?),
            body: part(INNER_HEADER..d.len())?.to_vec(),
        })
    }
}

/// One side's state of a conversation with one peer.
#[derive(Debug)]
pub struct ChatState {
    key: ChatKey,
    own: IdentityPublic,
    peer: IdentityPublic,
    sent: u32,
    recv_low: u32,
    recv_above: BTreeSet<u32>,
    given_up: Vec<Range<u32>>,
    seen_ids: BTreeMap<u32, u64>,
    /// What the peer may still make us derive for ratchet messages (not saved).
    skip_budget: SkipBudget,
}

/// The saved form of a [`ChatState`]. Holds the chat key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatStateData {
    /// The chat key (secret).
    pub key: SecretBytes,
    /// Our identity public key.
    pub own: [u8; 32],
    /// The peer's identity public key.
    pub peer: [u8; 32],
    /// Messages sent.
    pub sent: u32,
    /// Every sequence number below this was received.
    pub recv_low: u32,
    /// Sequence numbers received above `recv_low`.
    pub recv_above: BTreeSet<u32>,
    /// Runs of sequence numbers below `recv_low` that were given up, oldest first (absent in
    /// states saved before the window slid: none).
    #[serde(default)]
    pub given_up: Vec<Range<u32>>,
    /// The random ids (as little-endian u64) of the last numbers received, at most
    /// [`MAX_REMEMBERED_IDS`] (absent in older states: none).
    #[serde(default)]
    pub seen_ids: BTreeMap<u32, u64>,
}

impl ChatState {
    /// A new conversation with `peer`.
    ///
    /// # Errors
    /// [`E2eError::Dh`] when the peer's key is a low-order point.
    pub fn new(own: &IdentitySecret, peer: IdentityPublic) -> Result<Self, E2eError> {
        Ok(Self {
            key: own.chat_key(&peer)?,
            own: own.public(),
            peer,
            sent: 0,
            recv_low: 0,
            recv_above: BTreeSet::new(),
            given_up: Vec::new(),
            seen_ids: BTreeMap::new(),
            skip_budget: SkipBudget::default(),
        })
    }

    /// Restores a saved conversation.
    ///
    /// # Errors
    /// [`E2eError::TooManyGaps`] when the saved window holds more than [`MAX_GAPS`] gaps or
    /// [`MAX_GIVEN_UP_RANGES`] given-up runs; [`E2eError::Malformed`] when the saved key is not
    /// 256 bytes or the window is inconsistent.
    pub fn restore(data: ChatStateData) -> Result<Self, E2eError> {
        for (got, max) in [
            (data.recv_above.len(), MAX_GAPS),
            (data.given_up.len(), MAX_GIVEN_UP_RANGES),
        ] {
            if got > max {
                return Err(E2eError::TooManyGaps {
                    got: got as u64,
                    max: max as u64,
                });
            }
        }
        let window_ok = data.recv_above.first().is_none_or(|&f| f >= data.recv_low)
            && data
                .recv_above
                .last()
                .is_none_or(|&l| u64::from(l) <= u64::from(data.recv_low) + MAX_GAPS as u64)
            && data
                .given_up
                .iter()
                .all(|r| r.start < r.end && r.end <= data.recv_low)
            && data.seen_ids.len() <= MAX_REMEMBERED_IDS;
        if !window_ok {
            return Err(E2eError::Malformed {
                field: "chat window",
                reason: "inconsistent or over its bounds",
            });
        }
        Ok(Self {
            key: ChatKey::from_slice(data.key.expose()).map_err(|_| E2eError::Malformed {
                field: "chat key",
                reason: "must be 256 bytes",
            })?,
            own: IdentityPublic::from_bytes(data.own),
            peer: IdentityPublic::from_bytes(data.peer),
            sent: data.sent,
            recv_low: data.recv_low,
            recv_above: data.recv_above,
            given_up: data.given_up,
            seen_ids: data.seen_ids,
            skip_budget: SkipBudget::default(),
        })
    }

    /// The peer's skip budget: the chain steps its ratchet messages may still make us derive
    /// ([`crate::skip_budget`]). Kept with the window because the window is the peer's one
    /// receive-side state across all its conversations; not part of [`ChatState::data`].
    pub fn skip_budget(&mut self) -> &mut SkipBudget {
        &mut self.skip_budget
    }

    /// The state to save.
    pub fn data(&self) -> ChatStateData {
        ChatStateData {
            key: SecretBytes::new(self.key.expose_secret().to_vec()),
            own: *self.own.as_bytes(),
            peer: *self.peer.as_bytes(),
            sent: self.sent,
            recv_low: self.recv_low,
            recv_above: self.recv_above.clone(),
            given_up: self.given_up.clone(),
            seen_ids: self.seen_ids.clone(),
        }
    }

    /// The fingerprint both users compare.
    pub fn fingerprint(&self) -> Fingerprint {
        self.key.fingerprint()
    }

    /// The peer's identity key.
    pub fn peer(&self) -> &IdentityPublic {
        &self.peer
    }

    fn send_dir(&self) -> Direction {
        self.own.send_direction(&self.peer)
    }

    /// How many messages were received in order (the `in_seq` we send).
    fn received_count(&self) -> u32 {
        self.recv_low
    }

    /// Seals `body` as the next message.
    ///
    /// # Errors
    /// [`E2eError::TooLarge`] when the body is over the framing's limit.
    pub fn seal(
        &mut self,
        body: &[u8],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Sealed, E2eError> {
        let mut random_id = [0u8; 8];
        rng.fill_bytes(&mut random_id);
        let seq = self.sent;
        let data_len = INNER_HEADER + body.len();
        let too_big = E2eError::TooLarge {
            got: data_len as u64,
            max: mtproto_crypto::MAX_DATA_LEN as u64,
        };
        let len = u32::try_from(data_len).map_err(|_| too_big.clone())?;
        let mut payload = Vec::with_capacity(4 + data_len);
        payload.extend_from_slice(&len.to_le_bytes());
        payload.extend_from_slice(&random_id);
        payload.extend_from_slice(&seq.to_le_bytes());
        payload.extend_from_slice(&self.received_count().to_le_bytes());
        payload.extend_from_slice(&(now.as_nanos() / 1_000_000).to_le_bytes());
        payload.extend_from_slice(body);
        let packet = E2E
            .seal(&self.key, self.send_dir(), &payload, rng)
            .map_err(|_| too_big)?;
        self.sent = self.sent.wrapping_add(1);
        Ok(Sealed {
            packet,
            random_id,
            seq,
        })
    }

    /// Gives back the sequence number of a message that was sealed but never stored anywhere
    /// (the relay refused it, or the user abandoned it before any copy left), so the peer sees no
    /// hole. Only the last number sealed can be given back: returns whether it was.
    ///
    /// # Security
    /// Call it only when no copy of the packet can ever reach the peer: the next message reuses
    /// the number, and the peer would drop whichever of the two arrives second as a replay.
    pub fn release_unsent(&mut self, seq: u32) -> bool {
        if seq.checked_add(1) == Some(self.sent) {
            self.sent = seq;
            true
        } else {
            false
        }
    }

    /// Opens a packet from the peer and updates the counters.
    ///
    /// A message more than [`MAX_GAPS`] above the lowest awaited number slides the window: the
    /// missing numbers it passes are given up and listed in [`Received::lost`].
    ///
    /// A number already received opens again only under another random id
    /// ([`Delivery::Reused`]: the peer's state went back); with the same id it is a replay.
    ///
    /// # Errors
    /// [`E2eError::Decrypt`] for anything forged, corrupted or reflected; [`E2eError::Replay`] for a
    /// message already received (or given up so long ago that it is no longer remembered);
    /// [`E2eError::Protocol`] for impossible counters. No error changes the state.
    pub fn open(&mut self, packet: &[u8]) -> Result<Received, E2eError> {
        let inner = self.decode(packet)?;
        self.accept(inner)
    }

    /// Hook for the double ratchet ([`crate::ratchet_chat`]), which decrypts under its own
    /// message keys and keeps this window for replay, gap and late detection: the inner header
    /// of the next message to seal (`random_id ‖ out_seq ‖ in_seq ‖ sent_at_ms`) and its number.
    /// [`ChatState::mark_sealed`] moves the counter once the packet is built.
    pub(crate) fn next_inner_header(&self, random_id: [u8; 8], now: UnixTime) -> ([u8; INNER_HEADER], u32) {
        let mut h = [0u8; INNER_HEADER];
        let fields = random_id
            .into_iter()
            .chain(self.sent.to_le_bytes())
            .chain(self.received_count().to_le_bytes())
            .chain((now.as_nanos() / 1_000_000).to_le_bytes());
        for (d, s) in h.iter_mut().zip(fields) {
            *d = s;
        }
        (h, self.sent)
    }

    /// Hook for the double ratchet: the message numbered by [`ChatState::next_inner_header`] was
    /// sealed.
    pub(crate) fn mark_sealed(&mut self) {
        self.sent = self.sent.wrapping_add(1);
    }

    /// The window bookkeeping of [`ChatState::open`] for an authenticated inner header; also
    /// the double ratchet's hook. No error changes the state.
    pub(crate) fn accept(&mut self, inner: Inner) -> Result<Received, E2eError> {
        let Inner {
            random_id,
            seq,
            in_seq,
            sent_at_ms,
            body,
        } = inner;
        let id = u64::from_le_bytes(random_id);
        let received_before = seq < self.recv_low || self.recv_above.contains(&seq);
        let given_up = self.given_up.iter().position(|r| r.contains(&seq));
        let reused = match (received_before, given_up) {
            (true, None) => match self.seen_ids.get(&seq) {
                // Another message under a number we have: the peer's state went back.
                Some(&seen) if seen != id => true,
                _ => return Err(E2eError::Replay { seq }),
            },
            _ => false,
        };
        let own_counter_moved = if in_seq > self.sent {
            if in_seq - self.sent > MAX_OWN_ROLLBACK {
                return Err(E2eError::Protocol {
                    reason: "peer acknowledges messages never sent",
                });
            }
            Some(self.sent..in_seq)
        } else {
            None
        };
        if let Some(moved) = &own_counter_moved {
            self.sent = moved.end;
        }
        if reused || given_up.is_some() {
            if let Some(i) = given_up {
                self.take_given_up(i, seq);
            }
            self.remember_id(seq, id);
            return Ok(Received {
                body,
                random_id,
                seq,
                sent_at_ms,
                delivery: if reused {
                    Delivery::Reused
                } else {
                    Delivery::Recovered
                },
                lost: Vec::new(),
                own_counter_moved,
            });
        }
        // The next number expected; u64 so that u32::MAX + 1 does not overflow.
        let next_expected = self
            .recv_above
            .last()
            .map_or(u64::from(self.recv_low), |&m| u64::from(m) + 1);
        let delivery = match u64::from(seq).cmp(&next_expected) {
            std::cmp::Ordering::Equal => Delivery::InOrder,
            // seq > next_expected, so next_expected fits in u32.
            std::cmp::Ordering::Greater => Delivery::AfterGap {
                missing: u32::try_from(next_expected).unwrap_or(seq)..seq,
            },
            std::cmp::Ordering::Less => Delivery::Late,
        };
        let lost = self.slide_to(seq.saturating_sub(MAX_GAPS as u32));
        self.recv_above.insert(seq);
        self.absorb();
        self.remember_id(seq, id);
        Ok(Received {
            body,
            random_id,
            seq,
            sent_at_ms,
            delivery,
            lost,
            own_counter_moved,
        })
    }

    /// Opens again a message this state already received, without changing anything: for a
    /// client that handed it out, died before its application kept it, and finds it again on the
    /// relay (never acknowledged). The result says [`Delivery::InOrder`], with nothing lost.
    ///
    /// # Errors
    /// [`E2eError::Decrypt`] as for [`ChatState::open`]; [`E2eError::Protocol`] for a message this
    /// state has not received (open it with [`ChatState::open`]) or whose number was received
    /// with another message.
    pub fn open_again(&self, packet: &[u8]) -> Result<Received, E2eError> {
        let inner = self.decode(packet)?;
        let seq = inner.seq;
        let received = (seq < self.recv_low && !self.given_up.iter().any(|r| r.contains(&seq)))
            || self.recv_above.contains(&seq);
        let same = self
            .seen_ids
            .get(&seq)
            .is_none_or(|&id| id == u64::from_le_bytes(inner.random_id));
        if !(received && same) {
            return Err(E2eError::Protocol {
                reason: "not a message received before",
            });
        }
        Ok(Received {
            body: inner.body,
            random_id: inner.random_id,
            seq,
            sent_at_ms: inner.sent_at_ms,
            delivery: Delivery::InOrder,
            lost: Vec::new(),
            own_counter_moved: None,
        })
    }

    /// Authenticates and decrypts a packet from the peer and splits its inner header.
    fn decode(&self, packet: &[u8]) -> Result<Inner, E2eError> {
        let opened = E2E.open(&self.key, self.send_dir().reverse(), packet)?;
        Inner::parse(opened.data())
    }

    /// Keeps `seq`'s random id, forgetting the lowest numbers beyond [`MAX_REMEMBERED_IDS`].
    fn remember_id(&mut self, seq: u32, id: u64) {
        self.seen_ids.insert(seq, id);
        while self.seen_ids.len() > MAX_REMEMBERED_IDS {
            self.seen_ids.pop_first();
        }
    }

    /// Moves `recv_low` up to `new_low` (if it is higher), giving up every number below it not
    /// received, and returns those runs.
    fn slide_to(&mut self, new_low: u32) -> Vec<Range<u32>> {
        let mut lost = Vec::new();
        if new_low <= self.recv_low {
            return lost;
        }
        let mut start = self.recv_low;
        while let Some(&first) = self.recv_above.first() {
            if first >= new_low {
                break;
            }
            self.recv_above.pop_first();
            if first > start {
                lost.push(start..first);
            }
            start = first.saturating_add(1);
        }
        if start < new_low {
            lost.push(start..new_low);
        }
        self.recv_low = new_low;
        for r in &lost {
            match self.given_up.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => self.given_up.push(r.clone()),
            }
        }
        if self.given_up.len() > MAX_GIVEN_UP_RANGES {
            let excess = self.given_up.len() - MAX_GIVEN_UP_RANGES;
            self.given_up.drain(..excess);
        }
        lost
    }

    /// Advances `recv_low` over the numbers received just above it.
    fn absorb(&mut self) {
        while self.recv_above.first() == Some(&self.recv_low) {
            // At the last number of the range it stays in `recv_above`, still a replay.
            let Some(next) = self.recv_low.checked_add(1) else {
                break;
            };
            self.recv_above.pop_first();
            self.recv_low = next;
        }
    }

    /// Removes `seq` from the given-up run at `index` (it arrived after all).
    fn take_given_up(&mut self, index: usize, seq: u32) {
        let Some(run) = self.given_up.get(index).cloned() else {
            return;
        };
        let (before, after) = (run.start..seq, seq.saturating_add(1)..run.end);
        let mut parts = Vec::with_capacity(2);
        if !before.is_empty() {
            parts.push(before);
        }
        if !after.is_empty() {
            parts.push(after);
        }
        self.given_up.splice(index..=index, parts);
        if self.given_up.len() > MAX_GIVEN_UP_RANGES {
            // Forget the oldest run: its messages are refused as replays from now on.
            self.given_up.remove(0);
        }
    }

    /// Sequence numbers still missing below the highest received.
    pub fn missing(&self) -> Vec<u32> {
        let top = self.recv_above.last().copied().unwrap_or(self.recv_low);
        (self.recv_low..top)
            .filter(|s| !self.recv_above.contains(s))
            .collect()
    }
}
