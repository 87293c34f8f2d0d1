//! The Lua scripts (one per atomic operation), loaded once.

#[allow(clippy::wildcard_imports)] // the engine's own imports and its other parts
use super::*;

/// KEYS: handshake index, handshake. ARGV: 1 created_at, 2 expiry cutoff, 3 max, 4 server
/// nonce (hex), 5 handshake (JSON), 6 TTL ms, 7 key prefix of handshakes (same slot), 8 stage.
pub(super) const PUT_PENDING: &str = include_str!("put_pending.lua");

/// KEYS: handshake. ARGV: 1 the advanced handshake (JSON), 2 its stage, 3 the first stage's
/// name. Returns 1 if it was at the first stage (the `stage` field, never a search in the JSON).
pub(super) const ADVANCE_PENDING: &str = include_str!("advance_pending.lua");

/// KEYS: handshake, handshake index. ARGV: server nonce (hex).
pub(super) const TAKE_PENDING: &str = include_str!("take_pending.lua");

/// KEYS: handshake index. ARGV: cutoff, key prefix of handshakes (same slot).
pub(super) const PURGE_HANDSHAKES: &str = include_str!("purge_handshakes.lua");

/// One user's slot. KEYS: owner, session, peer. ARGV: key id (hex), session, now.
pub(super) const CREATE_ACCOUNT: &str = include_str!("create_account.lua");
pub(super) const TAKE_OVER_ACCOUNT: &str = include_str!("take_over_account.lua");

/// KEYS: 1 session, 2 outcome, 3 my peer, 4 my mailbox, 5 my outcome index, 6 target peer,
/// 7 target mailbox, 8 target expiry, 9 target senders (the client's own for every op but a
/// one-script send). ARGV: 1 version, 2 session, 3 op, 4 now_s, 5 keep outcome, 6 outcome TTL,
/// then per op — send: 7 to, 8 from, 9 payload, 10 ts_ms, 11 expires, 12-15 the quota
/// (mailbox entries, mailbox bytes, sender entries, sender bytes), 16 payload length,
/// 17 channel; ack: 7 seqs (comma-separated), 8 fetch limit; publish: 7 key hex; delivered
/// (Cluster, the sender's half of a send whose entry `DELIVER` stored): 7 seq, 8 ts_ms;
/// prekeys (10 my prekey hash, 11 my one-time prekeys): 7 key version, 8 signed prekey (JSON),
/// 9 cap, 10.. one-time prekeys (JSON); bundle (what `TAKE_PREKEY` took): 7 the outcome (JSON).
pub(super) const COMMIT: &str = concat!(include_str!("quota.lua"), include_str!("commit.lua"));

/// Recipient's slot: appends once per marker. KEYS: 1 peer, 2 mailbox, 3 expiry, 4 marker,
/// 5 senders. ARGV: 1 from, 2 payload (base64), 3 ts_ms, 4 expires, 5 channel, 6 recipient,
/// 7 marker TTL, 8 kind (`message` or `expired`), 9 expired: to, 10 expired: message_seq,
/// 11-14 message: the quota (as `COMMIT`), 15 message: payload length. Only messages count
/// against the quota. Returns the entry's sequence number (the first one, when the marker
/// exists).
pub(super) const DELIVER: &str = concat!(include_str!("quota.lua"), include_str!("deliver.lua"));

/// One user's slot. KEYS: expiry, mailbox, outcome index. ARGV: now, outcome cutoff.
/// Drops old outcomes and the expiry entries of messages already acknowledged; returns the
/// expired messages still waiting as `seq, sender` pairs (removed by `REMOVE_EXPIRED` once their
/// senders are told, so a crash in between tells twice at worst, never not at all).
pub(super) const SCAN_EXPIRED: &str = include_str!("scan_expired.lua");

/// One user's slot. KEYS: expiry, mailbox, peer, senders. ARGV: sequence numbers.
pub(super) const REMOVE_EXPIRED: &str =
    concat!(include_str!("quota.lua"), include_str!("remove_expired.lua"));

/// The peer's slot: hands out its bundle once per marker. KEYS: 1 peer, 2 prekey hash,
/// 3 one-time prekeys, 4 marker. ARGV: 1 take a one-time prekey (`1`/`0`), 2 marker TTL.
pub(super) const TAKE_PREKEY: &str = include_str!("take_prekey.lua");

/// One user's slot: removes the account if it is unused (`purge_accounts`). KEYS: 1 peer,
/// 2 mailbox, 3 owner, 4 senders, 5 expiry, 6 outcome index, 7 tomb, 8 prekey hash, 9 one-time
/// prekeys. ARGV: 1 now,
/// 2 unpublished_secs, 3 idle_secs, 4 the user's key prefix (its session and outcomes are
/// found from there, in the same slot). Returns `{status, removed key id, stale key id}`:
/// status 1 removed, 0 kept, 2 no account (a directory entry left behind); the stale key id
/// (hex, or empty) is a removal's tomb whose key record is still to be deleted.
pub(super) const PURGE_ACCOUNT: &str = include_str!("purge_account.lua");

pub(super) struct Scripts {
    pub(super) put_pending: Script,
    pub(super) advance_pending: Script,
    pub(super) take_pending: Script,
    pub(super) purge_handshakes: Script,
    pub(super) create_account: Script,
    pub(super) take_over_account: Script,
    pub(super) commit: Script,
    pub(super) deliver: Script,
    pub(super) scan_expired: Script,
    pub(super) remove_expired: Script,
    pub(super) purge_account: Script,
    pub(super) take_prekey: Script,
}

/// Copies a version-1 session (JSON under the key's tag) to its version-2 place (binary, under
/// the user's tag) unless a session is there already. KEYS: new session. ARGV: data, version.
pub(super) const MOVE_SESSION: &str = include_str!("move_session.lua");
