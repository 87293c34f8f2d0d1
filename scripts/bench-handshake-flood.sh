#!/usr/bin/env bash
# A handshake flood from one source while newcomers (each from a new source) connect once every
# half second: the newcomer's connect times, what the flood got, and the relay's CPU per
# flood request. Usage: scripts/bench-handshake-flood.sh [flood-connections] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
conns="${1:-64}"; secs="${2:-10}"
cargo build --release -q -p relay-server -p relay-load
bin=target/release
tmp="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
echo "machine: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# Default limits: this is what an attacker meets.
RUST_LOG=warn "$bin/relay-server" --bind 127.0.0.1:18190 --data-dir "$tmp/data" >"$tmp/out" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:18190/healthz >/dev/null 2>&1 && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
before=$(ticks)
"$bin/relay-load" --server http://127.0.0.1:18190 --mode flood --users "$conns" --duration-secs "$secs" \
  --flood-source 127.0.0.1 --newcomer-source 127.0.0.2 | tee "$tmp/flood"
after=$(ticks)
answered=$(awk '/^flood:/ {print ($9 + $13) * '"$secs"'}' "$tmp/flood")
awk -v t=$((after - before)) -v hz="$hz" -v n="$answered" -v s="$secs" 'BEGIN {
  printf "relay CPU: %.2f s over %d s (%.0f%% of one core); %.1f us per flood request answered\n",
         t / hz, s, 100 * t / hz / s, (n > 0 ? 1e6 * t / hz / n : 0) }'
