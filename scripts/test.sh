#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit, integration, property and
# known-answer tests (the Redis ones start private redis-server processes and clusters on
# loopback ports), the example, the browser tests in Debian's Chromium, a property-based run of
# the HTTP API against /openapi.json (schemathesis, in a venv under target/), and a short fuzz run.
# Installs what a fresh Debian machine lacks when run as root; otherwise names the command to run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
start=$SECONDS

need=()
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v cc >/dev/null 2>&1 || need+=(gcc)  # the linker, bundled SQLite, jemalloc
command -v c++ >/dev/null 2>&1 || need+=(g++)  # libFuzzer (scripts/fuzz-smoke.sh) is C++
command -v make >/dev/null 2>&1 || need+=(make)  # jemalloc (relay-server's allocator) builds with make
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # certificates for the TLS browser test
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)  # schemathesis, scripts/api-fuzz.sh
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
  else
    echo "missing Debian packages: ${need[*]}; run: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi

# rustfmt and clippy come with rustup's default profile; a minimal one lacks them.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

# Each step says how long it took (CI's budget is tight: keep the whole run well under 30 min).
step_start=$SECONDS
step() {
  [ "$step_start" -lt "$SECONDS" ] && echo "   (took $((SECONDS - step_start)) s)"
  step_start=$SECONDS
  echo "== $*"
}
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
step "cargo doc (broken or private intra-doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
step "cargo package (the library crates' manifests and file lists)"
cargo package --no-verify --allow-dirty --workspace --exclude relay-test-support --exclude relay-server \
  --exclude relay-chat --exclude relay-load
step "cargo test"
cargo test --workspace
step "crates/relay-client/examples/two_peers"
# `cargo test --workspace` built the binaries and the example with the workspace's features; this
# build is a check that they are current (nothing to do), where `cargo run -p`/`build -p` would
# resolve features per package and compile much of the dependency graph again (11 min in CI).
cargo build -q --workspace --bins --examples --tests
bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug"
"$bin/examples/two_peers"
step "browser tests (Debian Chromium, playwright-core)"
(cd tests/browser && export RELAY_BIN_DIR="$bin" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error && npm test)
step "API property test (schemathesis against /openapi.json)"
scripts/api-fuzz.sh 25
step "fuzz smoke run"
scripts/fuzz-smoke.sh
step "done: every test passed in $((SECONDS - start)) s (installing included)"
