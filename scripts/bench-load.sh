#!/usr/bin/env bash
# Runs the load generator against the relay's plain /echo endpoint, the in-memory engine and the
# SQLite engine, one after the other in the same run, on loopback. Figures go to stdout.
# Usage: scripts/bench-load.sh [USERS] [SECONDS] [PAYLOAD]
set -euo pipefail
cd "$(dirname "$0")/.."
users="${1:-64}"; secs="${2:-10}"; payload="${3:-256}"
cargo build --release -q -p relay-server -p relay-load
bin=target/release
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

# Every load user comes from this one machine: lift the per-source limits and the quotas that
# exist to stop one account or address from crowding out the others (docs/security.md).
one_source_load="--max-conns-per-source 1000000 --account-burst 1000000 --account-rate 1000000 --register-burst 1000000 --handshake-burst 1000000 --pending-per-source 1000000 --sender-cap 1000000000 --sender-bytes 1000000000000 --mailbox-bytes 1000000000000"

start() { # engine port
  RUST_LOG=warn "$bin/relay-server" --engine "$1" --bind "127.0.0.1:$2" --data-dir "$tmp/$1" --echo \
    --mailbox-cap 1000000 $one_source_load > "$tmp/$1.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$2/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "server $1 did not start" >&2; exit 1
}

echo "machine: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
start memory 18081
start sqlite 18082
"$bin/relay-load" --server http://127.0.0.1:18081 --mode echo --users "$users" --duration-secs "$secs" --payload "$payload"
"$bin/relay-load" --server http://127.0.0.1:18081 --mode relay --users "$users" --duration-secs "$secs" --payload "$payload" --prefix mem
"$bin/relay-load" --server http://127.0.0.1:18082 --mode relay --users "$users" --duration-secs "$secs" --payload "$payload" --prefix sql
"$bin/relay-load" --server http://127.0.0.1:18081 --mode send --users "$users" --duration-secs "$secs" --payload "$payload" --prefix memsend
"$bin/relay-load" --server http://127.0.0.1:18082 --mode send --users "$users" --duration-secs "$secs" --payload "$payload" --prefix sqlsend
