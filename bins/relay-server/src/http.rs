//! HTTP: routes and handlers, the one place where relay errors become HTTP statuses, the
//! request log, the stats/metrics listener and the HTTPS redirect.

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix_web::{http::StatusCode, web, App, HttpResponse};
use mtproto_crypto::rand_core::OsRng;
use relay_api::{Endpoint, EnvelopeRequest, ErrorBody, ErrorCode};
use relay_core::{limits::Step, Relay, RelayError};
use serde::Serialize;

use crate::{assets, client_ip, conn, metrics, tls};

/// Largest request body accepted (a 64 KiB payload as a JSON byte array is about 4× that).
pub const MAX_BODY_BYTES: usize = 512 * 1024;

/// The HTTP status of a relay error: its code's ([`ErrorCode::http_status`], one table for
/// the server, the clients and the OpenAPI document).
pub fn status_of(e: &RelayError) -> StatusCode {
    status_for(e.code())
}

/// [`ErrorCode::http_status`] as actix's type (every code's status is a valid one).
fn status_for(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The JSON error response for `e`.
pub fn error_response(e: &RelayError) -> HttpResponse {
    let status = status_of(e);
    if matches!(e, RelayError::Busy) {
        // A flood of new handshakes: one line a second, not one per refusal.
        let second = unix_second();
        if BUSY_LOGGED.swap(second, Ordering::Relaxed) != second {
            tracing::warn!("too many handshakes pending; answering 503 busy");
        }
    } else if let RelayError::Unavailable(why) = e {
        // During an outage every request fails the same way: one line a second, with a count.
        let refused = UNAVAILABLE_ANSWERS.fetch_add(1, Ordering::Relaxed) + 1;
        let second = unix_second();
        if UNAVAILABLE_LOGGED.swap(second, Ordering::Relaxed) != second {
            tracing::error!(error = %why, refused_since_start = refused, "storage unavailable; answering 503");
        }
    } else if status.is_server_error() {
        tracing::error!(error = ?e, "request failed");
    } else {
        tracing::debug!(code = e.code().as_str(), "request refused");
    }
    let (mtproto_code, notice) = match e {
        RelayError::BadMsg { code, notice } => (
            Some(code.code()),
            notice.clone().map(mtproto_session::wire::Bytes),
        ),
        _ => (None, None),
    };
    // Internal details go to the log above, never to the client.
    let message = match e {
        RelayError::Internal(_) => "internal error; nothing was stored".to_owned(),
        other => other.to_string(),
    };
    let mut answer = HttpResponse::build(status);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        answer.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
    }
    if let RelayError::RateLimited { retry_after_secs } = e {
        RATE_LIMITED_ANSWERS.fetch_add(1, Ordering::Relaxed);
        answer.insert_header((actix_web::http::header::RETRY_AFTER, retry_after_secs.to_string()));
    }
    metrics::metrics().refusal(e.code().as_str());
    answer.json(ErrorBody {
        error: e.code(),
        message,
        mtproto_code,
        notice,
    })
}

/// A refusal made by the HTTP layer itself (the body could not be read or parsed, no route).
pub(crate) fn client_error(code: ErrorCode, message: String) -> HttpResponse {
    metrics::metrics().refusal(code.as_str());
    HttpResponse::build(status_for(code)).json(ErrorBody::new(code, message))
}

