//! Attacks by someone with an ordinary account and one machine, each against the real
//! `relay-server` binary: what used to take the service from other users, and what holds now.
//! The table of these tests is in docs/security.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{fetch_server_key, healthz, payloads, seqs, Raw, ServerProcess};
use mtproto_crypto::{rand_core::OsRng, IdentitySecret};
use mtproto_session::{wire::Bytes, ClientSession, MsgIdGen, SeqNoGen};
use relay_core::api::Call;
use serde_json::{json, Value};

fn relay(data: &Path, extra: &[&str]) -> ServerProcess {
    relay_logged(data, extra, None)
}

fn relay_logged(data: &Path, extra: &[&str], log: Option<&Path>) -> ServerProcess {
    let mut cmd = common::relay_command(data, "127.0.0.1:0", 2);
    cmd.args(extra).env("RUST_LOG", "info");
    match log {
        Some(p) => cmd.stderr(std::fs::File::create(p).unwrap()),
        None => cmd.stderr(Stdio::null()),
    };
    ServerProcess::spawn(cmd)
}

/// An HTTP client whose connections come from `source` (any 127/8 address works on loopback).
fn from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn publish(raw: &mut Raw) {
    let key = IdentitySecret::generate(&mut OsRng).public();
    let (s, body, _) = raw
        .call(
            "/publish_key",
            &Call::PublishKey {
                identity_key: Bytes(key.as_bytes().to_vec()),
            },
        )
        .await;
    assert_eq!(s, 200, "{body}");
}

