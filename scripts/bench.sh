#!/usr/bin/env bash
# Benchmarks (not tests): bounded wrk loads on loopback against native Envoy
# baselines in the same run; results go to BENCHMARKS.md.
#   scripts/bench.sh [edge|api|xds|traffic|fuzz ...]   BENCH_SECONDS=3 BENCH_ROUNDS=3 by default
# (`fuzz` runs no fuzzing: it copies docs/fuzzing-results.md, which `make fuzz`
# writes, into BENCHMARKS.md's fuzz section.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/bootstrap.sh --bench
scripts/build.sh filter
# The traffic section starts real agents (the test bed's target/debug/multicloud-agent).
cargo build --quiet -p multicloud-agent
cargo run --quiet --release -p multicloud-e2e --bin bench -- "$@"
log "results written to BENCHMARKS.md"
