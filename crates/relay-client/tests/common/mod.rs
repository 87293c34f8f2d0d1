//! The in-process relay the relay-client tests talk to.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use relay_client::{Client, ClientConfig, Delivery, Event, Pin};

pub struct Server {
    pub url: String,
    pub relay: Arc<relay_core::Relay>,
    running: relay_server::RunningServer,
}

impl Server {
    pub async fn start(dir: &std::path::Path, bind: &str) -> Self {
        Self::start_with(&["relay-server", "--data-dir", dir.to_str().unwrap()], bind).await
    }

    pub async fn start_with(args: &[&str], bind: &str) -> Self {
        let config = relay_server::Config::parse_from(args);
        let listener = std::net::TcpListener::bind(bind).unwrap();
        let running = relay_server::spawn(&config, listener).await.unwrap();
        Self {
            url: running.url().to_owned(),
            relay: running.relay().clone(),
            running,
        }
    }

    pub fn pin(&self) -> Pin {
        Pin::Fingerprint(self.relay.server_key().public().fingerprint())
    }

    /// A config for `name` pinned to this server, its profile kept at `dir/<name>.json`.
    pub fn config_in(&self, dir: &std::path::Path, name: &str) -> ClientConfig {
        ClientConfig::new(&self.url, name, self.pin()).with_profile(dir.join(format!("{name}.json")))
    }

    /// A client named `name` with a fresh in-memory profile, pinned to this server.
    pub async fn connect(&self, name: &str) -> Client {
        Client::connect(ClientConfig::new(&self.url, name, self.pin()))
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.running.stop_async().await.unwrap();
    }

    /// The payloads waiting in `name`'s mailbox, oldest first (read from the engine).
    pub async fn mailbox(&self, name: &str) -> Vec<Vec<u8>> {
        self.relay
            .engine()
            .fetch(
                &mtproto_session::ClientId::new(name).unwrap(),
                100,
                mtproto_session::UnixTime::from_system(),
            )
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.payload.0)
            .collect()
    }

    /// The kinds of the packets waiting in `name`'s mailbox, oldest first.
    pub async fn mailbox_kinds(&self, name: &str) -> Vec<Option<mtproto_session::PacketKind>> {
        self.mailbox(name)
            .await
            .iter()
            .map(|p| mtproto_session::packet_kind(p))
            .collect()
    }
}

/// Everything `c` receives until `n` messages arrived and a further poll brings nothing more.
pub async fn drain(c: &Client, n: usize) -> (Vec<Vec<u8>>, Vec<Event>) {
    let mut bodies = Vec::new();
    let mut others = Vec::new();
    for _ in 0..200 {
        let events = c.poll(Duration::from_millis(300)).await.unwrap();
        let quiet = events.is_empty();
        for ev in events {
            match ev {
                Event::Message { body, delivery, .. } => {
                    assert!(
                        matches!(delivery, Delivery::InOrder),
                        "{delivery:?} for {:?}",
                        String::from_utf8_lossy(&body)
                    );
                    bodies.push(body);
                }
                other => others.push(other),
            }
        }
        if quiet && bodies.len() >= n {
            break;
        }
    }
    c.ack().await.unwrap();
    assert!(c.poll(Duration::from_millis(300)).await.unwrap().is_empty());
    (bodies, others)
}

/// Forwards TCP to `upstream`; while `pass` is false, answers are swallowed and the
/// connection closed: the relay commits, the client never hears.
pub async fn lossy_proxy(upstream: String, pass: Arc<AtomicBool>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let pass = pass.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if !pass.load(Ordering::SeqCst) || cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    url
}

/// Polls `c` (at most 20 times) until `n` messages came, whatever their delivery: their bodies,
/// acknowledged.
pub async fn read_n(c: &Client, n: usize) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for _ in 0..20 {
        for ev in c.poll(Duration::from_millis(500)).await.unwrap() {
            if let Event::Message { body, .. } = ev {
                bodies.push(body);
            }
        }
        if bodies.len() >= n {
            break;
        }
    }
    c.ack().await.unwrap();
    bodies
}

/// The two clients with their names, the one with the lower identity key first (its
/// conversation is the one both send in after simultaneous starts).
pub async fn by_key<'a>(
    a: (Client, &'a str),
    b: (Client, &'a str),
) -> ((Client, &'a str), (Client, &'a str)) {
    if a.0.identity_key().await.as_bytes() < b.0.identity_key().await.as_bytes() {
        (a, b)
    } else {
        (b, a)
    }
}

/// Messages (from, body, seq) and the other events of one poll.
pub async fn poll_messages(c: &Client) -> (Vec<(String, Vec<u8>, u32)>, Vec<Event>) {
    let mut msgs = Vec::new();
    let mut others = Vec::new();
    for ev in c.poll(Duration::from_millis(500)).await.unwrap() {
        match ev {
            Event::Message { from, body, seq, .. } => msgs.push((from, body, seq)),
            other => others.push(other),
        }
    }
    (msgs, others)
}
