"""Security groups: open only what a member needs, to whom it needs it.

Node-to-node traffic of one cloud (k3s, flannel, the kubelet) travels only inside the self-referencing
node group. Other clouds reach CockroachDB's RPC port (and ICMP, for path-MTU discovery) from
`federationCidrs`; SQL clients its SQL port from `sqlCidrs` and the admins' ranges; admins alone reach the
Kubernetes API, the admin UI and SSH. Settings refuse a world-open range for any of them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_openstack as openstack

from .ownership import StackOwner
from .settings import COCKROACH_HTTP_PORT, COCKROACH_PORT, COCKROACH_SQL_PORT, KUBE_API_PORT, NetworkSettings


@dataclass(frozen=True)
class IngressRule:
    group: str
    port: Optional[int]
    protocol: Optional[str]
    cidr: Optional[str]  # None: from the node group itself
    description: str


def ingress_rules(settings: NetworkSettings, *, ssh: bool) -> list[IngressRule]:
    """Every ingress rule of a member, by group (pure, so the policy is tested without Pulumi)."""
    rules = [
        IngressRule("nodes", None, None, None, "node to node, all protocols (k3s, flannel, kubelet, CockroachDB)"),
    ]
    for cidr in settings.admin_cidrs:
        rules.append(IngressRule("api", KUBE_API_PORT, "tcp", cidr, "Kubernetes API from admins"))
        rules.append(IngressRule("admin-ui", COCKROACH_HTTP_PORT, "tcp", cidr, "CockroachDB admin UI from admins"))
        if ssh:
            rules.append(IngressRule("ssh", 22, "tcp", cidr, "SSH from admins"))
    for cidr in settings.federation_cidrs:
        rules.append(IngressRule("federation", COCKROACH_PORT, "tcp", cidr, "CockroachDB node RPC from the federation"))
        rules.append(IngressRule("federation", None, _icmp(cidr), cidr, "ICMP from the federation (path MTU)"))
    for cidr in dict.fromkeys((*settings.sql_cidrs, *settings.admin_cidrs)):
        rules.append(IngressRule("sql", COCKROACH_SQL_PORT, "tcp", cidr, "CockroachDB SQL from clients and admins"))
    return rules


def _icmp(cidr: str) -> str:
    return "ipv6-icmp" if ipaddress.ip_network(cidr).version == 6 else "icmp"


def _ethertype(cidr: str) -> str:
    return "IPv6" if ipaddress.ip_network(cidr).version == 6 else "IPv4"


class SecurityGroups(pulumi.ComponentResource):
    """One group per purpose; `group_ids` is what every node port carries."""

    group_ids: list[pulumi.Output[str]]

    def __init__(self, name: str, settings: NetworkSettings, owner: StackOwner, *, ssh: bool,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("crdb-federation:security:SecurityGroups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rules = ingress_rules(settings, ssh=ssh)
        groups: dict[str, openstack.networking.SecGroup] = {}
        for purpose in dict.fromkeys(rule.group for rule in rules):
            groups[purpose] = openstack.networking.SecGroup(
                f"{name}-{purpose}", name=f"{name}-{purpose}", description=f"crdb-federation {purpose}", tags=owner.tags,
                opts=child
            )
        for rule in rules:
            group = groups[rule.group]
            if rule.cidr is None:
                for ethertype in ("IPv4", "IPv6"):
                    openstack.networking.SecGroupRule(
                        f"{name}-{rule.group}-self-{ethertype.lower()}",
                        direction="ingress",
                        ethertype=ethertype,
                        remote_group_id=group.id,
                        security_group_id=group.id,
                        description=rule.description,
                        opts=child,
                    )
                continue
            openstack.networking.SecGroupRule(
                # Named by port (or protocol) and CIDR, so reordering the config list does not churn rules.
                f"{name}-{rule.group}-{rule.port or rule.protocol}-{rule.cidr.replace('/', '_').replace(':', '.')}",
                direction="ingress",
                ethertype=_ethertype(rule.cidr),
                protocol=rule.protocol,
                port_range_min=rule.port,
                port_range_max=rule.port,
                remote_ip_prefix=rule.cidr,
                security_group_id=group.id,
                description=rule.description,
                opts=child,
            )
        self.group_ids = [group.id for group in groups.values()]
        self.register_outputs({"groupIds": self.group_ids})
