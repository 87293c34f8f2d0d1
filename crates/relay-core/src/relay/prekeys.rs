//! The prekey calls (`docs/protocol.md` §2.3 `publish_prekeys`, `prekey_bundle`): an upload
//! checked against the caller's identity key published now, and the per-requester budget of
//! one-time prekey hand-outs.

use std::time::Instant;

use mtproto_crypto::IdentityPublic;
use mtproto_session::{
    wire::Bytes,
    x3dh::{OneTimePrekeyPublic, SignedPrekeyPublic},
    ClientId, PrekeyBundle,
};

use super::Relay;
use crate::{
    api::{Call, OneTimePrekeyUpload, SignedPrekeyUpload, MAX_PREKEYS_PER_PUBLISH},
    Op, Outcome, PrekeyUpload, RelayError,
};

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RelayError {
    RelayError::InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// An X25519 public key of an upload: 32 bytes, not a low-order point (which would give
/// every start an all-zero DH output).
fn x25519(field: impl Into<String>, b: &Bytes) -> Result<[u8; 32], RelayError> {
    IdentityPublic::validated(&b.0)
        .map(|k| *k.as_bytes())
        .map_err(|e| {
            invalid(
                field,
                match e {
                    mtproto_crypto::Error::LowOrderPoint => "low-order point",
                    _ => "must be 32 bytes",
                },
            )
        })
}

/// The upload's shape, checked without the state: sizes, counts, key validity.
fn check_shape(
    signing_key: &Bytes,
    signed_prekey: &SignedPrekeyUpload,
    one_time_prekeys: &[OneTimePrekeyUpload],
) -> Result<PrekeyUpload, RelayError> {
    if one_time_prekeys.len() > MAX_PREKEYS_PER_PUBLISH {
        return Err(invalid(
            "one_time_prekeys",
            format!("at most {MAX_PREKEYS_PER_PUBLISH} in one call"),
        ));
    }
    let signing_key = <[u8; 32]>::try_from(signing_key.0.as_slice())
        .map_err(|_| invalid("signing_key", "must be 32 bytes"))?;
    let signature = <[u8; 64]>::try_from(signed_prekey.signature.0.as_slice())
        .map_err(|_| invalid("signed_prekey.signature", "must be 64 bytes"))?;
    let signed_prekey = SignedPrekeyPublic {
        id: signed_prekey.id,
        public: x25519("signed_prekey.public", &signed_prekey.public)?,
        signature,
    };
    let one_time = one_time_prekeys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            Ok(OneTimePrekeyPublic {
                id: k.id,
                public: x25519(format!("one_time_prekeys[{i}].public"), &k.public)?,
            })
        })
        .collect::<Result<_, RelayError>>()?;
    Ok(PrekeyUpload {
        signing_key,
        signed_prekey,
        one_time,
    })
}

impl Relay {
    /// The op of a prekey call, `None` for other calls. A publish is checked (shape first, then
    /// against the caller's identity key as stored now: its signature must verify under
    /// `signing_key` over that key); the engine commits it only if the key is still that
    /// version. A fetch takes a one-time prekey only while the caller's hand-out budget lasts.
    ///
    /// # Errors
    /// 400 `invalid_field` naming the field, 409 `no_identity_key`, 401 `unknown_auth_key`
    /// when the caller's account is gone.
    pub(crate) async fn prekey_op(
        &self,
        call: &Call,
        key_id: [u8; 8],
        client: &ClientId,
    ) -> Result<Option<Op>, RelayError> {
        match call {
            Call::PublishPrekeys {
                signing_key,
                signed_prekey,
                one_time_prekeys,
            } => {
                let prekeys = check_shape(signing_key, signed_prekey, one_time_prekeys)?;
                let me = self
                    .engine
                    .peer(client)
                    .await?
                    .ok_or(RelayError::UnknownAuthKey)?;
                let identity = me.identity_key.ok_or(RelayError::NoIdentityKey)?;
                PrekeyBundle {
                    identity,
                    signing_key: prekeys.signing_key,
                    signed_prekey: prekeys.signed_prekey.clone(),
                    one_time_prekey: None,
                }
                .verify()
                .map_err(|_| {
                    invalid(
                        "signed_prekey.signature",
                        "does not verify under signing_key for the identity key published now",
                    )
                })?;
                Ok(Some(Op::PublishPrekeys {
                    key_version: me.key_version,
                    prekeys,
                }))
            }
            Call::PrekeyBundle { peer } => Ok(Some(Op::TakePrekeyBundle {
                peer: peer.clone(),
                one_time: self.handouts.has_token(key_id, Instant::now()),
            })),
            _ => Ok(None),
        }
    }

    /// Charges `key_id`'s hand-out budget for a committed fetch that took a one-time prekey.
    /// Called under the key's lock, after [`Relay::prekey_op`] saw a token, so one node never
    /// hands out more than the budget.
    pub(crate) fn charge_handout(&self, key_id: [u8; 8], outcome: &Outcome) {
        if let Outcome::PrekeyBundle { bundle, .. } = outcome {
            if bundle.one_time_prekey.is_some() {
                // The token was seen under this key's lock: taking it cannot fail but for a
                // clock step, and then the budget is only a little more generous.
                let _ = self.handouts.admit(key_id, 1, Instant::now());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_upload_names_its_field() {
        let good = Bytes(vec![9; 32]);
        let spk = |public: Bytes, signature: Bytes| SignedPrekeyUpload {
            id: 1,
            public,
            signature,
        };
        let field = |r: Result<PrekeyUpload, RelayError>| match r {
            Err(RelayError::InvalidField { field, .. }) => field,
            other => format!("{other:?}"),
        };
        let sig = Bytes(vec![0; 64]);
        assert_eq!(
            field(check_shape(
                &Bytes(vec![1; 31]),
                &spk(good.clone(), sig.clone()),
                &[]
            )),
            "signing_key"
        );
        assert_eq!(
            field(check_shape(&good, &spk(Bytes(vec![0; 32]), sig.clone()), &[])),
            "signed_prekey.public"
        );
        assert_eq!(
            field(check_shape(&good, &spk(good.clone(), Bytes(vec![0; 63])), &[])),
            "signed_prekey.signature"
        );
        let low = OneTimePrekeyUpload {
            id: 2,
            public: Bytes(vec![0; 32]),
        };
        let fine = OneTimePrekeyUpload {
            id: 1,
            public: good.clone(),
        };
        assert_eq!(
            field(check_shape(
                &good,
                &spk(good.clone(), sig.clone()),
                &[fine.clone(), low]
            )),
            "one_time_prekeys[1].public"
        );
        let many = vec![fine; MAX_PREKEYS_PER_PUBLISH + 1];
        assert_eq!(
            field(check_shape(&good, &spk(good.clone(), sig.clone()), &many)),
            "one_time_prekeys"
        );
        assert!(check_shape(&good, &spk(good.clone(), sig), &many[..MAX_PREKEYS_PER_PUBLISH]).is_ok());
    }
}
