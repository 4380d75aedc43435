"""Pure renderers for one member's CockroachDB: start script, jobs and Kubernetes manifests.

Every function maps plain values to plain text or dicts (real camelCase manifests), so the tests
feed them to bash, shellcheck and kubernetes-validate without Pulumi.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from typing import Any

from .settings import COCKROACH_HTTP_PORT, COCKROACH_PORT

APP = "cockroachdb"
PUBLIC_SERVICE = f"{APP}-public"
LABELS = {"app.kubernetes.io/name": APP, "app.kubernetes.io/part-of": "crdb-federation"}
SELECTOR = {"app.kubernetes.io/name": APP}
COCKROACH_BIN = "/cockroach/cockroach"
CERTS_DIR = "/cockroach/cockroach-certs"
DATA_DIR = "/cockroach/cockroach-data"
ADDRESS_DIR = "/etc/crdb-federation/addresses"
NODE_SECRET = f"{APP}-node-certs"
CLIENT_SECRET = f"{APP}-root-certs"
ADDRESS_CONFIG_MAP = f"{APP}-node-addresses"
READ_ONLY_BY_OWNER = 0o400


@dataclass(frozen=True)
class NodeAddresses:
    """A Kubernetes node's name and the addresses its CockroachDB node advertises."""

    name: str
    public_ip: str
    private_ip: str


@dataclass(frozen=True)
class CockroachSpec:
    namespace: str
    member: str
    region: str
    zone: str
    cluster_name: str
    image: str
    replicas: int
    join: tuple[str, ...]
    insecure: bool
    memory: str
    cpu: str
    storage_size: str
    storage_class: str
    nodes: tuple[NodeAddresses, ...]


def locality(member: str, region: str, zone: str) -> str:
    """Same tiers in the same order on every node of the federation: cloud first, so replicas spread over clouds."""
    return f"cloud={member},region={region},zone={zone}"


def security_flags(spec: CockroachSpec) -> list[str]:
    return ["--insecure"] if spec.insecure else [f"--certs-dir={CERTS_DIR}"]


