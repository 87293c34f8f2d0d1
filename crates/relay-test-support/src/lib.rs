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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
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

fn connect(port: u16) -> redis::Connection {
    for _ in 0..200 {
        if let Ok(c) =
            redis::Client::open(format!("redis://127.0.0.1:{port}")).and_then(|c| c.get_connection())
        {
            return c;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("redis-server did not start on port {port}");
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One private `redis-server`.
pub struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:PORT/0`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts it and waits until it answers.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let mut child = spawn(port, dir.path(), &[]);
        let mut conn = connect(port);
        if redis::cmd("PING").query::<String>(&mut conn).is_err() {
            stop(&mut child);
            panic!("redis-server on port {port} does not answer");
        }
        Self {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
            _dir: dir,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A private Redis Cluster of three primaries (slots split in thirds). Formed with
/// `CLUSTER ADDSLOTSRANGE` and `CLUSTER MEET` (no `redis-cli` needed); [`RedisCluster::start`]
/// returns once every node reports `cluster_state:ok`.
pub struct RedisCluster {
    nodes: Vec<Child>,
    /// One `redis://127.0.0.1:PORT` per node, to seed a cluster client.
    pub urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three nodes and joins them into one cluster.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut cluster = Self {
            nodes: Vec::new(),
            urls: ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect(),
            _dir: dir,
        };
        for port in &ports {
            let node_dir = cluster._dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("a node directory");
            let child = spawn(
                *port,
                &node_dir,
                &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"],
            );
            cluster.nodes.push(child);
        }
        let mut conns: Vec<redis::Connection> = ports.iter().map(|p| connect(*p)).collect();
        for (i, c) in conns.iter_mut().enumerate() {
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
        for _ in 0..400 {
            let formed = conns.iter_mut().all(|c| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(c)
                    .is_ok_and(|info| {
                        info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
                    })
            });
            if formed {
                return cluster;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the Redis Cluster did not form within 20 s");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            stop(n);
        }
    }
}
