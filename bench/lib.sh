# shellcheck shell=bash disable=SC2034
# (SC2034: the variables set here are read by the scripts that source it.)
# Shared by bench/prune.sh and bench/watch.sh: sourced, not run.
#
# Everything a run creates is named after its RUN id and removed on exit by a
# trap: the processes it started (by PID), its namespaces (finalizers stripped
# if their operator is already gone), its cluster objects (FlowSchemas and a
# ClusterRoleBinding labelled cloudimage.dev/bench=RUN) and the Glance images it
# created (by id). ORC's CRDs, once installed, are left installed.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/.." && pwd)"
CACHE="${CLOUDIMAGE_CACHE:-$HOME/.cache/cloudimage-testenv}"

PIDS=()        # processes this run started, stopped on exit
NAMESPACES=()  # namespaces this run created, deleted on exit
IMAGE_FILES=() # files of Glance image ids this run created, deleted on exit

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
now() { printf '%s\n' "$EPOCHREALTIME"; }
# elapsed T0 [T1]: seconds between two `now`s, 2 decimals.
elapsed() { awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN{printf "%.2f", b-a}'; }

bench_init() {
  local envfile="${CLOUDIMAGE_TESTENV_DIR:-$CACHE/run}/env"
  [[ -f "$envfile" ]] || die "no test environment ($envfile): start one with testenv/env.sh up"
  # shellcheck disable=SC1090
  source "$envfile"
  local c
  for c in curl jq python3 awk mkfifo; do
    command -v "$c" >/dev/null || die "missing command: $c"
  done
  [[ -x "$KUBECTL" ]] || die "kubectl not found at $KUBECTL"
  PKI="$CLOUDIMAGE_TESTENV_DIR/pki"
  RUN="${RUN:-b$(date +%m%d%H%M%S)$((RANDOM % 10))}"
  WORK="${BENCH_WORK:-/tmp/cloudimage-bench-$RUN}"
  mkdir -p "$WORK"
  CLK_TCK="$(getconf CLK_TCK)"
  CONCURRENCY="${CONCURRENCY:-8}"
  trap cleanup EXIT
  trap 'log "interrupted"; exit 130' INT TERM
  log "run $RUN, logs and raw numbers in $WORK"
}

# --- kube-apiserver, as the test environment's admin ------------------------

kcurl() {
  curl -sS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"
}

# kreq METHOD PATH [JSON-BODY [CONTENT-TYPE]]: the answer's body; fails on >= 400.
kreq() {
  local args=(-X "$1" "$KUBE_APISERVER_URL$2" --fail-with-body --max-time 120)
  if (($# >= 3)); then
    args+=(-H "Content-Type: ${4:-application/json}" --data-binary "$3")
  fi
  kcurl "${args[@]}"
}

kubectl_() { "$KUBECTL" --kubeconfig "$KUBECONFIG" --request-timeout=60s "$@"; }

make_namespace() {
  kreq POST /api/v1/namespaces "{\"metadata\":{\"name\":\"$1\",\"labels\":{\"cloudimage.dev/bench\":\"$RUN\"}}}" >/dev/null
  NAMESPACES+=("$1")
}

# list_count PATH: how many objects a collection holds (one LIST with limit=1).
list_count() {
  local out
  out="$(kreq GET "$1?limit=1" 2>/dev/null)" || return 1
  jq '(.items | length) + (.metadata.remainingItemCount // 0)' <<<"$out"
}


# pcurl CONFIG: runs the transfers of a curl config (sections separated by
# "next", each with its own max-time), $CONCURRENCY at a time over kept-alive
# connections; each transfer writes its own line (write-out). Never fails:
# callers check the lines.
pcurl() {
  sed -i '${/^next$/d}' "$1"
  curl --no-progress-meter --parallel --parallel-max "$CONCURRENCY" -K "$1" || true
}

# post_many PATH JSONL: POSTs every line (one object each) to PATH,
# $CONCURRENCY at a time over kept-alive connections; fails unless all 201.
post_many() {
  local path=$1 file=$2 cfg codes
  cfg="$(mktemp "$WORK/post.XXXX.cfg")"
  jq -r --arg url "$KUBE_APISERVER_URL$path" --arg pki "$PKI" '
    "url = \"\($url)\"\nrequest = \"POST\"\ncacert = \"\($pki)/ca.crt\"\ncert = \"\($pki)/admin.crt\"\nkey = \"\($pki)/admin.key\"\nheader = \"Content-Type: application/json\"\nmax-time = 120\noutput = \"/dev/null\"\nwrite-out = \"%{http_code}\\n\"\ndata = \(tojson | tojson)\nnext"' \
    "$file" >"$cfg"
  codes="$(pcurl "$cfg")"
  rm -f "$cfg"
  local bad
  bad="$(grep -vc '^201$' <<<"$codes" || true)"
  ((bad == 0)) || die "$bad of $(wc -l <"$file") creates under $path were not answered 201: $(sort <<<"$codes" | uniq -c | tr '\n' ' ')"
}

# delete_all PATH: marks every object of the collection deleted, in one
# request (DELETE of the collection). The API server deletes a collection
# one object after another within its 60 s request timeout: when that is not
# enough (thousands of objects on a busy machine), the objects not yet
# marked are deleted one by one, $CONCURRENCY at a time. DELETE_HOW says
# which way it went.
delete_all() {
  local path=$1 out cfg codes
  if kreq DELETE "$path" '{"propagationPolicy":"Background"}' >/dev/null 2>"$WORK/deletecollection.err"; then
    DELETE_HOW="one DELETE of the collection"
    return
  fi
  log "DELETE of the collection failed ($(tr -d '\n' <"$WORK/deletecollection.err" | cut -c1-200)); deleting the rest one by one"
  out="$(kreq GET "$path")" || die "cannot list $path"
  cfg="$(mktemp "$WORK/delete.XXXX.cfg")"
  jq -r --arg url "$KUBE_APISERVER_URL$path" --arg pki "$PKI" '.items[] | select(.metadata.deletionTimestamp | not) |
    "url = \"\($url)/\(.metadata.name)\"\nrequest = \"DELETE\"\ncacert = \"\($pki)/ca.crt\"\ncert = \"\($pki)/admin.crt\"\nkey = \"\($pki)/admin.key\"\nmax-time = 120\noutput = \"/dev/null\"\nwrite-out = \"%{http_code}\\n\"\nnext"' <<<"$out" >"$cfg"
  codes=""
  [[ -s "$cfg" ]] && codes="$(pcurl "$cfg")"
  rm -f "$cfg"
  DELETE_HOW="DELETE of the collection (timed out), then $(grep -c '^200$' <<<"$codes" || true) single DELETEs"
}

# strip_finalizers PATH: removes the finalizers of every object in a collection.
strip_finalizers() {
  local out cfg
  out="$(kreq GET "$1" 2>/dev/null)" || return 0
  cfg="$(mktemp "$WORK/strip.XXXX.cfg")"
  jq -r --arg url "$KUBE_APISERVER_URL$1" --arg pki "$PKI" '.items[] | select(.metadata.finalizers) |
    "url = \"\($url)/\(.metadata.name)\"\nrequest = \"PATCH\"\ncacert = \"\($pki)/ca.crt\"\ncert = \"\($pki)/admin.crt\"\nkey = \"\($pki)/admin.key\"\nheader = \"Content-Type: application/merge-patch+json\"\ndata = \"{\\\"metadata\\\":{\\\"finalizers\\\":null}}\"\nmax-time = 120\noutput = \"/dev/null\"\nnext"' <<<"$out" >"$cfg"
  [[ -s "$cfg" ]] && pcurl "$cfg" >/dev/null
  rm -f "$cfg"
}

# --- watching a collection until N objects reach a state -----------------------
#
# watch_start NAME PATH N PRED DEADLINE: one LIST now (so what happens next is
# seen), then, in the background, a watch from that LIST's resourceVersion
# that writes the time at which N objects of PATH satisfy PRED to
# $WORK/NAME.done ($WORK/NAME.progress: the count so far). PRED is a jq
# predicate on an object, or "gone" (N objects deleted). A watch the server
# ends (a timeout, a restart of the API server, 410 Gone) is resumed from a
# fresh LIST; restarts are logged to $WORK/NAME.restarts.
watch_start() {
  local name=$1 path=$2 n=$3 pred=$4 deadline=$5
  rm -f "$WORK/$name".{done,progress,restarts,rv,seed,base}
  _watch_list "$name" "$path" "$n" "$pred" || die "cannot list $path"
  local end=$((EPOCHSECONDS + deadline))
  _watch_loop "$name" "$path" "$n" "$pred" "$end" &
  track_pid "$!"
  WATCHER_PID=$!
}

# _watch_list NAME PATH N PRED: the LIST a watch starts from: its
# resourceVersion, the names already done (PRED) and their count.
_watch_list() {
  local name=$1 path=$2 n=$3 pred=$4 out
  out="$(kreq GET "$path")" || return 1
  jq -r .metadata.resourceVersion <<<"$out" >"$WORK/$name.rv"
  if [[ "$pred" == gone ]]; then
    echo '[]' >"$WORK/$name.seed"
    jq --argjson n "$n" '$n - (.items | length)' <<<"$out" >"$WORK/$name.base"
  else
    jq -c "[.items[] | select($pred) | .metadata.name]" <<<"$out" >"$WORK/$name.seed"
    jq length "$WORK/$name.seed" >"$WORK/$name.base"
  fi
}

_watch_loop() {
  local name=$1 path=$2 n=$3 pred=$4 end=$5 fifo="$WORK/$1.fifo" match
  if [[ "$pred" == gone ]]; then
    match="\$e.type == \"DELETED\""
  else
    match="\$e.type != \"DELETED\" and (\$e.object | $pred)"
  fi
  while :; do
    local t_list base
    t_list="$(now)"
    base="$(cat "$WORK/$name.base")"
    if ((base >= n)); then
      echo "$t_list" >"$WORK/$name.done"
      return
    fi
    rm -f "$fifo"
    mkfifo "$fifo"
    # curl itself, not a function in a subshell: $! is the process to stop.
    curl -sS --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" -N --max-time $((end - EPOCHSECONDS + 1)) \
      "$KUBE_APISERVER_URL$path?watch=1&resourceVersion=$(cat "$WORK/$name.rv")" >"$fifo" 2>>"$WORK/$name.curl.err" &
    local cpid=$!
    echo "$cpid" >"$WORK/$name.curlpid"
    start_time "$cpid" >"$WORK/pid.$cpid"
    jq --unbuffered -rn --argjson n "$n" --argjson base "$base" --slurpfile seed "$WORK/$name.seed" "label \$out
      | foreach inputs as \$e ({s: (\$seed[0] | map({key: ., value: true}) | from_entries), c: \$base, new: false, err: false};
          if \$e.type == \"ERROR\" then .err = true
          elif ($match) and (.s[\$e.object.metadata.name] | not) then .s[\$e.object.metadata.name] = true | .c += 1 | .new = true
          else .new = false end;
          if .err then \"restart\" elif .new then .c else empty end)
      | if . == \"restart\" then (., break \$out) elif . >= \$n then (\"done\", break \$out) elif . % 50 == 0 then . else empty end" \
      <"$fifo" 2>>"$WORK/$name.jq.err" |
      while read -r c; do
        case "$c" in
          done) now >"$WORK/$name.done"; break ;;
          restart) break ;;
          *) printf '%s\n' "$c" >"$WORK/$name.progress" ;;
        esac
      done
    kill "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
    [[ -s "$WORK/$name.done" ]] && return
    ((EPOCHSECONDS < end)) || return
    echo "$(date -u +%T) watch ended ($(tail -1 "$WORK/$name.curl.err" 2>/dev/null)); resuming from a new LIST" >>"$WORK/$name.restarts"
    sleep 1
    until _watch_list "$name" "$path" "$n" "$pred"; do
      ((EPOCHSECONDS < end)) || return
      sleep 2
    done
  done
}

# watch_wait NAME DEADLINE WHAT: waits for watch NAME; echoes its completion time.
watch_wait() {
  local name=$1 deadline=$2 what=$3 t0=$EPOCHREALTIME last=0
  while [[ ! -s "$WORK/$name.done" ]]; do
    if ! kill -0 "$WATCHER_PID" 2>/dev/null && [[ ! -s "$WORK/$name.done" ]]; then
      die "the watch for $what ended at $(cat "$WORK/$name.progress" 2>/dev/null || echo 0): $(cat "$WORK/$name.curl.err" "$WORK/$name.jq.err" "$WORK/$name.restarts" 2>/dev/null)"
    fi
    local e
    e="$(elapsed "$t0")"
    if awk -v e="$e" -v d="$deadline" 'BEGIN{exit !(e > d)}'; then
      die "timed out after ${deadline}s waiting for $what (reached $(cat "$WORK/$name.progress" 2>/dev/null || echo 0))"
    fi
    if ((${e%.*} >= last + 15)); then
      last=${e%.*}
      log "  ... $what: $(cat "$WORK/$name.progress" 2>/dev/null || echo 0) after ${e}s"
    fi
    sleep 0.05
  done
  [[ -s "$WORK/$name.restarts" ]] && log "  (the watch for $what was resumed: $(wc -l <"$WORK/$name.restarts") times)"
  cat "$WORK/$name.done"
}

# apiserver_alive: the API server the run started with still runs (a
# restart resets its counters: the run's numbers would be wrong).
apiserver_alive() {
  kill -0 "$KUBE_APISERVER_PID" 2>/dev/null ||
    die "the test environment's kube-apiserver (PID $KUBE_APISERVER_PID) was restarted during the run: its counters restarted too; run again"
}

# --- the identity the operators run as, and exact per-verb request counts -----
#
# apiserver_request_total counts everyone's requests (other tests may run).
# The operators therefore run as a ServiceAccount of their own, and one
# FlowSchema per (verb, resource) matches that account only:
# apiserver_flowcontrol_dispatched_requests_total{flow_schema=...} then counts
# exactly the operator's requests. Priority level workload-low is where a
# ServiceAccount's requests land anyway (FlowSchema service-accounts).

APF_VERBS=(get list watch create update patch delete deletecollection)
APF_RESOURCES=(cloudimages cloudimages/status secrets events leases images images/status)

setup_identity() {
  SA_NS="cloudimage-bench-$RUN"
  make_namespace "$SA_NS"
  kreq POST "/api/v1/namespaces/$SA_NS/serviceaccounts" '{"metadata":{"name":"operator"}}' >/dev/null
  kreq POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings "{
    \"metadata\":{\"name\":\"cloudimage-bench-$RUN\",\"labels\":{\"cloudimage.dev/bench\":\"$RUN\"}},
    \"roleRef\":{\"apiGroup\":\"rbac.authorization.k8s.io\",\"kind\":\"ClusterRole\",\"name\":\"cluster-admin\"},
    \"subjects\":[{\"kind\":\"ServiceAccount\",\"name\":\"operator\",\"namespace\":\"$SA_NS\"}]}" >/dev/null
  local subject="{\"kind\":\"ServiceAccount\",\"serviceAccount\":{\"name\":\"operator\",\"namespace\":\"$SA_NS\"}}"
  local i=0 v r fs="$WORK/flowschemas.jsonl"
  : >"$fs"
  for v in "${APF_VERBS[@]}"; do
    for r in "${APF_RESOURCES[@]}"; do
      i=$((i + 1))
      printf '{"apiVersion":"flowcontrol.apiserver.k8s.io/v1","kind":"FlowSchema","metadata":{"name":"cib-%s.%s.%s","labels":{"cloudimage.dev/bench":"%s"}},"spec":{"priorityLevelConfiguration":{"name":"workload-low"},"matchingPrecedence":%d,"distinguisherMethod":{"type":"ByUser"},"rules":[{"subjects":[%s],"resourceRules":[{"verbs":["%s"],"apiGroups":["*"],"resources":["%s"],"namespaces":["*"],"clusterScope":true}]}]}}\n' \
        "$RUN" "$v" "${r//\//.}" "$RUN" $((1000 + i)) "$subject" "$v" "$r" >>"$fs"
    done
  done
  printf '{"apiVersion":"flowcontrol.apiserver.k8s.io/v1","kind":"FlowSchema","metadata":{"name":"cib-%s.other","labels":{"cloudimage.dev/bench":"%s"}},"spec":{"priorityLevelConfiguration":{"name":"workload-low"},"matchingPrecedence":1999,"distinguisherMethod":{"type":"ByUser"},"rules":[{"subjects":[%s],"resourceRules":[{"verbs":["*"],"apiGroups":["*"],"resources":["*"],"namespaces":["*"],"clusterScope":true}],"nonResourceRules":[{"verbs":["*"],"nonResourceURLs":["*"]}]}]}}\n' \
    "$RUN" "$RUN" "$subject" >>"$fs"
  post_many /apis/flowcontrol.apiserver.k8s.io/v1/flowschemas "$fs"
  local token
  token="$(kreq POST "/api/v1/namespaces/$SA_NS/serviceaccounts/operator/token" \
    '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":14400}}' | jq -r .status.token)"
  [[ -n "$token" && "$token" != null ]] || die "no ServiceAccount token"
  SA_KUBECONFIG="$WORK/operator.kubeconfig"
  (
    umask 077
    cat >"$SA_KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster: {server: "$KUBE_APISERVER_URL", certificate-authority: "$PKI/ca.crt"}
users:
- name: operator
  user: {token: "$token"}
contexts:
- name: bench
  context: {cluster: bench, user: operator}
current-context: bench
EOF
  )
  # The FlowSchemas take effect once the APF controller has seen them.
  local deadline=$((SECONDS + 30))
  until curl -sS --cacert "$PKI/ca.crt" -H "Authorization: Bearer $token" "$KUBE_APISERVER_URL/version" >/dev/null 2>&1 &&
    grep -qF "flow_schema=\"cib-$RUN.other\"" <<<"$(apiserver_metrics)"; do
    ((SECONDS < deadline)) || die "the bench FlowSchemas did not take effect within 30 s"
    sleep 0.5
  done
}

