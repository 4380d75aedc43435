"""Preflight: checks each cloud against what its stack needs, before anything is created.

Reads the stack as the CLI resolves it, parses it with the program's own settings, then asks the
cloud (openstacksdk, the stack's own clouds.yaml entry) only read-only questions. Every finding names
the stack, the setting, what was found and what to do. Deciding is pure (`needs`, `quota_findings`,
`documentation_overlaps`, ...) so it is tested without a cloud; the integration tier runs the whole
check against the local OpenStack.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import shutil
import socket
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from components.security import ingress_rules
from components.settings import (
    COCKROACH_PORT, DOCUMENTATION_RANGES, NON_PUBLIC_RANGES, Settings, SettingsError, is_ip, overlaps,
    parse_settings, split_address, within,
)

from . import secrets, stack_config

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
# Bytes each flannel backend adds to a pod packet (flannel's vxlan and wireguard backends).
FLANNEL_OVERHEAD = {"vxlan": 50, "wireguard-native": 80}
MIN_POD_MTU = 1280
VXLAN_TENANT_MTU = 1450  # what most clouds' VXLAN tenant networks carry on a 1500-byte underlay
NODE_OVERHEAD_RAM_MB = 1024  # the OS and k3s beside CockroachDB
NODE_OVERHEAD_VCPU = 0.5
MY_ADDRESS_URL = os.environ.get("CRDB_PREFLIGHT_ADDRESS_URL", "https://checkip.amazonaws.com")


@dataclass(frozen=True)
class Finding:
    stack: str
    check: str
    status: str  # pass | warn | fail | skip
    setting: str
    found: str
    todo: str = ""


@dataclass(frozen=True)
class Flavor:
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int


@dataclass(frozen=True)
class Needs:
    """What a first deploy of one stack takes from its project's quotas."""

    instances: int
    cores: int
    ram: int  # MiB
    server_groups: int
    server_group_members: int
    volumes: int
    gigabytes: int
    ports: int
    floatingip: int
    network: int
    subnet: int
    router: int
    security_group: int
    security_group_rule: int


# ------------------------------------------------------------------------------------------- pure decisions
def needs(settings: Settings, server: Flavor, agent: Flavor) -> Needs:
    nodes = settings.openstack.node_count
    managed = settings.network.mode == "managed"
    rules = ingress_rules(settings.network, ssh=settings.openstack.ssh_public_key is not None)
    groups = len({rule.group for rule in rules})
    return Needs(
        instances=nodes,
        cores=server.vcpus + agent.vcpus * (nodes - 1),
        ram=server.ram_mb + agent.ram_mb * (nodes - 1),
        server_groups=1,
        server_group_members=nodes,
        volumes=2 * nodes,  # a boot volume and a data volume per node
        gigabytes=nodes * (settings.openstack.boot_volume_size + settings.openstack.data_volume_size),
        ports=nodes + (2 if managed else 0),  # node ports; a managed network adds DHCP and the router's
        floatingip=nodes if settings.network.public_addressing == "floating" else 0,
        network=int(managed),
        subnet=int(managed),
        router=int(managed),
        security_group=groups,
        security_group_rule=len(rules) + 2 * groups,  # Neutron adds two egress rules to each group
    )


def quota_findings(stack: str, need: Needs, quotas: dict[str, tuple[int, int]]) -> list[Finding]:
    """quotas: resource -> (limit, in use), limit -1 meaning unlimited. One failure per short resource,
    or one pass listing what was checked."""
    failures, checked = [], []
    for resource, wanted in vars(need).items():
        if not wanted or resource not in quotas:
            continue
        limit, used = quotas[resource]
        free = math.inf if limit < 0 else limit - used
        checked.append(f"{resource} {wanted}")
        if free < wanted:
            failures.append(Finding(stack, "Quotas", FAIL, "nodeCount",
                                    f"{resource}: need {wanted}, free {free} (limit {limit}, used {used})",
                                    f"ask the cloud's operator to raise the {resource} quota by {wanted - free}, "
                                    "or lower nodeCount / bootVolumeSize / dataVolumeSize / the flavors"))
    return failures or [Finding(stack, "Quotas", PASS, "nodeCount", "headroom for " + ", ".join(checked))]


