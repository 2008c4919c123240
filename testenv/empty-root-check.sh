#!/usr/bin/env bash
# Proves the operator binary needs nothing but what the container image
# (Dockerfile: gcr.io/distroless/cc-debian12) gives it: it starts and answers
# /livez and /readyz inside an otherwise empty root directory holding only
#   - the binary,
#   - the shared libraries `ldd` lists and the dynamic loader (same paths),
#   - /etc/ssl/certs/ca-certificates.crt,
#   - a kubeconfig for the test cluster (certificates embedded),
# run with chroot as the image's numeric non-root user 65532:65532 (no
# /etc/passwd, no shell, no /proc, no /tmp), against the running test
# environment's kube-apiserver.
#
#   testenv/empty-root-check.sh [BINARY]
#
# BINARY defaults to target/release/cloudimage-operator, built (or brought
# up to date) with `cargo build --release --locked` first; cargo's target
# directory caches it between runs. Set CLOUDIMAGE_EMPTY_ROOT_BINARY (or
# pass BINARY) to check another build, e.g. target/debug/cloudimage-operator.
#
# Needs: root (for chroot; else unprivileged user namespaces, and then it
# runs as the namespace's root), the test environment up (testenv/env.sh up).
# Exit status 0 when the operator answered; non-zero with a message on
# stderr otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE_DIR="${CLOUDIMAGE_TESTENV_DIR:-${CLOUDIMAGE_CACHE:-$HOME/.cache/cloudimage-testenv}/run}"
DEADLINE="${CLOUDIMAGE_EMPTY_ROOT_DEADLINE:-60}"
RUN_AS="65532:65532"

say() { echo "[empty-root] $*"; }
die() {
  echo "[empty-root] FAILED: $*" >&2
  exit 1
}

# As root: chroot, then run as 65532:65532 like the image. Otherwise an
# unprivileged user namespace gives chroot (as the namespace's root, mapped
# to the caller).
if [[ "$(id -u)" == 0 ]]; then
  ENTER=(chroot --userspec="$RUN_AS")
elif unshare --user --map-root-user true 2>/dev/null; then
  RUN_AS="$(id -u):$(id -g) (as root of a user namespace)"
  ENTER=(unshare --user --map-root-user chroot)
else
  die "needs root or unprivileged user namespaces (for chroot)"
fi
command -v chroot >/dev/null || die "chroot not found"
command -v ldd >/dev/null || die "ldd not found"
command -v curl >/dev/null || die "curl not found"
[[ -f "$STATE_DIR/env" ]] || die "no test environment in $STATE_DIR: start it with testenv/env.sh up"
# shellcheck disable=SC1091
source "$STATE_DIR/env"
: "${KUBECONFIG:?the test environment has no KUBECONFIG}" "${KUBECTL:?the test environment has no KUBECTL}"

BIN="${1:-${CLOUDIMAGE_EMPTY_ROOT_BINARY:-}}"
if [[ -z "$BIN" ]]; then
  BIN="$ROOT/target/release/cloudimage-operator"
  say "cargo build --release --locked --bin cloudimage-operator"
  started=$SECONDS
  cargo build --release --locked --bin cloudimage-operator
  say "release build: $((SECONDS - started)) s"
fi
[[ -x "$BIN" ]] || die "$BIN is not an executable"

# The CRD: the operator refuses to start without it.
"$KUBECTL" --kubeconfig "$KUBECONFIG" apply --server-side --force-conflicts --field-manager=cloudimage-tests \
  -f "$ROOT/crds/cloudimage.dev_cloudimages.yaml" >/dev/null \
  || die "cannot apply the CRD"
"$KUBECTL" --kubeconfig "$KUBECONFIG" wait --for=condition=Established --timeout=60s \
  crd/cloudimages.cloudimage.dev >/dev/null || die "the CRD is not served"

