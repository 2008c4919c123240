#!/usr/bin/env bash
# Prune benchmark: how long until N image-backed objects deleted at once are
# gone (objects gone from the API and every image answering 404), and what it
# costs the cluster and the cloud, for this operator, ORC, and the floor.
#
#   bench/prune.sh [N] [WHICH]          e.g. bench/prune.sh 300
#                                            bench/prune.sh 1000 floor,operator
#     N      objects/images (default 300), 4 KiB raw images in the test Glance
#     WHICH  comma list of floor, operator, orc (default: all three)
#
# Needs the running test environment (testenv/env.sh up), the release build
# of the operator (built with `cargo build --release --locked` if missing;
# OPERATOR_BIN overrides) and, for orc, ORC's manager
# (testenv/build-tools.sh orc; ORC_BIN overrides). Run it with nothing else
# using the machine: the claim is the ratios to the floor of the same run.
#
# Per run, in this order:
#   floor     N images created as demo, then N DELETEs straight to Glance,
#             CONCURRENCY (8, the operator's default) at a time, timed.
#   operator  N images + N CloudImages in a fresh namespace with a Secret; the
#             release operator started for that namespace (default flags);
#             once every object is Ready, one DELETE of the collection; timed
#             until the last object is gone and every image answers 404.
#   orc       ORC v2.6.0 (every CRD installed, started out of cluster): N
#             managed Images whose bytes ORC downloads from a loopback HTTP
#             server and uploads; once all are Available, the same prune.
# For each: VmRSS/VmHWM and CPU seconds of the operator at the end; the
# operator's API requests during the prune by verb and resource (exact: the
# operators run as a ServiceAccount matched by one FlowSchema per verb and
# resource, read from apiserver_flowcontrol_dispatched_requests_total;
# apiserver_request_total, which counts everyone, is kept as a cross-check);
# the cloud calls during the prune, counted by a relay (bench/relay.py) in
# front of Keystone and Glance that the floor and both operators all use.
#
# Environment: CONCURRENCY (8), RELAY=0 (no relay: direct, no cloud counts),
# SETTLE (2 s after the drain before the counters are read), OPERATOR_FLAGS
# (extra operator flags), BENCH_WORK (where logs go; default
# /tmp/cloudimage-bench-RUN). Everything the run creates (processes,
# namespaces, FlowSchemas, ClusterRoleBinding, images) is removed on exit.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${1:-300}"
WHICH="${2:-floor,operator,orc}"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "usage: $0 [N] [floor,operator,orc]"
IFS=, read -r -a PHASES <<<"$WHICH"
for p in "${PHASES[@]}"; do
  [[ "$p" =~ ^(floor|operator|orc)$ ]] || die "unknown phase $p (floor, operator, orc)"
done
has_phase() { [[ ",$WHICH," == *",$1,"* ]]; }
SETTLE="${SETTLE:-2}"

bench_init
has_phase operator && ensure_operator
if has_phase orc && [[ ! -x "$ORC_BIN" ]]; then
  log "building ORC's manager (testenv/build-tools.sh orc)"
  "$REPO/testenv/build-tools.sh" orc >&2 || die "testenv/build-tools.sh orc failed"
fi
GLANCE_TOKEN="$(token demo)"
[[ -n "$GLANCE_TOKEN" ]] || die "no Keystone token for demo"
start_relay
if has_phase operator || has_phase orc; then setup_identity; fi

ROWS=()      # markdown table rows
DETAILS=()   # the full counts, printed after the table
FLOOR_S=""

# add_row NAME DRAIN READY STATS_END CPU_PRUNE APIDIFF CLOUDDIFF INFLIGHT INFRA
add_row() {
  local name=$1 drain=$2 ready=$3 stats=$4 cpu_prune=$5 api=$6 cloud=$7 ratio="—" rss="—" cpu="—" apis="—" writes="—" calls flight="n/a"
  local fn fms fin
  read -r fn fms fin <<<"$8"
  [[ "$fn" != 0 ]] && flight="$fin / $fms ms"
  [[ -n "$FLOOR_S" ]] && ratio="$(awk -v a="$drain" -v b="$FLOOR_S" 'BEGIN{printf "%.2f", a/b}')"
  if [[ -n "$stats" ]]; then
    local r h c
    read -r r h c <<<"$stats"
    rss="$r / $h"
    cpu="$cpu_prune / $c"
  fi
  if [[ -n "$api" ]]; then
    apis="$(per_deletion_summary "$api" "$N")"
    writes="$(writes_per_deletion "$api" "$N")"
  fi
  calls="$(cloud_total "$cloud" "$N")"
  [[ "$calls" == n/a ]] || calls="$calls ($(cloud_summary "$cloud" "$N"))"
  ROWS+=("| $name | $N | $drain | $ratio | $ready | $rss | $cpu | $writes | $apis | $calls | $flight | $9 |")
}