def flavor_findings(stack: str, settings: Settings, flavors: dict[str, Optional[Flavor]]) -> list[Finding]:
    """Each flavor exists and holds CockroachDB's requests plus the node's own share."""
    memory_mb = _quantity_mib(settings.cockroach.memory) + NODE_OVERHEAD_RAM_MB
    cpus = _cpu(settings.cockroach.cpu) + NODE_OVERHEAD_VCPU
    findings = []
    chosen = {settings.openstack.server_flavor: "serverFlavor"}
    chosen.setdefault(settings.openstack.agent_flavor, "agentFlavor")
    for name, key in chosen.items():
        flavor = flavors.get(name)
        if flavor is None:
            findings.append(Finding(stack, "Flavors", FAIL, key, f"no flavor '{name}'",
                                    "pick one of `openstack flavor list`"))
            continue
        found = f"{name}: {flavor.vcpus} vCPU, {flavor.ram_mb} MiB"
        if flavor.vcpus < cpus or flavor.ram_mb < memory_mb:
            findings.append(Finding(stack, "Flavors", FAIL, key, found,
                                    f"a flavor with at least {math.ceil(cpus)} vCPU and {memory_mb} MiB "
                                    f"(cockroachCpu {settings.cockroach.cpu}, cockroachMemory {settings.cockroach.memory}, "
                                    "plus the OS and k3s)"))
        else:
            findings.append(Finding(stack, "Flavors", PASS, key, found))
    return findings


def documentation_overlaps(cidrs: Iterable[str]) -> list[str]:
    return [c for c in cidrs if overlaps(c, DOCUMENTATION_RANGES)]


def is_public(cidr: str) -> bool:
    return not overlaps(cidr, NON_PUBLIC_RANGES)


def admin_findings(stack: str, admin_cidrs: Sequence[str], my_address: Optional[str]) -> list[Finding]:
    documentation = documentation_overlaps(admin_cidrs)
    if documentation:
        return [Finding(stack, "Admin range", FAIL, "adminCidrs", f"documentation range(s) {', '.join(documentation)}",
                        "put your own public range there: the API gate must reach 6443 from it")]
    if my_address is None:
        return [Finding(stack, "Admin range", SKIP, "adminCidrs", "this machine's public address is unknown",
                        "pass --my-address to check it")]
    if not within(my_address, admin_cidrs):
        return [Finding(stack, "Admin range", FAIL, "adminCidrs", f"{my_address} is outside {', '.join(admin_cidrs)}",
                        f"add {my_address}/32 (or your range): pulumi up reaches the Kubernetes API from here")]
    return [Finding(stack, "Admin range", PASS, "adminCidrs", f"{my_address} is inside")]


def mtu_findings(stack: str, settings: Settings, existing_mtu: Optional[int]) -> list[Finding]:
    backend = settings.kubernetes.flannel_backend
    overhead = FLANNEL_OVERHEAD[backend]
    if settings.network.mode == "existing":
        if existing_mtu is None:
            return [Finding(stack, "MTU", SKIP, "existingNetwork", "the network reports no MTU")]
        pods = existing_mtu - overhead
        status = PASS if pods >= MIN_POD_MTU else FAIL
        return [Finding(stack, "MTU", status, "existingNetwork", f"network MTU {existing_mtu}, pods get {pods} ({backend})",
                        "" if status == PASS else f"pods need {MIN_POD_MTU}; use a network of at least "
                                                  f"{MIN_POD_MTU + overhead}")]
    mtu = settings.network.mtu
    if mtu is None:
        return [Finding(stack, "MTU", PASS, "mtu", "unset: Neutron picks what the tenant network type carries")]
    if mtu > VXLAN_TENANT_MTU:
        return [Finding(stack, "MTU", WARN, "mtu", f"{mtu}",
                        f"VXLAN tenant networks carry at most {VXLAN_TENANT_MTU} on a 1500-byte underlay and "
                        "Neutron refuses more; keep it only if this cloud's tenant networks are VLAN or flat")]
    return [Finding(stack, "MTU", PASS, "mtu", f"{mtu}, pods get {mtu - overhead} ({backend})")]


