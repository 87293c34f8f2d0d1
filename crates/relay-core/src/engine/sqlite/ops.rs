//! The operations inside the writer's transaction: reads, refusals before any write, commits.

use super::*;

pub(super) fn storage<E: std::fmt::Display>(e: E) -> EngineError {
    EngineError::Storage(e.to_string())
}

/// JSON of a record; wiped when dropped, because auth keys and handshake secrets pass through.
pub(super) fn to_json<T: Serialize>(v: &T) -> Result<Zeroizing<String>, EngineError> {
    serde_json::to_string(v).map(Zeroizing::new).map_err(storage)
}

pub(super) fn from_json<T: DeserializeOwned>(s: &str) -> Result<T, EngineError> {
    serde_json::from_str(s).map_err(storage)
}

/// The key id that holds `client`'s name, if any (checked by registration and recovery).
pub(super) fn owner_key_id(c: &Connection, client: &ClientId) -> Result<Option<Vec<u8>>, EngineError> {
    c.query_row(
        "SELECT key_id FROM auth_keys WHERE client_id = ?1",
        params![client.as_str()],
        |r| r.get(0),
    )
    .optional()
    .map_err(storage)
}

/// One JSON column of at most one row, parsed.
pub(super) fn json_row<T: DeserializeOwned>(
    c: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Option<T>, EngineError> {
    let data: Option<Zeroizing<String>> = c
        .prepare_cached(sql)
        .map_err(storage)?
        .query_row(args, |r| r.get::<_, String>(0).map(Zeroizing::new))
        .optional()
        .map_err(storage)?;
    data.map(|d| from_json(&d)).transpose()
}

pub(super) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn as_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn get_peer(conn: &Connection, client: &str) -> Result<Option<(Peer, u64)>, EngineError> {
    conn.prepare_cached(
        "SELECT client_id, identity_key, key_version, registered_at, last_seen, next_seq FROM peers WHERE client_id = ?1",
    )
    .map_err(storage)?
    .query_row(
        params![client],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<Vec<u8>>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        },
    )
    .optional()
    .map_err(storage)?
    .map(row_to_peer)
    .transpose()
}

pub(super) type PeerRow = (String, Option<Vec<u8>>, i64, i64, i64, i64);

pub(super) fn row_to_peer(
    (id, key, version, registered, seen, next): PeerRow,
) -> Result<(Peer, u64), EngineError> {
    let client_id = ClientId::new(&id).map_err(storage)?;
    let identity_key = match key {
        Some(k) => Some(<[u8; 32]>::try_from(k.as_slice()).map_err(storage)?),
        None => None,
    };
    Ok((
        Peer {
            client_id,
            identity_key,
            key_version: u32::try_from(version).unwrap_or(0),
            registered_at: as_u64(registered),
            last_seen: as_u64(seen),
        },
        as_u64(next),
    ))
}

