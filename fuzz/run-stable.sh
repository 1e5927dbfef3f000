#!/usr/bin/env bash
# Coverage-guided fuzzing of `parse_check` on a *stable* toolchain.
#
# `cargo fuzz run` needs nightly only for its sanitizer flags; the coverage
# instrumentation libFuzzer needs is available on stable through
# `-Cpasses=sancov-module` and `-Cllvm-args`. This builds the target with
# the same instrumentation cargo-fuzz uses (without AddressSanitizer, which
# safe Rust does not need), with overflow checks and debug assertions on,
# and runs it on a corpus seeded with the shipped examples and with
# `seeds/` (long pipelines and chains near the input size limit).
#
# usage: fuzz/run-stable.sh [SECONDS] [extra libFuzzer flags...]
# Crashes are written to fuzz/artifacts/parse_check/; replay one with
#   fuzz/target/x86_64-unknown-linux-gnu/release/parse_check fuzz/artifacts/parse_check/crash-...
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
target="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
[[ -f Cargo.lock ]] || cp ../Cargo.lock Cargo.lock
# --target keeps the instrumentation out of build scripts; the wrapper keeps
# it out of dependencies the fuzzer learns nothing from.
export RUSTC_WRAPPER="$PWD/rustc-instrument.sh"
cargo build --release --target "$target" --bin parse_check
mkdir -p corpus/parse_check artifacts/parse_check
cp -n ../examples/*.net seeds/*.net corpus/parse_check/ 2>/dev/null || true
exec "target/$target/release/parse_check" \
  -max_total_time="$secs" -rss_limit_mb=4096 -max_len=8192 \
  -artifact_prefix=artifacts/parse_check/ "$@" corpus/parse_check
