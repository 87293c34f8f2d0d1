//! Two peers talking through the relay.
//!
//! `cargo run -p relay-client --example two_peers` starts a relay in this process on a free loopback port with a
//! temporary SQLite store (or uses `--server URL`), creates alice and bob, performs both
//! handshakes, lets them discover each other, shows both fingerprints, exchanges messages both
//! ways, prints the transcript, and shows what the relay stored: ciphertext only.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use clap::Parser;
use relay_client::{Client, ClientConfig, Event, Pin};

#[derive(Parser)]
struct Args {
    /// Use this relay instead of starting one (its fingerprint is trusted on first use).
    #[arg(long)]
    server: Option<String>,
}

async fn receive(c: &Client, who: &str) -> (String, String) {
    for _ in 0..40 {
        for ev in c.poll(Duration::from_millis(500)).await.expect("poll") {
            match ev {
                Event::Message { from, body, .. } => {
                    return (from, String::from_utf8_lossy(&body).into_owned())
                }
                other => println!("  ({who} saw {other:?})"),
            }
        }
    }
    panic!("{who} received nothing");
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let (url, relay, pin, stop) = match args.server {
        Some(url) => (url, None, Pin::TrustOnFirstUse, None),
        None => {
            let config = relay_server::Config::parse_from([
                "relay-server",
                "--data-dir",
                dir.path().to_str().unwrap_or("."),
            ]);
            let server = relay_server::spawn(&config, std::net::TcpListener::bind("127.0.0.1:0")?).await?;
            let relay = server.relay().clone();
            let url = server.url().to_owned();
            let pin = Pin::Fingerprint(relay.server_key().public().fingerprint());
            println!(
                "relay started at {url} (key fingerprint {})",
                relay.server_key().public().fingerprint()
            );
            (url, Some(relay), pin, Some(server))
        }
    };

    let alice = Client::connect(ClientConfig::new(&url, "alice", pin)).await?;
    println!(
        "alice: handshake done, auth key established, identity {}",
        alice.identity_key().await.short_fingerprint()
    );
    let bob = Client::connect(ClientConfig::new(&url, "bob", pin)).await?;
    println!(
        "bob:   handshake done, auth key established, identity {}",
        bob.identity_key().await.short_fingerprint()
    );

    let seen: Vec<String> = alice
        .search("", None)
        .await?
        .0
        .into_iter()
        .map(|p| format!("{} (key v{})", p.client_id, p.key_version))
        .collect();
    println!("alice discovers: {}", seen.join(", "));
    let fa = alice.fingerprint("bob").await?.to_string();
    let fb = bob.fingerprint("alice").await?.to_string();
    println!("fingerprint alice sees for bob:\n{fa}\nfingerprint bob sees for alice:\n{fb}");
    assert_eq!(fa, fb, "fingerprints must match");
    println!("fingerprints match.\n\ntranscript:");

    let lines = [
        ("alice", "Hi Bob, this is end-to-end encrypted."),
        ("bob", "Hi Alice! The relay cannot read this."),
    ];
    let (a_text, b_text) = (lines[0].1, lines[1].1);
    let receipt = alice.send("bob", a_text.as_bytes()).await?;
    if let Some(relay) = &relay {
        // What the relay holds for bob right now: an opaque payload.
        let stored = relay
            .engine()
            .fetch(
                &mtproto_session::ClientId::new("bob")?,
                10,
                relay_core::Clock::now(&relay_core::SystemClock),
            )
            .await?;
        let payload = &stored.first().ok_or("nothing stored")?.payload.0;
        let hex: String = payload.iter().take(32).map(|b| format!("{b:02x}")).collect();
        println!("  [relay stores for bob: {} bytes, {}…]", payload.len(), hex);
        assert!(
            !payload.windows(a_text.len()).any(|w| w == a_text.as_bytes()),
            "the relay must not hold plaintext"
        );
    }
    let (from, text) = receive(&bob, "bob").await;
    println!(
        "  {from} -> bob: {text}   (mailbox seq {}, stored {})",
        receipt.mailbox_seq().unwrap_or_default(),
        receipt.timestamp().unwrap_or("not stored")
    );
    assert_eq!(text, a_text);
    bob.send("alice", b_text.as_bytes()).await?;
    let (from, text) = receive(&alice, "alice").await;
    println!("  {from} -> alice: {text}");
    assert_eq!(text, b_text);
    alice.ack().await?;
    bob.ack().await?;
    println!("\nthe relay stored only ciphertext; both messages delivered and acknowledged.");

    if let Some(server) = stop {
        server.stop_async().await?;
    }
    Ok(())
}
