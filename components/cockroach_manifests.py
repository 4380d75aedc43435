"""Pure renderers for one member's CockroachDB: start script, jobs and Kubernetes manifests.

Every function maps plain values to plain text or dicts (real camelCase manifests), so the tests
feed them to bash, shellcheck and kubernetes-validate without Pulumi.

One CockroachDB node per Kubernetes node, as a DaemonSet on the labelled nodes: a node's pod and its
data (a hostPath on the node's own Cinder volume) live and die with that node, so removing a server
removes exactly that CockroachDB node. What changes while nodes run (the join list, the addresses of
new nodes, renewed certificates) reaches them through mounted files, never through the pod template,
so it restarts nothing.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .ops_user import ops_user_statements
from .settings import COCKROACH_HTTP_PORT, COCKROACH_PORT, COCKROACH_SQL_PORT

APP = "cockroachdb"
PUBLIC_SERVICE = f"{APP}-public"
LABELS = {"app.kubernetes.io/name": APP, "app.kubernetes.io/part-of": "crdb-federation"}
SELECTOR = {"app.kubernetes.io/name": APP}
# Set on every node that runs CockroachDB (k3s: node-label at boot; existing clusters: a node patch).
NODE_LABEL = "crdb-federation/cockroachdb"
COCKROACH_BIN = "/cockroach/cockroach"
CERTS_DIR = "/cockroach/cockroach-certs"
DATA_DIR = "/cockroach/cockroach-data"
# On the node: the mount point of its data volume, and the store directory inside it. The pod mounts
# the store directory with type Directory, so a node whose volume is not mounted never starts a store
# on its boot disk.
HOST_DATA_MOUNT = "/var/lib/crdb-federation/data"
HOST_STORE_DIR = f"{HOST_DATA_MOUNT}/cockroach"
ADDRESS_DIR = "/etc/crdb-federation/addresses"
JOIN_DIR = "/etc/crdb-federation/join"
NODE_SECRET = f"{APP}-node-certs"
CLIENT_SECRET = f"{APP}-root-certs"
LICENCE_SECRET = f"{APP}-licence"
ADDRESS_CONFIG_MAP = f"{APP}-node-addresses"
JOIN_CONFIG_MAP = f"{APP}-join"
READ_ONLY_BY_OWNER = 0o400
# How often a running node looks for renewed certificates (it reloads them on SIGHUP).
CERT_CHECK_SECONDS = 60
# The cluster-settings job's schedule: licence, organisation and the replication factor.
SETTINGS_SCHEDULE = "*/10 * * * *"
# Five clouds and more: five replicas, so the loss of any one cloud (at most one replica of each range
# when they are spread by the cloud= tier) leaves a majority; fewer clouds: three.
CLOUDS_FOR_FIVE_REPLICAS = 5

# Node files as CockroachDB expects them with a separate client CA (ca-client.crt).
NODE_FILES = ("ca.crt", "ca-client.crt", "node.crt", "node.key", "client.node.crt", "client.node.key")


@dataclass(frozen=True)
class NodeAddresses:
    """A Kubernetes node's name and the addresses its CockroachDB node advertises; `signed`: the node
    certificate the seed signed covers both (a node added since waits until the seed signs again)."""

    name: str
    public_ip: str
    private_ip: str
    signed: bool = True


@dataclass(frozen=True)
class CockroachSpec:
    namespace: str
    member: str
    region: str
    zone: str
    cluster_name: str
    image: str
    memory: str
    cpu: str
    nodes: tuple[NodeAddresses, ...]
    http_proxy: Optional[str] = None
    no_proxy: tuple[str, ...] = ()


def locality(member: str, region: str, zone: str) -> str:
    """Same tiers in the same order on every node of the federation: cloud first, so replicas spread over clouds."""
    return f"cloud={member},region={region},zone={zone}"


def replication_factor_for(clouds: int) -> int:
    return 5 if clouds >= CLOUDS_FOR_FIVE_REPLICAS else 3


def start_flags(spec: CockroachSpec, public_ip: str, private_ip: str, join: str) -> list[str]:
    """The exact `cockroach start` flags of a node with these addresses (the script substitutes them at run time)."""
    return [
        "start",
        # 26257 carries node-to-node RPC only; SQL has a port of its own, open to other ranges.
        f"--listen-addr=:{COCKROACH_PORT}",
        f"--advertise-addr={public_ip}:{COCKROACH_PORT}",
        # Nodes of one cloud talk over private addresses: floating IPs often do not hairpin.
        f"--locality-advertise-addr=cloud={spec.member}@{private_ip}:{COCKROACH_PORT}",
        f"--sql-addr=:{COCKROACH_SQL_PORT}",
        f"--advertise-sql-addr={public_ip}:{COCKROACH_SQL_PORT}",
        f"--http-addr=:{COCKROACH_HTTP_PORT}",
        f"--locality={locality(spec.member, spec.region, spec.zone)}",
        f"--join={join}",
        f"--cluster-name={spec.cluster_name}",
        f"--certs-dir={CERTS_DIR}",
        f"--store=path={DATA_DIR}",
        "--cache=25%",
        "--max-sql-memory=25%",
    ]


def _double_quoted(text: str) -> str:
    """A bash double-quoted word whose static text is taken literally."""
    for char in ("\\", '"', "$", "`"):
        text = text.replace(char, "\\" + char)
    return f'"{text}"'


def render_start_script(spec: CockroachSpec) -> str:
    """bash run as the container command: finds its node's addresses, waits for signed certificates, starts
    CockroachDB with the current join list, and sends it SIGHUP whenever the mounted certificates change.

    The addresses come from a ConfigMap keyed by Kubernetes node name, so each pod advertises its own
    node's public address, and the same one after every restart. ADDRESS_DIR, JOIN_DIR, CERTS_DIR,
    COCKROACH and CERT_CHECK_SECONDS default to the container's values; tests point them elsewhere.
    """
    shell_variables = {"\0public\0": "${public_ip}", "\0private\0": "${private_ip}", "\0join\0": "${join}"}
    flags = [_double_quoted(flag) for flag in start_flags(spec, *shell_variables)]
    for mark, variable in shell_variables.items():
        flags = [flag.replace(mark, variable) for flag in flags]
    body = " \\\n  ".join(flags)
    return "\n".join([
        "#!/bin/bash",
        "set -euo pipefail",
        # This shell is the container's PID 1, which ignores a signal it has no handler for: until CockroachDB
        # runs there is nothing to stop but the shell itself.
        "trap 'exit 143' TERM INT",
        f'certs="${{CERTS_DIR:-{CERTS_DIR}}}"',
        f'address_file="${{ADDRESS_DIR:-{ADDRESS_DIR}}}/${{NODE_NAME:?NODE_NAME must name the Kubernetes node}}"',
        f'join_file="${{JOIN_DIR:-{JOIN_DIR}}}/join"',
        'if [ ! -r "$address_file" ]; then',
        '  echo "crdb-federation: no advertised addresses for node ${NODE_NAME} (${address_file})" >&2',
        "  exit 1",
        "fi",
        # `read` fails on a last line without a newline; the values are checked just below.
        'read -r public_ip private_ip signed < "$address_file" || true',
        'if [ -z "${public_ip:-}" ] || [ -z "${private_ip:-}" ]; then',
        '  echo "crdb-federation: ${address_file} must hold \'<public ip> <private ip> [signed]\'" >&2',
        "  exit 1",
        "fi",
        # A member's certificates are signed by the seed; until they cover this node (the secret holds only
        # the key and CAs before the first signature), peers would refuse it. Mounted files follow updates.
        'until [ "${signed:-}" = signed ] && [ -s "$certs/node.crt" ] && [ -s "$certs/client.node.crt" ]; do',
        '  echo "crdb-federation: waiting for the seed to sign the certificates of ${NODE_NAME}"',
        # In the background and waited for: bash runs a trap only once its foreground command ends (bash(1),
        # SIGNALS), and `wait` returns at once on a trapped signal, so a stop takes effect at once.
        '  sleep "${CERT_CHECK_SECONDS:-60}" & wait "$!" || true',
        '  read -r public_ip private_ip signed < "$address_file" || true',
        "done",
        'join=$(tr -d "[:space:]" < "$join_file")',
        'if [ -z "$join" ]; then',
        '  echo "crdb-federation: the join list ${join_file} is empty" >&2',
        "  exit 1",
        "fi",
        "fingerprint() { cat \"$certs\"/*.crt | sha256sum; }",
        # A stop asked for while CockroachDB starts is kept and passed on once its pid is known.
        "stop=''",
        "trap 'stop=TERM' TERM INT",
        f'"${{COCKROACH:-{COCKROACH_BIN}}}" {body} &',
        "child=$!",
        # Kubernetes stops the pod with SIGTERM: CockroachDB drains on it, within the grace period.
        "trap 'kill -TERM \"$child\" 2>/dev/null || true' TERM INT",
        'if [ -n "$stop" ]; then kill -TERM "$child" 2>/dev/null || true; fi',
        "seen=$(fingerprint)",
        "elapsed=0",
        # One-second steps: the container ends as soon as CockroachDB does, and a signal is never held.
        'while kill -0 "$child" 2>/dev/null; do',
        '  sleep 1 & wait "$!" || true',
        "  elapsed=$((elapsed + 1))",
        f'  [ "$elapsed" -ge "${{CERT_CHECK_SECONDS:-{CERT_CHECK_SECONDS}}}" ] || continue',
        "  elapsed=0",
        "  now=$(fingerprint)",
        '  if [ "$now" != "$seen" ]; then',
        '    echo "crdb-federation: certificates changed; reloading them (SIGHUP)"',
        '    kill -HUP "$child" 2>/dev/null || true',
        '    seen="$now"',
        "  fi",
        "done",
        'wait "$child"',
        "",
    ])


def _host(address: str, port: int) -> str:
    return f"--host={address}:{port}"


def _client_command(*words: str) -> str:
    """`cockroach <words> --certs-dir=...` as shell words (the binary can be overridden by tests)."""
    words = (*words, f"--certs-dir={CERTS_DIR}")
    return f'"${{COCKROACH:-{COCKROACH_BIN}}}" ' + " ".join(shlex.quote(word) for word in words)


def render_init_script(spec: CockroachSpec, host: str) -> str:
    """Initialises the cluster once in its life. A cluster that already answers SQL is never initialised
    again; `init` sent to a node whose store was wiped could otherwise bootstrap a second cluster."""
    answers = _client_command("sql", _host(host, COCKROACH_SQL_PORT), "--execute=SELECT 1")
    init = _client_command("init", _host(host, COCKROACH_PORT), f"--cluster-name={spec.cluster_name}")
    return "\n".join([
        "#!/bin/bash",
        "set -uo pipefail",
        # An uninitialised node holds SQL connections until init: a short deadline means "not yet".
        f"if timeout \"${{PROBE_SECONDS:-20}}\" {answers} >/dev/null 2>&1; then",
        '  echo "the cluster already answers SQL: nothing to initialise"',
        "  exit 0",
        "fi",
        "for attempt in $(seq 1 90); do",
        f"  if output=$({init} 2>&1); then",
        '    echo "$output"',
        "    exit 0",
        "  fi",
        '  case "$output" in',
        '    *"cluster has already been initialized"*) echo "cluster already initialised"; exit 0 ;;',
        "  esac",
        '  echo "init attempt ${attempt}: ${output}" >&2',
        "  sleep \"${RETRY_SECONDS:-10}\"",
        "done",
        "exit 1",
        "",
    ])


def clouds_query() -> str:
    """How many clouds have nodes that are members of the cluster (not decommissioning or decommissioned)."""
    return ("SELECT count(DISTINCT substring(n.locality FROM 'cloud=([^,]+)')) "
            "FROM crdb_internal.gossip_nodes AS n JOIN crdb_internal.gossip_liveness AS l USING (node_id) "
            "WHERE l.membership = 'active'")


def replication_statement(factor: str) -> str:
    return f"ALTER RANGE default CONFIGURE ZONE USING num_replicas = {factor};"


def render_cluster_settings_script(host: str, pinned_factor: int) -> str:
    """Re-runnable (a CronJob): the members' SQL user with its grants and lease table (first: it needs no licence),
    the licence and organisation from the mounted secret, and the default replication factor, pinned or following
    the clouds present."""
    def sql(*words: str) -> str:
        return _client_command("sql", _host(host, COCKROACH_SQL_PORT), *words)

    # An --execute that needs the shell's expansions is appended to `sql()` unquoted.

    lines = [
        "#!/bin/bash",
        "set -euo pipefail",
        sql(*[f"--execute={statement}" for statement in ops_user_statements()]),
        f'licence_dir="${{LICENCE_DIR:-/etc/crdb-federation/licence}}"',
        'organisation=$(cat "$licence_dir/organization")',
        'licence=$(cat "$licence_dir/license")',
        # Single quotes inside SQL string literals are doubled.
        "quote() { printf \"'%s'\" \"${1//\\'/\\'\\'}\"; }",
        f'{sql()} '
        '--execute="SET CLUSTER SETTING cluster.organization = $(quote "$organisation");" '
        '--execute="SET CLUSTER SETTING enterprise.license = $(quote "$licence");"',
    ]
    if pinned_factor:
        lines.append(f"factor={int(pinned_factor)}")
    else:
        lines += [
            f"clouds=$({sql('--format=csv', f'--execute={clouds_query()}')} | tail -n 1)",
            f'if [ "$clouds" -ge {CLOUDS_FOR_FIVE_REPLICAS} ]; then factor=5; else factor=3; fi',
            'echo "clouds present: ${clouds}; default replication factor: ${factor}"',
        ]
    lines += [
        sql() + f' --execute="{replication_statement("${factor}")}"',
        "",
    ]
    return "\n".join(lines)


def _meta(spec: CockroachSpec, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": dict(LABELS)}


def render_namespace(spec: CockroachSpec) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": spec.namespace, "labels": dict(LABELS)}}


def render_address_config_map(spec: CockroachSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(spec, ADDRESS_CONFIG_MAP),
        "data": {n.name: f"{n.public_ip} {n.private_ip} {'signed' if n.signed else 'waiting'}\n" for n in spec.nodes},
    }


def render_join_config_map(spec: CockroachSpec, join: tuple[str, ...]) -> dict[str, Any]:
    """The join list, read by each node when it starts: changing it restarts nothing."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(spec, JOIN_CONFIG_MAP),
        "data": {"join": ",".join(join) + "\n"},
    }


