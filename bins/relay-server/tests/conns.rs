//! Slow and stalled connections against the real binary: a flood of stalled request bodies from
//! one source under a 1,024 open-file limit, and every timeout (head, body, keep-alive).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fetch_server_key, healthz, Raw, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const STALLED: usize = 2_000;
const PER_SOURCE: usize = 64;
/// A request head announcing a body far longer than what follows it.
const STALLED_HEAD: &[u8] = b"POST /req_pq HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n\
Content-Length: 100000\r\n\r\n{\"nonce\":";

/// The binary under `sh -c 'ulimit -n LIMIT; exec relay-server ...'` (soft and hard limit), or
/// plainly when `open_files` is `None`; its log goes to `log`.
fn spawn(open_files: Option<u32>, log: &Path, args: &[&str]) -> ServerProcess {
    let bin = env!("CARGO_BIN_EXE_relay-server");
    let mut cmd = match open_files {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args([
        "--bind",
        "127.0.0.1:0",
        "--engine",
        "memory",
        "--data-dir",
        log.parent().unwrap().to_str().unwrap(),
        "--workers",
        "2",
    ])
    .args(args)
    .env("RUST_LOG", "info")
    .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    ServerProcess::spawn(cmd)
}

fn addr(p: &ServerProcess) -> SocketAddr {
    p.url.trim_start_matches("http://").parse().unwrap()
}

/// This test process needs more than 1,024 files itself: the soft limit up to the hard one.
fn raise_own_open_files(need: u64) -> bool {
    let now = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    if now < need {
        eprintln!("SKIPPED: this test needs {need} open files and the hard limit allows {now}");
        return false;
    }
    true
}

/// A connection from `source` (any 127/8 address works on loopback).
async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// Whether the server has closed this (non-blocking) socket: EOF or a reset, and no answer.
fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!(
            "a stalled connection got an answer: {}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Sends `request` on a fresh connection from `source` and returns everything until EOF
/// (bounded by `within`).
async fn exchange(source: IpAddr, to: SocketAddr, request: &[u8], within: Duration) -> Vec<u8> {
    let mut s = connect_from(source, to).await.unwrap();
    let _ = s.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut answer)).await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_from_one_source_cannot_lock_out_other_clients() {
    if !cfg!(target_os = "linux") {
        eprintln!("SKIPPED: needs Linux (127.0.0.2 on loopback, /proc limits)");
        return;
    }
    if !raise_own_open_files(2 * STALLED as u64) {
        return;
    }
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    if let Err(e) = TcpSocket::new_v4().and_then(|s| s.bind(SocketAddr::new(attacker, 0))) {
        eprintln!("SKIPPED: cannot bind a client socket to {attacker}: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    // Timeouts far longer than the test: whatever closes a connection here is the cap.
    let p = spawn(
        Some(1024),
        &log,
        &[
            "--max-conns-per-source",
            &PER_SOURCE.to_string(),
            "--header-timeout-secs",
            "120",
            "--body-timeout-secs",
            "120",
        ],
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.child.id())).unwrap();
    let files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(
        files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["1024", "1024"],
        "the server runs with 1,024 files, soft and hard: {files}"
    );
    let to = addr(&p);

    // The attack: 2,000 request bodies that never finish, all from 127.0.0.2.
    let mut stalled = Vec::with_capacity(STALLED);
    let mut cut_while_sending = 0;
    for _ in 0..STALLED {
        let mut s = connect_from(attacker, to).await.unwrap();
        if s.write_all(STALLED_HEAD).await.is_err() {
            cut_while_sending += 1; // closed by the server before the head was sent
            continue;
        }
        stalled.push(s.into_std().unwrap());
    }

    // Everyone else is still served, /healthz included.
    let mut healthy = false;
    for _ in 0..40 {
        if let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(2), reqwest::get(format!("{}/healthz", p.url))).await
        {
            if r.status() == 200 {
                healthy = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        healthy,
        "GET /healthz from 127.0.0.1 never answered 200 during the flood"
    );

    // The server closed every stalled connection beyond the per-source cap.
    for _ in 0..100 {
        stalled.retain_mut(|s| !closed_by_server(s));
        if stalled.len() <= PER_SOURCE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = STALLED - stalled.len();
    assert!(
        stalled.len() <= PER_SOURCE,
        "{} stalled connections from one source still open (cap {PER_SOURCE}; {cut_while_sending} cut while sending)",
        stalled.len()
    );
    assert!(
        !stalled.is_empty(),
        "connections under the cap are served, not closed"
    );
    assert!(closed >= STALLED - PER_SOURCE);
    let (status, _) = healthz(&p.url).await;
    assert_eq!(status, 200, "still healthy after the flood");

    // At the cap, 127.0.0.2 gets nothing more; once its connections close, it is served again.
    let get = b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n";
    if stalled.len() == PER_SOURCE {
        let refused = exchange(attacker, to, get, Duration::from_secs(10)).await;
        assert!(refused.is_empty(), "over the cap, yet answered");
    }
    drop(stalled);
    let mut served = false;
    for _ in 0..40 {
        let answer = exchange(attacker, to, get, Duration::from_secs(5)).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the closed connections never gave their places back");
    drop(p);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("connection closed at accept"), "{log}");
    assert!(log.contains("127.0.0.2 already holds 64 connections"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_bodies_and_idle_connections_are_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let p = spawn(
        None,
        &log,
        &[
            "--header-timeout-secs",
            "1",
            "--body-timeout-secs",
            "1",
            "--keep-alive-secs",
            "1",
        ],
    );
    let to = addr(&p);
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let bound = Duration::from_secs(20);

    // A body that stops: 408 request_timeout, then the connection is closed.
    let answer = exchange(local, to, STALLED_HEAD, bound).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"], "request_timeout", "{body}");
    assert_eq!(body["message"], "request body not complete within 1 s");

    // A body trickled a byte at a time: the deadline counts from the head, not between bytes.
    let mut s = connect_from(local, to).await.unwrap();
    s.write_all(STALLED_HEAD).await.unwrap();
    let (mut rx, mut tx) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tx.write_all(b"1").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(bound, rx.read_to_end(&mut answer)).await;
    trickle.abort();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "a trickled body was never cut: {text}"
    );
    assert!(text.contains("request_timeout"), "{text}");

    // A head that stops: the connection is closed.
    let mut s = connect_from(local, to).await.unwrap();
    s.write_all(b"POST /req_pq HTTP/1.1\r\nHost: relay\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(bound, s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a stalled request head kept its connection");

    // An idle kept-alive connection is closed after its answer.
    let mut s = connect_from(local, to).await.unwrap();
    s.write_all(b"GET /server_key HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    let closed = tokio::time::timeout(bound, s.read_to_end(&mut all)).await;
    assert!(closed.is_ok(), "an idle kept-alive connection stayed open");
    assert!(
        all.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&all)
    );

    // The body deadline is the body's: a long-poll that outlasts it is still answered.
    let key = fetch_server_key(&p.url).await;
    let mut bob = Raw::connect(&p.url, "bob", key).await;
    let answer = bob.poll(vec![], 2_500).await;
    assert_eq!(answer["messages"], serde_json::json!([]));
}
