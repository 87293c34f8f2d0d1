//! `relay-load`: drives N simulated users through the relay's real HTTP API.
//!
//! - `--mode relay`: every user handshakes once, then sends to the next user in a ring (one send
//!   in flight per user) while long-polling its own mailbox with acks. Reports sends/s,
//!   deliveries/s and send → delivery latency percentiles.
//! - `--mode send`: the send path alone — the same sends, with nobody polling (start the server
//!   with a large `--mailbox-cap`). Reports sends/s.
//! - `--mode echo`: the same number of concurrent users POST a JSON body of the same size to the
//!   server's plain `/echo` endpoint (start the server with `--echo`): the framework's own limit.
//! - `--mode idle`: every user handshakes and then keeps one long-poll waiting, for measuring the
//!   server's memory per waiting client.
//!
//! All loops are bounded by `--duration-secs`; the tool stops by itself.
#![forbid(unsafe_code)]
// `serde_json::Value` indexing yields `Null` for a missing key (it never panics), and payloads are
// at least 8 bytes by construction.
#![allow(clippy::indexing_slicing)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use mtproto_crypto::ServerPublicKey;
use mtproto_session::{wire::Bytes, ClientId, UnixTime};
use relay_api::{Call, PeersAnswer, PollAnswer, SendAnswer};
use relay_client::{ClientConfig, Connection, Pin, Transport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    Relay,
    Send,
    Echo,
    Idle,
    /// `--users` connections from `--flood-source` send `req_pq` as fast as they can while a
    /// newcomer from `--newcomer-source` does a full handshake once a second; prints the
    /// newcomer's times and what the flood got.
    Flood,
}

#[derive(Parser, Debug)]
#[command(name = "relay-load")]
struct Args {
    /// The relay.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Simulated users.
    #[arg(long, default_value_t = 64)]
    users: usize,
    /// How long to run after setup.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// What to drive.
    #[arg(long, value_enum, default_value = "relay")]
    mode: Mode,
    /// A prefix for user names, so runs against one server do not collide.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Send to the users of another generator (its `--prefix`), e.g. one on another node; by
    /// default users send around a ring of this generator's own users.
    #[arg(long)]
    peer_prefix: Option<String>,
    /// `--mode flood`: the flooder's source address.
    #[arg(long, default_value = "127.0.0.1")]
    flood_source: std::net::IpAddr,
    /// `--mode flood`: the first newcomer's source address; each newcomer comes from the next
    /// IPv4 address (a new user each time, as from a new machine).
    #[arg(long, default_value = "127.0.0.2")]
    newcomer_source: std::net::Ipv4Addr,
}

fn now() -> UnixTime {
    UnixTime::from_system()
}

fn fail(msg: impl std::fmt::Display) -> String {
    msg.to_string()
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &impl serde::Serialize,
) -> Result<(u16, Vec<u8>), String> {
    let r = http.post(url).json(body).send().await.map_err(fail)?;
    let s = r.status().as_u16();
    Ok((s, r.bytes().await.map_err(fail)?.to_vec()))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

fn unix_micros() -> u64 {
    now().as_nanos() / 1000
}

async fn server_key(http: &reqwest::Client, base: &str) -> Result<ServerPublicKey, String> {
    let v: serde_json::Value = http
        .get(format!("{base}/server_key"))
        .send()
        .await
        .map_err(fail)?
        .json()
        .await
        .map_err(fail)?;
    let pk: Bytes = serde_json::from_value(v["public_key"].clone()).map_err(fail)?;
    ServerPublicKey::from_slice(&pk.0).map_err(fail)
}

/// The users' configuration: one attempt per request (a load tool reports refusals, it does
/// not wait them out), the server key pinned.
fn user_config(args: &Args, name: &str, key: ServerPublicKey) -> ClientConfig {
    ClientConfig::new(&args.server, name, Pin::Key(key)).with_retries(false)
}

fn user_name(prefix: &str, i: usize) -> String {
    format!("{prefix}u{i}")
}

/// Every user's handshake (16 at a time), all over one HTTP connection pool.
async fn setup(http: &reqwest::Client, args: &Args) -> Result<Vec<Arc<Connection>>, String> {
    let key = server_key(http, &args.server).await?;
    let transport = Transport::new(&user_config(args, "load", key)).map_err(fail)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..args.users {
        let (transport, sem) = (transport.clone(), sem.clone());
        let config = user_config(args, &user_name(&args.prefix, i), key);
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.map_err(fail)?;
            Connection::open_on(transport, &config)
                .await
                .map_err(|e| format!("handshake for {}: {e}", config.name))
        }));
    }
    let mut users = Vec::new();
    for t in tasks {
        users.push(Arc::new(t.await.map_err(fail)??));
    }
    Ok(users)
}

/// What the send and poll loops count, shared by all users.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    errors: AtomicU64,
    /// Send → delivery, microseconds.
    latencies: std::sync::Mutex<Vec<u64>>,
}