/// Takes the next sequence number of `to`'s mailbox for an entry of `len` payload bytes from
/// `from`, counting it, unless a quota refuses it, `to` is unknown or its key is not
/// `key_version` (when given) — then nothing is written and the refusal is returned. The key
/// check is part of the same UPDATE, so an accepted send costs no extra read. `quota: None`
/// (relay notices) counts against nothing.
pub(super) fn reserve(
    conn: &Connection,
    to: &str,
    from: &str,
    len: usize,
    quota: Option<&SendQuota>,
    key_version: Option<u32>,
) -> Result<i64, EngineError> {
    if let Some(q) = quota {
        let (count, bytes): (i64, i64) = conn
            .prepare_cached("SELECT count, bytes FROM senders WHERE recipient = ?1 AND sender = ?2")
            .map_err(storage)?
            .query_row(params![to, from], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(storage)?
            .unwrap_or((0, 0));
        if as_u64(count) >= q.sender_entries as u64
            || as_u64(bytes).saturating_add(len as u64) > q.sender_bytes
        {
            return Err(refusal(conn, to, key_version, EngineError::SenderQuota)?);
        }
    }
    let (max_entries, max_bytes) = quota.map_or((u64::MAX / 2, u64::MAX / 2), |q| {
        (q.mailbox_entries as u64, q.mailbox_bytes)
    });
    let len = as_i64(len as u64);
    let seq: Option<i64> = conn
        .prepare_cached(
            "UPDATE peers SET next_seq = next_seq + 1, mailbox_count = mailbox_count + 1, \
             mailbox_bytes = mailbox_bytes + ?3 \
             WHERE client_id = ?1 AND mailbox_count < ?2 AND mailbox_bytes + ?3 <= ?4 \
             AND (?5 IS NULL OR key_version = ?5) RETURNING next_seq",
        )
        .map_err(storage)?
        .query_row(
            params![
                to,
                as_i64(max_entries),
                len,
                as_i64(max_bytes),
                key_version.map(i64::from)
            ],
            |r| r.get(0),
        )
        .optional()
        .map_err(storage)?;
    match (seq, quota) {
        (Some(seq), _) => Ok(seq),
        // Tell the refusals apart (the rare path).
        (None, Some(q)) => Err(refusal(
            conn,
            to,
            key_version,
            EngineError::MailboxFull {
                cap: q.mailbox_entries,
            },
        )?),
        (None, None) => Err(refusal(conn, to, key_version, EngineError::UnknownPeer)?),
    }
}

/// Why a send to `to` was refused, read after the fact: an unknown recipient, then a key
/// version other than the one the send was sealed for, else `otherwise` (a quota).
fn refusal(
    conn: &Connection,
    to: &str,
    key_version: Option<u32>,
    otherwise: EngineError,
) -> Result<EngineError, EngineError> {
    Ok(match get_peer(conn, to)? {
        None => EngineError::UnknownPeer,
        Some((peer, _)) if key_version.is_some_and(|v| v != peer.key_version) => {
            EngineError::PeerKeyChanged {
                current: peer.key_version,
            }
        }
        Some(_) => otherwise,
    })
}

/// Gives back what [`reserve`] took (the same request then failed before anything else).
pub(super) fn unreserve(conn: &Connection, to: &str, len: usize) -> Result<(), EngineError> {
    conn.prepare_cached(
        "UPDATE peers SET next_seq = next_seq - 1, mailbox_count = mailbox_count - 1, \
         mailbox_bytes = mailbox_bytes - ?2 WHERE client_id = ?1",
    )
    .map_err(storage)?
    .execute(params![to, as_i64(len as u64)])
    .map_err(storage)?;
    Ok(())
}

/// Counts a stored message against its sender's quota in `to`'s mailbox.
pub(super) fn count_sender(conn: &Connection, to: &str, from: &str, len: usize) -> Result<(), EngineError> {
    conn.prepare_cached(
        "INSERT INTO senders (recipient, sender, count, bytes) VALUES (?1, ?2, 1, ?3) \
         ON CONFLICT (recipient, sender) DO UPDATE SET count = count + 1, bytes = bytes + ?3",
    )
    .map_err(storage)?
    .execute(params![to, from, as_i64(len as u64)])
    .map_err(storage)?;
    Ok(())
}

/// Takes removed entries (`sender`, payload length, whether a message) off `recipient`'s counts.
pub(super) fn uncount(
    conn: &Connection,
    recipient: &str,
    removed: &[(String, i64, bool)],
) -> Result<(), EngineError> {
    if removed.is_empty() {
        return Ok(());
    }
    let bytes: i64 = removed.iter().map(|r| r.1).sum();
    conn.prepare_cached(
        "UPDATE peers SET mailbox_count = MAX(mailbox_count - ?2, 0), mailbox_bytes = MAX(mailbox_bytes - ?3, 0) \
         WHERE client_id = ?1",
    )
    .map_err(storage)?
    .execute(params![recipient, as_i64(removed.len() as u64), bytes])
    .map_err(storage)?;
    let mut per_sender: std::collections::BTreeMap<&str, (i64, i64)> = std::collections::BTreeMap::new();
    for (sender, len, _) in removed.iter().filter(|r| r.2) {
        let e = per_sender.entry(sender.as_str()).or_default();
        e.0 += 1;
        e.1 += len;
    }
    for (sender, (count, bytes)) in per_sender {
        conn.prepare_cached(
            "UPDATE senders SET count = count - ?3, bytes = bytes - ?4 WHERE recipient = ?1 AND sender = ?2",
        )
        .map_err(storage)?
        .execute(params![recipient, sender, count, bytes])
        .map_err(storage)?;
        conn.prepare_cached("DELETE FROM senders WHERE recipient = ?1 AND sender = ?2 AND count <= 0")
            .map_err(storage)?
            .execute(params![recipient, sender])
            .map_err(storage)?;
    }
    Ok(())
}

/// Writes a mailbox entry under a sequence number [`reserve`] gave.
pub(super) fn insert_entry(
    conn: &Connection,
    to: &str,
    seq: i64,
    from: &str,
    kind: &EntryKind,
    payload: &[u8],
    (now, expires_at): (UnixTime, u64),
) -> Result<(), EngineError> {
    conn.prepare_cached(
        "INSERT INTO mailbox (recipient, seq, sender, kind, payload, ts, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .map_err(storage)?
    .execute(params![to, seq, from, to_json(kind)?.as_str(), payload, as_i64(now.as_nanos() / 1_000_000), as_i64(expires_at)])
    .map_err(storage)?;
    Ok(())
}

/// One request's commit (see [`Engine::commit`]), inside the writer's transaction.
///
/// Every refusal comes before anything is written (see `SqliteEngine::call`): a send first
/// reserves its slot in the recipient's mailbox (which refuses without writing), and gives it
/// back if the session's compare-and-swap then fails.
pub(super) fn commit_in(c: &Connection, cm: &Commit) -> Result<Outcome, EngineError> {
    let key = cm.key_id.as_bytes().to_vec();
    let me = cm.client.as_str();
    let reserved = match &cm.op {
        Op::Send {
            to,
            quota,
            payload,
            key_version,
            ..
        } => Some((
            to.as_str(),
            reserve(c, to.as_str(), me, payload.len(), Some(quota), *key_version)?,
        )),
        Op::PublishKey { .. } if get_peer(c, me)?.is_none() => return Err(EngineError::UnknownPeer),
        _ => None,
    };
    let prekeys = prekeys::plan(c, cm)?;
    let updated = c
        .prepare_cached(
            "UPDATE sessions SET data = ?2, version = version + 1 WHERE key_id = ?1 AND version = ?3",
        )
        .map_err(storage)?
        .execute(params![key, cm.session.to_bytes(), as_i64(cm.expected_version)])
        .map_err(storage)?;
    if updated != 1 {
        if let (Some((to, _)), Op::Send { payload, .. }) = (reserved, &cm.op) {
            unreserve(c, to, payload.len())?;
        }
        return Err(EngineError::Conflict);
    }
    let now_s = as_i64(cm.now.as_secs());
    let outcome = match (&cm.op, reserved) {
        (
            Op::Send {
                payload, ttl_secs, ..
            },
            Some((to, seq)),
        ) => {
            let expires_at = cm.now.as_secs().saturating_add(*ttl_secs);
            insert_entry(c, to, seq, me, &EntryKind::Message, payload, (cm.now, expires_at))?;
            count_sender(c, to, me, payload.len())?;
            Outcome::Sent {
                seq: as_u64(seq),
                timestamp_ms: cm.now.as_nanos() / 1_000_000,
            }
        }
        (Op::Ack { seqs }, _) => Outcome::Acked {
            removed: delete_acked(c, me, seqs)?,
        },
        (Op::PublishKey { key }, _) => publish_key(c, me, key)?,
        (Op::PublishPrekeys { .. } | Op::TakePrekeyBundle { .. }, _) => {
            let (write, outcome) =
                prekeys.ok_or_else(|| EngineError::Storage("prekey op without its plan".into()))?;
            prekeys::write(c, write.as_ref())?;
            outcome
        }
        (Op::Touch, _) => Outcome::Done,
        (Op::Send { .. }, None) => {
            return Err(EngineError::Storage("send without a reserved slot".into()));
        }
    };
    c.prepare_cached("UPDATE peers SET last_seen = ?2 WHERE client_id = ?1 AND last_seen <> ?2")
        .map_err(storage)?
        .execute(params![me, now_s])
        .map_err(storage)?;
    if cm.keep_outcome {
        c.prepare_cached("INSERT OR REPLACE INTO outcomes (msg_id, key_id, data) VALUES (?1, ?2, ?3)")
            .map_err(storage)?
            .execute(params![as_i64(cm.msg_id), key, to_json(&outcome)?.as_str()])
            .map_err(storage)?;
    }
    Ok(outcome)
}

/// Deletes the entries of `me`'s mailbox that `seqs` name (with their store time when given)
/// and uncounts them from their senders' quotas; how many went.
fn delete_acked(c: &Connection, me: &str, seqs: &[relay_api::AckRef]) -> Result<usize, EngineError> {
    let mut delete = c
        .prepare_cached(
            "DELETE FROM mailbox WHERE recipient = ?1 AND seq = ?2 AND (?4 IS NULL OR ts = ?4) \
             RETURNING sender, LENGTH(payload), kind = ?3",
        )
        .map_err(storage)?;
    let message_kind = to_json(&EntryKind::Message)?;
    let mut gone = Vec::new();
    for s in seqs {
        let row: Option<(String, i64, bool)> = delete
            .query_row(
                params![me, as_i64(s.seq), message_kind.as_str(), s.ts.map(as_i64)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(storage)?;
        gone.extend(row);
    }
    drop(delete);
    uncount(c, me, &gone)?;
    Ok(gone.len())
}

/// `me`'s identity key set to `key`; its key version goes up when the key changed.
fn publish_key(c: &Connection, me: &str, key: &[u8; 32]) -> Result<Outcome, EngineError> {
    let (peer, _) =
        get_peer(c, me)?.ok_or_else(|| EngineError::Storage("peer vanished during its commit".into()))?;
    let changed = peer.identity_key != Some(*key);
    let version = peer.key_version + u32::from(changed);
    c.execute(
        "UPDATE peers SET identity_key = ?2, key_version = ?3 WHERE client_id = ?1",
        params![me, key.to_vec(), i64::from(version)],
    )
    .map_err(storage)?;
    Ok(Outcome::KeyPublished {
        changed,
        key_version: version,
    })
}

/// Up to `limit` unexpired entries of `client`'s mailbox, oldest first.
pub(super) fn fetch_in(
    c: &Connection,
    client: &str,
    limit: usize,
    now: UnixTime,
) -> Result<Vec<MailboxEntry>, EngineError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT seq, sender, kind, payload, ts, expires_at FROM mailbox WHERE recipient = ?1 AND expires_at > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(storage)?;
    let rows = stmt
        .query_map(
            params![client, as_i64(now.as_secs()), as_i64(limit as u64)],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .map_err(storage)?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, from, kind, payload, ts, exp) = row.map_err(storage)?;
        out.push(MailboxEntry {
            seq: as_u64(seq),
            from,
            kind: from_json(&kind)?,
            payload: Bytes(payload),
            timestamp_ms: as_u64(ts),
            expires_at: as_u64(exp),
        });
    }
    Ok(out)
}
