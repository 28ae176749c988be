#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs, builds the
# filter for wasm32 and the images (scripts/images.sh), runs lints on the
# filter crates, unit tests and the end-to-end tests against real Envoy 1.40,
# then checks that no process was left behind. The fuzz targets' smoke pass
# (every committed corpus input through its target once, no fuzzing:
# fuzz/tests/corpus.rs) is part of `cargo test --workspace`; fuzzing itself is
# `make fuzz`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# A one-off build of the whole suite gains nothing from incremental
# compilation, whose caches would add gigabytes to target/ (set
# CARGO_INCREMENTAL=1 to keep them between local runs).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

scripts/bootstrap.sh
scripts/build.sh filter

# The real tier's tools (etcd, kube-apiserver, kubectl, istiod, pilot-agent,
# crane, and for the node tier kubelet, kube-controller-manager,
# kube-scheduler, kube-proxy and CoreDNS), built from the Go module proxy
# once per version and cached outside the checkout (the first build on a
# fresh machine takes a while: README, docs/testing.md "The tools"). The node
# tier (tests/tests/node_tier.rs) installs Debian's containerd, runc and CNI
# plugins itself when they are missing, and needs root.
log "real-tier tools (scripts/tools.sh; cached in ${MULTICLOUD_TOOLS_DIR:-$HOME/.cache/istio-multicloud/tools})"
tool_env=$(scripts/tools.sh env) || die "scripts/tools.sh could not provide the real tier's tools"
eval "$tool_env"

log "no import circle in the agent (scripts/import_circles.py)"
python3 scripts/import_circles.py agent/src

log "clippy, whole workspace (the filter crates also deny unwrap/expect/panic)"
cargo clippy --quiet --workspace --all-targets -- -D warnings

log "build the agent binary the end-to-end tests run"
cargo build --quiet -p multicloud-agent

# The shippable images, built once here: tests/tests/images.rs reads them
# (the agent's musl release build takes minutes cold, about one when only
# the agent changed; no test builds it again).
log "images (scripts/images.sh)"
scripts/images.sh

log "tests"
# One build shared by all test binaries; e2e tests start their Envoys in parallel.
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}

# The node tier's processes name their directory (/tmp/multicloud-node-N-...);
# its containers' processes are the containerd shims' children.
leftover=$(pgrep -af '/multicloud-(gateway|sidecar|agent|kube|istiod|istio-gw|node)-[0-9]|containerd-shim' | grep -v pgrep || true)
if [[ -n "$leftover" ]]; then
  printf 'error: processes left behind by the tests:\n%s\n' "$leftover" >&2
  exit 1
fi
exit "$status"
