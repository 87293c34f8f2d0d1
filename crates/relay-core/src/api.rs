//! The relay's API bodies: the JSON that carries an envelope over HTTP, and the JSON inside
//! envelopes (what each endpoint does).

use mtproto_session::{
    wire::{Bytes, Hex},
    ClientId,
};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{MailboxEntry, Peer};

/// A 64-bit id given as a JSON number or a decimal string (the original API used strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct U64Field(pub u64);

impl<'de> Deserialize<'de> for U64Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            N(u64),
            S(String),
        }
        match Either::deserialize(d)? {
            Either::N(n) => Ok(Self(n)),
            Either::S(s) => s
                .parse()
                .map(Self)
                .map_err(|_| serde::de::Error::custom("not a 64-bit decimal id")),
        }
    }
}

/// What a client POSTs to an authenticated endpoint: the envelope, as one `packet` or as the
/// original API's parts, plus the original clear fields, which must agree with the envelope.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeRequest {
    /// The whole packet (base64 or byte array).
    pub packet: Option<Bytes>,
    /// The packet's first 8 bytes, hex (with `message_key` and `encrypted_data`).
    pub auth_key_id: Option<Hex>,
    /// MTProto 2.0's 128-bit msg_key (base64 or byte array).
    pub message_key: Option<Bytes>,
    /// The ciphertext (base64 or byte array).
    pub encrypted_data: Option<Bytes>,
    /// Clear, optional: must be the key's client id.
    pub client_id: Option<String>,
    /// Clear, optional (`/secure_message`): must be the envelope's target.
    pub target_peer: Option<String>,
    /// Clear, optional: must be the envelope's msg_id.
    pub message_id: Option<U64Field>,
    /// Clear, optional: must be the envelope's seq_no.
    pub seq_no: Option<u32>,
}

impl EnvelopeRequest {
    /// The packet bytes, from `packet` or from the three parts.
    pub fn packet_bytes(&self) -> Option<Vec<u8>> {
        if let Some(p) = &self.packet {
            return Some(p.0.clone());
        }
        let (id, key, data) = (
            self.auth_key_id.as_ref()?,
            self.message_key.as_ref()?,
            self.encrypted_data.as_ref()?,
        );
        let mut p = Vec::with_capacity(24 + data.0.len());
        p.extend_from_slice(&id.0);
        p.extend_from_slice(&key.0);
        p.extend_from_slice(&data.0);
        Some(p)
    }
}

/// The calls, as the body inside an envelope. `method` binds the body to its endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Call {
    /// `/secure_message`: store an end-to-end packet in `target_peer`'s mailbox.
    SendMessage {
        /// The recipient.
        target_peer: ClientId,
        /// The end-to-end packet (opaque to the relay).
        payload: Bytes,
    },
    /// `/poll_messages`: acknowledge, then fetch (waiting up to `timeout_ms` if empty).
    PollMessages {
        /// Entries to remove from the mailbox: `{"seq", "ts"}` (the entry's `seq` and
        /// `timestamp_ms`), or bare sequence numbers from older clients.
        #[serde(default)]
        ack: Vec<crate::AckRef>,
        /// How long to wait when the mailbox is empty (default 25 s, at most 30 s; 0 = no wait).
        timeout_ms: Option<u64>,
        /// Most entries to return (default and max 100).
        limit: Option<usize>,
    },
    /// `/peers`: the directory, a bounded page at a time. With `names`: those clients (exact,
    /// at most [`MAX_LOOKUP_NAMES`]; unknown ones are left out). Otherwise the clients that
    /// published a key whose names start with `prefix` (empty: all), in name order, after
    /// `after`, at most `limit` (default and max [`MAX_PEERS_PAGE`]); the answer's `next`
    /// continues the listing.
    ListPeers {
        /// Exact names to look up.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        names: Vec<ClientId>,
        /// A name prefix to search for (case-insensitive).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        /// Continue after this name (the previous answer's `next`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<ClientId>,
        /// Most entries in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// `/publish_key`: publish or rotate the X25519 identity key.
    PublishKey {
        /// 32 bytes.
        identity_key: Bytes,
    },
}

