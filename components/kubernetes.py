"""Kubernetes for one member: k3s on Nova VMs whose PKI the program generates, or an existing cluster.

With k3s the program creates the cluster CAs before any VM exists, writes them through cloud-init
where k3s adopts them on first start, and signs the admin client certificate itself, so it builds
the kubeconfig without SSH and without copying anything back from a VM.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import pulumi
import pulumi_kubernetes as k8s_provider
import pulumi_openstack as openstack
import pulumi_random as random
import pulumi_tls as tls
import yaml

from . import pki, upgrades
from .addresses import NodeAddresses
from .cloudinit import K3S_CA_FILES, K3sJoin, K3sNode, render_user_data
from .kube_nodes import NodeRegistration
from .kube_objects import kube_object
from .ownership import StackOwner
from .readiness import ApiReadiness
from .settings import COCKROACH_HTTP_PORT, KUBE_API_PORT, Settings

ADMIN_ORGANIZATION = "system:masters"
# Inputs of a server that force a new one (terraform-provider-openstack v3.4.0 compute_instance_v2: ForceNew,
# or a rebuild for the image) and only matter when it boots (engine names). A change would replace every
# server of the cloud at once, each booting the first user data, i.e. the first k3sVersion, on a datastore a
# newer one wrote. configDrive too: servers made before it was set keep their metadata-service boot.
SERVER_BOOT_INPUTS = ["userData", "blockDevices", "imageId", "imageName", "configDrive", "keyPair",
                      "availabilityZone", "networks", "schedulerHints"]
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
ADMIN_COMMON_NAME = "crdb-federation-admin"


@dataclass(frozen=True)
class KubeNode:
    """A Kubernetes node as CockroachDB sees it: its node name and both addresses."""

    name: str
    public_ip: pulumi.Output[str]
    private_ip: pulumi.Output[str]


def render_kubeconfig(cluster: str, server_url: str, ca_pem: str, cert_pem: str, key_pem: str) -> str:
    """An admin kubeconfig trusting only the cluster's server CA."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    user = f"{cluster}-admin"
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server_url, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(cert_pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }, sort_keys=False)


