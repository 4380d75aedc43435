"""One cloud of the federation: network, security groups, Kubernetes, CockroachDB nodes, and the
decommissioning that must come before any of its nodes goes."""

from __future__ import annotations

from typing import Optional, Sequence

import pulumi
import pulumi_kubernetes as k8s

from .addresses import NodeAddresses
from .cockroach import CockroachNodes, fully_qualified_stack
from .cockroach_manifests import NODE_LABEL
from .decommission import Decommission, OwnNodes
from .kubernetes import ExistingCluster, InPlaceUpgrades, K3sCluster
from .network import Network
from .ownership import StackOwner
from .security import SecurityGroups
from .settings import COCKROACH_PORT, Settings, split_address


def node_names(member: str, count: int) -> list[str]:
    """Server and Kubernetes node names; node 0 is the k3s server."""
    return [f"{member}-k3s-{index}" for index in range(count)]


class CloudMember(pulumi.ComponentResource):
    def __init__(self, name: str, settings: Settings, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("crdb-federation:member:CloudMember", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # What holds each node (its decommissioning is deleted first), and the Kubernetes objects the whole
        # cloud's decommissioning needs (its Job mounts the node Secret in the namespace): a removal deletes
        # them only once that has succeeded, and keeps them when it refuses.
        holders: list[list[pulumi.Resource]]
        kube_objects: list[pulumi.Resource] = []
        if settings.kubernetes.mode == "k3s":
            # Every OpenStack resource carries this stack's mark: the recovery sweep deletes nothing else.
            owner = StackOwner(name, opts=child)
            network = Network(name, settings.network, owner, opts=child)
            security = SecurityGroups(name, settings.network, owner, ssh=settings.openstack.ssh_public_key is not None,
                                      opts=child)
            addresses = NodeAddresses(
                name,
                node_names(name, settings.openstack.node_count),
                settings=settings.network,
                network=network,
                security_group_ids=security.group_ids,
                owner=owner,
                opts=child,
            )
            cluster = K3sCluster(name, settings, addresses, owner, opts=child)
            provider = self._kubernetes_provider(name, cluster.kubeconfig)
            # The cluster lives on these servers: when the server goes, deleting its objects first would
            # only stop CockroachDB before its decommissioning is done.
            cluster_holder = cluster.machines[0].server
            upgrades = InPlaceUpgrades(f"{name}-upgrades", settings, provider,
                                       pulumi.Output.all(*[n.private_ip for n in cluster.nodes]), opts=child,
                                       deleted_with=cluster_holder)
            kube_objects += upgrades.objects
            admin_kubeconfig = cluster.admin_kubeconfig
            zone = cluster.availability_zone
            holders = [[m.server, m.data_volume, m.attachment] for m in cluster.machines]
        else:
            cluster = ExistingCluster(name, settings, opts=child)
            provider = self._kubernetes_provider(name, cluster.kubeconfig)
            cluster_holder = None
            # Deleting a label patch takes the label off (the provider relinquishes its fields), and the
            # DaemonSet then stops that node's pod: each patch is held by its node's decommissioning.
            holders = [[k8s.core.v1.NodePatch(f"{name}-{node.name}-label", metadata={
                "name": node.name, "labels": {NODE_LABEL: "true"}}, opts=pulumi.ResourceOptions(
                    parent=self, provider=provider))] for node in settings.kubernetes.existing_nodes]
            admin_kubeconfig = cluster.kubeconfig
            zone = settings.openstack.availability_zone
        self.cluster = cluster
        self.cockroach = CockroachNodes(name, settings, cluster.nodes, provider, zone, opts=child,
                                        deleted_with=cluster_holder)
        kube_objects += self.cockroach.objects
        if settings.kubernetes.mode == "existing":
            # The pods are what holds the nodes, and a node's job needs its namespace and certificates.
            needed = [self.cockroach.daemonset, self.cockroach.node_secret, self.cockroach.namespace]
            holders = [[*holder, *needed] for holder in holders]
        self.decommissions = self._decommissions(name, settings, admin_kubeconfig, holders, kube_objects)
        self.register_outputs({"apiEndpoint": cluster.api_endpoint, "joinAddresses": self.cockroach.join_addresses})

    def _kubernetes_provider(self, name: str, kubeconfig: pulumi.Output[str]) -> k8s.Provider:
        """The cluster's provider. Its identity is the member's name, not its kubeconfig: a kubeconfig that is
        unknown in a preview (a renewed admin certificate) or that really changes would otherwise replace the
        provider, and with it every Kubernetes object, create-before-delete under the same names
        (pulumi-kubernetes provider.go DiffConfig, clusterIdentifier)."""
        return k8s.Provider(f"{name}-k8s", kubeconfig=kubeconfig, cluster_identifier=name,
                            opts=pulumi.ResourceOptions(parent=self))

    def _decommissions(self, name: str, settings: Settings, kubeconfig: pulumi.Output[str],
                       holders: Sequence[Sequence[pulumi.Resource]],
                       kube_objects: Sequence[pulumi.Resource]) -> list[Decommission]:
        """One per node, deleted before what holds it; one for the whole cloud, which depends on all of them
        and on every Kubernetes object of the cloud, and so is deleted first when the stack goes."""
        trust = self.cockroach.trust
        addresses = [n.public_ip.apply(lambda ip: f"{ip}:{COCKROACH_PORT}") for n in self.cluster.nodes]
        publics = pulumi.Output.all(*[n.public_ip for n in self.cluster.nodes])
        own = OwnNodes(
            stack=fully_qualified_stack(),
            addresses=self.cockroach.join_addresses,
            private_ips=pulumi.Output.all(*[n.private_ip for n in self.cluster.nodes]),
            # This cloud's own nodes first (their SQL port is open to adminCidrs), then the join list's; a removal
            # goes only through those that stay (a whole cloud's, through another cloud's).
            sql_hosts=pulumi.Output.all(publics, trust.join).apply(lambda v: list(dict.fromkeys(
                list(v[0]) + [split_address(a)[0] for a in v[1]]))),
            ca_pem=trust.ca_pem,
            cert_pem=trust.node_client_cert_pem,
            ops_cert_pem=trust.ops_client_cert_pem,
            key_pem=trust.node_key_pem,
            kubeconfig=kubeconfig,
            namespace=settings.cockroach.namespace,
            image=settings.cockroach.image,
            cluster_name=settings.cockroach.cluster_name,
        )
        force = settings.cockroach.force_removal
        per_node = [
            Decommission(f"{node.name}-decommission", addresses=address.apply(lambda a: [a]), own=own, force=force,
                         opts=pulumi.ResourceOptions(parent=self, depends_on=list(holder)))
            for node, address, holder in zip(self.cluster.nodes, addresses, holders)
        ]
        whole = Decommission(f"{name}-decommission", addresses=own.addresses, own=own, force=force,
                             opts=pulumi.ResourceOptions(parent=self, depends_on=[*per_node, *kube_objects]))
        return [*per_node, whole]