apiserver_metrics() { kcurl --max-time 60 "$KUBE_APISERVER_URL/metrics"; }

# api_snapshot FILE: the counters the bench compares before/after.
api_snapshot() {
  apiserver_metrics | grep -E "^apiserver_flowcontrol_dispatched_requests_total\{flow_schema=\"cib-$RUN\.|^apiserver_request_total\{" >"$1" || true
}

# api_diff BEFORE AFTER: "verb resource count" of the operator's own requests.
api_diff() {
  awk -v run="cib-$RUN." '
    function key(line,   fs) {
      match(line, /flow_schema="[^"]*"/); fs = substr(line, RSTART + 13, RLENGTH - 14)
      fs = substr(fs, length(run) + 1)
      if (fs == "other") return "* other"
      v = fs; sub(/\..*/, "", v); r = fs; sub(/^[^.]*\./, "", r); gsub(/\./, "/", r)
      return v " " r
    }
    /^apiserver_flowcontrol_dispatched_requests_total/ {
      k = key($0); if (FILENAME == ARGV[1]) before[k] += $NF; else after[k] += $NF
    }
    END { for (k in after) if (after[k] - before[k] > 0) print k, after[k] - before[k] }' "$1" "$2" | sort -k3,3nr
}

# api_diff_all BEFORE AFTER: apiserver_request_total by verb/resource/subresource
# for the resources the operators use, everyone's requests (a cross-check;
# the bench's own and other clients' requests are included).
api_diff_all() {
  awk '
    function lab(line, name,   re) {
      re = name "=\"[^\"]*\""
      if (match(line, re)) return substr(line, RSTART + length(name) + 2, RLENGTH - length(name) - 3)
      return ""
    }
    /^apiserver_request_total/ && /resource="(cloudimages|secrets|events|leases|images)"/ {
      r = lab($0, "resource"); s = lab($0, "subresource"); if (s != "") r = r "/" s
      k = lab($0, "verb") " " r
      if (FILENAME == ARGV[1]) before[k] += $NF; else after[k] += $NF
    }
    END { for (k in after) if (after[k] - before[k] > 0) print k, after[k] - before[k] }' "$1" "$2" | sort -k3,3nr
}

