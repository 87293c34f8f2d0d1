//! What the terminal prints for each event of a poll.

use std::sync::{Arc, Mutex};

use relay_client::{Client, Delivery, Event, RecoveryCode};

use crate::{hold, say, show};

/// The note after a message that did not arrive in order.
fn delivery_note(from: &str, delivery: &Delivery) -> String {
    match delivery {
        Delivery::InOrder => String::new(),
        Delivery::AfterGap { missing } => format!(
            "  (messages {}..{} before this one have not arrived yet)",
            missing.start,
            missing.end.saturating_sub(1)
        ),
        Delivery::Late => "  (arrived late)".to_owned(),
        Delivery::Recovered => "  (arrived late, after it was reported lost)".to_owned(),
        Delivery::Reused => {
            format!("  ({from}'s app was restored from an older copy: a new message under an old number)")
        }
    }
}

/// The line an event prints (`RelayLostData` is printed by [`report`], which also takes the new
/// recovery code).
fn line(ev: &Event) -> String {
    match ev {
        Event::Message { from, body, delivery, .. } => {
            format!("[{from}] {}{}", String::from_utf8_lossy(body), delivery_note(from, delivery))
        }
        Event::PeerKeyChanged { from } => format!(
            "!! WARNING: {from}'s identity key CHANGED. Compare fingerprints (/fp {from}) and /accept {from} only if they match."
        ),
        Event::Rejected { from, reason } => format!("!! dropped a message claiming to be from {from}: {reason}"),
        Event::Expired { to, seq } => format!("!! your message #{seq} to {to} expired undelivered"),
        Event::Delivered { from, seqs } => format!(
            "✓✓ delivered to {from} (their messages {})",
            seqs.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ),
        Event::Lost { from, seqs } => format!(
            "!! messages {}..{} from {from} were lost (they never arrived)",
            seqs.start,
            seqs.end.saturating_sub(1)
        ),
        Event::Held { from, reason } => format!("!! a message from {from} waits on the relay: {reason}"),
        Event::Outbox(r) => show(r),
        Event::StartedWithoutOneTimePrekey { peer, initiated } => format!(
            "!! the conversation with {peer} started without a one-time prekey ({}): it is forward secret, but its first messages are only as safe as {peer}'s signed prekey until it rotates",
            if *initiated { "their relay had none left" } else { "your relay had none left" }
        ),
        Event::RelayLostData => "!! the relay had lost its data (it no longer knew us): registered again. Messages waiting for you there, and undelivered ones you sent, may have been lost.".to_owned(),
    }
}

/// Prints `ev`. After the relay lost its data the client registered again: a new account, so a
/// new recovery code (the old one is void), held before it is shown — a `/recovery` typed as
/// soon as the line appears must find it.
pub(crate) async fn report(client: &Client, recovery: &Arc<Mutex<Option<RecoveryCode>>>, ev: &Event) {
    say(&line(ev));
    if matches!(ev, Event::RelayLostData) {
        if let Some(code) = client.take_recovery_code().await {
            let line = format!(
                "!! your NEW recovery code (the old one no longer works; write this one down; /recovery shows it again until /recovery done): {code}"
            );
            hold(recovery, Some(code));
            say(&line);
        }
    }
}