def render_secret(spec: CockroachSpec, name: str, files: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(spec, name), "type": "Opaque", "stringData": files}


def _ports() -> list[dict[str, Any]]:
    return [
        {"name": "grpc", "port": COCKROACH_PORT, "targetPort": COCKROACH_PORT},
        {"name": "sql", "port": COCKROACH_SQL_PORT, "targetPort": COCKROACH_SQL_PORT},
        {"name": "http", "port": COCKROACH_HTTP_PORT, "targetPort": COCKROACH_HTTP_PORT},
    ]


def render_public_service(spec: CockroachSpec) -> dict[str, Any]:
    """SQL and the admin UI for clients inside the member's Kubernetes."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, PUBLIC_SERVICE),
        "spec": {"type": "ClusterIP", "selector": dict(SELECTOR), "ports": _ports()},
    }


def _secret_volume(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "secret": {"secretName": secret, "defaultMode": READ_ONLY_BY_OWNER}}


def _proxy_env(spec: CockroachSpec) -> list[dict[str, str]]:
    """Telemetry of Free licences and licence checks leave through the cloud's proxy, if it has one."""
    if not spec.http_proxy:
        return []
    no_proxy = ",".join(spec.no_proxy)
    return [{"name": name, "value": value} for name, value in (
        ("HTTP_PROXY", spec.http_proxy), ("HTTPS_PROXY", spec.http_proxy), ("NO_PROXY", no_proxy),
        ("http_proxy", spec.http_proxy), ("https_proxy", spec.http_proxy), ("no_proxy", no_proxy))]


