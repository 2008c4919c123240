#!/usr/bin/env bash
# Start-up benchmark: memory and time to reconcile N watched CloudImages once.
#
#   bench/watch.sh [N]        (default 10000)
#
# Creates N CloudImages with random image ids in a fresh namespace (none of
# the images exists; the Secret's credentials work, so each lookup answers
# 404 and the object gets Ready=False, ImageNotFound), then starts the
# release operator for that namespace (default flags; OPERATOR_FLAGS adds
# some) and measures the time from its start until every object has a Ready
# condition, its VmRSS/VmHWM and CPU seconds then, its API requests and
# cloud calls per object during the start-up (same counting as
# bench/prune.sh), and the peak of Glance requests in one second (a burst
# would trip a real cloud's rate limit). Then restarts the operator and
# measures how long until every object is in its cache, its RSS then, and
# what it looks up in the next seconds (only the sweep's steady pace is
# expected: every object holds its answer).
# Then deletes them all, with the operator running, and times that too.
#
# Needs the running test environment (testenv/env.sh up). Environment:
# CONCURRENCY (8; parallel creates), RELAY=0, SETTLE, OPERATOR_BIN,
# OPERATOR_FLAGS, BENCH_WORK as for bench/prune.sh. Everything it creates is
# removed on exit.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${1:-10000}"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "usage: $0 [N]"
SETTLE="${SETTLE:-2}"

bench_init
ensure_operator
start_relay
setup_identity

ns="cib-$RUN-watch"
path="/apis/cloudimage.dev/v1alpha1/namespaces/$ns/cloudimages"
kubectl_ apply --server-side --force-conflicts -f "$REPO/crds/cloudimage.dev_cloudimages.yaml" >/dev/null
make_namespace "$ns"
put_secret "$ns" creds demo "$RELAY_KEYSTONE"

log "creating $N CloudImages (random image ids), $CONCURRENCY at a time"
python3 -c '
import json, sys, uuid
for i in range(int(sys.argv[1])):
    print(json.dumps({"apiVersion": "cloudimage.dev/v1alpha1", "kind": "CloudImage",
                      "metadata": {"name": "w-%d" % i},
                      "spec": {"imageId": str(uuid.uuid4()),
                               "cloudRef": {"secretName": "creds", "cloudName": "bench"}}}))
' "$N" >"$WORK/watch.objects.jsonl"
t0="$(now)"
post_many "$path" "$WORK/watch.objects.jsonl"
create_s="$(elapsed "$t0")"
log "created $N in ${create_s}s"

