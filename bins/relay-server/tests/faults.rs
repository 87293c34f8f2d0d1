//! Storage faults met by the real `relay-server` binary: a second process on the same data, a
//! database that vanished beside its server key, a full disk and a read-only filesystem.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fetch_server_key, healthz, Raw, ServerProcess};

fn command(data: &Path, extra: &[&str]) -> Command {
    let mut cmd = common::relay_command(data, "127.0.0.1:0", 1);
    cmd.args(extra).stderr(Stdio::piped());
    cmd
}

/// Runs a start that must be refused: its exit code and what it said.
fn refused(data: &Path, extra: &[&str]) -> (i32, String) {
    let out = command(data, extra).stdout(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_on_the_same_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = ServerProcess::spawn(command(dir.path(), &[]));
    let (code, said) = refused(dir.path(), &[]);
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("another relay-server is using"), "{said}");
    // The first one is unaffected, and once it is gone the data can be served again.
    assert_eq!(healthz(&first.url).await.0, 200);
    drop(first);
    let again = ServerProcess::spawn(command(dir.path(), &[]));
    assert_eq!(healthz(&again.url).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_data_beside_its_key_is_refused_until_the_operator_says_start_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::spawn(command(dir.path(), &[]));
    let key = fetch_server_key(&p.url).await;
    Raw::connect(&p.url, "alice", key).await;
    drop(p);
    let db = dir.path().join("relay.db");
    for damage in ["truncated to zero bytes", "removed"] {
        if damage == "removed" {
            std::fs::remove_file(&db).unwrap();
        } else {
            std::fs::write(&db, b"").unwrap();
        }
        for side in ["relay.db-wal", "relay.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(side));
        }
        let (code, said) = refused(dir.path(), &[]);
        assert_eq!(code, 2, "{damage}: {said}");
        assert!(said.contains("--start-fresh"), "{damage}: {said}");
        assert!(
            said.contains(if damage == "removed" {
                "is missing"
            } else {
                "is empty"
            }),
            "{said}"
        );
    }
    // A malformed file is refused too (SQLite cannot read it).
    std::fs::write(&db, vec![0x42; 8192]).unwrap();
    let (code, said) = refused(dir.path(), &[]);
    assert_eq!(code, 2, "{said}");
    // The other way round: the database is there, its key is gone — refused, and no new key
    // is left behind by the refusal.
    std::fs::remove_file(&db).unwrap();
    let kept = dir.path().join("key.kept");
    {
        let p = ServerProcess::spawn(command(dir.path(), &["--start-fresh"]));
        Raw::connect(&p.url, "carol", key).await;
    }
    std::fs::rename(dir.path().join("server_key"), &kept).unwrap();
    let (code, said) = refused(dir.path(), &[]);
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("server key is missing"), "{said}");
    assert!(!dir.path().join("server_key").exists());
    std::fs::rename(&kept, dir.path().join("server_key")).unwrap();
    // The operator's word: an empty store, the same key.
    std::fs::remove_file(&db).unwrap();
    for side in ["relay.db-wal", "relay.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(side));
    }
    let p = ServerProcess::spawn(command(dir.path(), &["--start-fresh"]));
    assert_eq!(fetch_server_key(&p.url).await, key);
    Raw::connect(&p.url, "alice", key).await;
}

/// A small tmpfs of our own, when this machine lets us mount one (root on Linux).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(dir))
    }

    fn remount(&self, mode: &str) {
        let s = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.0.path())
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

async fn health_becomes(url: &str, want: u16) -> bool {
    for _ in 0..100 {
        if healthz(url).await.0 == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_writes_fail_and_200_again_after() {
    let Some(fs) = Tmpfs::mount("16m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = fs.0.path().join("data");
    let p = ServerProcess::spawn(command(&data, &[]));
    let key = fetch_server_key(&p.url).await;
    let mut alice = Raw::connect(&p.url, "alice", key).await;
    Raw::connect(&p.url, "bob", key).await;
    assert_eq!(healthz(&p.url).await.0, 200);

    // Disk full: a file takes every free block.
    let filler = fs.0.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 32 << 20]);
    assert!(
        health_becomes(&p.url, 503).await,
        "healthz stayed 200 on a full disk"
    );
    let (s, body, _) = alice.send("bob", &[7; 60_000]).await;
    assert_eq!(s, 503, "{body}");
    std::fs::remove_file(&filler).unwrap();
    assert!(health_becomes(&p.url, 200).await, "healthz did not recover");
    assert_eq!(alice.send("bob", b"space again").await.0, 200);

    // Read-only filesystem: the kernel will not remount a filesystem read-only under files
    // open for writing (only an ext4 error does that), so: the relay stops, the filesystem goes
    // read-only, and the relay refuses to start on it with a clear message.
    drop(p);
    fs.remount("ro");
    let (code, said) = refused(&data, &[]);
    assert_eq!(code, 2, "{said}");
    assert!(said.to_lowercase().contains("read-only"), "{said}");
    fs.remount("rw");
    let p = ServerProcess::spawn(command(&data, &[]));
    assert_eq!(healthz(&p.url).await.0, 200);
}