impl Call {
    /// `/peers`: the first page of the whole directory.
    pub fn list_peers() -> Self {
        Self::search_peers("", None)
    }

    /// `/peers`: a page of the clients whose names start with `prefix`, after `after`.
    pub fn search_peers(prefix: &str, after: Option<ClientId>) -> Self {
        Self::ListPeers {
            names: Vec::new(),
            prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
            after,
            limit: None,
        }
    }

    /// `/peers`: these exact names.
    pub fn lookup_peers(names: Vec<ClientId>) -> Self {
        Self::ListPeers {
            names,
            prefix: None,
            after: None,
            limit: None,
        }
    }

    /// The endpoint this call belongs to.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Self::SendMessage { .. } => Endpoint::SecureMessage,
            Self::PollMessages { .. } => Endpoint::PollMessages,
            Self::ListPeers { .. } => Endpoint::Peers,
            Self::PublishKey { .. } => Endpoint::PublishKey,
        }
    }
}

/// The authenticated endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /secure_message`.
    SecureMessage,
    /// `POST /poll_messages`.
    PollMessages,
    /// `POST /peers`.
    Peers,
    /// `POST /publish_key`.
    PublishKey,
}

/// The answer to `/secure_message` (inside the envelope; also echoed in clear).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SendAnswer {
    /// The request's msg_id (decimal string, as the original API).
    pub msg_id: String,
    /// The request's seq_no.
    pub seq_no: u32,
    /// `"Message received securely"`.
    pub status: String,
    /// Server time the message was stored, ISO 8601 UTC.
    pub timestamp: String,
    /// The last msg_id the relay accepted from this client (this one).
    pub last_msg_id: String,
    /// The message's sequence number in the recipient's mailbox.
    pub mailbox_seq: u64,
}

/// One entry returned by a poll.
pub type PolledEntry = MailboxEntry;

/// The answer to `/poll_messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PollAnswer {
    /// Entries, oldest first. Acknowledge them in the next poll.
    pub messages: Vec<PolledEntry>,
    /// How many acknowledged entries were removed.
    pub acked: usize,
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

impl From<Peer> for PeerInfo {
    fn from(p: Peer) -> Self {
        let fingerprint = p
            .identity_key
            .map(|k| mtproto_crypto::IdentityPublic::from_bytes(k).short_fingerprint());
        Self {
            client_id: p.client_id,
            identity_key: p.identity_key.map(|k| Bytes(k.to_vec())),
            fingerprint,
            key_version: p.key_version,
            last_seen: p.last_seen,
            registered_at: p.registered_at,
        }
    }
}

/// Most names one `/peers` lookup may ask for.
pub const MAX_LOOKUP_NAMES: usize = 100;
/// Most entries in one `/peers` answer.
pub const MAX_PEERS_PAGE: usize = 50;

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

/// What the HTTP layer sends back for an authenticated endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EnvelopeResponse {
    /// The sealed answer (x = 8); clients trust only this.
    pub packet: Bytes,
    /// For `/secure_message`, the answer's fields in clear too (original API shape).
    #[serde(flatten)]
    pub clear: Option<SendAnswer>,
}

/// Formats unix milliseconds as ISO 8601 UTC (`2026-11-26T04:45:39.123Z`).
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_705_754_876_123), "2024-01-20T12:47:56.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn ids_as_strings_or_numbers() {
        let a: U64Field = serde_json::from_str("\"18446744073709551615\"").unwrap();
        let b: U64Field = serde_json::from_str("7").unwrap();
        assert_eq!((a.0, b.0), (u64::MAX, 7));
        assert!(serde_json::from_str::<U64Field>("\"x\"").is_err());
        assert!(serde_json::from_str::<U64Field>("-1").is_err());
    }
}
