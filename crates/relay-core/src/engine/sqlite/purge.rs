//! The purges: unused accounts, and expired handshakes, outcomes and messages (each expired
//! message tells its sender with an `expired` notice). Run inside the writer's transaction.

use super::*;

/// Removes up to `max` accounts that `policy` says are unused and whose mailbox is empty, with
/// their sessions, prekeys and quota counters; returns their auth key ids.
pub(super) fn accounts(
    c: &Connection,
    now: UnixTime,
    policy: AccountExpiry,
    max: usize,
) -> Result<Vec<AuthKeyId>, EngineError> {
    let secs = now.as_secs();
    let unpublished = as_i64(secs.saturating_sub(policy.unpublished_secs));
    let idle = as_i64(secs.saturating_sub(policy.idle_secs));
    let names: Vec<String> = c
        .prepare_cached(
            "SELECT client_id FROM peers WHERE mailbox_count = 0 AND \
                 ((identity_key IS NULL AND registered_at <= ?1) OR last_seen <= ?2) LIMIT ?3",
        )
        .map_err(storage)?
        .query_map(params![unpublished, idle, as_i64(max as u64)], |r| r.get(0))
        .map_err(storage)?
        .collect::<Result<_, _>>()
        .map_err(storage)?;
    let mut keys = Vec::new();
    for name in names {
        let key: Option<Vec<u8>> = c
            .query_row(
                "DELETE FROM auth_keys WHERE client_id = ?1 RETURNING key_id",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(storage)?;
        c.execute("DELETE FROM peers WHERE client_id = ?1", params![name])
            .map_err(storage)?;
        c.execute("DELETE FROM senders WHERE recipient = ?1", params![name])
            .map_err(storage)?;
        c.execute("DELETE FROM prekeys WHERE client_id = ?1", params![name])
            .map_err(storage)?;
        if let Some(key) = key {
            c.execute("DELETE FROM sessions WHERE key_id = ?1", params![key])
                .map_err(storage)?;
            // Its outcomes go with the hourly purge: no one holds the key to ask for them.
            keys.extend(AuthKeyId::from_slice(key.as_slice()).ok());
        }
    }
    Ok(keys)
}

/// Removes expired pending handshakes, outcomes and messages; returns the senders told that a
/// message of theirs expired.
pub(super) fn expired(c: &Connection, now: UnixTime) -> Result<Vec<ClientId>, EngineError> {
    let secs = as_i64(now.as_secs());
    expired_handshakes(c, now)?;
    // msg_ids carry the client's clock, which the session holds within minutes of ours.
    let oldest = now.as_secs().saturating_sub(OUTCOME_TTL_SECS) << 32;
    c.execute("DELETE FROM outcomes WHERE msg_id < ?1", params![as_i64(oldest)])
        .map_err(storage)?;
    let mut stmt = c
            .prepare(
                "DELETE FROM mailbox WHERE expires_at <= ?1 RETURNING recipient, seq, sender, kind, LENGTH(payload)",
            )
            .map_err(storage)?;
    let rows: Vec<(String, i64, String, String, i64)> = stmt
        .query_map(params![secs], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(storage)?
        .collect::<Result<_, _>>()
        .map_err(storage)?;
    drop(stmt);
    let mut per_recipient: std::collections::BTreeMap<&str, Vec<(String, i64, bool)>> =
        std::collections::BTreeMap::new();
    for (to, _, from, kind, len) in &rows {
        let message = matches!(from_json::<EntryKind>(kind), Ok(EntryKind::Message));
        per_recipient
            .entry(to.as_str())
            .or_default()
            .push((from.clone(), *len, message));
    }
    for (to, removed) in &per_recipient {
        uncount(c, to, removed)?;
    }
    let mut notified = Vec::new();
    for (to, seq, from, kind, _) in rows {
        if !matches!(from_json::<EntryKind>(&kind), Ok(EntryKind::Message)) {
            continue;
        }
        let (Ok(sender), Ok(to)) = (ClientId::new(&from), ClientId::new(&to)) else {
            continue;
        };
        let notice = EntryKind::Expired {
            to,
            message_seq: as_u64(seq),
        };
        // A sender that is not (or no longer) registered has no mailbox to tell.
        let seq = match reserve(c, sender.as_str(), RELAY_SENDER, 0, None, None) {
            Ok(seq) => seq,
            Err(EngineError::UnknownPeer) => continue,
            Err(e) => return Err(e),
        };
        insert_entry(
            c,
            sender.as_str(),
            seq,
            RELAY_SENDER,
            &notice,
            &[],
            (now, NEVER_EXPIRES),
        )?;
        notified.push(sender);
    }
    Ok(notified)
}

/// Removes the pending handshakes older than `HANDSHAKE_TTL_SECS`.
pub(super) fn expired_handshakes(c: &Connection, now: UnixTime) -> Result<(), EngineError> {
    let cutoff = now
        .as_secs()
        .saturating_sub(mtproto_session::handshake::HANDSHAKE_TTL_SECS);
    c.execute(
        "DELETE FROM pending WHERE created_at <= ?1",
        params![as_i64(cutoff)],
    )
    .map_err(storage)?;
    Ok(())
}
