//! The web clients, built into the binary (no CDN, nothing fetched from elsewhere). The two pages
//! carry the server's key fingerprint, which the page's handshake pins.
//!
//! Every file is prepared once, when the server starts ([`Assets::new`]): pinned, gzip-compressed,
//! and named by an `ETag` taken from a hash of its bytes. A request is answered from that table:
//! gzip when its `Accept-Encoding` allows it (else the bytes as they are), `Cache-Control:
//! no-cache` so that a browser keeps a copy but asks again before each use, and `304 Not Modified`
//! when its `If-None-Match` names the representation it would get (RFC 9110 §8.8.3, §13.1.2,
//! §15.4.5). `Vary: Accept-Encoding` tells caches that the answer depends on that header.

use std::collections::HashMap;
use std::io::Write;

use actix_web::http::header::{
    AcceptEncoding, ContentEncoding, Encoding, EntityTag, Header, IfNoneMatch, CACHE_CONTROL,
    CONTENT_ENCODING, CONTENT_SECURITY_POLICY, ETAG, REFERRER_POLICY, VARY, X_CONTENT_TYPE_OPTIONS,
};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};
use flate2::{write::GzEncoder, Compression};
use relay_core::Relay;
use sha2::{Digest, Sha256};

const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; \
                   img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// What a page shows in place of this, the server key's fingerprint.
const PIN_SLOT: &str = "{{SERVER_FINGERPRINT}}";

/// Every file served: its path, type and source, and whether it carries the pin.
const FILES: [(&str, &str, &str, bool); 20] = [
    ("/", HTML, include_str!("../assets/index.html"), false),
    (
        "/client_ui.html",
        HTML,
        include_str!("../assets/client_ui.html"),
        true,
    ),
    (
        "/chat_ui_multiuser.html",
        HTML,
        include_str!("../assets/chat_ui_multiuser.html"),
        true,
    ),
    (
        "/js/mtproto.js",
        JS,
        include_str!("../assets/js/mtproto.js"),
        false,
    ),
    ("/js/bytes.js", JS, include_str!("../assets/js/bytes.js"), false),
    ("/js/crypto.js", JS, include_str!("../assets/js/crypto.js"), false),
    ("/js/chat.js", JS, include_str!("../assets/js/chat.js"), false),
    (
        "/js/session.js",
        JS,
        include_str!("../assets/js/session.js"),
        false,
    ),
    ("/js/store.js", JS, include_str!("../assets/js/store.js"), false),
    ("/js/client.js", JS, include_str!("../assets/js/client.js"), false),
    ("/js/outbox.js", JS, include_str!("../assets/js/outbox.js"), false),
    (
        "/js/ratchet.js",
        JS,
        include_str!("../assets/js/ratchet.js"),
        false,
    ),
    (
        "/js/ratchet_chat.js",
        JS,
        include_str!("../assets/js/ratchet_chat.js"),
        false,
    ),
    (
        "/js/conversations.js",
        JS,
        include_str!("../assets/js/conversations.js"),
        false,
    ),
    (
        "/js/client_ui.js",
        JS,
        include_str!("../assets/js/client_ui.js"),
        false,
    ),
    (
        "/js/ui_state.js",
        JS,
        include_str!("../assets/js/ui_state.js"),
        false,
    ),
    (
        "/js/ui_people.js",
        JS,
        include_str!("../assets/js/ui_people.js"),
        false,
    ),
    (
        "/js/ui_conversation.js",
        JS,
        include_str!("../assets/js/ui_conversation.js"),
        false,
    ),
    (
        "/js/ui_actions.js",
        JS,
        include_str!("../assets/js/ui_actions.js"),
        false,
    ),
    (
        "/js/chat_ui_multiuser.js",
        JS,
        include_str!("../assets/js/chat_ui_multiuser.js"),
        false,
    ),
];

/// One representation of a file: its bytes and the `ETag` that names them.
struct Representation {
    body: web::Bytes,
    etag: EntityTag,
}

/// One file, ready to serve.
struct Asset {
    content_type: &'static str,
    identity: Representation,
    /// Absent when gzip would not make it smaller.
    gzip: Option<Representation>,
}

