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

use std::collections::BTreeSet;
use std::ops::Range;

use mtproto_crypto::{
    rand_core::{CryptoRng, RngCore},
    ChatKey, Direction, Fingerprint, Framing, IdentityPublic, IdentitySecret, Layout, Mode,
};
use serde::{Deserialize, Serialize};

use crate::{wire::fixed, Error, Result, SecretBytes, UnixTime};

/// The framing of end-to-end packets.
pub const E2E: Framing = Framing::new(Mode::Cbc, Layout::LENGTH_PREFIXED);
/// Bytes of inner header before the body.
pub const INNER_HEADER: usize = 24;
/// How many missing messages a chat tolerates before it refuses more (a peer skipping ahead).
pub const MAX_GAPS: usize = 1024;

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

/// How a received message fits the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl ChatState {
    /// A new conversation with `peer`.
    ///
    /// # Errors
    /// [`Error::Dh`] when the peer's key is a low-order point.
    pub fn new(own: &IdentitySecret, peer: IdentityPublic) -> Result<Self> {
        Ok(Self {
            key: own.chat_key(&peer)?,
            own: own.public(),
            peer,
            sent: 0,
            recv_low: 0,
            recv_above: BTreeSet::new(),
        })
    }

    /// Restores a saved conversation.
    ///
    /// # Errors
    /// [`Error::Malformed`] when the saved key is not 256 bytes.
    pub fn restore(data: ChatStateData) -> Result<Self> {
        Ok(Self {
            key: ChatKey::from_slice(data.key.expose()).map_err(|_| Error::Malformed {
                field: "chat key",
                reason: "must be 256 bytes",
            })?,
            own: IdentityPublic::from_bytes(data.own),
            peer: IdentityPublic::from_bytes(data.peer),
            sent: data.sent,
            recv_low: data.recv_low,
            recv_above: data.recv_above,
        })
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
    /// [`Error::Limit`] when the body is over the framing's limit.
    pub fn seal(
        &mut self,
        body: &[u8],
        now: UnixTime,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Sealed> {
        let mut random_id = [0u8; 8];
        rng.fill_bytes(&mut random_id);
        let seq = self.sent;
        let data_len = INNER_HEADER + body.len();
        let len = u32::try_from(data_len).map_err(|_| Error::Limit {
            what: "message",
            max: u64::from(u32::MAX),
        })?;
        let mut payload = Vec::with_capacity(4 + data_len);
        payload.extend_from_slice(&len.to_le_bytes());
        payload.extend_from_slice(&random_id);
        payload.extend_from_slice(&seq.to_le_bytes());
        payload.extend_from_slice(&self.received_count().to_le_bytes());
        payload.extend_from_slice(&(now.as_nanos() / 1_000_000).to_le_bytes());
        payload.extend_from_slice(body);
        let packet = E2E
            .seal(&self.key, self.send_dir(), &payload, rng)
            .map_err(|_| Error::Limit {
                what: "message",
                max: mtproto_crypto::MAX_DATA_LEN as u64,
            })?;
        self.sent = self.sent.wrapping_add(1);
        Ok(Sealed {
            packet,
            random_id,
            seq,
        })
    }

    /// Opens a packet from the peer and updates the counters.
    ///
    /// # Errors
    /// [`Error::Decrypt`] for anything forged, corrupted or reflected; [`Error::E2eReplay`] for a
    /// message already received; [`Error::E2eProtocol`] for impossible counters.
    pub fn open(&mut self, packet: &[u8]) -> Result<Received> {
        let opened = E2E.open(&self.key, self.send_dir().reverse(), packet)?;
        let d = opened.data();
        let part = |r: Range<usize>| d.get(r).ok_or(Error::Decrypt);
        let random_id: [u8; 8] = fixed("random_id", part(0..8)?)?;
        let seq = u32::from_le_bytes(fixed("out_seq", part(8..12)?)?);
        let in_seq = u32::from_le_bytes(fixed("in_seq", part(12..16)?)?);
        let sent_at_ms = u64::from_le_bytes(fixed("sent_at", part(16..24)?)?);
        if seq < self.recv_low || self.recv_above.contains(&seq) {
            return Err(Error::E2eReplay { seq });
        }
        if in_seq > self.sent {
            return Err(Error::E2eProtocol {
                reason: "peer acknowledges messages never sent",
            });
        }
        let next_expected = self.recv_above.last().map_or(self.recv_low, |m| m + 1);
        let delivery = if seq == next_expected {
            Delivery::InOrder
        } else if seq > next_expected {
            Delivery::AfterGap {
                missing: next_expected..seq,
            }
        } else {
            Delivery::Late
        };
        if seq - self.recv_low > MAX_GAPS as u32 {
            return Err(Error::E2eProtocol {
                reason: "too many missing messages",
            });
        }
        self.recv_above.insert(seq);
        while self.recv_above.first() == Some(&self.recv_low) {
            self.recv_above.pop_first();
            self.recv_low += 1;
        }
        Ok(Received {
            body: part(INNER_HEADER..d.len())?.to_vec(),
            random_id,
            seq,
            sent_at_ms,
            delivery,
        })
    }

    /// Sequence numbers still missing below the highest received.
    pub fn missing(&self) -> Vec<u32> {
        let top = self.recv_above.last().copied().unwrap_or(self.recv_low);
        (self.recv_low..top)
            .filter(|s| !self.recv_above.contains(s))
            .collect()
    }
}
