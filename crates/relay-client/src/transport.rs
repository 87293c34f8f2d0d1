//! HTTP to one relay: the base URL, a pooled HTTP client, and the retry policy.

use std::time::Duration;

use relay_api::{ErrorBody, ErrorCode};

use crate::{ClientConfig, ClientError, Refusal};

/// Attempts per request when the relay is unreachable or answers 503 (storage unavailable,
/// too busy): waits 0.2, 0.4, 0.8, 1.6 and 2 s between them, about 5 s in all — long enough
/// for a Redis restart or failover.
const RETRIES: usize = 6;

fn backoff(attempt: usize) -> Duration {
    Duration::from_millis((200u64 << attempt.saturating_sub(1).min(4)).min(2000))
}

/// The longest the client waits in all for a rate limit (429 `rate_limited`, `Retry-After`)
/// before it reports the refusal.
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(60);

/// How long one HTTP request may take (a long poll waits at most 30 s on the relay).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// The HTTP side of talking to one relay: its address, an HTTP client (connections are pooled
/// and reused; TLS roots from the config) and the retry policy. Cheap to clone: clones share
/// the pool, so many [`Connection`](crate::Connection)s can share one transport.
///
/// ```
/// use relay_client::{ClientConfig, Pin, Transport};
/// let config = ClientConfig::new("http://127.0.0.1:8080", "alice", Pin::TrustOnFirstUse);
/// let transport = Transport::new(&config)?;
/// # Ok::<(), relay_client::ClientError>(())
/// ```
#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    base: String,
    retries: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("base", &self.base)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport to `config.server`, trusting `config.root_certificates` besides the web's
    /// roots, from `config.local_address` when set, retrying as `config.retries` says.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a root certificate that is not PEM;
    /// [`ClientError::Transport`] when the HTTP client cannot be built.
    pub fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        let mut http = reqwest::Client::builder().use_rustls_tls();
        for pem in &config.root_certificates {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| ClientError::Invalid(format!("root certificate: {e}")))?;
            http = http.add_root_certificate(cert);
        }
        let http = http
            .local_address(config.local_address)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Self::with_http_client(http, config))
    }

    /// A transport over an HTTP client the caller built (its own headers, proxy or timeouts):
    /// `config` gives only the relay's address and the retry policy. Give that client a request
    /// timeout: without one a relay that never answers holds a call for ever.
    pub fn with_http_client(http: reqwest::Client, config: &ClientConfig) -> Self {
        Self {
            http,
            base: config.server.trim_end_matches('/').to_owned(),
            retries: config.retries,
        }
    }

    /// The relay's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// POSTs JSON and reads a JSON answer; a refusal becomes [`ClientError::Server`].
    pub(crate) async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let resp = self.post_raw(path, body).await??;
        serde_json::from_slice(&resp).map_err(|e| ClientError::Transport(format!("{path}: bad answer: {e}")))
    }

    /// POSTs JSON; with retries on, retries transport failures and 503 answers (the same bytes
    /// each time: the relay answers a resent envelope from its stored outcome, never running it
    /// twice) — [`RETRIES`] attempts in all, however many rate limits come between them — and
    /// waits out rate limits within [`RATE_LIMIT_PATIENCE`]. The outer error is the transport's
    /// (an answer over [`MAX_ANSWER_BYTES`] is one, not retried), the inner one the server's
    /// refusal.
    pub(crate) async fn post_raw(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<Result<Vec<u8>, Refusal>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let attempts = if self.retries { RETRIES } else { 1 };
        let mut last = String::new();
        let mut rate_limited = Duration::ZERO;
        // Transport failures and 503s so far; never reset (a rate limit between them included).
        let mut failures = 0;
        loop {
            if failures >= attempts {
                return Err(ClientError::Transport(last));
            }
            if failures > 0 {
                tokio::time::sleep(backoff(failures)).await;
            }
            let resp = match self.http.post(&url).json(body).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    failures += 1;
                    continue;
                }
            };
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let bytes = match read_capped(resp).await {
                Ok(b) => b,
                Err(Read::TooLarge) => {
                    return Err(ClientError::Transport(format!(
                        "{path}: the answer is over {MAX_ANSWER_BYTES} bytes"
                    )))
                }
                Err(Read::Failed(e)) => {
                    last = e;
                    failures += 1;
                    continue;
                }
            };
            if status.is_success() {
                return Ok(Ok(bytes));
            }
            let body: ErrorBody = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| ErrorBody::new(ErrorCode::Unknown, status.to_string()));
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && failures + 1 < attempts {
                tracing::debug!(path, code = %body.error, "relay unavailable; retrying");
                failures += 1;
                continue;
            }
            if self.retries
                && status == reqwest::StatusCode::TOO_MANY_REQUESTS
                && body.error == ErrorCode::RateLimited
            {
                // The relay says when a retry can pass: wait that long, within our patience.
                let wait = Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 30));
                if rate_limited + wait <= RATE_LIMIT_PATIENCE {
                    tracing::info!(path, wait_secs = wait.as_secs(), "relay rate limit; waiting");
                    rate_limited += wait;
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return Ok(Err(Refusal {
                status: status.as_u16(),
                body,
            }));
        }
    }
}

/// The largest answer the client reads (4 MiB): a poll's answer is at most the relay's 256 KiB
/// of payloads, encoded twice in base64 and sealed; a relay (or, before the key is pinned,
/// anyone on the path) cannot make the client buffer more.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// Why an answer's body could not be read.
enum Read {
    /// Over [`MAX_ANSWER_BYTES`].
    TooLarge,
    /// The connection failed while reading.
    Failed(String),
}

/// The body of `resp`, at most [`MAX_ANSWER_BYTES`], read as it arrives.
async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, Read> {
    if resp.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Err(Read::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| Read::Failed(e.to_string()))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(Read::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
