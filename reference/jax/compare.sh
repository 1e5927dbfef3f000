#!/usr/bin/env bash
# netc beside JAX, interleaved: the course CNN and course LSTM training
# steps (SGD) on one thread (both pinned to core 0) and on two, ROUNDS
# times, then one line per (case, threads, round) with both medians and
# their ratio. The figures quoted in the top-level README come from this.
#
#   reference/jax/compare.sh [ROUNDS]        # from the repository root
#
# On a shared machine, run it as `chrt -f 50 reference/jax/compare.sh`
# (real-time priority, needs root): both sides inherit it, and other
# processes no longer preempt them (the README's figures were taken so).
#
# PY names the Python that has jax (default: $HOME/.cache/jaxref/bin/python,
# the venv README.md in this folder sets up). netc's bench is built in
# release mode first.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-2}
PY=${PY:-$HOME/.cache/jaxref/bin/python}
[ -x "$PY" ] || { echo "no Python with jax at $PY (set PY; see reference/jax/README.md)" >&2; exit 2; }
cargo bench --bench train_step --no-run -q 2>/dev/null
BENCH=$(ls -t target/release/deps/train_step-* | grep -v '\.d$' | head -1)
FILTER='course_(cnn|lstm)_train_step/batch[0-9]+_sgd'

# criterion: "course_cnn_train_step/batch64_sgd" then "time: [lo median hi]";
# prints "cnn <median ms>" and "lstm <median ms>".
netc() {
  local threads=$1 pin=()
  [ "$threads" = 1 ] && pin=(taskset -c 0)
  "${pin[@]}" env NETC_BENCH_THREADS="$threads" "$BENCH" --bench "$FILTER" 2>&1 |
    awk '/^course_cnn/ {c="cnn"} /^course_lstm/ {c="lstm"}
         /time:/ { v=$4; u=$5; if (u=="µs") v/=1000; if (u=="s") v*=1000; print c, v }'
}

# bench_jax.py: one "RESULT {json}" line per case with "median_ms".
jax() {
  local threads=$1 pin=()
  [ "$threads" = 1 ] && pin=(taskset -c 0)
  "${pin[@]}" env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$PY" reference/jax/bench_jax.py "$threads" 2>&1 |
    awk '/"case": "a_cnn_train_step_b64_pool_reshape_max"/ {c="cnn"} /"case": "b_lstm/ {c="lstm"}
         /"case": "(a_cnn_train_step_b64_pool_reshape_max|b_lstm)/ { match($0, /"median_ms": [0-9.]+/); print c, substr($0, RSTART + 13, RLENGTH - 13) }'
}

printf '%-5s %-8s %-6s %10s %10s %8s\n' case threads round netc_ms jax_ms ratio
for round in $(seq 1 "$ROUNDS"); do
  for threads in 1 2; do
    n=$(netc "$threads")
    j=$(jax "$threads")
    for c in cnn lstm; do
      a=$(awk -v c=$c '$1 == c {print $2}' <<<"$n")
      b=$(awk -v c=$c '$1 == c {print $2}' <<<"$j")
      awk -v c=$c -v t=$threads -v r=$round -v a="$a" -v b="$b" \
        'BEGIN { printf "%-5s %-8s %-6s %10.3f %10.3f %8.2f\n", c, t, r, a, b, a / b }'
    done
  done
done
