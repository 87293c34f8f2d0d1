//! The schema, its version, and the upgrades from older versions.

use super::*;

/// The schema this code writes, kept in `PRAGMA user_version`.
pub(super) const SCHEMA_VERSION: i64 = 4;

/// Version 2. Laid out so that one request dirties few pages, because every dirty page is
/// written to the WAL at commit (and copied again by the checkpoint). Mailbox rows (a few
/// hundred bytes) are appended to a rowid table and found through the small `(recipient, seq)`
/// index; outcomes (small rows) are a `WITHOUT ROWID` table keyed by msg_id first — msg_ids
/// follow the clock (the session refuses ids outside its time window), so new outcomes of all
/// clients land on the same few pages and old ones go by a key range; sessions are stored in
/// `ServerSession::to_bytes`'s compact form (about 0.7 KB, five to a page).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mailbox (recipient TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL,
    kind TEXT NOT NULL, payload BLOB NOT NULL, ts INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (recipient, seq));
CREATE INDEX IF NOT EXISTS mailbox_expiry ON mailbox (expires_at);
CREATE TABLE IF NOT EXISTS pending (server_nonce BLOB PRIMARY KEY, data TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS auth_keys (key_id BLOB PRIMARY KEY, client_id TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (key_id BLOB PRIMARY KEY, data BLOB NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS peers (client_id TEXT PRIMARY KEY, identity_key BLOB, key_version INTEGER NOT NULL,
    registered_at INTEGER NOT NULL, last_seen INTEGER NOT NULL, next_seq INTEGER NOT NULL,
    mailbox_count INTEGER NOT NULL DEFAULT 0, mailbox_bytes INTEGER NOT NULL DEFAULT 0);
";

/// The version-2 table that replaced version 1's (created with [`SCHEMA`] on a new database, by
/// [`upgrade_from_v1`] on an old one).
pub(super) const SCHEMA_V2_TABLES: &str = "
CREATE TABLE outcomes (msg_id INTEGER NOT NULL, key_id BLOB NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (msg_id, key_id)) WITHOUT ROWID;
";

/// Version 3: what each sender has waiting in each mailbox (the per-sender quota), kept with
/// every append and removal.
pub(super) const SCHEMA_V3_TABLES: &str = "
CREATE TABLE senders (recipient TEXT NOT NULL, sender TEXT NOT NULL, count INTEGER NOT NULL,
    bytes INTEGER NOT NULL, PRIMARY KEY (recipient, sender)) WITHOUT ROWID;
CREATE TABLE health (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);
";

/// Version 4: each account's prekeys (`crate::prekeys::StoredPrekeys` as JSON: the signed
/// prekey and up to 200 one-time prekeys, at most about 15 KB), one row per account. One row,
/// not one per one-time prekey, so that the rule of `StoredPrekeys` is the only one; a fetch
/// rewrites the row (a few pages), and fetches are rare (one per new conversation).
pub(super) const SCHEMA_V4_TABLES: &str = "
CREATE TABLE prekeys (client_id TEXT PRIMARY KEY, data TEXT NOT NULL);
";

/// From version 2: the byte count beside the entry count, the per-sender table filled from the
/// mailboxes, and the entry counts recomputed (version 2 did not lower them when messages
/// expired).
pub(super) const UPGRADE_FROM_V2: &str = "
ALTER TABLE peers ADD COLUMN mailbox_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE peers SET
    mailbox_count = (SELECT COUNT(*) FROM mailbox WHERE recipient = peers.client_id),
    mailbox_bytes = (SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM mailbox WHERE recipient = peers.client_id);
INSERT INTO senders (recipient, sender, count, bytes)
    SELECT recipient, sender, COUNT(*), SUM(LENGTH(payload)) FROM mailbox
    WHERE sender <> 'relay' GROUP BY recipient, sender;
";

/// Creates the schema, or upgrades a database of version 1, 2 or 3 in one transaction (3 to 4
/// only adds the `prekeys` table). From version 1 (the first release's layout): outcomes are dropped (they only answer resends inside the replay window, and a
/// resend without one is refused, never run twice); sessions stay as they are (JSON rows are
/// still read, and rewritten compactly on their next commit); the rest is unchanged.
pub(super) fn migrate(conn: &Connection) -> Result<(), EngineError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(storage)?;
    let has_mailbox: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mailbox')",
            [],
            |r| r.get(0),
        )
        .map_err(storage)?;
    let script = match (version, has_mailbox) {
        (SCHEMA_VERSION, true) => return Ok(()),
        (_, false) => format!("{SCHEMA}{SCHEMA_V2_TABLES}{SCHEMA_V3_TABLES}{SCHEMA_V4_TABLES}"),
        (0, true) => format!(
            "{}{SCHEMA_V3_TABLES}{UPGRADE_FROM_V2}{SCHEMA_V4_TABLES}",
            upgrade_from_v1()
        ),
        (2, true) => format!("{SCHEMA_V3_TABLES}{UPGRADE_FROM_V2}{SCHEMA_V4_TABLES}"),
        // Version 3 to 4: a new table, nothing to move.
        (3, true) => SCHEMA_V4_TABLES.to_owned(),
        (v, true) => {
            return Err(EngineError::Storage(format!(
                "database schema version {v} is not one this relay knows (it writes {SCHEMA_VERSION})"
            )))
        }
    };
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {script}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))
    .map_err(storage)
}

pub(super) fn upgrade_from_v1() -> String {
    format!("DROP TABLE outcomes; {SCHEMA_V2_TABLES}")
}
