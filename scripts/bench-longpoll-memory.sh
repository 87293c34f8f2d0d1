#!/usr/bin/env bash
# Measures the relay's memory per waiting long-poll: server RSS before any client, then while
# N clients (default 10000) each hold one long-poll open. Method: VmRSS from /proc/PID/status.
# Usage: scripts/bench-longpoll-memory.sh [N] [ENGINE]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"; engine="${2:-sqlite}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p relay-server -p relay-load
echo "machine: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average $(cut -d' ' -f1-3 /proc/loadavg); open files $(ulimit -n)"
tmp="$(mktemp -d)"
RUST_LOG=warn target/release/relay-server --engine "$engine" --bind 127.0.0.1:18095 --data-dir "$tmp" --poll-max-secs 30 \
  --max-pending-handshakes 100000 --max-conns-per-source 1000000 --account-burst 1000000 --account-rate 1000000 --register-burst 1000000 --handshake-burst 1000000 --pending-per-source 1000000 --sender-cap 1000000000 --sender-bytes 1000000000000 --mailbox-bytes 1000000000000 > "$tmp/server.out" 2>&1 &
srv=$!
trap 'kill $srv 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do curl -fs http://127.0.0.1:18095/healthz >/dev/null 2>&1 && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$srv/status"; }
base=$(rss)
echo "server RSS before clients: ${base} KiB"
target/release/relay-load --server http://127.0.0.1:18095 --mode idle --users "$n" --duration-secs 90 > "$tmp/load.out" 2>&1 &
load=$!
for _ in $(seq 600); do
  if grep -q "ALL WAITING" "$tmp/load.out" 2>/dev/null; then break; fi
  sleep 0.5
done
grep -q "ALL WAITING" "$tmp/load.out" || { echo "not all clients reached their long-poll"; tail -3 "$tmp/load.out"; exit 1; }
sleep 2
all=$(rss)
echo "server RSS with $n long-polls waiting: ${all} KiB"
echo "per waiting client: $(( (all - base) * 1024 / n )) bytes (engine $engine)"
kill $load 2>/dev/null || true
wait $load 2>/dev/null || true
# The clients are gone (their sockets closed with the process): what does the relay keep?
for _ in $(seq 60); do
  conns=$(ls "/proc/$srv/fd" 2>/dev/null | wc -l)
  [ "$conns" -lt 100 ] && break
  sleep 0.5
done
for wait in 5 15; do
  sleep "$wait"
  after=$(rss)
  echo "server RSS $wait s later, the clients gone: ${after} KiB (kept: $(( after - base )) KiB over the start)"
done
