"""Node addresses, known before any server exists.

Each node gets a Neutron port (carrying the security groups) and, with public addressing `floating`,
a floating IP associated with that port. Both addresses are then available to certificates and
cloud-init before Nova boots anything, and nothing waits on a server to learn its address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_openstack as openstack

from .network import Network, owned_by
from .ownership import StackOwner
from .settings import NetworkSettings


@dataclass(frozen=True)
class NodeAddress:
    name: str
    port_id: pulumi.Output[str]
    private_ip: pulumi.Output[str]
    public_ip: pulumi.Output[str]


def first_ipv4(addresses: Sequence[str]) -> str:
    """The port's first IPv4 address (dual-stack provider networks list IPv6 ones too)."""
    for address in addresses or ():
        if ipaddress.ip_address(address).version == 4:
            return address
    raise ValueError(f"port has no IPv4 address among {list(addresses or ())}")


class NodeAddresses(pulumi.ComponentResource):
    """Ports and public addresses of `names`, in order. `reachable` lists what must exist before the
    public addresses answer (router interface, floating IP associations)."""

    nodes: list[NodeAddress]
    reachable: list[pulumi.Resource]

    def __init__(
        self,
        name: str,
        names: Sequence[str],
        *,
        settings: NetworkSettings,
        network: Network,
        security_group_ids: Sequence[pulumi.Input[str]],
        owner: StackOwner,
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("crdb-federation:network:NodeAddresses", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.nodes = []
        self.reachable = [network.gateway] if network.gateway is not None else []
        fixed_ips = [openstack.networking.PortFixedIpArgs(subnet_id=network.subnet_id)] if network.subnet_id else None
        for node_name in names:
            port = openstack.networking.Port(
                f"{node_name}-port",
                name=f"{node_name}-port",
                network_id=network.network_id,
                fixed_ips=fixed_ips,
                security_group_ids=list(security_group_ids),
                admin_state_up=True,
                tags=owner.tags,
                opts=child,
            )
            private_ip = port.all_fixed_ips.apply(first_ipv4)
            public_ip = private_ip
            if settings.public_addressing == "floating":
                floating = openstack.networking.FloatingIp(
                    f"{node_name}-fip",
                    pool=settings.external_network,
                    description=owned_by(node_name),
                    tags=owner.tags,
                    opts=child,
                )
                # Associated with the port, not the server: a destroyed stack leaves no floating IP behind
                # and the address never changes when a server is replaced.
                association = openstack.networking.FloatingIpAssociate(
                    f"{node_name}-fip-assoc",
                    floating_ip=floating.address,
                    port_id=port.id,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=self.reachable[:1]),
                )
                self.reachable.append(association)
                public_ip = floating.address
            self.nodes.append(NodeAddress(node_name, port.id, private_ip, public_ip))
        self.register_outputs({
            "privateIps": [n.private_ip for n in self.nodes],
            "publicIps": [n.public_ip for n in self.nodes],
        })
