"""One cloud of the federation: network, security groups, Kubernetes and CockroachDB nodes."""

from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from .addresses import NodeAddresses
from .cockroach import CockroachNodes, federation_for
from .kubernetes import ExistingCluster, K3sCluster
from .network import Network
from .security import SecurityGroups
from .settings import COCKROACH_PORT, Settings

# A seed node joins through its peers' private addresses: at most this many of them.
SEED_JOIN_COUNT = 5


def node_names(member: str, count: int) -> list[str]:
    """Server and Kubernetes node names; node 0 is the k3s server."""
    return [f"{member}-k3s-{index}" for index in range(count)]


class CloudMember(pulumi.ComponentResource):
    def __init__(self, name: str, settings: Settings, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("crdb-federation:member:CloudMember", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        if settings.kubernetes.mode == "k3s":
            network = Network(name, settings.network, opts=child)
            security = SecurityGroups(name, settings.network, ssh=settings.openstack.ssh_public_key is not None, opts=child)
            addresses = NodeAddresses(
                name,
                node_names(name, settings.openstack.node_count),
                settings=settings.network,
                network=network,
                security_group_ids=security.group_ids,
                opts=child,
            )
            cluster = K3sCluster(name, settings, addresses, opts=child)
        else:
            cluster = ExistingCluster(name, settings, opts=child)
        self.cluster = cluster
        provider = k8s.Provider(f"{name}-k8s", kubeconfig=cluster.kubeconfig, opts=child)

        own_join = pulumi.Output.all(*[n.private_ip for n in cluster.nodes[:SEED_JOIN_COUNT]]).apply(
            lambda ips: [f"{ip}:{COCKROACH_PORT}" for ip in ips]
        )
        self.federation = federation_for(settings, own_join, child)
        self.cockroach = CockroachNodes(name, settings, cluster.nodes, self.federation, provider, opts=child)
        self.register_outputs({"apiEndpoint": cluster.api_endpoint, "joinAddresses": self.cockroach.join_addresses})