# per_deletion_summary DIFF N: "verb resource per-deletion, ..." (rare ones as totals);
# writes_per_deletion DIFF N: creates, updates, patches and deletes per deletion.
per_deletion_summary() {
  awk -v n="$2" '{ printf "%s%s %s ", sep, $1, $2; if ($3 / n >= 0.01) printf "%.2f", $3 / n; else printf "(%d in all)", $3; sep = ", " } END { if (!NR) printf "none" }' "$1"
}
writes_per_deletion() {
  awk -v n="$2" '$1 ~ /^(create|update|patch|delete|deletecollection)$/ { w += $3 } END { printf "%.2f", w / n }' "$1"
}

# --- processes -----------------------------------------------------------------

# proc_stats PID: "VmRSS_MiB VmHWM_MiB CPU_seconds" (user + system).
proc_stats() {
  local pid=$1 rss hwm cpu
  rss="$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")"
  hwm="$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")"
  # Fields 14 and 15 (utime, stime) after the parenthesised command name.
  cpu="$(sed 's/^.*) //' "/proc/$pid/stat" | awk -v t="$CLK_TCK" '{printf "%.2f", ($12 + $13) / t}')"
  echo "$rss $hwm $cpu"
}

# proc_cpu PID [CHILDREN]: CPU seconds (user + system) of a process, with
# CHILDREN=1 those of its reaped children too.
proc_cpu() {
  sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null |
    awk -v t="$CLK_TCK" -v c="${2:-0}" '{printf "%.2f\n", ($12 + $13 + (c ? $14 + $15 : 0)) / t}'
}

