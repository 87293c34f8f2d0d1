//! Prometheus metrics (`GET /metrics` on `--metrics-bind`, in the OpenMetrics text format),
//! through the Prometheus project's own Rust client, `prometheus-client`: a well-kept crate whose
//! families bound nothing by themselves — so every label here takes values from a fixed set
//! (endpoints, status codes, error codes the relay itself writes), never from the request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use relay_core::{Observer, Relay};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabel {
    counter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<EndpointLabel, Histogram>,
    refusals: Family<CodeLabel, Counter>,
    handshakes: Family<OutcomeLabel, Counter>,
    stored: Counter,
    delivered: Counter,
    acked: Counter,
    expiry_notices: Counter,
    poll_entries: Histogram,
    storage_latency: Histogram,
    storage_conflicts: Counter,
    long_polls: Gauge,
    engine_counters: Family<CounterLabel, Counter>,
    engine_seen: [AtomicU64; ENGINE_COUNTERS.len()],
}

/// The engine's own counters (`Engine::stats`) exported, by the name they have there.
const ENGINE_COUNTERS: [&str; 4] = ["fsyncs", "commits", "requests", "redis_round_trips"];

/// The paths that get their own label; everything else is `other` (pages, 404s).
const ENDPOINTS: [&str; 12] = [
    "/req_pq",
    "/req_dh_params",
    "/set_client_dh_params",
    "/secure_message",
    "/poll_messages",
    "/peers",
    "/publish_key",
    "/publish_prekeys",
    "/prekey_bundle",
    "/healthz",
    "/server_key",
    "/echo",
];

fn endpoint(path: &str) -> &'static str {
    ENDPOINTS.iter().find(|e| **e == path).copied().unwrap_or("other")
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics (made on first use).
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("relay");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by endpoint and status",
            requests.clone(),
        );
        let latency = Family::<EndpointLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.5, 14))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from request to answer (a long-poll includes its wait)",
            latency.clone(),
        );
        let refusals = Family::<CodeLabel, Counter>::default();
        registry.register(
            "refusals",
            "Requests refused, by the error code answered (rate_limited counts rate-limit hits)",
            refusals.clone(),
        );
        let handshakes = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "handshakes",
            "Handshakes started (req_pq answered), finished (set_client_dh_params answered) and steps refused",
            handshakes.clone(),
        );
        let stored = Counter::default();
        registry.register("messages_stored", "Messages stored in mailboxes", stored.clone());
        let delivered = Counter::default();
        registry.register(
            "entries_delivered",
            "Mailbox entries carried by poll answers",
            delivered.clone(),
        );
        let acked = Counter::default();
        registry.register(
            "entries_acked",
            "Mailbox entries acknowledged (removed)",
            acked.clone(),
        );
        let expiry_notices = Counter::default();
        registry.register(
            "expiry_notices",
            "Senders told that a message expired undelivered",
            expiry_notices.clone(),
        );
        let poll_entries = Histogram::new([0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        registry.register(
            "poll_entries",
            "Entries per poll answer (how much mail waits when clients look)",
            poll_entries.clone(),
        );
        let storage_latency = Histogram::new(exponential_buckets(0.0001, 2.5, 14));
        registry.register(
            "storage_commit_duration_seconds",
            "Time of one storage commit of an authenticated request (a poll's includes its read)",
            storage_latency.clone(),
        );
        let storage_conflicts = Counter::default();
        registry.register(
            "storage_conflicts",
            "Storage commits lost to a concurrent one and retried",
            storage_conflicts.clone(),
        );
        let long_polls = Gauge::default();
        registry.register("long_polls_waiting", "Long-polls waiting now", long_polls.clone());
        let engine_counters = Family::<CounterLabel, Counter>::default();
        registry.register(
            "engine",
            "The storage engine's own counters: fsyncs, commits and requests (SQLite), redis_round_trips (Redis)",
            engine_counters.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            refusals,
            handshakes,
            stored,
            delivered,
            acked,
            expiry_notices,
            poll_entries,
            storage_latency,
            storage_conflicts,
            long_polls,
            engine_counters,
            engine_seen: Default::default(),
        }
    }

    /// One answered request.
    pub fn request(&self, method: &actix_web::http::Method, path: &str, status: u16, took: Duration) {
        let endpoint = endpoint(path);
        self.requests
            .get_or_create(&RequestLabels { endpoint, status })
            .inc();
        self.latency
            .get_or_create(&EndpointLabel { endpoint })
            .observe(took.as_secs_f64());
        // Handshake steps are POSTs; another method on their path is a 404, not a handshake.
        let outcome = match (endpoint, status) {
            _ if method != actix_web::http::Method::POST => None,
            ("/req_pq", 200) => Some("started"),
            ("/set_client_dh_params", 200) => Some("finished"),
            ("/req_pq" | "/req_dh_params" | "/set_client_dh_params", _) => Some("refused"),
            _ => None,
        };
        if let Some(outcome) = outcome {
            self.handshakes.get_or_create(&OutcomeLabel { outcome }).inc();
        }
    }

    /// One refusal answered with `code` (a code the relay writes, never one from the request).
    pub fn refusal(&self, code: &'static str) {
        self.refusals.get_or_create(&CodeLabel { code }).inc();
    }

    /// The text to serve, with the gauges read now.
    pub fn render(&self, relay: &Relay) -> Result<String, std::fmt::Error> {
        self.long_polls
            .set(i64::try_from(relay.notifier().live()).unwrap_or(i64::MAX));
        if let Some(stats) = relay.engine().stats() {
            for (name, seen) in ENGINE_COUNTERS.iter().zip(&self.engine_seen) {
                if let Some(now) = stats.get(*name).and_then(serde_json::Value::as_u64) {
                    let before = seen.swap(now, Ordering::Relaxed);
                    self.engine_counters
                        .get_or_create(&CounterLabel { counter: name })
                        .inc_by(now.saturating_sub(before));
                }
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The relay's events into the metrics.
pub struct RelayObserver;

impl Observer for RelayObserver {
    fn message_stored(&self) {
        metrics().stored.inc();
    }
    fn entries_delivered(&self, n: usize) {
        let m = metrics();
        m.delivered.inc_by(n as u64);
        m.poll_entries.observe(n as f64);
    }
    fn entries_acked(&self, n: usize) {
        metrics().acked.inc_by(n as u64);
    }
    fn expiry_notices(&self, n: usize) {
        metrics().expiry_notices.inc_by(n as u64);
    }
    fn storage_commit(&self, took: Duration, conflict: bool) {
        let m = metrics();
        m.storage_latency.observe(took.as_secs_f64());
        if conflict {
            m.storage_conflicts.inc();
        }
    }
}
