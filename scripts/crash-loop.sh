#!/usr/bin/env bash
# The crash loop, longer than CI's: senders and receivers through the Rust client while the
# relay (on SQLite) — or the Redis under it, with appendfsync always and everysec — is SIGKILLed
# at random moments and restarted on the same data; every message must
# arrive exactly once or be reported refused. Usage: scripts/crash-loop.sh [kills] [pairs] [messages]
set -euo pipefail
cd "$(dirname "$0")/.."
CRASH_LOOP_KILLS="${1:-30}" CRASH_LOOP_PAIRS="${2:-8}" CRASH_LOOP_MESSAGES="${3:-200}" \
  cargo test --release -p relay-server --test crash_loop -- --nocapture 2>&1 | grep -E "crash loop:|test result|panicked|lost|duplicated"
