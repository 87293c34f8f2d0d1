//! The web clients, built into the binary (no CDN, nothing fetched from elsewhere). The two pages
//! carry the server's key fingerprint, which the page's handshake pins.

use actix_web::{web, HttpResponse};
use relay_core::Relay;

const INDEX: &str = include_str!("../assets/index.html");
const CLIENT_UI: &str = include_str!("../assets/client_ui.html");
const MULTIUSER_UI: &str = include_str!("../assets/chat_ui_multiuser.html");
const MTPROTO_JS: &str = include_str!("../assets/js/mtproto.js");
const CLIENT_UI_JS: &str = include_str!("../assets/js/client_ui.js");
const MULTIUSER_JS: &str = include_str!("../assets/js/chat_ui_multiuser.js");

const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; \
                   img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn page(body: String, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Content-Security-Policy", CSP))
        .body(body)
}

fn with_pin(html: &str, relay: &Relay) -> String {
    html.replace(
        "{{SERVER_FINGERPRINT}}",
        &relay.server_key().public().fingerprint().to_string(),
    )
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(|| async { page(INDEX.to_owned(), HTML) }))
        .route("/favicon.ico", web::get().to(HttpResponse::NoContent))
        .route(
            "/client_ui.html",
            web::get().to(|r: web::Data<Relay>| async move { page(with_pin(CLIENT_UI, &r), HTML) }),
        )
        .route(
            "/chat_ui_multiuser.html",
            web::get().to(|r: web::Data<Relay>| async move { page(with_pin(MULTIUSER_UI, &r), HTML) }),
        )
        .route(
            "/js/mtproto.js",
            web::get().to(|| async { page(MTPROTO_JS.to_owned(), JS) }),
        )
        .route(
            "/js/client_ui.js",
            web::get().to(|| async { page(CLIENT_UI_JS.to_owned(), JS) }),
        )
        .route(
            "/js/chat_ui_multiuser.js",
            web::get().to(|| async { page(MULTIUSER_JS.to_owned(), JS) }),
        );
}
