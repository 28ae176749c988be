#!/usr/bin/env bash
# Benchmarks (not tests): bounded wrk loads on loopback against native Envoy
# baselines in the same run; results go to BENCHMARKS.md.
#   scripts/bench.sh [edge|instructions|api|xds|traffic|convergence|daemonset|fuzz|soak|xds-heap ...]  (soak and xds-heap only when named: `make soak`; xds-heap writes nothing, for a heap profile: docs/xds.md, "Memory")   BENCH_SECONDS=3 BENCH_ROUNDS=3 by default
# (convergence runs the real-Istio tier: the tools of scripts/tools.sh, and
# BENCH_CONVERGENCE_RUNS=5, BENCH_CONVERGENCE_DELAY_SECONDS=120; `fuzz` runs
# no fuzzing: it copies docs/fuzzing-results.md, which `make fuzz` writes,
# into BENCHMARKS.md's fuzz section.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/bootstrap.sh --bench
scripts/build.sh filter
# The traffic section starts real agents (the test bed's target/debug/multicloud-agent);
# the daemonset section measures the release build's memory.
cargo build --quiet -p multicloud-agent
cargo build --quiet --release -p multicloud-agent
export MULTICLOUD_AGENT_RELEASE=$PWD/target/release/multicloud-agent
# The convergence section runs real API servers and istiods.
tool_env=$(scripts/tools.sh env) || die "scripts/tools.sh could not provide the real tier's tools"
eval "$tool_env"
cargo run --quiet --release -p multicloud-e2e --bin bench -- "$@"
log "results written to BENCHMARKS.md"
