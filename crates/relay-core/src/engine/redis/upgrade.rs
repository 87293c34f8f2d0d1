//! Key layout versions and the upgrades from older ones.

#[allow(clippy::wildcard_imports)] // the engine's own imports and its other parts
use super::*;

/// The key layout this code writes, kept in `PREFIX:layout`.
pub(super) const LAYOUT: &str = "3";

impl RedisEngine {
    /// Brings data written by earlier releases to this layout, once. Every step is idempotent
    /// and never overwrites newer data, so nodes starting together may all run it.
    ///
    /// - Layout 1 (the first release) to 2: see [`RedisEngine::upgrade_from_1`].
    /// - Layout 2 to 3: the directory's name index `P:names` is built from the directory set
    ///   and the peer records. The quota counters need no upgrade: missing counters read as 0,
    ///   so a mailbox holding mail from before is undercounted until it empties once.
    ///
    /// A node of an older release refuses to start on a newer layout. One still running during
    /// a rolling upgrade keeps no quota counters (they heal when a mailbox empties) and does not
    /// list a publish in `P:names` (the client is listed at its next publish).
    pub(super) async fn upgrade_layout(&self) -> Result<(), EngineError> {
        let layout_key = format!("{}:layout", self.prefix);
        let mut conn = self.trip();
        let layout: Option<String> = conn.get(&layout_key).await.map_err(storage)?;
        match layout.as_deref() {
            Some(LAYOUT) => return Ok(()),
            None => self.upgrade_from_1().await?,
            Some("2") => {}
            Some(other) => {
                return Err(storage(format!(
                    "Redis holds key layout {other} under prefix {}; this relay writes layout {LAYOUT}",
                    self.prefix
                )))
            }
        }
        let listed = self.index_names().await?;
        let mut conn = self.trip();
        let _: () = conn.set(&layout_key, LAYOUT).await.map_err(storage)?;
        if listed > 0 {
            tracing::info!(listed, "Redis data upgraded to key layout {LAYOUT}");
        }
        Ok(())
    }

    /// Lists every client that published an identity key in `P:names`; returns how many.
    pub(super) async fn index_names(&self) -> Result<usize, EngineError> {
        let mut listed = 0;
        let mut cursor = 0u64;
        loop {
            let mut conn = self.trip();
            let (next, users): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(self.directory())
                .arg(cursor)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(storage)?;
            for peer in self.read_peers(&users).await?.into_iter().flatten() {
                if peer.identity_key.is_some() {
                    let mut conn = self.trip();
                    let _: i64 = conn
                        .zadd(self.names(), peer.client_id.as_str(), 0)
                        .await
                        .map_err(storage)?;
                    listed += 1;
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(listed);
            }
        }
    }

    /// Layout 1 to 2: sessions move from `{k:<key_id>}:sess` (JSON) to
    /// `{u:<client>}:sess:<key_id>` (binary) and the global `expiry` index is split per user.
    /// Mailboxes, peers, owners and key records keep their keys; outcomes of layout 1 are left
    /// to expire (a resend without one is refused, never run twice).
    pub(super) async fn upgrade_from_1(&self) -> Result<(), EngineError> {
        let mut conn = self.trip();
        let users: Vec<String> = conn.smembers(self.directory()).await.map_err(storage)?;
        let mover = Script::new(MOVE_SESSION);
        for user in &users {
            let mut conn = self.trip();
            let owner: Option<String> = conn.get(self.u(user, "owner")).await.map_err(storage)?;
            let Some(kid_hex) = owner else { continue };
            let old = format!("{}:{{k:{kid_hex}}}:sess", self.prefix);
            let mut conn = self.trip();
            let (data, version): (Option<String>, Option<u64>) = redis::cmd("HMGET")
                .arg(&old)
                .arg("data")
                .arg("version")
                .query_async(&mut conn)
                .await
                .map_err(storage)?;
            let (Some(data), Some(version)) = (data, version) else {
                continue;
            };
            let session: ServerSession = serde_json::from_str(&data).map_err(storage)?;
            let new = self.u(user, &format!("sess:{kid_hex}"));
            let mut conn = self.trip();
            let _: i64 = mover
                .key(&new)
                .arg(session.to_bytes())
                .arg(version)
                .invoke_async(&mut conn)
                .await
                .map_err(storage)?;
            let mut conn = self.trip();
            let _: i64 = conn.del(&old).await.map_err(storage)?;
        }
        let old_expiry = format!("{}:expiry", self.prefix);
        let mut conn = self.trip();
        let due: Vec<(String, u64)> = conn
            .zrange_withscores(&old_expiry, 0, -1)
            .await
            .map_err(storage)?;
        for (member, expires) in due {
            let mut parts = member.splitn(3, '|');
            if let (Some(to), Some(seq)) = (parts.next(), parts.next()) {
                let mut conn = self.trip();
                let _: i64 = conn
                    .zadd(self.u(to, "expiry"), seq, expires)
                    .await
                    .map_err(storage)?;
            }
        }
        let mut conn = self.trip();
        let _: i64 = conn.del(&old_expiry).await.map_err(storage)?;
        if !users.is_empty() {
            tracing::info!(users = users.len(), "Redis data upgraded from key layout 1");
        }
        Ok(())
    }
}
