//! `relay-server`: reads the configuration, sets up logging, raises the open-file limit, binds,
//! prints where it listens, where its data lives and its key fingerprint, and runs until
//! SIGINT/SIGTERM.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use relay_server::{
    build_relay, raise_open_file_limit, run_with_limits, Config, ConnLimits, EngineKind, LogFormat,
};

/// mimalloc gives the memory of connections that have gone back to the system (glibc's
/// allocator kept all of it: docs/benchmarks.md, "Memory per waiting long-poll").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,actix_server=warn".into())
    };
    match config.log_format {
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
    let mut limits = ConnLimits::from_config(&config);
    // Every connection is an open file: take all the system allows, and keep the connection cap
    // under it.
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
    if let Some(files) = &limits.tls {
        // Checked before anything starts: a bad certificate is a clear message, not a dead port.
        if let Err(e) = relay_server::tls::CertStore::load(files.clone()) {
            eprintln!("relay-server: TLS: {e}");
            return ExitCode::from(2);
        }
    }
    let scheme = if limits.tls.is_some() { "https" } else { "http" };
    let relay = match build_relay(&config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("relay-server: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match std::net::TcpListener::bind(&config.bind) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("relay-server: cannot listen on {}: {e}", config.bind);
            return ExitCode::from(2);
        }
    };
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
        let metrics = match std::net::TcpListener::bind(bind) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("relay-server: cannot listen on {bind} (--metrics-bind): {e}");
                return ExitCode::from(2);
            }
        };
        let at = metrics
            .local_addr()
            .map_or_else(|_| bind.clone(), |a| a.to_string());
        println!("  metrics:     http://{at}/stats (operator only)");
        let r = relay.clone();
        // actix's server future is not `Send`: it runs on a thread and runtime of its own.
        std::thread::spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|rt| rt.block_on(relay_server::serve_stats(r, metrics)));
            if let Err(e) = served {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    if let Some(bind) = &config.tls_redirect_bind {
        let plain = match std::net::TcpListener::bind(bind) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("relay-server: cannot listen on {bind} (--tls-redirect-bind): {e}");
                return ExitCode::from(2);
            }
        };
        let at = plain
            .local_addr()
            .map_or_else(|_| bind.clone(), |a| a.to_string());
        let port = listener.local_addr().map_or(443, |a| a.port());
        println!("  redirect:    http://{at} -> https (308)");
        std::thread::spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|rt| rt.block_on(relay_server::serve_https_redirect(plain, port)));
            if let Err(e) = served {
                tracing::error!(error = %e, "the redirect listener stopped");
            }
        });
    }
    println!("  web clients: {scheme}://{addr}/client_ui.html  {scheme}://{addr}/chat_ui_multiuser.html");
    match run_with_limits(
        relay,
        listener,
        config.workers,
        config.echo,
        limits,
        std::future::pending(),
    )
    .await
    {
        Ok(()) => {
            println!("relay-server stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relay-server: {e}");
            ExitCode::FAILURE
        }
    }
}
