# shellcheck shell=bash
# The OpenStack side of testenv/env.sh (sourced by it): Keystone (config,
# bootstrap, start; then the catalog, projects, users and roles through its
# API), Glance (config, db_sync, start), the clouds.yaml with one cloud per
# user, and the end-to-end check verify_glance.
#
# Uses the globals set by init_up_vars (lib/state.sh): ports, URLs, VENV,
# passwords, log paths.

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
  # shellcheck disable=SC2153 # GLANCE_URL: set by init_up_vars
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
