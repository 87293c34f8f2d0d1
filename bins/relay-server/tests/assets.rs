//! The web clients over real HTTP: gzip when the request allows it, the same bytes once decoded,
//! the page as it is otherwise, an ETag named by the content, and `304 Not Modified` for a
//! browser that already has it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::io::Read;

use common::Server;
use reqwest::{header, StatusCode};

/// Every file served, with its source; the pages with a pin carry the server's fingerprint.
const FILES: [(&str, &str, bool); 20] = [
    ("/", include_str!("../assets/index.html"), false),
    ("/client_ui.html", include_str!("../assets/client_ui.html"), true),
    (
        "/chat_ui_multiuser.html",
        include_str!("../assets/chat_ui_multiuser.html"),
        true,
    ),
    ("/js/mtproto.js", include_str!("../assets/js/mtproto.js"), false),
    ("/js/bytes.js", include_str!("../assets/js/bytes.js"), false),
    ("/js/crypto.js", include_str!("../assets/js/crypto.js"), false),
    ("/js/chat.js", include_str!("../assets/js/chat.js"), false),
    ("/js/session.js", include_str!("../assets/js/session.js"), false),
    ("/js/store.js", include_str!("../assets/js/store.js"), false),
    ("/js/client.js", include_str!("../assets/js/client.js"), false),
    ("/js/outbox.js", include_str!("../assets/js/outbox.js"), false),
    ("/js/ratchet.js", include_str!("../assets/js/ratchet.js"), false),
    (
        "/js/ratchet_chat.js",
        include_str!("../assets/js/ratchet_chat.js"),
        false,
    ),
    (
        "/js/conversations.js",
        include_str!("../assets/js/conversations.js"),
        false,
    ),
    (
        "/js/client_ui.js",
        include_str!("../assets/js/client_ui.js"),
        false,
    ),
    ("/js/ui_state.js", include_str!("../assets/js/ui_state.js"), false),
    (
        "/js/ui_people.js",
        include_str!("../assets/js/ui_people.js"),
        false,
    ),
    (
        "/js/ui_conversation.js",
        include_str!("../assets/js/ui_conversation.js"),
        false,
    ),
    (
        "/js/ui_actions.js",
        include_str!("../assets/js/ui_actions.js"),
        false,
    ),
    (
        "/js/chat_ui_multiuser.js",
        include_str!("../assets/js/chat_ui_multiuser.js"),
        false,
    ),
];

/// What Chromium sends.
const BROWSER: &str = "gzip, deflate, br, zstd";

fn expected(server: &Server, source: &str, pinned: bool) -> Vec<u8> {
    if !pinned {
        return source.as_bytes().to_vec();
    }
    let fp = server.server_key().fingerprint().to_string();
    source.replace("{{SERVER_FINGERPRINT}}", &fp).into_bytes()
}

