"""Stack configuration, parsed once into frozen settings.

`parse_settings` is pure: it takes the raw config strings (as `pulumi config` stores them) and the
secret values, checks everything, and raises one `SettingsError` listing every problem, each naming
the key, the value and what is expected. Nothing is created before this succeeds.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import pulumi

PROJECT = "crdb-federation"

DEFAULT_K3S_VERSION = "v1.35.5+k3s1"
# kubernetes-validate schema version matching the pinned k3s (tests validate against it).
KUBERNETES_SCHEMA_VERSION = "1.35.0"
DEFAULT_COCKROACH_IMAGE = "cockroachdb/cockroach:v26.2.0"
DEFAULT_K3S_INSTALL_SCRIPT_URL = "https://get.k3s.io"
DEFAULT_K3S_RELEASES_URL = "https://github.com/k3s-io/k3s/releases"
COCKROACH_PORT = 26257
COCKROACH_HTTP_PORT = 8080
KUBE_API_PORT = 6443

SECRET_KEYS = ("kubeconfig", "caCertificate", "caPrivateKey")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_K3S_VERSION = re.compile(r"^v\d+\.\d+\.\d+\+k3s\d+$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti)$")
_LOCALITY_VALUE = re.compile(r"^[A-Za-z0-9][-_.A-Za-z0-9]*$")
_CPU = re.compile(r"^\d+(\.\d+)?m?$")
_CLUSTER_NAME = re.compile(r"^[a-zA-Z0-9]([-.a-zA-Z0-9]*[a-zA-Z0-9])?$")
_IMAGE_WITH_TAG = re.compile(r"^[^\s:]+(:[0-9]+)?/?[^\s:]*:(?!latest$)[\w][\w.-]{0,127}$")


class SettingsError(pulumi.RunError):
    """Invalid stack configuration; the message lists every problem (shown without a traceback)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid stack configuration ({len(self.problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class ExistingNode:
    """A node of a Kubernetes cluster this program did not build (kubernetesMode: existing)."""

    name: str
    public_ip: str
    private_ip: str


@dataclass(frozen=True)
class OpenStackSettings:
    cloud: str
    region: str
    availability_zone: str
    image: str
    server_flavor: str
    agent_flavor: str
    node_count: int
    boot_volume_size: int
    ssh_public_key: Optional[str]


@dataclass(frozen=True)
class NetworkSettings:
    mode: str  # managed | existing
    cidr: str
    dns_servers: tuple[str, ...]
    mtu: Optional[int]
    external_network: Optional[str]
    existing_network: Optional[str]
    public_addressing: str  # floating | fixed
    admin_cidrs: tuple[str, ...]
    federation_cidrs: tuple[str, ...]


@dataclass(frozen=True)
class KubernetesSettings:
    mode: str  # k3s | existing
    k3s_version: str
    k3s_install_script_url: str
    k3s_releases_url: str
    http_proxy: Optional[str]
    no_proxy: tuple[str, ...]
    api_ready_timeout: int
    kubeconfig: Optional[pulumi.Output] = field(default=None, compare=False)
    existing_nodes: tuple[ExistingNode, ...] = ()


@dataclass(frozen=True)
class CockroachSettings:
    role: str  # seed | member
    member: str
    cluster_name: str
    image: str
    namespace: str
    replicas: int
    storage_size: str
    storage_class: str
    memory: str
    cpu: str
    seed_stack: Optional[str]
    join_addresses: tuple[str, ...]
    insecure: bool
    replication_factor: int
    ca_certificate: Optional[pulumi.Output] = field(default=None, compare=False)
    ca_private_key: Optional[pulumi.Output] = field(default=None, compare=False)

    @property
    def is_seed(self) -> bool:
        return self.role == "seed"


@dataclass(frozen=True)
class Settings:
    stack: str
    openstack: OpenStackSettings
    network: NetworkSettings
    kubernetes: KubernetesSettings
    cockroach: CockroachSettings


class _Reader:
    """Reads raw config strings, converting types and collecting problems instead of raising."""

    def __init__(self, values: Mapping[str, str]):
        self.values = values
        self.problems: list[str] = []

    def problem(self, key: str, value: Any, expected: str) -> None:
        self.problems.append(f"{PROJECT}:{key} = {value!r}: expected {expected}")

    def string(self, key: str, default: Optional[str] = None, *, required: bool = False) -> Optional[str]:
        raw = self.values.get(key)
        if raw is None or raw == "":
            if required:
                self.problem(key, raw, "a non-empty value (it is required)")
            return default
        return str(raw)

    def integer(self, key: str, default: Optional[int], lo: int, hi: int) -> Optional[int]:
        raw = self.values.get(key)
        if raw is None or raw == "":
            return default
        try:
            value = int(str(raw), 10)
        except ValueError:
            self.problem(key, raw, f"an integer from {lo} to {hi}")
            return default
        if not lo <= value <= hi:
            self.problem(key, raw, f"an integer from {lo} to {hi}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.values.get(key)
        if raw is None or raw == "":
            return default
        text = str(raw).strip().lower()
        if text in ("true", "false"):
            return text == "true"
        self.problem(key, raw, "true or false")
        return default

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.string(key, default)
        if value not in choices:
            self.problem(key, value, "one of " + ", ".join(choices))
            return default
        return value

    def string_list(self, key: str, default: Sequence[str] = (), *, required: bool = False) -> tuple[str, ...]:
        raw = self.values.get(key)
        if raw is None or raw == "":
            if required:
                self.problem(key, raw, "a non-empty list (it is required)")
            return tuple(default)
        try:
            value = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.problem(key, raw, "a list of non-empty strings")
            return tuple(default)
        if required and not value:
            self.problem(key, raw, "a non-empty list (it is required)")
        return tuple(value)

    def matching(self, key: str, value: Optional[str], pattern: re.Pattern, expected: str) -> None:
        if value is not None and not pattern.match(value):
            self.problem(key, value, expected)

    def cidrs(self, key: str, *, required: bool) -> tuple[str, ...]:
        values = self.string_list(key, required=required)
        for value in values:
            if not is_cidr(value):
                self.problem(key, value, "a list of CIDRs such as 203.0.113.0/24 or 2001:db8::/32")
        return values

    def ips(self, key: str, default: Sequence[str]) -> tuple[str, ...]:
        values = self.string_list(key, default)
        for value in values:
            if not is_ip(value):
                self.problem(key, value, "a list of IP addresses")
        return values


def is_cidr(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=True)
        return "/" in value
    except ValueError:
        return False


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def is_world(cidr: str) -> bool:
    """True for a CIDR that covers the whole IPv4 or IPv6 internet."""
    return is_cidr(cidr) and ipaddress.ip_network(cidr).prefixlen == 0


def _is_host_port(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return False
    host = host.strip("[]")
    return is_ip(host) or re.match(r"^[a-zA-Z0-9]([-.a-zA-Z0-9]*[a-zA-Z0-9])?$", host) is not None


def parse_settings(
    values: Mapping[str, str],
    stack: str,
    secrets: Optional[Mapping[str, pulumi.Output]] = None,
) -> Settings:
    """Validates the whole stack configuration and returns the settings, or raises SettingsError."""
    secrets = dict(secrets or {})
    r = _Reader(values)

    node_count = r.integer("nodeCount", 3, 1, 500)
    server_flavor = r.string("serverFlavor", required=True)
    openstack = OpenStackSettings(
        cloud=r.string("cloud", required=True),
        region=r.string("region", required=True),
        availability_zone=r.string("availabilityZone", "nova"),
        image=r.string("image", required=True),
        server_flavor=server_flavor,
        agent_flavor=r.string("agentFlavor", server_flavor),
        node_count=node_count,
        boot_volume_size=r.integer("bootVolumeSize", 40, 10, 16384),
        ssh_public_key=r.string("sshPublicKey"),
    )
    for name, value in (("region", openstack.region), ("availabilityZone", openstack.availability_zone)):
        # Both become locality tier values: no separators of the locality syntax.
        r.matching(name, value, _LOCALITY_VALUE, "letters, digits, '-', '_' and '.' (it is a locality tier value)")
    key = openstack.ssh_public_key
    if key is not None and not re.match(r"^(ssh-(rsa|ed25519)|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( .*)?$", key):
        r.problem("sshPublicKey", key, "an OpenSSH public key (ssh-ed25519 AAAA..., never a private key)")

    network = _parse_network(r)
    kubernetes = _parse_kubernetes(r, secrets)
    cockroach = _parse_cockroach(r, secrets, stack, node_count, kubernetes, network)

    if r.problems:
        raise SettingsError(r.problems)
    return Settings(stack=stack, openstack=openstack, network=network, kubernetes=kubernetes, cockroach=cockroach)


def _parse_network(r: _Reader) -> NetworkSettings:
    mode = r.choice("networkMode", "managed", ("managed", "existing"))
    addressing = r.choice("publicAddressing", "floating", ("floating", "fixed"))
    cidr = r.string("networkCidr", "10.20.0.0/24")
    if not is_cidr(cidr) or ":" in cidr:
        r.problem("networkCidr", cidr, "an IPv4 CIDR such as 10.20.0.0/24")
    external = r.string("externalNetwork")
    existing = r.string("existingNetwork")
    if mode == "managed" and not external:
        r.problem("externalNetwork", external, "the external network for the router (networkMode is managed)")
    if addressing == "floating" and not external and mode != "managed":
        r.problem("externalNetwork", external, "the floating IP pool (publicAddressing is floating)")
    if mode == "existing" and not existing:
        r.problem("existingNetwork", existing, "the name or id of the network to attach to (networkMode is existing)")
    if mode == "managed" and addressing == "fixed":
        r.problem("publicAddressing", addressing, "floating when networkMode is managed (tenant addresses are private)")
    return NetworkSettings(
        mode=mode,
        cidr=cidr,
        dns_servers=r.ips("dnsServers", ("1.1.1.1", "9.9.9.9")),
        mtu=_mtu(r),
        external_network=external,
        existing_network=existing,
        public_addressing=addressing,
        admin_cidrs=r.cidrs("adminCidrs", required=True),
        federation_cidrs=r.cidrs("federationCidrs", required=True),
    )


def _mtu(r: _Reader) -> Optional[int]:
    """0 (the project default) leaves the MTU to Neutron."""
    mtu = r.integer("mtu", 0, 0, 65535)
    if mtu and not 1280 <= mtu <= 9000:
        r.problem("mtu", r.values["mtu"], "0 (Neutron decides) or an MTU from 1280 to 9000")
    return mtu or None


def _parse_kubernetes(r: _Reader, secrets: Mapping[str, pulumi.Output]) -> KubernetesSettings:
    mode = r.choice("kubernetesMode", "k3s", ("k3s", "existing"))
    version = r.string("k3sVersion", DEFAULT_K3S_VERSION)
    r.matching("k3sVersion", version, _K3S_VERSION, "a pinned k3s release such as v1.35.5+k3s1")
    script_url = r.string("k3sInstallScriptUrl", DEFAULT_K3S_INSTALL_SCRIPT_URL)
    releases_url = r.string("k3sReleasesUrl", DEFAULT_K3S_RELEASES_URL)
    proxy = r.string("httpProxy")
    for key, url in (("k3sInstallScriptUrl", script_url), ("k3sReleasesUrl", releases_url), ("httpProxy", proxy)):
        if url is not None and not re.match(r"^https?://[^\s'\"]+$", url):
            r.problem(key, url, "an http:// or https:// URL without spaces or quotes")
    for key, url in (("k3sInstallScriptUrl", script_url), ("k3sReleasesUrl", releases_url)):
        if url is not None and url.startswith("http://"):
            r.problem(key, url, "an https:// URL (the k3s download must be authenticated)")
    no_proxy = r.string_list("noProxy")
    for value in no_proxy:
        if not re.match(r"^[-.a-zA-Z0-9/:*]+$", value):
            r.problem("noProxy", value, "host names, domains, IPs or CIDRs")

    nodes: list[ExistingNode] = []
    kubeconfig = secrets.get("kubeconfig")
    if mode == "existing":
        if kubeconfig is None:
            r.problem("kubeconfig", None, "a secret kubeconfig (kubernetesMode is existing)")
        for entry in r.string_list("existingNodes", required=True):
            parts = entry.split()
            if len(parts) != 3 or not _DNS_LABEL.match(parts[0]) and "." not in parts[0] or not all(
                is_ip(p) for p in parts[1:]
            ):
                r.problem("existingNodes", entry, "'<node name> <public ip> <private ip>' per node")
                continue
            nodes.append(ExistingNode(*parts))
    return KubernetesSettings(
        mode=mode,
        k3s_version=version,
        k3s_install_script_url=script_url,
        k3s_releases_url=releases_url,
        http_proxy=proxy,
        no_proxy=no_proxy,
        api_ready_timeout=r.integer("apiReadyTimeout", 900, 30, 7200),
        kubeconfig=kubeconfig,
        existing_nodes=tuple(nodes),
    )


def _parse_cockroach(
    r: _Reader,
    secrets: Mapping[str, pulumi.Output],
    stack: str,
    node_count: int,
    kubernetes: KubernetesSettings,
    network: NetworkSettings,
) -> CockroachSettings:
    role = r.choice("role", "member", ("seed", "member"))
    member = r.string("memberName", stack)
    if not _DNS_LABEL.match(member) or len(member) > 40:
        r.problem("memberName", member, "a lower-case DNS label of at most 40 characters (defaults to the stack name)")
    cluster_name = r.string("clusterName", PROJECT)
    r.matching("clusterName", cluster_name, _CLUSTER_NAME, "letters, digits, '-' and '.'")
    image = r.string("cockroachImage", DEFAULT_COCKROACH_IMAGE)
    r.matching("cockroachImage", image, _IMAGE_WITH_TAG, "an image with a pinned tag, e.g. cockroachdb/cockroach:v26.2.0")

    # One CockroachDB pod per Kubernetes node.
    replicas = len(kubernetes.existing_nodes) if kubernetes.mode == "existing" else node_count
    if role == "seed" and replicas < 3:
        key = "existingNodes" if kubernetes.mode == "existing" else "nodeCount"
        r.problem(key, r.values.get(key, replicas),
                  "at least 3 nodes on the seed, which must survive the loss of one node")

    storage_size = r.string("storageSize", "100Gi")
    r.matching("storageSize", storage_size, _QUANTITY, "a Kubernetes quantity such as 100Gi")
    memory = r.string("cockroachMemory", "4Gi")
    r.matching("cockroachMemory", memory, _QUANTITY, "a Kubernetes quantity such as 4Gi")
    cpu = r.string("cockroachCpu", "2")
    r.matching("cockroachCpu", cpu, _CPU, "a CPU quantity such as 2 or 1500m")
    namespace = r.string("namespace", "cockroachdb")
    r.matching("namespace", namespace, _DNS_LABEL, "a lower-case DNS label")

    seed_stack = r.string("seedStack")
    joins = r.string_list("joinAddresses")
    for address in joins:
        if not _is_host_port(address):
            r.problem("joinAddresses", address, "host:port entries such as 203.0.113.10:26257")
    ca_cert, ca_key = secrets.get("caCertificate"), secrets.get("caPrivateKey")
    if (ca_cert is None) != (ca_key is None):
        r.problem("caCertificate" if ca_cert is None else "caPrivateKey", None,
                  "both caCertificate and caPrivateKey (secrets), or neither")
    if role == "seed":
        if seed_stack:
            r.problem("seedStack", seed_stack, "no value on the seed: the seed is the established cluster")
    else:
        if not seed_stack and not joins:
            r.problem("seedStack", seed_stack, "the seed's stack name (org/project/stack), or set joinAddresses")
        if not seed_stack and ca_cert is None:
            r.problem("caCertificate", None, "the federation CA (secret) when no seedStack provides it")

    insecure = r.boolean("insecure", False)
    if insecure:
        for cidr in network.federation_cidrs:
            if is_world(cidr):
                r.problem("federationCidrs", cidr, "no world-open range while insecure is true (26257 has no TLS then)")
    # 0 is the project default, which the engine applies to every stack: "not set".
    factor = r.integer("replicationFactor", 0, 0, 9)
    if role != "seed" and factor:
        r.problem("replicationFactor", r.values["replicationFactor"], "0 (unset) on a member: the seed sets it")
    elif factor and (factor < 3 or factor % 2 == 0):
        r.problem("replicationFactor", r.values["replicationFactor"],
                  "0 (automatic) or an odd number from 3 to 9: a majority must survive")
    factor = factor or 3

    return CockroachSettings(
        role=role,
        member=member,
        cluster_name=cluster_name,
        image=image,
        namespace=namespace,
        replicas=replicas,
        storage_size=storage_size,
        storage_class=r.string("storageClass", "local-path"),
        memory=memory,
        cpu=cpu,
        seed_stack=seed_stack,
        join_addresses=joins,
        insecure=insecure,
        replication_factor=factor,
        ca_certificate=ca_cert,
        ca_private_key=ca_key,
    )


CONFIG_KEYS = (
    "cloud", "region", "availabilityZone", "image", "serverFlavor", "agentFlavor", "nodeCount", "bootVolumeSize",
    "sshPublicKey", "networkMode", "networkCidr", "dnsServers", "mtu", "externalNetwork", "existingNetwork",
    "publicAddressing", "adminCidrs", "federationCidrs", "kubernetesMode", "k3sVersion", "k3sInstallScriptUrl",
    "k3sReleasesUrl", "httpProxy", "noProxy", "apiReadyTimeout", "existingNodes", "role", "memberName",
    "clusterName", "cockroachImage", "storageSize", "storageClass", "cockroachMemory",
    "cockroachCpu", "namespace", "seedStack", "joinAddresses", "insecure", "replicationFactor",
)


def load_settings(config: Optional[pulumi.Config] = None, stack: Optional[str] = None) -> Settings:
    """Reads every known key from the stack's config and parses it (the one place that touches pulumi.Config)."""
    config = config or pulumi.Config()
    values = {key: config.get(key) for key in CONFIG_KEYS if key not in SECRET_KEYS}
    values = {k: v for k, v in values.items() if v is not None}
    secrets: dict[str, pulumi.Output] = {}
    plaintext: list[str] = []
    for key in SECRET_KEYS:
        if config.get(key):
            secrets[key] = config.require_secret(key)
            if not pulumi.runtime.is_config_secret(f"{PROJECT}:{key}"):
                plaintext.append(key)
    if plaintext:
        raise SettingsError([f"{PROJECT}:{key} = (plaintext): expected a secret (pulumi config set --secret {key})"
                             for key in plaintext])
    return parse_settings(values, stack or pulumi.get_stack(), secrets)
