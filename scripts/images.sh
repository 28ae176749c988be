#!/usr/bin/env bash
# Builds the two shippable images as OCI layouts, offline, with no Docker
# engine, and prints their digests:
#   target/images/agent.tar   (+ agent/ and agent.digest)   the agent's container image
#   target/images/filter.tar  (+ filter/ and filter.digest) the filter's Wasm image
# X.tar is an OCI layout tarball (`skopeo copy oci-archive:X.tar ...`), X/ the
# same layout as a directory (`crane push target/images/X REGISTRY/REPO`).
#
#   scripts/images.sh                       build the agent (static, musl) and
#                                           the filter, then write both images
#   scripts/images.sh --no-build [--out D]  only write the images from the
#                                           binaries already built (tests)
#
# Reproducible: every timestamp is SOURCE_DATE_EPOCH (default: the commit
# time of HEAD), tar entries sorted and owned by 0:0, gzip without name or
# time (images/src/lib.rs). The same commit and toolchain give the same
# digests. Inputs besides the tree: the Rust toolchain, Debian's musl-tools
# (ring's C code) and ca-certificates (the CA bundle, version recorded in
# the image's history).
# Overrides: MULTICLOUD_IMAGE_SOURCE (org.opencontainers.image.source),
# MULTICLOUD_CA_BUNDLE, SOURCE_DATE_EPOCH.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

build=1
tdir=${CARGO_TARGET_DIR:-target}
out=$tdir/images
while (($#)); do
  case "$1" in
    --no-build) build=0 ;;
    --out) out=$2; shift ;;
    *) die "usage: scripts/images.sh [--no-build] [--out DIR]" ;;
  esac
  shift
done

MUSL_TARGET=x86_64-unknown-linux-musl
agent=$tdir/$MUSL_TARGET/release/multicloud-agent
wasm=$tdir/filter/multicloud_filter.wasm
ca=${MULTICLOUD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

if ((build)); then
  # The agent is linked statically against musl so that it runs on any node
  # (no libc in the image). ring compiles C: musl-gcc from musl-tools.
  if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
    log "adding the Rust target $MUSL_TARGET"
    rustup target add "$MUSL_TARGET" >/dev/null || die "rustup target add $MUSL_TARGET failed"
  fi
  for p in musl-tools ca-certificates; do
    dpkg -s "$p" >/dev/null 2>&1 && continue
    [[ $(id -u) -eq 0 ]] || die "missing Debian package $p (apt-get install $p)"
    log "installing Debian package $p"
    apt-get install -y --no-install-recommends "$p" >/tmp/multicloud-apt.log 2>&1 \
      || { apt-get update >/dev/null 2>&1; apt-get install -y --no-install-recommends "$p" >/tmp/multicloud-apt.log 2>&1; } \
      || { tail -20 /tmp/multicloud-apt.log; die "apt-get install $p failed"; }
  done
  scripts/build.sh filter
  log "agent: release build for $MUSL_TARGET"
  start=$SECONDS
  cargo build --quiet --release --target "$MUSL_TARGET" -p multicloud-agent
  log "agent: built in $((SECONDS - start)) s"
  cargo build --quiet -p multicloud-images
fi
[[ -x "$tdir/debug/multicloud-images" ]] || die "$tdir/debug/multicloud-images not found (cargo build -p multicloud-images)"
[[ -x "$agent" ]] || die "$agent not found (run scripts/images.sh without --no-build)"
[[ -f "$wasm" ]] || die "$wasm not found (run scripts/build.sh filter)"
[[ -f "$ca" ]] || die "$ca not found (apt-get install ca-certificates)"

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct HEAD)}
revision=$(git rev-parse HEAD)
# A tree with uncommitted changes to tracked files is not the commit: say so
# in the label.
[[ -z "$(git status --porcelain --untracked-files=no)" ]] || revision+=-dirty
version=$("$agent" --version | awk '{print $2}')
licenses=$(sed -n 's/^license = "\(.*\)"/\1/p' Cargo.toml | head -1)
src_url=${MULTICLOUD_IMAGE_SOURCE:-https://github.com/istio-multicloud/istio-multicloud}
ca_origin=$ca
if [[ -z "${MULTICLOUD_CA_BUNDLE:-}" ]]; then
  ca_origin="Debian ca-certificates $(dpkg-query -W -f='${Version}' ca-certificates 2>/dev/null || echo '?')"
fi

images=$tdir/debug/multicloud-images
common=(--version "$version" --revision "$revision" --source "$src_url" --licenses "$licenses" --out "$out")
mkdir -p "$out"
"$images" agent --binary "$agent" --wasm "$wasm" --ca-bundle "$ca" --ca-origin "$ca_origin" "${common[@]}" >/dev/null
"$images" filter --wasm "$wasm" "${common[@]}" >/dev/null
log "images in $out (version $version, revision $revision, SOURCE_DATE_EPOCH $SOURCE_DATE_EPOCH)"
printf 'agent  %s  %s\n' "$(cat "$out/agent.digest")" "$out/agent.tar"
printf 'filter %s  %s\n' "$(cat "$out/filter.digest")" "$out/filter.tar"