/// Reads a JSON body, answering malformed or oversized input with a JSON error.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per request
fn parse<T: serde::de::DeserializeOwned>(
    body: Result<web::Bytes, actix_web::Error>,
) -> Result<T, HttpResponse> {
    let body = body.map_err(|e| {
        let too_large = e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE;
        if too_large {
            client_error(
                ErrorCode::PayloadTooLarge,
                format!("body over {MAX_BODY_BYTES} bytes"),
            )
        } else if let Some(late) = conn::body_timed_out(&e) {
            client_error(ErrorCode::RequestTimeout, late.to_string())
        } else {
            client_error(ErrorCode::BadRequest, e.to_string())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        let code = if e.is_data() {
            ErrorCode::InvalidField
        } else {
            ErrorCode::MalformedJson
        };
        client_error(code, e.to_string())
    })
}

fn respond<T: Serialize>(r: Result<T, RelayError>) -> HttpResponse {
    match r {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => error_response(&e),
    }
}

type Body = Result<web::Bytes, actix_web::Error>;

/// Counts a request as in flight until its answer is ready (for the shutdown's drain).
pub(crate) struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    pub(crate) fn enter(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The proxies whose `X-Forwarded-For` names the client (`--trusted-proxy`).
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(pub(crate) Arc<Vec<std::net::IpAddr>>);

/// The address limits count a request against: the peer, or behind a trusted proxy the client
/// it names ([`client_ip`]).
fn source_of(req: &actix_web::HttpRequest) -> std::net::IpAddr {
    let trusted = req
        .app_data::<TrustedProxies>()
        .map(|t| t.0.as_slice())
        .unwrap_or_default();
    client_ip(req, trusted).unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Admits an unauthenticated step from the request's source before any work is done on it;
/// the refusal to answer with when it is not admitted.
fn refuse(relay: &Relay, req: &actix_web::HttpRequest, step: Step) -> Option<HttpResponse> {
    relay
        .sources()
        .admit(source_of(req), step, std::time::Instant::now())
        .err()
        .map(|e| error_response(&e))
}

async fn req_pq(relay: web::Data<Relay>, http: actix_web::HttpRequest, body: Body) -> HttpResponse {
    if let Some(refused) = refuse(&relay, &http, Step::ReqPq) {
        return refused;
    }
    match parse(body) {
        Ok(req) => respond(relay.req_pq(&req).await),
        Err(resp) => resp,
    }
}

async fn req_dh_params(relay: web::Data<Relay>, http: actix_web::HttpRequest, body: Body) -> HttpResponse {
    if let Some(refused) = refuse(&relay, &http, Step::ReqDhParams) {
        return refused;
    }
    match parse(body) {
        Ok(req) => respond(relay.req_dh_params(&req).await),
        Err(resp) => resp,
    }
}

async fn set_client_dh_params(
    relay: web::Data<Relay>,
    http: actix_web::HttpRequest,
    body: Body,
) -> HttpResponse {
    if let Some(refused) = refuse(&relay, &http, Step::SetClientDhParams) {
        return refused;
    }
    match parse(body) {
        Ok(req) => {
            let done = relay.set_client_dh_params(&req).await;
            if done.is_ok() {
                relay.sources().finished(source_of(&http));
            }
            respond(done)
        }
        Err(resp) => resp,
    }
}

async fn envelope(relay: web::Data<Relay>, endpoint: Endpoint, body: Body) -> HttpResponse {
    match parse::<EnvelopeRequest>(body) {
        Ok(req) => respond(relay.handle(endpoint, &req).await),
        Err(resp) => resp,
    }
}

/// Answers refused with 503 `storage_unavailable` since start-up (for `/stats`).
static UNAVAILABLE_ANSWERS: AtomicU64 = AtomicU64::new(0);
/// The Unix second in which the last `busy` refusal was logged.
static BUSY_LOGGED: AtomicU64 = AtomicU64::new(0);

fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Answers refused with 429 `rate_limited` since start-up (for `/stats`).
static RATE_LIMITED_ANSWERS: AtomicU64 = AtomicU64::new(0);
/// The Unix second in which the last such refusal was logged.
static UNAVAILABLE_LOGGED: AtomicU64 = AtomicU64::new(0);

/// 200 `{"status": "ok", "storage": "ok"}` while the engine can serve; 503 with
/// `"unavailable"` otherwise. Public: it says up or down and nothing else (the details go to
/// the log; counters to the operator-only `/stats`).
async fn healthz(relay: web::Data<Relay>) -> HttpResponse {
    let (status, state) = match relay.engine().health().await {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(e) => {
            tracing::warn!(error = %e, "health check: storage unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    };
    HttpResponse::build(status).json(serde_json::json!({ "status": state, "storage": state }))
}

/// The operator-only counters, served on `--metrics-bind` only.
async fn stats(relay: web::Data<Relay>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "engine": relay.engine().name(),
        "fingerprint": relay.server_key().public().fingerprint().to_string(),
        "stats": relay.engine().stats(),
        "long_polls": relay.notifier().live(),
        "unavailable_answers": UNAVAILABLE_ANSWERS.load(Ordering::Relaxed),
        "rate_limited_answers": RATE_LIMITED_ANSWERS.load(Ordering::Relaxed),
        "tracked_sources": relay.sources().tracked_sources(),
    }))
}

/// The Prometheus metrics (`docs/deployment.md` "Metrics"), served on `--metrics-bind` only.
async fn prometheus(relay: web::Data<Relay>) -> HttpResponse {
    match metrics::metrics().render(&relay) {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

/// Serves the operator-only counters (`GET /stats`) and metrics (`GET /metrics`) on `listener`
/// until the process ends.
///
/// # Errors
/// I/O errors from the listener.
pub async fn serve_stats(relay: Arc<Relay>, listener: TcpListener) -> std::io::Result<()> {
    let data = web::Data::from(relay);
    actix_web::HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/stats", web::get().to(stats))
            .route("/metrics", web::get().to(prometheus))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run()
    .await
}

/// The OpenAPI 3.1 document of the HTTP API (`bins/relay-server/openapi.json`): the routes and
/// the carriers; docs/protocol.md describes what travels inside envelopes. Kept in step with the
/// code by `tests/openapi.rs` and exercised by `scripts/api-fuzz.sh` (schemathesis).
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .body(OPENAPI)
}

async fn server_key(relay: web::Data<Relay>) -> HttpResponse {
    let pk = relay.server_key().public();
    HttpResponse::Ok().json(serde_json::json!({
        "fingerprint": pk.fingerprint().to_string(),
        "public_key": mtproto_session::wire::b64(pk.as_bytes()),
    }))
}

async fn echo(body: Body) -> HttpResponse {
    match parse::<serde_json::Value>(body) {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(resp) => resp,
    }
}

/// Resolves on SIGINT or SIGTERM; never, if they cannot be watched (a warning says so).
pub(crate) async fn termination_signal() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let int = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot watch SIGINT");
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = term => {}
        () = int => {}
    }
}

/// Every route. `echo` adds the plain `/echo` endpoint used as the load-test baseline. The web
/// clients answer from the prepared pages that [`crate::run_with_limits`] puts in the app data.
pub fn routes(cfg: &mut web::ServiceConfig, echo_route: bool) {
    cfg.route("/req_pq", web::post().to(req_pq))
        .route("/req_dh_params", web::post().to(req_dh_params))
        .route("/set_client_dh_params", web::post().to(set_client_dh_params));
    // Every authenticated endpoint, from the one list relay-api keeps.
    for endpoint in Endpoint::ALL {
        cfg.route(
            endpoint.path(),
            web::post().to(move |r, b| envelope(r, endpoint, b)),
        );
    }
    cfg.route("/healthz", web::get().to(healthz))
        .route("/healthz", web::head().to(healthz))
        .route("/server_key", web::get().to(server_key))
        .route("/server_key", web::head().to(server_key))
        .route("/openapi.json", web::get().to(openapi));
    assets::routes(cfg);
    if echo_route {
        cfg.route("/echo", web::post().to(echo));
    }
}

/// Reloads the certificate from its files on every SIGHUP (new handshakes get the new one;
/// connections already open keep going). A failed reload keeps the old certificate.
pub(crate) async fn reload_on_sighup(store: Arc<tls::CertStore>) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP: the certificate will not be reloaded");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match store.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificate NOT reloaded; the old one stays")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = store;
}