# infra_cpu: "KUBE_ETCD GLANCE" CPU seconds so far: kube-apiserver + etcd of
# the test environment, and Glance (its gunicorn master with reaped workers,
# plus the live workers).
infra_cpu() {
  local k g p
  k="$(awk -v a="$(proc_cpu "$KUBE_APISERVER_PID")" -v b="$(proc_cpu "$ETCD_PID")" 'BEGIN{printf "%.2f", a + b}')"
  g="$(proc_cpu "$GLANCE_PID" 1)"
  for p in $(pgrep -P "$GLANCE_PID"); do
    g="$(awk -v a="$g" -v b="$(proc_cpu "$p")" 'BEGIN{printf "%.2f", a + b}')"
  done
  echo "$k $g"
}

# infra_diff BEFORE AFTER: "KUBE_ETCD_S GLANCE_S" spent between two infra_cpu.
infra_diff() { awk -v a="$1" -v b="$2" 'BEGIN{split(a, x, " "); split(b, y, " "); printf "%.1f / %.1f", y[1] - x[1], y[2] - x[2]}'; }

# start_time PID: the process's start time (clock ticks since boot), which
# tells it apart from a later process that got the same PID.
start_time() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

# track_pid PID: remembers a process this run started (and when it started).
track_pid() {
  PIDS+=("$1")
  start_time "$1" >"$WORK/pid.$1"
}

