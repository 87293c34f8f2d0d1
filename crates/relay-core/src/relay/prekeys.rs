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
use crate::error::invalid;
use crate::{
    api::{Call, OneTimePrekeyUpload, SignedPrekeyUpload, MAX_PREKEYS_PER_PUBLISH},
    Op, PrekeyUpload, RelayError,
};

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
    let signing_key = *mtproto_crypto::IdentitySigningPublic::validated(&signing_key.0)
        .map_err(|e| {
            invalid(
                "signing_key",
                match e {
                    mtproto_crypto::Error::InvalidLength { .. } => "must be 32 bytes",
                    _ => "not an Ed25519 public key of large order",
                },
            )
        })?
        .as_bytes();
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
    pub(crate) async fn prekey_op(&self, call: &Call, client: &ClientId) -> Result<Option<Op>, RelayError> {
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
            Call::PrekeyBundle { peer } => {
                // Both budgets are paid before the commit, whatever becomes of it: a fetch whose
                // commit loses a race after its one-time prekey was taken (on Redis the take
                // comes first, in the peer's slot) is paid for like one that succeeded, so
                // failed fetches cannot drain a peer for free (review of issue 15, finding 1).
                // The requester's budget first: an exhausted requester spends nothing of the
                // peer's.
                let now = Instant::now();
                let one_time = self.config.prekey_handouts.burst > 0
                    && self.config.prekey_handouts_per_target.burst > 0
                    && self.handouts.admit(name_key(client), 1, now).is_ok()
                    && self.target_handouts.admit(name_key(peer), 1, now).is_ok();
                Ok(Some(Op::TakePrekeyBundle {
                    peer: peer.clone(),
                    one_time,
                }))
            }
            _ => Ok(None),
        }
    }
}

/// The bucket key of an account's name in the hand-out budgets: per account, not per auth key
/// (a recovery or a new handshake does not refill it). 64 bits of SHA-256, so no name can
/// be chosen to share another's bucket.
fn name_key(client: &ClientId) -> [u8; 8] {
    let h = mtproto_crypto::kdf::sha256(&[b"mtproto-relay/prekey-budget/v1", client.as_str().as_bytes()]);
    let mut k = [0u8; 8];
    k.copy_from_slice(h.get(..8).unwrap_or(&[0; 8]));
    k
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_upload_names_its_field() {
        let good = Bytes(vec![9; 32]);
        let signer = Bytes(
            mtproto_crypto::IdentitySigningKey::from_seed([1; 32])
                .public()
                .as_bytes()
                .to_vec(),
        );
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
        // Not a point, and a small-order point (the identity): named as the signing key.
        let mut identity_point = vec![0; 32];
        identity_point[0] = 1;
        for bad in [vec![0xff; 32], identity_point] {
            assert_eq!(
                field(check_shape(&Bytes(bad), &spk(good.clone(), sig.clone()), &[])),
                "signing_key"
            );
        }
        assert_eq!(
            field(check_shape(&signer, &spk(Bytes(vec![0; 32]), sig.clone()), &[])),
            "signed_prekey.public"
        );
        assert_eq!(
            field(check_shape(&signer, &spk(good.clone(), Bytes(vec![0; 63])), &[])),
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
                &signer,
                &spk(good.clone(), sig.clone()),
                &[fine.clone(), low]
            )),
            "one_time_prekeys[1].public"
        );
        let many = vec![fine; MAX_PREKEYS_PER_PUBLISH + 1];
        assert_eq!(
            field(check_shape(&signer, &spk(good.clone(), sig.clone()), &many)),
            "one_time_prekeys"
        );
        assert!(check_shape(&signer, &spk(good.clone(), sig), &many[..MAX_PREKEYS_PER_PUBLISH]).is_ok());
    }
}