impl Tally {
    /// Counts a failure; the first three are printed.
    fn failed(&self, what: &str, e: impl std::fmt::Display) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 3 {
            eprintln!("relay-load: {what} failed: {e}");
        }
    }
}

/// One user's sends to `target` until `deadline`, one in flight; each payload starts with its
/// send time.
async fn send_loop(
    user: Arc<Connection>,
    target: String,
    size: usize,
    deadline: Instant,
    tally: Arc<Tally>,
) -> Result<(), String> {
    let target = ClientId::new(&target).map_err(fail)?;
    while Instant::now() < deadline {
        let mut payload = vec![0x5a; size];
        payload[..8].copy_from_slice(&unix_micros().to_le_bytes());
        let c = Call::SendMessage {
            target_peer: target.clone(),
            payload: Bytes(payload),
            key_version: None,
        };
        match user.call::<SendAnswer>(&c).await {
            Ok(_) => {
                tally.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tally.failed("send", e),
        }
    }
    Ok(())
}

/// One user's long polls with acks until a little past `deadline` (so that messages sent at
/// the end are counted), recording each message's latency.
async fn poll_loop(user: Arc<Connection>, deadline: Instant, tally: Arc<Tally>) -> Result<(), String> {
    let mut ack = Vec::new();
    while Instant::now() < deadline + Duration::from_millis(500) {
        let c = Call::PollMessages {
            ack: std::mem::take(&mut ack),
            timeout_ms: Some(500),
            limit: None,
        };
        match user.call::<PollAnswer>(&c).await {
            Ok(v) => {
                let now = unix_micros();
                let mut lat = Vec::new();
                for m in v.messages {
                    ack.push(m.ack());
                    let ts = m
                        .payload
                        .0
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_le_bytes)
                        .unwrap_or(now);
                    lat.push(now.saturating_sub(ts));
                }
                tally.latencies.lock().map_err(fail)?.extend(lat);
            }
            Err(e) => tally.failed("poll", e),
        }
    }
    Ok(())
}

/// Waits (bounded) until the other generator's user `want` exists. Asked by name: the first
/// page of the directory (50 names) does not reach it once both generators' users are listed.
async fn await_peer(probe: &Connection, want: &str) -> Result<(), String> {
    let asked = Call::lookup_peers(vec![ClientId::new(want).map_err(fail)?]);
    for _ in 0..300 {
        let v: PeersAnswer = probe.call(&asked).await.map_err(fail)?;
        if v.peers.iter().any(|p| p.client_id.as_str() == want) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("peer users ({want}) never appeared"))
}

async fn relay_mode(http: reqwest::Client, args: Args, poll: bool) -> Result<(), String> {
    let t = Instant::now();
    let users = setup(&http, &args).await?;
    println!(
        "setup: {} handshakes in {:.2} s",
        users.len(),
        t.elapsed().as_secs_f64()
    );
    // Each user sends to the next one around the ring, or to its namesake of the other
    // generator.
    let targets: Vec<String> = (0..users.len())
        .map(|i| match &args.peer_prefix {
            Some(p) => user_name(p, i),
            None => user_name(&args.prefix, (i + 1) % users.len()),
        })
        .collect();
    if args.peer_prefix.is_some() {
        let probe = users.first().ok_or("no users")?;
        await_peer(probe, targets.last().map_or("", String::as_str)).await?;
    }
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let mut tasks = Vec::new();
    for (user, target) in users.iter().zip(targets) {
        let size = args.payload.max(8);
        tasks.push(tokio::spawn(send_loop(
            user.clone(),
            target,
            size,
            deadline,
            tally.clone(),
        )));
        if poll {
            tasks.push(tokio::spawn(poll_loop(user.clone(), deadline, tally.clone())));
        }
    }
    for t in tasks {
        t.await.map_err(fail)??;
    }
    let secs = args.duration_secs as f64;
    let mut lat = tally.latencies.lock().map_err(fail)?.clone();
    lat.sort_unstable();
    let sends = tally.sent.load(Ordering::Relaxed);
    println!(
        "{}: users={} payload={}B sends={} ({:.0}/s) deliveries={} ({:.0}/s) errors={} latency_ms p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        if poll { "relay" } else { "send-only" },
        args.users,
        args.payload,
        sends,
        sends as f64 / secs,
        lat.len(),
        lat.len() as f64 / secs,
        tally.errors.load(Ordering::Relaxed),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
    Ok(())
}

async fn echo_mode(http: reqwest::Client, args: Args) -> Result<(), String> {
    let done = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    // The same shape as an envelope request: one base64 field of the packet's size.
    let body = serde_json::json!({ "packet": Bytes(vec![0x5a; args.payload + 120]) });
    let mut tasks = Vec::new();
    for _ in 0..args.users {
        let (http, url, done, latencies, body) = (
            http.clone(),
            format!("{}/echo", args.server),
            done.clone(),
            latencies.clone(),
            body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let (s, _) = post(&http, &url, &body).await?;
                if s != 200 {
                    return Err(format!("echo answered {s}: start the server with --echo"));
                }
                lat.push(t.elapsed().as_micros() as u64);
                done.fetch_add(1, Ordering::Relaxed);
            }
            latencies.lock().map_err(fail)?.extend(lat);
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(fail)??;
    }
    let mut lat = latencies.lock().map_err(fail)?.clone();
    lat.sort_unstable();
    let n = done.load(Ordering::Relaxed);
    println!(
        "echo: users={} body={}B requests={} ({:.0}/s) latency_ms p50={:.2} p99={:.2}",
        args.users,
        args.payload + 120,
        n,
        n as f64 / args.duration_secs as f64,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    Ok(())
}

async fn idle_mode(http: reqwest::Client, args: Args) -> Result<(), String> {
    let users = setup(&http, &args).await?;
    let waiting = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let mut tasks = Vec::new();
    for user in users {
        let waiting = waiting.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                waiting.fetch_add(1, Ordering::Relaxed);
                let left = deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
                let c = Call::PollMessages {
                    ack: vec![],
                    timeout_ms: Some(left.min(30_000)),
                    limit: None,
                };
                let r = user.call::<PollAnswer>(&c).await;
                waiting.fetch_sub(1, Ordering::Relaxed);
                r.map_err(fail)?;
            }
            Ok::<(), String>(())
        }));
    }
    let report = waiting.clone();
    let n = args.users as u64;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let w = report.load(Ordering::Relaxed);
            println!("idle: {w}/{n} long-polls waiting");
            if w >= n {
                println!("idle: ALL WAITING");
                break;
            }
        }
    });
    for t in tasks {
        t.await.map_err(fail)??;
    }
    Ok(())
}

