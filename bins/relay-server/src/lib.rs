//! The relay server's wiring, one job per file: `config` (flags and environment), `startup`
//! (data directory, server key file, engines, the checks that refuse a damaged store), `http`
//! (routes, the one place where relay errors become HTTP statuses, the request log), `conn`
//! (connection limits), `tls`, `metrics` and the web clients' `assets`. This file runs the
//! listeners ([`run`]). The binary (`main.rs`) only reads the configuration, sets up logging,
//! binds and calls [`run`].
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Service as _;
use actix_web::{web, App};
use relay_api::ErrorCode;
use relay_core::Relay;

mod assets;
mod config;
mod conn;
mod http;
pub mod metrics;
mod spawn;
mod startup;
pub mod tls;

pub use config::{Command, Config, EngineKind, LogFormat};
pub use conn::{client_ip, raise_open_file_limit, BodyTimedOut, ConnLimits, OpenFileLimit};
use http::{client_error, reload_on_sighup, request_log, termination_signal, InFlight, TrustedProxies};
pub use http::{
    error_response, routes, serve_https_redirect, serve_stats, status_of, MAX_BODY_BYTES, OPENAPI, REQUEST_ID,
};
pub use spawn::{spawn, RunningServer};
pub use startup::{
    build_relay, check_database, load_or_create_key, open_engine, run_command, secure_data_dir, StartError,
};

/// [`run_with_limits`] with the default [`ConnLimits`].
///
/// # Errors
/// I/O errors from the listener.
pub async fn run(
    relay: Arc<Relay>,
    listener: TcpListener,
    workers: Option<usize>,
    echo_route: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_with_limits(
        relay,
        listener,
        workers,
        echo_route,
        ConnLimits::default(),
        shutdown,
    )
    .await
}

/// Serves `relay` on `listener` within `limits` until `shutdown` completes (or
/// SIGINT/SIGTERM): then stops accepting, answers every waiting long-poll at once
/// ([`Relay::end_long_polls`]), lets in-flight requests finish (up to 10 s), and returns.
///
/// # Errors
/// I/O errors from the listener.
pub async fn run_with_limits(
    relay: Arc<Relay>,
    listener: TcpListener,
    workers: Option<usize>,
    echo_route: bool,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let data = web::Data::from(relay.clone());
    // The web clients, pinned and compressed once for every worker.
    let assets = web::Data::new(assets::Assets::new(&relay));
    let body_timeout = limits.body_timeout;
    let trusted = TrustedProxies(Arc::new(limits.trusted_proxies.clone()));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let draining = in_flight.clone();
    let tls_config = start_tls(&limits)?;
    let hsts = tls_config.is_some();
    let server = conn::serve(listener, workers, &limits, tls_config, move || {
        let mut headers = actix_web::middleware::DefaultHeaders::new()
            .add((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .add((actix_web::http::header::X_FRAME_OPTIONS, "DENY"))
            .add((actix_web::http::header::REFERRER_POLICY, "no-referrer"));
        if hsts {
            // Browsers that saw the relay over HTTPS once never use plain HTTP with it again.
            headers = headers.add((
                actix_web::http::header::STRICT_TRANSPORT_SECURITY,
                "max-age=31536000",
            ));
        }
        App::new()
            .app_data(data.clone())
            .app_data(assets.clone())
            .app_data(trusted.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .wrap_fn(request_log)
            // On every answer (the pages add their CSP): no sniffing, no framing, no referrer;
            // HSTS over TLS.
            .wrap(headers)
            .wrap_fn({
                let in_flight = in_flight.clone();
                move |req, srv| {
                    let counted = InFlight::enter(&in_flight);
                    let answer = srv.call(conn::with_body_deadline(req, body_timeout));
                    async move {
                        let answer = answer.await;
                        drop(counted);
                        answer
                    }
                }
            })
            .configure(|cfg| routes(cfg, echo_route))
            .default_service(web::to(|| async {
                client_error(ErrorCode::NotFound, "no such endpoint".to_owned())
            }))
    })?;
    let handle = server.handle();
    let purger = tokio::spawn(purge_forever(relay.clone()));
    tokio::spawn(stop_when(shutdown, handle, relay, draining));
    let result = server.await;
    purger.abort();
    result
}

/// The TLS configuration `limits` ask for (certificates loaded, reloaded on SIGHUP), or `None`
/// for plain HTTP.
fn start_tls(limits: &ConnLimits) -> std::io::Result<Option<rustls::ServerConfig>> {
    let Some(files) = &limits.tls else {
        return Ok(None);
    };
    let store =
        Arc::new(tls::CertStore::load(files.clone()).map_err(|e| std::io::Error::other(e.to_string()))?);
    let config = store
        .server_config()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio::spawn(reload_on_sighup(store));
    Ok(Some(config))
}

/// Expired mailbox entries and stale state every purge interval; unused accounts every tenth
/// run (5 minutes by default), a bounded batch.
async fn purge_forever(relay: Arc<Relay>) {
    for round in 0u64.. {
        tokio::time::sleep(relay.config().purge_interval).await;
        if let Err(e) = relay.purge().await {
            tracing::warn!(error = %e, "purge failed");
        }
        if round % 10 == 0 {
            if let Err(e) = relay.purge_accounts(1_000).await {
                tracing::warn!(error = %e, "account purge failed");
            }
        }
    }
}

/// On `shutdown` or SIGINT/SIGTERM: no new connections, long-polls answered now, in-flight
/// requests finish (`draining` counts them). actix's graceful stop looks at its connections
/// once a second; we know when the last request was answered, so wait for that (at most the
/// 10 s grace), give the answer a moment to leave, then close what is left (idle kept-alive
/// connections).
async fn stop_when(
    shutdown: impl Future<Output = ()>,
    handle: actix_web::dev::ServerHandle,
    relay: Arc<Relay>,
    draining: Arc<std::sync::atomic::AtomicUsize>,
) {
    tokio::select! {
        () = shutdown => {}
        () = termination_signal() => {}
    }
    tracing::info!("stopping: no new connections, long-polls answered now, in-flight requests finish");
    handle.pause().await;
    relay.end_long_polls();
    let grace = std::time::Instant::now() + Duration::from_secs(10);
    while draining.load(Ordering::Acquire) > 0 && std::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    handle.stop(false).await;
}
