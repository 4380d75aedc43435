"""In-place upgrades of k3s and the OS, one node at a time, by the k3s system-upgrade-controller.

Servers never follow a changed `k3sVersion` by replacement (they ignore their user data after boot).
Instead the controller runs the Plans below: a new `k3sVersion` changes the Plans' version, and the
controller upgrades the server first, then each agent, one at a time, cordoning each node while it
works (k3s's unit has KillMode=process: restarting k3s leaves the pods running). A new
`osUpgradeVersion` runs the distribution's upgrade the same way, and reboots a node only when the upgrade
asks for it. The controller moves on as soon as a node's Job completes and uncordons the node then
(system-upgrade-controller handle_batch.go), and drains skip DaemonSet pods, CockroachDB's among them: so
the OS plan's own prepare step is the health gate, and it runs before the controller cordons and drains the
node (job.go: the prepare init container, then the drain one), so a gate that fails leaves the node
schedulable. It passes only when every CockroachDB node of the cloud is ready and, asked through this node's
own CockroachDB, every node of the cluster is live and no range anywhere is under-replicated or unavailable;
after a reboot the Job's next pod passes the same gate before it completes. Pure renderers; the component
lives in kubernetes.py.
"""

from __future__ import annotations

import shlex
from typing import Any, Optional, Sequence

from .cockroach_manifests import APP, CERTS_DIR, COCKROACH_BIN
from .decommission import ALLOW_INTERNALS_SQL
from .ops_user import OPS_CERT_FILE, OPS_USER
from .settings import COCKROACH_SQL_PORT

NAMESPACE = "system-upgrade"
CONTROLLER = "system-upgrade-controller"
RBAC = "rbac.authorization.k8s.io/v1"
SERVICE_ACCOUNT = "system-upgrade"
CONTROLLER_IMAGE = "rancher/system-upgrade-controller:v0.20.1"
K3S_UPGRADE_IMAGE = "rancher/k3s-upgrade"
OS_UPGRADE_IMAGE = "ubuntu:24.04"
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
LABELS = {"app.kubernetes.io/name": "system-upgrade-controller", "app.kubernetes.io/part-of": "crdb-federation"}
# The OS upgrade's Job pods are killed by the reboot and must outlast the health gate on both boots, apt
# and the reboot itself; the controller's default deadline is 900 s.
OS_UPGRADE_DEADLINE_SECONDS = 7200
HEALTH_WAIT_SECONDS = 1800
NODES_ENV = "CRDB_NODES"


# The cluster's own view, through SQL. A range's under-replicated and unavailable counts are kept only by its
# leaseholder, or its first live replica (pkg/kv/kvserver/replica_metrics.go calcRangeCounter): this cloud's
# nodes alone miss the ranges they hold a replica of but do not lead. Summed over every store of the cluster
# (crdb_internal.kv_store_status, as `cockroach node status --ranges` sums them, pkg/cli/node.go), each range
# counts once; and a member node that is not live (as `cockroach node status` reads liveness) holds replicas
# that another reboot could take below quorum. Both must be 0.
GATE_SQL = (
    "SELECT (SELECT count(*) FROM crdb_internal.gossip_liveness AS l "
    "LEFT JOIN crdb_internal.gossip_nodes AS n USING (node_id) "
    "WHERE l.membership != 'decommissioned' AND NOT ifnull(n.is_live, false)) AS nodes_not_live, "
    "(SELECT ifnull(sum((metrics->>'ranges.underreplicated')::DECIMAL + (metrics->>'ranges.unavailable')::DECIMAL), 0)"
    "::INT FROM crdb_internal.kv_store_status) AS ranges_at_risk"
)
SQL_SECONDS = 60


# The gate's exit code when this node holds no client certificate for OPS_USER: waiting would not bring one.
NO_OPS_CERTIFICATE_EXIT = 3


