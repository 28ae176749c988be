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

tdir=${CARGO_TARGET_DIR:-target}
out=$tdir/filter/multicloud_filter.wasm
mkdir -p "$tdir/filter"
case "$route" in
  rustup)
    cargo build --quiet --profile wasm --target wasm32-wasip1 -p multicloud-filter
    ;;
  debian)
    # Debian's rustc builds std for the target from rust-web-src; lld links.
    # rust-lld comes from rust-web-llvm, only a Recommends of rustc-web (so
    # absent after --no-install-recommends); lld-22's multiplexer does the same
    # job (rustc passes it -flavor wasm).
    if ! command -v rust-lld >/dev/null 2>&1; then
      lld=$(ls /usr/lib/llvm-*/bin/lld 2>/dev/null | sort -V | tail -1 || true)
      [[ -n "$lld" ]] || die "neither rust-lld nor /usr/lib/llvm-*/bin/lld found (apt-get install lld-22)"
      export CARGO_TARGET_WASM32_WASIP1_LINKER=$lld
    fi
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 RUSTFLAGS="-L /usr/lib/wasm32-wasi" \
      /usr/bin/cargo build --quiet --profile wasm --target wasm32-wasip1 \
      -Z build-std=std,panic_abort -p multicloud-filter
    ;;
  *) die "unknown wasm route '$route' (want rustup or debian)" ;;
esac
if command -v wasm-opt >/dev/null 2>&1; then
  # Binaryen's size pass: about a fifth smaller (--converge: repeated until
  # it stops shrinking, ~0.7 KB more). The feature flags are those
  # rustc enables by default for wasm32-wasip1, all supported by Envoy's V8.
  wasm-opt -Oz --converge --strip-debug --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
    --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
    "$tdir/wasm32-wasip1/wasm/multicloud_filter.wasm" -o "$out"
else
  log "wasm-opt (Debian package binaryen) not found: shipping the unoptimized module"
  cp "$tdir/wasm32-wasip1/wasm/multicloud_filter.wasm" "$out"
fi
log "filter: $out ($(stat -c %s "$out") bytes, route: $route)"

if [[ "$what" == all ]]; then
  cargo build --quiet --release -p multicloud-agent
  log "agent:  target/release/multicloud-agent"
fi
