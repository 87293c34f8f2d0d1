//! `relay-chat --server URL --name alice`: a terminal chat over mtproto-relay.
//!
//! Commands: `/peers`, `/open NAME`, `/fp [NAME]`, `/verify NAME`, `/accept NAME`, `/rotate`,
//! `/outbox`, `/retry ID`, `/abandon ID`, `/recovery [done]`, `/help`, `/quit`; any other line is
//! sent to the open conversation. Incoming messages are printed as they arrive.
//!
//! The recovery code of a new account is printed when it is made: at the start, or when the relay
//! lost its data and the client registered again (the old code then no longer works). It is not
//! kept in the profile; this process holds it, and `/recovery` shows it again, until
//! `/recovery done`.
//!
//! Conversations go under the double ratchet (forward secret) when the peer's app publishes
//! prekeys, else under the static chat key; `/fp NAME` says which. A conversation that started
//! without a one-time prekey (the relay had none left) is announced with one line.
//!
//! Every message sent shows one of three states: `sending… (#ID)` (kept in the outbox and
//! retried with every poll), `sent #N` (stored by the relay, mailbox sequence number N) or
//! `not sent: REASON` (refused by the relay; `/retry ID` or `/abandon ID`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use mtproto_crypto::ServerKeyFingerprint;
use relay_client::{
    Client, ClientConfig, ClientError, Conversation, ErrorCode, OutboxId, Pin, Receipt, RecoveryCode,
    SendState,
};
use tokio::io::{AsyncBufReadExt, BufReader};

mod commands;
mod events;

use commands::{Next, Terminal};

#[derive(Parser)]
#[command(name = "relay-chat", about = "Terminal chat over mtproto-relay")]
struct Args {
    /// The relay, e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Your name (client id).
    #[arg(long)]
    name: String,
    /// Pin the server key by its fingerprint (printed by the server); default: trust on first use.
    #[arg(long)]
    pin: Option<String>,
    /// Profile file (default: NAME.profile.json).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Take your name back on a new device with the recovery code shown when you signed up.
    #[arg(long, value_name = "CODE")]
    recover: Option<String>,
}

fn say(line: &str) {
    println!("{line}");
}

