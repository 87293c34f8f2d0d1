//! Expiry and account removal, a bounded number of users per call.

#[allow(clippy::wildcard_imports)] // the engine's own imports and its other parts
use super::*;

/// Most users one purge visits (the next purge goes on from there).
pub(super) const PURGE_USERS_PER_CALL: usize = 5_000;

impl RedisEngine {
    /// Expired messages of one user: their senders are told, then they are removed.
    pub(super) async fn purge_user(
        &self,
        user: &str,
        now: UnixTime,
        told: &mut Vec<ClientId>,
    ) -> Result<(), EngineError> {
        let mut conn = self.trip();
        let due: Vec<String> = self
            .scripts
            .scan_expired
            .key(self.u(user, "expiry"))
            .key(self.u(user, "mbox"))
            .key(self.u(user, "outidx"))
            .arg(now.as_secs())
            .arg(now.as_secs().saturating_sub(OUTCOME_TTL_SECS))
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        if due.is_empty() {
            return Ok(());
        }
        let mut seqs = Vec::new();
        for pair in due.chunks_exact(2) {
            let [seq, sender] = pair else { continue };
            seqs.push(seq.clone());
            let Ok(sender) = ClientId::new(sender) else {
                continue;
            };
            let marker = self.u(sender.as_str(), &format!("dup:exp:{user}:{seq}"));
            match self
                .deliver(
                    sender.as_str(),
                    &marker,
                    RELAY_SENDER,
                    &[],
                    now,
                    NEVER_EXPIRES,
                    Delivery::Expired {
                        to: user,
                        message_seq: seq,
                    },
                )
                .await
            {
                Ok(_) => told.push(sender),
                // A sender that is no longer registered has no mailbox to tell.
                Err(EngineError::UnknownPeer) => {}
                Err(e) => return Err(e),
            }
        }
        let mut conn = self.trip();
        let _: i64 = self
            .scripts
            .remove_expired
            .key(self.u(user, "expiry"))
            .key(self.u(user, "mbox"))
            .key(self.u(user, "peer"))
            .key(self.u(user, "senders"))
            .arg(seqs)
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// Removes one user's account if `policy` says it is unused and its mailbox is empty; the
    /// `Some` of its key id (if it had one) when it did. The user's keys go atomically in one
    /// script in their slot (a commit racing it finds no session: a conflict, then no session,
    /// so the relay answers "unknown auth key"); then, each idempotently, the key record (the
    /// script left its id in a tomb, so a crash here is finished by the next purge), the
    /// directory entries, and the tomb. A new account of the same name created meanwhile is
    /// listed again (`create_account` lists its client after its script, too).
    pub(super) async fn purge_account(
        &self,
        user: &str,
        now: UnixTime,
        policy: AccountExpiry,
    ) -> Result<Option<Option<AuthKeyId>>, EngineError> {
        let mut conn = self.trip();
        let (status, key, stale): (i64, String, String) = self
            .scripts
            .purge_account
            .key(self.u(user, "peer"))
            .key(self.u(user, "mbox"))
            .key(self.u(user, "owner"))
            .key(self.u(user, "senders"))
            .key(self.u(user, "expiry"))
            .key(self.u(user, "outidx"))
            .key(self.u(user, "gone"))
            .key(self.u(user, "pk"))
            .key(self.u(user, "otp"))
            .arg(now.as_secs())
            .arg(policy.unpublished_secs)
            .arg(policy.idle_secs)
            .arg(self.u(user, ""))
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        for kid in [&stale, &key] {
            if !kid.is_empty() {
                let mut conn = self.trip();
                let _: i64 = conn.del(self.key_record_hex(kid)).await.map_err(storage)?;
            }
        }
        if status != 0 {
            // Removed, or a directory entry without an account (a registration that crashed
            // before its script, or a removal that crashed after it).
            let mut conn = self.trip();
            let _: i64 = conn.srem(self.directory(), user).await.map_err(storage)?;
            let mut conn = self.trip();
            let _: i64 = conn.zrem(self.names(), user).await.map_err(storage)?;
            let mut conn = self.trip();
            let again: bool = conn.exists(self.u(user, "peer")).await.map_err(storage)?;
            if again {
                let mut conn = self.trip();
                let _: i64 = conn.sadd(self.directory(), user).await.map_err(storage)?;
                let mut conn = self.trip();
                let _: i64 = conn.zadd(self.names(), user, 0).await.map_err(storage)?;
            }
        }
        if status == 1 || !stale.is_empty() {
            let mut conn = self.trip();
            let _: i64 = conn.del(self.u(user, "gone")).await.map_err(storage)?;
        }
        if status != 1 {
            return Ok(None);
        }
        let key_id = (key.len() == 16)
            .then(|| {
                let bytes: Vec<u8> = (0..8)
                    .filter_map(|i| {
                        key.get(2 * i..2 * i + 2)
                            .and_then(|d| u8::from_str_radix(d, 16).ok())
                    })
                    .collect();
                AuthKeyId::from_slice(bytes.as_slice()).ok()
            })
            .flatten();
        Ok(Some(key_id))
    }

    pub(super) async fn purge_expired_inner(&self, now: UnixTime) -> Result<Vec<ClientId>, EngineError> {
        let mut conn = self.trip();
        let _: i64 = self
            .scripts
            .purge_handshakes
            .key(self.hs("idx"))
            .arg(
                now.as_secs()
                    .saturating_sub(mtproto_session::handshake::HANDSHAKE_TTL_SECS),
            )
            .arg(self.hs("h:"))
            .invoke_async(&mut conn)
            .await
            .map_err(storage)?;
        let mut cursor = self.sweep.lock().await;
        let mut told = Vec::new();
        let mut visited = 0;
        loop {
            let mut conn = self.trip();
            let (next, users): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(self.directory())
                .arg(*cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(storage)?;
            for user in &users {
                self.purge_user(user, now, &mut told).await?;
            }
            visited += users.len();
            *cursor = next;
            if next == 0 || visited >= PURGE_USERS_PER_CALL {
                break;
            }
        }
        Ok(told)
    }
}
