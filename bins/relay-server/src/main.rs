//! `relay-server`: reads the configuration, sets up logging, raises the open-file limit, binds,
//! prints where it listens, where its data lives and its key fingerprint, and runs until
//! SIGINT/SIGTERM.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use relay_server::{
    build_relay, raise_open_file_limit, run_with_limits, Config, ConnLimits, EngineKind, LogFormat,
};

/// jemalloc gives the memory of connections that have gone back to the system (glibc's
/// allocator kept all of it: docs/benchmarks.md, "Memory per waiting long-poll").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Logs to stderr, as text or as JSON lines; `RUST_LOG` filters.
fn init_logging(format: LogFormat) {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,actix_server=warn".into())
    };
    match format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init(),
    }
}

/// Every connection is an open file: takes all the system allows, and keeps the connection
/// cap under it.
fn fit_open_files(limits: &mut ConnLimits) {
    match raise_open_file_limit() {
        Ok(l) => {
            if l.now > l.before {
                tracing::info!("open-file limit raised from {} to {}", l.before, l.now);
            } else {
                tracing::info!("open-file limit {} (already the hard limit)", l.now);
            }
            if let Some(asked) = limits.fit_open_files(l.now) {
                tracing::warn!(
                    "--max-connections {asked} does not fit in {} open files: at most {} connections",
                    l.now,
                    limits.max_connections
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Binds `bind` for a listener besides the main one (`flag` names it in the error); with the
/// address it got.
fn bind_extra(bind: &str, flag: &str) -> Result<(std::net::TcpListener, String), String> {
    let listener =
        std::net::TcpListener::bind(bind).map_err(|e| format!("cannot listen on {bind} ({flag}): {e}"))?;
    let at = listener
        .local_addr()
        .map_or_else(|_| bind.to_owned(), |a| a.to_string());
    Ok((listener, at))
}

/// Runs `serve` on a thread and runtime of its own (actix's server future is not `Send`).
fn spawn_listener<F, Fut>(what: &'static str, serve: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    std::thread::spawn(move || {
        let served = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|rt| rt.block_on(serve()));
        if let Err(e) = served {
            tracing::error!(error = %e, "the {what} listener stopped");
        }
    });
}

/// Why the server stopped with an error: a sentence for the operator and the exit code (2: it
/// could not start; 1: it failed while serving).
struct Stop {
    code: u8,
    why: String,
}

impl From<String> for Stop {
    fn from(why: String) -> Self {
        Self { code: 2, why }
    }
}

/// Checks, binds and prints what the server will do, starts the side listeners, then serves
/// until SIGINT/SIGTERM.
async fn serve(config: Config) -> Result<(), Stop> {
    let mut limits = ConnLimits::from_config(&config);
    fit_open_files(&mut limits);
    if let Some(files) = &limits.tls {
        // Checked before anything starts: a bad certificate is a clear message, not a dead port.
        relay_server::tls::CertStore::load(files.clone()).map_err(|e| format!("TLS: {e}"))?;
    }
    let scheme = if limits.tls.is_some() { "https" } else { "http" };
    let relay = build_relay(&config).await.map_err(|e| e.to_string())?;
    let listener = std::net::TcpListener::bind(&config.bind)
        .map_err(|e| format!("cannot listen on {}: {e}", config.bind))?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.bind.clone());
    let store = match config.engine {
        EngineKind::Sqlite => format!("sqlite at {}", config.data_dir.join("relay.db").display()),
        EngineKind::Memory => "memory (nothing is kept after exit)".to_owned(),
        EngineKind::Redis => format!("redis at {} (prefix {})", config.redis_url, config.redis_prefix),
    };
    println!("relay-server listening on {scheme}://{addr}");
    println!("  storage:     {store}");
    println!(
        "  server key:  {} (fingerprint {})",
        config.key_path().display(),
        relay.server_key().public().fingerprint()
    );
    if let Some(bind) = &config.metrics_bind {
        let (metrics, at) = bind_extra(bind, "--metrics-bind")?;
        println!("  metrics:     http://{at}/stats (operator only)");
        let r = relay.clone();
        spawn_listener("metrics", move || relay_server::serve_stats(r, metrics));
    }
    if let Some(bind) = &config.tls_redirect_bind {
        let (plain, at) = bind_extra(bind, "--tls-redirect-bind")?;
        let port = listener.local_addr().map_or(443, |a| a.port());
        println!("  redirect:    http://{at} -> https (308)");
        spawn_listener("redirect", move || {
            relay_server::serve_https_redirect(plain, port)
        });
    }
    println!("  web clients: {scheme}://{addr}/client_ui.html  {scheme}://{addr}/chat_ui_multiuser.html");
    run_with_limits(
        relay,
        listener,
        config.workers,
        config.echo,
        limits,
        std::future::pending(),
    )
    .await
    .map_err(|e| Stop {
        code: 1,
        why: e.to_string(),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    init_logging(config.log_format);
    if let Some(command) = &config.command {
        return match relay_server::run_command(&config, command) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("relay-server: {e}");
                ExitCode::from(2)
            }
        };
    }
    match serve(config).await {
        Ok(()) => {
            println!("relay-server stopped");
            ExitCode::SUCCESS
        }
        Err(Stop { code, why }) => {
            eprintln!("relay-server: {why}");
            ExitCode::from(code)
        }
    }
}
