#!/usr/bin/env bash
# The local two-cluster demo: installs what it needs, builds, runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
scripts/bootstrap.sh
scripts/build.sh filter
cargo build --quiet -p multicloud-agent -p multicloud-e2e --bin demo --bin multicloud-agent
exec target/debug/demo
