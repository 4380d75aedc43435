#!/usr/bin/env bash
# A real OpenStack control plane on loopback, for the integration tier.
#
#   localcloud.sh install | start | stop | status | clean | env
#
# Keystone, Placement, Nova (fake virt driver: servers reach ACTIVE, nothing boots), Neutron (ML2 with
# a driver that binds ports without agents; routers and floating IPs), Glance (file store, one tiny
# image) and Cinder (fake backend: boot-from-volume and data volumes) from PyPI; MariaDB and RabbitMQ
# from Debian. Every service listens on 127.0.0.1 only. Run it inside a network namespace of its own
# (scripts/integration.sh does) so that nothing the tests dial can leave the machine.
#
# Env: LOCALCLOUD_BASE (state, venv, logs; default ~/.cache/crdb-federation/localcloud),
#      LOCALCLOUD_PASSWORD (every user; default "localcloud").
# `start` is idempotent: it installs and initialises what is missing, then starts what is not running.
set -euo pipefail
# The services warn about eventlet's deprecation on every start; nothing here can act on it.
export PYTHONWARNINGS=ignore::DeprecationWarning

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BASE=${LOCALCLOUD_BASE:-${XDG_CACHE_HOME:-$HOME/.cache}/crdb-federation/localcloud}
VENV=$BASE/venv BIN=$BASE/venv/bin ETC=$BASE/etc LOGS=$BASE/log PIDS=$BASE/run DATA=$BASE/data
PASSWORD=${LOCALCLOUD_PASSWORD:-localcloud}
DB="mysql+pymysql://openstack:$PASSWORD@127.0.0.1"
AMQP="rabbit://guest:guest@127.0.0.1:5672/"
KEYSTONE=http://127.0.0.1:5000/v3
DATABASES=(keystone placement nova_api nova nova_cell0 neutron glance cinder)
# name port wsgi-module processes threads config-dir-variable
APIS=(
  "keystone 5000 keystone.wsgi.api:application 2 2 OS_KEYSTONE_CONFIG_DIR"
  "placement 8778 placement.wsgi.api:application 1 2 OS_PLACEMENT_CONFIG_DIR"
  "nova 8774 nova.wsgi.osapi_compute:application 2 1 OS_NOVA_CONFIG_DIR"
  "neutron 9696 neutron.wsgi.api:application 2 1 OS_NEUTRON_CONFIG_DIR"
  "glance 9292 glance.wsgi.api:application 1 1 OS_GLANCE_CONFIG_DIR"
  "cinder 8776 cinder.wsgi.api:application 1 1 OS_CINDER_CONFIG_DIR"
)
SERVICES=(mariadb rabbitmq keystone placement nova neutron glance cinder
          nova-conductor nova-scheduler nova-compute cinder-scheduler cinder-volume)

