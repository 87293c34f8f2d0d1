//! The prekey calls' wire types (`/publish_prekeys`, `/prekey_bundle`; `docs/protocol.md` §2.3)
//! and their bounds.
//!
//! What a client uploads is given as plain binary fields ([`Bytes`]) so that the relay can name
//! the field a bad length or a bad key is in; the relay turns a checked upload into
//! `mtproto-session`'s typed [`SignedPrekeyPublic`] and [`OneTimePrekeyPublic`], and hands out
//! its typed [`PrekeyBundle`].
//!
//! ```
//! use relay_api::{Call, Endpoint, OneTimePrekeyUpload, SignedPrekeyUpload};
//! use mtproto_session::wire::Bytes;
//!
//! let call = Call::PublishPrekeys {
//!     signing_key: Bytes(vec![7; 32]),
//!     signed_prekey: SignedPrekeyUpload { id: 1, public: Bytes(vec![9; 32]), signature: Bytes(vec![0; 64]) },
//!     one_time_prekeys: vec![OneTimePrekeyUpload { id: 2, public: Bytes(vec![9; 32]) }],
//! };
//! assert_eq!(call.endpoint(), Endpoint::PublishPrekeys);
//! let json = serde_json::to_string(&call).unwrap();
//! assert!(json.starts_with(r#"{"method":"publish_prekeys","signing_key":"BwcH"#));
//! ```

use mtproto_session::{
    wire::Bytes,
    x3dh::{OneTimePrekeyPublic, SignedPrekeyPublic},
    PrekeyBundle,
};
use serde::{Deserialize, Serialize};

/// Most one-time prekeys the relay holds for one account. A publish that would go over it is
/// refused whole ([`crate::ErrorCode::PrekeyQuota`]); the client publishes fewer or waits until
/// some were handed out. The same bound as the client's own store
/// ([`mtproto_session::x3dh::MAX_ONE_TIME_PREKEYS`]).
pub const MAX_ONE_TIME_PREKEYS: usize = mtproto_session::x3dh::MAX_ONE_TIME_PREKEYS;

/// Most one-time prekeys in one `/publish_prekeys` call (more: 400 `invalid_field`).
pub const MAX_PREKEYS_PER_PUBLISH: usize = 100;

/// A signed prekey as a client uploads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPrekeyUpload {
    /// Its id (a start message names it).
    pub id: u32,
    /// The X25519 public key, 32 bytes, not a low-order point.
    pub public: Bytes,
    /// 64 bytes: Ed25519 by the signing key over
    /// `"mtproto-relay/signed-prekey/v1" ‖ IK (32) ‖ id (4, LE) ‖ public (32)`, where `IK` is the
    /// account's identity key published now.
    pub signature: Bytes,
}

impl From<&SignedPrekeyPublic> for SignedPrekeyUpload {
    fn from(s: &SignedPrekeyPublic) -> Self {
        Self {
            id: s.id,
            public: Bytes(s.public.to_vec()),
            signature: Bytes(s.signature.to_vec()),
        }
    }
}

/// A one-time prekey as a client uploads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneTimePrekeyUpload {
    /// Its id, unique among the account's one-time prekeys (an id the relay holds already is
    /// kept as it is; the copy in the upload is ignored).
    pub id: u32,
    /// The X25519 public key, 32 bytes, not a low-order point.
    pub public: Bytes,
}

impl From<&OneTimePrekeyPublic> for OneTimePrekeyUpload {
    fn from(k: &OneTimePrekeyPublic) -> Self {
        Self {
            id: k.id,
            public: Bytes(k.public.to_vec()),
        }
    }
}

/// The answer to `/publish_prekeys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishPrekeysAnswer {
    /// How many of the caller's one-time prekeys the relay holds now (after this publish): the
    /// client publishes more when it runs low.
    pub one_time_prekeys: usize,
}

/// The answer to `/prekey_bundle`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyBundleAnswer {
    /// The peer's identity key, signing key, signed prekey and at most one one-time prekey
    /// (`null` when the peer has none left or the caller's hand-out budget is spent). The
    /// client checks it ([`PrekeyBundle::verify`], and that `identity` is the key it knows for
    /// the peer) before starting.
    pub bundle: PrekeyBundle,
    /// The peer's `key_version` (as in `/peers`) of the identity key in the bundle.
    pub key_version: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_refuse_unknown_fields_and_answers_round_trip() {
        assert!(serde_json::from_str::<OneTimePrekeyUpload>(r#"{"id":1,"public":"AA==","x":0}"#).is_err());
        let up: SignedPrekeyUpload =
            serde_json::from_str(r#"{"id":3,"public":[1,2],"signature":"AQI="}"#).unwrap();
        assert_eq!(
            (up.id, up.public.0.as_slice(), up.signature.0.as_slice()),
            (3, &[1u8, 2][..], &[1u8, 2][..])
        );
        let answer = PrekeyBundleAnswer {
            bundle: PrekeyBundle {
                identity: [1; 32],
                signing_key: [2; 32],
                signed_prekey: SignedPrekeyPublic {
                    id: 1,
                    public: [3; 32],
                    signature: [4; 64],
                },
                one_time_prekey: None,
            },
            key_version: 2,
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert!(json.contains(r#""one_time_prekey":null"#), "{json}");
        assert_eq!(serde_json::from_str::<PrekeyBundleAnswer>(&json).unwrap(), answer);
        assert_eq!(
            serde_json::to_string(&PublishPrekeysAnswer { one_time_prekeys: 7 }).unwrap(),
            r#"{"one_time_prekeys":7}"#
        );
    }
}
