//! The in-process relay the relay-client tests talk to.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use clap::Parser;
use relay_client::{Client, ClientConfig, Pin};

pub struct Server {
    pub url: String,
    pub relay: Arc<relay_core::Relay>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start(dir: &std::path::Path, bind: &str) -> Self {
        Self::start_with(&["relay-server", "--data-dir", dir.to_str().unwrap()], bind).await
    }

    pub async fn start_with(args: &[&str], bind: &str) -> Self {
        let config = relay_server::Config::parse_from(args);
        let relay = relay_server::build_relay(&config).await.unwrap();
        let listener = std::net::TcpListener::bind(bind).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let r = relay.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(relay_server::run(r, listener, Some(1), false, async move {
                let _ = rx.await;
            }))
        });
        Self {
            url,
            relay,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn pin(&self) -> Pin {
        Pin::Fingerprint(self.relay.server_key().public().fingerprint())
    }

    /// A client named `name` with a fresh in-memory profile, pinned to this server.
    pub async fn connect(&self, name: &str) -> Client {
        Client::connect(ClientConfig::new(&self.url, name, self.pin()))
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            tokio::task::spawn_blocking(move || t.join())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}