# drain NAME PATH IDS: deletes the collection, waits for every object to be
# gone and every image to answer 404; sets DRAIN_S; the counters around it
# (API, relay, process) go to $WORK/NAME.*.
drain() {
  local name=$1 path=$2 ids=$3 pid=$4 deadline=$((120 + N)) t0 t_gone t_404 t_end
  watch_start "$name-gone" "$path" "$N" gone $((deadline + 60))
  api_snapshot "$WORK/$name.api.before"
  relay_counts "$WORK/$name.cloud.before"
  CPU_BEFORE="$(proc_stats "$pid" | awk '{print $3}')"
  LOG_LINES_BEFORE="$(grep -c 'cloud answered' "$WORK/$name.log" || true)"
  log "$name: deleting all $N objects at once"
  local infra0
  infra0="$(infra_cpu)"
  t0="$(now)"
  delete_all "$path"
  t_gone="$(watch_wait "$name-gone" "$deadline" "$name: every object gone")"
  INFRA="$(infra_diff "$infra0" "$(infra_cpu)")"
  t_404="$(wait_images_404 "$ids" 120)"
  t_end="$(awk -v a="$t_gone" -v b="$t_404" 'BEGIN{print (a > b ? a : b)}')"
  DRAIN_S="$(elapsed "$t0" "$t_end")"
  INFLIGHT="$(inflight "$t0" "$t_end")"
  STATS_END="$(proc_stats "$pid")"
  CPU_PRUNE="$(awk -v a="$CPU_BEFORE" -v b="$(awk '{print $3}' <<<"$STATS_END")" 'BEGIN{printf "%.2f", b-a}')"
  log "$name: drained in ${DRAIN_S}s (objects gone after $(elapsed "$t0" "$t_gone")s); RSS/HWM/CPU $STATS_END"
  sleep "$SETTLE"
  apiserver_alive
  api_snapshot "$WORK/$name.api.after"
  relay_counts "$WORK/$name.cloud.after"
  api_diff "$WORK/$name.api.before" "$WORK/$name.api.after" >"$WORK/$name.api.diff"
  api_diff_all "$WORK/$name.api.before" "$WORK/$name.api.after" >"$WORK/$name.api.all.diff"
  relay_diff "$WORK/$name.cloud.before" "$WORK/$name.cloud.after" >"$WORK/$name.cloud.diff"
  DETAILS+=("### $name, N=$N: drain ${DRAIN_S}s (deleted with $DELETE_HOW)"
    "API requests of the operator during the prune (verb resource count):" "$(sed 's/^/    /' "$WORK/$name.api.diff")"
    "apiserver_request_total for those resources, everyone (cross-check; includes the bench's own watch and delete and any other client):" "$(sed 's/^/    /' "$WORK/$name.api.all.diff")"
    "Cloud calls during the prune (service method path status count):" "$(sed 's/^/    /' "$WORK/$name.cloud.diff")")
}

# stop_namespace NS PID: deletes the namespace while its operator still runs
# (so it lets go of its Secret), waits for it, then stops the operator.
stop_namespace() {
  local ns=$1 pid=$2 deadline=$((SECONDS + 90))
  kreq DELETE "/api/v1/namespaces/$ns" >/dev/null || true
  while kreq GET "/api/v1/namespaces/$ns" >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      log "namespace $ns still there after 90 s (cleanup will strip finalizers)"
      break
    fi
    sleep 0.5
  done
  stop_pid "$pid" 10
}

