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

log() { printf '[testenv +%ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[testenv] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers ---

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

stop_all() { # STATE_DIR
  local dir="$1" i
  for (( i=${#SERVICES[@]}-1; i>=0; i-- )); do
    stop_service "$dir" "${SERVICES[$i]}"
  done
  sweep_leftovers "$dir"
}

# start_service STATE_DIR NAME WORKDIR CMD...: runs CMD in the background with
# cwd WORKDIR (inside STATE_DIR), stdin from /dev/null, output to the log.
start_service() {
  local dir="$1" name="$2" wd="$3"
  shift 3
  mkdir -p "$dir/logs" "$dir/pids" "$wd"
  local logf="$dir/logs/$name.log"
  : >"$logf"
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

gen_password() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

write_secret() { # FILE VALUE (mode 600)
  (umask 077 && printf '%s\n' "$2" >"$1")
}

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

# ------------------------------------------------------------- state checks --

# env_value STATE_DIR KEY: value of KEY in the env file (evaluated in a subshell).
env_value() {
  # shellcheck disable=SC1091
  ( set +u; source "$1/env" >/dev/null 2>&1; eval "printf '%s' \"\${$2:-}\"" )
}

all_alive() { # STATE_DIR
  local dir="$1" s pid
  for s in "${SERVICES[@]}"; do
    pid="$(read_pid "$dir" "$s")"
    [[ -n "$pid" ]] && pid_is_ours "$pid" "$dir" || return 1
  done
}

is_up() { # STATE_DIR: env present, all PIDs ours and alive, apiserver ready, glance healthy
  local dir="$1" url glance
  [[ -f "$dir/env" ]] || return 1
  all_alive "$dir" || return 1
  url="$(env_value "$dir" KUBE_APISERVER_URL)"
  glance="$(env_value "$dir" GLANCE_URL)"
  [[ "$(curl -s -m 2 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" "$url/readyz" 2>/dev/null)" == ok ]] || return 1
  [[ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$glance/healthcheck" 2>/dev/null)" == 200 ]] || return 1
}

clean_state() { # STATE_DIR: remove what a previous `up` created (only our entries)
  local dir="$1"
  rm -rf "$dir/etcd" "$dir/pki" "$dir/keystone" "$dir/glance" "$dir/secrets" \
         "$dir/pids" "$dir/logs" "$dir/env" "$dir/kubeconfig" "$dir/clouds.yaml"
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
    rm -f "$UP_DIR/env"
    (( rc == 0 )) && rc=1
  fi
  exit "$rc"
}

gen_pki() { # PKI_DIR
  local d="$1"
  mkdir -p "$d"
  (
    cd "$d"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=cloudimage-testenv-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days 3650 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr \
      -subj "/O=system:masters/CN=admin" 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=clientAuth" >admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days 3650 -extfile admin.ext -out admin.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr ./*.ext ca.srl
    chmod 644 ca.crt apiserver.crt admin.crt sa.pub
  )
}

write_kubeconfig() { # STATE_DIR URL
  local dir="$1" url="$2"
  (umask 077 && cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: cloudimage-testenv
  cluster:
    server: $url
    certificate-authority: $dir/pki/ca.crt
users:
- name: cloudimage-testenv-admin
  user:
    client-certificate: $dir/pki/admin.crt
    client-key: $dir/pki/admin.key
contexts:
- name: cloudimage-testenv
  context:
    cluster: cloudimage-testenv
    user: cloudimage-testenv-admin
    namespace: default
current-context: cloudimage-testenv
EOF
  )
}

# ks_api METHOD PATH [JSON]: call Keystone with the admin token; prints the body,
# fails on a non-2xx answer.
ks_api() {
  local method="$1" path="$2" body="${3:-}" out code
  # Token and body go through stdin/files, never argv (visible in `ps`).
  local args=(-s -m 30 -X "$method" -H @- -w '\n%{http_code}')
  local hdrs
  hdrs="$(printf 'X-Auth-Token: %s\nContent-Type: application/json\n' "$KS_ADMIN_TOKEN")"
  if [[ -n "$body" ]]; then
    out="$(curl "${args[@]}" --data-binary @<(printf '%s' "$body") "$KEYSTONE_URL$path" <<<"$hdrs")" \
      || { log "keystone $method $path: curl failed"; return 1; }
  else
    out="$(curl "${args[@]}" "$KEYSTONE_URL$path" <<<"$hdrs")" || { log "keystone $method $path: curl failed"; return 1; }
  fi
  code="${out##*$'\n'}"
  out="${out%$'\n'*}"
  if [[ "$code" != 2?? ]]; then
    log "keystone $method $path -> $code: ${out:0:300}"
    return 1
  fi
  printf '%s' "$out"
}

ks_token() { # USER PASSWORD PROJECT -> token (scoped to PROJECT in domain Default)
  local body
  body="$(PW="$2" jq -nc --arg u "$1" --arg pr "$3" '{auth:{identity:{methods:["password"],password:{user:{name:$u,domain:{id:"default"},password:$ENV.PW}}},scope:{project:{name:$pr,domain:{id:"default"}}}}}')"
  { curl -s -m 30 -o /dev/null -D - -H 'Content-Type: application/json' --data-binary @- "$KEYSTONE_URL/auth/tokens" <<<"$body" || true; } \
    | awk 'tolower($1)=="x-subject-token:" {gsub(/\r/,"",$2); print $2}'
}

ks_id() { # PATH JQ_COLLECTION NAME -> id of the named entity, or empty
  ks_api GET "$1?name=$3" | jq -r --arg c "$2" --arg n "$3" '.[$c][] | select(.name==$n) | .id' | head -1
}

ks_ensure_role() { # NAME -> id
  local id
  id="$(ks_id /roles roles "$1")"
  if [[ -z "$id" ]]; then
    id="$(ks_api POST /roles "$(jq -nc --arg n "$1" '{role:{name:$n}}')" | jq -r .role.id)"
  fi
  printf '%s' "$id"
}

ks_ensure_project() { # NAME -> id
  local id
  id="$(ks_id /projects projects "$1")"
  if [[ -z "$id" ]]; then
    id="$(ks_api POST /projects "$(jq -nc --arg n "$1" '{project:{name:$n,domain_id:"default",description:"cloudimage testenv"}}')" | jq -r .project.id)"
  fi
  printf '%s' "$id"
}

ks_ensure_user() { # NAME PASSWORD PROJECT_ID -> id
  local id
  id="$(ks_id /users users "$1")"
  if [[ -z "$id" ]]; then
    id="$(ks_api POST /users "$(PW="$2" jq -nc --arg n "$1" --arg pr "$3" '{user:{name:$n,password:$ENV.PW,domain_id:"default",default_project_id:$pr,enabled:true}}')" | jq -r .user.id)"
  else
    ks_api PATCH "/users/$id" "$(PW="$2" jq -nc '{user:{password:$ENV.PW}}')" >/dev/null
  fi
  printf '%s' "$id"
}

ks_grant() { # PROJECT_ID USER_ID ROLE_ID
  ks_api PUT "/projects/$1/users/$2/roles/$3" >/dev/null
}

setup_keystone_catalog() { # GLANCE_URL
  local glance_url="$1" svc ep iface
  svc="$(ks_api GET '/services?type=image' | jq -r '.services[] | select(.name=="glance") | .id' | head -1)"
  if [[ -z "$svc" ]]; then
    svc="$(ks_api POST /services '{"service":{"name":"glance","type":"image","description":"OpenStack Image (cloudimage testenv)","enabled":true}}' | jq -r .service.id)"
  fi
  for iface in public internal admin; do
    ep="$(ks_api GET "/endpoints?service_id=$svc&interface=$iface" | jq -r '.endpoints[0].id // empty')"
    if [[ -z "$ep" ]]; then
      ks_api POST /endpoints "$(jq -nc --arg s "$svc" --arg i "$iface" --arg u "$glance_url" '{endpoint:{service_id:$s,interface:$i,url:$u,region_id:"RegionOne",enabled:true}}')" >/dev/null
    else
      ks_api PATCH "/endpoints/$ep" "$(jq -nc --arg u "$glance_url" '{endpoint:{url:$u}}')" >/dev/null
    fi
  done
}

write_env_file() { # STATE_DIR
  local dir="$1" f="$1/env.tmp" k
  (umask 077 && : >"$f")
  for k in CLOUDIMAGE_TESTENV_DIR KUBECONFIG KUBECTL HELM KUBE_APISERVER_URL ETCD_URL \
           KEYSTONE_URL GLANCE_URL GLANCE_PORT KEYSTONE_PORT OS_CLOUDS_YAML OS_CLIENT_CONFIG_FILE \
           CLOUDIMAGE_TEST_ADMIN_PASSWORD CLOUDIMAGE_TEST_DEMO_PASSWORD CLOUDIMAGE_TEST_OTHER_PASSWORD \
           VENV ETCD_PID KUBE_APISERVER_PID KUBE_CONTROLLER_MANAGER_PID KEYSTONE_PID GLANCE_PID \
           ETCD_LOG KUBE_APISERVER_LOG KUBE_CONTROLLER_MANAGER_LOG KEYSTONE_LOG GLANCE_LOG; do
    printf 'export %s=%q\n' "$k" "${!k}" >>"$f"
  done
  mv "$f" "$dir/env"
}

write_clouds_yaml() { # STATE_DIR
  local dir="$1"
  (umask 077 && cat >"$dir/clouds.yaml" <<EOF
clouds:
  admin:
    auth:
      auth_url: $KEYSTONE_URL
      username: admin
      password: "$CLOUDIMAGE_TEST_ADMIN_PASSWORD"
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
  demo:
    auth:
      auth_url: $KEYSTONE_URL
      username: demo
      password: "$CLOUDIMAGE_TEST_DEMO_PASSWORD"
      project_name: demo
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
  other:
    auth:
      auth_url: $KEYSTONE_URL
      username: other
      password: "$CLOUDIMAGE_TEST_OTHER_PASSWORD"
      project_name: other
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
EOF
  )
}

verify_glance() { # as user demo: create an image, delete it (204)
  local token id code
  token="$(ks_token demo "$CLOUDIMAGE_TEST_DEMO_PASSWORD" demo)"
  [[ -n "$token" ]] || { log "verify: no Keystone token for demo"; return 1; }
  id="$(curl -s -m 30 -X POST -H "X-Auth-Token: $token" -H 'Content-Type: application/json' \
        -d '{"name":"testenv-selfcheck","disk_format":"raw","container_format":"bare"}' \
        "$GLANCE_URL/v2/images" | jq -r '.id // empty' 2>/dev/null || true)"
  [[ -n "$id" ]] || { log "verify: POST /v2/images as demo did not create an image"; tail -n 20 "$GLANCE_LOG" >&2; return 1; }
  code="$(curl -s -m 30 -o /dev/null -w '%{http_code}' -X DELETE -H "X-Auth-Token: $token" "$GLANCE_URL/v2/images/$id" || true)"
  [[ "$code" == 204 ]] || { log "verify: DELETE /v2/images/$id -> $code, expected 204"; tail -n 20 "$GLANCE_LOG" >&2; return 1; }
  log "verified: demo token, image create + delete (204)"
}

# Phases of `up`. They share state through the globals set in init_up_vars.

# Several of these are only read through ${!k} in write_env_file.
# shellcheck disable=SC2034
init_up_vars() { # STATE_DIR
  local dir="$1" ports
  mapfile -t ports < <(free_ports 5)
  ETCD_PORT="${ports[0]}" ETCD_PEER_PORT="${ports[1]}" APISERVER_PORT="${ports[2]}"
  KEYSTONE_PORT="${ports[3]}" GLANCE_PORT="${ports[4]}"

  CLOUDIMAGE_TESTENV_DIR="$dir"
  ETCD_URL="http://127.0.0.1:$ETCD_PORT"
  KUBE_APISERVER_URL="https://127.0.0.1:$APISERVER_PORT"
  KEYSTONE_URL="http://127.0.0.1:$KEYSTONE_PORT/v3"
  GLANCE_URL="http://127.0.0.1:$GLANCE_PORT"
  KUBECONFIG="$dir/kubeconfig"
  KUBECTL="$KUBE_BIN_DIR/kubectl"
  HELM="$HELM_BIN_DIR/helm"
  OS_CLOUDS_YAML="$dir/clouds.yaml"
  OS_CLIENT_CONFIG_FILE="$OS_CLOUDS_YAML"
  ETCD_LOG="$dir/logs/etcd.log"
  KUBE_APISERVER_LOG="$dir/logs/kube-apiserver.log"
  KUBE_CONTROLLER_MANAGER_LOG="$dir/logs/kube-controller-manager.log"
  KEYSTONE_LOG="$dir/logs/keystone.log"
  GLANCE_LOG="$dir/logs/glance.log"

  mkdir -p "$dir/logs" "$dir/pids" "$dir/secrets"
  chmod 700 "$dir/secrets"
  CLOUDIMAGE_TEST_ADMIN_PASSWORD="$(gen_password)"
  CLOUDIMAGE_TEST_DEMO_PASSWORD="$(gen_password)"
  CLOUDIMAGE_TEST_OTHER_PASSWORD="$(gen_password)"
  GLANCE_SERVICE_PASSWORD="$(gen_password)"
  write_secret "$dir/secrets/admin.password" "$CLOUDIMAGE_TEST_ADMIN_PASSWORD"
  write_secret "$dir/secrets/demo.password" "$CLOUDIMAGE_TEST_DEMO_PASSWORD"
  write_secret "$dir/secrets/other.password" "$CLOUDIMAGE_TEST_OTHER_PASSWORD"
  write_secret "$dir/secrets/glance.password" "$GLANCE_SERVICE_PASSWORD"
}

start_etcd() { # STATE_DIR
  local dir="$1"
  start_service "$dir" etcd "$dir/etcd" "$ETCD_BIN_DIR/etcd" \
    --name default \
    --data-dir "$dir/etcd/data" \
    --listen-client-urls "$ETCD_URL" \
    --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync
  wait_http "$dir" etcd "$SERVICE_READY_TIMEOUT" 200 "$ETCD_URL/health"
}

# Started without waiting: wait_apiserver, after the cloud side is up.
start_apiserver() { # STATE_DIR
  local dir="$1" adv=() ip
  gen_pki "$dir/pki"
  if [[ -n "${CLOUDIMAGE_TESTENV_ADVERTISE_ADDRESS:-}" ]]; then
    adv=(--advertise-address="$CLOUDIMAGE_TESTENV_ADVERTISE_ADDRESS")
  elif ! awk 'NR>1 && $2=="00000000" {found=1} END {exit !found}' /proc/net/route 2>/dev/null; then
    # No default route: kube-apiserver cannot pick an advertise address itself.
    ip="$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9.]+$' | grep -v '^127\.' | head -1 || true)"
    adv=(--advertise-address="${ip:-127.0.0.1}")
  fi
  # A loopback advertise address is refused by the default (lease) endpoint
  # reconciler ("may not be in the loopback range"); without a reconciler the
  # `kubernetes` Service just has no endpoints, which nothing here needs.
  if [[ "${adv[0]:-}" == --advertise-address=127.* ]]; then
    adv+=(--endpoint-reconciler-type=none)
  fi
  start_service "$dir" kube-apiserver "$dir/kube-apiserver" "$KUBE_BIN_DIR/kube-apiserver" \
    --etcd-servers="$ETCD_URL" \
    --bind-address=127.0.0.1 \
    --secure-port="$APISERVER_PORT" \
    "${adv[@]}" \
    --cert-dir="$dir/pki" \
    --tls-cert-file="$dir/pki/apiserver.crt" \
    --tls-private-key-file="$dir/pki/apiserver.key" \
    --client-ca-file="$dir/pki/ca.crt" \
    --authorization-mode=RBAC \
    --allow-privileged=true \
    --service-account-issuer="$KUBE_APISERVER_URL" \
    --service-account-key-file="$dir/pki/sa.pub" \
    --service-account-signing-key-file="$dir/pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --disable-admission-plugins=ServiceAccount
  APISERVER_STARTED_AT=$(now)
}

wait_apiserver() { # STATE_DIR
  local dir="$1" t
  t=$(( APISERVER_READY_TIMEOUT - ($(now) - APISERVER_STARTED_AT) ))
  (( t < 30 )) && t=30
  wait_http "$dir" kube-apiserver "$t" body:ok \
    --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
    "$KUBE_APISERVER_URL/readyz"
  write_kubeconfig "$dir" "$KUBE_APISERVER_URL"
  "$KUBECTL" --kubeconfig "$KUBECONFIG" get --raw /readyz >/dev/null \
    || { log "kubectl with $KUBECONFIG cannot reach the apiserver"; return 1; }
}

# Only the controllers the operator's users meet when they remove things: the
# namespace controller (finishes `kubectl delete namespace`) and the garbage
# collector (deletes objects whose owner is gone). No leader election, no
# serving port, no cloud provider. Started once the apiserver is ready.
start_controller_manager() { # STATE_DIR
  local dir="$1"
  start_service "$dir" kube-controller-manager "$dir/kube-controller-manager" \
    "$KUBE_BIN_DIR/kube-controller-manager" \
    --kubeconfig="$KUBECONFIG" \
    --controllers=namespace,garbagecollector \
    --leader-elect=false \
    --secure-port=0
  # It has no health port (--secure-port=0): ready once its caches synced,
  # which its log says; a deadline keeps a silent failure from hanging `up`.
  local deadline=$(( $(now) + SERVICE_READY_TIMEOUT )) pid
  pid="$(read_pid "$dir" kube-controller-manager)"
  until grep -q 'Caches are synced' "$dir/logs/kube-controller-manager.log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "kube-controller-manager (pid $pid) exited; last lines of its log:"
      tail -n 40 "$dir/logs/kube-controller-manager.log" >&2 || true
      return 1
    fi
    if (( $(now) >= deadline )); then
      log "kube-controller-manager caches not synced after ${SERVICE_READY_TIMEOUT}s; last lines of its log:"
      tail -n 40 "$dir/logs/kube-controller-manager.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
  log "kube-controller-manager ready"
}

start_keystone() { # STATE_DIR: configure, bootstrap, start (no wait)
  local dir="$1" kdir="$1/keystone"
  mkdir -p "$kdir/etc"
  (umask 077 && mkdir -p "$kdir/fernet-keys" "$kdir/receipt-keys" "$kdir/credential-keys")
  cat >"$kdir/etc/keystone.conf" <<EOF
[DEFAULT]
use_stderr = true
[database]
connection = sqlite:///$kdir/keystone.sqlite
[identity]
# bcrypt cost: the minimum; tests authenticate often
password_hash_rounds = 4
[token]
provider = fernet
[fernet_tokens]
key_repository = $kdir/fernet-keys
[fernet_receipts]
key_repository = $kdir/receipt-keys
[credential]
key_repository = $kdir/credential-keys
EOF
  cat >"$kdir/etc/gunicorn.conf.py" <<EOF
# Keystone parses sys.argv itself: gunicorn must get no command-line options.
wsgi_app = "keystone.wsgi.api:application"
bind = "127.0.0.1:$KEYSTONE_PORT"
workers = 1
threads = 1
timeout = 120
graceful_timeout = 5
control_socket_disable = True
EOF
  local km=("$VENV/bin/keystone-manage" --config-file "$kdir/etc/keystone.conf")
  if ! (
    cd "$kdir"
    "${km[@]}" db_sync
    # What `keystone-manage fernet_setup`, `receipt_setup` and `credential_setup`
    # do, with keystone's own code, in one interpreter (saves ~4 s of imports).
    "$VENV/bin/python" - "$kdir" <<'PY'
import os, sys
from keystone.common import fernet_utils
kdir = sys.argv[1]
for sub, group in (("fernet-keys", "fernet_tokens"), ("receipt-keys", "fernet_receipts"),
                   ("credential-keys", "credential")):
    fernet_utils.FernetUtils(os.path.join(kdir, sub), 3, group).initialize_key_repository(
        os.getuid(), os.getgid())
PY
    # The password through the environment, not argv (visible in ps).
    OS_BOOTSTRAP_PASSWORD="$CLOUDIMAGE_TEST_ADMIN_PASSWORD" "${km[@]}" bootstrap \
      --bootstrap-region-id RegionOne \
      --bootstrap-admin-url "$KEYSTONE_URL/" \
      --bootstrap-public-url "$KEYSTONE_URL/" \
      --bootstrap-internal-url "$KEYSTONE_URL/"
  ) >"$dir/logs/keystone-manage.log" 2>&1; then
    log "keystone-manage failed; last lines of $dir/logs/keystone-manage.log:"
    tail -n 30 "$dir/logs/keystone-manage.log" >&2
    return 1
  fi
  start_service "$dir" keystone "$kdir" env OS_KEYSTONE_CONFIG_DIR="$kdir/etc" \
    GUNICORN_CMD_ARGS="--config $kdir/etc/gunicorn.conf.py" "$VENV/bin/gunicorn"
}

populate_keystone() { # STATE_DIR: catalog, projects, users, roles (through the API)
  local dir="$1" r_service r_member p_service p_demo p_other u
  wait_http "$dir" keystone "$SERVICE_READY_TIMEOUT" 200 "$KEYSTONE_URL"
  KS_ADMIN_TOKEN="$(ks_token admin "$CLOUDIMAGE_TEST_ADMIN_PASSWORD" admin)"
  [[ -n "$KS_ADMIN_TOKEN" ]] || { log "no admin token from Keystone"; tail -n 30 "$KEYSTONE_LOG" >&2; return 1; }
  setup_keystone_catalog "$GLANCE_URL"
  r_service="$(ks_ensure_role service)"
  r_member="$(ks_ensure_role member)"
  p_service="$(ks_ensure_project service)"
  p_demo="$(ks_ensure_project demo)"
  p_other="$(ks_ensure_project other)"
  u="$(ks_ensure_user glance "$GLANCE_SERVICE_PASSWORD" "$p_service")"
  ks_grant "$p_service" "$u" "$r_service"
  # (role `service` is enough for keystonemiddleware to validate tokens; no `admin`.)
  u="$(ks_ensure_user demo "$CLOUDIMAGE_TEST_DEMO_PASSWORD" "$p_demo")"
  ks_grant "$p_demo" "$u" "$r_member"
  u="$(ks_ensure_user other "$CLOUDIMAGE_TEST_OTHER_PASSWORD" "$p_other")"
  ks_grant "$p_other" "$u" "$r_member"
  log "keystone: image service -> $GLANCE_URL; projects service/demo/other; users glance/demo/other"
}

prepare_glance() { # STATE_DIR: config + db_sync (needs no running Keystone)
  local dir="$1" gdir="$1/glance"
  mkdir -p "$gdir/etc" "$gdir/data/images" "$gdir/data/staging" "$gdir/data/tasks"
  cp "$VENV/etc/glance/glance-api-paste.ini" "$gdir/etc/"
  (umask 077 && cat >"$gdir/etc/glance-api.conf" <<EOF
[DEFAULT]
enabled_backends = fs:file
use_stderr = true
[database]
connection = sqlite:///$gdir/data/glance.sqlite
sqlite_synchronous = False
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $gdir/data/images/
[os_glance_staging_store]
filesystem_store_datadir = $gdir/data/staging/
[os_glance_tasks_store]
filesystem_store_datadir = $gdir/data/tasks/
[paste_deploy]
flavor = keystone
[keystone_authtoken]
www_authenticate_uri = $KEYSTONE_URL
auth_url = $KEYSTONE_URL
auth_type = password
username = glance
password = $GLANCE_SERVICE_PASSWORD
user_domain_id = default
project_name = service
project_domain_id = default
region_name = RegionOne
EOF
  )
  if ! (cd "$gdir" && "$VENV/bin/glance-manage" --config-file "$gdir/etc/glance-api.conf" db_sync) \
      >"$dir/logs/glance-manage.log" 2>&1; then
    log "glance-manage db_sync failed; last lines of $dir/logs/glance-manage.log:"
    tail -n 30 "$dir/logs/glance-manage.log" >&2
    return 1
  fi
}

start_glance() { # STATE_DIR
  local dir="$1" gdir="$1/glance"
  start_service "$dir" glance "$gdir" env OS_GLANCE_CONFIG_DIR="$gdir/etc" \
    "$VENV/bin/gunicorn" --bind "127.0.0.1:$GLANCE_PORT" --workers 1 --threads 1 \
    --timeout 120 --graceful-timeout 5 --no-control-socket glance.wsgi.api:application
  wait_http "$dir" glance "$SERVICE_READY_TIMEOUT" 200 "$GLANCE_URL/healthcheck"
}

finish_up() { # STATE_DIR: record PIDs, write clouds.yaml and env
  local dir="$1"
  ETCD_PID="$(read_pid "$dir" etcd)"
  KUBE_APISERVER_PID="$(read_pid "$dir" kube-apiserver)"
  KUBE_CONTROLLER_MANAGER_PID="$(read_pid "$dir" kube-controller-manager)"
  KEYSTONE_PID="$(read_pid "$dir" keystone)"
  GLANCE_PID="$(read_pid "$dir" glance)"
  write_clouds_yaml "$dir"
  write_env_file "$dir"
}

cmd_up() {
  local dir
  dir="$(abs_dir "${1:-$DEFAULT_STATE_DIR}")"

  build_tools

  mkdir -p "$dir"
  exec 9>"$dir/.lock"
  flock -w 300 9 || die "another up/down holds $dir/.lock"

  if is_up "$dir"; then
    echo "already up: $dir"
    return 0
  fi
  if [[ -e "$dir/env" ]] || compgen -G "$dir/pids/*.pid" >/dev/null; then
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
  rm -f "$dir/env"
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

usage() {
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
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
