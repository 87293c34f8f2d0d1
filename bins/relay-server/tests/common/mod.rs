//! Test harness: a real relay-server on an ephemeral loopback port, and a raw protocol client.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use clap::Parser;
use mtproto_crypto::{rand_core::OsRng, ServerPublicKey};
use mtproto_session::{wire::Bytes, ClientId, ClientSession, ServerPin, UnixTime};
use relay_client::{ClientConfig, ClientError, Connection, Transport};
use relay_core::{api::Call, Relay};
use serde_json::Value;

pub struct Server {
    pub url: String,
    pub relay: Arc<Relay>,
    pub dir: tempfile::TempDir,
    running: Option<relay_server::RunningServer>,
}

impl Server {
    pub async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra).await
    }

    pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let mut args = vec![
            "relay-server",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--workers",
            "2",
        ];
        args.extend_from_slice(extra);
        args.push("--echo");
        let config = relay_server::Config::parse_from(args);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let running = relay_server::spawn(&config, listener).await.unwrap();
        Self {
            url: running.url().to_owned(),
            relay: running.relay().clone(),
            dir,
            running: Some(running),
        }
    }

    pub fn server_key(&self) -> ServerPublicKey {
        self.relay.server_key().public()
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(running) = self.running.take() {
            let _ = running.stop_async().await;
        }
        // Let the engine's writer thread see the last handle go.
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

/// The `relay-server` binary serving `data` on `bind` with `workers` HTTP workers; callers add
/// their own flags, environment and output handling.
pub fn relay_command(data: &std::path::Path, bind: &str, workers: usize) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_relay-server"));
    cmd.args(["--bind", bind, "--data-dir", data.to_str().unwrap()])
        .args(["--workers", &workers.to_string()]);
    cmd
}

/// The relay-server binary as a child process (killed when dropped).
pub struct ServerProcess {
    pub child: std::process::Child,
    pub url: String,
    /// The operator-only `/stats` URL, when started with `--metrics-bind`.
    pub metrics: Option<String>,
}

impl ServerProcess {
    /// Starts `cmd` (the binary and its arguments) with stdout piped, reads where it listens
    /// from its first line, and keeps draining stdout so the server never blocks on the pipe.
    pub fn spawn(mut cmd: std::process::Command) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let url = first.split_whitespace().last().unwrap().to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{first}");
        // The banner ends with the web clients' line; the metrics line comes before it.
        let mut metrics = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.trim().strip_prefix("metrics:") {
                metrics = rest.split_whitespace().next().map(str::to_owned);
            }
            if line.trim().starts_with("web clients:") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self { child, url, metrics }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's public key as `/server_key` publishes it.
pub async fn fetch_server_key(url: &str) -> ServerPublicKey {
    fetch_server_key_with(&reqwest::Client::new(), url).await
}

/// [`fetch_server_key`] through `http` (e.g. a client trusting a test certificate).
pub async fn fetch_server_key_with(http: &reqwest::Client, url: &str) -> ServerPublicKey {
    let v: Value = http
        .get(format!("{url}/server_key"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b: Bytes = serde_json::from_value(v["public_key"].clone()).unwrap();
    ServerPublicKey::from_slice(&b.0).unwrap()
}

/// The operator-only counters of a server process started with `--metrics-bind`.
pub async fn stats(p: &ServerProcess) -> Value {
    let url = p
        .metrics
        .as_ref()
        .expect("started with --metrics-bind 127.0.0.1:0");
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// `GET /healthz`: its status and body.
pub async fn healthz(url: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{url}/healthz")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

pub fn now() -> UnixTime {
    relay_core::Clock::now(&relay_core::SystemClock)
}

/// A client speaking the protocol directly: relay-client's handshake, then calls sealed by hand, so tests can replay, tamper and send what a real client never would.
pub struct Raw {
    pub http: reqwest::Client,
    pub base: String,
    pub session: ClientSession,
}

pub async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = http.post(url).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

impl Raw {
    pub async fn connect(base: &str, name: &str, key: ServerPublicKey) -> Self {
        match Self::try_connect(base, name, key, reqwest::Client::new()).await {
            Ok(raw) => raw,
            Err((status, body)) => panic!("handshake refused: {status} {body}"),
        }
    }

    /// A handshake over `http` (which may, say, bind another source address); the first
    /// refusal's status and body otherwise.
    pub async fn try_connect(
        base: &str,
        name: &str,
        key: ServerPublicKey,
        http: reqwest::Client,
    ) -> Result<Self, (u16, Value)> {
        // The handshake as relay-client makes it, one attempt per request; then the session
        // is ours to seal by hand.
        let config = ClientConfig::new(base, name, ServerPin::Key(key)).with_retries(false);
        let transport = Transport::with_http_client(http.clone(), &config);
        let session = match Connection::open_on(transport, &config).await {
            Ok(conn) => conn.into_session(),
            Err(ClientError::Server {
                status,
                code,
                message,
            }) => return Err((status, serde_json::json!({ "error": code, "message": message }))),
            Err(e) => panic!("handshake failed: {e}"),
        };
        Ok(Self {
            http,
            base: base.to_owned(),
            session,
        })
    }

    pub fn seal(&mut self, call: &Call) -> Vec<u8> {
        self.session
            .encode_request(&serde_json::to_vec(call).unwrap(), now(), &mut OsRng)
            .unwrap()
            .packet
    }

    pub async fn post_packet(&mut self, path: &str, packet: &[u8]) -> (u16, Value, Option<Value>) {
        self.post_with(path, serde_json::json!({ "packet": Bytes(packet.to_vec()) }))
            .await
    }

    /// Posts and, on success, opens the sealed answer.
    pub async fn post_with(&mut self, path: &str, body: Value) -> (u16, Value, Option<Value>) {
        let (status, json) = post(&self.http, &format!("{}{}", self.base, path), &body).await;
        let inner = if status == 200 {
            let packet: Bytes = serde_json::from_value(json["packet"].clone()).unwrap();
            let incoming = self.session.decode_response(&packet.0, now()).unwrap();
            Some(serde_json::from_slice(&incoming.body).unwrap())
        } else {
            None
        };
        (status, json, inner)
    }

    pub async fn call(&mut self, path: &str, call: &Call) -> (u16, Value, Option<Value>) {
        let packet = self.seal(call);
        self.post_packet(path, &packet).await
    }

    pub async fn send(&mut self, to: &str, payload: &[u8]) -> (u16, Value, Option<Value>) {
        let call = Call::SendMessage {
            target_peer: ClientId::new(to).unwrap(),
            payload: Bytes(payload.to_vec()),
            key_version: None,
        };
        self.call("/secure_message", &call).await
    }

    pub async fn poll(&mut self, ack: Vec<u64>, timeout_ms: u64) -> Value {
        let (s, json, inner) = self
            .call(
                "/poll_messages",
                &Call::PollMessages {
                    // Bare sequence numbers (the older form; the clients name the store time too).
                    ack: ack.into_iter().map(relay_core::AckRef::from).collect(),
                    timeout_ms: Some(timeout_ms),
                    limit: None,
                },
            )
            .await;
        assert_eq!(s, 200, "{json}");
        inner.unwrap()
    }
}

pub fn payloads(poll: &Value) -> Vec<Vec<u8>> {
    poll["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| serde_json::from_value::<Bytes>(m["payload"].clone()).unwrap().0)
        .collect()
}

pub fn seqs(poll: &Value) -> Vec<u64> {
    poll["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}