phase_floor() {
  local ids="$WORK/floor.ids" t0 t1 codes
  log "floor: creating $N images in Glance"
  glance_create "$N" "$ids"
  relay_counts "$WORK/floor.cloud.before"
  log "floor: $N DELETEs straight to Glance, $CONCURRENCY at a time"
  local infra0
  infra0="$(infra_cpu)"
  t0="$(now)"
  codes="$(glance_codes "$ids" DELETE "$RELAY_GLANCE")"
  t1="$(now)"
  INFRA="$(infra_diff "$infra0" "$(infra_cpu)")"
  relay_counts "$WORK/floor.cloud.after"
  [[ "$(awk '$1 == "204"' <<<"$codes" | wc -l)" == "$N" ]] || die "floor: not every DELETE answered 204: $(awk '{print $1}' <<<"$codes" | sort | uniq -c | tr '\n' ' ')"
  wait_images_404 "$ids" 60 >/dev/null
  FLOOR_S="$(elapsed "$t0" "$t1")"
  INFLIGHT="$(inflight "$t0" "$t1")"
  log "floor: ${FLOOR_S}s"
  relay_diff "$WORK/floor.cloud.before" "$WORK/floor.cloud.after" >"$WORK/floor.cloud.diff"
  add_row "floor: $N DELETEs straight to Glance, $CONCURRENCY workers" "$FLOOR_S" "—" "" "" "" "$WORK/floor.cloud.diff" "$INFLIGHT" "$INFRA"
}

phase_operator() {
  local ns="cib-$RUN-op" ids="$WORK/operator.ids" path objs="$WORK/operator.objects.jsonl" t_start t_ready
  path="/apis/cloudimage.dev/v1alpha1/namespaces/$ns/cloudimages"
  kubectl_ apply --server-side --force-conflicts -f "$REPO/crds/cloudimage.dev_cloudimages.yaml" >/dev/null
  make_namespace "$ns"
  put_secret "$ns" creds demo "$RELAY_KEYSTONE"
  log "operator: creating $N images in Glance and $N CloudImages"
  glance_create "$N" "$ids"
  jq -Rc --slurp 'split("\n") | map(select(length > 0)) | to_entries[] |
    {apiVersion: "cloudimage.dev/v1alpha1", kind: "CloudImage",
     metadata: {name: ("img-\(.key)")},
     spec: {imageId: .value, cloudRef: {secretName: "creds", cloudName: "bench"}}}' "$ids" >"$objs"
  post_many "$path" "$objs"
  watch_start operator-ready "$path" "$N" '(.status.conditions // []) | any(.type == "Ready" and .status == "True")' $((300 + N))
  log "operator: starting $OPERATOR_BIN ($OPERATOR_VERSION) for $ns"
  t_start="$(now)"
  start_operator "$ns" "$WORK/operator.log"
  t_ready="$(watch_wait operator-ready $((240 + N / 2)) "operator: every CloudImage Ready")"
  local ready_s
  ready_s="$(elapsed "$t_start" "$t_ready")"
  log "operator: all $N Ready ${ready_s}s after start"
  sleep "$SETTLE"
  drain operator "$path" "$ids" "$OP_PID"
  operator_metrics "$WORK/operator.log" >"$WORK/operator.metrics" || true
  local answered
  answered="$(grep -c 'cloud answered' "$WORK/operator.log" || true)"
  DETAILS+=("Operator log: $((answered - LOG_LINES_BEFORE)) 'cloud answered' lines during the prune ($answered in all); its own counters at the end:"
    "$(grep -E '^cloudimage_(cloud_requests|secret_reads|images_deleted|reconciles)_total' "$WORK/operator.metrics" | sed 's/^/    /')")
  add_row "this operator ($OPERATOR_VERSION, release, ${OPERATOR_FLAGS:-default flags})" "$DRAIN_S" "$ready_s" "$STATS_END" "$CPU_PRUNE" "$WORK/operator.api.diff" "$WORK/operator.cloud.diff" "$INFLIGHT" "$INFRA"
  stop_namespace "$ns" "$OP_PID"
}

