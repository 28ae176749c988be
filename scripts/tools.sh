#!/usr/bin/env bash
# Builds the real-tier tools (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl, pilot-discovery, pilot-agent,
# crane, coredns) from the Go module proxy at the
# versions pinned below, and caches them outside the checkout:
#   ${MULTICLOUD_TOOLS_DIR:-$HOME/.cache/istio-multicloud/tools}/<tool>-<version>/<tool>
# Istio is built twice, at the two snapshots the module proxy serves that the
# real-Istio tier runs against (docs/istio.md, "Istio versions"): the pin
# (pilot-discovery, pilot-agent) and the older one (pilot-discovery-older,
# pilot-agent-older; the same commands, cached under their own version).
#
#   scripts/tools.sh [all|kube|istio|crane|<tool>]  build what is missing; one
#                                          line per tool: name version path
#                                          (kube: etcd kube-apiserver
#                                          kube-controller-manager kube-scheduler
#                                          kubelet kube-proxy kubectl;
#                                          istio: pilot-discovery pilot-agent
#                                          pilot-discovery-older pilot-agent-older)
#   scripts/tools.sh env                   build what is missing, then print
#                                          `export MULTICLOUD_<TOOL>=path` lines
#                                          (eval "$(scripts/tools.sh env)")
#   scripts/tools.sh pin [etcd|kube|istio|istio-older|crane|coredns]
#                                          rewrite scripts/gotools/<name>/go.mod
#                                          and go.sum from the versions below
#
# Each tool is built from a wrapper module of ours, scripts/gotools/<name>/
# (go.mod, go.sum, tools.go naming the command packages): etcd's server module
# and k8s.io/kubernetes have relative replace directives, which
# `go install pkg@version` refuses (istio.io/istio has none: its wrapper is
# only there so that go.sum pins every dependency, as the others do). kube: k8s.io/kubernetes plus one replace per staging module
# (k8s.io/api, ...) => v0.<minor>.<patch>, taken from the replace block of
# k8s.io/kubernetes's own go.mod (`pin kube` derives it).
# kubectl is built at the API server's version (KUBECTL=path overrides).
# Builds go to a temporary name and are renamed into place (a killed build
# leaves no half binary); a flock per tool keeps concurrent callers from
# building the same tool twice. Needs go (GO=path; /usr/local/go/bin/go).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/lib.sh"

# ---- pinned versions: the only place they are declared -----------------------
ETCD_VERSION=v3.6.16                               # go.etcd.io/etcd/server/v3
KUBE_VERSION=v1.36.3                               # k8s.io/kubernetes
ISTIO_VERSION=v0.0.0-20260827124520-eed52ebb66ad   # istio.io/istio: master, 2026-08-27 (1.31-dev)
ISTIO_OLDER_VERSION=v0.0.0-20260423205519-b01690e6db7d  # istio.io/istio: master, 2026-04-23 (10 days after the 1.30 branch cut)
CRANE_VERSION=v0.21.9                              # github.com/google/go-containerregistry
COREDNS_VERSION=v1.15.0                            # github.com/coredns/coredns (the node tier's cluster DNS)
PROMETHEUS_OPERATOR_VERSION=v0.85.0                # its CRDs, for deploy/'s monitoring objects
# -------------------------------------------------------------------------------

TOOLS_DIR=${MULTICLOUD_TOOLS_DIR:-$HOME/.cache/istio-multicloud/tools}
GOTOOLS=$ROOT/scripts/gotools
GO=${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}
[[ -x "$GO" ]] || die "go not found (set GO=path/to/go; Go >= 1.26 is needed)"
# Static binaries; never fetch another toolchain behind the caller's back.
export CGO_ENABLED=${CGO_ENABLED:-0} GOTOOLCHAIN=${GOTOOLCHAIN:-local}

# What `env` provides (the tests use these). The node tier
# (tests/src/node.rs) runs kubelet, kube-controller-manager, kube-scheduler,
# kube-proxy and coredns; containerd, runc and the CNI plugins are Debian's
# (tests/src/node.rs installs them when missing).
ALL_TOOLS=(etcd kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler kube-proxy coredns pilot-discovery pilot-agent pilot-discovery-older pilot-agent-older crane)
ENV_TOOLS=("${ALL_TOOLS[@]}")

