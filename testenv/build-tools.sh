#!/usr/bin/env bash
# Builds the test binaries (etcd, kube-apiserver, kube-controller-manager,
# kubectl, helm, and kstatus-check for the GitOps tests) from the Go
# modules pinned in testenv/go/*, into a cache outside the checkout keyed by
# version. A binary already present with the right --version is not rebuilt.
# Also creates the Python venv holding Keystone and Glance (testenv/python/).
# `orc` (not part of `all`, so CI does not build it) builds ORC's manager, the
# peer bench/prune.sh measures against, from testenv/go/orc.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${CLOUDIMAGE_CACHE:-$HOME/.cache/cloudimage-testenv}"

KUBE_VERSION="$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$HERE/go/kube/go.mod")"
ETCD_VERSION="$(awk '$1=="go.etcd.io/etcd/server/v3" {print $2}' "$HERE/go/etcd/go.mod" | head -1)"
HELM_VERSION="$(awk '$1=="helm.sh/helm/v3" {print $2}' "$HERE/go/helm/go.mod" | head -1)"
# kstatus-check is our own main.go around cli-utils: keyed by both.
KSTATUS_VERSION="$(awk '$1=="sigs.k8s.io/cli-utils" {print $2}' "$HERE/go/kstatus/go.mod" | head -1)"
KSTATUS_KEY="$(cat "$HERE/go/kstatus/main.go" "$HERE/go/kstatus/go.mod" "$HERE/go/kstatus/go.sum" | sha256sum | cut -c1-12)"
ORC_VERSION="$(awk '$1=="github.com/k-orc/openstack-resource-controller/v2" {print $2}' "$HERE/go/orc/go.mod" | head -1)"
PY_KEY="$(sha256sum "$HERE/python/requirements.txt" | cut -c1-12)"

export GOTOOLCHAIN=local CGO_ENABLED=0
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build"
export GOFLAGS=-mod=readonly

BIN_KUBE="$CACHE/kube-$KUBE_VERSION"
BIN_ETCD="$CACHE/etcd-$ETCD_VERSION"
BIN_HELM="$CACHE/helm-$HELM_VERSION"
BIN_KSTATUS="$CACHE/kstatus-$KSTATUS_VERSION-$KSTATUS_KEY"
BIN_ORC="$CACHE/orc-$ORC_VERSION"
VENV="$CACHE/venv-$PY_KEY"

log() { printf '[build-tools] %s\n' "$*" >&2; }

# has_version BIN PATTERN: the binary exists and its --version mentions PATTERN.
has_version() {
  local out
  [[ -x "$1" ]] || return 1
  # Read all of it first: `grep -q` may stop reading early, and under
  # pipefail the writer's SIGPIPE would read as "wrong version".
  out="$("$1" "${@:3}" 2>/dev/null)" || return 1
  grep -qF -- "$2" <<<"$out"
}

