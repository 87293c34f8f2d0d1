//! Admission of unauthenticated work, per source address: token buckets for the handshake steps
//! and for registrations, a bound on the handshakes one source may have pending, and the
//! proof-of-work level the relay asks of new handshakes, which rises with the load.
//!
//! Nothing here reads a clock: every call takes `now` (a monotonic [`Instant`]), so the rules can
//! be tested step by step. The HTTP layer decides what a request's source is (see
//! [`SourceKey::of`]) and calls [`SourceLimits::admit`] before it does any work.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use relay_core::limits::{Rate, SourceLimits, SourceLimitsConfig, Step};
//!
//! let limits = SourceLimits::new(SourceLimitsConfig {
//!     handshake: Rate { burst: 3, per_sec: 1.0 },
//!     ..SourceLimitsConfig::default()
//! });
//! let (ip, now) = ("192.0.2.7".parse()?, Instant::now());
//! for _ in 0..3 {
//!     assert!(limits.admit(ip, Step::ReqDhParams, now).is_ok());
//! }
//! assert!(limits.admit(ip, Step::ReqDhParams, now).is_err()); // out of tokens: 429
//! assert!(limits.admit(ip, Step::ReqDhParams, now + Duration::from_secs(1)).is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::RelayError;

/// A token bucket's shape: `burst` requests at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Most requests at once.
    pub burst: u32,
    /// Requests per second in the long run.
    pub per_sec: f64,
}

/// The per-source limits.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceLimitsConfig {
    /// Every unauthenticated handshake step (`req_pq`, `req_dh_params`, `set_client_dh_params`)
    /// takes one token; a handshake is three.
    pub handshake: Rate,
    /// Every `set_client_dh_params` (a registration, or a new key for a returning name).
    pub register: Rate,
    /// Most handshakes one source may have started (`req_pq`) and not finished within the
    /// handshake's lifetime (60 s).
    pub pending_per_source: usize,
    /// Most sources remembered at once (memory bound). When full, sources whose buckets are
    /// full and who have nothing pending are forgotten first (they lose nothing); if none can
    /// be, a new source is refused until some can.
    pub max_sources: usize,
}

impl Default for SourceLimitsConfig {
    fn default() -> Self {
        Self {
            handshake: Rate {
                burst: 30,
                per_sec: 2.0,
            },
            register: Rate {
                burst: 10,
                per_sec: 1.0 / 30.0,
            },
            pending_per_source: 16,
            max_sources: 100_000,
        }
    }
}

/// The unauthenticated steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `POST /req_pq`: starts a pending handshake.
    ReqPq,
    /// `POST /req_dh_params`.
    ReqDhParams,
    /// `POST /set_client_dh_params`: a registration.
    SetClientDhParams,
}

/// What a source is keyed by: an IPv4 address, or the /64 network of an IPv6 address (one
/// subscriber usually holds a whole /64, so counting single IPv6 addresses would count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// An IPv4 address.
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl SourceKey {
    /// The key of `ip`. IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_sec).min(f64::from(rate.burst));
        self.at = now;
    }

    /// Seconds until one token is there (0 when one is).
    fn wait(&self, rate: Rate) -> u64 {
        if self.tokens >= 1.0 {
            0
        } else if rate.per_sec <= 0.0 {
            3600
        } else {
            ((1.0 - self.tokens) / rate.per_sec).ceil().clamp(1.0, 3600.0) as u64
        }
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= f64::from(rate.burst)
    }
}

#[derive(Debug)]
struct SourceState {
    handshake: Bucket,
    register: Bucket,
    /// Start times of this source's handshakes that may still be pending, oldest first.
    pending: VecDeque<Instant>,
}

/// The handshake's lifetime: a started handshake stops counting as pending after this.
const PENDING_LIFETIME: Duration = Duration::from_secs(mtproto_session::handshake::HANDSHAKE_TTL_SECS);

/// Per-source admission state, shared by every worker of a node.
#[derive(Debug)]
pub struct SourceLimits {
    config: SourceLimitsConfig,
    sources: Mutex<HashMap<SourceKey, SourceState>>,
}

