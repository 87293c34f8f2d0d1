//! The prekey ops inside the writer's transaction: planned (every refusal) before the commit's
//! session compare-and-swap, written after it. The rule is [`StoredPrekeys`]'s.

use super::*;
use crate::prekeys::StoredPrekeys;

/// What a prekey op will write (the account, its new record; `None`: nothing changes) and its
/// outcome.
pub(super) type Planned = (Option<(String, StoredPrekeys)>, Outcome);

/// Plans a prekey op of `cm` without writing; `None` for the other ops.
///
/// # Errors
/// The op's refusals ([`EngineError::NoIdentityKey`], [`EngineError::PrekeyQuota`],
/// [`EngineError::UnknownPeer`], [`EngineError::NoPrekeys`], [`EngineError::Conflict`]).
pub(super) fn plan(c: &Connection, cm: &Commit) -> Result<Option<Planned>, EngineError> {
    Ok(Some(match &cm.op {
        Op::PublishPrekeys { key_version, prekeys } => {
            let me = cm.client.as_str();
            let (peer, _) = get_peer(c, me)?.ok_or(EngineError::UnknownPeer)?;
            let identity = peer.identity_key.ok_or(EngineError::NoIdentityKey)?;
            if peer.key_version != *key_version {
                return Err(EngineError::Conflict);
            }
            let stored = StoredPrekeys::publish(read(c, me)?, (identity, *key_version), prekeys)?;
            let one_time_prekeys = stored.one_time.len();
            (
                Some((me.to_owned(), stored)),
                Outcome::PrekeysPublished { one_time_prekeys },
            )
        }
        Op::TakePrekeyBundle { peer, one_time } => {
            let (owner, _) = get_peer(c, peer.as_str())?.ok_or(EngineError::UnknownPeer)?;
            let mut stored = read(c, peer.as_str())?.ok_or(EngineError::NoPrekeys)?;
            let (bundle, key_version) = stored.hand_out(&owner, *one_time)?;
            let took = bundle.one_time_prekey.is_some();
            (
                took.then(|| (peer.as_str().to_owned(), stored)),
                Outcome::PrekeyBundle { bundle, key_version },
            )
        }
        _ => return Ok(None),
    }))
}

/// `client`'s stored prekeys.
fn read(c: &Connection, client: &str) -> Result<Option<StoredPrekeys>, EngineError> {
    json_row(
        c,
        "SELECT data FROM prekeys WHERE client_id = ?1",
        params![client],
    )
}

/// Stores what [`plan`] planned.
pub(super) fn write(c: &Connection, planned: Option<&(String, StoredPrekeys)>) -> Result<(), EngineError> {
    if let Some((client, stored)) = planned {
        c.prepare_cached("INSERT OR REPLACE INTO prekeys (client_id, data) VALUES (?1, ?2)")
            .map_err(storage)?
            .execute(params![client, to_json(stored)?.as_str()])
            .map_err(storage)?;
    }
    Ok(())
}