/// Answers every plain-HTTP request on `listener` with a 308 to the same path over HTTPS on
/// `https_port` (same host name).
///
/// # Errors
/// I/O errors from the listener.
pub async fn serve_https_redirect(listener: TcpListener, https_port: u16) -> std::io::Result<()> {
    actix_web::HttpServer::new(move || {
        App::new().default_service(web::to(move |req: actix_web::HttpRequest| async move {
            // The Host header only (never X-Forwarded-Host), and only a plain host name or
            // address: anything else gets no redirect to follow.
            let host = req
                .headers()
                .get(actix_web::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let plain = !host.is_empty()
                && host.len() <= 255
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
            if !plain {
                return client_error(ErrorCode::BadRequest, "a Host header is needed".into());
            }
            // The host without its port (IPv6 literals keep their brackets).
            let name = match host.rsplit_once(':') {
                Some((name, port)) if !port.contains(']') => name.to_owned(),
                _ => host,
            };
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", actix_web::http::uri::PathAndQuery::as_str)
                .to_owned();
            HttpResponse::PermanentRedirect()
                .insert_header((
                    actix_web::http::header::LOCATION,
                    format!("https://{name}:{https_port}{path}"),
                ))
                .finish()
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run()
    .await
}

/// The header that carries a request's id back to the client: the same id is on every log line
/// about the request, so a user's report can be matched with the log.
pub const REQUEST_ID: &str = "x-request-id";

/// Gives each request an id (16 hex digits, random), answers it in [`REQUEST_ID`], runs the
/// request inside a span carrying it (every log line of the request names it), and logs one
/// line per request at debug — at warn for a server error (5xx).
pub(crate) fn request_log<S, B>(
    req: actix_web::dev::ServiceRequest,
    srv: &S,
) -> impl Future<Output = Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>>
where
    S: actix_web::dev::Service<
        actix_web::dev::ServiceRequest,
        Response = actix_web::dev::ServiceResponse<B>,
        Error = actix_web::Error,
    >,
{
    use mtproto_crypto::rand_core::RngCore;
    use tracing::Instrument;
    let id = format!("{:016x}", OsRng.next_u64());
    let span = tracing::info_span!("request", id = %id);
    let (method, path) = (req.method().clone(), req.path().to_owned());
    let started = std::time::Instant::now();
    let answer = {
        let _entered = span.enter();
        srv.call(req)
    };
    async move {
        let mut res = answer.await?;
        let status = res.status().as_u16();
        let took = started.elapsed();
        metrics::metrics().request(&method, &path, status, took);
        let ms = took.as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::warn!(%method, %path, status, ms, "request failed");
        } else {
            tracing::debug!(%method, %path, status, ms, "request");
        }
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&id) {
            res.headers_mut()
                .insert(actix_web::http::header::HeaderName::from_static(REQUEST_ID), v);
        }
        Ok(res)
    }
    .instrument(span)
}