impl SourceLimits {
    /// Limits with `config`.
    pub fn new(config: SourceLimitsConfig) -> Self {
        Self {
            config,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SourceLimitsConfig {
        &self.config
    }

    /// Admits one `step` from `ip` at `now`, taking its tokens, or refuses it.
    ///
    /// # Errors
    /// [`RelayError::RateLimited`] with the seconds after which a retry can pass.
    pub fn admit(&self, ip: IpAddr, step: Step, now: Instant) -> Result<(), RelayError> {
        let cfg = &self.config;
        let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let key = SourceKey::of(ip);
        if !map.contains_key(&key) && map.len() >= cfg.max_sources {
            map.retain(|_, s| {
                s.pending
                    .retain(|t| now.saturating_duration_since(*t) < PENDING_LIFETIME);
                !(s.pending.is_empty()
                    && s.handshake.is_full(cfg.handshake, now)
                    && s.register.is_full(cfg.register, now))
            });
            if map.len() >= cfg.max_sources {
                return Err(RelayError::RateLimited { retry_after_secs: 1 });
            }
        }
        let s = map.entry(key).or_insert_with(|| SourceState {
            handshake: Bucket::full(cfg.handshake, now),
            register: Bucket::full(cfg.register, now),
            pending: VecDeque::new(),
        });
        s.handshake.refill(cfg.handshake, now);
        s.register.refill(cfg.register, now);
        s.pending
            .retain(|t| now.saturating_duration_since(*t) < PENDING_LIFETIME);
        let mut wait = s.handshake.wait(cfg.handshake);
        if step == Step::SetClientDhParams {
            wait = wait.max(s.register.wait(cfg.register));
        }
        if step == Step::ReqPq && s.pending.len() >= cfg.pending_per_source {
            let oldest = s.pending.front().copied().unwrap_or(now);
            let left = PENDING_LIFETIME.saturating_sub(now.saturating_duration_since(oldest));
            wait = wait.max(left.as_secs().max(1));
        }
        if wait > 0 {
            return Err(RelayError::RateLimited {
                retry_after_secs: wait,
            });
        }
        s.handshake.tokens -= 1.0;
        match step {
            Step::ReqPq => s.pending.push_back(now),
            Step::SetClientDhParams => s.register.tokens -= 1.0,
            Step::ReqDhParams => {}
        }
        Ok(())
    }

    /// Tells that a handshake of `ip` finished (its pending slot is free again).
    pub fn finished(&self, ip: IpAddr) {
        let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(&SourceKey::of(ip)) {
            s.pending.pop_front();
        }
    }

    /// How many sources are remembered now.
    pub fn tracked_sources(&self) -> usize {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Per-account limits on authenticated requests: a token bucket per auth key, so that one
/// account (or a few) cannot keep the storage busy for everyone. A request costs one token,
/// plus one for every [`ACKS_PER_TOKEN`] acknowledgements it carries.
#[derive(Debug)]
pub struct KeyLimits {
    rate: Rate,
    keys: Mutex<HashMap<[u8; 8], Bucket>>,
}

/// Acknowledgements that cost one token beyond the request's own.
pub const ACKS_PER_TOKEN: usize = 16;
/// Most auth keys whose buckets are remembered; past it, full buckets are forgotten first.
const MAX_TRACKED_KEYS: usize = 200_000;

impl KeyLimits {
    /// Buckets of shape `rate`.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The cost of a request carrying `acks` acknowledgements.
    pub fn cost(acks: usize) -> u32 {
        u32::try_from(1 + acks / ACKS_PER_TOKEN).unwrap_or(u32::MAX)
    }

    /// Takes `cost` tokens from `key`'s bucket, or refuses.
    ///
    /// # Errors
    /// [`RelayError::RateLimited`] with the seconds after which the request can pass.
    pub fn admit(&self, key: [u8; 8], cost: u32, now: Instant) -> Result<(), RelayError> {
        let rate = self.rate;
        let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED_KEYS && !map.contains_key(&key) {
            map.retain(|_, b| !b.is_full(rate, now));
        }
        let b = map.entry(key).or_insert_with(|| Bucket::full(rate, now));
        b.refill(rate, now);
        let cost = f64::from(cost).min(f64::from(rate.burst));
        if b.tokens >= cost {
            b.tokens -= cost;
            return Ok(());
        }
        let wait = if rate.per_sec <= 0.0 {
            3600
        } else {
            ((cost - b.tokens) / rate.per_sec).ceil().clamp(1.0, 3600.0) as u64
        };
        Err(RelayError::RateLimited {
            retry_after_secs: wait,
        })
    }
}

/// How much proof of work new handshakes must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkPolicy {
    /// Bits asked when the node is calm (0: none).
    pub base_bits: u8,
    /// The most bits ever asked (clients refuse more than
    /// [`mtproto_session::work::MAX_CLIENT_BITS`]).
    pub max_bits: u8,
    /// Handshakes started per second on this node above which the work doubles for every
    /// doubling of the rate.
    pub calm_rate: u32,
}

impl Default for WorkPolicy {
    fn default() -> Self {
        Self {
            base_bits: 14,
            max_bits: 22,
            calm_rate: 50,
        }
    }
}

/// Counts handshakes started per second and turns the rate into proof-of-work bits.
#[derive(Debug)]
pub struct WorkMeter {
    policy: WorkPolicy,
    /// (second, count in it, count in the second before).
    window: Mutex<(u64, u64, u64)>,
    start: Instant,
}

impl WorkMeter {
    /// A meter for `policy`.
    pub fn new(policy: WorkPolicy) -> Self {
        Self {
            policy,
            window: Mutex::new((0, 0, 0)),
            start: Instant::now(),
        }
    }

    /// Counts one handshake started at `now` and returns the bits to ask of it.
    pub fn start(&self, now: Instant) -> u8 {
        let second = now.saturating_duration_since(self.start).as_secs();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if second != w.0 {
            let previous = if second == w.0 + 1 { w.1 } else { 0 };
            *w = (second, 0, previous);
        }
        w.1 += 1;
        let rate = w.1.max(w.2);
        drop(w);
        self.bits_for(rate)
    }

    /// The bits asked at a rate of `rate` handshakes a second.
    pub fn bits_for(&self, rate: u64) -> u8 {
        let p = self.policy;
        let calm = u64::from(p.calm_rate.max(1));
        let extra = if rate <= calm {
            0
        } else {
            // ceil(log2(rate / calm))
            let ratio = rate.div_ceil(calm);
            64 - (ratio - 1).leading_zeros()
        };
        let extra = u8::try_from(extra).unwrap_or(u8::MAX);
        p.base_bits.saturating_add(extra).min(p.max_bits.max(p.base_bits))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn buckets_refill_and_say_when() {
        let l = SourceLimits::new(SourceLimitsConfig {
            handshake: Rate {
                burst: 2,
                per_sec: 0.5,
            },
            ..SourceLimitsConfig::default()
        });
        let t = Instant::now();
        l.admit(ip("10.0.0.1"), Step::ReqDhParams, t).unwrap();
        l.admit(ip("10.0.0.1"), Step::ReqDhParams, t).unwrap();
        assert_eq!(
            l.admit(ip("10.0.0.1"), Step::ReqDhParams, t),
            Err(RelayError::RateLimited { retry_after_secs: 2 })
        );
        // Another source is not affected.
        l.admit(ip("10.0.0.2"), Step::ReqDhParams, t).unwrap();
        l.admit(ip("10.0.0.1"), Step::ReqDhParams, t + Duration::from_secs(2))
            .unwrap();
    }

    #[test]
    fn pending_handshakes_are_bounded_per_source() {
        let l = SourceLimits::new(SourceLimitsConfig {
            handshake: Rate {
                burst: 100,
                per_sec: 100.0,
            },
            pending_per_source: 3,
            ..SourceLimitsConfig::default()
        });
        let t = Instant::now();
        for _ in 0..3 {
            l.admit(ip("10.0.0.1"), Step::ReqPq, t).unwrap();
        }
        assert!(l.admit(ip("10.0.0.1"), Step::ReqPq, t).is_err());
        l.finished(ip("10.0.0.1"));
        l.admit(ip("10.0.0.1"), Step::ReqPq, t).unwrap();
        // Unfinished ones stop counting when the handshake would have expired.
        assert!(l.admit(ip("10.0.0.1"), Step::ReqPq, t).is_err());
        l.admit(ip("10.0.0.1"), Step::ReqPq, t + PENDING_LIFETIME)
            .unwrap();
    }

    #[test]
    fn registrations_have_their_own_bucket() {
        let l = SourceLimits::new(SourceLimitsConfig {
            register: Rate {
                burst: 1,
                per_sec: 0.01,
            },
            ..SourceLimitsConfig::default()
        });
        let t = Instant::now();
        l.admit(ip("10.0.0.1"), Step::SetClientDhParams, t).unwrap();
        let Err(RelayError::RateLimited { retry_after_secs }) =
            l.admit(ip("10.0.0.1"), Step::SetClientDhParams, t)
        else {
            panic!("a second registration passed");
        };
        assert_eq!(retry_after_secs, 100);
        l.admit(ip("10.0.0.1"), Step::ReqDhParams, t).unwrap();
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_v4_as_v4() {
        assert_eq!(
            SourceKey::of(ip("2001:db8::1")),
            SourceKey::of(ip("2001:db8::ffff:2"))
        );
        assert_ne!(
            SourceKey::of(ip("2001:db8::1")),
            SourceKey::of(ip("2001:db8:0:1::1"))
        );
        assert_eq!(
            SourceKey::of(ip("::ffff:192.0.2.1")),
            SourceKey::of(ip("192.0.2.1"))
        );
        assert_ne!(SourceKey::of(ip("::c000:201")), SourceKey::of(ip("192.0.2.1")));
    }

    #[test]
    fn the_source_table_is_bounded() {
        let l = SourceLimits::new(SourceLimitsConfig {
            max_sources: 2,
            ..SourceLimitsConfig::default()
        });
        let t = Instant::now();
        l.admit(ip("10.0.0.1"), Step::ReqPq, t).unwrap();
        l.admit(ip("10.0.0.2"), Step::ReqPq, t).unwrap();
        // Both have a pending handshake: a third source waits.
        assert!(l.admit(ip("10.0.0.3"), Step::ReqPq, t).is_err());
        assert_eq!(l.tracked_sources(), 2);
        // Once they are idle again (pending expired, buckets refilled) they make room.
        let later = t + PENDING_LIFETIME + Duration::from_secs(600);
        l.admit(ip("10.0.0.3"), Step::ReqPq, later).unwrap();
        assert!(l.tracked_sources() <= 2);
    }

    #[test]
    fn accounts_pay_for_their_requests_and_acks() {
        let l = KeyLimits::new(Rate {
            burst: 10,
            per_sec: 2.0,
        });
        let t = Instant::now();
        assert_eq!(KeyLimits::cost(0), 1);
        assert_eq!(KeyLimits::cost(100), 7);
        assert_eq!(KeyLimits::cost(1024), 65);
        l.admit([1; 8], KeyLimits::cost(100), t).unwrap();
        l.admit([1; 8], 3, t).unwrap();
        assert_eq!(
            l.admit([1; 8], 1, t),
            Err(RelayError::RateLimited { retry_after_secs: 1 })
        );
        // Another account is not affected; a cost above the burst is charged as the burst.
        l.admit([2; 8], KeyLimits::cost(1024), t).unwrap();
        l.admit([1; 8], 1, t + Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn work_rises_with_the_rate() {
        let m = WorkMeter::new(WorkPolicy {
            base_bits: 10,
            max_bits: 20,
            calm_rate: 100,
        });
        assert_eq!(m.bits_for(0), 10);
        assert_eq!(m.bits_for(100), 10);
        assert_eq!(m.bits_for(101), 11);
        assert_eq!(m.bits_for(200), 11);
        assert_eq!(m.bits_for(201), 12);
        assert_eq!(m.bits_for(100 * 1024), 20);
        assert_eq!(m.bits_for(u64::MAX), 20);
        let t = m.start;
        for _ in 0..150 {
            m.start(t);
        }
        assert_eq!(m.start(t), 11);
        // The next second still remembers the last one's rate.
        assert_eq!(m.start(t + Duration::from_secs(1)), 11);
        assert_eq!(m.start(t + Duration::from_secs(3)), 10);
    }
}