def cluster_query_command() -> str:
    """GATE_SQL through the CockroachDB container of this very node (k3s's crictl, the pod's own binary and the
    certificates of its node secret), logged in as the members' SQL user (components/ops_user.py: CockroachDB
    refuses a SQL login as `node`): no credential leaves the pod, and SQL needs no port beyond the node itself.
    Returns NO_OPS_CERTIFICATE_EXIT when the pod has no certificate for that user."""
    container = f"k3s crictl ps --quiet --label io.kubernetes.container.name={APP} | head -n 1"
    sql = (f"{COCKROACH_BIN} sql --certs-dir={CERTS_DIR} --user={OPS_USER} --host=127.0.0.1:{COCKROACH_SQL_PORT} "
           f"--format=csv --execute={shlex.quote(ALLOW_INTERNALS_SQL)} --execute={shlex.quote(GATE_SQL)}")
    return "\n".join([
        f"  container=$({container})",
        '  [ -n "$container" ] || return 1',
        # A failed exec (the container just went) is no answer: only the pod's own word that the file is absent is.
        f'  certificate=$(k3s crictl exec "$container" /bin/bash -c '
        f"'[ -s {CERTS_DIR}/{OPS_CERT_FILE} ] && echo present || echo absent') || return 1",
        f'  [ "$certificate" = present ] || return {NO_OPS_CERTIFICATE_EXIT}',
        f'  timeout {SQL_SECONDS} k3s crictl exec "$container" {sql}',
    ])


def os_upgrade_gate_script(http_port: int) -> str:
    """The OS plan's prepare step, on the node itself (chroot into the host the controller mounts at /host; its Job
    pods use the host's network). Waits until every CockroachDB node of this cloud is ready (/health?ready=1 needs
    no authentication: CockroachDB docs, monitoring-and-alerting) and the cluster answers GATE_SQL with 0,0. A node
    without the SQL user's certificate refuses at once, naming what to run (the Job tries again later)."""
    return "\n".join([
        "set -eu",
        "cluster_answer() {",
        cluster_query_command(),
        "}",
        "healthy() {",
        f"  for ip in ${NODES_ENV}; do",
        f'    curl -fsk --max-time 5 "https://$ip:{http_port}/health?ready=1" >/dev/null || return 1',
        "  done",
        "  status=0",
        "  answer=$(cluster_answer) || status=$?",
        f'  if [ "$status" -eq {NO_OPS_CERTIFICATE_EXIT} ]; then',
        f'    echo "crdb-federation: this node has no client certificate for the SQL user {OPS_USER}'
        f' ({CERTS_DIR}/{OPS_CERT_FILE}), which the health gate logs in as. The seed\'s operator runs up on the seed'
        " (it signs this cloud's request for it), then this cloud's up installs it; not upgrading $(hostname),"
        ' which stays schedulable" >&2',
        "    exit 1",
        "  fi",
        '  [ "$status" -eq 0 ] || return 1',
        "  [ \"$(printf '%s\\n' \"$answer\" | tail -n 1)\" = 0,0 ]",
        "}",
        "waited=0",
        "until healthy; do",
        f'  if [ "$waited" -ge {HEALTH_WAIT_SECONDS} ]; then',
        f'    echo "crdb-federation: the cluster is not healthy (every node live, no under-replicated or unavailable'
        f' range) after {HEALTH_WAIT_SECONDS}s; not upgrading $(hostname), which stays schedulable" >&2',
        "    exit 1",
        "  fi",
        "  sleep 10",
        "  waited=$((waited + 10))",
        "done",
        "",
    ])


def os_upgrade_script() -> str:
    """The OS plan's upgrade step, once the gate passed and the node is drained."""
    return "\n".join([
        "set -eu",
        "export DEBIAN_FRONTEND=noninteractive",
        "apt-get update",
        "apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade",
        "if [ -f /var/run/reboot-required ]; then",
        "  systemctl reboot",
        # systemctl returns at once: the Job must not complete before the node is back. The reboot ends this
        # pod; the Job's next pod passes the gate once the cluster is healthy again and finds nothing to reboot.
        "  sleep 3600",
        "  exit 1",
        "fi",
        "",
    ])