/// The web clients of one relay, prepared once (see the module documentation).
pub(crate) struct Assets {
    files: HashMap<&'static str, Asset>,
}

impl Assets {
    /// Pins the pages to `relay`'s server key and compresses every file.
    pub(crate) fn new(relay: &Relay) -> Self {
        let fingerprint = relay.server_key().public().fingerprint().to_string();
        let files = FILES
            .iter()
            .map(|&(path, content_type, source, pinned)| {
                let text = if pinned {
                    source.replace(PIN_SLOT, &fingerprint)
                } else {
                    source.to_owned()
                };
                (path, Asset::new(content_type, text.into_bytes()))
            })
            .collect();
        Self { files }
    }

    /// The answer to a GET of `path` (a path of [`FILES`]).
    fn answer(&self, path: &str, req: &HttpRequest) -> HttpResponse {
        let Some(asset) = self.files.get(path) else {
            return HttpResponse::NotFound().finish();
        };
        // A header that does not parse counts as absent: the bytes as they are.
        let gzip_ok = AcceptEncoding::parse(req).is_ok_and(|accept| {
            accept.negotiate([Encoding::identity(), Encoding::gzip()].iter()) == Some(Encoding::gzip())
        });
        let (chosen, encoding) = match (&asset.gzip, gzip_ok) {
            (Some(gz), true) => (gz, Some(ContentEncoding::Gzip)),
            _ => (&asset.identity, None),
        };
        let not_modified = match IfNoneMatch::parse(req) {
            Ok(IfNoneMatch::Any) => true,
            // RFC 9110 §13.1.2: If-None-Match compares weakly.
            Ok(IfNoneMatch::Items(tags)) => tags.iter().any(|t| t.weak_eq(&chosen.etag)),
            Err(_) => false,
        };
        if not_modified {
            // §15.4.5: the headers a 200 would have carried for caching, no body.
            return validators(&mut HttpResponse::NotModified(), chosen).finish();
        }
        let mut ok = HttpResponse::Ok();
        validators(&mut ok, chosen).content_type(asset.content_type);
        if let Some(encoding) = encoding {
            ok.insert_header((CONTENT_ENCODING, encoding));
        }
        ok.body(chosen.body.clone())
    }
}

impl Asset {
    fn new(content_type: &'static str, bytes: Vec<u8>) -> Self {
        let hash = Sha256::digest(&bytes);
        // 128 bits of the hash name the bytes; the gzip form gets its own tag (a different
        // representation of the same file), so a cache never mixes the two up.
        let tag = hex::encode(hash.get(..16).unwrap_or_default());
        let gzip = gzip(&bytes)
            .filter(|gz| gz.len() < bytes.len())
            .map(|gz| Representation {
                body: gz.into(),
                etag: EntityTag::new_strong(format!("{tag}-gzip")),
            });
        Self {
            content_type,
            identity: Representation {
                body: bytes.into(),
                etag: EntityTag::new_strong(tag),
            },
            gzip,
        }
    }
}

/// `bytes` gzip-compressed at the best level (once, at start, so the time is spent once); None if
/// compressing failed, and the file is then served as it is.
fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes).ok()?;
    encoder.finish().ok()
}

/// The headers of both a 200 and a 304.
fn validators<'a>(
    builder: &'a mut HttpResponseBuilder,
    chosen: &Representation,
) -> &'a mut HttpResponseBuilder {
    builder
        .insert_header((ETAG, chosen.etag.to_string()))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .insert_header((VARY, "Accept-Encoding"))
        .insert_header((X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((REFERRER_POLICY, "no-referrer"))
        .insert_header((CONTENT_SECURITY_POLICY, CSP))
}

/// The routes of [`FILES`]; they answer from the [`Assets`] in the app data.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/favicon.ico", web::get().to(HttpResponse::NoContent));
    for &(path, ..) in &FILES {
        // HEAD as GET: the same headers, no body (actix sends none for HEAD).
        for method in [web::get(), web::head()] {
            cfg.route(
                path,
                method.to(move |assets: web::Data<Assets>, req: HttpRequest| async move {
                    assets.answer(path, &req)
                }),
            );
        }
    }
}