def _quantity_mib(quantity: str) -> int:
    number, unit = re.match(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)$", quantity).groups()
    return math.ceil(float(number) * {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}[unit])


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# ------------------------------------------------------------------------------------------- the stack's settings
class _Present:
    """Stands for a secret the stack sets; preflight needs to know only that it is there."""


def stack_settings(stack: str, root: Path) -> Settings:
    """The stack's settings as a preview parses them: what only an `up` refuses is a finding here."""
    values = stack_config.resolve(stack, root)
    secrets = {key: _Present() for key, value in values.items() if isinstance(value, dict) and "secure" in value}
    plain = stack_config.as_config_strings({k: v for k, v in values.items() if k not in secrets})
    return parse_settings(plain, stack, secrets, preview=True)


def settings_findings(stack: str, settings: Settings) -> list[Finding]:
    """What the settings let a preview through but an `up` refuses (the seed's licence, a member's CA pins), and
    what they only warn about (a proxied cloud's clock)."""
    findings = []
    for warning in settings.warnings:
        if warning.startswith("crdb-federation:clusterOrganization"):
            findings.append(Finding(
                stack, "Licence", FAIL, "enterpriseLicense", warning.split(": expected")[0],
                "pulumi config set --stack seed crdb-federation:clusterOrganization '<organisation>' and "
                "pulumi config set --secret --stack seed crdb-federation:enterpriseLicense '<licence>'"))
        elif warning.startswith(("crdb-federation:caSha256", "crdb-federation:clientCaSha256")):
            key = warning.split(" = ")[0].split(":", 1)[1]
            findings.append(Finding(stack, "CA pins", FAIL, key, "not set", "set the fingerprints the seed's operator "
                                    "hands over (python -m federation fingerprints on their side)"))
        else:
            key = warning.split(" ")[0].split(":", 1)[-1]
            findings.append(Finding(stack, "Settings", WARN, key, warning))
    return findings


def secrets_findings(stack: str, settings: Settings, readable: Callable[[str], list[str]],
                     unkeyed: Optional[Path] = None) -> list[Finding]:
    """A stack must not be able to decrypt the secret outputs of the stacks it reads: a StackReference keeps them,
    decrypted, in its own state (README: Secrets apart). `readable`: the secret outputs of a stack that this
    stack's secrets provider decrypts; `unkeyed`: the passphrase file a stack without a provider of its own
    lacks (the tool runs no engine for it)."""
    if unkeyed is not None:
        return [Finding(stack, "Secrets", FAIL, "(secrets provider)", f"none of its own: no {unkeyed}",
                        f"write this stack's passphrase into {unkeyed} (chmod 600), or give it a KMS or Vault key "
                        "(README: Secrets apart)")]
    c = settings.cockroach
    others = [c.seed_stack] if c.seed_stack else list(c.members)
    if not others:
        return []
    if c.shared_secrets:
        return [Finding(stack, "Secrets", SKIP, "sharedSecrets", "one operator runs every stack (sharedSecrets)")]
    leaks = {other: readable(other) for other in others}
    leaks = {other: names for other, names in leaks.items() if names}
    if leaks:
        found = "; ".join(f"{other}'s {', '.join(names)}" for other, names in leaks.items())
        return [Finding(stack, "Secrets", FAIL, "(secrets provider)", f"this stack's secrets provider decrypts {found}",
                        "give every stack a secrets provider of its own: its own passphrase, or a KMS or Vault key "
                        "(README: Secrets apart)")]
    return [Finding(stack, "Secrets", PASS, "(secrets provider)",
                    f"cannot decrypt the secrets of {', '.join(others)}")]