phase_orc() {
  local ns="cib-$RUN-orc" ids="$WORK/orc.ids" path objs="$WORK/orc.objects.jsonl" t_start t_ready www="$WORK/www" port sha
  path="/apis/openstack.k-orc.cloud/v1alpha1/namespaces/$ns/images"
  [[ -d "$ORC_CRDS" ]] || die "ORC's CRDs not found in $ORC_CRDS (testenv/build-tools.sh orc downloads the module)"
  log "orc: installing its $(find "$ORC_CRDS" -name '*.yaml' | wc -l) CRDs"
  kubectl_ apply --server-side --force-conflicts -f "$ORC_CRDS" >/dev/null
  kubectl_ wait --for=condition=Established --timeout=60s -f "$ORC_CRDS" >/dev/null
  make_namespace "$ns"
  put_secret "$ns" creds demo "$RELAY_KEYSTONE"
  mkdir -p "$www"
  [[ -s "$WORK/image-4k.bin" ]] || head -c 4096 /dev/urandom >"$WORK/image-4k.bin"
  cp "$WORK/image-4k.bin" "$www/image.raw"
  sha="$(sha256sum "$www/image.raw" | cut -d' ' -f1)"
  python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$www" >"$WORK/http.log" 2>&1 &
  track_pid "$!"
  local deadline=$((SECONDS + 20))
  until port="$(grep -o 'port [0-9]*' "$WORK/http.log" | head -1 | cut -d' ' -f2)" && [[ -n "$port" ]]; do
    ((SECONDS < deadline)) || die "the HTTP server did not start: $(cat "$WORK/http.log")"
    sleep 0.1
  done
  # ORC adopts an existing image of the same name (and refuses when there
  # are several): the names carry the run id, so images other runs or
  # tests left in Glance can never match.
  seq 0 $((N - 1)) | jq -c --arg url "http://127.0.0.1:$port/image.raw" --arg sha "$sha" --arg run "$RUN" '
    {apiVersion: "openstack.k-orc.cloud/v1alpha1", kind: "Image",
     metadata: {name: "orc-\($run)-\(.)"},
     spec: {cloudCredentialsRef: {secretName: "creds", cloudName: "bench"}, managementPolicy: "managed",
            resource: {content: {containerFormat: "bare", diskFormat: "raw",
                                 download: {url: $url, hash: {algorithm: "sha256", value: $sha}}}}}}' >"$objs"
  log "orc: creating $N Images"
  post_many "$path" "$objs"
  watch_start orc-ready "$path" "$N" '(.status.conditions // []) | any(.type == "Available" and .status == "True")' $((600 + 3 * N))
  log "orc: starting $ORC_BIN for $ns"
  t_start="$(now)"
  env -u KUBECONFIG "$ORC_BIN" --kubeconfig "$SA_KUBECONFIG" --namespace "$ns" \
    --metrics-bind-address=0 --health-probe-bind-address=0 --leader-elect=false >"$WORK/orc.log" 2>&1 &
  local orc_pid=$!
  track_pid "$orc_pid"
  t_ready="$(watch_wait orc-ready $((540 + 3 * N)) "orc: every Image Available")"
  local ready_s
  ready_s="$(elapsed "$t_start" "$t_ready")"
  log "orc: all $N Available ${ready_s}s after start"
  kreq GET "$path" | jq -r '.items[].status.id // empty' >"$ids"
  IMAGE_FILES+=("$ids")
  [[ "$(wc -l <"$ids")" == "$N" ]] || die "orc: $(wc -l <"$ids") of $N Images have an image id"
  sleep "$SETTLE"
  drain orc "$path" "$ids" "$orc_pid"
  add_row "ORC v2.6.0 (defaults)" "$DRAIN_S" "$ready_s" "$STATS_END" "$CPU_PRUNE" "$WORK/orc.api.diff" "$WORK/orc.cloud.diff" "$INFLIGHT" "$INFRA"
  # ORC holds the Secret with a finalizer until its Images are gone: Secret
  # first, while ORC runs, then the namespace.
  kreq DELETE "/api/v1/namespaces/$ns/secrets/creds" >/dev/null || true
  local deadline2=$((SECONDS + 60))
  while kreq GET "/api/v1/namespaces/$ns/secrets/creds" >/dev/null 2>&1 && ((SECONDS < deadline2)); do sleep 0.5; done
  stop_namespace "$ns" "$orc_pid"
}

has_phase floor && phase_floor
has_phase operator && phase_operator
has_phase orc && phase_orc

{
  echo
  echo "## Prune of N=$N, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| | N | seconds to drain | ratio to floor | seconds until all Ready/Available | RSS / HWM MiB (end) | CPU s (prune / total) | API writes per deletion | API requests per deletion (verb resource) | cloud calls per deletion | cloud calls in flight (mean) / ms per call | CPU s of kube-apiserver+etcd / Glance during the prune |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  printf '%s\n' "${DETAILS[@]}"
} | tee "$WORK/result.md"
