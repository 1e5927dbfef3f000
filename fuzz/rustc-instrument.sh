#!/usr/bin/env bash
# RUSTC_WRAPPER for run-stable.sh: coverage instrumentation only where the
# fuzzer learns something from it. Our crates and pest (whose string
# matching guides the fuzzer towards keywords) keep every flag; other
# dependencies (egg, imbl, hashbrown, petgraph, ...) are built without the
# sancov pass. Instrumented, their comparisons were three quarters of the
# fuzzer's time (every B-tree key comparison in extraction called
# __sanitizer_cov_trace_cmp8) while telling it nothing about netc.
set -euo pipefail
rustc="$1"
shift
crate=""
prev=""
for a in "$@"; do
  [[ "$prev" == "--crate-name" ]] && crate="$a"
  prev="$a"
done
case "$crate" in
  netc_lang | netc_compiler | parse_check | pest | "") exec "$rustc" "$@" ;;
esac
args=()
for a in "$@"; do
  case "$a" in
    -Cpasses=sancov-module | -Cllvm-args=-sanitizer-coverage-*) ;;
    *) args+=("$a") ;;
  esac
done
exec "$rustc" "${args[@]}"
