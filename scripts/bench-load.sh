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

# CPU seconds (user + system) a process has used so far.
hz="$(getconf CLK_TCK)"
cpu_of() { awk -v hz="$hz" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }

# One generator run against the relay with pid $1; then how much of the machine the generator
# and the relay each took during it (the two share the cores: a busy generator understates the
# relay's figures — issue 17).
run() {
  local relay="$1"; shift
  local before t0 t1
  before="$(cpu_of "$relay")"; t0="$(date +%s.%N)"
  TIMEFORMAT='%U %S'
  exec 3>&2
  { time "$bin/relay-load" "$@" 2>&3; } 2> "$tmp/time"
  exec 3>&-
  t1="$(date +%s.%N)"
  read -r user sys < "$tmp/time"
  awk -v u="$user" -v s="$sys" -v b="$before" -v a="$(cpu_of "$relay")" -v t0="$t0" -v t1="$t1" -v n="$(nproc)" 'BEGIN {
    w = t1 - t0; g = u + s; r = a - b
    printf "  CPU over %.1f s: load generator %.2f s (%.0f%% of one core), relay %.2f s (%.0f%%); machine: %d cores\n",
      w, g, 100 * g / w, r, 100 * r / w, n }'
}

echo "machine: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load average $(cut -d' ' -f1-3 /proc/loadavg)"
start memory 18081
start sqlite 18082
mem="${pids[0]}"; sql="${pids[1]}"
run "$mem" --server http://127.0.0.1:18081 --mode echo --users "$users" --duration-secs "$secs" --payload "$payload"
run "$mem" --server http://127.0.0.1:18081 --mode relay --users "$users" --duration-secs "$secs" --payload "$payload" --prefix mem
run "$sql" --server http://127.0.0.1:18082 --mode relay --users "$users" --duration-secs "$secs" --payload "$payload" --prefix sql
run "$mem" --server http://127.0.0.1:18081 --mode send --users "$users" --duration-secs "$secs" --payload "$payload" --prefix memsend
run "$sql" --server http://127.0.0.1:18082 --mode send --users "$users" --duration-secs "$secs" --payload "$payload" --prefix sqlsend