build_kube() {
  mkdir -p "$BIN_KUBE"
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
  local ldc="-s -w -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
  if ! has_version "$BIN_KUBE/kube-apiserver" "$KUBE_VERSION" --version; then
    log "building kube-apiserver $KUBE_VERSION (cold: 10-25 min on 2 cores)"
    (cd "$HERE/go/kube" && go build -trimpath -ldflags "$ld" -o "$BIN_KUBE/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver)
  fi
  if ! has_version "$BIN_KUBE/kube-controller-manager" "$KUBE_VERSION" --version; then
    log "building kube-controller-manager $KUBE_VERSION (cold: 5-15 min on 2 cores)"
    (cd "$HERE/go/kube" && go build -trimpath -ldflags "$ld" -o "$BIN_KUBE/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager)
  fi
  if ! has_version "$BIN_KUBE/kubectl" "$KUBE_VERSION" version --client; then
    log "building kubectl $KUBE_VERSION"
    (cd "$HERE/go/kube" && go build -trimpath -ldflags "$ldc" -o "$BIN_KUBE/kubectl" k8s.io/kubernetes/cmd/kubectl)
  fi
}

build_etcd() {
  mkdir -p "$BIN_ETCD"
  if ! has_version "$BIN_ETCD/etcd" "${ETCD_VERSION#v}" --version; then
    log "building etcd $ETCD_VERSION"
    (cd "$HERE/go/etcd" && go build -trimpath -ldflags "-s -w" -o "$BIN_ETCD/etcd" go.etcd.io/etcd/server/v3)
  fi
}

build_helm() {
  mkdir -p "$BIN_HELM"
  if ! has_version "$BIN_HELM/helm" "$HELM_VERSION" version --short; then
    log "building helm $HELM_VERSION"
    (cd "$HERE/go/helm" && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$BIN_HELM/helm" helm.sh/helm/v3/cmd/helm)
  fi
}

build_kstatus() {
  mkdir -p "$BIN_KSTATUS"
  if ! has_version "$BIN_KSTATUS/kstatus-check" "$KSTATUS_VERSION" --version; then
    log "building kstatus-check (sigs.k8s.io/cli-utils $KSTATUS_VERSION)"
    (cd "$HERE/go/kstatus" && go build -trimpath -ldflags "-s -w" -o "$BIN_KSTATUS/kstatus-check" .)
  fi
}

# ORC's manager has no --version: the directory is keyed by the pinned
# version, and a manager already there is kept.
build_orc() {
  mkdir -p "$BIN_ORC"
  if [[ ! -x "$BIN_ORC/manager" ]]; then
    log "building ORC manager $ORC_VERSION (cold: 5-10 min on 2 cores)"
    (cd "$HERE/go/orc" && go build -trimpath -ldflags "-s -w" -o "$BIN_ORC/manager.tmp" github.com/k-orc/openstack-resource-controller/v2/cmd/manager)
    mv "$BIN_ORC/manager.tmp" "$BIN_ORC/manager"
  fi
  # Its CRDs (config/crd/bases) are read from the module cache: make sure the
  # module is there even when the binary was already built.
  (cd "$HERE/go/orc" && go mod download github.com/k-orc/openstack-resource-controller/v2)
}

build_venv() {
  if [[ -x "$VENV/bin/gunicorn" && -f "$VENV/.complete" ]]; then return; fi
  log "creating Python venv for Keystone + Glance in $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/python/requirements.txt"
  touch "$VENV/.complete"
}

# Says plainly what the machine lacks, instead of failing halfway through a build.
preflight() {
  local missing=() c
  for c in go python3 curl jq openssl flock pgrep; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
  done
  if ((${#missing[@]})); then
    log "missing commands: ${missing[*]} (Debian: apt-get install golang python3-venv curl jq openssl util-linux procps)"
    exit 1
  fi
  local want have
  want="$(awk '$1=="go" {print $2}' "$HERE/go/kube/go.mod")"
  have="$(go env GOVERSION | sed 's/^go//')"
  if [[ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -1)" != "$want" ]]; then
    log "Go $have is older than the $want the pinned modules need (GOTOOLCHAIN=local: no toolchain download)"
    exit 1
  fi
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    log "python3 cannot create virtual environments (Debian: apt-get install python3-venv)"
    exit 1
  fi
}

main() {
  mkdir -p "$CACHE"
  [[ "${1:-all}" == paths ]] || preflight
  local what="${1:-all}"
  if [[ "$what" != paths && -z "${CLOUDIMAGE_BUILD_LOCKED:-}" ]]; then
    # One build at a time per cache: a second caller waits for the first.
    exec 8>"$CACHE/.build.lock"
    flock -w 3600 8 || { log "could not take the build lock $CACHE/.build.lock"; exit 1; }
    export CLOUDIMAGE_BUILD_LOCKED=1
  fi
  case "$what" in
    kube) build_kube ;;
    etcd) build_etcd ;;
    helm) build_helm ;;
    kstatus) build_kstatus ;;
    orc) build_orc ;;
    venv) build_venv ;;
    all) build_venv; build_etcd; build_kube; build_helm; build_kstatus ;;
    paths)
      echo "KUBE_BIN_DIR=$BIN_KUBE"; echo "ETCD_BIN_DIR=$BIN_ETCD"; echo "HELM_BIN_DIR=$BIN_HELM"; echo "KSTATUS_BIN_DIR=$BIN_KSTATUS"; echo "ORC_BIN_DIR=$BIN_ORC"; echo "VENV=$VENV"; return ;;
    *) echo "usage: $0 [all|kube|etcd|helm|kstatus|venv|orc|paths]" >&2; exit 2 ;;
  esac
}
main "$@"