async fn get(server: &Server, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(format!("{}{path}", server.url));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: header::HeaderName) -> Option<&str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_is_gzip_for_a_browser_and_the_same_bytes_once_decoded() {
    let server = Server::start(&["--engine", "memory"]).await;
    for (path, source, pinned) in FILES {
        let want = expected(&server, source, pinned);
        assert!(!String::from_utf8_lossy(&want).contains("{{SERVER_FINGERPRINT}}"));

        let plain = get(&server, path, &[]).await;
        assert_eq!(plain.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&plain, header::CONTENT_ENCODING), None, "{path}");
        assert_eq!(header(&plain, header::CACHE_CONTROL), Some("no-cache"));
        assert_eq!(header(&plain, header::VARY), Some("Accept-Encoding"));
        assert!(header(&plain, header::CONTENT_SECURITY_POLICY).is_some());
        let plain_etag = header(&plain, header::ETAG).unwrap().to_owned();
        let plain_bytes = plain.bytes().await.unwrap();
        assert_eq!(plain_bytes.as_ref(), want.as_slice(), "{path} as it is");

        let zipped = get(&server, path, &[("accept-encoding", BROWSER)]).await;
        assert_eq!(zipped.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&zipped, header::CONTENT_ENCODING), Some("gzip"), "{path}");
        assert_eq!(header(&zipped, header::VARY), Some("Accept-Encoding"));
        assert_eq!(header(&zipped, header::CACHE_CONTROL), Some("no-cache"));
        let zipped_etag = header(&zipped, header::ETAG).unwrap().to_owned();
        assert_ne!(zipped_etag, plain_etag, "{path}: two representations, two tags");
        let zipped_bytes = zipped.bytes().await.unwrap();
        assert!(zipped_bytes.len() < want.len(), "{path} is smaller compressed");
        assert_eq!(gunzip(&zipped_bytes), want, "{path} decodes to the page");
        // Bytes per page (shown with --nocapture; docs/benchmarks.md quotes them).
        println!(
            "{path}: {} B as it is, {} B gzip ({:.0} %)",
            want.len(),
            zipped_bytes.len(),
            100.0 * zipped_bytes.len() as f64 / want.len() as f64
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_encoding_is_honoured() {
    let server = Server::start(&["--engine", "memory"]).await;
    // The largest module: gzip always makes it smaller.
    let path = "/js/client.js";
    let source = FILES.iter().find(|f| f.0 == path).unwrap().1;
    for (accept, gzip) in [
        ("gzip", true),
        ("br;q=1, gzip;q=0.5", true),
        ("GZIP", true),
        ("identity", false),
        ("gzip;q=0", false),
        ("gzip;q=0, identity", false),
        ("br, zstd", false),
        // Unreadable: taken as absent.
        ("gzip;q=not-a-number", false),
    ] {
        let r = get(&server, path, &[("accept-encoding", accept)]).await;
        assert_eq!(r.status(), StatusCode::OK, "{accept}");
        let encoding = header(&r, header::CONTENT_ENCODING).map(str::to_owned);
        let body = r.bytes().await.unwrap();
        if gzip {
            assert_eq!(encoding.as_deref(), Some("gzip"), "{accept}");
            assert_eq!(gunzip(&body), source.as_bytes(), "{accept}");
        } else {
            assert_eq!(encoding, None, "{accept}");
            assert_eq!(body.as_ref(), source.as_bytes(), "{accept}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_has_the_page_gets_304_until_it_changes() {
    let server = Server::start(&["--engine", "memory"]).await;
    let path = "/chat_ui_multiuser.html";
    for accept in [None, Some(BROWSER)] {
        let ae: Vec<(&str, &str)> = accept.map(|a| ("accept-encoding", a)).into_iter().collect();
        let first = get(&server, path, &ae).await;
        let etag = header(&first, header::ETAG).unwrap().to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 32,
            "a strong tag: {etag}"
        );
        // Stable: the same bytes, the same tag.
        let again = get(&server, path, &ae).await;
        assert_eq!(header(&again, header::ETAG), Some(etag.as_str()));

        let weak = format!("W/{etag}");
        let listed = format!("\"something-else\", {etag}");
        for validator in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
            let mut h = ae.clone();
            h.push(("if-none-match", validator));
            let r = get(&server, path, &h).await;
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{validator} {accept:?}");
            // RFC 9110 §15.4.5: what a 200 would have said for caching.
            assert_eq!(header(&r, header::ETAG), Some(etag.as_str()));
            assert_eq!(header(&r, header::CACHE_CONTROL), Some("no-cache"));
            assert_eq!(header(&r, header::VARY), Some("Accept-Encoding"));
            assert!(r.bytes().await.unwrap().is_empty(), "a 304 has no body");
        }
        // Another tag (an older page, or the other encoding's copy): the page itself.
        let other = if accept.is_some() {
            header(&get(&server, path, &[]).await, header::ETAG)
                .unwrap()
                .to_owned()
        } else {
            "\"0123456789abcdef0123456789abcdef\"".to_owned()
        };
        let mut h = ae.clone();
        h.push(("if-none-match", other.as_str()));
        let r = get(&server, path, &h).await;
        assert_eq!(r.status(), StatusCode::OK, "{other} {accept:?}");
        assert_eq!(header(&r, header::ETAG), Some(etag.as_str()));
        assert!(!r.bytes().await.unwrap().is_empty());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etag_follows_the_content() {
    // Two relays, two server keys: the pinned pages differ, so do their tags; the scripts are the
    // same bytes, with the same tag.
    let one = Server::start(&["--engine", "memory"]).await;
    let two = Server::start(&["--engine", "memory"]).await;
    assert_ne!(
        one.server_key().fingerprint().to_string(),
        two.server_key().fingerprint().to_string()
    );
    for (path, _, pinned) in FILES {
        for accept in [&[][..], &[("accept-encoding", BROWSER)][..]] {
            let a = get(&one, path, accept).await;
            let b = get(&two, path, accept).await;
            let (ta, tb) = (header(&a, header::ETAG), header(&b, header::ETAG));
            if pinned {
                assert_ne!(ta, tb, "{path}");
            } else {
                assert_eq!(ta, tb, "{path}");
            }
        }
    }
    one.stop().await;
    two.stop().await;
}
