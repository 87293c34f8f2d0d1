#!/usr/bin/env bash
# Builds the libFuzzer target for packet decoding and runs it briefly. cargo-fuzz needs nightly
# compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them for this build only.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz --version 0.13.1
fi
cd fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run open_packet -- -max_total_time="$seconds" -max_len=4096