def federation_findings(stack: str, settings: Settings, peers: Sequence[str]) -> list[Finding]:
    """federationCidrs must be ranges other clouds' nodes really come from, and hold the peers known here
    (the seed's join addresses): they dial this stack's nodes as much as these dial them."""
    cidrs = settings.network.federation_cidrs
    private = [c for c in cidrs if not is_public(c)]
    if private:
        return [Finding(stack, "Federation range", FAIL, "federationCidrs", f"{', '.join(private)} is not public",
                        "list the other clouds' node addresses (python -m federation ranges prints them)")]
    hosts = [split_address(a)[0] for a in peers]
    outside = [h for h in hosts if is_ip(h) and not within(h, cidrs)]
    if outside:
        return [Finding(stack, "Federation range", FAIL, "federationCidrs", f"{', '.join(outside)} outside it",
                        "add the seed's node addresses (python -m federation ranges prints them)")]
    return [Finding(stack, "Federation range", PASS, "federationCidrs",
                    f"public, and holds {len(hosts)} known peer(s)" if hosts else "public")]



# ------------------------------------------------------------------------------------------- asking the cloud
class CloudChecks:
    """The read-only questions preflight asks one cloud; each method returns findings."""

    def __init__(self, stack: str, settings: Settings, connection: Any):
        self.stack, self.settings, self.cloud = stack, settings, connection

    def finding(self, check: str, status: str, setting: str, found: str, todo: str = "") -> Finding:
        return Finding(self.stack, check, status, setting, found, todo)

    def access(self) -> list[Finding]:
        s = self.settings.openstack
        self.cloud.authorize()
        findings = [self.finding("Access", PASS, "cloud", f"authenticated as clouds.yaml entry '{s.cloud}'")]
        try:
            self.cloud.compute.get_endpoint()
        except Exception:
            return findings + [self.finding("Access", FAIL, "region", f"no compute endpoint in region '{s.region}'",
                                            "use a region of this cloud's catalog (`openstack region list`)")]
        findings.append(self.finding("Access", PASS, "region", s.region))
        zones = {z.name for z in self.cloud.compute.availability_zones() if (z.state or {}).get("available", True)}
        if s.availability_zone not in zones:
            findings.append(self.finding("Access", FAIL, "availabilityZone", f"'{s.availability_zone}' not among "
                                         f"{', '.join(sorted(zones)) or 'none'}", "use one of those zones"))
        else:
            findings.append(self.finding("Access", PASS, "availabilityZone", s.availability_zone))
        return findings

    def flavors(self) -> dict[str, Optional[Flavor]]:
        found: dict[str, Optional[Flavor]] = {}
        for name in {self.settings.openstack.server_flavor, self.settings.openstack.agent_flavor}:
            flavor = self.cloud.compute.find_flavor(name, ignore_missing=True)
            found[name] = flavor and Flavor(flavor.name, flavor.vcpus, flavor.ram, flavor.disk)
        return found

    def image(self, flavors: dict[str, Optional[Flavor]], pinned: Optional[str] = None) -> list[Finding]:
        """`pinned`: the image id the stack's first deploy pinned (its `imageId` output), if it is up."""
        s = self.settings.openstack
        images = [i for i in self.cloud.image.images(name=s.image) if i.status == "active"]
        if not images and pinned:
            kept = self.cloud.image.find_image(pinned, ignore_missing=True)
            if kept is not None and kept.status == "active":
                return [self.finding("Image", WARN, "image", f"no active image named '{s.image}' any more",
                                     f"servers, new and healed ones too, keep the pinned {pinned}; set image to "
                                     "a current one to move new servers to it")]
            return [self.finding("Image", FAIL, "image", f"neither an image named '{s.image}' nor the pinned "
                                 f"{pinned} is active", "a new or healed server could not boot: set image to a "
                                 "current image of `openstack image list`")]
        if not images:
            return [self.finding("Image", FAIL, "image", f"no active image named '{s.image}'",
                                 "upload it or name one of `openstack image list`")]
        newest = max(images, key=lambda i: i.created_at or "")
        findings = []
        if len(images) > 1:
            findings.append(self.finding("Image", WARN, "image", f"{len(images)} images named '{s.image}'",
                                         f"the first deploy pins the newest, {newest.id}; servers keep theirs"))
        os_type = newest.os_type
        if os_type and os_type.lower() != "linux":
            findings.append(self.finding("Image", FAIL, "image", f"os_type {os_type}", "a Linux image with cloud-init"))
        smallest = min((f for f in flavors.values() if f), key=lambda f: f.ram_mb, default=None)
        if newest.min_disk and newest.min_disk > s.boot_volume_size:
            findings.append(self.finding("Image", FAIL, "bootVolumeSize", f"image needs {newest.min_disk} GB, "
                                         f"bootVolumeSize is {s.boot_volume_size}", f"set bootVolumeSize >= {newest.min_disk}"))
        if smallest and newest.min_ram and newest.min_ram > smallest.ram_mb:
            findings.append(self.finding("Image", FAIL, "serverFlavor", f"image needs {newest.min_ram} MiB RAM, "
                                         f"{smallest.name} has {smallest.ram_mb}", "a larger flavor"))
        if not any(f.status == FAIL for f in findings):
            findings.append(self.finding("Image", PASS, "image", f"{s.image} = {newest.id}"))
        return findings

    def quotas(self, flavors: dict[str, Optional[Flavor]]) -> list[Finding]:
        s = self.settings.openstack
        server, agent = flavors.get(s.server_flavor), flavors.get(s.agent_flavor)
        if server is None or agent is None:
            return [self.finding("Quotas", SKIP, "serverFlavor", "a flavor is missing, so its needs are unknown")]
        return quota_findings(self.stack, needs(self.settings, server, agent), quota_usage(self.cloud))

    def external_network(self) -> list[Finding]:
        n = self.settings.network
        if not n.external_network:
            return []
        network = self.cloud.network.find_network(n.external_network, ignore_missing=True)
        if network is None:
            return [self.finding("External network", FAIL, "externalNetwork", f"no network '{n.external_network}'",
                                 "name an external network of `openstack network list --external`")]
        if not network.is_router_external:
            return [self.finding("External network", FAIL, "externalNetwork", f"'{network.name}' is not external",
                                 "name an external network of `openstack network list --external`")]
        subnets = list(self.cloud.network.subnets(network_id=network.id))
        if not subnets:
            return [self.finding("External network", FAIL, "externalNetwork", f"'{network.name}' has no subnet",
                                 "ask the cloud's operator for floating IPs")]
        wanted = self.settings.openstack.node_count if n.public_addressing == "floating" else 0
        wanted += 1 if n.mode == "managed" else 0  # the router's gateway
        free = self._free_addresses(network, subnets)
        if free is None:
            return [self.finding("External network", PASS, "externalNetwork",
                                 f"'{network.name}' is external with {len(subnets)} subnet(s); free addresses unknown")]
        if free < wanted:
            return [self.finding("External network", FAIL, "externalNetwork",
                                 f"'{network.name}' has {free} free address(es), {wanted} needed",
                                 "release unused floating IPs or ask the cloud's operator for more")]
        return [self.finding("External network", PASS, "externalNetwork",
                             f"'{network.name}' is external, {free} free address(es), {wanted} needed")]

    def _free_addresses(self, network: Any, subnets: list[Any]) -> Optional[int]:
        try:  # admin-only on most clouds
            availability = self.cloud.network.get_network_ip_availability(network.id)
            return int(availability.total_ips) - int(availability.used_ips)
        except Exception:
            return None

    def existing_network(self) -> tuple[list[Finding], Optional[int]]:
        n = self.settings.network
        if n.mode != "existing":
            return [], None
        network = self.cloud.network.find_network(n.existing_network, ignore_missing=True)
        if network is None:
            return [self.finding("Existing network", FAIL, "existingNetwork", f"no network '{n.existing_network}'",
                                 "name one of `openstack network list`")], None
        if not network.is_shared and network.project_id != self.cloud.current_project_id:
            return [self.finding("Existing network", FAIL, "existingNetwork",
                                 f"'{network.name}' is neither shared nor this project's",
                                 "use a shared network or one of this project's")], network.mtu
        cidrs = [s.cidr for s in self.cloud.network.subnets(network_id=network.id)]
        if n.public_addressing == "fixed" and not any(is_public(c) for c in cidrs):
            return [self.finding("Existing network", FAIL, "publicAddressing",
                                 f"'{network.name}' has only private subnets {', '.join(cidrs) or '(none)'}",
                                 "use floating addressing with externalNetwork, or a provider network with public addresses")], network.mtu
        return [self.finding("Existing network", PASS, "existingNetwork",
                             f"'{network.name}' ({'shared' if network.is_shared else 'own'}): {', '.join(cidrs)}")], network.mtu