def render_daemonset(spec: CockroachSpec, *, await_ready: bool = True) -> dict[str, Any]:
    """`await_ready` False (a member whose certificates the seed has not signed yet): Pulumi does not wait
    for pods that cannot start; the annotation is metadata, so dropping it later restarts nothing."""
    script = render_start_script(spec)
    resources = {"cpu": spec.cpu, "memory": spec.memory}
    container = {
        "name": APP,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/bash", "-c", script],
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "COCKROACH_CHANNEL", "value": "kubernetes-crdb-federation"},
            *_proxy_env(spec),
        ],
        "ports": [
            {"name": "grpc", "containerPort": COCKROACH_PORT, "protocol": "TCP"},
            {"name": "sql", "containerPort": COCKROACH_SQL_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": COCKROACH_HTTP_PORT, "protocol": "TCP"},
        ],
        # Equal requests and limits: Guaranteed QoS, and the 25% cache and SQL memory are of a fixed size.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        # Readiness only: a liveness probe would kill nodes that are merely busy or catching up.
        "readinessProbe": {
            "httpGet": {"path": "/health?ready=1", "port": COCKROACH_HTTP_PORT, "scheme": "HTTPS"},
            "initialDelaySeconds": 10,
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "securityContext": {"allowPrivilegeEscalation": False},
        "volumeMounts": [
            {"name": "datadir", "mountPath": DATA_DIR},
            {"name": "addresses", "mountPath": ADDRESS_DIR, "readOnly": True},
            {"name": "join", "mountPath": JOIN_DIR, "readOnly": True},
            {"name": "certs", "mountPath": CERTS_DIR, "readOnly": True},
        ],
    }
    metadata = _meta(spec, APP)
    if not await_ready:
        metadata["annotations"] = {"pulumi.com/skipAwait": "true"}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": dict(SELECTOR)},
            # One node at a time, and the next only once the last is ready again.
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "minReadySeconds": 10,
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "hostNetwork": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "terminationGracePeriodSeconds": 300,
                    "nodeSelector": {NODE_LABEL: "true"},
                    "containers": [container],
                    "volumes": [
                        {"name": "datadir", "hostPath": {"path": HOST_STORE_DIR, "type": "Directory"}},
                        {"name": "addresses", "configMap": {"name": ADDRESS_CONFIG_MAP}},
                        {"name": "join", "configMap": {"name": JOIN_CONFIG_MAP}},
                        _secret_volume("certs", NODE_SECRET),
                    ],
                },
            },
        },
    }


