//! Prekeys on Redis (the rule of [`crate::prekeys::StoredPrekeys`], in the scripts).
//!
//! A publish is an op of the commit script (`prekeys`): everything is in the publisher's slot.
//! A bundle fetch spans two users, so it runs as a send on Cluster does, in two steps, on a
//! single Redis too: `TAKE_PREKEY` in the peer's slot checks the peer's prekeys, pops one
//! one-time prekey (`LPOP`: atomic, so no two fetches on any nodes get the same one) and
//! records what it handed out under a marker keyed by the requester's key and msg_id; then the
//! requester's commit stores that as the request's outcome. If the commit loses its
//! compare-and-swap, the relay runs the fetch again and the marker answers the same bundle:
//! one one-time prekey per request, however often it is retried.

#[allow(clippy::wildcard_imports)] // the engine's own imports and its other parts
use super::*;

use mtproto_session::{
    wire::Bytes,
    x3dh::{OneTimePrekeyPublic, SignedPrekeyPublic},
    PrekeyBundle,
};
use serde::{Deserialize, Serialize};

use crate::PrekeyUpload;

/// The prekey hash's `signed` field.
#[derive(Serialize, Deserialize)]
struct SignedRecord {
    signing_key: Bytes,
    signed_prekey: SignedPrekeyPublic,
}

/// What `TAKE_PREKEY` answers.
#[derive(Deserialize)]
struct Taken {
    kv: u32,
    key: String,
    signed: SignedRecord,
    otp: Option<OneTimePrekeyPublic>,
}

/// The commit script's arguments for a publish (see `COMMIT`).
pub(super) fn prekey_args(key_version: u32, p: &PrekeyUpload) -> Result<Vec<String>, EngineError> {
    let signed = SignedRecord {
        signing_key: Bytes(p.signing_key.to_vec()),
        signed_prekey: p.signed_prekey.clone(),
    };
    let mut args = Vec::with_capacity(3 + p.one_time.len());
    args.push(key_version.to_string());
    args.push(serde_json::to_string(&signed).map_err(storage)?);
    args.push(relay_api::MAX_ONE_TIME_PREKEYS.to_string());
    for k in &p.one_time {
        args.push(serde_json::to_string(k).map_err(storage)?);
    }
    Ok(args)
}

fn array32(bytes: &[u8]) -> Result<[u8; 32], EngineError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| storage("a stored key is not 32 bytes"))
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .filter_map(|i| {
            h.get(2 * i..2 * i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
        })
        .collect()
}

impl RedisEngine {
    /// A bundle fetch (see the module docs): the take in `peer`'s slot, then the requester's
    /// commit.
    pub(super) async fn commit_bundle(
        &self,
        c: &Commit,
        peer: &ClientId,
        one_time: bool,
    ) -> Result<Outcome, EngineError> {
        let peer = peer.as_str();
        let marker = self.u(peer, &format!("ptake:{}:{}", c.key_id.to_hex(), c.msg_id));
        let mut conn = self.trip();
        let raw: String = self
            .scripts
            .take_prekey
            .key(self.u(peer, "peer"))
            .key(self.u(peer, "pk"))
            .key(self.u(peer, "otp"))
            .key(marker)
            .arg(if one_time { "1" } else { "0" })
            .arg(OUTCOME_TTL_SECS)
            .invoke_async(&mut conn)
            .await
            .map_err(script_error)?;
        let taken: Taken = serde_json::from_str(&raw).map_err(storage)?;
        let outcome = Outcome::PrekeyBundle {
            bundle: PrekeyBundle {
                identity: array32(&unhex(&taken.key))?,
                signing_key: array32(&taken.signed.signing_key.0)?,
                signed_prekey: taken.signed.signed_prekey,
                one_time_prekey: taken.otp,
            },
            key_version: taken.kv,
        };
        let json = serde_json::to_string(&outcome).map_err(storage)?;
        to_outcome(&self.run_commit(c, ScriptOp::Bundle(&json), 0).await?)
    }
}
