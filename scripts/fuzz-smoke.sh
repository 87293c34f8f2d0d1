#!/usr/bin/env bash
# Builds the libFuzzer target for packet decoding and runs it briefly. The build uses the
# instrumentation cargo-fuzz would ask for (SanitizerCoverage with inline 8-bit counters, a PC
# table and traced comparisons, AddressSanitizer, debug assertions, overflow checks, cfg fuzzing),
# driven by cargo directly so CI does not build cargo-fuzz itself first (`cargo fuzz run
# open_packet` works the same for anyone who has it). Those are nightly flags; RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept them for this build only.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-20}"
host=$(rustc -vV | sed -n 's/^host: //p')
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Zsanitizer=address"
flags+=" -Cdebug-assertions -Coverflow-checks"
# --target keeps build scripts and proc macros uninstrumented (they run on this machine).
RUSTC_BOOTSTRAP=1 RUSTFLAGS="$flags" cargo build -q --release --target "$host" --bin open_packet
mkdir -p corpus/open_packet artifacts/open_packet
"target/$host/release/open_packet" -max_total_time="$seconds" -max_len=4096 \
  -artifact_prefix=artifacts/open_packet/ corpus/open_packet
