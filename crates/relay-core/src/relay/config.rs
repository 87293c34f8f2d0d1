//! The relay's limits and timings, and its clock.

use std::time::Duration;

use mtproto_session::UnixTime;

use crate::{
    limits::{Rate, SourceLimitsConfig, WorkPolicy},
    AccountExpiry, SendQuota,
};

/// Limits and timings, all configurable.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most handshakes pending at once (a `req_pq` flood cannot exhaust the server).
    pub max_pending_handshakes: usize,
    /// What one mailbox may hold, in all and from one sender.
    pub quota: SendQuota,
    /// Most payload bytes one poll answer carries (it always carries at least one entry when
    /// one is waiting; the rest comes with the next poll). Keeps every answer far below the
    /// envelope's 1 MiB limit, whatever others put in the mailbox.
    pub poll_bytes: usize,
    /// When unused accounts are removed and their names released.
    pub accounts: AccountExpiry,
    /// The proof of work asked of new handshakes.
    pub work: WorkPolicy,
    /// Per-source limits on unauthenticated work ([`Relay::sources`](crate::Relay::sources); the HTTP layer applies
    /// them).
    pub sources: SourceLimitsConfig,
    /// Authenticated requests per account ([`KeyLimits`](crate::limits::KeyLimits): a request is one token, plus one per
    /// 16 acknowledgements).
    pub account_rate: Rate,
    /// One-time prekeys one account may be handed out (`/prekey_bundle`), per node
    /// ([`KeyLimits`](crate::limits::KeyLimits), one token a fetch, taken before its commit):
    /// past it, bundles come without a one-time prekey, so one account cannot empty a
    /// victim's supply quickly. A burst of 0 hands out none.
    pub prekey_handouts: Rate,
    /// One-time prekeys of one account that may be handed out, to all requesters together,
    /// per node: many accounts together cannot empty a victim's supply faster than this
    /// either. A burst of 0 hands out none.
    pub prekey_handouts_per_target: Rate,
    /// Most acknowledgements in one poll (a poll answer holds at most `poll_limit` entries).
    pub max_acks: usize,
    /// How often the node runs [`Relay::purge`](crate::Relay::purge) (and, every tenth time,
    /// [`Relay::purge_accounts`](crate::Relay::purge_accounts)).
    pub purge_interval: Duration,
    /// How long an unacknowledged message is kept, seconds.
    pub message_ttl_secs: u64,
    /// Largest end-to-end payload, bytes.
    pub max_payload: usize,
    /// Default long-poll wait.
    pub poll_default: Duration,
    /// Longest long-poll wait a client may ask for.
    pub poll_max: Duration,
    /// Most entries one poll returns.
    pub poll_limit: usize,
}

impl RelayConfig {
    /// The largest payload this relay can accept: one entry must always fit in a poll answer
    /// (base64 inside JSON inside a 1 MiB envelope).
    ///
    /// 256 KiB: the payload crosses HTTP base64-encoded twice (inside the envelope's JSON body,
    /// then the packet inside the request's JSON), which must stay under the 512 KiB request
    /// body limit.
    pub const MAX_PAYLOAD_LIMIT: usize = 256 << 10;

    /// Checks that the limits fit together.
    ///
    /// # Errors
    /// A sentence naming the limit that does not fit.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_payload == 0 || self.max_payload > Self::MAX_PAYLOAD_LIMIT {
            return Err(format!(
                "the largest payload must be 1..={} bytes (one must fit in a poll answer)",
                Self::MAX_PAYLOAD_LIMIT
            ));
        }
        if self.poll_bytes > Self::MAX_PAYLOAD_LIMIT {
            return Err(format!(
                "a poll answer may carry at most {} bytes",
                Self::MAX_PAYLOAD_LIMIT
            ));
        }
        if self.work.max_bits > mtproto_session::work::MAX_CLIENT_BITS
            || self.work.base_bits > mtproto_session::work::MAX_CLIENT_BITS
        {
            return Err(format!(
                "clients refuse more than {} bits of proof of work",
                mtproto_session::work::MAX_CLIENT_BITS
            ));
        }
        Ok(())
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_pending_handshakes: 10_000,
            quota: SendQuota {
                mailbox_entries: 10_000,
                mailbox_bytes: 64 << 20,
                sender_entries: 500,
                sender_bytes: 4 << 20,
            },
            poll_bytes: 256 << 10,
            accounts: AccountExpiry {
                unpublished_secs: 3600,
                idle_secs: 180 * 24 * 3600,
            },
            work: WorkPolicy::default(),
            sources: SourceLimitsConfig::default(),
            purge_interval: Duration::from_secs(30),
            account_rate: Rate {
                burst: 300,
                per_sec: 30.0,
            },
            prekey_handouts: Rate {
                burst: 50,
                per_sec: 50.0 / 3600.0,
            },
            prekey_handouts_per_target: Rate {
                burst: 100,
                per_sec: 100.0 / 3600.0,
            },
            max_acks: 1024,
            message_ttl_secs: 7 * 24 * 3600,
            max_payload: 64 * 1024,
            poll_default: Duration::from_secs(25),
            poll_max: Duration::from_secs(30),
            poll_limit: 100,
        }
    }
}

/// Where the relay gets the time.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> UnixTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        UnixTime::from_system()
    }
}