class K3sPki(pulumi.ComponentResource):
    """The k3s cluster CAs, the service-account signing key and the admin client certificate."""

    ca_keys: dict[str, tls.PrivateKey]
    ca_certs: dict[str, tls.SelfSignedCert]
    service_key: tls.PrivateKey
    admin_key: tls.PrivateKey
    admin_cert: tls.LocallySignedCert

    def __init__(self, name: str, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("crdb-federation:kubernetes:K3sPki", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.ca_keys, self.ca_certs = {}, {}
        for ca in K3S_CA_FILES:
            key, cert = pki.certificate_authority(f"{name}-{ca.replace('/', '-')}", f"k3s-{ca.replace('/', '-')}", child)
            self.ca_keys[ca], self.ca_certs[ca] = key, cert
        self.service_key = pki.private_key(f"{name}-service", child, rsa=True)
        self.admin_key, self.admin_cert = pki.signed_certificate(
            f"{name}-admin",
            ca_cert_pem=self.ca_certs["client-ca"].cert_pem,
            ca_key_pem=self.ca_keys["client-ca"].private_key_pem,
            common_name=ADMIN_COMMON_NAME,
            organization=ADMIN_ORGANIZATION,
            uses=pki.CLIENT_ONLY,
            opts=child,
        )
        self.register_outputs({"serverCa": self.ca_certs["server-ca"].cert_pem})

    def files(self) -> pulumi.Output[dict[str, str]]:
        """The files k3s adopts from its TLS directory on first start, by relative path."""
        entries: dict[str, pulumi.Output[str]] = {}
        for ca in K3S_CA_FILES:
            entries[f"{ca}.crt"] = self.ca_certs[ca].cert_pem
            entries[f"{ca}.key"] = self.ca_keys[ca].private_key_pem
        entries["service.key"] = self.service_key.private_key_pem
        return pulumi.Output.all(**entries)


@dataclass(frozen=True)
class NodeMachine:
    """The OpenStack resources that hold one node: what its decommissioning must come before."""

    server: openstack.compute.Instance
    data_volume: openstack.blockstorage.Volume
    attachment: openstack.compute.VolumeAttach


def pinned_image_id(name: str, image: str, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
    """The image's ID as of the first deploy. A name is looked up and the first answer kept (a Stash): an image
    re-published under the same name reaches no server, new or replaced, until `image` itself changes. The
    lookup lists (an empty answer is no error), so a cloud that retired the image leaves the stack as it is."""
    if _UUID.match(image):
        return pulumi.Output.from_input(image)
    found = openstack.images.get_image_ids_output(name=image, sort="created_at:desc",
                                                  opts=pulumi.InvokeOptions(parent=opts.parent))
    stash = pulumi.Stash(f"{name}-image", input=found.ids.apply(lambda ids: ids[0] if ids else ""),
                         opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(replacement_trigger=image)))

    def pinned(image_id: str) -> str:
        if not image_id:
            raise pulumi.RunError(f"crdb-federation:image = {image!r}: expected the name (or id) of an image the "
                                  "cloud has; none is called that (openstack image list)")
        return image_id

    return stash.output.apply(pinned)


def pinned_zone(name: str, zone: str, opts: pulumi.ResourceOptions) -> pulumi.Output[str]:
    """The availability zone as of the first deploy: servers cannot move, and every node's locality must say
    where it runs, so a later `availabilityZone` changes nothing and says so."""
    stash = pulumi.Stash(f"{name}-availability-zone", input=zone, opts=opts)

    def kept(first: str) -> str:
        if first != zone:
            pulumi.log.warn(f"crdb-federation:availabilityZone = {zone!r}: this cloud's servers were built in "
                            f"{first!r} and cannot move, so new ones go there too and the locality keeps "
                            f"zone={first}. To run in {zone!r}, build a stack there and remove this one.")
        return first

    return stash.output.apply(kept)


class K3sCluster(pulumi.ComponentResource):
    """One k3s server and N-1 agents on Nova, each with its own data volume, plus the admin kubeconfig
    gated on API readiness and the in-place upgrade plans."""

    nodes: list[KubeNode]
    machines: list[NodeMachine]
    api_endpoint: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    admin_kubeconfig: pulumi.Output[str]
    availability_zone: pulumi.Output[str]
    image_id: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        settings: Settings,
        addresses: NodeAddresses,
        owner: StackOwner,
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        super().__init__("crdb-federation:kubernetes:K3sCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cloud, k8s = settings.openstack, settings.kubernetes
        self.pki = K3sPki(f"{name}-pki", opts=child)
        server_token = random.RandomPassword(f"{name}-token", length=48, special=False, opts=child)
        agent_password = random.RandomPassword(f"{name}-agent-token", length=48, special=False, opts=child)
        server_ca = self.pki.ca_certs["server-ca"].cert_pem
        join = pulumi.Output.all(server_token.result, agent_password.result, server_ca).apply(
            lambda v: K3sJoin(v[0], v[1], v[2]))
        group = openstack.compute.ServerGroup(
            f"{name}-spread", name=f"{name}-spread", policies="soft-anti-affinity", opts=child
        )
        keypair = None
        if cloud.ssh_public_key:
            # Same name, new key: Nova refuses a second keypair of one name (servers ignore the change).
            keypair = openstack.compute.Keypair(f"{name}-ssh", name=f"{name}-ssh", public_key=cloud.ssh_public_key,
                                                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True))
        image_id = self.image_id = pinned_image_id(name, cloud.image, child)
        self.availability_zone = pinned_zone(name, cloud.availability_zone, child)

        server_node = addresses.nodes[0]
        ca_files = self.pki.files()
        self.api_endpoint = server_node.public_ip.apply(lambda ip: f"https://{ip}:{KUBE_API_PORT}")
        admin_cert, admin_key = self.pki.admin_cert.cert_pem, self.pki.admin_key.private_key_pem
        self.admin_kubeconfig = pulumi.Output.secret(pulumi.Output.all(
            self.api_endpoint, server_ca, admin_cert, admin_key).apply(lambda v: render_kubeconfig(name, *v)))
        self.machines = []
        for index, node in enumerate(addresses.nodes):
            is_server = index == 0
            volume = openstack.blockstorage.Volume(
                f"{node.name}-data",
                name=f"{node.name}-data",
                description=f"crdb-federation CockroachDB store of {node.name}",
                size=cloud.data_volume_size,
                volume_type=cloud.data_volume_type,
                metadata=owner.metadata.apply(lambda mark, node=node: {
                    **mark, "crdb-federation-member": settings.cockroach.member, "crdb-federation-node": node.name}),
                opts=child,
            )
            # The same node password on a replacement server: k3s refuses a known node name otherwise.
            node_password = random.RandomPassword(f"{node.name}-node-password", length=32, special=False, opts=child)
            user_data = pulumi.Output.all(
                node.private_ip, node.public_ip, server_node.private_ip, join, volume.id, node_password.result,
                ca_files if is_server else {},
            ).apply(lambda v, node=node, is_server=is_server: render_user_data(
                K3sNode(node.name, v[0], v[1], is_server, data_volume_id=v[4]),
                kubernetes=k8s,
                join=v[3],
                server_private_ip=v[2],
                network_cidr=settings.network.cidr,
                node_password=v[5],
                ca_files=v[6] or None,
            ))
            # An agent's Node object goes once its server has; node 0's goes with the cluster it holds, and
            # so do the others' when the whole cluster goes: with the server group, which goes only then. Not
            # with server 0: the SDK awaits a `deleted_with` resource's URN, known only once it is created
            # (pulumi sdk/python/lib/pulumi/runtime/resource.py), so every agent would wait for server 0's boot.
            registration = None if is_server else NodeRegistration(
                f"{node.name}-registration", node=node.name, kubeconfig=self.admin_kubeconfig,
                opts=pulumi.ResourceOptions(parent=self, deleted_with=group))
            server = openstack.compute.Instance(
                node.name,
                name=node.name,
                flavor_name=cloud.server_flavor if is_server else cloud.agent_flavor,
                availability_zone=self.availability_zone,
                key_pair=keypair.name if keypair else None,
                user_data=pulumi.Output.secret(user_data),
                # User data (it holds the cluster CA keys on the server) is read from a drive, never from
                # the metadata service that pods could reach.
                config_drive=True,
                networks=[openstack.compute.InstanceNetworkArgs(port=node.port_id)],
                scheduler_hints=[openstack.compute.InstanceSchedulerHintArgs(group=group.id)],
                block_devices=[openstack.compute.InstanceBlockDeviceArgs(
                    source_type="image",
                    uuid=image_id,
                    destination_type="volume",
                    volume_size=cloud.boot_volume_size,
                    boot_index=0,
                    # The boot disk holds only the OS and k3s; the store is on the data volume.
                    delete_on_termination=True,
                )],
                metadata=owner.metadata.apply(lambda mark, is_server=is_server: {
                    **mark, "crdb-federation-member": settings.cockroach.member,
                    "k3s-role": "server" if is_server else "agent"}),
                # Each of these forces a new server, and the program's names force delete-before-replace:
                # a k3s bump, a proxy change or a re-published image would wipe every node of the cloud at
                # once. A server keeps what it booted with; k3s and the OS are upgraded in place.
                # Its port exists apart and binds one server at a time, so a replacement (healing a
                # server in ERROR) must delete the old server first; Nova refuses a port in use.
                opts=pulumi.ResourceOptions(parent=self, ignore_changes=SERVER_BOOT_INPUTS,
                                            delete_before_replace=True,
                                            depends_on=[registration] if registration else None),
            )
            # Re-attached to a replacement server, whose first boot mounts it without formatting it.
            attachment = openstack.compute.VolumeAttach(
                f"{node.name}-data-attach", instance_id=server.id, volume_id=volume.id, opts=child)
            self.machines.append(NodeMachine(server, volume, attachment))

        gate = ApiReadiness(
            f"{name}-api-ready",
            url=self.api_endpoint.apply(lambda url: f"{url}/readyz"),
            # A new server 0 (healed, replaced) is a new API to wait for.
            server_id=self.machines[0].server.id,
            ca_pem=server_ca,
            cert_pem=admin_cert,
            key_pem=admin_key,
            kubeconfig=self.admin_kubeconfig,
            timeout_seconds=k8s.api_ready_timeout,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.machines[0].server, *addresses.reachable]),
        )
        self.kubeconfig = pulumi.Output.secret(gate.kubeconfig)
        self.nodes = [KubeNode(n.name, n.public_ip, n.private_ip) for n in addresses.nodes]
        self.register_outputs({"apiEndpoint": self.api_endpoint, "kubeconfig": self.kubeconfig})


