//! Connections: who may hold one, and for how long.
//!
//! A client that opens a socket and then sends nothing, or a request head and then a body that
//! never finishes, costs the server one open file for as long as the socket stays open. Without
//! limits ~1,100 such sockets exhaust the usual 1,024 open files and the relay stops answering
//! anyone. This module bounds that cost:
//!
//! ```text
//!   accept ──► Gate::try_admit ── over a cap ──► closed at once (no worker time, fd freed)
//!                 │ admitted (holds an `Admitted` guard for the connection's life)
//!                 ▼
//!   HTTP/1 dispatcher: request head within `header_timeout`, idle keep-alive `keep_alive`
//!                 ▼
//!   app: the body must be complete `body_timeout` after its head, else 408 request_timeout
//! ```
//!
//! - [`ConnLimits`] holds every limit; `--help` lists each as a flag with an env var.
//! - The server is built from actix-server and actix-http directly (as actix-web's
//!   `HttpServer` does inside) so that a connection over the per-source or total cap is refused
//!   at accept time: `HttpServer::on_connect` can look at a connection but cannot refuse it.
//! - [`client_ip`] names the client behind trusted reverse proxies (for per-client limits).
//! - [`raise_open_file_limit`] lifts the soft open-file limit to the hard one at start-up.

mod body;
mod client_ip;
mod gate;

use std::fmt;
use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_http::{body::MessageBody, HttpService, KeepAlive, Request, Response};
use actix_server::Server;
use actix_service::{
    apply_fn_factory, map_config, IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt as _,
};
use actix_web::dev::AppConfig;
use tokio::net::TcpStream;

pub use body::BodyTimedOut;
pub(crate) use body::{body_timed_out, with_body_deadline};
pub use client_ip::client_ip;
use gate::Gate;

use crate::Config;

/// Seconds to receive a request head (request line and headers) on a new connection.
pub(crate) const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 5;
/// Seconds to receive a request body, counted from the end of its head.
pub(crate) const DEFAULT_BODY_TIMEOUT_SECS: u64 = 10;
/// Seconds an idle kept-alive connection stays open.
pub(crate) const DEFAULT_KEEP_ALIVE_SECS: u64 = 30;
/// Seconds to finish closing a connection (flush the last answer) before it is dropped.
pub(crate) const DEFAULT_DISCONNECT_TIMEOUT_SECS: u64 = 2;
/// Most connections open at once from one source (an IPv4 address or an IPv6 /64).
pub(crate) const DEFAULT_MAX_CONNS_PER_SOURCE: usize = 64;
/// Most connections open at once in all.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 25_000;
/// Open files kept back from `max_connections` for the listener, the database, Redis, logs.
pub(crate) const RESERVED_FILES: u64 = 64;

/// Every connection limit and timeout of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Time to receive a request head on a new connection (actix `client_request_timeout`).
    pub header_timeout: Duration,
    /// Time to receive a request body, from the end of its head; later: 408 `request_timeout`.
    pub body_timeout: Duration,
    /// Idle time after which a kept-alive connection is closed (zero: no keep-alive).
    pub keep_alive: Duration,
    /// Time to finish closing a connection (actix `client_disconnect_timeout`).
    pub disconnect_timeout: Duration,
    /// Most connections open at once from one source; trusted proxies are exempt.
    pub max_conns_per_source: usize,
    /// Most connections open at once in all.
    pub max_connections: usize,
    /// Reverse proxies whose connections carry many clients: exempt from the per-source cap,
    /// and believed about `X-Forwarded-For` ([`client_ip`]).
    pub trusted_proxies: Vec<IpAddr>,
    /// Serve HTTPS with this certificate and key (reloaded on SIGHUP) instead of plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            body_timeout: Duration::from_secs(DEFAULT_BODY_TIMEOUT_SECS),
            keep_alive: Duration::from_secs(DEFAULT_KEEP_ALIVE_SECS),
            disconnect_timeout: Duration::from_secs(DEFAULT_DISCONNECT_TIMEOUT_SECS),
            max_conns_per_source: DEFAULT_MAX_CONNS_PER_SOURCE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            trusted_proxies: Vec::new(),
            tls: None,
        }
    }
}

