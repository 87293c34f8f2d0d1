//! The answers inside envelopes, the mailbox entry as clients receive it, and acknowledgements.

use mtproto_session::{wire::Bytes, ClientId};
use serde::{Deserialize, Serialize};

/// [`SendAnswer::status`]: the original API's words for a stored message.
pub const STATUS_RECEIVED: &str = "Message received securely";

/// Most names one `/peers` lookup may ask for.
pub const MAX_LOOKUP_NAMES: usize = 100;
/// Most entries in one `/peers` answer.
pub const MAX_PEERS_PAGE: usize = 50;

/// How long (seconds) the relay remembers a committed request's answer: an envelope resent
/// within this time gets the same answer again instead of being stored twice, even past the
/// msg_id time window. A client that resends a possibly-stored envelope must do it within it.
pub const OUTCOME_TTL_SECS: u64 = 3600;

/// [`PolledEntry::expires_at`] of entries that never expire (the relay's notices, removed only
/// by their acknowledgement): 2⁵³ − 1, exact in JavaScript numbers. Any value at or above it
/// means "never".
pub const NEVER_EXPIRES: u64 = (1 << 53) - 1;

/// The answer to `/secure_message` (inside the envelope; also echoed in clear).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SendAnswer {
    /// The request's msg_id (decimal string, as the original API).
    pub msg_id: String,
    /// The request's seq_no.
    pub seq_no: u32,
    /// [`STATUS_RECEIVED`].
    pub status: String,
    /// Server time the message was stored, ISO 8601 UTC ([`crate::iso8601`]).
    pub timestamp: String,
    /// The last msg_id the relay accepted from this client (this one).
    pub last_msg_id: String,
    /// The message's sequence number in the recipient's mailbox.
    pub mailbox_seq: u64,
}

/// What a mailbox entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryKind {
    /// An end-to-end encrypted message from a peer.
    Message,
    /// A notice from the relay: a message this client sent expired before it was delivered.
    Expired {
        /// The recipient that never acknowledged it.
        to: ClientId,
        /// Its sequence number in that recipient's mailbox (not `seq`: the entry has its own).
        message_seq: u64,
    },
}

/// One mailbox entry, as a poll returns it.
///
/// ```
/// let entry: relay_api::PolledEntry = serde_json::from_str(
///     r#"{"seq":7,"from":"alice","kind":"message","payload":"AQI=","timestamp_ms":1800000000123,"expires_at":1800604800}"#,
/// ).unwrap();
/// assert_eq!(entry.payload.0, [1, 2]);
/// assert_eq!(entry.ack(), relay_api::AckRef::new(7, 1_800_000_000_123));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolledEntry {
    /// Increases by one per entry in this mailbox.
    pub seq: u64,
    /// The sender (`relay` for notices).
    pub from: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: EntryKind,
    /// The opaque end-to-end ciphertext (empty for notices).
    pub payload: Bytes,
    /// Server time it was stored, ms since the epoch.
    pub timestamp_ms: u64,
    /// When it expires, unix seconds ([`NEVER_EXPIRES`] for never).
    pub expires_at: u64,
}

impl PolledEntry {
    /// The acknowledgement that removes exactly this entry.
    pub const fn ack(&self) -> AckRef {
        AckRef::new(self.seq, self.timestamp_ms)
    }
}

/// The answer to `/poll_messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollAnswer {
    /// Entries, oldest first. Acknowledge them in the next poll.
    pub messages: Vec<PolledEntry>,
    /// How many acknowledged entries were removed.
    pub acked: usize,
}

/// An acknowledgement: the entry's sequence number and, from current clients, the time it was
/// stored (its `timestamp_ms`). The relay removes an entry only if both match, so an
/// acknowledgement can never remove a different message — even after a storage rollback gave a
/// new message the sequence number of an old one (e.g. Redis with `appendfsync everysec` and a
/// power cut). On the wire: `{"seq": 7, "ts": 1800000000123}`, or the older bare `7`.
///
/// ```
/// use relay_api::AckRef;
/// assert_eq!(serde_json::to_string(&AckRef::new(7, 9)).unwrap(), r#"{"seq":7,"ts":9}"#);
/// assert_eq!(serde_json::from_str::<AckRef>("7").unwrap(), AckRef::from(7));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRef {
    /// The entry's sequence number.
    pub seq: u64,
    /// The entry's `timestamp_ms`; `None` from clients that send bare numbers.
    pub ts: Option<u64>,
}

impl AckRef {
    /// An acknowledgement of the entry `seq` stored at `ts` (ms).
    pub const fn new(seq: u64, ts: u64) -> Self {
        Self { seq, ts: Some(ts) }
    }

    /// Whether it names an entry with this sequence number and store time.
    pub fn matches(&self, seq: u64, timestamp_ms: u64) -> bool {
        self.seq == seq && self.ts.is_none_or(|t| t == timestamp_ms)
    }
}

impl From<u64> for AckRef {
    fn from(seq: u64) -> Self {
        Self { seq, ts: None }
    }
}

impl Serialize for AckRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        match self.ts {
            None => s.serialize_u64(self.seq),
            Some(ts) => {
                let mut st = s.serialize_struct("AckRef", 2)?;
                st.serialize_field("seq", &self.seq)?;
                st.serialize_field("ts", &ts)?;
                st.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for AckRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Bare(u64),
            Full {
                seq: u64,
                #[serde(default)]
                ts: Option<u64>,
            },
        }
        Ok(match Wire::deserialize(d)? {
            Wire::Bare(seq) => Self { seq, ts: None },
            Wire::Full { seq, ts } => Self { seq, ts },
        })
    }
}

/// A directory entry as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The client id.
    pub client_id: ClientId,
    /// The X25519 identity key, base64, once published.
    pub identity_key: Option<Bytes>,
    /// A short fingerprint of the identity key.
    pub fingerprint: Option<String>,
    /// Increments on every key change: clients warn when it moves.
    pub key_version: u32,
    /// Last authenticated request, unix seconds.
    pub last_seen: u64,
    /// Registration time, unix seconds.
    pub registered_at: u64,
}

/// The answer to `/peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersAnswer {
    /// The clients found, in name order.
    pub peers: Vec<PeerInfo>,
    /// When more may follow: pass it as `after` to get the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<ClientId>,
}

/// The answer to `/publish_key`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishAnswer {
    /// Whether the key differs from the one published before.
    pub changed: bool,
    /// The key version now.
    pub key_version: u32,
    /// The key's short fingerprint.
    pub fingerprint: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_match_sequence_and_time() {
        assert!(AckRef::new(3, 10).matches(3, 10));
        assert!(!AckRef::new(3, 10).matches(3, 11));
        assert!(AckRef::from(3).matches(3, 11));
        assert!(!AckRef::from(3).matches(4, 11));
        let parsed: AckRef = serde_json::from_str(r#"{"seq":3}"#).unwrap();
        assert_eq!(parsed, AckRef::from(3));
        assert!(serde_json::from_str::<AckRef>("-1").is_err());
    }

    #[test]
    fn never_is_exact_in_a_double() {
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let round_trip = NEVER_EXPIRES as f64 as u64;
        assert_eq!(round_trip, NEVER_EXPIRES);
    }
}
