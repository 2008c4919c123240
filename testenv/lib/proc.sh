# shellcheck shell=bash
# Process supervision for testenv/env.sh (sourced by it, under its
# `set -euo pipefail`): logging, PID files and the cwd check that a PID is
# still ours, starting a daemon in the background (start_service), waiting
# for it to answer (wait_http, assert_running), stopping it with its
# children (stop_service, descendants, wait_gone), the safety-net sweep of
# leftovers (sweep_leftovers), and free loopback ports.
#
# Reads the driver's STOP_TIMEOUT and appends to its STARTED array.

log() { printf '[testenv +%ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[testenv] ERROR: %s\n' "$*" >&2; exit 1; }

abs_dir() { # make $1 absolute without requiring it to exist
  case "$1" in
    /*) printf '%s\n' "${1%/}" ;;
    *) printf '%s/%s\n' "$PWD" "${1%/}" ;;
  esac
}

now() { date +%s; }

# The state dir a process was started in is its cwd: used to make sure a PID
# read from a pid file still denotes our process and not a recycled PID.
pid_is_ours() { # PID STATE_DIR
  local pid="$1" dir="$2" cwd
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null)" || return 1
  [[ "$cwd" == "$dir" || "$cwd" == "$dir"/* ]]
}

read_pid() { # STATE_DIR NAME -> pid or empty
  local f="$1/pids/$2.pid"
  if [[ -f "$f" ]]; then tr -dc '0-9' <"$f"; fi
}

descendants() { # PID -> all descendant PIDs (children first, then theirs)
  local c
  for c in $(pgrep -P "$1" 2>/dev/null || true); do
    echo "$c"
    descendants "$c"
  done
}

wait_gone() { # TIMEOUT PID... -> 0 when all are gone
  local deadline=$(( $(now) + $1 )) p alive
  shift
  while :; do
    alive=0
    for p in "$@"; do
      # A zombie (state Z, after the last ")" of /proc/PID/stat) counts as gone:
      # once the daemon's parent (env.sh up) has exited, init reaps it lazily.
      if kill -0 "$p" 2>/dev/null && [[ "$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]]; then
        alive=1
      fi
    done
    (( alive == 0 )) && return 0
    (( $(now) >= deadline )) && return 1
    sleep 0.1
  done
}

# stop_service STATE_DIR NAME: SIGTERM the recorded PID (and, for gunicorn, its
# workers), wait up to STOP_TIMEOUT s, then SIGKILL whatever survives.
stop_service() {
  local dir="$1" name="$2" pid kids all
  pid="$(read_pid "$dir" "$name")"
  if [[ -n "$pid" ]] && pid_is_ours "$pid" "$dir"; then
    kids="$(descendants "$pid" | tr '\n' ' ')"
    all="$pid $kids"
    log "stopping $name (pid $pid${kids:+, children ${kids% }})"
    kill -TERM "$pid" 2>/dev/null || true
    # shellcheck disable=SC2086
    if ! wait_gone "$STOP_TIMEOUT" $all; then
      log "$name did not stop within ${STOP_TIMEOUT}s: SIGKILL"
      # shellcheck disable=SC2086
      kill -KILL $all 2>/dev/null || true
      # shellcheck disable=SC2086
      wait_gone 5 $all || log "WARNING: $name: some of pids $all survived SIGKILL"
    fi
    # Workers of a gunicorn master that died first, or that the master forked
    # while we were waiting: no child may survive.
    local extra=""
    local k
    for k in $kids $(descendants "$pid" 2>/dev/null); do
      if pid_is_ours "$k" "$dir"; then extra="$extra $k"; fi
    done
    if [[ -n "${extra// /}" ]]; then
      log "killing leftover children of $name:$extra"
      # shellcheck disable=SC2086
      kill -KILL $extra 2>/dev/null || true
      # shellcheck disable=SC2086
      wait_gone 5 $extra || true
    fi
  fi
  rm -f "$dir/pids/$name.pid"
}

# Safety net for what the pid files no longer lead to (e.g. gunicorn workers
# whose master was SIGKILLed by someone else): our daemons run with their cwd
# inside the state dir, so any etcd / kube-apiserver / gunicorn process whose
# cwd is there is ours.
sweep_leftovers() { # STATE_DIR
  local dir="$1" p pid cwd cmd found=()
  for p in /proc/[0-9]*; do
    pid="${p#/proc/}"
    [[ "$pid" == "$$" ]] && continue
    cwd="$(readlink "$p/cwd" 2>/dev/null)" || continue
    [[ "$cwd" == "$dir" || "$cwd" == "$dir"/* ]] || continue
    cmd="$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" || continue
    case "$cmd" in
      *gunicorn*|*/etcd\ *|*/kube-apiserver\ *|*/kube-controller-manager\ *) found+=("$pid") ;;
    esac
  done
  (( ${#found[@]} > 0 )) || return 0
  log "stopping leftover processes in $dir: ${found[*]}"
  kill -TERM "${found[@]}" 2>/dev/null || true
  if ! wait_gone "$STOP_TIMEOUT" "${found[@]}"; then
    kill -KILL "${found[@]}" 2>/dev/null || true
    wait_gone 5 "${found[@]}" || log "WARNING: some of ${found[*]} survived SIGKILL"
  fi
}

# start_service STATE_DIR NAME WORKDIR CMD...: runs CMD in the background with
# cwd WORKDIR (inside STATE_DIR), stdin from /dev/null, output to the log
# (started afresh, or appended to with START_APPEND_LOG=1, for a restart).
start_service() {
  local dir="$1" name="$2" wd="$3"
  shift 3
  mkdir -p "$dir/logs" "$dir/pids" "$wd"
  local logf="$dir/logs/$name.log"
  [[ "${START_APPEND_LOG:-0}" == 1 ]] || : >"$logf"
  # fd 9 is the state-dir lock: the service must not inherit it.
  ( cd "$wd" && exec "$@" ) </dev/null >>"$logf" 2>&1 9>&- &
  local pid=$!
  echo "$pid" >"$dir/pids/$name.pid"
  STARTED+=("$name")
  log "started $name (pid $pid, log $logf)"
}

# wait_http STATE_DIR NAME TIMEOUT EXPECT CURL_ARGS...: poll until curl prints
# EXPECT (an HTTP status code, or a body when it starts with "body:").
wait_http() {
  local dir="$1" name="$2" timeout="$3" expect="$4"
  shift 4
  local deadline=$(( $(now) + timeout )) out pid t0
  t0=$(now)
  pid="$(read_pid "$dir" "$name")"
  while :; do
    if [[ "$expect" == body:* ]]; then
      out="$(curl -s -m 2 "$@" 2>/dev/null || true)"
      [[ "$out" == "${expect#body:}" ]] && break
    else
      out="$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$@" 2>/dev/null || true)"
      [[ "$out" == "$expect" ]] && break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) exited before becoming ready; last lines of $dir/logs/$name.log:"
      tail -n 40 "$dir/logs/$name.log" >&2 || true
      return 1
    fi
    if (( $(now) >= deadline )); then
      log "$name not ready after ${timeout}s (last answer: '${out:0:200}'); last lines of $dir/logs/$name.log:"
      tail -n 40 "$dir/logs/$name.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
  log "$name ready after $(( $(now) - t0 ))s"
}

# assert_running STATE_DIR NAME: fail early when a service started without
# waiting (kube-apiserver) has already died.
assert_running() {
  local pid
  pid="$(read_pid "$1" "$2")"
  if ! kill -0 "$pid" 2>/dev/null; then
    log "$2 (pid $pid) exited; last lines of $1/logs/$2.log:"
    tail -n 40 "$1/logs/$2.log" >&2 || true
    return 1
  fi
}

free_ports() { # N -> N distinct free loopback TCP ports, one per line
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
for s in socks:
    s.close()
EOF
}
