//! A relay that answers badly on purpose (a plain TCP server speaking just enough HTTP): the
//! client's retries stay bounded and it never buffers an oversized answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay_client::{ClientConfig, ClientError, Connection, Pin, MAX_ANSWER_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves every request with `answer(n)` (n counts requests from 0), then closes the connection.
async fn fake_relay(answer: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let (answer, seen) = (Arc::new(answer), count.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (answer, seen) = (answer.clone(), seen.clone());
            tokio::spawn(async move {
                // The request: its head, then as many body bytes as it says.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while buf.len() < head_end + len {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let _ = sock.write_all(&answer(n)).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, count)
}

fn response(status: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn config(url: &str) -> ClientConfig {
    ClientConfig::new(url, "victim", Pin::TrustOnFirstUse)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_between_unavailable_answers_do_not_restart_the_retries() {
    // Found by the attacker review: each 429 reset the attempt counter, so 503, 429, 503, 429, …
    // kept one request going for minutes (hours with slow answers). Six attempts in all now.
    let (url, count) = fake_relay(|n| {
        if n % 2 == 0 {
            response(
                "503 Service Unavailable",
                "",
                br#"{"error":"unavailable","message":"busy"}"#,
            )
        } else {
            response(
                "429 Too Many Requests",
                "retry-after: 1\r\n",
                br#"{"error":"rate_limited","message":"slow down"}"#,
            )
        }
    })
    .await;
    match Connection::open(&config(&url)).await {
        Err(ClientError::Server { status: 503, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Six 503s (the last is reported) and the five rate limits between them.
    assert_eq!(count.load(Ordering::SeqCst), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_is_refused_without_being_read() {
    // Found by the attacker review: any answer was read whole into memory (1 GiB took 2.1 GB).
    let big = vec![b' '; MAX_ANSWER_BYTES + 1];
    let (url, count) = fake_relay(move |_| response("200 OK", "", &big)).await;
    match Connection::open(&config(&url)).await {
        Err(ClientError::Transport(why)) => assert!(why.contains("over"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(count.load(Ordering::SeqCst), 1, "not retried");
    // The same without a length given up front (read until the cap).
    let (url, _) = fake_relay(|_| {
        let mut r = b"HTTP/1.1 500 Internal Server Error\r\nconnection: close\r\n\r\n".to_vec();
        r.extend(std::iter::repeat_n(b'x', MAX_ANSWER_BYTES + 4096));
        r
    })
    .await;
    let refused = tokio::time::timeout(Duration::from_secs(30), Connection::open(&config(&url)))
        .await
        .unwrap();
    match refused {
        Err(ClientError::Transport(why)) => assert!(why.contains("over"), "{why}"),
        other => panic!("{other:?}"),
    }
}