def quota_usage(cloud: Any) -> dict[str, tuple[int, int]]:
    """Each quota of the connection's project that a stack draws on: resource -> (limit, in use)."""
    project = cloud.current_project_id
    limits = cloud.compute.get_limits().absolute
    quotas = {
        "instances": (limits.instances, limits.instances_used),
        "cores": (limits.total_cores, limits.total_cores_used),
        "ram": (limits.total_ram, limits.total_ram_used),
        "server_groups": (limits.server_groups, limits.server_groups_used),
        "server_group_members": (limits.server_group_members, 0),
    }
    volume = cloud.block_storage.get_quota_set(project, usage=True)
    for resource in ("volumes", "gigabytes"):
        quotas[resource] = (getattr(volume, resource), (volume.usage or {}).get(resource, 0))
    network = cloud.network.get_quota(project, details=True)
    for resource in ("ports", "floatingip", "network", "subnet", "router", "security_group", "security_group_rule"):
        detail = getattr(network, _NETWORK_QUOTA_FIELDS[resource])
        quotas[resource] = (detail["limit"], detail["used"] + detail.get("reserved", 0))
    return quotas


_NETWORK_QUOTA_FIELDS = {"ports": "ports", "floatingip": "floating_ips", "network": "networks", "subnet": "subnets",
                         "router": "routers", "security_group": "security_groups",
                         "security_group_rule": "security_group_rules"}