# tool_info TOOL: sets WRAPPER (scripts/gotools/<name>), MODULE, VERSION, PKG,
# BIN (the binary's name, by default the tool's), VERSION_ARGS (smoke
# command) and VERSION_WANT (what it must print).
tool_info() {
  BIN=$1
  case "$1" in
    etcd)
      WRAPPER=etcd MODULE=go.etcd.io/etcd/server/v3 VERSION=$ETCD_VERSION
      PKG=go.etcd.io/etcd/server/v3
      VERSION_ARGS=(--version) VERSION_WANT="etcd Version: ${ETCD_VERSION#v}" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy|kubelet|kubectl)
      WRAPPER=kube MODULE=k8s.io/kubernetes VERSION=$KUBE_VERSION
      PKG=k8s.io/kubernetes/cmd/$1
      VERSION_ARGS=(--version) VERSION_WANT=$KUBE_VERSION
      if [[ $1 == kubectl ]]; then VERSION_ARGS=(version --client); fi ;;
    pilot-discovery|pilot-agent)
      WRAPPER=istio MODULE=istio.io/istio VERSION=$ISTIO_VERSION
      PKG=istio.io/istio/pilot/cmd/$1
      VERSION_ARGS=(version) VERSION_WANT='' ;;  # see build_flags
    pilot-discovery-older|pilot-agent-older)
      BIN=${1%-older}
      WRAPPER=istio-older MODULE=istio.io/istio VERSION=$ISTIO_OLDER_VERSION
      PKG=istio.io/istio/pilot/cmd/$BIN
      VERSION_ARGS=(version) VERSION_WANT='' ;;
    crane)
      WRAPPER=crane MODULE=github.com/google/go-containerregistry VERSION=$CRANE_VERSION
      PKG=github.com/google/go-containerregistry/cmd/crane
      VERSION_ARGS=(version) VERSION_WANT=$CRANE_VERSION ;;
    coredns)
      WRAPPER=coredns MODULE=github.com/coredns/coredns VERSION=$COREDNS_VERSION
      PKG=github.com/coredns/coredns
      VERSION_ARGS=(-version) VERSION_WANT="CoreDNS-${COREDNS_VERSION#v}" ;;
    *) die "unknown tool '$1' (one of: ${ALL_TOOLS[*]})" ;;
  esac
}

# build_flags TOOL (after tool_info): sets LDFLAGS (version stamps).
build_flags() {
  LDFLAGS=''
  case "$WRAPPER" in
    kube)
      # What hack/lib/version.sh sets; without it the binaries say v0.0.0-master.
      local kube_minor=${KUBE_VERSION#v1.} x
      for x in gitVersion=$KUBE_VERSION gitMajor=1 gitMinor=${kube_minor%%.*} \
               gitTreeState=clean buildDate=$(module_time k8s.io/kubernetes "$KUBE_VERSION"); do
        LDFLAGS+=" -X k8s.io/component-base/version.$x -X k8s.io/client-go/pkg/version.$x"
      done ;;
    istio|istio-older)
      # As upstream's dev builds (common/scripts/report_build_info.sh): version
      # "<VERSION file>-dev", which istiod parses as <major>.<minor>.65535 when
      # it gates features on the proxy's version (the default "unknown", or a
      # v0.0.0-... pseudo-version, would parse as the maximum version).
      local iv=istio.io/istio/pkg/version
      VERSION_WANT="$(istio_version_file "$VERSION")-dev"
      LDFLAGS="-X $iv.buildVersion=$VERSION_WANT -X $iv.buildGitRevision=${VERSION##*-}"
      LDFLAGS+=" -X $iv.buildTag=$VERSION -X $iv.buildStatus=Clean"
      LDFLAGS+=" -X $iv.buildOS=$("$GO" env GOOS) -X $iv.buildArch=$("$GO" env GOARCH)" ;;
    crane)
      LDFLAGS="-X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$CRANE_VERSION" ;;
  esac
}

