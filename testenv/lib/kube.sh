# shellcheck shell=bash
# The Kubernetes side of testenv/env.sh (sourced by it): the PKI (CA,
# apiserver serving certificate, admin client certificate, service-account
# keys), the admin kubeconfig, and starting etcd, kube-apiserver and
# kube-controller-manager and waiting for them to be ready.
#
# Uses the globals set by init_up_vars (lib/state.sh): ports, URLs, binary
# directories, KUBECONFIG, KUBECTL.

gen_pki() { # PKI_DIR
  local d="$1"
  mkdir -p "$d"
  (
    cd "$d" || exit 1
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