async fn flood_mode(args: Args) -> Result<(), String> {
    let client = |source| {
        reqwest::Client::builder()
            .local_address(source)
            .pool_max_idle_per_host(args.users + 8)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(fail)
    };
    let flooder = client(args.flood_source)?;
    let newcomer_at = |n: u32| {
        std::net::IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(args.newcomer_source).wrapping_add(n),
        ))
    };
    let key = server_key(&client(newcomer_at(0))?, &args.server).await?;
    let deadline = Instant::now() + Duration::from_secs(args.duration_secs);
    let counts: Arc<[AtomicU64; 3]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut tasks = Vec::new();
    for _ in 0..args.users {
        let (http, url, counts) = (flooder.clone(), format!("{}/req_pq", args.server), counts.clone());
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({ "nonce": Bytes(vec![7; 16]) });
            while Instant::now() < deadline {
                let slot = match post(&http, &url, &body).await {
                    Ok((200, _)) => 0,
                    Ok((429, _)) => 1,
                    _ => 2,
                };
                if let Some(c) = counts.get(slot) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut times = Vec::new();
    let mut refused = 0;
    let mut n = 0u32;
    while Instant::now() + Duration::from_secs(1) < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let config =
            user_config(&args, &format!("{}-new{n}", args.prefix), key).with_local_address(newcomer_at(n));
        // The HTTP client is built before the clock starts: the figure is the handshake's.
        let transport = Transport::new(&config).map_err(fail)?;
        let t = Instant::now();
        match Connection::open_on(transport, &config).await {
            Ok(_) => times.push(t.elapsed()),
            Err(e) => {
                refused += 1;
                eprintln!("newcomer refused: {e}");
            }
        }
        n += 1;
    }
    for t in tasks {
        t.await.map_err(fail)?;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let load = |i: usize| counts.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
    let secs = args.duration_secs.max(1);
    println!(
        "flood: {} conns from {} for {} s: {} req_pq/s answered 200, {} req_pq/s answered 429, {} other",
        args.users,
        args.flood_source,
        secs,
        load(0) / secs,
        load(1) / secs,
        load(2)
    );
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        println!(
            "newcomers from {} on: {} handshakes, median {:.1} ms, max {:.1} ms (min {:.1} ms), {refused} refused",
            args.newcomer_source,
            times.len(),
            ms(times.get(times.len() / 2).copied().unwrap_or_default()),
            ms(*last),
            ms(*first),
        );
    } else {
        println!(
            "newcomers from {} on: no handshake succeeded ({refused} refused)",
            args.newcomer_source
        );
    }
    Ok(())
}

/// jemalloc instead of glibc's malloc: the generator allocates and frees from two threads
/// for every request, and glibc's arena locks and frees were ~12 % of its CPU
/// (docs/benchmarks.md, "How much of the machine the generator takes").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let http = match reqwest::Client::builder()
        .pool_max_idle_per_host(args.users * 2 + 8)
        .timeout(Duration::from_secs(60))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("relay-load: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let r = match args.mode {
        Mode::Relay => relay_mode(http, args, true).await,
        Mode::Send => relay_mode(http, args, false).await,
        Mode::Echo => echo_mode(http, args).await,
        Mode::Idle => idle_mode(http, args).await,
        Mode::Flood => flood_mode(args).await,
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
