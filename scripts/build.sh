#!/usr/bin/env bash
# Builds the gateway filter (wasm32-wasip1) and the native agent.
#   scripts/build.sh            filter + agent (release)
#   scripts/build.sh filter     filter only
# The wasm route is chosen by itself (see scripts/lib.sh: wasm_route):
# rustup's target where it exists, else Debian's rustc-web with -Z build-std.
# Set MULTICLOUD_WASM_ROUTE=rustup|debian to force one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

what=${1:-all}
route=${MULTICLOUD_WASM_ROUTE:-$(wasm_route)}
if [[ "$route" == none ]]; then
  scripts/bootstrap.sh
  route=$(wasm_route)
fi

out=target/filter/multicloud_filter.wasm
mkdir -p target/filter
case "$route" in
  rustup)
    cargo build --quiet --profile wasm --target wasm32-wasip1 -p multicloud-filter
    ;;
  debian)
    # Debian's rustc builds std for the target from rust-web-src; lld links.
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
      /usr/bin/cargo build --quiet --profile wasm --target wasm32-wasip1 \
      -Z build-std=std,panic_abort -p multicloud-filter
    ;;
  *) die "unknown wasm route '$route' (want rustup or debian)" ;;
esac
cp target/wasm32-wasip1/wasm/multicloud_filter.wasm "$out"
log "filter: $out ($(stat -c %s "$out") bytes, route: $route)"

if [[ "$what" == all ]]; then
  cargo build --quiet --release -p multicloud-agent
  log "agent:  target/release/multicloud-agent"
fi
