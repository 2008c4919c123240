#!/usr/bin/env bash
# Local test environment for the cloudimage operator: a real Kubernetes control
# plane (etcd + kube-apiserver + kube-controller-manager running the namespace
# and garbage-collector controllers, built from Go modules by build-tools.sh) and a
# real OpenStack Keystone + Glance (from PyPI, in a venv), all on loopback, as
# plain processes (no containers, no network beyond 127.0.0.1).
#
#   testenv/env.sh up     [STATE_DIR]   start (or reuse) the environment
#   testenv/env.sh down   [STATE_DIR]   stop everything `up` started (idempotent)
#   testenv/env.sh status [STATE_DIR]   show what is running
#   testenv/env.sh env    [STATE_DIR]   print the path of the sourceable env file
#   testenv/env.sh restart kube-apiserver [STATE_DIR]
#                                       stop kube-apiserver (by PID) and start it
#                                       again with the same command line (flags,
#                                       port, certificates), wait for /readyz, and
#                                       record the new PID (fault tests: tests/chaos.rs)
#
# STATE_DIR defaults to ${CLOUDIMAGE_TESTENV_DIR:-$HOME/.cache/cloudimage-testenv/run}.
# After `up`:  source "$(testenv/env.sh env)"   (exports KUBECONFIG, GLANCE_URL, ...)
#
# Knobs (environment): CLOUDIMAGE_TESTENV_SKIP_HELM=1 (do not build helm),
# CLOUDIMAGE_TESTENV_ADVERTISE_ADDRESS (passed to kube-apiserver; by default none
# is passed when the machine has a default route, else the first non-loopback
# address, else 127.0.0.1).
set -euo pipefail
shopt -s inherit_errexit

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_TOOLS="$HERE/build-tools.sh"
CACHE="${CLOUDIMAGE_CACHE:-$HOME/.cache/cloudimage-testenv}"
DEFAULT_STATE_DIR="${CLOUDIMAGE_TESTENV_DIR:-$CACHE/run}"

# Start order; `down` stops in reverse.
SERVICES=(etcd kube-apiserver kube-controller-manager keystone glance)

APISERVER_READY_TIMEOUT=120
SERVICE_READY_TIMEOUT=60
STOP_TIMEOUT=10

# The work is in lib/, sourced here (under the settings above):
#   lib/proc.sh       process supervision: start, wait for, stop (by PID) daemons
#   lib/state.sh      the state dir: shared variables, secrets, env + env.json
#   lib/kube.sh       PKI, kubeconfig, etcd, kube-apiserver, kube-controller-manager
#   lib/openstack.sh  Keystone, Glance, clouds.yaml, verify_glance
# `up` writes `env` (sourceable) and `env.json` (the same keys as one JSON
# object of strings, read by the Rust tests), both mode 600; `down` removes both.
# shellcheck source-path=SCRIPTDIR source=lib/proc.sh
source "$HERE/lib/proc.sh"
# shellcheck source-path=SCRIPTDIR source=lib/state.sh
source "$HERE/lib/state.sh"
# shellcheck source-path=SCRIPTDIR source=lib/kube.sh
source "$HERE/lib/kube.sh"
# shellcheck source-path=SCRIPTDIR source=lib/openstack.sh
source "$HERE/lib/openstack.sh"

# -------------------------------------------------------------- build step ---

build_tools() {
  # build-tools.sh serialises builds with a lock in the cache, so two `up`s
  # never build at once. Helm is optional for `up`: a failed build only warns.
  "$BUILD_TOOLS" venv
  "$BUILD_TOOLS" etcd
  "$BUILD_TOOLS" kube
  if [[ "${CLOUDIMAGE_TESTENV_SKIP_HELM:-0}" != 1 ]]; then
    "$BUILD_TOOLS" helm || log "WARNING: helm build failed; continuing without helm"
  fi
  eval "$("$BUILD_TOOLS" paths)"
  [[ -x "$ETCD_BIN_DIR/etcd" ]] || die "missing $ETCD_BIN_DIR/etcd"
  [[ -x "$KUBE_BIN_DIR/kube-apiserver" ]] || die "missing $KUBE_BIN_DIR/kube-apiserver"
  [[ -x "$KUBE_BIN_DIR/kube-controller-manager" ]] || die "missing $KUBE_BIN_DIR/kube-controller-manager"
  [[ -x "$KUBE_BIN_DIR/kubectl" ]] || die "missing $KUBE_BIN_DIR/kubectl"
  [[ -f "$VENV/.complete" && -x "$VENV/bin/gunicorn" ]] || die "venv $VENV incomplete"
}

