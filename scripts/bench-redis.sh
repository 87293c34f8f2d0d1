#!/usr/bin/env bash
# The relay on Redis: redis-benchmark for reference, then the load generator against one node
# and against two nodes (two generators, each sending to the other's users through the other
# node), with Redis round trips per delivered message counted by the engine (/stats on the operator-only metrics listener).
# Redis runs with appendfsync always, the setting the no-loss promise needs. Then the same on a
# Redis Cluster of three primaries on this machine (relay nodes with --redis-cluster).
# Usage: scripts/bench-redis.sh [USERS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
users="${1:-64}"; secs="${2:-10}"
cargo build --release -q -p relay-server -p relay-load
bin=target/release
tmp="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$tmp"; }
trap cleanup EXIT
redis-server --port 18379 --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always --dir "$tmp" >/dev/null &
pids+=($!)
for _ in $(seq 100); do redis-cli -p 18379 ping >/dev/null 2>&1 && break; sleep 0.1; done
echo "redis-benchmark (50 clients, appendfsync always):"
redis-benchmark -p 18379 -q -n 100000 -c 50 -t set,get,incr,zadd | tr "\r" "\n" | grep "requests per second"
redis_args=(--redis-url redis://127.0.0.1:18379/0)
node() { # port
  RUST_LOG=warn "$bin/relay-server" --engine redis "${redis_args[@]}" --bind "127.0.0.1:$1" \
    --key-file "$tmp/server_key" --data-dir "$tmp/n$1" --mailbox-cap 1000000 \
    --metrics-bind "127.0.0.1:$(($1 + 1000))" --max-conns-per-source 1000000 --account-burst 1000000 --account-rate 1000000 --register-burst 1000000 --handshake-burst 1000000 --pending-per-source 1000000 --sender-cap 1000000000 --sender-bytes 1000000000000 --mailbox-bytes 1000000000000 >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "node $1 did not start" >&2; exit 1
}
trips() { curl -fs "http://127.0.0.1:$(($1 + 1000))/stats" | sed -E 's/.*"redis_round_trips":([0-9]+).*/\1/'; }
runs() { # port1 port2 label
echo "$3, one node:"
t0=$(trips "$1")
out=$("$bin/relay-load" --server "http://127.0.0.1:$1" --mode relay --users "$users" --duration-secs "$secs" --prefix "${3}one")
echo "$out" | tail -1
t1=$(trips "$1")
deliv=$(echo "$out" | tail -1 | sed -E 's/.*deliveries=([0-9]+).*/\1/')
setup=$((users * 8))  # handshake, key publication and directory reads before the timed run
echo "redis round trips: $((t1 - t0)) total, $(( (t1 - t0 - setup) * 100 / deliv ))/100 per delivered message (setup excluded: ~$setup)"
echo "$3, two nodes (generator a on node 1 sends to generator b's users on node 2 and back):"
a0=$(trips "$1"); b0=$(trips "$2")
"$bin/relay-load" --server "http://127.0.0.1:$1" --mode relay --users "$users" --duration-secs "$secs" --prefix "${3}a" --peer-prefix "${3}b" > "$tmp/a.out" &
la=$!
"$bin/relay-load" --server "http://127.0.0.1:$2" --mode relay --users "$users" --duration-secs "$secs" --prefix "${3}b" --peer-prefix "${3}a" > "$tmp/b.out"
wait $la
tail -1 "$tmp/a.out"; tail -1 "$tmp/b.out"
a1=$(trips "$1"); b1=$(trips "$2")
da=$(tail -1 "$tmp/a.out" | sed -E 's/.*deliveries=([0-9]+).*/\1/'); db=$(tail -1 "$tmp/b.out" | sed -E 's/.*deliveries=([0-9]+).*/\1/')
echo "redis round trips: $(( (a1 - a0) + (b1 - b0) )) total for $((da + db)) deliveries"
}
node 18281
node 18282
runs 18281 18282 redis

# Redis Cluster: three primaries, slots in thirds, the same persistence.
ports=(18401 18402 18403)
for p in "${ports[@]}"; do
  mkdir -p "$tmp/c$p"
  redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always \
    --cluster-enabled yes --cluster-node-timeout 2000 --dir "$tmp/c$p" >/dev/null &
  pids+=($!)
done
for p in "${ports[@]}"; do for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done; done
redis-cli -p 18401 cluster addslotsrange 0 5460 >/dev/null
redis-cli -p 18402 cluster addslotsrange 5461 10922 >/dev/null
redis-cli -p 18403 cluster addslotsrange 10923 16383 >/dev/null
redis-cli -p 18401 cluster meet 127.0.0.1 18402 >/dev/null
redis-cli -p 18401 cluster meet 127.0.0.1 18403 >/dev/null
for _ in $(seq 200); do
  ok=0; for p in "${ports[@]}"; do redis-cli -p "$p" cluster info | grep -q "cluster_state:ok" && ok=$((ok + 1)); done
  [ "$ok" = 3 ] && break; sleep 0.1
done
echo "redis-benchmark --cluster (50 clients, appendfsync always):"
redis-benchmark -p 18401 --cluster -q -n 100000 -c 50 -t set,get,incr,zadd 2>/dev/null | tr "\r" "\n" | grep "requests per second" || true
redis_args=(--redis-cluster --redis-url redis://127.0.0.1:18401,redis://127.0.0.1:18402)
node 18283
node 18284
runs 18283 18284 cluster