class InPlaceUpgrades(pulumi.ComponentResource):
    """The system-upgrade-controller and its Plans: k3s (and, when asked, the OS) upgraded one node at a time.
    `objects`: every Kubernetes object made here."""

    objects: list[pulumi.CustomResource]

    def __init__(self, name: str, settings: Settings, provider: k8s_provider.Provider,
                 node_ips: pulumi.Input[Sequence[str]], opts: Optional[pulumi.ResourceOptions] = None,
                 deleted_with: Optional[pulumi.Resource] = None):
        super().__init__("crdb-federation:kubernetes:InPlaceUpgrades", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider, deleted_with=deleted_with)
        crd = kube_object(f"{name}-plan-crd", upgrades.render_plan_crd(), k8s_opts)
        controller = [kube_object(f"{name}-{m['kind'].lower()}-{m['metadata']['name']}", m, k8s_opts)
                      for m in upgrades.render_controller()]
        after = pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(depends_on=[crd, *controller]))
        plans = [kube_object(f"{name}-plan-{plan['metadata']['name']}", plan, after)
                 for plan in upgrades.render_k3s_plans(settings.kubernetes.k3s_version)]
        version = settings.kubernetes.os_upgrade_version
        if version:
            plan = pulumi.Output.from_input(node_ips).apply(
                lambda ips: upgrades.render_os_plan(version, ips, COCKROACH_HTTP_PORT))
            plans.append(k8s_provider.apiextensions.CustomResource(
                f"{name}-plan-os-upgrade", api_version="upgrade.cattle.io/v1", kind="Plan",
                metadata=plan["metadata"], spec=plan["spec"], opts=after))
        self.objects = [crd, *controller, *plans]
        self.register_outputs({})


class ExistingCluster(pulumi.ComponentResource):
    """A Kubernetes cluster built elsewhere (e.g. Magnum): kubeconfig and node addresses from config."""

    nodes: list[KubeNode]
    api_endpoint: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]

    def __init__(self, name: str, settings: Settings, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("crdb-federation:kubernetes:ExistingCluster", name, None, opts)
        self.kubeconfig = pulumi.Output.secret(settings.kubernetes.kubeconfig)
        self.api_endpoint = self.kubeconfig.apply(_server_of)
        self.nodes = [
            KubeNode(n.name, pulumi.Output.from_input(n.public_ip), pulumi.Output.from_input(n.private_ip))
            for n in settings.kubernetes.existing_nodes
        ]
        self.register_outputs({"apiEndpoint": self.api_endpoint})


def _server_of(kubeconfig: str) -> str:
    try:
        document = yaml.safe_load(kubeconfig)
        return document["clusters"][0]["cluster"]["server"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as error:
        raise ValueError(f"crdb-federation:kubeconfig is not a kubeconfig with a cluster server: {error}") from None