NS="empty-root-$(head -c 3 /dev/urandom | od -An -tx1 | tr -d ' \n')"
JAIL="$(mktemp -d "${TMPDIR:-/tmp}/cloudimage-empty-root.XXXXXX")"
PID=""
LOG=""
cleanup() {
  if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$JAIL"
  [[ -z "$LOG" ]] || rm -f "$LOG"
  "$KUBECTL" --kubeconfig "$KUBECONFIG" delete namespace "$NS" --wait=false --ignore-not-found >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$KUBECTL" --kubeconfig "$KUBECONFIG" create namespace "$NS" >/dev/null || die "cannot create namespace $NS"

# The root: the binary, its libraries and loader, the CA bundle, a kubeconfig.
install -m 0755 "$BIN" "$JAIL/cloudimage-operator"
libs=()
while read -r line; do
  case "$line" in
    *"=> not found"*) die "ldd: a library of $BIN is missing: $line" ;;
    *"=> /"*) p="${line#*=> }"; libs+=("${p%% (*}") ;;  # libc.so.6 => /lib/.../libc.so.6 (0x..)
    /*) libs+=("${line%% (*}") ;;                         # /lib64/ld-linux-x86-64.so.2 (0x..)
  esac                                                    # linux-vdso.so.1: the kernel's
done < <(ldd "$BIN" 2>&1 || true)
if ldd "$BIN" 2>&1 | grep -q "not a dynamic executable"; then
  say "$BIN is statically linked: no libraries to copy"
fi
for lib in "${libs[@]}"; do
  mkdir -p "$JAIL$(dirname "$lib")"
  cp -L "$lib" "$JAIL$lib" # the file itself at the path ldd names (symlinks resolved)
done
mkdir -p "$JAIL/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$JAIL/etc/ssl/certs/ca-certificates.crt"
"$KUBECTL" --kubeconfig "$KUBECONFIG" config view --raw --minify --flatten >"$JAIL/kubeconfig" \
  || die "cannot write a self-contained kubeconfig"
[[ "$(id -u)" != 0 ]] || chown 65532:65532 "$JAIL/kubeconfig"
chmod 0600 "$JAIL/kubeconfig"
chmod 0755 "$JAIL"
say "root $JAIL holds only:"
(cd "$JAIL" && find . -type f | sort | sed 's/^\./    /')

# A free port for /livez and /readyz.
PY="python3"
[[ -n "${VENV:-}" && -x "$VENV/bin/python" ]] && PY="$VENV/bin/python"
PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')" \
  || die "cannot find a free port"

LOG="$(mktemp "${TMPDIR:-/tmp}/cloudimage-empty-root-log.XXXXXX")"
say "starting the operator in it as $RUN_AS (namespace $NS, health on 127.0.0.1:$PORT)"
"${ENTER[@]}" "$JAIL" /cloudimage-operator \
  --kubeconfig /kubeconfig \
  --namespace "$NS" \
  --health-addr "127.0.0.1:$PORT" \
  --metrics-addr off \
  --log-format text \
  </dev/null >"$LOG" 2>&1 &
PID=$!

fail_with_log() {
  echo "[empty-root] --- operator log ($LOG) ---" >&2
  cat "$LOG" >&2 || true
  die "$*"
}

wait_ok() { # path
  local path="$1" body=""
  while ((SECONDS < end)); do
    if ! kill -0 "$PID" 2>/dev/null; then
      wait "$PID" && rc=0 || rc=$?
      PID=""
      fail_with_log "the operator exited (status $rc) before $path answered ok"
    fi
    body="$(curl -fsS --max-time 2 "http://127.0.0.1:$PORT$path" 2>/dev/null || true)"
    if [[ "$body" == ok* ]]; then
      say "$path: ok after $((SECONDS - start)) s"
      return 0
    fi
    sleep 0.5
  done
  fail_with_log "$path did not answer ok within ${DEADLINE} s (last answer: ${body:-none})"
}
start=$SECONDS
end=$((SECONDS + DEADLINE))
wait_ok /livez
wait_ok /readyz

kill -TERM "$PID"
for _ in $(seq 1 40); do
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.5
done
if kill -0 "$PID" 2>/dev/null; then
  fail_with_log "the operator did not stop within 20 s of SIGTERM"
fi
wait "$PID" && rc=0 || rc=$?
PID=""
[[ "$rc" == 0 ]] || fail_with_log "the operator exited with status $rc after SIGTERM"
say "OK: $BIN starts and answers /livez and /readyz in an empty root as $RUN_AS, and stops cleanly on SIGTERM"
