"""In-place upgrades of k3s and the OS, one node at a time, by the k3s system-upgrade-controller.

Servers never follow a changed `k3sVersion` by replacement (they ignore their user data after boot).
Instead the controller runs the Plans below: a new `k3sVersion` changes the Plans' version, and the
controller upgrades the server first, then each agent, one at a time, cordoning each node while it
works; a new `osUpgradeVersion` runs the distribution's upgrade the same way and reboots a node only
when the upgrade asks for it. Pure renderers; the component lives in kubernetes.py.
"""

from __future__ import annotations

from typing import Any, Optional

NAMESPACE = "system-upgrade"
SERVICE_ACCOUNT = "system-upgrade"
CONTROLLER_IMAGE = "rancher/system-upgrade-controller:v0.20.1"
K3S_UPGRADE_IMAGE = "rancher/k3s-upgrade"
OS_UPGRADE_IMAGE = "ubuntu:24.04"
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
LABELS = {"app.kubernetes.io/name": "system-upgrade-controller", "app.kubernetes.io/part-of": "crdb-federation"}
# Runs on the node itself (the controller mounts the host's root at /host): upgrade, then reboot only if
# the distribution says a reboot is needed; the controller uncordons the node once it is back.
OS_UPGRADE_SCRIPT = (
    "set -eu; export DEBIAN_FRONTEND=noninteractive; apt-get update;"
    " apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade;"
    " if [ -f /var/run/reboot-required ]; then systemctl reboot; fi"
)


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
    rules = [
        {"apiGroups": ["batch"], "resources": ["jobs"],
         "verbs": ["get", "list", "watch", "create", "delete", "deletecollection", "patch", "update"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "verbs": ["get", "list", "watch", "create", "patch", "update"]},
        {"apiGroups": [""], "resources": ["namespaces", "secrets"], "verbs": ["get", "list", "watch"]},
        # Cordon, drain (evictions honour the PodDisruptionBudget) and read pod owners.
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "update", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "delete"]},
        {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
        {"apiGroups": ["apps"], "resources": ["statefulsets", "daemonsets", "replicasets"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "create", "patch", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "get", "update"]},
        {"apiGroups": ["upgrade.cattle.io"], "resources": ["plans", "plans/status"],
         "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
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
    selector = {"upgrade.cattle.io/controller": "system-upgrade-controller"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("system-upgrade-controller"),
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
                        "name": "system-upgrade-controller",
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
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {
            **_meta(NAMESPACE, None), "labels": {**LABELS, "pod-security.kubernetes.io/enforce": "privileged"}}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(SERVICE_ACCOUNT)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta("crdb-federation-system-upgrade", None), "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta("crdb-federation-system-upgrade", None),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "crdb-federation-system-upgrade"},
         "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]},
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
            # One node at a time: a member never has two CockroachDB nodes down for an upgrade.
            "concurrency": 1,
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
    return [
        _plan("k3s-server", k3s_version, server, image),
        _plan("k3s-agent", k3s_version, agents, image,
              prepare={"image": K3S_UPGRADE_IMAGE, "args": ["prepare", "k3s-server"]}),
    ]


def render_os_plan(os_version: str) -> dict[str, Any]:
    """Every node, one at a time, drained first (evictions honour the PodDisruptionBudget)."""
    return _plan("os-upgrade", os_version, {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In",
                                                                 "values": ["linux"]}]},
                 {"image": OS_UPGRADE_IMAGE, "command": ["chroot", "/host"], "args": ["sh", "-c", OS_UPGRADE_SCRIPT]},
                 drain={"force": True, "ignoreDaemonSets": True, "skipWaitForDeleteTimeout": 300})
