"""The guard rails as pure functions of a resource (its type, engine-named properties and URN), so they
are tested on what the program registers under mocks; __main__.py hands them to pulumi-policy.

Settings refuse most of this already; the pack catches what a change to the program itself would let
through, in the pull request that makes it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, Sequence

SECURITY_RULE = "openstack:networking/secGroupRule:SecGroupRule"
SERVER = "openstack:compute/instance:Instance"
STACK_REFERENCE = "pulumi:pulumi:StackReference"
WORLD = ("0.0.0.0/0", "::/0")
# SSH, the Kubernetes API, the admin UI, the kubelet, etcd, flannel VXLAN, CockroachDB RPC and SQL.
SENSITIVE_PORTS = {22: "SSH", 6443: "the Kubernetes API", 8080: "the CockroachDB admin UI", 10250: "the kubelet",
                   2379: "etcd", 2380: "etcd peers", 8472: "flannel VXLAN", 26257: "CockroachDB RPC",
                   26258: "CockroachDB SQL"}
WORKLOADS = ("kubernetes:apps/v1:DaemonSet", "kubernetes:apps/v1:StatefulSet", "kubernetes:apps/v1:Deployment",
             "kubernetes:batch/v1:Job", "kubernetes:batch/v1:CronJob", "kubernetes:core/v1:Pod")
CA_KEY_OUTPUT = re.compile(r"caprivatekey$|cakey$|cakeypem$", re.IGNORECASE)

Rule = Callable[[str, Mapping[str, Any], str], list[str]]


def _text(value: Any) -> str:
    """A resource's properties as JSON text (pulumi-policy hands them over as read-only mappings)."""
    def plain(item: Any) -> Any:
        if isinstance(item, Mapping):
            return {str(k): plain(v) for k, v in item.items()}
        if isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
            return [plain(v) for v in item]
        return item
    return json.dumps(plain(value or {}))


def no_world_open_sensitive_port(resource_type: str, props: Mapping[str, Any], urn: str) -> list[str]:
    if resource_type != SECURITY_RULE or props.get("direction") != "ingress" or props.get("remoteIpPrefix") not in WORLD:
        return []
    low, high = props.get("portRangeMin"), props.get("portRangeMax")
    if low is None or high is None or int(low) <= 0:
        return [f"every port is open to {props['remoteIpPrefix']}"]
    low, high = int(low), int(high)  # the engine hands numbers over as floats
    hits = [what for port, what in SENSITIVE_PORTS.items() if low <= port <= high]
    return [f"{', '.join(hits)} ({low}-{high}) open to {props['remoteIpPrefix']}"] if hits else []


def tls_stays_on(resource_type: str, props: Mapping[str, Any], urn: str) -> list[str]:
    if resource_type not in WORKLOADS:
        return []
    text = _text(props.get("spec"))
    if "--insecure" in text:
        return ["a CockroachDB process or client runs with --insecure (no TLS, no authentication)"]
    if '"scheme": "HTTP"' in text and "/health" in text:
        return ["CockroachDB's health endpoint is probed over plain HTTP (the node serves HTTPS only with TLS on)"]
    return []


def replication_factor_is_odd_and_at_least_three(resource_type: str, props: Mapping[str, Any], urn: str
                                                 ) -> list[str]:
    if resource_type not in WORKLOADS:
        return []
    text = _text(props.get("spec"))
    factors = {int(f) for f in re.findall(r"factor=(\d+)", text)}
    factors |= {int(f) for f in re.findall(r"num_replicas = (\d+)", text)}
    bad = sorted(f for f in factors if f < 3 or f % 2 == 0)
    return [f"replication factor {f}: a majority of an even or smaller factor does not survive a cloud's loss"
            for f in bad]


def no_ca_key_from_another_stack(resource_type: str, props: Mapping[str, Any], urn: str) -> list[str]:
    """A stack reference that hands this stack a CA key: the CA keys stay with the seed."""
    if resource_type != STACK_REFERENCE:
        return []
    names = set((props.get("outputs") or {})) | set(props.get("secretOutputNames") or [])
    keys = sorted(n for n in names if CA_KEY_OUTPUT.search(n))
    return [f"{props.get('name')} exports {', '.join(keys)}: a CA key must never leave the seed"] if keys else []


def servers_boot_from_a_config_drive(resource_type: str, props: Mapping[str, Any], urn: str) -> list[str]:
    if resource_type != SERVER or props.get("configDrive") is True:
        return []
    return ["a server without a config drive reads its user data (cluster CA keys) from the metadata service, "
            "which its pods can reach"]


RULES: dict[str, tuple[str, Rule]] = {
    "no-world-open-sensitive-port": ("No security group rule opens a sensitive port to the whole internet.",
                                     no_world_open_sensitive_port),
    "tls-stays-on": ("CockroachDB always runs with TLS.", tls_stays_on),
    "replication-factor-odd-and-at-least-three": ("The default replication factor is odd and at least 3.",
                                                  replication_factor_is_odd_and_at_least_three),
    "no-ca-key-from-another-stack": ("No stack reads a CA key from another stack.", no_ca_key_from_another_stack),
    "servers-boot-from-a-config-drive": ("Every server reads its user data from a config drive.",
                                         servers_boot_from_a_config_drive),
}