# ------------------------------------------------------------------------------------------- seed reachability
def seed_findings(stack: str, settings: Settings, seed_outputs: Callable[[str], dict[str, Any]],
                  timeout: float = 3.0) -> list[Finding]:
    c = settings.cockroach
    if c.is_seed:
        return [Finding(stack, "Seed", SKIP, "role", "this is the seed")]
    addresses = list(c.join_addresses)
    if c.seed_stack:
        try:
            outputs = seed_outputs(c.seed_stack)
        except Exception as error:
            return [Finding(stack, "Seed", FAIL, "seedStack", f"cannot read '{c.seed_stack}': {_first_line(error)}",
                            "check the name and PULUMI_BACKEND_URL")]
        wanted = ("joinAddresses", "caCertificate", "clientCaCertificate", "federationJoin")
        missing = [name for name in wanted if not outputs.get(name)]
        if missing:
            return [Finding(stack, "Seed", FAIL, "seedStack", f"'{c.seed_stack}' has no {'/'.join(missing)} output(s)",
                            "bring the seed up first (with this program's version), or set joinAddresses, "
                            "caCertificate and clientCaCertificate")]
        addresses += [a for a in outputs["federationJoin"] if a not in addresses]
    answering = [a for a, ok in zip(addresses, _probe_all(addresses, timeout)) if ok]
    if not answering:
        return [Finding(stack, "Seed", SKIP, "joinAddresses", f"none of {len(addresses)} join address(es) answers "
                        f"on TCP from here", "nodes dial them from the cloud; check from there if the join stalls")]
    return [Finding(stack, "Seed", PASS, "joinAddresses", f"{len(answering)}/{len(addresses)} answer on TCP")]


