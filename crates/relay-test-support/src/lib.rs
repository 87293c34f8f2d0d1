//! Harnesses shared by the workspace's tests (never a dependency of a published crate).
//!
//! [`RedisServer`] and [`RedisCluster`] start Debian's `redis-server` on free loopback ports with
//! AOF `appendfsync always` (the setting the relay's no-loss promise needs), in temporary
//! directories, and kill it when dropped. Every wait is bounded.
#![forbid(unsafe_code)]
#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A loopback port that was free a moment ago. A cluster node also needs `port + 10000` (its
/// bus port) free and at most 65535, so `cluster` picks from below 55536 with both free.
fn free_port(cluster: bool) -> u16 {
    let bind = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port));
    for _ in 0..1000 {
        let Ok(listener) = bind(0) else { continue };
        let Ok(port) = listener.local_addr().map(|a| a.port()) else {
            continue;
        };
        if !cluster {
            return port;
        }
        if port <= 55535 && bind(port + 10000).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port (cluster: {cluster})");
}

fn spawn(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    Command::new(&bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {bin} ({e}): install Debian's redis-server (scripts/test.sh does)")
        })
}

/// Tries (at most 15 s: the whole suite shares two cores) to connect to the server on `port`;
/// `None` as soon as `gone()` says the server exited.
fn connect_unless(port: u16, mut gone: impl FnMut() -> bool) -> Option<redis::Connection> {
    for _ in 0..600 {
        if let Ok(c) =
            redis::Client::open(format!("redis://127.0.0.1:{port}")).and_then(|c| c.get_connection())
        {
            return Some(c);
        }
        if gone() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

/// A connection to the server `child` runs on `port`. `None` when `child` exited first
/// (typically: another process took the port between [`free_port`] and the bind).
fn try_connect(port: u16, child: &mut Child) -> Option<redis::Connection> {
    let conn = connect_unless(port, || matches!(child.try_wait(), Ok(Some(_))));
    if conn.is_none() && matches!(child.try_wait(), Ok(None)) {
        stop(child);
        panic!("redis-server did not start on port {port} within 15 s");
    }
    conn
}

fn connect(port: u16) -> redis::Connection {
    connect_unless(port, || false)
        .unwrap_or_else(|| panic!("redis-server on port {port} does not accept connections"))
}

/// Starts a server on a fresh free port, trying another port (up to 5 times) when the chosen
/// one was taken before redis-server could bind it. `dir_for` names the data directory of a port.
fn start_on_free_port(
    cluster: bool,
    dir_for: impl Fn(u16) -> std::path::PathBuf,
    extra: &[&str],
) -> (Child, u16, redis::Connection) {
    for _ in 0..5 {
        let port = free_port(cluster);
        let dir = dir_for(port);
        std::fs::create_dir_all(&dir).expect("a node directory");
        let mut child = spawn(port, &dir, extra);
        if let Some(conn) = try_connect(port, &mut child) {
            return (child, port, conn);
        }
    }
    panic!("redis-server exited at start five times (ports taken, or a bad argument)");
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One private `redis-server`.
pub struct RedisServer {
    child: Child,
    port: u16,
    /// Extra `redis-server` arguments, kept for restarts.
    extra: Vec<String>,
    /// `redis://127.0.0.1:PORT/0`.
    pub url: String,
    dir: tempfile::TempDir,
}

/// Waits (bounded) until a server that accepts connections also answers `PING`: replaying a
/// large AOF answers `LOADING` for a while.
fn ping_until_ready(port: u16, child: &mut Child, conn: &mut redis::Connection) {
    for _ in 0..400 {
        if redis::cmd("PING").query::<String>(conn).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    stop(child);
    panic!("redis-server on port {port} does not answer")
}

impl RedisServer {
    /// Starts it and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts it with extra `redis-server` arguments (later ones win, e.g.
    /// `["--appendfsync", "everysec"]`), kept for [`RedisServer::restart`].
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut child, port, mut conn) = start_on_free_port(false, |_| dir.path().to_path_buf(), extra);
        ping_until_ready(port, &mut child, &mut conn);
        Self {
            child,
            port,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            url: format!("redis://127.0.0.1:{port}/0"),
            dir,
        }
    }

    /// Kills it, as a crash would (its AOF stays for [`RedisServer::restart`]).
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// Starts it again on the same port and directory (replaying the AOF) and waits until it
    /// answers.
    pub fn restart(&mut self) {
        stop(&mut self.child);
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.child = spawn(self.port, self.dir.path(), &extra);
        let Some(mut conn) = try_connect(self.port, &mut self.child) else {
            panic!("redis-server exited at restart on port {}", self.port);
        };
        ping_until_ready(self.port, &mut self.child, &mut conn);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A private Redis Cluster of three primaries (slots split in thirds), optionally with replicas.
/// Formed with `CLUSTER ADDSLOTSRANGE`, `CLUSTER MEET` and `CLUSTER REPLICATE` (no `redis-cli`
/// needed); the constructors return once every node reports `cluster_state:ok` and every replica
/// is linked to its primary.
pub struct RedisCluster {
    nodes: Vec<Child>,
    /// One `redis://127.0.0.1:PORT` per node, primaries first, to seed a cluster client.
    pub urls: Vec<String>,
    _dir: tempfile::TempDir,
}

/// Waits (at most 40 s: the whole test suite shares two cores) until `INFO`-style text from
/// every connection satisfies `ok`.
fn wait_all(conns: &mut [redis::Connection], section: (&str, &str), ok: impl Fn(&str) -> bool) {
    for _ in 0..800 {
        let all = conns.iter_mut().all(|c| {
            redis::cmd(section.0)
                .arg(section.1)
                .query::<String>(c)
                .is_ok_and(|text| ok(&text))
        });
        if all {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the Redis Cluster did not settle within 40 s ({} {})",
        section.0, section.1
    );
}

impl RedisCluster {
    /// Three primaries, no replicas.
    pub fn start() -> Self {
        Self::start_with(0)
    }

    /// Three primaries with `replicas` replicas each.
    pub fn start_with(replicas: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let total = 3 * (1 + replicas);
        // Built first, so that a panic below still kills the nodes already started.
        let mut cluster = Self {
            nodes: Vec::new(),
            urls: Vec::new(),
            _dir: dir,
        };
        let mut ports = Vec::new();
        let mut conns = Vec::new();
        for _ in 0..total {
            let (child, port, conn) = start_on_free_port(
                true,
                |port| cluster._dir.path().join(port.to_string()),
                // Replicas sync at once (Redis waits 5 s by default for more to join).
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "2000",
                    "--repl-diskless-sync-delay",
                    "0",
                ],
            );
            cluster.nodes.push(child);
            cluster.urls.push(format!("redis://127.0.0.1:{port}"));
            ports.push(port);
            conns.push(conn);
        }
        for (i, c) in conns.iter_mut().enumerate().take(3) {
            let (from, to) = (i * 16384 / 3, (i + 1) * 16384 / 3 - 1);
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(from)
                .arg(to)
                .query(c)
                .expect("CLUSTER ADDSLOTSRANGE");
        }
        for port in &ports[1..] {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(*port)
                .query(&mut conns[0])
                .expect("CLUSTER MEET");
        }
        let known = format!("cluster_known_nodes:{total}");
        wait_all(&mut conns, ("CLUSTER", "INFO"), |i| i.contains(&known));
        let ids: Vec<String> = conns
            .iter_mut()
            .take(3)
            .map(|c| redis::cmd("CLUSTER").arg("MYID").query(c).expect("CLUSTER MYID"))
            .collect();
        // Node 3 + k replicates primary k % 3.
        for (c, primary) in conns[3..].iter_mut().zip(ids.iter().cycle()) {
            let _: () = redis::cmd("CLUSTER")
                .arg("REPLICATE")
                .arg(primary)
                .query(c)
                .expect("CLUSTER REPLICATE");
        }
        wait_all(&mut conns, ("CLUSTER", "INFO"), |i| {
            i.contains("cluster_state:ok")
        });
        wait_all(&mut conns[3..], ("INFO", "replication"), |i| {
            i.contains("master_link_status:up")
        });
        cluster
    }

    /// The port of the primary that serves `key`'s slot now, as the first node that answers
    /// sees it.
    pub fn primary_of(&self, key: &str) -> u16 {
        for url in &self.urls {
            let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) else {
                continue;
            };
            let Ok(slot) = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query::<i64>(&mut c) else {
                continue;
            };
            let Ok(redis::Value::Array(ranges)) = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c) else {
                continue;
            };
            for range in ranges {
                let redis::Value::Array(r) = range else { continue };
                if let (
                    Some(redis::Value::Int(from)),
                    Some(redis::Value::Int(to)),
                    Some(redis::Value::Array(primary)),
                ) = (r.first(), r.get(1), r.get(2))
                {
                    if (*from..=*to).contains(&slot) {
                        if let Some(redis::Value::Int(port)) = primary.get(1) {
                            return u16::try_from(*port).expect("a port");
                        }
                    }
                }
            }
        }
        panic!("no node knows which primary serves {key}");
    }

    /// Waits (at most 20 s) until the replicas of the primary on `port` have all it wrote.
    pub fn wait_replicated(&self, port: u16) {
        let mut c = connect(port);
        for _ in 0..400 {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut c).expect("INFO");
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            let primary = field("master_repl_offset:");
            let replica = field("slave0:").and_then(|v| {
                v.split(',')
                    .find_map(|kv| kv.strip_prefix("offset="))
                    .map(str::to_owned)
            });
            if primary.is_some() && primary == replica {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the replica of the primary on port {port} did not catch up within 20 s");
    }

    /// Kills the node on `port` (SIGKILL) and waits for it to exit.
    pub fn kill_port(&mut self, port: u16) {
        let i = self
            .urls
            .iter()
            .position(|u| u.ends_with(&format!(":{port}")))
            .expect("a node of this cluster");
        stop(&mut self.nodes[i]);
    }

    /// Waits (at most 30 s) until a replica has taken over `key`'s slot from the dead primary
    /// on `dead` and every live node reports `cluster_state:ok`.
    pub fn wait_promoted(&self, dead: u16, key: &str) {
        let live: Vec<&String> = self
            .urls
            .iter()
            .filter(|u| !u.ends_with(&format!(":{dead}")))
            .collect();
        for _ in 0..600 {
            let ok = live.iter().all(|u| {
                redis::Client::open(u.as_str())
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            });
            if ok && self.primary_of(key) != dead {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no replica took over {key} within 30 s");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            stop(n);
        }
    }
}