stop_all() { # STATE_DIR
  local dir="$1" i
  for (( i=${#SERVICES[@]}-1; i>=0; i-- )); do
    stop_service "$dir" "${SERVICES[$i]}"
  done
  sweep_leftovers "$dir"
}

# --------------------------------------------------------------------- up ---

UP_DIR=""
UP_DONE=0
STARTED=()

on_up_exit() {
  local rc=$?
  if (( UP_DONE == 0 )) && [[ -n "$UP_DIR" ]]; then
    if (( ${#STARTED[@]} > 0 )); then
      log "up failed (exit $rc): stopping what was started: ${STARTED[*]}"
      stop_all "$UP_DIR"
    fi
    rm -f "$UP_DIR/env" "$UP_DIR/env.json" "$UP_DIR/env.json.tmp"
    (( rc == 0 )) && rc=1
  fi
  exit "$rc"
}

cmd_up() {
  local dir
  dir="$(abs_dir "${1:-$DEFAULT_STATE_DIR}")"

  build_tools

  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock -w 300 9 || die "another up/down holds $dir/.lock"

  if is_up "$dir"; then
    # Started by an env.sh that wrote no env.json yet: add it.
    [[ -f "$dir/env.json" ]] || env_json_from_env "$dir"
    echo "already up: $dir"
    return 0
  fi
  if [[ -e "$dir/env" || -e "$dir/env.json" ]] || compgen -G "$dir/pids/*.pid" >/dev/null; then
    log "stale or partial state in $dir: stopping leftovers, starting fresh"
    stop_all "$dir"
  fi
  clean_state "$dir"

  UP_DIR="$dir"
  trap on_up_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  init_up_vars "$dir"
  start_etcd "$dir"
  start_apiserver "$dir"
  start_keystone "$dir"
  assert_running "$dir" kube-apiserver
  # Glance's config + db_sync while Keystone boots (running them alongside
  # keystone-manage was slower on 2 cores).
  prepare_glance "$dir"
  assert_running "$dir" kube-apiserver
  populate_keystone "$dir"
  start_glance "$dir"
  wait_apiserver "$dir"
  start_controller_manager "$dir"
  verify_glance
  finish_up "$dir"
  UP_DONE=1
  trap - EXIT INT TERM

  cat <<EOF
testenv up in ${SECONDS}s: $dir
  etcd            $ETCD_URL (pid $ETCD_PID)
  kube-apiserver  $KUBE_APISERVER_URL (pid $KUBE_APISERVER_PID)
  kube-controller-manager  namespace, garbagecollector (pid $KUBE_CONTROLLER_MANAGER_PID)
  keystone        $KEYSTONE_URL (pid $KEYSTONE_PID)
  glance          $GLANCE_URL (pid $GLANCE_PID)
  kubeconfig      $KUBECONFIG
  clouds.yaml     $OS_CLOUDS_YAML (clouds: admin, demo, other)
  env file        $dir/env   (source it; it holds the passwords, not printed here)
EOF
}

# ------------------------------------------------------------------- down ---

cmd_down() {
  local dir
  dir="$(abs_dir "${1:-$DEFAULT_STATE_DIR}")"
  if [[ ! -d "$dir" ]]; then
    log "nothing to stop: $dir does not exist"
    return 0
  fi
  exec 9>"$dir/.lock"
  flock -w 300 9 || die "another up/down holds $dir/.lock"
  stop_all "$dir"
  rm -f "$dir/env" "$dir/env.json"
  log "down: $dir (logs kept in $dir/logs)"
}

# ----------------------------------------------------------------- status ---

# Exits 0 only when every service is running.
cmd_status() {
  local dir s pid state all_up=1
  dir="$(abs_dir "${1:-$DEFAULT_STATE_DIR}")"
  echo "state dir: $dir"
  for s in "${SERVICES[@]}"; do
    pid="$(read_pid "$dir" "$s")"
    if [[ -z "$pid" ]]; then
      state="not running"
      all_up=0
    elif pid_is_ours "$pid" "$dir"; then
      state="running (pid $pid"
      local kids
      kids="$(descendants "$pid" | tr '\n' ' ')"
      [[ -n "${kids// /}" ]] && state="$state, children ${kids% }"
      state="$state)"
    else
      state="dead (stale pid $pid)"
      all_up=0
    fi
    printf "  %-24s %s\n" "$s" "$state"
  done
  if [[ -f "$dir/env" ]]; then
    local url glance ks
    url="$(env_value "$dir" KUBE_APISERVER_URL)"
    glance="$(env_value "$dir" GLANCE_URL)"
    ks="$(env_value "$dir" KEYSTONE_URL)"
    printf '  %-15s %s /readyz: %s\n' apiserver "$url" \
      "$(curl -s -m 2 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" "$url/readyz" 2>/dev/null || echo unreachable)"
    printf '  %-15s %s: HTTP %s\n' keystone "$ks" "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$ks" 2>/dev/null || true)"
    printf '  %-15s %s/healthcheck: HTTP %s\n' glance "$glance" "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$glance/healthcheck" 2>/dev/null || true)"
    echo "  env file: $dir/env"
  else
    echo "  (no env file: not up)"
  fi
  (( all_up == 1 ))
}

cmd_env() {
  local dir
  dir="$(abs_dir "${1:-$DEFAULT_STATE_DIR}")"
  echo "$dir/env"
  [[ -f "$dir/env" ]] || { log "$dir/env does not exist (run: $0 up${1:+ $1})"; return 1; }
}

# ---------------------------------------------------------------- restart ---

# Restarts kube-apiserver in place, as an upgrade or a crash would: the same
# argv (read back from /proc, so exactly the flags `up` gave it), the same
# cwd, the same port, the same PKI and etcd. Clients see connections refused
# for a few seconds, then the same server. The log is appended to, not
# truncated. Exits non-zero unless the new process is ready.
cmd_restart() { # SERVICE [STATE_DIR]
  local svc="${1:-}" dir pid cwd new url
  [[ "$svc" == kube-apiserver ]] || die "restart: only kube-apiserver can be restarted (got '${svc}')"
  dir="$(abs_dir "${2:-$DEFAULT_STATE_DIR}")"
  [[ -f "$dir/env" ]] || die "restart: $dir is not up"
  exec 9>"$dir/.lock"
  flock -w 300 9 || die "another up/down/restart holds $dir/.lock"
  pid="$(read_pid "$dir" "$svc")"
  pid_is_ours "$pid" "$dir" || die "restart: $svc is not running (pid '${pid}')"
  local argv=()
  mapfile -d '' -t argv <"/proc/$pid/cmdline"
  cwd="$(readlink "/proc/$pid/cwd")"
  if (( ${#argv[@]} == 0 )) || [[ -z "$cwd" ]]; then
    die "restart: cannot read the command line of pid $pid"
  fi
  # SIGTERM, then SIGKILL after 3 s: it stops listening at once but can
  # take longer than that to exit, and the port is what clients see.
  STOP_TIMEOUT=3 stop_service "$dir" "$svc"
  START_APPEND_LOG=1 start_service "$dir" "$svc" "$cwd" "${argv[@]}"
  url="$(env_value "$dir" KUBE_APISERVER_URL)"
  wait_http "$dir" "$svc" "$APISERVER_READY_TIMEOUT" body:ok \
    --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
    "$url/readyz" || die "restart: $svc did not become ready (log: $dir/logs/$svc.log)"
  new="$(read_pid "$dir" "$svc")"
  # The env files name the PID too.
  (
    # shellcheck disable=SC1091
    source "$dir/env"
    KUBE_APISERVER_PID="$new"
    write_env_json "$dir"
    write_env_file "$dir"
  )
  log "restarted $svc: pid $pid -> $new in ${SECONDS}s"
}

usage() {
  sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  if [[ "$cmd" == restart ]]; then
    [[ $# -ge 1 && $# -le 2 ]] || usage
    cmd_restart "$@"
    return
  fi
  [[ $# -le 1 ]] || usage
  case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env "$@" ;;
    *) usage ;;
  esac
}
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
