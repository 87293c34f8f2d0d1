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
    Client, ClientConfig, ClientError, Conversation, ErrorCode, Event, KeyStatus, OutboxId, Pin, Receipt,
    RecoveryCode, SendState,
};
use tokio::io::{AsyncBufReadExt, BufReader};

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

async fn run(args: Args) -> Result<(), ClientError> {
    let pin = match &args.pin {
        Some(fp) => Pin::Fingerprint(
            ServerKeyFingerprint::from_hex(fp).map_err(|e| ClientError::Invalid(e.to_string()))?,
        ),
        None => Pin::TrustOnFirstUse,
    };
    let profile = args
        .profile
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.profile.json", args.name)));
    let mut config = ClientConfig::new(&args.server, &args.name, pin)
        .with_profile(profile)
        .with_receipts(true);
    if let Some(code) = &args.recover {
        config = config.with_recovery_code(
            relay_client::RecoveryCode::parse(code).map_err(|e| ClientError::Invalid(e.to_string()))?,
        );
    }
    let client = Arc::new(match Client::connect(config).await {
        Err(ClientError::Server {
            code: ErrorCode::ClientIdTaken,
            ..
        }) => {
            return Err(ClientError::Invalid(format!(
                "the name {} belongs to another device. If it is yours, start with --recover CODE (the recovery code shown when you signed up); otherwise pick another name.",
                args.name
            )))
        }
        Err(ClientError::Server {
            code: ErrorCode::RecoveryRefused,
            ..
        }) => {
            return Err(ClientError::Invalid(
                "that recovery code does not match this name".into(),
            ))
        }
        other => other?,
    });
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
    let receiver = {
        let client = client.clone();
        let recovery = recovery.clone();
        tokio::spawn(async move {
            loop {
                // poll() resends the outbox first: messages left "sending" go out again here.
                match client.poll(Duration::from_secs(25)).await {
                    Ok(events) => {
                        for ev in events {
                            match ev {
                                Event::Message { from, body, delivery, .. } => {
                                    let note = match delivery {
                                        relay_client::Delivery::InOrder => String::new(),
                                        relay_client::Delivery::AfterGap { missing } => format!(
                                            "  (messages {}..{} before this one have not arrived yet)",
                                            missing.start,
                                            missing.end.saturating_sub(1)
                                        ),
                                        relay_client::Delivery::Late => "  (arrived late)".to_owned(),
                                        relay_client::Delivery::Recovered => {
                                            "  (arrived late, after it was reported lost)".to_owned()
                                        }
                                        relay_client::Delivery::Reused => format!(
                                            "  ({from}'s app was restored from an older copy: a new message under an old number)"
                                        ),
                                    };
                                    say(&format!("[{from}] {}{note}", String::from_utf8_lossy(&body)));
                                }
                                Event::PeerKeyChanged { from } => say(&format!(
                                    "!! WARNING: {from}'s identity key CHANGED. Compare fingerprints (/fp {from}) and /accept {from} only if they match."
                                )),
                                Event::Rejected { from, reason } => say(&format!("!! dropped a message claiming to be from {from}: {reason}")),
                                Event::Expired { to, seq } => say(&format!("!! your message #{seq} to {to} expired undelivered")),
                                Event::Delivered { from, seqs } => say(&format!(
                                    "✓✓ delivered to {from} (their messages {})",
                                    seqs.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
                                )),
                                Event::Lost { from, seqs } => say(&format!(
                                    "!! messages {}..{} from {from} were lost (they never arrived)",
                                    seqs.start,
                                    seqs.end.saturating_sub(1)
                                )),
                                Event::Held { from, reason } => say(&format!(
                                    "!! a message from {from} waits on the relay: {reason}"
                                )),
                                Event::Outbox(r) => say(&show(&r)),
                                Event::StartedWithoutOneTimePrekey { peer, initiated } => say(&format!(
                                    "!! the conversation with {peer} started without a one-time prekey ({}): it is forward secret, but its first messages are only as safe as {peer}'s signed prekey until it rotates",
                                    if initiated { "their relay had none left" } else { "your relay had none left" }
                                )),
                                Event::RelayLostData => {
                                    say(
                                        "!! the relay had lost its data (it no longer knew us): registered again. Messages waiting for you there, and undelivered ones you sent, may have been lost.",
                                    );
                                    // Registered again: a new account, so a new code (the old one is void).
                                    if let Some(code) = client.take_recovery_code().await {
                                        // Kept before it is shown: a /recovery typed as soon as
                                        // the line appears must find it.
                                        let line = format!(
                                            "!! your NEW recovery code (the old one no longer works; write this one down; /recovery shows it again until /recovery done): {code}"
                                        );
                                        hold(&recovery, Some(code));
                                        say(&line);
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        say(&format!("!! receive error: {e} (retrying)"));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    };
    let mut open: Option<String> = None;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim().to_owned();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let result = match (words.next(), words.next()) {
            (Some("/quit"), _) => break,
            (Some("/help"), _) => {
                say(
                    "/peers (contacts)  /search PREFIX  /open NAME  /fp [NAME]  /verify NAME  /accept NAME  /outbox  /retry ID  /abandon ID  /recovery [done]  /quit; other lines are sent",
                );
                Ok(())
            }
            (Some("/recovery"), Some("done")) => {
                hold(&recovery, None);
                say("the recovery code is forgotten here; /recovery can no longer show it");
                Ok(())
            }
            (Some("/recovery"), _) => {
                let held = recovery.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for l in recovery_text(held.as_ref()).lines() {
                    say(l);
                }
                Ok(())
            }
            (Some("/peers"), _) => client.contacts().await.map(|peers| {
                if peers.is_empty() {
                    say("no contacts yet: /search PREFIX finds people, /open NAME talks to one");
                }
                for p in peers {
                    let status = match p.key_status {
                        KeyStatus::NoKey => "no key",
                        KeyStatus::New => "new",
                        KeyStatus::Known => "known",
                        KeyStatus::Changed => "KEY CHANGED",
                    };
                    let fp = p.identity_key.map(|k| k.short_fingerprint()).unwrap_or_default();
                    say(&format!(
                        "peer {} key={} {} v{} last_seen={}",
                        p.client_id, fp, status, p.key_version, p.last_seen
                    ));
                }
            }),
            (Some("/search"), prefix) => {
                client
                    .search(prefix.unwrap_or(""), None)
                    .await
                    .map(|(found, next)| {
                        for p in &found {
                            let fp = p.identity_key.map(|k| k.short_fingerprint()).unwrap_or_default();
                            say(&format!(
                                "found {} key={fp} last_seen={}",
                                p.client_id, p.last_seen
                            ));
                        }
                        if found.is_empty() {
                            say("nobody found");
                        }
                        if next.is_some() {
                            say("more match: type more of the name");
                        }
                    })
            }
            (Some("/open"), Some(name)) => {
                open = Some(name.to_owned());
                say(&format!("conversation with {name}"));
                Ok(())
            }
            (Some("/fp"), name) => match name.map(str::to_owned).or_else(|| open.clone()) {
                Some(peer) => match client.fingerprint(&peer).await {
                    Ok(fp) => {
                        say(&format!("fingerprint with {peer} (compare it with theirs):"));
                        for l in fp.to_string().lines() {
                            say(&format!("  {l}"));
                        }
                        client
                            .conversation(&peer)
                            .await
                            .map(|c| say(&protection(&peer, c.as_ref())))
                    }
                    Err(e) => Err(e),
                },
                None => Err(ClientError::Invalid("no conversation open".into())),
            },
            (Some("/outbox"), _) => {
                let waiting = client.outbox().await;
                if waiting.is_empty() {
                    say("outbox empty: every message was stored");
                }
                for r in waiting {
                    say(&show(&r));
                }
                Ok(())
            }
            (Some("/retry"), id) => match outbox_id(id) {
                Ok(id) => client.retry(id).await.map(|r| say(&show(&r))),
                Err(e) => Err(e),
            },
            (Some("/abandon"), id) => match outbox_id(id) {
                Ok(id) => client
                    .abandon(id)
                    .await
                    .map(|r| say(&format!("abandoned message #{} to {}", r.id, r.to))),
                Err(e) => Err(e),
            },
            (Some("/verify"), Some(name)) => client
                .mark_verified(name)
                .await
                .map(|()| say(&format!("{name} marked verified"))),
            (Some("/accept"), Some(name)) => client
                .accept_peer_key(name)
                .await
                .map(|()| say(&format!("accepted {name}'s new key"))),
            (Some(cmd), _) if cmd.starts_with('/') => {
                Err(ClientError::Invalid(format!("unknown command {cmd}")))
            }
            _ => match &open {
                Some(peer) => client.send(peer, line.as_bytes()).await.map(|r| say(&show(&r))),
                None => Err(ClientError::Invalid(
                    "open a conversation first: /open NAME".into(),
                )),
            },
        };
        if let Err(e) = result {
            say(&format!("!! {e}"));
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