/// Runs `edit` on the raw client's saved session state and resumes from it.
fn edit_session(raw: &mut Raw, edit: impl FnOnce(&mut mtproto_session::ClientSessionState)) {
    let mut state = raw.session.state();
    edit(&mut state);
    raw.session = ClientSession::restore(state).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_mailbox_still_delivers_everything() {
    // Was: ~12 payloads of 64 KiB made every poll of the victim a 500 for a week.
    let dir = tempfile::tempdir().unwrap();
    let p = relay(dir.path(), &[]);
    let key = fetch_server_key(&p.url).await;
    let mut mallory = Raw::connect(&p.url, "mallory", key).await;
    let mut alice = Raw::connect(&p.url, "alice", key).await;
    let mut bob = Raw::connect(&p.url, "bob", key).await;
    for i in 0..16u8 {
        let (s, body, _) = mallory.send("bob", &vec![i; 64 * 1024]).await;
        assert_eq!(s, 200, "{body}");
    }
    assert_eq!(alice.send("bob", b"hello bob").await.0, 200);

    // A refused poll changes nothing, its acknowledgements included.
    let first = bob.poll(vec![], 0).await;
    let some = seqs(&first)[0];
    let mut ack = vec![some];
    ack.extend(1_000_000..1_001_024u64);
    let (s, body, _) = bob
        .call(
            "/poll_messages",
            &Call::PollMessages {
                ack: ack.into_iter().map(relay_core::AckRef::from).collect(),
                timeout_ms: Some(0),
                limit: None,
            },
        )
        .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_field")),
        "{body}"
    );
    assert_eq!(
        seqs(&bob.poll(vec![], 0).await)[0],
        some,
        "the refused poll acknowledged nothing"
    );

    // Every poll answers, within its byte budget, and everything arrives once.
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut ack = Vec::new();
    for _ in 0..40 {
        let answer = bob.poll(std::mem::take(&mut ack), 0).await;
        let batch = payloads(&answer);
        if batch.is_empty() {
            break;
        }
        let bytes: usize = batch.iter().map(Vec::len).sum();
        assert!(
            batch.len() == 1 || bytes <= 256 * 1024,
            "{bytes} bytes in one answer"
        );
        ack = seqs(&answer);
        got.extend(batch);
    }
    assert_eq!(got.len(), 17);
    assert!(got.iter().any(|m| m == b"hello bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_stop_one_sender_without_stopping_others() {
    let dir = tempfile::tempdir().unwrap();
    let p = relay(dir.path(), &["--sender-cap", "3", "--mailbox-cap", "5"]);
    let key = fetch_server_key(&p.url).await;
    let mut mallory = Raw::connect(&p.url, "mallory", key).await;
    let mut carol = Raw::connect(&p.url, "carol", key).await;
    let mut bob = Raw::connect(&p.url, "bob", key).await;
    for _ in 0..3 {
        assert_eq!(mallory.send("bob", b"spam").await.0, 200);
    }
    let (s, body, _) = mallory.send("bob", b"one too many").await;
    assert_eq!((s, body["error"].as_str()), (429, Some("sender_quota")), "{body}");
    // Others still get through, up to the mailbox's own cap.
    assert_eq!(carol.send("bob", b"c1").await.0, 200);
    assert_eq!(carol.send("bob", b"c2").await.0, 200);
    let (s, body, _) = carol.send("bob", b"c3").await;
    assert_eq!((s, body["error"].as_str()), (429, Some("mailbox_full")), "{body}");
    // Nothing refused was stored; reading frees the quota.
    let answer = bob.poll(vec![], 0).await;
    assert_eq!(payloads(&answer).len(), 5);
    bob.poll(seqs(&answer), 0).await;
    assert_eq!(mallory.send("bob", b"after bob read").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_answers_a_page_at_a_time() {
    // Was: ~4,400 accounts made `/peers` a 500 for everyone.
    let dir = tempfile::tempdir().unwrap();
    let p = relay(
        dir.path(),
        &[
            "--register-burst",
            "1000",
            "--handshake-burst",
            "1000",
            "--pow-bits",
            "0",
        ],
    );
    let key = fetch_server_key(&p.url).await;
    let mut me = Raw::connect(&p.url, "me", key).await;
    for i in 0..52 {
        let mut u = Raw::connect(&p.url, &format!("u{i:02}"), key).await;
        publish(&mut u).await;
    }
    let ids = |inner: &Value| -> Vec<String> {
        inner["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["client_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, _, inner) = me.call("/peers", &Call::list_peers()).await;
    assert_eq!(s, 200);
    let first = inner.unwrap();
    assert_eq!(ids(&first).len(), 50);
    let next = first["next"].as_str().unwrap().to_owned();
    let after = mtproto_session::ClientId::new(&next).unwrap();
    let (_, _, inner) = me.call("/peers", &Call::search_peers("", Some(after))).await;
    let second = inner.unwrap();
    assert!(second.get("next").is_none());
    let mut all = ids(&first);
    all.extend(ids(&second));
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all, sorted, "in name order, each once");
    assert_eq!(all.len(), 52, "me published no key: not listed");
    let (_, _, inner) = me.call("/peers", &Call::search_peers("U1", None)).await;
    assert_eq!(ids(&inner.unwrap()).len(), 10);
    let names = vec![
        mtproto_session::ClientId::new("u05").unwrap(),
        mtproto_session::ClientId::new("nobody").unwrap(),
    ];
    let (_, _, inner) = me.call("/peers", &Call::lookup_peers(names)).await;
    assert_eq!(ids(&inner.unwrap()), ["u05"]);
    let many = (0..101)
        .map(|i| mtproto_session::ClientId::new(&format!("x{i}")).unwrap())
        .collect();
    let (s, body, _) = me.call("/peers", &Call::lookup_peers(many)).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_field")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_limited_per_source() {
    // Was: accounts were free, permanent and unlimited.
    let dir = tempfile::tempdir().unwrap();
    let p = relay(dir.path(), &["--pow-bits", "0"]);
    let key = fetch_server_key(&p.url).await;
    let mut refusal = None;
    for i in 0..12 {
        match Raw::try_connect(&p.url, &format!("bot{i}"), key, from("127.0.0.1")).await {
            Ok(_) => {}
            Err(e) => {
                refusal = Some((i, e));
                break;
            }
        }
    }
    let (i, (status, body)) = refusal.expect("12 registrations from one source all passed");
    assert_eq!(i, 10, "the default burst is 10 registrations");
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    // Another source is not affected.
    Raw::try_connect(&p.url, "neighbour", key, from("127.0.0.2"))
        .await
        .expect("another source registers");
    // The refusal says when to come back.
    let r = from("127.0.0.1")
        .post(format!("{}/req_pq", p.url))
        .json(&json!({"nonce": Bytes(vec![1; 16])}))
        .send()
        .await
        .unwrap();
    if r.status() == 429 {
        let after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(after >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_source_does_not_keep_new_users_out() {
    // Was: ~13 s of req_pq from one source gave every new user 503 `busy`.
    let dir = tempfile::tempdir().unwrap();
    let p = relay(dir.path(), &["--max-pending-handshakes", "200"]);
    let key = fetch_server_key(&p.url).await;
    let stop = Instant::now() + Duration::from_secs(4);
    let mut flood = Vec::new();
    for _ in 0..8 {
        let (url, http) = (p.url.clone(), from("127.0.0.1"));
        flood.push(tokio::spawn(async move {
            let (mut ok, mut limited) = (0u32, 0u32);
            for _ in 0..5_000 {
                if Instant::now() > stop {
                    break;
                }
                let r = http
                    .post(format!("{url}/req_pq"))
                    .json(&json!({"nonce": Bytes(vec![7; 16])}))
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => ok += 1,
                    429 => limited += 1,
                    other => panic!("flood answered {other}"),
                }
            }
            (ok, limited)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let newcomer = Raw::try_connect(&p.url, "newcomer", key, from("127.0.0.2")).await;
    let took = started.elapsed();
    let (mut ok, mut limited) = (0, 0);
    for f in flood {
        let (o, l) = f.await.unwrap();
        ok += o;
        limited += l;
    }
    assert!(newcomer.is_ok(), "a new user was kept out: {:?}", newcomer.err());
    eprintln!("flood: {ok} started, {limited} refused with 429; a new user connected in {took:?}");
    // One source cannot hold more than its share of the pending handshakes.
    assert!(ok <= 16, "{ok} handshakes pending from one source");
    assert!(limited > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_accounts_are_removed_and_their_names_freed() {
    let dir = tempfile::tempdir().unwrap();
    let p = relay(
        dir.path(),
        &[
            "--unpublished-account-ttl-secs",
            "1",
            "--purge-interval-secs",
            "1",
            // Retrying the name below is a registration attempt each time.
            "--register-burst",
            "100",
        ],
    );
    let key = fetch_server_key(&p.url).await;
    let mut squatter = Raw::connect(&p.url, "wanted", key).await;
    let mut kept = Raw::connect(&p.url, "kept", key).await;
    publish(&mut kept).await;
    let mut freed = None;
    // Accounts are purged every tenth housekeeping run: within about 11 s here.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        match Raw::try_connect(&p.url, "wanted", key, reqwest::Client::new()).await {
            Ok(raw) => {
                freed = Some(raw);
                break;
            }
            Err((409, body)) => assert_eq!(body["error"], "client_id_taken"),
            Err(other) => panic!("{other:?}"),
        }
    }
    let mut owner = freed.expect("the name was never freed");
    publish(&mut owner).await;
    let (s, body, _) = squatter.send("kept", b"still here?").await;
    assert_eq!((s, body["error"].as_str()), (401, Some("unknown_auth_key")));
    assert_eq!(kept.send("wanted", b"hello new owner").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_unique_without_regard_to_case() {
    let dir = tempfile::tempdir().unwrap();
    let p = relay(dir.path(), &[]);
    let key = fetch_server_key(&p.url).await;
    let mut alice = Raw::connect(&p.url, "alice", key).await;
    let mut bob = Raw::connect(&p.url, "bob", key).await;
    let (s, body) = Raw::try_connect(&p.url, "Bob", key, reqwest::Client::new())
        .await
        .err()
        .unwrap();
    assert_eq!((s, body["error"].as_str()), (409, Some("client_id_taken")));
    let (s, body) = Raw::try_connect(&p.url, "Relay", key, reqwest::Client::new())
        .await
        .err()
        .unwrap();
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_field")),
        "{body}"
    );
    assert_eq!(alice.send("BOB", b"to bob, however spelt").await.0, 200);
    assert_eq!(
        payloads(&bob.poll(vec![], 0).await),
        [b"to bob, however spelt".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_no_that_cannot_advance_is_refused_and_the_account_keeps_working() {
    // Was: seq_no 2^32-1 was accepted and every later request of the key refused forever.
    let dir = tempfile::tempdir().unwrap();
    let p = relay(dir.path(), &[]);
    let key = fetch_server_key(&p.url).await;
    let mut alice = Raw::connect(&p.url, "alice", key).await;
    Raw::connect(&p.url, "bob", key).await;
    let saved = alice.session.state();
    edit_session(&mut alice, |s| s.seq = SeqNoGen::resume(u32::MAX / 2));
    let (s, body, _) = alice.send("bob", b"at the end of the range").await;
    assert_eq!((s, body["mtproto_code"].as_u64()), (400, Some(33)), "{body}");
    alice.session = ClientSession::restore(saved).unwrap();
    let (s, body, _) = alice.send("bob", b"business as usual").await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_msg_id_reused_on_another_endpoint_is_the_clients_error() {
    // Was: a 500 with an ERROR line in the log.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let p = relay_logged(&dir.path().join("data"), &[], Some(&log));
    let key = fetch_server_key(&p.url).await;
    let mut alice = Raw::connect(&p.url, "alice", key).await;
    Raw::connect(&p.url, "bob", key).await;
    let ahead = (common::now().as_secs() + 5) << 32;
    edit_session(&mut alice, |s| s.msg_ids = MsgIdGen::resume(ahead));
    assert_eq!(alice.send("bob", b"first").await.0, 200);
    edit_session(&mut alice, |s| s.msg_ids = MsgIdGen::resume(ahead));
    let identity = IdentitySecret::generate(&mut OsRng).public();
    let (s, body, _) = alice
        .call(
            "/publish_key",
            &Call::PublishKey {
                identity_key: Bytes(identity.as_bytes().to_vec()),
            },
        )
        .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("msg_id_reused")),
        "{body}"
    );
    drop(p);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("ERROR"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_tells_anyone_only_up_or_down() {
    let dir = tempfile::tempdir().unwrap();
    let p = relay(dir.path(), &[]);
    let (s, body) = healthz(&p.url).await;
    assert_eq!(s, 200);
    assert_eq!(body, json!({"status": "ok", "storage": "ok"}));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_database_lets_no_one_act_as_a_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = relay(&data, &[]);
    let key = fetch_server_key(&p.url).await;
    let alice = Raw::connect(&p.url, "alice", key).await;
    let secret = alice.session.auth_key().expose_secret().to_vec();
    drop(p); // SIGKILL: the files are as a crash leaves them
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files.push(path);
    }
    assert!(files.iter().any(|f| f.ends_with("relay.db")));
    // The attacker's copy: neither the database nor its WAL holds the key, and the stored
    // record is not a key.
    for f in files.iter().filter(|f| !f.ends_with("server_key")) {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
            "{}",
            f.display()
        );
    }
    let db = rusqlite::Connection::open(data.join("relay.db")).unwrap();
    let record: String = db
        .query_row("SELECT data FROM auth_keys WHERE client_id = 'alice'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let record: Value = serde_json::from_str(&record).unwrap();
    let stored: Bytes = serde_json::from_value(record["auth_key"].clone()).unwrap();
    assert_ne!(stored.0.len(), 256, "a usable 2048-bit key was stored");
    drop(db);
    // Files made readable by others are narrowed again at the next start.
    std::fs::set_permissions(data.join("relay.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = relay(&data, &[]);
    assert_eq!(mode(&data.join("relay.db")), 0o600);
    assert_eq!(mode(&data), 0o700);
    // And the sealed key still serves its owner.
    let mut alice = alice;
    alice.base = p.url.clone();
    assert_eq!(alice.call("/peers", &Call::list_peers()).await.0, 200);
}

/// An HTTP client that says it forwards for `client` (as a reverse proxy would).
fn forwarding_for(client: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", client.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn registrations_until_refused(
    url: &str,
    key: mtproto_crypto::ServerPublicKey,
    name: &str,
    http: &reqwest::Client,
) -> usize {
    for i in 0..12 {
        if Raw::try_connect(url, &format!("{name}{i}"), key, http.clone())
            .await
            .is_err()
        {
            return i;
        }
    }
    12
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let dir = tempfile::tempdir().unwrap();
    // Untrusted: a forged X-Forwarded-For does not buy a fresh allowance.
    let p = relay(&dir.path().join("a"), &["--pow-bits", "0"]);
    let key = fetch_server_key(&p.url).await;
    let mut total = 0;
    for who in ["198.51.100.1", "198.51.100.2"] {
        total += registrations_until_refused(
            &p.url,
            key,
            &format!("f{who}-").replace('.', ""),
            &forwarding_for(who),
        )
        .await;
    }
    assert_eq!(total, 10, "the header was believed from an untrusted peer");
    drop(p);
    // Behind a trusted proxy each client it names has its own allowance.
    let p = relay(
        &dir.path().join("b"),
        &["--pow-bits", "0", "--trusted-proxy", "127.0.0.1"],
    );
    let key = fetch_server_key(&p.url).await;
    assert_eq!(
        registrations_until_refused(&p.url, key, "x", &forwarding_for("198.51.100.1")).await,
        10
    );
    assert_eq!(
        registrations_until_refused(&p.url, key, "y", &forwarding_for("198.51.100.2")).await,
        10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_only_polls_is_not_taken_for_idle() {
    // Was: polls that acknowledge nothing were never committed, so a listener's account was
    // removed while it polled, and anyone could take its name.
    let dir = tempfile::tempdir().unwrap();
    let p = relay(
        dir.path(),
        &["--idle-account-ttl-secs", "8", "--purge-interval-secs", "1"],
    );
    let key = fetch_server_key(&p.url).await;
    let mut listener = Raw::connect(&p.url, "listener", key).await;
    let mut gone = Raw::connect(&p.url, "gone", key).await;
    publish(&mut listener).await;
    publish(&mut gone).await;
    for _ in 0..13 {
        listener.poll(vec![], 0).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The account purge ran at least once after both were 8 s old: only the silent one went.
    let (s, _, _) = gone.call("/peers", &Call::list_peers()).await;
    assert_eq!(s, 401);
    let (s, body, _) = listener.call("/peers", &Call::list_peers()).await;
    assert_eq!(s, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_cannot_keep_the_storage_busy() {
    // Was: polls with 8,192 acknowledgements each, from a few accounts, slowed everyone's
    // requests to seconds. Now acknowledgements cost tokens from the account's own bucket.
    let dir = tempfile::tempdir().unwrap();
    let p = relay(dir.path(), &["--account-burst", "100", "--account-rate", "10"]);
    let key = fetch_server_key(&p.url).await;
    let mut mallory = Raw::connect(&p.url, "mallory", key).await;
    let mut alice = Raw::connect(&p.url, "alice", key).await;
    Raw::connect(&p.url, "bob", key).await;
    let mut limited = None;
    for i in 0..20 {
        let (s, body, _) = mallory
            .call(
                "/poll_messages",
                &Call::PollMessages {
                    ack: (1_000_000..1_001_024u64).map(relay_core::AckRef::from).collect(),
                    timeout_ms: Some(0),
                    limit: None,
                },
            )
            .await;
        if s == 429 {
            limited = Some((i, body));
            break;
        }
        assert_eq!(s, 200, "{body}");
    }
    let (i, body) = limited.expect("the account was never limited");
    assert_eq!(i, 1, "1,024 acknowledgements cost 65 tokens of 100");
    assert_eq!(body["error"], "rate_limited");
    // Other accounts are not affected.
    assert_eq!(alice.send("bob", b"business as usual").await.0, 200);
}
