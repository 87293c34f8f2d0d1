//! A relay serving on a thread of its own: what tests, examples and embedders use instead of
//! writing the runtime and shutdown wiring again.

use std::net::TcpListener;
use std::sync::Arc;

use relay_core::Relay;

use crate::{build_relay, run_with_limits, Config, ConnLimits, StartError};

/// A relay started by [`spawn`]. Dropping it asks it to stop without waiting; [`stop`] waits.
///
/// [`stop`]: RunningServer::stop
#[derive(Debug)]
pub struct RunningServer {
    url: String,
    relay: Arc<Relay>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// Builds the relay `config` describes (on the caller's runtime: the engine may connect to
/// Redis), then serves it on `listener` from a thread with its own single-threaded runtime
/// (actix's server future is not `Send`), with `config`'s connection limits, workers (default
/// one here) and echo route, until the [`RunningServer`] is stopped or dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use clap::Parser;
/// let dir = tempfile::tempdir()?;
/// let config = relay_server::Config::parse_from(["relay-server", "--data-dir", dir.path().to_str().unwrap()]);
/// let server = relay_server::spawn(&config, std::net::TcpListener::bind("127.0.0.1:0")?).await?;
/// println!("serving at {}", server.url());
/// server.stop_async().await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// What [`build_relay`] refuses: the data directory, the key file, the engine; and the
/// listener's address not being readable.
pub async fn spawn(config: &Config, listener: TcpListener) -> Result<RunningServer, StartError> {
    let relay = build_relay(config).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Io(format!("listener address: {e}")))?;
    let limits = ConnLimits::from_config(config);
    let (workers, echo) = (config.workers.or(Some(1)), config.echo);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = relay.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(run_with_limits(
            serving,
            listener,
            workers,
            echo,
            limits,
            async move {
                let _ = rx.await;
            },
        ))
    });
    Ok(RunningServer {
        url: format!("http://{addr}"),
        relay,
        stop: Some(tx),
        thread: Some(thread),
    })
}

impl RunningServer {
    /// `http://IP:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The relay it serves (its key, engine, counters).
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// Stops it (waiting polls are answered at once) and waits for its thread.
    ///
    /// # Errors
    /// The server's own error, or its thread's panic as an error.
    pub fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| std::io::Error::other("the relay's thread panicked"))?,
            None => Ok(()),
        }
    }

    /// [`RunningServer::stop`] from async code (the wait runs on a blocking thread).
    ///
    /// # Errors
    /// As [`RunningServer::stop`].
    pub async fn stop_async(self) -> std::io::Result<()> {
        tokio::task::spawn_blocking(move || self.stop())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
