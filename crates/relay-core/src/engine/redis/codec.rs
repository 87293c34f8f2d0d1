//! What crosses between Rust and Redis: script errors, outcomes, entries, peer rows.

#[allow(clippy::wildcard_imports)] // the engine's own imports and its other parts
use super::*;

pub(super) fn storage<E: std::fmt::Display>(e: E) -> EngineError {
    EngineError::Storage(e.to_string())
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses a stored record that holds secrets, wiping the JSON text afterwards.
pub(super) fn secret_json<T: serde::de::DeserializeOwned>(
    v: Option<String>,
) -> Result<Option<T>, EngineError> {
    v.map(|s| {
        let s = Zeroizing::new(s);
        serde_json::from_str(&s).map_err(storage)
    })
    .transpose()
}

pub(super) fn script_error(e: redis::RedisError) -> EngineError {
    let text = e.to_string();
    if text.contains("CONFLICT") {
        EngineError::Conflict
    } else if text.contains("UNKNOWN_PEER") {
        EngineError::UnknownPeer
    } else if text.contains("TAKEN") {
        EngineError::ClientIdTaken
    } else if text.contains("NO_IDENTITY_KEY") {
        EngineError::NoIdentityKey
    } else if text.contains("NO_PREKEYS") {
        EngineError::NoPrekeys
    } else if let Some(rest) = text.split("PREKEY_QUOTA:").nth(1) {
        let mut n = rest
            .split(|c: char| !c.is_ascii_digit())
            .map(|d| d.parse::<usize>().unwrap_or(0));
        EngineError::PrekeyQuota {
            held: n.next().unwrap_or(0),
            adding: n.next().unwrap_or(0),
            max: relay_api::MAX_ONE_TIME_PREKEYS,
        }
    } else {
        storage(text)
    }
}

/// Like [`script_error`], and a refusal by the quota becomes [`EngineError::MailboxFull`]
/// (`cap`: the quota's mailbox entries) or [`EngineError::SenderQuota`].
pub(super) fn send_error(e: redis::RedisError, cap: usize) -> EngineError {
    match script_error(e) {
        EngineError::Storage(s) if s.contains("MAILBOX_FULL") => EngineError::MailboxFull { cap },
        EngineError::Storage(s) if s.contains("SENDER_QUOTA") => EngineError::SenderQuota,
        EngineError::Storage(s) if s.contains("PEER_KEY_CHANGED") => {
            let current = s
                .split("PEER_KEY_CHANGED:")
                .nth(1)
                .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
                .and_then(|digits| digits.parse().ok());
            match current {
                Some(current) => EngineError::PeerKeyChanged { current },
                None => EngineError::Storage(s),
            }
        }
        other => other,
    }
}

/// The quota as script arguments: mailbox entries, mailbox bytes, sender entries, sender bytes.
pub(super) fn quota_args(q: &SendQuota) -> [String; 4] {
    [
        q.mailbox_entries.to_string(),
        q.mailbox_bytes.to_string(),
        q.sender_entries.to_string(),
        q.sender_bytes.to_string(),
    ]
}

pub(super) fn parse_outcome(s: &str) -> Result<Outcome, EngineError> {
    if let Some(json) = s.strip_prefix("json|") {
        return serde_json::from_str(json).map_err(storage);
    }
    let mut it = s.split('|');
    let (kind, a, b) = (
        it.next().unwrap_or(""),
        it.next().unwrap_or("0"),
        it.next().unwrap_or("0"),
    );
    let n = |x: &str| x.parse::<u64>().map_err(storage);
    Ok(match kind {
        "sent" => Outcome::Sent {
            seq: n(a)?,
            timestamp_ms: n(b)?,
        },
        "acked" => Outcome::Acked {
            removed: usize::try_from(n(a)?).unwrap_or(0),
        },
        "published" => Outcome::KeyPublished {
            changed: a == "1",
            key_version: u32::try_from(n(b)?).unwrap_or(0),
        },
        "prekeys" => Outcome::PrekeysPublished {
            one_time_prekeys: usize::try_from(n(a)?).unwrap_or(0),
        },
        "done" => Outcome::Done,
        other => return Err(storage(format!("unknown outcome {other}"))),
    })
}

pub(super) fn parse_entries(raw: Vec<String>, now: UnixTime) -> Result<Vec<MailboxEntry>, EngineError> {
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let e: MailboxEntry = serde_json::from_str(&r).map_err(storage)?;
        if e.expires_at > now.as_secs() {
            out.push(e);
        }
    }
    Ok(out)
}

pub(super) fn to_outcome((kind, a, rest): &CommitReply) -> Result<Outcome, EngineError> {
    if kind == "json" {
        let json: String = redis::from_redis_value(rest).map_err(storage)?;
        return serde_json::from_str(&json).map_err(storage);
    }
    let b: u64 = redis::from_redis_value::<String>(rest)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| redis::from_redis_value::<u64>(rest).unwrap_or(0));
    Ok(match kind.as_str() {
        "sent" => Outcome::Sent {
            seq: *a,
            timestamp_ms: b,
        },
        "acked" => Outcome::Acked {
            removed: usize::try_from(*a).unwrap_or(0),
        },
        "published" => Outcome::KeyPublished {
            changed: *a == 1,
            key_version: u32::try_from(b).unwrap_or(0),
        },
        "prekeys" => Outcome::PrekeysPublished {
            one_time_prekeys: usize::try_from(*a).unwrap_or(0),
        },
        "done" => Outcome::Done,
        other => return Err(storage(format!("unknown commit reply {other}"))),
    })
}

pub(super) type PeerRow = (Option<String>, Option<u32>, Option<u64>, Option<u64>);

pub(super) fn to_peer(id: &str, row: PeerRow) -> Result<Option<Peer>, EngineError> {
    let (key, kv, reg, seen) = row;
    let (Some(kv), Some(reg), Some(seen)) = (kv, reg, seen) else {
        return Ok(None);
    };
    let identity_key = match key.as_deref() {
        None | Some("") => None,
        Some(h) => {
            let bytes: Vec<u8> = (0..h.len() / 2)
                .filter_map(|i| {
                    h.get(2 * i..2 * i + 2)
                        .and_then(|d| u8::from_str_radix(d, 16).ok())
                })
                .collect();
            Some(<[u8; 32]>::try_from(bytes.as_slice()).map_err(storage)?)
        }
    };
    Ok(Some(Peer {
        client_id: ClientId::new(id).map_err(storage)?,
        identity_key,
        key_version: kv,
        registered_at: reg,
        last_seen: seen,
    }))
}
