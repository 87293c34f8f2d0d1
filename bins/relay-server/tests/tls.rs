//! TLS in the relay binary (issue 16): HTTPS with a certificate the test makes, HTTP/2 and
//! HTTP/1.1, HSTS, a Rust client conversation over HTTPS, the plain-HTTP redirect, and a
//! certificate reload on SIGHUP that keeps open connections.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::relay_command;
use relay_client::{Client, ClientConfig, Event, Pin};

/// A self-signed certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
fn certificate(name: &str) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

struct Tls {
    child: std::process::Child,
    url: String,
    redirect: String,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path) -> Tls {
    let mut cmd = relay_command(dir, "127.0.0.1:0", 1);
    cmd.args(["--tls-cert", dir.join("cert.pem").to_str().unwrap()])
        .args(["--tls-key", dir.join("key.pem").to_str().unwrap()])
        .args(["--tls-redirect-bind", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut redirect) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(u) = line.strip_prefix("relay-server listening on ") {
            url = u.trim().to_owned();
        }
        if let Some(r) = line.trim().strip_prefix("redirect:") {
            redirect = r.split_whitespace().next().unwrap().to_owned();
        }
        if line.trim().starts_with("web clients:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");
    Tls { child, url, redirect }
}

fn https_client(cert: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_https_h2_and_h1_redirects_http_and_reloads_its_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate("first");
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    let relay = start(dir.path());

    // HTTP/2 by ALPN, HSTS, and the headers every answer has.
    let h2 = https_client(&cert).build().unwrap();
    let page = h2
        .get(format!("{}/client_ui.html", relay.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.version(), reqwest::Version::HTTP_2);
    assert_eq!(page.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    // HTTP/1.1 too.
    let h1 = https_client(&cert).http1_only().build().unwrap();
    let r = h1.get(format!("{}/healthz", relay.url)).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_11)
    );
    // Plain HTTP on the TLS port is not served; the redirect listener sends it to HTTPS.
    let plain_on_tls = relay.url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain_on_tls}/healthz")).await.is_err());
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .get(format!("{}/client_ui.html?x=1", relay.redirect))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{}/client_ui.html?x=1", relay.url)
    );

    // A conversation through the Rust client over HTTPS.
    let key = common::fetch_server_key_with(&h2, &relay.url).await;
    let cfg = |name: &str| {
        ClientConfig::new(&relay.url, name, Pin::Key(key)).with_root_certificate(cert.as_bytes())
    };
    let alice = Client::connect(cfg("alice")).await.unwrap();
    let bob = Client::connect(cfg("bob")).await.unwrap();
    alice.send("bob", b"over tls").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        for ev in bob.poll(Duration::from_millis(300)).await.unwrap() {
            if let Event::Message { body, .. } = ev {
                got.push(body);
            }
        }
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got, vec![b"over tls".to_vec()]);

    // A new certificate on disk and SIGHUP: new connections get it; the open HTTP/2 connection
    // (made under the old one) keeps working; a client trusting only the old one is refused.
    let (cert2, key2) = certificate("second");
    std::fs::write(dir.path().join("cert.pem"), &cert2).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key2).unwrap();
    let pid = relay.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let mut reloaded = false;
    for _ in 0..50 {
        let fresh = https_client(&cert2).build().unwrap();
        if fresh.get(format!("{}/healthz", relay.url)).send().await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "new connections get the new certificate");
    let r = h2.get(format!("{}/healthz", relay.url)).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "the connection opened before the reload still works"
    );
    let old_only = https_client(&cert).build().unwrap();
    assert!(old_only
        .get(format!("{}/healthz", relay.url))
        .send()
        .await
        .is_err());
    // Alice's client kept its connection pool too.
    alice.send("bob", b"after the reload").await.unwrap();
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = certificate("a");
    let (_, other_key) = certificate("b");
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), other_key).unwrap();
    let out = relay_command(dir.path(), "127.0.0.1:0", 1)
        .args(["--tls-cert", dir.path().join("cert.pem").to_str().unwrap()])
        .args(["--tls-key", dir.path().join("key.pem").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("do not go together"), "{err}");
}