def start_flags(spec: CockroachSpec, public_ip: str, private_ip: str) -> list[str]:
    """The exact `cockroach start` flags of a node with these addresses (the script substitutes them at run time)."""
    return [
        "start",
        f"--advertise-addr={public_ip}:{COCKROACH_PORT}",
        # Nodes of one cloud talk over private addresses: floating IPs often do not hairpin.
        f"--locality-advertise-addr=cloud={spec.member}@{private_ip}:{COCKROACH_PORT}",
        f"--listen-addr=:{COCKROACH_PORT}",
        f"--http-addr=:{COCKROACH_HTTP_PORT}",
        f"--locality={locality(spec.member, spec.region, spec.zone)}",
        f"--join={','.join(spec.join)}",
        f"--cluster-name={spec.cluster_name}",
        *security_flags(spec),
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
    """bash run as the container command: looks up the addresses of the node the pod runs on, then execs.

    The addresses come from a ConfigMap keyed by Kubernetes node name, so each pod advertises its own
    node's public address, and the same one after every restart. ADDRESS_DIR and COCKROACH default to
    the container's paths; tests point them elsewhere.
    """
    flags = [_double_quoted(flag) for flag in start_flags(spec, "\0public\0", "\0private\0")]
    flags = [flag.replace("\0public\0", "${public_ip}").replace("\0private\0", "${private_ip}") for flag in flags]
    body = " \\\n  ".join(flags)
    return "\n".join([
        "#!/bin/bash",
        "set -euo pipefail",
        f'address_file="${{ADDRESS_DIR:-{ADDRESS_DIR}}}/${{NODE_NAME:?NODE_NAME must name the Kubernetes node}}"',
        'if [ ! -r "$address_file" ]; then',
        '  echo "crdb-federation: no advertised addresses for node ${NODE_NAME} (${address_file})" >&2',
        "  exit 1",
        "fi",
        # `read` fails on a last line without a newline; the values are checked just below.
        'read -r public_ip private_ip < "$address_file" || true',
        'if [ -z "${public_ip:-}" ] || [ -z "${private_ip:-}" ]; then',
        '  echo "crdb-federation: ${address_file} must hold \'<public ip> <private ip>\'" >&2',
        "  exit 1",
        "fi",
        f'exec "${{COCKROACH:-{COCKROACH_BIN}}}" {body}',
        "",
    ])


def _client_command(spec: CockroachSpec, host: str, command: str, *arguments: str) -> str:
    """`cockroach <command>` against one node, as shell words (the binary can be overridden by tests)."""
    words = [command, *security_flags(spec), f"--host={host}:{COCKROACH_PORT}", *arguments]
    return f'"${{COCKROACH:-{COCKROACH_BIN}}}" ' + " ".join(shlex.quote(word) for word in words)


def render_init_script(spec: CockroachSpec, host: str) -> str:
    """Initialises the cluster once; a cluster that is already initialised counts as success."""
    init = _client_command(spec, host, "init", f"--cluster-name={spec.cluster_name}")
    return "\n".join([
        "#!/bin/bash",
        "set -uo pipefail",
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


def replication_statement(factor: int) -> str:
    return f"ALTER RANGE default CONFIGURE ZONE USING num_replicas = {int(factor)};"


def render_replication_script(spec: CockroachSpec, host: str, factor: int) -> str:
    sql = _client_command(spec, host, "sql", f"--execute={replication_statement(factor)}")
    return "\n".join([
        "#!/bin/bash",
        "set -euo pipefail",
        "for attempt in $(seq 1 60); do",
        f"  if {sql}; then exit 0; fi",
        '  echo "replication attempt ${attempt} failed" >&2',
        "  sleep \"${RETRY_SECONDS:-10}\"",
        "done",
        "exit 1",
        "",
    ])


def _meta(spec: CockroachSpec, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": dict(LABELS)}


def render_namespace(spec: CockroachSpec) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": spec.namespace, "labels": dict(LABELS)}}


def render_address_config_map(spec: CockroachSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(spec, ADDRESS_CONFIG_MAP),
        "data": {n.name: f"{n.public_ip} {n.private_ip}\n" for n in spec.nodes},
    }


def render_secret(spec: CockroachSpec, name: str, files: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(spec, name), "type": "Opaque", "stringData": files}


def _ports() -> list[dict[str, Any]]:
    return [
        {"name": "grpc", "port": COCKROACH_PORT, "targetPort": COCKROACH_PORT},
        {"name": "http", "port": COCKROACH_HTTP_PORT, "targetPort": COCKROACH_HTTP_PORT},
    ]


def render_services(spec: CockroachSpec) -> list[dict[str, Any]]:
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, APP),
        "spec": {
            "clusterIP": "None",
            # Peers must resolve nodes that are not ready yet, or a fresh cluster never forms.
            "publishNotReadyAddresses": True,
            "selector": dict(SELECTOR),
            "ports": _ports(),
        },
    }
    public = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, PUBLIC_SERVICE),
        "spec": {"type": "ClusterIP", "selector": dict(SELECTOR), "ports": _ports()},
    }
    return [headless, public]


def render_pod_disruption_budget(spec: CockroachSpec) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(spec, APP),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(SELECTOR)}},
    }


def _cert_volume(secret: str) -> dict[str, Any]:
    return {"name": "certs", "secret": {"secretName": secret, "defaultMode": READ_ONLY_BY_OWNER}}


