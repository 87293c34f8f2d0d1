//! The accept-time gate: counts open connections per source and in all, and refuses those over
//! a cap before any byte of HTTP is read.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpStream;

use super::{is_trusted, ConnLimits};

/// What the per-source cap counts: an IPv4 address, or the /64 network of an IPv6 address
/// (one host usually has a whole /64). An IPv4-mapped IPv6 address counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(Ipv4Addr),
    V6Net(u64),
}

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => Source::V6Net((v6.to_bits() >> 64) as u64),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(*net) << 64)),
        }
    }
}

/// Why a connection was closed at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its source already holds `max` connections.
    SourceFull { source: Source, max: usize },
    /// The server already holds `max` connections.
    ServerFull { max: usize },
    /// The socket had no peer address any more (closed by the client already).
    NoPeer,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::SourceFull { source, max } => write!(f, "{source} already holds {max} connections"),
            Refused::ServerFull { max } => write!(f, "the server already holds {max} connections"),
            Refused::NoPeer => write!(f, "the peer had gone"),
        }
    }
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_source: HashMap<Source, usize>,
}

/// The connection counters shared by every worker.
#[derive(Debug)]
pub(crate) struct Gate {
    max_per_source: usize,
    max_total: usize,
    trusted: Vec<IpAddr>,
    open: Mutex<Open>,
    refused: AtomicU64,
    /// The Unix second in which a refusal was last logged (one log line a second at most).
    logged_second: AtomicU64,
}

/// An admitted connection's place in the counts, given back when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    gate: Arc<Gate>,
    /// `None` for a trusted proxy (counted in the total only).
    source: Option<Source>,
}

impl Gate {
    pub(crate) fn new(limits: &ConnLimits) -> Self {
        Self {
            max_per_source: limits.max_conns_per_source,
            max_total: limits.max_connections,
            trusted: limits.trusted_proxies.clone(),
            open: Mutex::new(Open::default()),
            refused: AtomicU64::new(0),
            logged_second: AtomicU64::new(0),
        }
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        // The counts stay consistent even if a holder panicked: every update is one statement.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new connection from `peer`, or says why it must be closed.
    pub(crate) fn try_admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refused> {
        let source = (!is_trusted(peer, &self.trusted)).then(|| Source::of(peer));
        let mut open = self.open();
        if open.total >= self.max_total {
            return Err(Refused::ServerFull { max: self.max_total });
        }
        if let Some(source) = source {
            let held = open.by_source.entry(source).or_insert(0);
            if *held >= self.max_per_source {
                return Err(Refused::SourceFull {
                    source,
                    max: self.max_per_source,
                });
            }
            *held += 1;
        }
        open.total += 1;
        Ok(Admitted {
            gate: self.clone(),
            source,
        })
    }

    /// Admits or refuses the accepted `stream`; a refusal is counted and logged (one line a
    /// second at most, with the count, so a flood does not flood the log).
    pub(crate) fn try_admit_stream(self: &Arc<Self>, stream: &TcpStream) -> Option<Admitted> {
        let outcome = match stream.peer_addr() {
            Ok(peer) => self.try_admit(peer.ip()),
            Err(_) => Err(Refused::NoPeer),
        };
        match outcome {
            Ok(admitted) => Some(admitted),
            Err(why) => {
                let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let second = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                if self.logged_second.swap(second, Ordering::Relaxed) != second {
                    tracing::warn!(reason = %why, refused_since_start = refused, "connection closed at accept");
                }
                None
            }
        }
    }

    #[cfg(test)]
    fn held(&self, source: Source) -> usize {
        self.open().by_source.get(&source).copied().unwrap_or(0)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.gate.open();
        open.total = open.total.saturating_sub(1);
        if let Some(source) = self.source {
            if let Some(held) = open.by_source.get_mut(&source) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    open.by_source.remove(&source);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn gate(per_source: usize, total: usize, trusted: &[&str]) -> Arc<Gate> {
        Arc::new(Gate::new(&ConnLimits {
            max_conns_per_source: per_source,
            max_connections: total,
            trusted_proxies: trusted.iter().map(|t| ip(t)).collect(),
            ..ConnLimits::default()
        }))
    }

    #[test]
    fn a_source_over_its_cap_is_refused_and_a_closed_connection_frees_its_place() {
        let g = gate(2, 100, &[]);
        let a = g.try_admit(ip("192.0.2.1")).unwrap();
        let _b = g.try_admit(ip("192.0.2.1")).unwrap();
        let refused = g.try_admit(ip("192.0.2.1")).unwrap_err();
        assert_eq!(
            refused,
            Refused::SourceFull {
                source: Source::V4(Ipv4Addr::new(192, 0, 2, 1)),
                max: 2
            }
        );
        // Another source is not affected.
        let _c = g.try_admit(ip("192.0.2.2")).unwrap();
        drop(a);
        assert_eq!(g.held(Source::of(ip("192.0.2.1"))), 1);
        assert!(g.try_admit(ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_counts_as_ipv4() {
        let g = gate(1, 100, &[]);
        let _a = g.try_admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(
            g.try_admit(ip("2001:db8:1:2:ffff::9")).is_err(),
            "same /64, another address"
        );
        assert!(g.try_admit(ip("2001:db8:1:3::1")).is_ok(), "another /64");
        let _v4 = g.try_admit(ip("198.51.100.7")).unwrap();
        assert!(
            g.try_admit(ip("::ffff:198.51.100.7")).is_err(),
            "the same IPv4 host"
        );
        assert_eq!(Source::of(ip("2001:db8:1:2::1")).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn a_trusted_proxy_is_exempt_from_the_source_cap_but_not_from_the_total() {
        let g = gate(1, 3, &["10.0.0.9"]);
        let held: Vec<_> = (0..3).map(|_| g.try_admit(ip("10.0.0.9")).unwrap()).collect();
        assert_eq!(
            g.try_admit(ip("10.0.0.9")).unwrap_err(),
            Refused::ServerFull { max: 3 }
        );
        assert!(g.try_admit(ip("192.0.2.1")).is_err(), "the total counts everyone");
        drop(held);
        assert!(g.try_admit(ip("192.0.2.1")).is_ok());
    }
}