def _probe_all(addresses: Sequence[str], timeout: float) -> list[bool]:
    def probe(address: str) -> bool:
        host, port = split_address(address)
        try:
            with socket.create_connection((host, int(port or COCKROACH_PORT)), timeout=timeout):
                return True
        except OSError:
            return False

    if not addresses:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as pool:
        return list(pool.map(probe, addresses))


def pulumi_stack_outputs(root: Path, environment: Optional[dict[str, str]] = None, *,
                         show_secrets: bool = False) -> Callable[[str], dict[str, Any]]:
    """Reads another stack's outputs with the CLI, on the current backend; secrets shown only if asked, and only
    if `environment`'s secrets provider decrypts them (public outputs need none)."""
    def read(stack: str) -> dict[str, Any]:
        if shutil.which("pulumi") is None:
            raise RuntimeError("the Pulumi CLI is not on PATH")
        command = ["pulumi", "stack", "output", "--json", "--stack", stack, "--non-interactive"]
        done = subprocess.run(command + (["--show-secrets"] if show_secrets else []), cwd=root, capture_output=True,
                              text=True, timeout=120, env={**os.environ, **(environment or {})})
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip() or done.stdout.strip())
        return json.loads(done.stdout or "{}")

    return read


def readable_secrets(root: Path, environment: Optional[dict[str, str]]) -> Callable[[str], list[str]]:
    """The secret outputs of a stack that `environment`'s secrets provider decrypts (none when it cannot)."""
    def read(stack: str) -> list[str]:
        try:
            hidden = pulumi_stack_outputs(root)(stack)
            shown = pulumi_stack_outputs(root, environment, show_secrets=True)(stack)
        except RuntimeError:  # "failed to decrypt", or no such stack
            return []
        return sorted(k for k, v in hidden.items() if v == "[secret]" and shown.get(k) not in (None, "[secret]"))

    return read