# stop_pid PID [GRACE]: SIGTERM, then SIGKILL after GRACE seconds; only if
# PID is still the process this run started (same start time).
stop_pid() {
  local pid=$1 grace=${2:-10} i
  kill -0 "$pid" 2>/dev/null || return 0
  if [[ -f "$WORK/pid.$pid" && "$(start_time "$pid")" != "$(cat "$WORK/pid.$pid")" ]]; then
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

# --- the cloud -------------------------------------------------------------------

# token USER [KEYSTONE]: a project-scoped token (the project has the user's name).
token() {
  local user=$1 ks=${2:-$KEYSTONE_URL} pw
  pw="CLOUDIMAGE_TEST_${user^^}_PASSWORD"
  curl -sS --fail-with-body --max-time 30 -o /dev/null -D - -H 'Content-Type: application/json' \
    -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"$user\",\"domain\":{\"name\":\"Default\"},\"password\":\"${!pw}\"}}},\"scope\":{\"project\":{\"name\":\"$user\",\"domain\":{\"name\":\"Default\"}}}}}" \
    "${ks%/}/auth/tokens" | awk 'tolower($1) == "x-subject-token:" {print $2}' | tr -d '\r'
}

# clouds_yaml USER AUTH_URL: a clouds.yaml with one cloud, "bench".
clouds_yaml() {
  local user=$1 pw="CLOUDIMAGE_TEST_${1^^}_PASSWORD"
  printf 'clouds:\n  bench:\n    auth:\n      auth_url: %s\n      username: %s\n      password: "%s"\n      project_name: %s\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n    interface: public\n    identity_api_version: 3\n' \
    "$2" "$user" "${!pw}" "$user"
}

# put_secret NS NAME USER AUTH_URL: the credentials Secret (key clouds.yaml).
put_secret() {
  local body
  body="$(jq -n --arg name "$2" --arg y "$(clouds_yaml "$3" "$4")" '{metadata: {name: $name}, stringData: {"clouds.yaml": $y}}')"
  kreq POST "/api/v1/namespaces/$1/secrets" "$body" >/dev/null
}

# The counting relay in front of Keystone and Glance (bench/relay.py). All
# cloud traffic of the floor and both operators passes it, so each has the
# same extra hop and every call is counted; RELAY=0 bypasses it (no counts).
start_relay() {
  if [[ "${RELAY:-1}" == 0 ]]; then
    RELAY_KEYSTONE="$KEYSTONE_URL"
    RELAY_GLANCE="$GLANCE_URL"
    return
  fi
  local ports="$WORK/relay.ports"
  python3 "$BENCH_DIR/relay.py" --keystone "${KEYSTONE_URL%/v3}" --glance "$GLANCE_URL" --ports-file "$ports" \
    --timeline "$WORK/relay.timeline" >"$WORK/relay.log" 2>&1 &
  track_pid "$!"
  RELAY_PID=$!
  local deadline=$((SECONDS + 20))
  until [[ -s "$ports" ]]; do
    ((SECONDS < deadline)) || die "the relay did not start: $(cat "$WORK/relay.log")"
    sleep 0.1
  done
  local kp gp
  read -r kp gp <"$ports"
  RELAY_KEYSTONE="http://127.0.0.1:$kp/v3"
  RELAY_GLANCE="http://127.0.0.1:$gp"
}

# relay_counts FILE: the relay's counters so far ({} without a relay).
relay_counts() {
  if [[ "${RELAY:-1}" == 0 ]]; then echo '{}' >"$1"; else curl -sS --max-time 30 "$RELAY_GLANCE/__relay/counts" >"$1"; fi
}

# relay_diff BEFORE AFTER: "service method path status count" of the calls between.
relay_diff() {
  jq -r --slurpfile b "$1" 'to_entries[] | .value -= ($b[0][.key] // 0) | select(.value > 0) | "\(.key) \(.value)"' "$2" | sort -k5,5nr
}
cloud_summary() {
  awk -v n="$2" '{ printf "%s%s %s %s ", sep, $1, $2, $4; if ($5 / n >= 0.01) printf "%.2f", $5 / n; else printf "(%d in all)", $5; sep = ", " } END { if (!NR) printf "n/a" }' "$1"
}
cloud_total() { awk -v n="$2" '{ t += $5 } END { if (NR) printf "%.2f", t / n; else printf "n/a" }' "$1"; }

# inflight T0 T1: of the Glance calls (through the relay) that started in
# [T0, T1]: "COUNT MEAN_MS INFLIGHT", INFLIGHT being the mean number in
# flight over the window (the sum of their durations / (T1 - T0)).
inflight() {
  [[ -s "$WORK/relay.timeline" ]] || { echo "0 n/a n/a"; return; }
  awk -v a="$1" -v b="$2" '$3 == "glance" && $1 >= a && $1 <= b { n++; d += $2 - $1 }
    END { if (n) printf "%d %.0f %.2f\n", n, 1000 * d / n, d / (b - a); else print "0 n/a n/a" }' "$WORK/relay.timeline"
}

# glance_create N IDS: N active images of 4 KiB as demo (POST, then PUT the
# bytes), straight to Glance, $CONCURRENCY at a time; their ids in IDS.
glance_create() {
  local n=$1 ids=$2 tok cfg codes data="$WORK/image-4k.bin"
  [[ -s "$data" ]] || head -c 4096 /dev/urandom >"$data"
  tok="$(token demo)"
  [[ -n "$tok" ]] || die "no Keystone token for demo"
  python3 -c 'import sys, uuid; print("\n".join(str(uuid.uuid4()) for _ in range(int(sys.argv[1]))))' "$n" >"$ids"
  IMAGE_FILES+=("$ids")
  cfg="$WORK/glance-create.cfg"
  awk -v g="$GLANCE_URL" -v t="$tok" -v run="$RUN" '{
    printf "url = \"%s/v2/images\"\nrequest = \"POST\"\nheader = \"X-Auth-Token: %s\"\nheader = \"Content-Type: application/json\"\n", g, t
    printf "data = \"{\\\"id\\\": \\\"%s\\\", \\\"name\\\": \\\"bench-%s-%d\\\", \\\"disk_format\\\": \\\"raw\\\", \\\"container_format\\\": \\\"bare\\\"}\"\n", $1, run, NR
    printf "max-time = 120\noutput = \"/dev/null\"\nwrite-out = \"%%{http_code}\\n\"\nnext\n" }' "$ids" >"$cfg"
  codes="$(pcurl "$cfg")"
  [[ "$(grep -c '^201$' <<<"$codes")" == "$n" ]] || die "creating images in Glance: $(sort <<<"$codes" | uniq -c | tr '\n' ' ')"
  awk -v g="$GLANCE_URL" -v t="$tok" -v f="$data" '{
    printf "url = \"%s/v2/images/%s/file\"\nupload-file = \"%s\"\nheader = \"X-Auth-Token: %s\"\nheader = \"Content-Type: application/octet-stream\"\nheader = \"Expect:\"\n", g, $1, f, t
    printf "max-time = 120\noutput = \"/dev/null\"\nwrite-out = \"%%{http_code}\\n\"\nnext\n" }' "$ids" >"$cfg"
  codes="$(pcurl "$cfg")"
  [[ "$(grep -c '^204$' <<<"$codes")" == "$n" ]] || die "uploading image data: $(sort <<<"$codes" | uniq -c | tr '\n' ' ')"
}