def _meta(name: str, namespace: Optional[str] = NAMESPACE) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(LABELS)}
    if namespace:
        meta["namespace"] = namespace
    return meta


def render_plan_crd() -> dict[str, Any]:
    """The Plan CRD, so Plans can be created in the same run as the controller (which then refreshes
    the schema with its own full one)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "plans.upgrade.cattle.io", "labels": dict(LABELS)},
        "spec": {
            "group": "upgrade.cattle.io",
            "names": {"kind": "Plan", "listKind": "PlanList", "plural": "plans", "singular": "plan"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }],
        },
    }


def render_controller() -> list[dict[str, Any]]:
    """Namespace, service account, RBAC and the controller's Deployment (on the control-plane node)."""
    # As system-upgrade-controller v0.20.1's manifests/clusterrole.yaml splits it: what is cluster-wide (nodes,
    # plans, reading jobs), what only its own namespace needs (its Jobs, the Plans' secrets), and the drain.
    cluster_rules = [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": ["get", "list", "watch", "create", "patch", "update"]},
        {"apiGroups": [""], "resources": ["namespaces", "nodes"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["update"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "create", "patch", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [CONTROLLER],
         "verbs": ["get", "update"]},
        {"apiGroups": ["upgrade.cattle.io"], "resources": ["plans", "plans/status"],
         "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
    ]
    namespace_rules = [
        {"apiGroups": ["batch"], "resources": ["jobs"],
         "verbs": ["create", "delete", "deletecollection", "patch", "update", "get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
    ]
    # Cordon and drain; drains skip DaemonSet pods, so CockroachDB is never evicted.
    drainer_rules = [
        {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "delete"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
        {"apiGroups": ["apps"], "resources": ["statefulsets", "daemonsets", "replicasets"], "verbs": ["get", "list"]},
    ]
    environment = {
        "SYSTEM_UPGRADE_CONTROLLER_DEBUG": "false",
        "SYSTEM_UPGRADE_CONTROLLER_THREADS": "2",
        "SYSTEM_UPGRADE_CONTROLLER_LEADER_ELECT": "true",
        "SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS": "900",
        "SYSTEM_UPGRADE_JOB_BACKOFF_LIMIT": "99",
        "SYSTEM_UPGRADE_JOB_IMAGE_PULL_POLICY": "IfNotPresent",
        "SYSTEM_UPGRADE_JOB_KUBECTL_IMAGE": "rancher/kubectl:v1.35.0",
        "SYSTEM_UPGRADE_JOB_PRIVILEGED": "true",
        "SYSTEM_UPGRADE_JOB_TTL_SECONDS_AFTER_FINISH": "900",
        "SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL": "15m",
    }
    selector = {"upgrade.cattle.io/controller": CONTROLLER}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(CONTROLLER),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(selector)},
            "template": {
                # The controller label keeps the controller from draining its own node away.
                "metadata": {"labels": {**LABELS, **selector}},
                "spec": {
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [{"key": CONTROL_PLANE, "operator": "Exists"}]}]}}},
                    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                    {"key": CONTROL_PLANE, "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{
                        "name": CONTROLLER,
                        "image": CONTROLLER_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                                            "allowPrivilegeEscalation": False,
                                            "seccompProfile": {"type": "RuntimeDefault"},
                                            "capabilities": {"drop": ["ALL"]}},
                        "envFrom": [{"configMapRef": {"name": "default-controller-env"}}],
                        "env": [
                            {"name": "SYSTEM_UPGRADE_CONTROLLER_NAME", "valueFrom": {"fieldRef": {
                                "fieldPath": "metadata.labels['upgrade.cattle.io/controller']"}}},
                            {"name": "SYSTEM_UPGRADE_CONTROLLER_NAMESPACE", "valueFrom": {"fieldRef": {
                                "fieldPath": "metadata.namespace"}}},
                            {"name": "SYSTEM_UPGRADE_CONTROLLER_NODE_NAME", "valueFrom": {"fieldRef": {
                                "fieldPath": "spec.nodeName"}}},
                        ],
                        "volumeMounts": [{"name": "etc-ssl", "mountPath": "/etc/ssl", "readOnly": True},
                                         {"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "etc-ssl", "hostPath": {"path": "/etc/ssl", "type": "DirectoryOrCreate"}},
                                {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    subjects = [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]

    def bound(kind: str, name: str, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        namespace = None if kind == "ClusterRole" else NAMESPACE
        return [
            {"apiVersion": RBAC, "kind": kind, "metadata": _meta(name, namespace), "rules": rules},
            {"apiVersion": RBAC, "kind": f"{kind}Binding", "metadata": _meta(name, namespace),
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}, "subjects": subjects},
        ]

    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            **_meta(NAMESPACE, None), "labels": {**LABELS, "pod-security.kubernetes.io/enforce": "privileged"}}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(SERVICE_ACCOUNT)},
        *bound("ClusterRole", "crdb-federation-system-upgrade", cluster_rules),
        *bound("ClusterRole", "crdb-federation-system-upgrade-drainer", drainer_rules),
        *bound("Role", "crdb-federation-system-upgrade", namespace_rules),
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("default-controller-env"), "data": environment},
        deployment,
    ]


def _plan(name: str, version: str, node_selector: dict[str, Any], upgrade: dict[str, Any], **extra: Any
          ) -> dict[str, Any]:
    return {
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": _meta(name),
        "spec": {
            # One node at a time, and never two of these plans on one node at once (exclusive: pod
            # anti-affinity on the host name, types.go).
            "concurrency": 1,
            "exclusive": True,
            "version": version,
            "nodeSelector": node_selector,
            "serviceAccountName": SERVICE_ACCOUNT,
            "cordon": True,
            "upgrade": upgrade,
            **extra,
        },
    }


def render_k3s_plans(k3s_version: str) -> list[dict[str, Any]]:
    """The server first; each agent after it (the agents' prepare step waits for the server plan)."""
    server = {"matchExpressions": [{"key": CONTROL_PLANE, "operator": "Exists"}]}
    agents = {"matchExpressions": [{"key": CONTROL_PLANE, "operator": "DoesNotExist"}]}
    image = {"image": K3S_UPGRADE_IMAGE}
    # A minute between nodes: the restarted kubelet reports its pods again before the next node goes.
    pause = {"postCompleteDelay": "1m"}
    return [
        _plan("k3s-server", k3s_version, server, image, **pause),
        _plan("k3s-agent", k3s_version, agents, image,
              prepare={"image": K3S_UPGRADE_IMAGE, "args": ["prepare", "k3s-server"]}, **pause),
    ]


def render_os_plan(os_version: str, node_ips: Sequence[str], http_port: int) -> dict[str, Any]:
    """Every node, one at a time: the gate of os_upgrade_gate_script as the prepare step (before the cordon and the
    drain), then the upgrade. `node_ips`: this cloud's nodes (an env of the prepare container; the Plan's hash is
    its version and service account, types.go / plan.go DigestStatus, so a new node changes no node's upgrade)."""
    host = {"image": OS_UPGRADE_IMAGE, "command": ["chroot", "/host"]}
    prepare = {**host, "args": ["sh", "-c", os_upgrade_gate_script(http_port)],
               "envs": [{"name": NODES_ENV, "value": " ".join(node_ips)}],
               # The controller makes only the upgrade container privileged by default (job.go); the gate needs
               # the host's containerd socket for crictl.
               "securityContext": {"privileged": True}}
    upgrade = {**host, "args": ["sh", "-c", os_upgrade_script()]}
    return _plan("os-upgrade", os_version, {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In",
                                                                 "values": ["linux"]}]},
                 upgrade, prepare=prepare, jobActiveDeadlineSecs=OS_UPGRADE_DEADLINE_SECONDS,
                 postCompleteDelay="2m",
                 # Other pods move away; DaemonSet pods (CockroachDB's) stay and stop with the node's graceful
                 # shutdown when it reboots (the kubelet drop-in of components/cloudinit.py).
                 drain={"force": True, "ignoreDaemonSets": True, "skipWaitForDeleteTimeout": 300})