impl ConnLimits {
    /// The limits set by flags and environment.
    pub fn from_config(config: &Config) -> Self {
        Self {
            header_timeout: Duration::from_secs(config.header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(config.body_timeout_secs.max(1)),
            keep_alive: Duration::from_secs(config.keep_alive_secs),
            disconnect_timeout: Duration::from_secs(config.disconnect_timeout_secs.max(1)),
            max_conns_per_source: config.max_conns_per_source.max(1),
            max_connections: config.max_connections.max(1),
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .map(|ip| ip.to_canonical())
                .collect(),
            tls: match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
        }
    }

    /// Lowers `max_connections` so that it fits in `open_files` (less 64 kept for the relay's
    /// own files): a connection the process has no file for is never accepted, and the accept
    /// loop then spins on EMFILE instead of refusing. Returns the configured value when it was lowered.
    pub fn fit_open_files(&mut self, open_files: u64) -> Option<usize> {
        let room = usize::try_from(open_files.saturating_sub(RESERVED_FILES).max(1)).unwrap_or(usize::MAX);
        (self.max_connections > room).then(|| std::mem::replace(&mut self.max_connections, room))
    }
}

/// The process's open-file limit before and after [`raise_open_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
}

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit: every connection costs
/// one open file, and 1,024, a common soft default, is soon reached.
///
/// # Errors
/// The `getrlimit`/`setrlimit` error; the limit is then unchanged.
#[cfg(unix)]
pub fn raise_open_file_limit() -> std::io::Result<OpenFileLimit> {
    let (before, _hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    // Up to the hard limit (and, on macOS, the kernel's per-process maximum).
    let now = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(OpenFileLimit { before, now })
}

fn is_trusted(ip: IpAddr, trusted: &[IpAddr]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|t| t.to_canonical() == ip)
}

/// Builds the HTTP server on `listener` with `limits`: the app from `app` on every worker,
/// behind the accept-time [`Gate`]. Stops on [`actix_server::ServerHandle::stop`]; idle
/// kept-alive connections are told to close when it does (as actix-web's `HttpServer` does).
///
/// # Errors
/// I/O errors from the listener.
pub(crate) fn serve<F, I, S, B>(
    listener: TcpListener,
    workers: Option<usize>,
    limits: &ConnLimits,
    tls: Option<rustls::ServerConfig>,
    app: F,
) -> std::io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let addr = listener.local_addr()?;
    let gate = Arc::new(Gate::new(limits));
    let mut builder = Server::build()
        .backlog(4096)
        // Per worker; the gate holds the total.
        .max_concurrent_connections(limits.max_connections)
        .shutdown_timeout(10)
        .disable_signals();
    if let Some(w) = workers {
        builder = builder.workers(w.clamp(1, 512));
    }
    let shutdown = builder.graceful_shutdown_signal();
    let keep_alive = KeepAlive::from(limits.keep_alive);
    let (head, disconnect) = (limits.header_timeout, limits.disconnect_timeout);
    // The HTTP service of one worker (the IO type, plain or TLS, is inferred where it is used).
    macro_rules! http {
        () => {{
            let shutdown = shutdown.clone();
            let app = app().into_factory().map_err(|e| e.into().error_response());
            HttpService::build()
                .keep_alive(keep_alive)
                .client_request_timeout(head)
                .client_disconnect_timeout(disconnect)
                .local_addr(addr)
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.notified().await }
                })
                .finish(map_config(app, |()| AppConfig::default()))
        }};
    }
    // The accept-time gate in front of `service` (TLS handshakes count as connections too).
    macro_rules! gated {
        ($service:expr) => {{
            let gate = gate.clone();
            apply_fn_factory($service, move |stream: TcpStream, http: &_| {
                let connection = match gate.try_admit_stream(&stream) {
                    Some(admitted) => Some((admitted, http.call(stream))),
                    None => {
                        drop(stream); // closed now: no worker time, no file held
                        None
                    }
                };
                async move {
                    match connection {
                        Some((admitted, served)) => {
                            let outcome = served.await;
                            drop(admitted);
                            outcome
                        }
                        None => Ok(()),
                    }
                }
            })
        }};
    }
    let name = format!("relay-http-{addr}");
    let builder = match tls {
        None => builder.listen(name, listener, move || gated!(http!().tcp()))?,
        Some(config) => {
            builder.listen(name, listener, move || {
                // A TLS handshake must finish within the header timeout, as a request head must.
                let accept = actix_http::TlsAcceptorConfig::default().handshake_timeout(head);
                gated!(http!().rustls_0_23_with_config(config.clone(), accept))
            })?
        }
    };
    Ok(builder.run())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_is_fitted_under_the_open_file_limit() {
        let mut limits = ConnLimits::default();
        assert_eq!(limits.fit_open_files(1024), Some(DEFAULT_MAX_CONNECTIONS));
        assert_eq!(limits.max_connections, 1024 - 64);
        assert_eq!(limits.fit_open_files(1_000_000), None);
        assert_eq!(limits.max_connections, 1024 - 64);
    }
}
