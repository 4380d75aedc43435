"""Where a member's nodes live: a managed tenant network behind a router, or an existing network."""

from __future__ import annotations

import re
from typing import Optional

import pulumi
import pulumi_openstack as openstack

from .ownership import StackOwner
from .settings import NetworkSettings


def owned_by(name: str) -> str:
    """The description that tells a person which of the program's resources this is. It proves nothing (anyone
    can write it): the owner tag does (components/ownership.py)."""
    return f"crdb-federation {name}"


_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class Network(pulumi.ComponentResource):
    """Mode managed: network (MTU), subnet (DNS), router to the external network. Mode existing: a lookup.

    `network_id` is where ports go; `subnet_id` is set in managed mode; `gateway` is the resource that
    must exist before floating IPs on this network reach anything (the router interface).
    """

    network_id: pulumi.Output[str]
    subnet_id: Optional[pulumi.Output[str]]
    gateway: Optional[pulumi.Resource]

    def __init__(self, name: str, settings: NetworkSettings, owner: StackOwner,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("crdb-federation:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.subnet_id = None
        self.gateway = None
        if settings.mode == "managed":
            external = openstack.networking.get_network_output(
                name=settings.external_network, external=True, opts=pulumi.InvokeOptions(parent=self)
            )
            network = openstack.networking.Network(
                f"{name}-net", name=f"{name}-net", description=owned_by(f"{name}-net"), tags=owner.tags,
                admin_state_up=True, mtu=settings.mtu, opts=child
            )
            subnet = openstack.networking.Subnet(
                f"{name}-subnet",
                name=f"{name}-subnet",
                description=owned_by(f"{name}-subnet"),
                tags=owner.tags,
                network_id=network.id,
                cidr=settings.cidr,
                ip_version=4,
                dns_nameservers=list(settings.dns_servers),
                enable_dhcp=True,
                opts=child,
            )
            router = openstack.networking.Router(
                f"{name}-router", name=f"{name}-router", description=owned_by(f"{name}-router"),
                tags=owner.tags, external_network_id=external.id, opts=child
            )
            self.gateway = openstack.networking.RouterInterface(
                f"{name}-router-if", router_id=router.id, subnet_id=subnet.id, opts=child
            )
            self.network_id = network.id
            self.subnet_id = subnet.id
        else:
            by = {"network_id": settings.existing_network} if _UUID.match(settings.existing_network or "") else {
                "name": settings.existing_network
            }
            self.network_id = openstack.networking.get_network_output(
                **by, opts=pulumi.InvokeOptions(parent=self)
            ).id
        self.register_outputs({"networkId": self.network_id, "subnetId": self.subnet_id})
