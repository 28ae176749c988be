#!/usr/bin/env bash
# Benchmarks (not tests): bounded wrk loads on loopback against native Envoy
# baselines in the same run; results go to BENCHMARKS.md.
#   scripts/bench.sh [edge ...]      BENCH_SECONDS=3 BENCH_ROUNDS=3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/bootstrap.sh --bench
scripts/build.sh filter
cargo run --quiet --release -p multicloud-e2e --bin bench -- "$@"
log "results written to BENCHMARKS.md"