# The commit time the proxy records for MODULE@VERSION (a reproducible buildDate).
module_time() {
  local info
  info=$("$GO" mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"Info": "\(.*\)",*$/\1/p')
  [[ -f "$info" ]] || die "no .info for $1@$2 in the module cache"
  sed -n 's/.*"Time": *"\([^"]*\)".*/\1/p' "$info"
}

istio_version_file() {
  local dir
  dir=$("$GO" mod download -json "istio.io/istio@$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
  [[ -f "$dir/VERSION" ]] || die "no VERSION file in istio.io/istio@$1"
  tr -d '[:space:]' <"$dir/VERSION"
}

# The wrapper's go.mod must require the pinned version (else: `pin`).
check_wrapper() {
  local gomod=$GOTOOLS/$WRAPPER/go.mod mod_re
  [[ -f "$gomod" ]] || die "$gomod missing (scripts/tools.sh pin $WRAPPER)"
  mod_re=${MODULE//./\\.}
  grep -Eq "^[[:space:]]*(require[[:space:]]+)?$mod_re ${VERSION//./\\.}([[:space:]]|$)" "$gomod" \
    || die "$gomod does not require $MODULE $VERSION (run: scripts/tools.sh pin $WRAPPER)"
  if [[ $WRAPPER == kube ]]; then
    local staging="v0.${KUBE_VERSION#v1.}"
    ! grep -E '=> k8s\.io/' "$gomod" | grep -vq " ${staging//./\\.}\$" \
      || die "$gomod replaces staging modules with a version other than $staging (run: scripts/tools.sh pin kube)"
  fi
}

TMP_OUT= BUILD_PID=
trap '[[ -z "$TMP_OUT" ]] || rm -f "$TMP_OUT"' EXIT
# Stop a running go build with us (a foreground one would delay the signal).
trap '[[ -z "$BUILD_PID" ]] || kill "$BUILD_PID" 2>/dev/null; exit 130' INT TERM HUP

# ensure TOOL: builds TOOL unless cached; sets TOOL_PATH.
ensure() {
  local tool=$1 dir lockfd start secs
  tool_info "$tool"
  dir=$TOOLS_DIR/$BIN-$VERSION
  TOOL_PATH=$dir/$BIN
  [[ -x "$TOOL_PATH" ]] && return 0
  check_wrapper
  build_flags
  mkdir -p "$dir"
  exec {lockfd}>"$dir/.lock"
  flock "$lockfd"
  if [[ -x "$TOOL_PATH" ]]; then  # another caller built it meanwhile
    exec {lockfd}>&-; return 0
  fi
  rm -f "$dir"/."$BIN".tmp.*     # left by a killed build (we hold the lock)
  TMP_OUT=$dir/.$BIN.tmp.$$
  log "building $tool $VERSION ($PKG) ..."
  start=$(date +%s)
  (cd "$GOTOOLS/$WRAPPER" && exec "$GO" build -mod=readonly -trimpath \
     -ldflags "-s -w $LDFLAGS" -o "$TMP_OUT" "$PKG") >"$dir/build.log" 2>&1 &
  BUILD_PID=$!
  if ! wait "$BUILD_PID"; then
    BUILD_PID=
    tail -n 25 "$dir/build.log" >&2
    die "building $tool $VERSION failed (full log: $dir/build.log)"
  fi
  BUILD_PID=
  secs=$(( $(date +%s) - start ))
  local out
  out=$("$TMP_OUT" "${VERSION_ARGS[@]}" 2>&1) || true
  [[ "$out" == *"$VERSION_WANT"* ]] \
    || die "$tool built, but \`$BIN ${VERSION_ARGS[*]}\` does not say $VERSION_WANT: ${out:0:300}"
  mv -f "$TMP_OUT" "$TOOL_PATH"
  TMP_OUT=
  rm -f "$dir/build.log"
  exec {lockfd}>&-
  log "built $tool $VERSION in ${secs}s ($(du -h "$TOOL_PATH" | cut -f1))"
}

# kubectl: KUBECTL if set; else ours, at the API server's version (a
# machine's kubectl may be missing, or several minor versions away from the
# server, where kubectl's skew policy allows one).
ensure_kubectl() {
  local k
  if [[ -z ${KUBECTL:-} ]]; then
    ensure kubectl; return 0
  fi
  k=$(command -v "$KUBECTL") || die "KUBECTL=$KUBECTL is not executable"
  "$k" version --client 2>/dev/null | grep -q '^Kustomize Version' || die "KUBECTL=$KUBECTL has no kustomize"
  TOOL_PATH=$k VERSION=$("$k" version --client 2>/dev/null | awk '/^Client Version:/{print $3}')
  VERSION=${VERSION:-unknown}
}

# module_dir MODULE VERSION: the module's directory in the Go module cache
# (downloaded if missing; read-only files).
module_dir() {
  local dir
  dir=$("$GO" mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
  [[ -d "$dir" ]] || die "could not download $1@$2 from the Go module proxy"
  printf '%s\n' "$dir"
}

# The upstream CRDs the real tier registers before deploy/: Istio's (from the
# pinned istio.io/istio) and the Prometheus Operator's.
crd_exports() {
  local istio prom
  istio=$(module_dir istio.io/istio "$ISTIO_VERSION")/manifests/charts/base/files/crd-all.gen.yaml
  prom=$(module_dir github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")/example/prometheus-operator-crd
  [[ -f "$istio" ]] || die "$istio missing"
  [[ -f "$prom/monitoring.coreos.com_servicemonitors.yaml" ]] || die "$prom has no ServiceMonitor CRD"
  printf 'export MULTICLOUD_ISTIO_CRDS=%q\nexport MULTICLOUD_PROMETHEUS_CRDS=%q\n' "$istio" "$prom"
  # The older snapshot's module (its CRDs and bootstrap template) and both versions.
  printf 'export MULTICLOUD_ISTIO_OLDER_MODULE=%q\n' "$(module_dir istio.io/istio "$ISTIO_OLDER_VERSION")"
  printf 'export MULTICLOUD_ISTIO_VERSION=%q\nexport MULTICLOUD_ISTIO_OLDER_VERSION=%q\n' "$ISTIO_VERSION" "$ISTIO_OLDER_VERSION"
}

ensure_any() { if [[ $1 == kubectl ]]; then ensure_kubectl; else ensure "$1"; fi; }

# pin NAME: rewrite scripts/gotools/NAME/go.mod from the pinned versions, tidy.
pin() {
  local name=$1 dir=$GOTOOLS/$1 gomod
  [[ -f "$dir/tools.go" ]] || die "$dir/tools.go missing"
  case "$name" in
    etcd)  tool_info etcd ;;
    kube)  tool_info kube-apiserver ;;
    istio) tool_info pilot-discovery ;;
    istio-older) tool_info pilot-discovery-older ;;
    crane) tool_info crane ;;
    coredns) tool_info coredns ;;
    *) die "unknown wrapper '$name' (etcd|kube|istio|istio-older|crane|coredns)" ;;
  esac
  log "pinning $name: $MODULE $VERSION"
  {
    printf '// Generated by scripts/tools.sh pin %s; edit the versions there.\n' "$name"
    printf 'module istio-multicloud/gotools/%s\n\ngo 1.26.0\n\nrequire %s %s\n' "$name" "$MODULE" "$VERSION"
  } >"$dir/go.mod"
  if [[ $name == kube ]]; then
    # Every staging module that k8s.io/kubernetes replaces with a local path
    # (./staging/src/k8s.io/...) and also requires => its published v0.<minor>.
    # (sample-cli-plugin and sample-controller are replaced but not required;
    # the proxy does not even serve sample-cli-plugin.)
    gomod=$("$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
    [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$KUBE_VERSION's go.mod"
    local mods
    mods=$(comm -12 \
      <(awk '/^replace \(/{r=1;next} r&&/^\)/{r=0} r&&$2=="=>"&&$3~/^\.\/staging\//{print $1}' "$gomod" | sort) \
      <(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r{print $1}' "$gomod" | sort))
    [[ -n "$mods" ]] || die "no staging replaces found in $gomod"
    { printf '\n// The staging modules, as k8s.io/kubernetes@%s replaces them with local paths.\nreplace (\n' "$KUBE_VERSION"
      printf '\t%s => %s v0.%s\n' $(for m in $mods; do echo "$m $m ${KUBE_VERSION#v1.}"; done)
      printf ')\n'; } >>"$dir/go.mod"
  fi
  rm -f "$dir/go.sum"
  (cd "$dir" && "$GO" mod tidy) || die "go mod tidy failed in $dir"
}

cmd=${1:-all}
case "$cmd" in
  pin)
    shift
    for w in "${@:-etcd kube istio istio-older crane coredns}"; do for n in $w; do pin "$n"; done; done ;;
  env)
    for t in "${ENV_TOOLS[@]}"; do
      ensure_any "$t"
      var=MULTICLOUD_$(tr 'a-z-' 'A-Z_' <<<"$t")
      printf 'export %s=%q\n' "$var" "$TOOL_PATH"
    done
    crd_exports ;;
  all|kube|istio|crane|coredns|etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl|pilot-discovery|pilot-agent|pilot-discovery-older|pilot-agent-older)
    case "$cmd" in
      all)   tools=("${ALL_TOOLS[@]}") ;;
      kube)  tools=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl) ;;
      istio) tools=(pilot-discovery pilot-agent pilot-discovery-older pilot-agent-older) ;;
      *)     tools=("$cmd") ;;
    esac
    for t in "${tools[@]}"; do
      ensure_any "$t"
      printf '%s %s %s\n' "$t" "$VERSION" "$TOOL_PATH"
    done ;;
  -h|--help|help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "usage: scripts/tools.sh [all|kube|istio|crane|coredns|<tool>|env|pin [wrapper]]" ;;
esac