/// The line that shows a message's state: "sending…", "sent #N" or "not sent: REASON".
fn show(r: &Receipt) -> String {
    match &r.state {
        SendState::Sending { last_error } => format!(
            "sending… (#{} to {}; retried automatically{})",
            r.id,
            r.to,
            last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        SendState::Stored { mailbox_seq, .. } => format!("sent #{mailbox_seq} (to {})", r.to),
        SendState::Refused { code, message } if r.maybe_stored => format!(
            "possibly delivered: a first copy may have arrived, a later attempt was refused: {message} ({code}; message #{} to {}: /retry {} or /abandon {})",
            r.id, r.to, r.id, r.id
        ),
        SendState::Refused { code, message } => format!(
            "not sent: {message} ({code}; message #{} to {}: /retry {} or /abandon {})",
            r.id, r.to, r.id, r.id
        ),
    }
}

/// What `/fp` says about the conversation's protection.
fn protection(peer: &str, c: Option<&Conversation>) -> String {
    match c {
        Some(c) if c.forward_secret => format!(
            "forward secret: yes (double ratchet{}{})",
            if c.initiated { ", started by you" } else { ", started by them" },
            if c.without_one_time_prekey { ", without a one-time prekey" } else { "" }
        ),
        Some(c) if c.peer_has_no_prekeys => format!(
            "forward secret: no (static key: {peer}'s app publishes no prekeys; it is asked again before a later message)"
        ),
        _ => "forward secret: not yet (your next message starts a double-ratchet conversation if they publish prekeys)"
            .to_owned(),
    }
}

/// What `/recovery` says: the code this process registered and still holds, or why there is none.
fn recovery_text(held: Option<&RecoveryCode>) -> String {
    match held {
        Some(code) => format!(
            "your recovery code: {code}\n\
             It moves your name to a new device (relay-chat --recover CODE, or \"This is my name\" in the browser). \
             It is not in your profile and the relay has only its public half: write it down, then type /recovery done."
        ),
        None => "your recovery code was shown when this name was registered and is not kept anywhere (not in the profile; \
                 the relay has only its public half), so it cannot be shown again. It moves your name to a new device: \
                 relay-chat --recover CODE."
            .to_owned(),
    }
}

fn outbox_id(word: Option<&str>) -> Result<OutboxId, ClientError> {
    word.and_then(|w| w.trim_start_matches('#').parse().ok())
        .map(OutboxId)
        .ok_or_else(|| ClientError::Invalid("give the message's id, e.g. /retry 3".into()))
}

/// Replaces the recovery code this process holds (the old one is dropped, and wiped).
fn hold(slot: &Mutex<Option<RecoveryCode>>, code: Option<RecoveryCode>) {
    *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = code;
}

/// The pin `--pin` asks for (trust on first use without it).
fn pin(args: &Args) -> Result<Pin, ClientError> {
    match &args.pin {
        Some(fp) => Ok(Pin::Fingerprint(
            ServerKeyFingerprint::from_hex(fp).map_err(|e| ClientError::Invalid(e.to_string()))?,
        )),
        None => Ok(Pin::TrustOnFirstUse),
    }
}

/// Connects as `args` say, with a sentence for a name that belongs to another device.
async fn connect(args: &Args) -> Result<Client, ClientError> {
    let profile = args
        .profile
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.profile.json", args.name)));
    let mut config = ClientConfig::new(&args.server, &args.name, pin(args)?)
        .with_profile(profile)
        .with_receipts(true);
    if let Some(code) = &args.recover {
        config = config.with_recovery_code(
            relay_client::RecoveryCode::parse(code).map_err(|e| ClientError::Invalid(e.to_string()))?,
        );
    }
    match Client::connect(config).await {
        Err(ClientError::Server {
            code: ErrorCode::ClientIdTaken,
            ..
        }) => Err(ClientError::Invalid(format!(
            "the name {} belongs to another device. If it is yours, start with --recover CODE (the recovery code shown when you signed up); otherwise pick another name.",
            args.name
        ))),
        Err(ClientError::Server {
            code: ErrorCode::RecoveryRefused,
            ..
        }) => Err(ClientError::Invalid(
            "that recovery code does not match this name".into(),
        )),
        other => other,
    }
}

/// Polls until aborted, printing every event. `poll()` resends the outbox first: messages left
/// "sending" go out again here.
async fn receive(client: Arc<Client>, recovery: Arc<Mutex<Option<RecoveryCode>>>) {
    loop {
        match client.poll(Duration::from_secs(25)).await {
            Ok(events) => {
                for ev in &events {
                    events::report(&client, &recovery, ev).await;
                }
            }
            Err(e) => {
                say(&format!("!! receive error: {e} (retrying)"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn run(args: Args) -> Result<(), ClientError> {
    let client = Arc::new(connect(&args).await?);
    // The code this process registered, until the user says it is written down (`/recovery done`).
    let recovery: Arc<Mutex<Option<RecoveryCode>>> = Arc::new(Mutex::new(None));
    if let Some(code) = client.take_recovery_code().await {
        if args.recover.is_some() {
            say("your name is on this device now; the recovery code you used no longer works.");
        }
        say(&format!(
            "your recovery code (write it down now; it moves your name to a new device; /recovery shows it again until /recovery done): {code}"
        ));
        hold(&recovery, Some(code));
    }
    if let Some(k) = client.server_key().await {
        say(&format!(
            "connected as {} (server key {})",
            args.name,
            k.fingerprint()
        ));
    }
    say("type /help for commands");
    let receiver = tokio::spawn(receive(client.clone(), recovery.clone()));
    let mut terminal = Terminal {
        client: client.clone(),
        recovery,
        open: None,
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match terminal.line(line).await {
            Ok(Next::Quit) => break,
            Ok(Next::Continue) => {}
            Err(e) => say(&format!("!! {e}")),
        }
    }
    receiver.abort();
    let _ = client.ack().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-chat: {e}");
            ExitCode::FAILURE
        }
    }
}
