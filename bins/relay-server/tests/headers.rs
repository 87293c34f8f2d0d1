//! Security headers on every answer, HEAD where GET is, a request id in the answer and in the
//! log, and JSON logs (issue 16), through the real binary.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use common::{relay_command, ServerProcess};

fn request_id(r: &reqwest::Response) -> String {
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_has_security_headers_and_a_request_id_found_in_the_json_log() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let mut cmd = relay_command(dir.path(), "127.0.0.1:0", 1);
    cmd.args(["--log-format", "json"])
        .env("RUST_LOG", "debug,actix_server=warn")
        .stderr(std::fs::File::create(&log_path).unwrap());
    let server = ServerProcess::spawn(cmd);
    let http = reqwest::Client::new();

    // A page: its CSP (no inline scripts), and the headers every answer has.
    let page = http
        .get(format!("{}/client_ui.html", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("script-src 'self' 'unsafe-inline'"),
        "{csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let page_id = request_id(&page);
    let etag = h["etag"].clone();
    assert!(!page.bytes().await.unwrap().is_empty());

    // HEAD where GET is: same status and validators, no body.
    for path in [
        "/client_ui.html",
        "/js/mtproto.js",
        "/js/ratchet.js",
        "/healthz",
        "/server_key",
        "/",
    ] {
        let r = http.head(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "HEAD {path}");
        assert_eq!(r.headers()["x-frame-options"], "DENY", "HEAD {path}");
        if path == "/client_ui.html" {
            assert_eq!(r.headers()["etag"], etag);
        }
        assert!(r.bytes().await.unwrap().is_empty(), "HEAD {path} has no body");
    }

    // A client mistake: the JSON error has the same headers and its own id.
    let bad = http
        .post(format!("{}/secure_message", server.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["x-content-type-options"], "nosniff");
    assert_eq!(bad.headers()["x-frame-options"], "DENY");
    let bad_id = request_id(&bad);
    assert_ne!(bad_id, page_id);

    // The JSON log names each request with its id: one object a line.
    let mut found = (false, false);
    for _ in 0..50 {
        let log = std::fs::read_to_string(&log_path).unwrap();
        for line in log.lines().filter(|l| l.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(line).expect("every line is JSON");
            let id = v["span"]["id"].as_str().unwrap_or("");
            let path = v["fields"]["path"].as_str().unwrap_or("");
            if id == page_id && path == "/client_ui.html" {
                found.0 = true;
            }
            if id == bad_id && path == "/secure_message" && v["fields"]["status"] == 400 {
                found.1 = true;
            }
        }
        if found == (true, true) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        found,
        (true, true),
        "{}",
        std::fs::read_to_string(&log_path).unwrap()
    );
}