# glance_codes IDS METHOD [GLANCE]: each image's answer to METHOD, "CODE ID" lines.
glance_codes() {
  local ids=$1 method=$2 g=${3:-$GLANCE_URL} tok cfg
  tok="${GLANCE_TOKEN:-$(token demo)}"
  cfg="$(mktemp "$WORK/glance.XXXX.cfg")"
  awk -v g="$g" -v t="$tok" -v m="$method" '{
    printf "url = \"%s/v2/images/%s\"\nrequest = \"%s\"\nheader = \"X-Auth-Token: %s\"\n", g, $1, m, t
    printf "max-time = 120\noutput = \"/dev/null\"\nwrite-out = \"%%{http_code} %s\\n\"\nnext\n", $1 }' "$ids" >"$cfg"
  pcurl "$cfg"
  rm -f "$cfg"
}

# wait_images_404 IDS DEADLINE: until every image answers 404; echoes the time
# it was first seen so (the first check, if all were gone already).
wait_images_404() {
  local ids=$1 deadline=$2 t0=$SECONDS left="$WORK/images-left"
  cp "$ids" "$left"
  while :; do
    local t
    t="$(now)"
    glance_codes "$left" GET | awk '$1 != "404" {print $2}' >"$left.next"
    mv "$left.next" "$left"
    if [[ ! -s "$left" ]]; then
      echo "$t"
      return
    fi
    ((SECONDS - t0 < deadline)) || die "$(wc -l <"$left") images still answer non-404 after ${deadline}s"
    sleep 0.2
  done
}

