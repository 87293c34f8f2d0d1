//! The web clients, built into the binary (no CDN, nothing fetched from elsewhere).

use actix_web::{web, HttpResponse};

const INDEX: &str = include_str!("../assets/index.html");

fn page(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'",
        ))
        .body(body)
}

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/",
        web::get().to(|| async { page(INDEX, "text/html; charset=utf-8") }),
    );
}
