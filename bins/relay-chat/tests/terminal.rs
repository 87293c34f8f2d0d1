//! Drives two `relay-chat` processes through their stdin and stdout against a real relay.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;

struct Chat {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Chat {
    fn start(url: &str, name: &str, pin: &str, dir: &std::path::Path) -> Self {
        Self::start_with(url, name, pin, &dir.join(format!("{name}.json")), &[])
    }

    fn start_with(url: &str, name: &str, pin: &str, profile: &std::path::Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_relay-chat"))
            .args(["--server", url, "--name", name, "--pin", pin, "--profile"])
            .arg(profile)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines: rx,
        }
    }

    fn type_line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Reads lines until one contains `needle` (bounded: gives up after 30 s).
    fn expect(&self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains("\"receipt\"") => {
                    panic!("a control message printed as text: {line:?}")
                }
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line containing {needle:?}; saw {seen:#?}"),
            }
        }
    }
}

#[test]
fn two_people_chat_in_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let (url, pin, server) = relay(dir.path(), "127.0.0.1:0", &[]);

    let mut alice = Chat::start(&url, "alice", &pin, dir.path());
    let line = alice.expect("your recovery code");
    let code = line.rsplit(' ').next().unwrap().to_owned();
    alice.expect("connected as alice");
    let mut bob = Chat::start(&url, "bob", &pin, dir.path());
    bob.expect("connected as bob");

    alice.type_line("/peers");
    alice.expect("no contacts yet");
    alice.type_line("/search B");
    alice.expect("found bob");
    alice.type_line("hello before opening");
    alice.expect("open a conversation first");
    alice.type_line("/open bob");
    alice.type_line("hello bob, from the terminal");
    alice.expect("sent #");
    bob.expect("[alice] hello bob, from the terminal");
    // Bob's client kept it and polled again: its receipt reaches alice as a state, not text.
    alice.expect("✓✓ delivered to bob (their messages 0)");

    bob.type_line("/open alice");
    bob.type_line("hi alice");
    alice.expect("[bob] hi alice");
    bob.expect("✓✓ delivered to alice");

    // bob is a contact now.
    alice.type_line("/peers");
    alice.expect("peer bob");

    // Both see the same fingerprint.
    alice.type_line("/fp bob");
    alice.expect("fingerprint with bob");
    let a = alice.expect("  ");
    // Alice's first message started a double-ratchet conversation.
    alice.expect("forward secret: yes (double ratchet, started by you)");
    bob.type_line("/fp alice");
    bob.expect("fingerprint with alice");
    let b = bob.expect("  ");
    bob.expect("forward secret: yes (double ratchet, started by them)");
    assert_eq!(a, b);
    bob.type_line("/verify alice");
    bob.expect("alice marked verified");
    bob.type_line("/nonsense");
    bob.expect("unknown command");

    // Alice on a new device: the name is hers only with her recovery code.
    let elsewhere = dir.path().join("alice-new-device.json");
    let mut lost = Chat::start_with(&url, "alice", &pin, &elsewhere, &[]);
    assert!(
        !lost.child.wait().unwrap().success(),
        "refused: the name is taken"
    );
    let mut back = Chat::start_with(&url, "alice", &pin, &elsewhere, &["--recover", &code]);
    back.expect("the recovery code you used no longer works");
    let line = back.expect("your recovery code");
    let new_code = line.rsplit(' ').next().unwrap().trim().to_owned();
    assert_ne!(new_code, code, "a recovery registers a new code");
    back.expect("connected as alice");
    back.type_line("/quit");
    assert!(back.child.wait().unwrap().success());
    // The used code is refused now; the new one moves the name again.
    let third_device = dir.path().join("alice-third-device.json");
    let mut stale = Chat::start_with(&url, "alice", &pin, &third_device, &["--recover", &code]);
    assert!(!stale.child.wait().unwrap().success(), "the used code is refused");
    let mut third = Chat::start_with(&url, "alice", &pin, &third_device, &["--recover", &new_code]);
    third.expect("connected as alice");
    third.type_line("/quit");
    assert!(third.child.wait().unwrap().success());

    for c in [&mut alice, &mut bob] {
        c.type_line("/quit");
        assert!(c.child.wait().unwrap().success());
    }
    server.stop().unwrap();
}

