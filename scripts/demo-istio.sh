#!/usr/bin/env bash
# The two-cluster demo under real Istio (docs/istio.md): installs what it
# needs (Envoy, the wasm toolchain, the real tier's tools, cached), builds, runs.
# Arguments go to the demo (scripts/lab.sh passes --lab).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/bootstrap.sh
scripts/build.sh filter
tool_env=$(scripts/tools.sh env) || die "scripts/tools.sh could not provide the real tier's tools"
eval "$tool_env"
cargo build --quiet -p multicloud-agent -p multicloud-e2e --bin demo_istio --bin multicloud-agent
exec target/debug/demo_istio "$@"
