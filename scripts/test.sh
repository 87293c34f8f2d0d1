#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit, integration, property and
# known-answer tests (the Redis ones start private redis-server processes and clusters on
# loopback ports), the example, the browser tests in Debian's Chromium, a property-based run of
# the HTTP API against /openapi.json (schemathesis, in a venv under target/), and a short fuzz run.
# Installs what a fresh Debian machine lacks when run as root; otherwise names the command to run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

need=()
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v cc >/dev/null 2>&1 || need+=(gcc)  # the linker, bundled SQLite, jemalloc
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

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc (broken or private intra-doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
echo "== cargo package (the library crates' manifests and file lists)"
cargo package --no-verify --allow-dirty --workspace --exclude relay-test-support --exclude relay-server \
  --exclude relay-chat --exclude relay-load
echo "== cargo test"
cargo test --workspace
echo "== crates/relay-client/examples/two_peers"
cargo run -q -p relay-client --example two_peers
echo "== browser tests (Debian Chromium, playwright-core)"
cargo build -q -p relay-server -p relay-chat
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error && npm test)
echo "== API property test (schemathesis against /openapi.json)"
scripts/api-fuzz.sh 25
echo "== fuzz smoke run"
scripts/fuzz-smoke.sh