def public_address(url: str = MY_ADDRESS_URL, timeout: float = 3.0) -> Optional[str]:
    """This machine's address as the internet sees it, or None when that cannot be told."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            text = answer.read(100).decode().strip()
        ipaddress.ip_address(text)
        return text
    except Exception:
        return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


# ------------------------------------------------------------------------------------------- one stack
def check_stack(stack: str, root: Path, *, my_address: Optional[str],
                seed_outputs: Callable[[str], dict[str, Any]],
                connect: Optional[Callable[[Settings], Any]] = None,
                readable: Callable[[str], list[str]] = lambda _: [],
                unkeyed: Optional[Path] = None) -> list[Finding]:
    """Every check of one stack; a check that cannot run is a failure naming why, never an exception."""
    try:
        settings = stack_settings(stack, root)
    except (stack_config.StackConfigError, SettingsError) as error:
        return [Finding(stack, "Settings", FAIL, "(stack file)", str(error).replace("\n", " "),
                        f"fix stacks/Pulumi.{stack}.yaml")]
    connect = connect or _connect
    try:
        cloud = CloudChecks(stack, settings, connect(settings))
        findings = cloud.access()
    except Exception as error:
        if "not a valid region name" in str(error):  # openstacksdk checks the region against clouds.yaml
            return [Finding(stack, "Access", FAIL, "region", _first_line(error),
                            "use a region of this cloud (clouds.yaml `regions`, `openstack region list`)")]
        return [Finding(stack, "Access", FAIL, "cloud", f"'{settings.openstack.cloud}': {_first_line(error)}",
                        "check the clouds.yaml entry and its credentials")]
    if any(f.status == FAIL for f in findings):
        return findings

    def guarded(check: str, setting: str, run: Callable[[], list[Finding]]) -> list[Finding]:
        try:
            return run()
        except Exception as error:
            return [Finding(stack, check, FAIL, setting, f"the check failed: {_first_line(error)}",
                            "check the cloud's API and this account's rights")]

    flavors: dict[str, Optional[Flavor]] = {}

    def flavor_check() -> list[Finding]:
        flavors.update(cloud.flavors())
        return flavor_findings(stack, settings, flavors)

    findings += guarded("Flavors", "serverFlavor", flavor_check)
    def pinned_image() -> Optional[str]:
        try:
            return seed_outputs(stack).get("imageId")
        except Exception:  # not up yet: nothing pinned
            return None

    findings += guarded("Image", "image", lambda: cloud.image(flavors, pinned_image()))
    findings += guarded("Quotas", "nodeCount", lambda: cloud.quotas(flavors))
    findings += guarded("External network", "externalNetwork", cloud.external_network)
    existing_mtu: list[Optional[int]] = [None]

    def existing() -> list[Finding]:
        found, existing_mtu[0] = cloud.existing_network()
        return found

    findings += guarded("Existing network", "existingNetwork", existing)
    findings += admin_findings(stack, settings.network.admin_cidrs, my_address)
    peers: list[str] = list(settings.cockroach.join_addresses)

    def seed_check() -> list[Finding]:
        found = seed_findings(stack, settings, seed_outputs)
        if settings.cockroach.seed_stack and found[0].status != FAIL:
            peers.extend(seed_outputs(settings.cockroach.seed_stack).get("joinAddresses") or [])
        return found

    findings += guarded("Seed", "seedStack", seed_check)
    findings += federation_findings(stack, settings, peers)
    findings += guarded("Secrets", "(secrets provider)", lambda: secrets_findings(stack, settings, readable, unkeyed))
    findings += settings_findings(stack, settings)
    findings += mtu_findings(stack, settings, existing_mtu[0])
    return findings


def _connect(settings: Settings) -> Any:
    import openstack

    return openstack.connect(cloud=settings.openstack.cloud, region_name=settings.openstack.region)


def failed_stacks(findings: Iterable[Finding]) -> list[str]:
    return list(dict.fromkeys(f.stack for f in findings if f.status == FAIL))


def run_preflight(stacks: Sequence[str], root: Path, *, my_address: Optional[str], parallel: int = 8,
                  connect: Optional[Callable[[Settings], Any]] = None,
                  environments: Optional[dict[str, dict[str, str]]] = None,
                  passphrases: Optional[Path] = None) -> list[Finding]:
    """`environments`: each stack's secrets provider's (federation/secrets.py); its Secrets check asks what the
    stacks it reads would let it decrypt. A stack absent from them has none of its own (no passphrase file in
    `passphrases`): that is its Secrets failure."""
    seed_outputs = pulumi_stack_outputs(root)

    def keyed(stack: str) -> dict[str, Any]:
        if environments is None or stack in environments:
            return {"readable": readable_secrets(root, (environments or {}).get(stack))}
        return {"unkeyed": secrets.passphrase_file(stack, passphrases or secrets.DEFAULT_DIRECTORY)}

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(stacks)))) as pool:
        per_stack = pool.map(lambda s: check_stack(s, root, my_address=my_address, seed_outputs=seed_outputs,
                                                   connect=connect, **keyed(s)), stacks)
        return [finding for findings in per_stack for finding in findings]
