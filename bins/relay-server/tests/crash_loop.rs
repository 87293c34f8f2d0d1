//! The crash loop: senders and receivers through the Rust client while the real `relay-server`
//! is killed with SIGKILL at random moments and restarted on the same data. At the end every
//! message is accounted for: delivered exactly once, or reported refused to its sender.
//!
//! Short by default (CI); longer by hand with `scripts/crash-loop.sh KILLS PAIRS MESSAGES`, or
//! the environment variables `CRASH_LOOP_KILLS`, `CRASH_LOOP_PAIRS`, `CRASH_LOOP_MESSAGES`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fetch_server_key, ServerProcess};
use mtproto_crypto::rand_core::{OsRng, RngCore};
use relay_client::{Client, ClientConfig, Event, Pin, SendState};

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start(data: &Path, port: u16, engine: &[String]) -> ServerProcess {
    let mut cmd = common::relay_command(data, &format!("127.0.0.1:{port}"), 2);
    cmd.args(["--register-burst", "1000", "--handshake-burst", "1000"])
        .args(["--account-burst", "100000", "--account-rate", "100000"])
        .args(engine)
        .stderr(Stdio::null());
    ServerProcess::spawn(cmd)
}

/// What gets SIGKILLed.
enum Victim {
    /// The relay process (on SQLite), restarted on the same data and port.
    Relay,
    /// The Redis under a relay on `--engine redis`, restarted from its AOF.
    Redis(relay_test_support::RedisServer),
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects (or reconnects from its profile), riding out a relay that is restarting.
async fn connect(url: &str, name: &str, pin: Pin, profile: &Path) -> Client {
    for _ in 0..200 {
        match Client::connect(ClientConfig::new(url, name, pin).with_profile(profile)).await {
            Ok(c) => return c,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("{name} never connected");
}

#[derive(Default)]
struct Tally {
    /// (sender, index) → times delivered.
    delivered: BTreeMap<(String, usize), usize>,
    refused: Vec<(String, usize, relay_client::ErrorCode)>,
}

fn sizes() -> (usize, usize, usize) {
    (
        setting("CRASH_LOOP_KILLS", 4),
        setting("CRASH_LOOP_PAIRS", 3),
        setting("CRASH_LOOP_MESSAGES", 25),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_or_is_reported_refused_through_sigkill_restarts() {
    crash_loop(Victim::Relay, "relay on SQLite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_when_redis_is_killed_with_appendfsync_always() {
    let redis = relay_test_support::RedisServer::start_with(&["--appendfsync", "always"]);
    crash_loop(Victim::Redis(redis), "redis, appendfsync always").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_when_redis_is_killed_with_appendfsync_everysec() {
    // A process kill, not a power cut: the OS still has what Redis wrote (docs/deployment.md).
    let redis = relay_test_support::RedisServer::start_with(&["--appendfsync", "everysec"]);
    crash_loop(Victim::Redis(redis), "redis, appendfsync everysec").await;
}

async fn crash_loop(victim: Victim, label: &str) {
    let (kills, pairs, messages) = sizes();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let engine: Vec<String> = match &victim {
        Victim::Relay => Vec::new(),
        Victim::Redis(r) => vec![
            "--engine".into(),
            "redis".into(),
            "--redis-url".into(),
            r.url.clone(),
        ],
    };
    let server = Arc::new(Mutex::new(Some(start(&data, port, &engine))));
    let pin = Pin::Key(fetch_server_key(&url).await);
    let profile = |name: &str| -> PathBuf { dir.path().join(format!("{name}.json")) };

    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for p in 0..pairs {
        receivers.push(connect(&url, &format!("r{p}"), pin, &profile(&format!("r{p}"))).await);
    }
    for p in 0..pairs {
        senders.push(connect(&url, &format!("s{p}"), pin, &profile(&format!("s{p}"))).await);
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = Instant::now() + Duration::from_secs(120 + 5 * kills as u64);

    // The killer: SIGKILL at random moments, restart on the same data (and port).
    let killer = {
        let (server, data, engine) = (server.clone(), data.clone(), engine.clone());
        tokio::spawn(async move {
            let mut victim = victim;
            for _ in 0..kills {
                let pause = 300 + OsRng.next_u32() % 900;
                tokio::time::sleep(Duration::from_millis(u64::from(pause))).await;
                let (server, data, engine) = (server.clone(), data.clone(), engine.clone());
                victim = tokio::task::spawn_blocking(move || {
                    match victim {
                        Victim::Relay => {
                            let old = server.lock().unwrap().take();
                            drop(old); // ServerProcess kills with SIGKILL and waits
                            *server.lock().unwrap() = Some(start(&data, port, &engine));
                        }
                        Victim::Redis(ref mut r) => {
                            r.kill();
                            std::thread::sleep(Duration::from_millis(200));
                            r.restart();
                        }
                    }
                    victim
                })
                .await
                .unwrap();
            }
            victim
        })
    };

    // Receivers poll until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut receiving = Vec::new();
    for r in receivers {
        let (tally, stop) = (tally.clone(), stop.clone());
        receiving.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Acquire) && Instant::now() < deadline {
                let Ok(events) = r.poll(Duration::from_millis(500)).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                for e in events {
                    if let Event::Message { from, body, .. } = e {
                        let text = String::from_utf8(body).unwrap();
                        let i: usize = text.rsplit(':').next().unwrap().parse().unwrap();
                        *tally.lock().unwrap().delivered.entry((from, i)).or_default() += 1;
                    }
                }
            }
            r
        }));
    }

    // Senders: each to its receiver, through the kills.
    let mut sending = Vec::new();
    for (p, s) in senders.into_iter().enumerate() {
        let tally = tally.clone();
        sending.push(tokio::spawn(async move {
            let (me, to) = (format!("s{p}"), format!("r{p}"));
            for i in 0..messages {
                let r = loop {
                    match s.send(&to, format!("{me}:{i}").as_bytes()).await {
                        Ok(r) => break r,
                        // Not even sealed (e.g. the directory was unreachable): try again.
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(e) => panic!("{me}: {e}"),
                    }
                };
                if let SendState::Refused { code, .. } = r.state {
                    tally.lock().unwrap().refused.push((me.clone(), i, code));
                }
                tokio::time::sleep(Duration::from_millis(u64::from(OsRng.next_u32() % 40))).await;
            }
            // Whatever is still sending goes out once the relay answers.
            while !s
                .outbox()
                .await
                .iter()
                .all(|r| matches!(r.state, SendState::Refused { .. }))
            {
                assert!(Instant::now() < deadline, "{me}'s outbox never emptied");
                for settled in s.flush_outbox().await.unwrap_or_default() {
                    if let SendState::Refused { code, .. } = settled.state {
                        tally.lock().unwrap().refused.push((me.clone(), usize::MAX, code));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            s
        }));
    }
    for s in sending {
        s.await.unwrap();
    }
    let _victim = killer.await.unwrap();
    let expected = pairs * messages;
    loop {
        let accounted = {
            let t = tally.lock().unwrap();
            t.delivered.len() + t.refused.len()
        };
        if accounted >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    for r in receiving {
        r.await.unwrap();
    }
    let t = tally.lock().unwrap();
    let duplicated: Vec<_> = t.delivered.iter().filter(|(_, n)| **n > 1).collect();
    let mut lost = Vec::new();
    for p in 0..pairs {
        for i in 0..messages {
            let key = (format!("s{p}"), i);
            if !t.delivered.contains_key(&key) && !t.refused.iter().any(|(s, j, _)| *s == key.0 && *j == i) {
                lost.push(key);
            }
        }
    }
    eprintln!(
        "crash loop ({label}): {kills} SIGKILLs, {expected} messages from {pairs} senders: delivered {}, refused {}, duplicated {}, lost {}",
        t.delivered.len(),
        t.refused.len(),
        duplicated.len(),
        lost.len()
    );
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(
        t.refused.is_empty(),
        "nothing here should be refused: {:?}",
        t.refused
    );
}