/// A relay on `dir` listening on `addr`, in its own thread; returns its url, pin and handle.
fn relay(dir: &std::path::Path, addr: &str, extra: &[&str]) -> (String, String, relay_server::RunningServer) {
    let mut args = vec!["relay-server", "--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let config = relay_server::Config::parse_from(args);
    let listener = std::net::TcpListener::bind(addr).unwrap();
    let server = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(relay_server::spawn(&config, listener))
        .unwrap();
    let pin = server.relay().server_key().public().fingerprint().to_string();
    (server.url().to_owned(), pin, server)
}

/// The three states of a message on screen: "sending…" while the relay is down (then "sent #N"
/// once the poll loop resent it), and "not sent: REASON" for a refusal.
#[test]
fn the_terminal_shows_sending_sent_and_not_sent() {
    let data = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let (url, pin, server) = relay(data.path(), "127.0.0.1:0", &["--sender-cap", "2"]);
    let addr = url.trim_start_matches("http://").to_owned();
    let mut alice = Chat::start(&url, "alice", &pin, profiles.path());
    alice.expect("connected as alice");
    let mut bob = Chat::start(&url, "bob", &pin, profiles.path());
    bob.expect("connected as bob");
    alice.type_line("/open bob");
    alice.type_line("first");
    alice.expect("sent #");
    bob.expect("[alice] first");

    // The relay goes down while alice types: the line stays in her outbox, "sending…".
    server.stop().unwrap();
    alice.type_line("while the relay is down");
    alice.expect("sending…");
    // It comes back on the same data: alice's poll loop resends, bob gets it once.
    let (_, _, server) = relay(data.path(), &addr, &["--sender-cap", "2"]);
    alice.expect("sent #");
    bob.expect("[alice] while the relay is down");

    // bob's quit acknowledges both; then two unread fill alice's quota and the third is refused.
    bob.type_line("/quit");
    assert!(bob.child.wait().unwrap().success());
    alice.type_line("two");
    alice.expect("sent #");
    alice.type_line("three");
    alice.expect("sent #");
    alice.type_line("four");
    let line = alice.expect("not sent:");
    assert!(line.contains("sender_quota"), "{line}");
    alice.type_line("/outbox");
    alice.expect("not sent:");

    alice.type_line("/quit");
    assert!(alice.child.wait().unwrap().success());
    server.stop().unwrap();
}

/// The recovery code: printed when the account is made, shown again by `/recovery` until
/// `/recovery done`; when the relay lost its data and the client registered again, the new code
/// is printed (it used to be dropped: the old code was void and the new one never shown), and it
/// is the one that moves the name.
#[test]
fn the_terminal_shows_a_new_recovery_code_after_the_relay_lost_its_data() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("server_key");
    let key = key_file.to_str().unwrap();
    let first = tempfile::tempdir().unwrap();
    let profiles = tempfile::tempdir().unwrap();
    let (url, pin, server) = relay(first.path(), "127.0.0.1:0", &["--key-file", key]);
    let addr = url.trim_start_matches("http://").to_owned();
    let mut alice = Chat::start(&url, "alice", &pin, profiles.path());
    let line = alice.expect("your recovery code");
    let old = line.rsplit(' ').next().unwrap().to_owned();
    alice.expect("connected as alice");
    alice.type_line("/recovery");
    alice.expect(&format!("your recovery code: {old}"));
    alice.type_line("/recovery done");
    alice.expect("forgotten");
    alice.type_line("/recovery");
    alice.expect("cannot be shown again");

    // The relay comes back on an empty store (same key, same address): alice registers again.
    server.stop().unwrap();
    let second = tempfile::tempdir().unwrap();
    let (_, _, server) = relay(second.path(), &addr, &["--key-file", key, "--start-fresh"]);
    let line = alice.expect("your NEW recovery code");
    let new = line.rsplit(' ').next().unwrap().to_owned();
    assert_ne!(new, old);
    alice.type_line("/recovery");
    alice.expect(&format!("your recovery code: {new}"));

    // The new code is the one that moves the name.
    let elsewhere = profiles.path().join("alice-new-device.json");
    let mut moved = Chat::start_with(&url, "alice", &pin, &elsewhere, &["--recover", &new]);
    moved.expect("connected as alice");
    moved.type_line("/quit");
    assert!(moved.child.wait().unwrap().success());

    alice.type_line("/quit");
    let _ = alice.child.wait();
    server.stop().unwrap();
}