# --- the operator under test -----------------------------------------------------

OPERATOR_BIN="${OPERATOR_BIN:-$REPO/target/release/cloudimage-operator}"
ORC_BIN="${ORC_BIN:-$CACHE/orc-v2.6.0/manager}"
ORC_CRDS="${ORC_CRDS:-$CACHE/go/mod/github.com/k-orc/openstack-resource-controller/v2@v2.6.0/config/crd/bases}"

ensure_operator() {
  if [[ ! -x "$OPERATOR_BIN" ]]; then
    log "building the operator (cargo build --release --locked)"
    (cd "$REPO" && cargo build --release --locked) >&2 || die "cargo build --release failed"
  fi
  OPERATOR_VERSION="$(cd "$REPO" && git rev-parse --short HEAD)$(cd "$REPO" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo '+dirty')"
  # A copy: a build running meanwhile must not replace the binary under test.
  cp "$OPERATOR_BIN" "$WORK/cloudimage-operator"
  log "operator binary $OPERATOR_BIN ($(date -r "$OPERATOR_BIN" -u +%H:%MZ), sha256 $(sha256sum "$OPERATOR_BIN" | cut -c1-12)), tree $OPERATOR_VERSION"
  OPERATOR_BIN="$WORK/cloudimage-operator"
}

