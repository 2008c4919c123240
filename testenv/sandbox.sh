#!/usr/bin/env bash
# A local sandbox that shows the operator doing its job, from a fresh machine:
# starts the test environment (real kube-apiserver + etcd, real Keystone +
# Glance), builds and runs the operator, creates a Glance image and a
# CloudImage for it, deletes the CloudImage, and shows the image gone from
# Glance. The environment stays up afterwards for you to play with;
# `testenv/env.sh down` stops it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE_DIR="${CLOUDIMAGE_TESTENV_DIR:-${CLOUDIMAGE_CACHE:-$HOME/.cache/cloudimage-testenv}/run}"
NS="${SANDBOX_NAMESPACE:-sandbox}"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Starting the test environment (first run builds kube-apiserver, etcd and a Keystone/Glance venv)"
testenv/env.sh up "$STATE_DIR"
# shellcheck disable=SC1090
source "$(testenv/env.sh env "$STATE_DIR")"
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"; }

step "Building the operator"
cargo build --quiet --bin cloudimage-operator

step "Installing the CloudImage CRD"
k apply --server-side -f crds/cloudimage.dev_cloudimages.yaml
k wait --for=condition=Established crd/cloudimages.cloudimage.dev --timeout=60s

step "Namespace $NS with a credentials Secret (clouds.yaml, cloud 'demo')"
k create namespace "$NS" --dry-run=client -o yaml | k apply -f -
k -n "$NS" create secret generic openstack-creds --from-file=clouds.yaml="$OS_CLOUDS_YAML" --dry-run=client -o yaml | k apply -f -

step "Creating an image in Glance as user 'demo'"
# The request body holds the password: it goes through stdin, not argv.
TOKEN="$(PW="$CLOUDIMAGE_TEST_DEMO_PASSWORD" jq -nc \
    '{auth:{identity:{methods:["password"],password:{user:{name:"demo",domain:{name:"Default"},password:$ENV.PW}}},scope:{project:{name:"demo",domain:{name:"Default"}}}}}' |
  curl -sf -m 10 -D - -o /dev/null -H 'Content-Type: application/json' --data-binary @- "$KEYSTONE_URL/auth/tokens" |
  awk 'tolower($1)=="x-subject-token:" {print $2}' | tr -d '\r')"
IMAGE_ID="$(curl -sf -m 10 -X POST -H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/json' \
  -d '{"name":"sandbox-golden","disk_format":"raw","container_format":"bare"}' "$GLANCE_URL/v2/images" | jq -r .id)"
curl -sf -m 10 -X PUT -H "X-Auth-Token: $TOKEN" -H 'Content-Type: application/octet-stream' --data-binary 'not really a disk' \
  "$GLANCE_URL/v2/images/$IMAGE_ID/file"
glance_status() { curl -s -m 10 -o /dev/null -w '%{http_code}' -H "X-Auth-Token: $TOKEN" "$GLANCE_URL/v2/images/$IMAGE_ID"; }
echo "image $IMAGE_ID: GET answers $(glance_status)"

step "Starting the operator (log: $STATE_DIR/logs/sandbox-operator.log)"
target/debug/cloudimage-operator --kubeconfig "$KUBECONFIG" --namespace "$NS" --health-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 >"$STATE_DIR/logs/sandbox-operator.log" 2>&1 &
OPERATOR_PID=$!
trap 'kill "$OPERATOR_PID" 2>/dev/null || true; wait "$OPERATOR_PID" 2>/dev/null || true' EXIT

step "Creating CloudImage $NS/sandbox-golden"
k -n "$NS" apply -f - <<YAML
apiVersion: cloudimage.dev/v1alpha1
kind: CloudImage
metadata:
  name: sandbox-golden
spec:
  imageId: $IMAGE_ID
  cloudRef:
    secretName: openstack-creds
    cloudName: demo
YAML
k -n "$NS" wait --for=condition=Ready cloudimage/sandbox-golden --timeout=60s
k -n "$NS" get cloudimages

step "Deleting the CloudImage: the operator deletes the image first, then releases the object"
k -n "$NS" delete cloudimage sandbox-golden --timeout=60s
echo "CloudImage gone from the API: $(k -n "$NS" get cloudimage sandbox-golden --ignore-not-found -o name | wc -l | sed 's/^0$/yes/')"
code="$(glance_status)"
echo "image $IMAGE_ID: GET answers $code"
k -n "$NS" get events.events.k8s.io --field-selector regarding.name=sandbox-golden \
  -o custom-columns=TYPE:.type,REASON:.reason,NOTE:.note
if [[ "$code" != 404 ]]; then
  echo "the image is still in Glance: see $STATE_DIR/logs/sandbox-operator.log" >&2
  exit 1
fi
step "Done: the CloudImage was deleted and its Glance image is gone."
echo "The environment is still running: source \"$(testenv/env.sh env "$STATE_DIR")\" to use kubectl and Glance; testenv/env.sh down stops it."
