//! The JSON that carries an envelope over HTTP, and the calls inside envelopes.

use mtproto_session::{
    wire::{Bytes, Hex},
    ClientId,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::answers::{AckRef, SendAnswer};
use crate::prekeys::{OneTimePrekeyUpload, SignedPrekeyUpload};

/// A 64-bit id given as a JSON number or a decimal string (the original API used strings);
/// written as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct U64Field(pub u64);

impl Serialize for U64Field {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

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
///
/// ```
/// let body = relay_api::EnvelopeRequest::packet(vec![1, 2, 3]);
/// assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"packet":"AQID"}"#);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeRequest {
    /// The whole packet (base64 or byte array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet: Option<Bytes>,
    /// The packet's first 8 bytes, hex (with `message_key` and `encrypted_data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_key_id: Option<Hex>,
    /// MTProto 2.0's 128-bit msg_key (base64 or byte array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_key: Option<Bytes>,
    /// The ciphertext (base64 or byte array).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_data: Option<Bytes>,
    /// Clear, optional: must be the key's client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Clear, optional (`/secure_message`): must be the envelope's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_peer: Option<String>,
    /// Clear, optional: must be the envelope's msg_id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<U64Field>,
    /// Clear, optional: must be the envelope's seq_no.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_no: Option<u32>,
}

impl EnvelopeRequest {
    /// A request that carries the whole packet and nothing else.
    pub fn packet(packet: Vec<u8>) -> Self {
        Self {
            packet: Some(Bytes(packet)),
            ..Self::default()
        }
    }

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

/// What the relay answers on an authenticated endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeResponse {
    /// The sealed answer (x = 8); clients trust only this.
    pub packet: Bytes,
    /// For `/secure_message`, the answer's fields in clear too (original API shape).
    #[serde(flatten)]
    pub clear: Option<SendAnswer>,
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
        /// The recipient's `key_version` (from `/peers`) that the packet was sealed for. When
        /// given, the relay stores the message only if the recipient's key is still that
        /// version, checked atomically with the append; otherwise it refuses with
        /// [`crate::ErrorCode::PeerKeyChanged`] and stores nothing — so a message is never
        /// stored under a key its recipient has replaced.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_version: Option<u32>,
    },
    /// `/poll_messages`: acknowledge, then fetch (waiting up to `timeout_ms` if empty).
    PollMessages {
        /// Entries to remove from the mailbox: `{"seq", "ts"}` (the entry's `seq` and
        /// `timestamp_ms`), or bare sequence numbers from older clients.
        #[serde(default)]
        ack: Vec<AckRef>,
        /// How long to wait when the mailbox is empty (default 25 s, at most 30 s; 0 = no wait).
        timeout_ms: Option<u64>,
        /// Most entries to return (default and max 100).
        limit: Option<usize>,
    },
    /// `/peers`: the directory, a bounded page at a time. With `names`: those clients (exact,
    /// at most [`crate::MAX_LOOKUP_NAMES`]; unknown ones are left out). Otherwise the clients
    /// that published a key whose names start with `prefix` (empty: all), in name order, after
    /// `after`, at most `limit` (default and max [`crate::MAX_PEERS_PAGE`]); the answer's
    /// `next` continues the listing.
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
    /// `/publish_prekeys`: publish (replace) the signed prekey and add one-time prekeys, for
    /// the identity key published now. An empty `one_time_prekeys` only replaces the signed
    /// prekey and asks how many one-time prekeys the relay holds.
    PublishPrekeys {
        /// The Ed25519 identity signing key (32 bytes) the signed prekey's signature verifies
        /// under.
        signing_key: Bytes,
        /// The signed prekey: replaces the one published before.
        signed_prekey: SignedPrekeyUpload,
        /// One-time prekeys to add, at most [`crate::MAX_PREKEYS_PER_PUBLISH`]; the relay holds
        /// at most [`crate::MAX_ONE_TIME_PREKEYS`] in all.
        #[serde(default)]
        one_time_prekeys: Vec<OneTimePrekeyUpload>,
    },
    /// `/prekey_bundle`: a peer's prekey bundle, with at most one of its one-time prekeys,
    /// which the relay then never hands out again.
    PrekeyBundle {
        /// The peer.
        peer: ClientId,
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
            Self::PublishPrekeys { .. } => Endpoint::PublishPrekeys,
            Self::PrekeyBundle { .. } => Endpoint::PrekeyBundle,
        }
    }
}

/// The authenticated endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /secure_message`.
    SecureMessage,
    /// `POST /poll_messages`.
    PollMessages,
    /// `POST /peers`.
    Peers,
    /// `POST /publish_key`.
    PublishKey,
    /// `POST /publish_prekeys`.
    PublishPrekeys,
    /// `POST /prekey_bundle`.
    PrekeyBundle,
}

impl Endpoint {
    /// Every authenticated endpoint.
    pub const ALL: [Self; 6] = [
        Self::SecureMessage,
        Self::PollMessages,
        Self::Peers,
        Self::PublishKey,
        Self::PublishPrekeys,
        Self::PrekeyBundle,
    ];

