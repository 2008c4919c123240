# shellcheck shell=bash
# The state dir of testenv/env.sh (sourced by it): the variables one `up`
# shares between its phases (ports, URLs, passwords, PIDs, log paths), the
# secrets under secrets/, the env files that publish them (`env`, sourceable,
# and `env.json`, one JSON object with the same keys, for the Rust tests),
# reading them back, the "is it up" checks, and removing what `up` created.

gen_password() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

write_secret() { # FILE VALUE (mode 600)
  (umask 077 && printf '%s\n' "$2" >"$1")
}

# Phases of `up`. They share state through the globals set in init_up_vars.

# Several of these are only read through ${!k} and $ENV in write_env_file and
# write_env_json.
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

# The PIDs are only read through ${!k} and $ENV in write_env_file and write_env_json.
# shellcheck disable=SC2034
finish_up() { # STATE_DIR: record PIDs, write clouds.yaml, env.json and env
  local dir="$1"
  ETCD_PID="$(read_pid "$dir" etcd)"
  KUBE_APISERVER_PID="$(read_pid "$dir" kube-apiserver)"
  KUBE_CONTROLLER_MANAGER_PID="$(read_pid "$dir" kube-controller-manager)"
  KEYSTONE_PID="$(read_pid "$dir" keystone)"
  GLANCE_PID="$(read_pid "$dir" glance)"
  write_clouds_yaml "$dir"
  # env.json first: once `env` exists (what `up` and `status` look for),
  # env.json does too.
  write_env_json "$dir"
  write_env_file "$dir"
}

# The keys of both env files, in this order.
ENV_KEYS=(
  CLOUDIMAGE_TESTENV_DIR KUBECONFIG KUBECTL HELM KUBE_APISERVER_URL ETCD_URL
  KEYSTONE_URL GLANCE_URL GLANCE_PORT KEYSTONE_PORT OS_CLOUDS_YAML OS_CLIENT_CONFIG_FILE
  CLOUDIMAGE_TEST_ADMIN_PASSWORD CLOUDIMAGE_TEST_DEMO_PASSWORD CLOUDIMAGE_TEST_OTHER_PASSWORD
  VENV ETCD_PID KUBE_APISERVER_PID KUBE_CONTROLLER_MANAGER_PID KEYSTONE_PID GLANCE_PID
  ETCD_LOG KUBE_APISERVER_LOG KUBE_CONTROLLER_MANAGER_LOG KEYSTONE_LOG GLANCE_LOG
)

write_env_file() { # STATE_DIR
  local dir="$1" f="$1/env.tmp" k
  (umask 077 && : >"$f")
  for k in "${ENV_KEYS[@]}"; do
    printf 'export %s=%q\n' "$k" "${!k}" >>"$f"
  done
  mv "$f" "$dir/env"
}

# write_env_json STATE_DIR: env.json, one JSON object with the keys of `env`,
# every value a JSON string. jq reads the values from its environment, not
# from argv (which `ps` shows: they include the passwords); the file is
# written beside (mode 600) and renamed into place.
write_env_json() {
  local dir="$1" f="$1/env.json.tmp"
  rm -f "$f"
  (
    umask 077
    export "${ENV_KEYS[@]}"
    jq -n 'reduce $ARGS.positional[] as $k ({};
             if $ENV | has($k) then .[$k] = $ENV[$k] else error("\($k) is not set") end)' \
      --args "${ENV_KEYS[@]}" >"$f"
  )
  chmod 600 "$f"
  mv "$f" "$dir/env.json"
}

# env_json_from_env STATE_DIR: writes env.json from the env file, for an
# environment started before env.json existed.
env_json_from_env() {
  # shellcheck disable=SC1091
  (
    source "$1/env"
    write_env_json "$1"
  )
}

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
         "$dir/pids" "$dir/logs" "$dir/env" "$dir/env.json" "$dir/kubeconfig" \
         "$dir/clouds.yaml"
}
