//! Commits: one script on a single Redis; on Cluster a send is a read of the sender's session
//! version, a delivery, then the commit.

#[allow(clippy::wildcard_imports)] // the engine's own imports and its other parts
use super::*;

pub(super) type CommitReply = (String, u64, redis::Value);

/// What `DELIVER` appends.
pub(super) enum Delivery<'a> {
    /// A message, within the quota, if the recipient's key is still the version given.
    Message(&'a SendQuota, Option<u32>),
    /// A relay notice: a message to `to` expired.
    Expired {
        /// The recipient of the message.
        to: &'a str,
        /// Its sequence number there.
        message_seq: &'a str,
    },
}

/// What the commit script is asked to do.
pub(super) enum ScriptOp<'a> {
    /// The op itself (a send only on a single Redis, where one script spans both users).
    Whole(&'a Op),
    /// Cluster send, second step: the sender's side of a send `DELIVER` stored as `seq`.
    Delivered { seq: u64 },
    /// A bundle fetch, second step: the requester's side, storing the outcome (JSON) of what
    /// `TAKE_PREKEY` took.
    Bundle(&'a str),
}

impl RedisEngine {
    pub(super) async fn run_commit(
        &self,
        c: &Commit,
        op: ScriptOp<'_>,
        fetch_limit: usize,
    ) -> Result<CommitReply, EngineError> {
        let me = c.client.as_str();
        let ts = (c.now.as_nanos() / 1_000_000).to_string();
        let (target, name, args): (&str, &str, Vec<String>) = match op {
            ScriptOp::Whole(Op::Touch) => (me, "touch", vec![]),
            ScriptOp::Whole(Op::Send {
                to,
                payload,
                quota,
                ttl_secs,
                key_version,
            }) => {
                let mut args = vec![
                    to.as_str().into(),
                    me.into(),
                    mtproto_session::wire::b64(payload),
                    ts,
                    (c.now.as_secs() + ttl_secs).to_string(),
                ];
                args.extend(quota_args(quota));
                args.push(payload.len().to_string());
                args.push(self.channel());
                args.push(key_version.map(|v| v.to_string()).unwrap_or_default());
                (to.as_str(), "send", args)
            }
            ScriptOp::Delivered { seq } => (me, "delivered", vec![seq.to_string(), ts]),
            ScriptOp::Whole(Op::Ack { seqs }) => (
                me,
                "ack",
                vec![
                    seqs.iter()
                        .map(|a| match a.ts {
                            Some(ts) => format!("{}:{ts}", a.seq),
                            None => a.seq.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    fetch_limit.to_string(),
                ],
            ),
            ScriptOp::Whole(Op::PublishKey { key }) => (me, "publish", vec![hex(key)]),
            ScriptOp::Whole(Op::PublishPrekeys { key_version, prekeys }) => {
                (me, "prekeys", prekey_args(*key_version, prekeys)?)
            }
            ScriptOp::Bundle(outcome) => (me, "bundle", vec![outcome.to_owned()]),
            ScriptOp::Whole(Op::TakePrekeyBundle { .. }) => {
                return Err(storage("a bundle fetch is committed in two steps"));
            }
        };
        let mut inv = self.scripts.commit.prepare_invoke();
        inv.key(self.sess(me, &c.key_id))
            .key(self.out(me, &c.key_id, c.msg_id))
            .key(self.u(me, "peer"))
            .key(self.u(me, "mbox"))
            .key(self.u(me, "outidx"))
            .key(self.u(target, "peer"))
            .key(self.u(target, "mbox"))
            .key(self.u(target, "expiry"))
            .key(self.u(target, "senders"))
            .key(self.u(me, "pk"))
            .key(self.u(me, "otp"))
            .arg(c.expected_version.to_string())
            .arg(c.session.to_bytes())
            .arg(name)
            .arg(c.now.as_secs().to_string())
            .arg(if c.keep_outcome { "1" } else { "0" })
            .arg(OUTCOME_TTL_SECS.to_string());
        for a in &args {
            inv.arg(a);
        }
        let mut conn = self.trip();
        let cap = match op {
            ScriptOp::Whole(Op::Send { quota, .. }) => quota.mailbox_entries,
            _ => 0,
        };
        let reply: redis::Value = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| send_error(e, cap))?;
        let redis::Value::Array(items) = reply else {
            return Err(storage("unexpected commit reply"));
        };
        let mut it = items.into_iter();
        let kind: String =
            redis::from_redis_value(&it.next().unwrap_or(redis::Value::Nil)).map_err(storage)?;
        let a: u64 = redis::from_redis_value(&it.next().unwrap_or(redis::Value::Nil)).unwrap_or(0);
        let rest = it.next().unwrap_or(redis::Value::Nil);
        Ok((kind, a, rest))
    }

    /// Appends to `to`'s mailbox once per `marker`; returns the entry's sequence number.
    #[allow(clippy::too_many_arguments)] // the entry's fields
    pub(super) async fn deliver(
        &self,
        to: &str,
        marker: &str,
        from: &str,
        payload: &[u8],
        now: UnixTime,
        expires: u64,
        kind: Delivery<'_>,
    ) -> Result<u64, EngineError> {
        let mut conn = self.trip();
        let (name, notice_to, message_seq, quota, key_version) = match kind {
            Delivery::Message(q, v) => ("message", "", "", *q, v.map(|v| v.to_string())),
            // Notices count against nothing.
            Delivery::Expired { to, message_seq } => ("expired", to, message_seq, SendQuota::UNLIMITED, None),
        };
        self.scripts
            .deliver
            .key(self.u(to, "peer"))
            .key(self.u(to, "mbox"))
            .key(self.u(to, "expiry"))
            .key(marker)
            .key(self.u(to, "senders"))
            .arg(from)
            .arg(mtproto_session::wire::b64(payload))
            .arg(now.as_nanos() / 1_000_000)
            .arg(expires)
            .arg(self.channel())
            .arg(to)
            .arg(OUTCOME_TTL_SECS)
            .arg(name)
            .arg(notice_to)
            .arg(message_seq)
            .arg(&quota_args(&quota)[..])
            .arg(payload.len())
            .arg(key_version.unwrap_or_default())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| send_error(e, quota.mailbox_entries))
    }

    /// A send on Redis Cluster (see the module docs): delivery (or refusal), then the sender's
    /// commit. If that commit loses its compare-and-swap, the relay re-reads the session and
    /// runs this again: the delivery then finds its marker and appends nothing.
    pub(super) async fn cluster_send(&self, c: &Commit) -> Result<Outcome, EngineError> {
        let Op::Send {
            to,
            payload,
            quota,
            ttl_secs,
            key_version,
        } = &c.op
        else {
            return Err(storage("cluster_send without a send"));
        };
        // The relay checked this send against a session that may be this node's cached copy, and
        // the delivery below does not look at the sender: after a recovery through another node
        // (which deletes the old key's session), the device the name moved away from would still
        // deliver one message as the name. So the stored session's version is read first (the
        // sender's slot). A commit or a recovery landing between this read and the delivery
        // still leaves the entry: the compare-and-swap then refuses the send, and its retry
        // completes it (a commit of the same key) or is refused (a recovery).
        let stored: Option<u64> = self
            .trip()
            .hget(self.sess(c.client.as_str(), &c.key_id), "version")
            .await
            .map_err(storage)?;
        if stored != Some(c.expected_version) {
            return Err(EngineError::Conflict);
        }
        let to = to.as_str();
        let marker = self.marker(to, &c.key_id, c.msg_id);
        let seq = self
            .deliver(
                to,
                &marker,
                c.client.as_str(),
                payload,
                c.now,
                c.now.as_secs() + ttl_secs,
                Delivery::Message(quota, *key_version),
            )
            .await?;
        to_outcome(&self.run_commit(c, ScriptOp::Delivered { seq }, 0).await?)
    }
}
