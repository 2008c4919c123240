#!/usr/bin/env bash
# Runs every check and test of the project against the real local
# environment: formatting, clippy, unit tests, and the integration tests
# (real kube-apiserver + etcd, real Keystone + Glance).
#
# Starts the environment when it is not running and stops it again at the end
# (by PID, also on failure or Ctrl-C). An environment that was already up is
# reused and left running.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ENV_SH="$ROOT/testenv/env.sh"
STATE_DIR="${CLOUDIMAGE_TESTENV_DIR:-${CLOUDIMAGE_CACHE:-$HOME/.cache/cloudimage-testenv}/run}"
export CLOUDIMAGE_TESTENV_DIR="$STATE_DIR"

started_here=0
stop_env() {
  if [[ "$started_here" == 1 ]]; then
    "$ENV_SH" down "$STATE_DIR" || true
  fi
}
trap stop_env EXIT INT TERM

# CI always stops what it runs on; a developer's running environment is reused.
if [[ "${CI:-}" != true ]] && "$ENV_SH" status "$STATE_DIR" >/dev/null 2>&1; then
  echo "[run-tests] reusing the running test environment in $STATE_DIR"
else
  started_here=1
fi
"$ENV_SH" up "$STATE_DIR"

echo "[run-tests] cargo fmt --check"
cargo fmt --all -- --check
echo "[run-tests] cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "[run-tests] the CRDs in crds/ and in the chart match the Rust types"
for f in crds/cloudimage.dev_cloudimages.yaml charts/cloudimage-operator/crds/cloudimage.dev_cloudimages.yaml; do
  cargo run --quiet --locked --bin crdgen | diff -u "$f" - \
    || { echo "$f is stale: cargo run --bin crdgen > $f" >&2; exit 1; }
done
echo "[run-tests] helm lint"
# shellcheck disable=SC1090
HELM_BIN="$(source "$("$ENV_SH" env "$STATE_DIR")" && echo "$HELM")"
"$HELM_BIN" lint --strict charts/cloudimage-operator
for f in charts/cloudimage-operator/ci/*.yaml; do
  "$HELM_BIN" lint --strict -f "$f" charts/cloudimage-operator
done
echo "[run-tests] the operator starts in an empty root (testenv/empty-root-check.sh)"
# The binary needs only glibc, libgcc and the CA bundle (the distroless
# image). The debug binary by default: cargo test builds it anyway, and a
# cold release build (fat LTO) takes about 10 minutes on 2 cores.
# CLOUDIMAGE_EMPTY_ROOT_RELEASE=1 checks the release binary the Dockerfile
# ships instead (built incrementally in target/release).
if [[ "${CLOUDIMAGE_EMPTY_ROOT_RELEASE:-0}" == 1 ]]; then
  testenv/empty-root-check.sh
else
  cargo build --locked --bin cloudimage-operator
  testenv/empty-root-check.sh target/debug/cloudimage-operator
fi
echo "[run-tests] cargo test"
cargo test --locked -- --test-threads="${CLOUDIMAGE_TEST_THREADS:-8}"
# The benchmark itself (bench/, docs/benchmarks.md) is not part of the test
# run; this keeps its scripts working: a prune of 20 objects, floor and this
# operator (debug binary, no ORC), which fails if any object or image stays.
# CLOUDIMAGE_BENCH_SMOKE=0 skips it.
if [[ "${CLOUDIMAGE_BENCH_SMOKE:-1}" != 0 ]]; then
  echo "[run-tests] benchmark smoke: bench/prune.sh 20 floor,operator"
  OPERATOR_BIN=target/debug/cloudimage-operator BENCH_WORK="$ROOT/target/tmp/bench-smoke" \
    bench/prune.sh 20 floor,operator
fi