    /// Its HTTP path.
    pub const fn path(self) -> &'static str {
        match self {
            Self::SecureMessage => "/secure_message",
            Self::PollMessages => "/poll_messages",
            Self::Peers => "/peers",
            Self::PublishKey => "/publish_key",
            Self::PublishPrekeys => "/publish_prekeys",
            Self::PrekeyBundle => "/prekey_bundle",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_as_strings_or_numbers() {
        let a: U64Field = serde_json::from_str("\"18446744073709551615\"").unwrap();
        let b: U64Field = serde_json::from_str("7").unwrap();
        assert_eq!((a.0, b.0), (u64::MAX, 7));
        assert!(serde_json::from_str::<U64Field>("\"x\"").is_err());
        assert!(serde_json::from_str::<U64Field>("-1").is_err());
        assert_eq!(serde_json::to_string(&a).unwrap(), "18446744073709551615");
    }

    #[test]
    fn a_request_round_trips_and_its_parts_make_the_packet() {
        let parts: EnvelopeRequest = serde_json::from_str(
            r#"{"auth_key_id":"0102030405060708","message_key":"AAAAAAAAAAAAAAAAAAAAAA==","encrypted_data":[9,9],"message_id":"5"}"#,
        )
        .unwrap();
        let packet = parts.packet_bytes().unwrap();
        assert_eq!(packet.len(), 8 + 16 + 2);
        assert_eq!(&packet[..8], [1, 2, 3, 4, 5, 6, 7, 8]);
        let again: EnvelopeRequest = serde_json::from_str(&serde_json::to_string(&parts).unwrap()).unwrap();
        assert_eq!(again.packet_bytes(), Some(packet));
        assert_eq!(again.message_id, Some(U64Field(5)));
        assert!(serde_json::from_str::<EnvelopeRequest>(r#"{"packet":"AA==","extra":1}"#).is_err());
    }

    #[test]
    fn every_call_names_its_endpoint_and_round_trips() {
        let calls = [
            Call::SendMessage {
                target_peer: ClientId::new("bob").unwrap(),
                payload: Bytes(vec![1]),
                key_version: Some(2),
            },
            Call::PollMessages {
                ack: vec![AckRef::new(1, 2), AckRef::from(3)],
                timeout_ms: Some(0),
                limit: None,
            },
            Call::lookup_peers(vec![ClientId::new("bob").unwrap()]),
            Call::PublishKey {
                identity_key: Bytes(vec![0; 32]),
            },
            Call::PublishPrekeys {
                signing_key: Bytes(vec![1; 32]),
                signed_prekey: SignedPrekeyUpload {
                    id: 1,
                    public: Bytes(vec![2; 32]),
                    signature: Bytes(vec![3; 64]),
                },
                one_time_prekeys: vec![OneTimePrekeyUpload {
                    id: 2,
                    public: Bytes(vec![4; 32]),
                }],
            },
            Call::PrekeyBundle {
                peer: ClientId::new("bob").unwrap(),
            },
        ];
        for (call, endpoint) in calls.iter().zip(Endpoint::ALL) {
            assert_eq!(call.endpoint(), endpoint);
            let json = serde_json::to_string(call).unwrap();
            let back: Call = serde_json::from_str(&json).unwrap();
            assert_eq!(back.endpoint(), endpoint);
            assert_eq!(serde_json::to_string(&back).unwrap(), json);
        }
        assert_eq!(
            Endpoint::ALL.map(Endpoint::path),
            [
                "/secure_message",
                "/poll_messages",
                "/peers",
                "/publish_key",
                "/publish_prekeys",
                "/prekey_bundle"
            ]
        );
        // An unknown field inside an upload is refused like one in the call.
        let nested = r#"{"method":"publish_prekeys","signing_key":"AA==","signed_prekey":{"id":1,"public":"AA==","signature":"AA==","extra":1}}"#;
        assert!(serde_json::from_str::<Call>(nested).is_err());
        let bare = r#"{"method":"publish_prekeys","signing_key":"AA==","signed_prekey":{"id":1,"public":"AA==","signature":"AA=="}}"#;
        assert!(matches!(
            serde_json::from_str::<Call>(bare).unwrap(),
            Call::PublishPrekeys { one_time_prekeys, .. } if one_time_prekeys.is_empty()
        ));
    }

    #[test]
    fn a_response_with_and_without_clear_fields() {
        let plain: EnvelopeResponse = serde_json::from_str(r#"{"packet":"AQ=="}"#).unwrap();
        assert!(plain.clear.is_none());
        let sent: EnvelopeResponse = serde_json::from_str(
            r#"{"packet":"AQ==","msg_id":"1","seq_no":1,"status":"Message received securely","timestamp":"t","last_msg_id":"1","mailbox_seq":4}"#,
        )
        .unwrap();
        assert_eq!(sent.clear.map(|c| c.mailbox_seq), Some(4));
    }
}