# start_operator NS LOG: the release operator for one namespace, default flags
# (--concurrency 8) unless OPERATOR_FLAGS says otherwise; sets OP_PID.
start_operator() {
  # shellcheck disable=SC2086
  env -u KUBECONFIG "$OPERATOR_BIN" --kubeconfig "$SA_KUBECONFIG" --namespace "$1" \
    --health-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 ${OPERATOR_FLAGS:-} >"$2" 2>&1 &
  OP_PID=$!
  track_pid "$OP_PID"
}

# operator_metrics LOG: the operator's /metrics (address from its log).
operator_metrics() {
  local addr
  addr="$(grep -o 'metrics=[0-9.:]*' "$1" | head -1 | cut -d= -f2)"
  [[ -n "$addr" ]] && curl -sS --max-time 10 "http://$addr/metrics"
}

# --- cleanup -------------------------------------------------------------------------

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  log "cleaning up"
  # Processes first (operators, watches, the HTTP server); the relay last.
  local pid ns f
  for pid in "${PIDS[@]}"; do
    [[ "$pid" == "${RELAY_PID:-}" ]] || stop_pid "$pid" 5
  done
  for f in "$WORK"/*.curlpid; do
    [[ -s "$f" ]] && stop_pid "$(cat "$f")" 2
  done
  # Whatever is left in this run's namespaces: the images ORC created (by
  # their ids), then every finalizer, then the namespace.
  for ns in "${NAMESPACES[@]}"; do
    f="$WORK/leftover-orc-$ns.ids"
    kreq GET "/apis/openstack.k-orc.cloud/v1alpha1/namespaces/$ns/images" 2>/dev/null |
      jq -r '.items[]?.status.id // empty' >"$f" 2>/dev/null
    [[ -s "$f" ]] && IMAGE_FILES+=("$f")
    strip_finalizers "/apis/cloudimage.dev/v1alpha1/namespaces/$ns/cloudimages"
    strip_finalizers "/apis/openstack.k-orc.cloud/v1alpha1/namespaces/$ns/images"
    strip_finalizers "/api/v1/namespaces/$ns/secrets"
    kreq DELETE "/api/v1/namespaces/$ns" >/dev/null 2>&1
  done
  kreq DELETE "/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas?labelSelector=cloudimage.dev/bench%3D$RUN" >/dev/null 2>&1
  kreq DELETE "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/cloudimage-bench-$RUN" >/dev/null 2>&1
  # Images this run created that may still exist: straight to Glance.
  for f in "${IMAGE_FILES[@]}"; do
    [[ -s "$f" ]] && glance_codes "$f" DELETE >/dev/null 2>&1
  done
  [[ -n "${RELAY_PID:-}" ]] && stop_pid "$RELAY_PID" 5
  rm -f "$WORK"/*.fifo "$WORK"/*.cfg
  log "done (exit $rc); logs in $WORK"
  exit "$rc"
}