def _client_pod(image: str, name: str, script: str, extra_volumes: tuple[tuple[str, str, str], ...] = (),
                certificates: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The pod of a client job: the seed's run with the root client certificate (and extra secrets), a
    member's decommissioning with its node certificates (`certificates`: that secret volume)."""
    mounts = [{"name": "certs", "mountPath": CERTS_DIR, "readOnly": True}]
    volumes = [certificates or _secret_volume("certs", CLIENT_SECRET)]
    for volume, secret, path in extra_volumes:
        mounts.append({"name": volume, "mountPath": path, "readOnly": True})
        volumes.append(_secret_volume(volume, secret))
    return {
        "metadata": {"labels": dict(LABELS)},
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [{
                "name": name,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/bash", "-c", script],
                "securityContext": {"allowPrivilegeEscalation": False},
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        },
    }


def render_job(spec: CockroachSpec, name: str, script: str) -> dict[str, Any]:
    """A one-off client job of the seed (init). No TTL: a finished job that vanished would be re-created."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(spec, name),
        "spec": {"backoffLimit": 6, "template": _client_pod(spec.image, name, script)},
    }


def render_cluster_settings_cron_job(spec: CockroachSpec, host: str, pinned_factor: int) -> dict[str, Any]:
    name = "cluster-settings"
    pod = _client_pod(spec.image, name, render_cluster_settings_script(host, pinned_factor),
                      (("licence", LICENCE_SECRET, "/etc/crdb-federation/licence"),))
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _meta(spec, name),
        "spec": {
            "schedule": SETTINGS_SCHEDULE,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {"backoffLimit": 2, "template": pod}},
        },
    }


# `cockroach node decommission` talks gRPC as the CLI's user, always root (pkg/base/config.go defaultUser; its
# --user is not used for the RPC connection, cockroachdb/cockroach#64106), so it loads client.root.crt. A member
# holds no root certificate: its client.node.crt is mounted under that name and --cert-principal-map maps the
# certificate's CN=node to root for the client's own check (security/certificate_loader.go). The server sees
# CN=node, which may run node RPCs (rpc/auth.go checkRootOrNodeInScope).
DECOMMISSION_CERTS = {"ca.crt": "ca.crt", "client.node.crt": "client.root.crt", "client.node.key": "client.root.key"}


def decommission_command(node_ids: Sequence[int], host: str, cluster_name: Optional[str]) -> str:
    """The command line, every flag as the v26 docs list it for `cockroach node decommission` (cockroach-node:
    --host, --certs-dir, --cluster-name or --disable-cluster-name-verification, --cert-principal-map; --wait)."""
    name = [f"--cluster-name={cluster_name}"] if cluster_name else ["--disable-cluster-name-verification"]
    return _client_command("node", "decommission", *[str(i) for i in node_ids], f"--host={host}", *name,
                           "--cert-principal-map=node:root", "--wait=all")


def render_decommission_job(namespace: str, image: str, name: str, node_ids: Sequence[int], host: str,
                            timeout_seconds: int, cluster_name: Optional[str]) -> dict[str, Any]:
    """Decommissions nodes through a live node's RPC port with the member's own node client certificate (the
    `node` user), and waits until their replicas have moved and they are `decommissioned`. `host`: a node
    that is not leaving (a decommissioned node refuses connections)."""
    certificates = {"name": "certs", "secret": {
        "secretName": NODE_SECRET, "defaultMode": READ_ONLY_BY_OWNER,
        "items": [{"key": key, "path": path} for key, path in DECOMMISSION_CERTS.items()]}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS)},
        "spec": {
            "backoffLimit": 3,
            "activeDeadlineSeconds": int(timeout_seconds),
            "template": _client_pod(image, "decommission", "set -euo pipefail\n"
                                    + decommission_command(node_ids, host, cluster_name) + "\n",
                                    certificates=certificates),
        },
    }


def node_certificate_dns_names(namespace: str) -> list[str]:
    """Names a node is reached by from inside its Kubernetes."""
    names = ["localhost"]
    names += [PUBLIC_SERVICE, f"{PUBLIC_SERVICE}.{namespace}", f"{PUBLIC_SERVICE}.{namespace}.svc",
              f"{PUBLIC_SERVICE}.{namespace}.svc.cluster.local"]
    return names


def node_certificate_ips(nodes: tuple[NodeAddresses, ...]) -> list[str]:
    ips = ["127.0.0.1"]
    for node in nodes:
        ips += [node.public_ip, node.private_ip]
    return list(dict.fromkeys(ips))


def sql_url(host: str) -> str:
    """A connection URL without secrets: the client supplies the files named in it."""
    return (f"postgresql://root@{host}:{COCKROACH_SQL_PORT}/defaultdb?sslmode=verify-full"
            "&sslrootcert=ca.crt&sslcert=client.root.crt&sslkey=client.root.key")


def admin_ui_url(host: str) -> str:
    return f"https://{host}:{COCKROACH_HTTP_PORT}"