def render_statefulset(spec: CockroachSpec) -> dict[str, Any]:
    script = render_start_script(spec)
    scheme = "HTTP" if spec.insecure else "HTTPS"
    resources = {"cpu": spec.cpu, "memory": spec.memory}
    mounts = [
        {"name": "datadir", "mountPath": DATA_DIR},
        {"name": "addresses", "mountPath": ADDRESS_DIR, "readOnly": True},
    ]
    volumes: list[dict[str, Any]] = [{"name": "addresses", "configMap": {"name": ADDRESS_CONFIG_MAP}}]
    if not spec.insecure:
        mounts.append({"name": "certs", "mountPath": CERTS_DIR, "readOnly": True})
        volumes.append(_cert_volume(NODE_SECRET))
    container = {
        "name": APP,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/bash", "-c", script],
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "COCKROACH_CHANNEL", "value": "kubernetes-crdb-federation"},
        ],
        "ports": [
            {"name": "grpc", "containerPort": COCKROACH_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": COCKROACH_HTTP_PORT, "protocol": "TCP"},
        ],
        # Equal requests and limits: Guaranteed QoS, and the 25% cache and SQL memory are of a fixed size.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        # Readiness only: a liveness probe would kill nodes that are merely busy or catching up.
        "readinessProbe": {
            "httpGet": {"path": "/health?ready=1", "port": COCKROACH_HTTP_PORT, "scheme": scheme},
            "initialDelaySeconds": 10,
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "securityContext": {"allowPrivilegeEscalation": False},
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(spec, APP),
        "spec": {
            "serviceName": APP,
            "replicas": spec.replicas,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": dict(SELECTOR)},
            "template": {
                "metadata": {
                    "labels": dict(LABELS),
                    "annotations": {"crdb-federation/start-script-sha256": hashlib.sha256(script.encode()).hexdigest()},
                },
                "spec": {
                    "hostNetwork": True,
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "terminationGracePeriodSeconds": 300,
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": dict(SELECTOR)}, "topologyKey": "kubernetes.io/hostname"}
                    ]}},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "datadir", "labels": dict(LABELS)},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": spec.storage_class,
                    "resources": {"requests": {"storage": spec.storage_size}},
                },
            }],
        },
    }


def render_job(spec: CockroachSpec, name: str, script: str) -> dict[str, Any]:
    """A client job of the seed (init, replication) running with the root client certificate."""
    container: dict[str, Any] = {
        "name": name,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/bash", "-c", script],
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    pod: dict[str, Any] = {"restartPolicy": "OnFailure", "containers": [container]}
    if not spec.insecure:
        container["volumeMounts"] = [{"name": "certs", "mountPath": CERTS_DIR, "readOnly": True}]
        pod["volumes"] = [_cert_volume(CLIENT_SECRET)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(spec, name),
        "spec": {"backoffLimit": 6, "template": {"metadata": {"labels": dict(LABELS)}, "spec": pod}},
    }


def node_certificate_dns_names(namespace: str) -> list[str]:
    """Service names a node is reached by, inside and outside its namespace."""
    names = ["localhost"]
    for service in (APP, PUBLIC_SERVICE):
        names += [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    names += [f"*.{APP}", f"*.{APP}.{namespace}", f"*.{APP}.{namespace}.svc.cluster.local"]
    return names


def node_certificate_ips(nodes: tuple[NodeAddresses, ...]) -> list[str]:
    ips = ["127.0.0.1"]
    for node in nodes:
        ips += [node.public_ip, node.private_ip]
    return list(dict.fromkeys(ips))


def sql_url(host: str, *, insecure: bool) -> str:
    """A connection URL without secrets: the client supplies the files named in it."""
    if insecure:
        return f"postgresql://root@{host}:{COCKROACH_PORT}/defaultdb?sslmode=disable"
    return (f"postgresql://root@{host}:{COCKROACH_PORT}/defaultdb?sslmode=verify-full"
            "&sslrootcert=ca.crt&sslcert=client.root.crt&sslkey=client.root.key")


def admin_ui_url(host: str, *, insecure: bool) -> str:
    return f"{'http' if insecure else 'https'}://{host}:{COCKROACH_HTTP_PORT}"