watch_start watch-ready "$path" "$N" '(.status.conditions // []) | any(.type == "Ready")' $((600 + N / 5))
api_snapshot "$WORK/watch.api.before"
relay_counts "$WORK/watch.cloud.before"
log "starting $OPERATOR_BIN ($OPERATOR_VERSION) for $ns"
t_start="$(now)"
start_operator "$ns" "$WORK/operator.log"
t_ready="$(watch_wait watch-ready $((540 + N / 5)) "every CloudImage reconciled once")"
stats="$(proc_stats "$OP_PID")"
ready_s="$(elapsed "$t_start" "$t_ready")"
log "all $N reconciled ${ready_s}s after start; RSS/HWM/CPU $stats"
sleep "$SETTLE"
apiserver_alive
stats_settled="$(proc_stats "$OP_PID")"
api_snapshot "$WORK/watch.api.after"
relay_counts "$WORK/watch.cloud.after"
api_diff "$WORK/watch.api.before" "$WORK/watch.api.after" >"$WORK/watch.api.diff"
relay_diff "$WORK/watch.cloud.before" "$WORK/watch.cloud.after" >"$WORK/watch.cloud.diff"
peak="n/a"
if [[ "${RELAY:-1}" != 0 ]]; then
  curl -sS --max-time 30 "$RELAY_GLANCE/__relay/rate" >"$WORK/watch.rate.json"
  # Requests per second to Glance (all methods) from the operator's start.
  peak="$(jq -r --argjson t0 "${t_start%.*}" '
    [to_entries[] | (.key | split(" ")) as $k | select($k[1] == "glance" and ($k[0] | tonumber) >= $t0) | {s: $k[0], n: .value}]
    | group_by(.s) | map(map(.n) | add) | (max // 0) as $m | "\($m) (over \(length) s)"' "$WORK/watch.rate.json")"
fi
operator_metrics "$WORK/operator.log" >"$WORK/operator.metrics" || true

read -r _ fms fin <<<"$(inflight "$t_start" "$t_ready")"
read -r rss hwm cpu <<<"$stats"
read -r rss2 hwm2 cpu2 <<<"$stats_settled"
kib_per_obj="$(awk -v r="$rss" -v n="$N" 'BEGIN{printf "%.1f", r * 1024 / n}')"

{
  echo
  echo "## Watch-only start-up, N=$N, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| N | seconds to create (bench) | seconds from start until every object reconciled once | VmRSS / VmHWM MiB then | RSS per object | RSS / HWM MiB ${SETTLE}s later | CPU s | API requests per object (verb resource) | cloud calls per object | peak Glance requests in one second | Glance calls in flight (mean) / ms per call |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  echo "| $N | $create_s | $ready_s | $rss / $hwm | $kib_per_obj KiB | $rss2 / $hwm2 | $cpu | $(per_deletion_summary "$WORK/watch.api.diff" "$N") | $(cloud_total "$WORK/watch.cloud.diff" "$N") ($(cloud_summary "$WORK/watch.cloud.diff" "$N")) | $peak | $fin / $fms ms |"
  echo
  echo "Operator binary: $OPERATOR_VERSION, flags: ${OPERATOR_FLAGS:-default}. CPU s at the second reading: $cpu2."
  echo "API requests of the operator during start-up (verb resource count):"
  sed 's/^/    /' "$WORK/watch.api.diff"
  echo "Cloud calls during start-up:"
  sed 's/^/    /' "$WORK/watch.cloud.diff"
  echo "Operator counters at the end of start-up:"
  grep -E '^cloudimage_(cloud_requests|secret_reads|reconciles|objects_watched)' "$WORK/operator.metrics" | sed 's/^/    /' || true
} | tee "$WORK/result.md"

# A restart: every object now holds the cloud's answer, so the new process
# reconciles none of them when it lists them, and looks none up: each waits
# for its second of the resync period (the sweep: N per period, evenly).
# Measured: time from start until every object is in its cache
# (cloudimage_objects_watched >= N), then RSS and the cloud calls in the
# RESTART_WATCH seconds after that (default 10).
RESTART_WATCH="${RESTART_WATCH:-10}"
log "restarting the operator (SIGTERM, start again)"
stop_pid "$OP_PID" 30
t_start="$(now)"
start_operator "$ns" "$WORK/operator-restart.log"
deadline=$((SECONDS + 300 + N / 20))
watched=0
until ((watched >= N)); do
  ((SECONDS < deadline)) || die "restart: only $watched of $N in the cache in time"
  sleep 0.2
  watched="$(operator_metrics "$WORK/operator-restart.log" 2>/dev/null | awk '$1 == "cloudimage_objects_watched" {print int($2)}')"
  watched="${watched:-0}"
done
restart_s="$(elapsed "$t_start")"
relay_counts "$WORK/restart.cloud.before"
sleep "$RESTART_WATCH"
restart_stats="$(proc_stats "$OP_PID")"
relay_counts "$WORK/restart.cloud.after"
relay_diff "$WORK/restart.cloud.before" "$WORK/restart.cloud.after" >"$WORK/restart.cloud.diff"
reconciles="$(operator_metrics "$WORK/operator-restart.log" 2>/dev/null | awk '$1 == "cloudimage_reconciles_total" {print int($2)}')"
read -r rrss rhwm rcpu <<<"$restart_stats"
{
  echo
  echo "Restart with all $N objects answered: all $N in the cache ${restart_s}s after start; ${RESTART_WATCH}s later RSS / HWM $rrss / $rhwm MiB, CPU $rcpu s, ${reconciles:-?} reconciles (the sweep's), cloud calls in those ${RESTART_WATCH}s:"
  sed 's/^/    /' "$WORK/restart.cloud.diff"
  [[ -s "$WORK/restart.cloud.diff" ]] || echo "    (none)"
} | tee -a "$WORK/result.md"

log "deleting all $N (operator running: each lookup answers 404, finalizer released)"
watch_start watch-gone "$path" "$N" gone $((660 + N / 5))
t0="$(now)"
delete_all "$path"
t_gone="$(watch_wait watch-gone $((600 + N / 5)) "every CloudImage gone")"
gone_s="$(elapsed "$t0" "$t_gone")"
log "all gone ${gone_s}s after the delete"
echo "Deleting all $N ($DELETE_HOW), operator running: gone after ${gone_s}s." | tee -a "$WORK/result.md"