say() { printf '[localcloud %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ------------------------------------------------------------------------------------------- install
install() {
  if ! command -v mariadbd >/dev/null || ! command -v rabbitmq-server >/dev/null; then
    [ "$(id -u)" -eq 0 ] || die "install mariadb-server and rabbitmq-server first (needs root)"
    say "apt: mariadb-server rabbitmq-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      mariadb-server rabbitmq-server >/dev/null
    # Debian starts both as system services; this cloud runs its own copies on loopback.
    systemctl disable --now mariadb rabbitmq-server >/dev/null 2>&1 || true
    pkill -f beam.smp >/dev/null 2>&1 || true
  fi
  local stamp
  stamp="$VENV/.installed-$(cat "$HERE/constraints.txt" "$HERE"/fakes/crdb_localcloud_fakes/*.py | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  say "pip: OpenStack services into $VENV (about two minutes, once)"
  [ -x "$BIN/python" ] || python3 -m venv "$VENV"
  "$BIN/python" -m pip install -q --disable-pip-version-check uv
  "$BIN/uv" pip install -q --python "$BIN/python" -c "$HERE/constraints.txt" \
    keystone nova neutron openstack-placement glance cinder openstacksdk PyMySQL uwsgi
  "$BIN/uv" pip install -q --python "$BIN/python" --reinstall-package crdb-localcloud-fakes "$HERE/fakes"
  # Nova imports compute drivers from nova.virt only.
  local virt
  virt=$("$BIN/python" -c 'import nova.virt, os; print(os.path.dirname(nova.virt.__file__))')
  echo 'from crdb_localcloud_fakes.nova import RestartableFakeDriver  # noqa: F401' >"$virt/localcloud_fake.py"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
}

# ------------------------------------------------------------------------------------------- config
keystone_auth() { # section user
  printf '[%s]\nauth_url = %s\nauth_type = password\nproject_domain_name = Default\nuser_domain_name = Default\nproject_name = service\nusername = %s\npassword = %s\nregion_name = RegionOne\n' \
    "$1" "$KEYSTONE" "$2" "$PASSWORD"
}
authtoken() { keystone_auth keystone_authtoken "$1"; echo "www_authenticate_uri = $KEYSTONE"; echo "service_token_roles_required = true"; }

write_config() {
  mkdir -p "$ETC"/{keystone,placement,nova,neutron,glance,cinder} "$LOGS" "$PIDS" \
    "$DATA"/{nova,neutron,glance/images,glance/staging,glance/tasks,cinder,locks}
  cat >"$ETC/mariadb.cnf" <<EOF
[mysqld]
datadir = $DATA/mysql
socket = $PIDS/mysqld.sock
pid-file = $PIDS/mysqld.pid
bind-address = 127.0.0.1
port = 3306
max_connections = 2000
innodb_buffer_pool_size = 256M
innodb_flush_log_at_trx_commit = 0
innodb_doublewrite = 0
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
[client]
socket = $PIDS/mysqld.sock
EOF
  cat >"$ETC/keystone/keystone.conf" <<EOF
[DEFAULT]
log_file = $LOGS/keystone-app.log
[database]
connection = $DB/keystone
[token]
provider = fernet
expiration = 86400
[fernet_tokens]
key_repository = $ETC/keystone/fernet-keys
[credential]
key_repository = $ETC/keystone/credential-keys
[identity]
# A test cloud: cheap password hashing and an in-process cache keep Keystone off the critical path.
password_hash_rounds = 4
[cache]
enabled = true
backend = dogpile.cache.memory
expiration_time = 600
EOF
  cat >"$ETC/placement/placement.conf" <<EOF
[DEFAULT]
log_file = $LOGS/placement-app.log
[placement_database]
connection = $DB/placement
[api]
auth_strategy = keystone
$(authtoken placement)
EOF
  cp "$VENV/etc/nova/api-paste.ini" "$ETC/nova/"
  cat >"$ETC/nova/nova.conf" <<EOF
[DEFAULT]
transport_url = $AMQP
compute_driver = localcloud_fake.RestartableFakeDriver
host = localcloud-compute
my_ip = 127.0.0.1
state_path = $DATA/nova
vif_plugging_is_fatal = false
vif_plugging_timeout = 0
instance_usage_audit = false
heal_instance_info_cache_interval = -1
[api]
auth_strategy = keystone
[api_database]
connection = $DB/nova_api
[database]
connection = $DB/nova
[conductor]
workers = 1
# Unlimited, like Neutron's and Cinder's below: several stacks share this one project. Tests that
# need a limit set it on their project through the quota API.
[quota]
instances = -1
cores = -1
ram = -1
key_pairs = -1
server_groups = -1
server_group_members = -1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = 10
[filter_scheduler]
enabled_filters = ComputeFilter,ComputeCapabilitiesFilter,ImagePropertiesFilter,ServerGroupAntiAffinityFilter,ServerGroupAffinityFilter
[oslo_concurrency]
lock_path = $DATA/locks
[oslo_messaging_notifications]
driver = noop
[vnc]
enabled = false
[glance]
region_name = RegionOne
[cinder]
os_region_name = RegionOne
auth_url = $KEYSTONE
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = nova
password = $PASSWORD
$(authtoken nova)
$(keystone_auth placement nova)
$(keystone_auth neutron nova)
$(keystone_auth service_user nova)
send_service_user_token = true
EOF
  cp "$VENV/etc/neutron/api-paste.ini" "$ETC/neutron/"
  cat >"$ETC/neutron/neutron.conf" <<EOF
[DEFAULT]
log_file = $LOGS/neutron-app.log
api_paste_config = $ETC/neutron/api-paste.ini
core_plugin = ml2
service_plugins = router
auth_strategy = keystone
transport_url = $AMQP
state_path = $DATA/neutron
allow_overlapping_ips = true
notify_nova_on_port_status_changes = true
notify_nova_on_port_data_changes = true
api_workers = 1
rpc_workers = 0
rpc_state_report_workers = 0
dhcp_agent_notification = false
[database]
connection = $DB/neutron
[oslo_concurrency]
lock_path = $DATA/locks
[oslo_messaging_notifications]
driver = noop
[quotas]
quota_network = -1
quota_subnet = -1
quota_port = -1
quota_router = -1
quota_floatingip = -1
quota_security_group = -1
quota_security_group_rule = -1
$(authtoken neutron)
$(keystone_auth nova neutron)
EOF
  # Neutron's WSGI entry point reads plugins/ml2/ml2_conf.ini beside neutron.conf.
  mkdir -p "$ETC/neutron/plugins/ml2"
  cat >"$ETC/neutron/plugins/ml2/ml2_conf.ini" <<EOF
[ml2]
type_drivers = flat,vxlan
tenant_network_types = vxlan
mechanism_drivers = bind_everything
extension_drivers = port_security
[ml2_type_flat]
flat_networks = public,provider
[ml2_type_vxlan]
vni_ranges = 1:100000
EOF
  cp "$VENV/etc/glance/glance-api-paste.ini" "$ETC/glance/"
  cat >"$ETC/glance/glance-api.conf" <<EOF
[DEFAULT]
log_file = $LOGS/glance-app.log
enabled_backends = fs:file
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $DATA/glance/images
[os_glance_staging_store]
filesystem_store_datadir = $DATA/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = $DATA/glance/tasks
[database]
connection = $DB/glance
[paste_deploy]
flavor = keystone
[oslo_concurrency]
lock_path = $DATA/locks
$(authtoken glance)
EOF
  cp "$VENV/etc/cinder/api-paste.ini" "$ETC/cinder/"
  cat >"$ETC/cinder/cinder.conf" <<EOF
[DEFAULT]
transport_url = $AMQP
auth_strategy = keystone
api_paste_config = $ETC/cinder/api-paste.ini
state_path = $DATA/cinder
host = localcloud-volume
my_ip = 127.0.0.1
enabled_backends = fake
default_volume_type = __DEFAULT__
storage_availability_zone = nova
glance_api_servers = http://127.0.0.1:9292
osapi_volume_workers = 1
# The scheduler places nothing until a backend's statistics reach it; report them soon after a start.
backend_stats_polling_interval = 10
# The migrations seed a 'default' quota class (10 volumes) that would win over the limits below;
# tests that need a limit set it on their project through the quota API.
use_default_quota_class = false
quota_volumes = -1
quota_gigabytes = -1
quota_snapshots = -1
[database]
connection = $DB/cinder
[oslo_concurrency]
lock_path = $DATA/locks
[oslo_messaging_notifications]
driver = noop
[coordination]
backend_url = file://$DATA/cinder/coordination
[fake]
volume_driver = crdb_localcloud_fakes.cinder.InstantCloneFakeDriver
volume_backend_name = fake
$(authtoken cinder)
$(keystone_auth nova cinder)
EOF
  local api name port module procs threads var
  for api in "${APIS[@]}"; do
    read -r name port module procs threads var <<<"$api"
    cat >"$ETC/uwsgi-$name.ini" <<EOF
[uwsgi]
http-socket = 127.0.0.1:$port
module = $module
master = true
processes = $procs
threads = $threads
enable-threads = true
lazy-apps = true
die-on-term = true
buffer-size = 65535
# keep-alive clients otherwise see "connection reset by peer"
add-header = Connection: close
need-app = true
virtualenv = $VENV
env = $var=$ETC/$name
EOF
    # Cinder reads its configuration from argv only.
    [ "$name" = cinder ] && echo "pyargv = --config-file $ETC/cinder/cinder.conf" >>"$ETC/uwsgi-$name.ini"
  done
  cat >"$BASE/clouds.yaml" <<EOF
clouds:
  localcloud:
    auth:
      auth_url: $KEYSTONE
      username: admin
      password: $PASSWORD
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    identity_api_version: 3
    interface: public
EOF
}

# ------------------------------------------------------------------------------------------- processes
running() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }
spawn() { # name command...
  local name=$1; shift
  running "$name" && return 0
  nohup "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}
wait_for() { # what seconds command...
  local what=$1 seconds=$2 i; shift 2
  for ((i = 0; i < seconds; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "$what did not come up within ${seconds}s (logs: $LOGS)"
}
http_ok() { curl -s -o /dev/null -m 2 "$1"; }
# RabbitMQ runs as the caller too, with its Erlang cookie and database under $DATA.
as_rabbit() { env HOME="$DATA/rabbitmq" RABBITMQ_NODENAME=localcloud@localhost "$@"; }
sdk() { OS_CLIENT_CONFIG_FILE=$BASE/clouds.yaml OS_CLOUD=localcloud PASSWORD=$PASSWORD "$BIN/python" -; }

start_mariadb() {
  if [ ! -d "$DATA/mysql/mysql" ]; then
    mkdir -p "$DATA/mysql"
    mariadb-install-db --defaults-file="$ETC/mariadb.cnf" --user="$(id -un)" \
      --auth-root-authentication-method=socket >"$LOGS/mariadb-install.log" 2>&1 ||
      die "mariadb-install-db failed: $LOGS/mariadb-install.log"
  fi
  # Runs as the caller: the state lives under the caller's home, which the mysql user may not enter.
  spawn mariadb /usr/sbin/mariadbd --defaults-file="$ETC/mariadb.cnf" --user="$(id -un)"
  wait_for MariaDB 60 mariadb --defaults-file="$ETC/mariadb.cnf" -uroot -e 'select 1'
}

start_rabbitmq() {
  mkdir -p "$DATA/rabbitmq"
  spawn rabbitmq env HOME="$DATA/rabbitmq" RABBITMQ_NODENAME=localcloud@localhost RABBITMQ_MNESIA_BASE="$DATA/rabbitmq" RABBITMQ_LOG_BASE="$LOGS" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_DIST_PORT=25672 ERL_EPMD_ADDRESS=127.0.0.1 /usr/lib/rabbitmq/bin/rabbitmq-server
  wait_for RabbitMQ 120 as_rabbit /usr/lib/rabbitmq/bin/rabbitmqctl -q await_startup
}

start_api() { # name
  running "$1" && return 0
  nohup "$BIN/uwsgi" --ini "$ETC/uwsgi-$1.ini" >>"$LOGS/$1.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$1.pid"
}

# ------------------------------------------------------------------------------------------- first start
initialise_databases() {
  [ -f "$DATA/.databases" ] && return 0
  say "databases and migrations (about three minutes, once)"
  local sql="" d
  for d in "${DATABASES[@]}"; do
    sql+="CREATE DATABASE IF NOT EXISTS $d CHARACTER SET utf8mb4; GRANT ALL ON $d.* TO 'openstack'@'127.0.0.1';"
  done
  mariadb --defaults-file="$ETC/mariadb.cnf" -uroot -e \
    "CREATE USER IF NOT EXISTS 'openstack'@'127.0.0.1' IDENTIFIED BY '$PASSWORD'; $sql FLUSH PRIVILEGES;"
  local ks=(--config-file "$ETC/keystone/keystone.conf") nova=(--config-file "$ETC/nova/nova.conf")
  "$BIN/keystone-manage" "${ks[@]}" db_sync
  "$BIN/keystone-manage" "${ks[@]}" fernet_setup --keystone-user root --keystone-group root
  "$BIN/keystone-manage" "${ks[@]}" credential_setup --keystone-user root --keystone-group root
  "$BIN/keystone-manage" "${ks[@]}" bootstrap --bootstrap-password "$PASSWORD" --bootstrap-region-id RegionOne \
    --bootstrap-admin-url "$KEYSTONE" --bootstrap-internal-url "$KEYSTONE" --bootstrap-public-url "$KEYSTONE"
  "$BIN/placement-manage" --config-file "$ETC/placement/placement.conf" db sync
  "$BIN/nova-manage" "${nova[@]}" api_db sync
  "$BIN/nova-manage" "${nova[@]}" cell_v2 map_cell0 --database_connection "$DB/nova_cell0"
  "$BIN/nova-manage" "${nova[@]}" cell_v2 list_cells | grep ' cell1 ' >/dev/null ||
    "$BIN/nova-manage" "${nova[@]}" cell_v2 create_cell --name cell1
  "$BIN/nova-manage" "${nova[@]}" db sync
  "$BIN/neutron-db-manage" --config-file "$ETC/neutron/neutron.conf" \
    --config-file "$ETC/neutron/plugins/ml2/ml2_conf.ini" upgrade heads
  "$BIN/glance-manage" --config-file "$ETC/glance/glance-api.conf" db_sync
  "$BIN/cinder-manage" --config-file "$ETC/cinder/cinder.conf" db sync
  touch "$DATA/.databases"
}

register_services() { # service users and the catalog; needs Keystone up
  [ -f "$DATA/.catalog" ] && return 0
  say "service users and catalog"
  sdk <<'EOF'
import os, openstack
identity = openstack.connect().identity
project = identity.find_project("service") or identity.create_project(name="service", domain_id="default")
roles = {r: identity.find_role(r) or identity.create_role(name=r) for r in ("admin", "service", "member", "reader")}
for name in ("nova", "neutron", "glance", "placement", "cinder"):
    user = identity.find_user(name) or identity.create_user(name=name, password=os.environ["PASSWORD"], domain_id="default")
    for role in ("admin", "service"):
        identity.assign_project_role_to_user(project, user, roles[role])
endpoints = {
    "compute": ("nova", "http://127.0.0.1:8774/v2.1"),
    "placement": ("placement", "http://127.0.0.1:8778"),
    "network": ("neutron", "http://127.0.0.1:9696"),
    "image": ("glance", "http://127.0.0.1:9292"),
    "block-storage": ("cinderv3", "http://127.0.0.1:8776/v3/$(project_id)s"),
}
present = {s.type for s in identity.services()}
for kind, (name, url) in endpoints.items():
    if kind not in present:
        service = identity.create_service(name=name, type=kind)
        for interface in ("public", "internal", "admin"):
            identity.create_endpoint(service_id=service.id, interface=interface, url=url, region_id="RegionOne")
EOF
  touch "$DATA/.catalog"
}

# What seed_cloud makes; a data directory seeded with other ranges is re-seeded (networks re-made).
SEEDED="$DATA/.seeded-198.18"

seed_cloud() { # flavors, image, external and provider networks; needs every API up
  [ -f "$SEEDED" ] && return 0
  say "flavors, image, networks"
  DATA=$DATA sdk <<'EOF'
import os, openstack
cloud = openstack.connect()
for name, ram, vcpus, disk in (("m1.small", 2048, 1, 20), ("m1.medium", 4096, 2, 40),
                               ("m1.large", 8192, 4, 80), ("m1.xlarge", 16384, 8, 160)):
    cloud.compute.find_flavor(name) or cloud.compute.create_flavor(name=name, ram=ram, vcpus=vcpus, disk=disk)
if not cloud.image.find_image("ubuntu-24.04"):
    path = os.path.join(os.environ["DATA"], "tiny.img")
    with open(path, "wb") as f:
        f.write(b"\0" * 1024 * 1024)
    cloud.image.create_image(name="ubuntu-24.04", filename=path, disk_format="raw", container_format="bare",
                             visibility="public", os_type="linux", os_distro="ubuntu", os_version="24.04")
# An external network for routers and floating IPs, and a shared provider network whose fixed
# addresses are public. The benchmarking range (RFC 2544): never routed, not a documentation range
# (settings refuse those), and it exists only in this cloud's database.
for name, physnet, cidr, external, shared in (("public", "public", "198.18.0.0/24", True, False),
                                              ("provider", "provider", "198.19.0.0/24", False, True)):
    net = cloud.network.find_network(name)
    if net and [s.cidr for s in cloud.network.subnets(network_id=net.id)] != [cidr]:
        cloud.network.delete_network(net)  # seeded with an older range, and empty between test runs
        net = None
    if net:
        continue
    net = cloud.network.create_network(name=name, is_router_external=external, is_shared=shared,
                                       provider_network_type="flat", provider_physical_network=physnet)
    prefix = cidr.rsplit(".", 1)[0]
    cloud.network.create_subnet(network_id=net.id, name=name + "-subnet", ip_version=4, cidr=cidr,
                                gateway_ip=prefix + ".1", enable_dhcp=False,
                                allocation_pools=[{"start": prefix + ".10", "end": prefix + ".250"}])
EOF
  "$BIN/nova-manage" --config-file "$ETC/nova/nova.conf" cell_v2 discover_hosts >/dev/null
  touch "$SEEDED"
}

# Listening is not serving: a just-restarted API answers 503 while its token middleware or its
# workers warm up. Ready means every service answers an authenticated call, three rounds running,
# with nova-compute and cinder-volume registered and the cinder scheduler aware of the volume backend.
apis_ready() { # seconds
  SECONDS_LEFT=$1 sdk <<'EOF'
import os, sys, time, openstack
deadline = time.monotonic() + int(os.environ["SECONDS_LEFT"])
streak, last = 0, "no attempt"
while streak < 3 and time.monotonic() < deadline:
    try:
        cloud = openstack.connect()
        cloud.authorize()
        list(cloud.placement.resource_providers())
        list(cloud.network.networks(limit=1))
        list(cloud.image.images(limit=1))
        if not list(cloud.compute.hypervisors()):
            raise RuntimeError("nova-compute has not registered a hypervisor")
        storage = cloud.block_storage
        if not any(s.binary == "cinder-volume" and s.state == "up" for s in storage.services()):
            raise RuntimeError("cinder-volume is not up")
        # Up is not placeable: the scheduler refuses every volume until the backend's statistics reach it.
        if not list(storage.backend_pools()):
            raise RuntimeError("cinder-scheduler knows no backend pool yet")
        list(storage.volumes(limit=1))
        streak += 1
    except Exception as error:  # any failure restarts the streak
        streak, last = 0, f"{type(error).__name__}: {error}"
    time.sleep(1)
if streak < 3:
    sys.exit(f"the APIs did not answer three authenticated rounds in a row; last: {last}")
EOF
}

# ------------------------------------------------------------------------------------------- commands
# Loopback is per network namespace: services started in another one answer nobody here.
same_netns() {
  local name pid
  for name in "${SERVICES[@]}"; do
    running "$name" || continue
    pid=$(cat "$PIDS/$name.pid")
    [ "$(readlink "/proc/$pid/ns/net")" = "$(readlink /proc/self/ns/net)" ] ||
      die "$name (pid $pid) runs in another network namespace; run '$0 stop' there first"
  done
}

start() {
  local t0=$SECONDS
  same_netns
  ip link set lo up 2>/dev/null || true
  install
  write_config
  start_mariadb
  initialise_databases
  start_rabbitmq
  start_api keystone
  wait_for Keystone 300 http_ok "$KEYSTONE"
  register_services
  local name
  for name in placement nova neutron glance cinder; do start_api "$name"; done
  local nova=(--config-file "$ETC/nova/nova.conf") cinder=(--config-file "$ETC/cinder/cinder.conf")
  spawn nova-conductor "$BIN/nova-conductor" "${nova[@]}" --log-file "$LOGS/nova-conductor-app.log"
  spawn nova-scheduler "$BIN/nova-scheduler" "${nova[@]}" --log-file "$LOGS/nova-scheduler-app.log"
  wait_for Placement 300 http_ok http://127.0.0.1:8778/
  [ -s "$DATA/nova/compute_id" ] || "$BIN/python" -c \
    'from crdb_localcloud_fakes.nova import node_uuid; print(node_uuid("localcloud-compute"))' >"$DATA/nova/compute_id"
  spawn nova-compute "$BIN/nova-compute" "${nova[@]}" --log-file "$LOGS/nova-compute-app.log"
  spawn cinder-scheduler "$BIN/cinder-scheduler" "${cinder[@]}" --log-file "$LOGS/cinder-scheduler-app.log"
  spawn cinder-volume "$BIN/cinder-volume" "${cinder[@]}" --log-file "$LOGS/cinder-volume-app.log"
  for url in http://127.0.0.1:8774/ http://127.0.0.1:9696/ http://127.0.0.1:9292/ http://127.0.0.1:8776/; do
    wait_for "$url" 300 http_ok "$url"
  done
  seed_cloud
  apis_ready 300 || die "not ready (logs: $LOGS)"
  say "ready in $((SECONDS - t0))s: OS_CLIENT_CONFIG_FILE=$BASE/clouds.yaml OS_CLOUD=localcloud"
}

stop() {
  local i name pid
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    name=${SERVICES[i]}
    running "$name" || { rm -f "$PIDS/$name.pid"; continue; }
    pid=$(cat "$PIDS/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDS/$name.pid"
  done
  as_rabbit epmd -kill >/dev/null 2>&1 || true
  say "stopped"
}

# One API's outage and its return, for the tests of a cloud that drops out mid-run.
api_port() { # name
  local entry name port
  for entry in "${APIS[@]}"; do
    read -r name port _ <<<"$entry"
    [ "$name" = "$NAME" ] && { echo "$port"; return 0; }
  done
  die "no API named '$NAME' (one of: keystone placement nova neutron glance cinder)"
}

stop_api() { # name
  local NAME=$1 pid
  api_port >/dev/null
  running "$NAME" || return 0
  pid=$(cat "$PIDS/$NAME.pid")
  kill -TERM "$pid" 2>/dev/null || true  # die-on-term: the master takes its workers with it
  for _ in $(seq 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDS/$NAME.pid"
  say "$NAME stopped"
}

resume_api() { # name
  local NAME=$1 port
  port=$(api_port)
  start_api "$NAME"
  wait_for "$NAME" 120 http_ok "http://127.0.0.1:$port/"
  say "$NAME answers again"
}

status() {
  local name rc=0
  for name in "${SERVICES[@]}"; do
    if running "$name"; then echo "$name running"; else echo "$name stopped"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  stop-api) stop_api "${2:?usage: $0 stop-api <api>}" ;;
  start-api) resume_api "${2:?usage: $0 start-api <api>}" ;;
  clean) stop; rm -rf "$DATA" "$ETC" "$LOGS" "$PIDS" "$BASE/clouds.yaml" ;;
  env) echo "export OS_CLIENT_CONFIG_FILE=$BASE/clouds.yaml OS_CLOUD=localcloud" ;;
  *) echo "usage: $0 install|start|stop|status|clean|env|stop-api <api>|start-api <api>" >&2; exit 2 ;;
esac
