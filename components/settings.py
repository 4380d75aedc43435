"""Stack configuration, parsed once into frozen settings.

`parse_settings` is pure: it takes the raw config strings (as `pulumi config` stores them) and the
secret values, checks everything, and raises one `SettingsError` listing every problem, each naming
the key, the value and what is expected. Nothing is created before this succeeds.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import pulumi

PROJECT = "crdb-federation"

DEFAULT_K3S_VERSION = "v1.35.5+k3s1"
# kubernetes-validate schema version matching the pinned k3s (tests validate against it).
KUBERNETES_SCHEMA_VERSION = "1.35.0"
DEFAULT_COCKROACH_IMAGE = "cockroachdb/cockroach:v26.2.0"
# k3s's installer at a commit of k3s-io/k3s (372c8adc, "Update to v1.35.5", release-1.35), and its sha256 as that
# commit's own install.sh.sha256sum gives it: get.k3s.io serves whatever is newest, unchecked.
DEFAULT_K3S_INSTALL_SCRIPT_URL = (
    "https://raw.githubusercontent.com/k3s-io/k3s/372c8adc5892bcd0fdadf1669f4f8fdc638795c0/install.sh")
DEFAULT_K3S_INSTALL_SCRIPT_SHA256 = "8598e002e61d658fed7b7542fc6d2c66d8da6eae69e088830105d2ee1ffb6d91"
DEFAULT_K3S_RELEASES_URL = "https://github.com/k3s-io/k3s/releases"
# Node-to-node RPC only (--listen-addr); SQL clients use COCKROACH_SQL_PORT (--sql-addr).
COCKROACH_PORT = 26257
COCKROACH_SQL_PORT = 26258
COCKROACH_HTTP_PORT = 8080
KUBE_API_PORT = 6443
# Pod and service ranges of k3s; a node network overlapping them breaks routing inside the cluster.
K3S_CLUSTER_CIDRS = ("10.42.0.0/16", "10.43.0.0/16")
# RFC 5737 and RFC 3849: never routed, so never a range a real peer or admin comes from.
DOCUMENTATION_RANGES = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
# Addresses nobody reaches from another cloud (RFC 1918, shared address space, link-local, loopback, ULA).
NON_PUBLIC_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
                     "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128")
# CockroachDB refuses a store under 640 MiB and keeps an emergency ballast of up to 1 GiB on it.
MIN_DATA_VOLUME_GB = 2

# Never declared in Pulumi.yaml (see there); set with `pulumi config set --secret`.
SECRET_KEYS = ("kubeconfig", "caPrivateKey", "enterpriseLicense", "joinToken", "joinTokens")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_K3S_VERSION = re.compile(r"^v\d+\.\d+\.\d+\+k3s\d+$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti)$")
_LOCALITY_VALUE = re.compile(r"^[A-Za-z0-9][-_.A-Za-z0-9]*$")
_CPU = re.compile(r"^\d+(\.\d+)?m?$")
_CLUSTER_NAME = re.compile(r"^[a-zA-Z0-9]([-.a-zA-Z0-9]*[a-zA-Z0-9])?$")
_IMAGE_WITH_TAG = re.compile(r"^[^\s:]+(:[0-9]+)?/?[^\s:]*:(?!latest$)[\w][\w.-]{0,127}$")
_STACK_NAME = re.compile(r"^[-\w.]+/[-\w.]+/[-\w.]+$")
_HOST = re.compile(r"^[a-zA-Z0-9]([-.a-zA-Z0-9]*[a-zA-Z0-9])?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PEM_CERTIFICATE = re.compile(r"^\s*-----BEGIN CERTIFICATE-----[\s\S]+-----END CERTIFICATE-----\s*$")


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
    data_volume_size: int
    data_volume_type: Optional[str]
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
    sql_cidrs: tuple[str, ...]


@dataclass(frozen=True)
class KubernetesSettings:
    mode: str  # k3s | existing
    k3s_version: str
    k3s_install_script_url: str
    k3s_install_script_sha256: str
    k3s_releases_url: str
    http_proxy: Optional[str]
    no_proxy: tuple[str, ...]
    api_ready_timeout: int
    ntp_servers: tuple[str, ...]
    # A label of the OS upgrade to run on every node, one at a time (None: none); change it to run another.
    os_upgrade_version: Optional[str]
    # Node traffic over a provider network crosses networks the cloud does not isolate: encrypt it.
    flannel_backend: str  # vxlan | wireguard-native
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
    memory: str
    cpu: str
    seed_stack: Optional[str]
    join_addresses: tuple[str, ...]
    # 0: follows the clouds present (3 below five clouds, 5 from five on); else pinned.
    replication_factor: int
    # Seed only: the member stacks whose certificate requests it signs.
    members: tuple[str, ...]
    cluster_organization: Optional[str]
    # A member without seedStack: the federation's CA certificates and its signed node certificates.
    ca_certificate: Optional[str]
    client_ca_certificate: Optional[str]
    node_certificate: Optional[str]
    node_client_certificate: Optional[str]
    force_removal: bool
    # A member: the SHA-256 fingerprints of the federation's node CA and client CA certificates, handed over by
    # the seed's operator out of band; every certificate the seed's outputs name must be one of them.
    ca_sha256: tuple[str, ...]
    client_ca_sha256: tuple[str, ...]
    # The seed: member stacks that may present a new node key (pinned at their first signature).
    allow_rekey: tuple[str, ...]
    # One operator runs every stack with one secrets provider (a demo): reading each other's secrets is expected.
    shared_secrets: bool
    ca_private_key: Optional[pulumi.Output] = field(default=None, compare=False)
    # The seed: requests its signing service took from members' running `up`s (stack -> member name, node, client
    # and ops request), signed before those stacks export them.
    early_requests: dict[str, dict[str, str]] = field(default_factory=dict, compare=False)
    # The seed: member stacks its signing service refused, and why (stack -> {requests: digest, reason}), published
    # in its outputs for those members' waits; set by the service for one `up`, like early_requests.
    refusals: dict[str, dict[str, str]] = field(default_factory=dict, compare=False)
    # The seed: the member stacks its signing service signs as their requests appear (federation/service.py).
    invited: tuple[str, ...] = ()
    # A member: seconds its `up` waits for the seed's signature (components/signature.py); 0 for the two-step path.
    signature_wait: int = 600
    # A member: the join token its seed's operator gave it out of band, when the seed asks for one.
    join_token: Optional[pulumi.Output] = field(default=None, compare=False)
    enterprise_license: Optional[pulumi.Output] = field(default=None, compare=False)

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
    # Not errors, but worth saying in every preview and up (e.g. a seed without a licence in a preview).
    warnings: tuple[str, ...] = ()


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

    def _json(self, key: str) -> Any:
        """A value the signing service gives as JSON: None when unset, "invalid" when it does not parse."""
        raw = self.values.get(key)
        if raw is None or raw == "":
            return None
        try:
            return json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            return "invalid"

    def early_requests(self, key: str, members: Sequence[str]) -> dict[str, dict[str, str]]:
        """stack -> {member, node, client[, ops]}: a listed member stack's name and its PEM certificate requests (the
        SQL user's, ops, from members of this version on)."""
        value = self._json(key)
        if value is None:
            return {}
        expected = ("a mapping of member stacks to {member, node, client[, ops]} (a name and two or three PEM "
                    "certificate requests)")
        if not isinstance(value, dict) or not all(
                isinstance(v, dict) and set(v) - {"ops"} == {"member", "node", "client"} and all(
                    isinstance(x, str) and x for x in v.values()) for v in value.values()):
            self.problem(key, "(requests)", expected)
            return {}
        for stack, entry in value.items():
            if not _STACK_NAME.match(stack):
                self.problem(key, stack, "full stack names, organization/project/stack")
            if not all(_loads_as_request(request) for kind, request in entry.items() if kind != "member"):
                self.problem(key, stack, expected)
        return {stack: dict(entry) for stack, entry in value.items()}

    def refusals(self, key: str) -> dict[str, dict[str, str]]:
        """stack -> {requests, reason}: what the seed's signing service refused (a digest of the requests, and why)."""
        value = self._json(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
                _STACK_NAME.match(stack) and isinstance(entry, dict) and set(entry) == {"requests", "reason"}
                and all(isinstance(x, str) and x for x in entry.values()) for stack, entry in value.items()):
            self.problem(key, "(refusals)", "a mapping of full stack names to {requests, reason}")
            return {}
        return {stack: dict(entry) for stack, entry in value.items()}

    def matching(self, key: str, value: Optional[str], pattern: re.Pattern, expected: str) -> None:
        if value is not None and not pattern.match(value):
            self.problem(key, value, expected)

    def reachable_cidrs(self, key: str, *, required: bool) -> tuple[str, ...]:
        """CIDRs that real peers or admins come from: no documentation range."""
        values = self.string_list(key, required=required)
        for value in values:
            if not is_cidr(value):
                self.problem(key, value, "a list of CIDRs such as 192.168.10.0/24 or 2a02:1234::/48")
            elif in_documentation_range(value):
                self.problem(key, value, "a reachable range, not a documentation range (RFC 5737/3849): "
                                         "put in the real addresses (README: Who may reach what)")
        return values

    def ips(self, key: str, default: Sequence[str]) -> tuple[str, ...]:
        values = self.string_list(key, default)
        for value in values:
            if not is_ip(value):
                self.problem(key, value, "a list of IP addresses")
        return values

    def certificate(self, key: str) -> Optional[str]:
        value = self.string(key)
        if value is not None and not (_PEM_CERTIFICATE.match(value) and _loads_as_certificates(value)):
            self.problem(key, value[:40] + ("..." if len(value) > 40 else ""), "a PEM certificate")
        return value


def _loads_as_certificates(pem: str) -> bool:
    """Every block of the PEM text is a certificate that parses (the shape alone lets garbage through)."""
    from cryptography import x509

    try:
        return bool(x509.load_pem_x509_certificates(pem.encode()))
    except ValueError:
        return False


def _loads_as_request(pem: str) -> bool:
    from cryptography import x509

    try:
        x509.load_pem_x509_csr(pem.encode())
        return True
    except ValueError:
        return False


def _is_http_url(value: str) -> bool:
    if not re.match(r"^https?://[^\s'\"]+$", value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # raises for a port that is not a number from 0 to 65535
    except ValueError:
        return False
    return bool(parts.hostname)


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


def within(cidr_or_ip: str, ranges: Iterable[str]) -> bool:
    """An address, or a whole range, inside one of `ranges`."""
    network = ipaddress.ip_network(cidr_or_ip, strict=False)
    return any(network.version == other.version and network.subnet_of(other)
               for other in map(ipaddress.ip_network, ranges))


def in_documentation_range(cidr_or_ip: str) -> bool:
    return within(cidr_or_ip, DOCUMENTATION_RANGES)


def is_non_public(cidr_or_ip: str) -> bool:
    """Inside a range no other cloud can reach (private ranges are reused by every cloud)."""
    return within(cidr_or_ip, NON_PUBLIC_RANGES)


def overlaps(cidr: str, others: Sequence[str]) -> list[str]:
    network = ipaddress.ip_network(cidr)
    return [o for o in others if network.overlaps(ipaddress.ip_network(o))]


def normalised_fingerprint(value: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits (openssl prints it upper-case, with colons)."""
    return value.replace(":", "").strip().lower()


def split_address(address: str) -> tuple[str, str]:
    """The host (an IPv6 literal without its brackets) and the port of a host:port address."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def _is_host_port(value: str) -> bool:
    host, port = split_address(value)
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        return False
    return is_ip(host) or _HOST.match(host) is not None


def parse_settings(
    values: Mapping[str, str],
    stack: str,
    secrets: Optional[Mapping[str, pulumi.Output]] = None,
    *,
    preview: bool = False,
) -> Settings:
    """Validates the whole stack configuration and returns the settings, or raises SettingsError."""
    secrets = dict(secrets or {})
    r = _Reader(values)
    given = {**{key: "[secret]" for key in secrets}, **values}
    for key in sorted(set(given) - set(CONFIG_KEYS) - set(SECRET_KEYS) - {EARLY_REQUESTS_KEY, REFUSALS_KEY}):
        # A misspelt key would otherwise be ignored and its default used, silently.
        close = difflib.get_close_matches(key, (*CONFIG_KEYS, *SECRET_KEYS), n=1)
        r.problem(key, given[key], "no such key: this program reads " + (
            f"{PROJECT}:{close[0]}" if close else "the keys Pulumi.yaml declares"))

    node_count = r.integer("nodeCount", 3, 1, 500)
    server_flavor = r.string("serverFlavor", required=True)
    volume_type = r.string("dataVolumeType")
    openstack = OpenStackSettings(
        cloud=r.string("cloud", required=True),
        region=r.string("region", required=True),
        availability_zone=r.string("availabilityZone", "nova"),
        image=r.string("image", required=True),
        server_flavor=server_flavor,
        agent_flavor=r.string("agentFlavor", server_flavor),
        node_count=node_count,
        boot_volume_size=r.integer("bootVolumeSize", 40, 10, 16384),
        data_volume_size=r.integer("dataVolumeSize", 100, MIN_DATA_VOLUME_GB, 65536),
        data_volume_type=volume_type,
        ssh_public_key=r.string("sshPublicKey"),
    )
    for name, value in (("region", openstack.region), ("availabilityZone", openstack.availability_zone)):
        # Both become locality tier values: no separators of the locality syntax.
        r.matching(name, value, _LOCALITY_VALUE, "letters, digits, '-', '_' and '.' (it is a locality tier value)")
    key = openstack.ssh_public_key
    if key is not None and not re.match(r"^(ssh-(rsa|ed25519)|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( .*)?$", key):
        r.problem("sshPublicKey", key, "an OpenSSH public key (ssh-ed25519 AAAA..., never a private key)")

    network = _parse_network(r)
    kubernetes = _parse_kubernetes(r, secrets, network)
    cockroach, warnings = _parse_cockroach(r, secrets, stack, node_count, kubernetes, preview)
    if kubernetes.mode == "k3s" and kubernetes.http_proxy and not kubernetes.ntp_servers:
        warnings.append(f"{PROJECT}:ntpServers is empty while httpProxy is set: NTP does not pass an HTTP proxy, "
                        "and a node whose clock does not synchronise installs no k3s; list NTP servers this cloud "
                        "reaches")

    if r.problems:
        raise SettingsError(r.problems)
    return Settings(stack=stack, openstack=openstack, network=network, kubernetes=kubernetes, cockroach=cockroach,
                    warnings=tuple(warnings))


def _parse_network(r: _Reader) -> NetworkSettings:
    mode = r.choice("networkMode", "managed", ("managed", "existing"))
    addressing = r.choice("publicAddressing", "floating", ("floating", "fixed"))
    cidr = r.string("networkCidr", "10.20.0.0/24")
    if not is_cidr(cidr) or ":" in cidr:
        r.problem("networkCidr", cidr, "an IPv4 CIDR such as 10.20.0.0/24")
    elif overlaps(cidr, K3S_CLUSTER_CIDRS):
        r.problem("networkCidr", cidr, f"a range apart from k3s's pod and service ranges {', '.join(K3S_CLUSTER_CIDRS)}")
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
    settings = NetworkSettings(
        mode=mode,
        cidr=cidr,
        dns_servers=r.ips("dnsServers", ("1.1.1.1", "9.9.9.9")),
        mtu=_mtu(r),
        external_network=external,
        existing_network=existing,
        public_addressing=addressing,
        admin_cidrs=r.reachable_cidrs("adminCidrs", required=True),
        federation_cidrs=r.reachable_cidrs("federationCidrs", required=True),
        sql_cidrs=r.reachable_cidrs("sqlCidrs", required=False),
    )
    for key, cidrs in (("adminCidrs", settings.admin_cidrs), ("federationCidrs", settings.federation_cidrs),
                       ("sqlCidrs", settings.sql_cidrs)):
        for world in filter(is_world, cidrs):
            r.problem(key, world, "ranges narrower than the whole internet: every operator lists who may connect "
                                  "(README: Who may reach what)")
    return settings


def _mtu(r: _Reader) -> Optional[int]:
    """0 (the project default) leaves the MTU to Neutron."""
    mtu = r.integer("mtu", 0, 0, 65535)
    if mtu and not 1280 <= mtu <= 9000:
        r.problem("mtu", r.values["mtu"], "0 (Neutron decides) or an MTU from 1280 to 9000")
    return mtu or None


def _parse_kubernetes(r: _Reader, secrets: Mapping[str, pulumi.Output], network: NetworkSettings) -> KubernetesSettings:
    mode = r.choice("kubernetesMode", "k3s", ("k3s", "existing"))
    version = r.string("k3sVersion", DEFAULT_K3S_VERSION)
    r.matching("k3sVersion", version, _K3S_VERSION, "a pinned k3s release such as v1.35.5+k3s1")
    script_url = r.string("k3sInstallScriptUrl", DEFAULT_K3S_INSTALL_SCRIPT_URL)
    script_sha256 = r.string("k3sInstallScriptSha256", DEFAULT_K3S_INSTALL_SCRIPT_SHA256)
    r.matching("k3sInstallScriptSha256", script_sha256, _SHA256,
               "the sha256 of the script at k3sInstallScriptUrl, 64 lower-case hex digits (sha256sum install.sh)")
    releases_url = r.string("k3sReleasesUrl", DEFAULT_K3S_RELEASES_URL)
    proxy = r.string("httpProxy")
    for key, url in (("k3sInstallScriptUrl", script_url), ("k3sReleasesUrl", releases_url), ("httpProxy", proxy)):
        if url is not None and not _is_http_url(url):
            r.problem(key, url, "an http:// or https:// URL with a host (and a numeric port, if any), without "
                      "spaces or quotes")
    for key, url in (("k3sInstallScriptUrl", script_url), ("k3sReleasesUrl", releases_url)):
        if url is not None and url.startswith("http://"):
            r.problem(key, url, "an https:// URL (the k3s download must be authenticated)")
    no_proxy = r.string_list("noProxy")
    for value in no_proxy:
        if not re.match(r"^[-.a-zA-Z0-9/:*]+$", value):
            r.problem("noProxy", value, "host names, domains, IPs or CIDRs")
    os_upgrade = r.string("osUpgradeVersion")
    # The controller puts it in its Jobs' labels (system-upgrade-controller job.go, LabelVersion): a label value
    # begins and ends with a letter or digit (apimachinery validation.go, IsValidLabelValue).
    r.matching("osUpgradeVersion", os_upgrade, re.compile(r"\A[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?\Z"),
               "a label of up to 63 letters, digits, '-', '_' and '.', beginning and ending with a letter or digit, "
               "e.g. 2026-12")
    ntp_servers = r.string_list("ntpServers")
    for value in ntp_servers:
        if not (is_ip(value) or _HOST.match(value)):
            r.problem("ntpServers", value, "host names or IP addresses of NTP servers")

    nodes: list[ExistingNode] = []
    kubeconfig = secrets.get("kubeconfig")
    if mode != "existing" and r.string_list("existingNodes"):
        r.problem("existingNodes", r.values["existingNodes"], f"no nodes: they are read with kubernetesMode existing "
                  f"only, and this stack has {mode}")
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
        k3s_install_script_sha256=script_sha256,
        k3s_releases_url=releases_url,
        http_proxy=proxy,
        no_proxy=no_proxy,
        api_ready_timeout=r.integer("apiReadyTimeout", 900, 30, 7200),
        ntp_servers=ntp_servers,
        os_upgrade_version=os_upgrade,
        flannel_backend="wireguard-native" if network.mode == "existing" else "vxlan",
        kubeconfig=kubeconfig,
        existing_nodes=tuple(nodes),
    )


def _parse_cockroach(
    r: _Reader,
    secrets: Mapping[str, pulumi.Output],
    stack: str,
    node_count: int,
    kubernetes: KubernetesSettings,
    preview: bool,
) -> tuple[CockroachSettings, list[str]]:
    warnings: list[str] = []
    role = r.choice("role", "member", ("seed", "member"))
    is_seed = role == "seed"
    member = r.string("memberName", stack)
    if not _DNS_LABEL.match(member) or len(member) > 40:
        r.problem("memberName", member, "a lower-case DNS label of at most 40 characters (defaults to the stack name)")
    cluster_name = r.string("clusterName", PROJECT)
    r.matching("clusterName", cluster_name, _CLUSTER_NAME, "letters, digits, '-' and '.'")
    image = r.string("cockroachImage", DEFAULT_COCKROACH_IMAGE)
    r.matching("cockroachImage", image, _IMAGE_WITH_TAG, "an image with a pinned tag, e.g. cockroachdb/cockroach:v26.2.0")

    # One CockroachDB pod per Kubernetes node.
    replicas = len(kubernetes.existing_nodes) if kubernetes.mode == "existing" else node_count
    if is_seed and replicas < 3:
        key = "existingNodes" if kubernetes.mode == "existing" else "nodeCount"
        r.problem(key, r.values.get(key, replicas),
                  "at least 3 nodes on the seed, which must survive the loss of one node")

    memory = r.string("cockroachMemory", "4Gi")
    r.matching("cockroachMemory", memory, _QUANTITY, "a Kubernetes quantity such as 4Gi")
    cpu = r.string("cockroachCpu", "2")
    r.matching("cockroachCpu", cpu, _CPU, "a CPU quantity such as 2 or 1500m")
    namespace = r.string("namespace", "cockroachdb")
    if len(namespace) > 63:
        r.problem("namespace", namespace, "a lower-case DNS label of at most 63 characters")
    r.matching("namespace", namespace, _DNS_LABEL, "a lower-case DNS label")

    seed_stack = r.string("seedStack")
    if seed_stack:
        r.matching("seedStack", seed_stack, _STACK_NAME, "a full stack name, organization/project/stack")
    joins = r.string_list("joinAddresses")
    for address in joins:
        host = split_address(address)[0]
        if not _is_host_port(address):
            r.problem("joinAddresses", address, "host:port entries such as 192.168.10.5:26257")
        elif is_ip(host) and in_documentation_range(host):
            r.problem("joinAddresses", address, "a reachable address, not one of a documentation range")
    members = r.string_list("members")
    for name in members:
        r.matching("members", name, _STACK_NAME, "full stack names, organization/project/stack")
    allow_rekey = r.string_list("allowRekey")
    for name in allow_rekey:
        if name not in members:
            r.problem("allowRekey", name, "stacks listed in crdb-federation:members")
    early = r.early_requests(EARLY_REQUESTS_KEY, members)
    refusals = r.refusals(REFUSALS_KEY)
    invited = r.string_list("invited")
    for name in invited:
        r.matching("invited", name, _STACK_NAME, "full stack names, organization/project/stack")
    signature_wait = r.integer("signatureWait", 600, 0, 86400)
    # The federation tool's signing `up` admits the stacks it gives early requests for, for that run alone: the
    # stack file keeps only what the seed's operator admitted (the tool writes those once they have joined).
    members = (*members, *(stack for stack in early if stack not in members))
    pins = {key: tuple(normalised_fingerprint(v) for v in r.string_list(key)) for key in ("caSha256", "clientCaSha256")}
    for key, values in pins.items():
        for value in values:
            if not _SHA256.match(value):
                r.problem(key, value, "SHA-256 fingerprints: 64 hex digits, with or without colons "
                                      "(python -m federation fingerprints, or openssl x509 -noout -fingerprint -sha256)")
    certificates = {key: r.certificate(key) for key in
                    ("caCertificate", "clientCaCertificate", "nodeCertificate", "nodeClientCertificate")}
    ca_key = secrets.get("caPrivateKey")
    organization = r.string("clusterOrganization")
    licence = secrets.get("enterpriseLicense")
    join_token = secrets.get("joinToken")

    if is_seed:
        if join_token is not None:
            r.problem("joinToken", "(secret)", "no value on the seed: its operator gives tokens out (joinTokens)")
        if seed_stack:
            r.problem("seedStack", seed_stack, "no value on the seed: the seed is the established cluster")
        for key, values in pins.items():
            if values:
                r.problem(key, list(values), "no value on the seed, whose CAs they are")
        if (certificates["caCertificate"] is None) != (ca_key is None):
            r.problem("caCertificate" if ca_key is not None else "caPrivateKey", None,
                      "both caCertificate and the secret caPrivateKey (a CA of your own), or neither")
        for key in ("clientCaCertificate", "nodeCertificate", "nodeClientCertificate"):
            if certificates[key]:
                r.problem(key, "(set)", "no value on the seed, which makes and signs its own")
        if not organization or licence is None:
            # v26 throttles an unlicensed cluster to 5 open transactions after a 7-day grace period.
            problem = (f"{PROJECT}:clusterOrganization and the secret {PROJECT}:enterpriseLicense: expected both on "
                       "the seed (CockroachDB throttles an unlicensed cluster after 7 days; README: Licence)")
            if preview:
                warnings.append(problem)
            else:
                r.problems.append(problem)
    else:
        if ca_key is not None:
            r.problem("caPrivateKey", "(secret)", "no CA key on a member: the seed signs its certificate requests")
        for key, value in (("members", members), ("clusterOrganization", organization), ("invited", invited)):
            if value:
                r.problem(key, value, "no value on a member: the seed sets it")
        for key in ("enterpriseLicense", "joinTokens"):
            if secrets.get(key) is not None:
                r.problem(key, "(secret)", "no value on a member: the seed sets it")
        if not seed_stack:
            if not joins:
                r.problem("seedStack", seed_stack, "the seed's stack name (org/project/stack), or set joinAddresses")
            for key in ("caCertificate", "clientCaCertificate"):
                if certificates[key] is None:
                    r.problem(key, None, "the federation's CA certificate when no seedStack provides it")
        if allow_rekey:
            r.problem("allowRekey", list(allow_rekey), "no value on a member: the seed decides")
        for key, value in ((EARLY_REQUESTS_KEY, early), (REFUSALS_KEY, refusals)):
            if value:
                r.problem(key, sorted(value), "no value on a member: the seed's signing service sets it on the seed")
        if seed_stack:
            for key, values in pins.items():
                if not values:
                    # Without a pin, whoever can write the seed's state could steer this cloud into another cluster.
                    problem = (f"{PROJECT}:{key} = []: expected the SHA-256 fingerprint(s) of the federation's "
                               f"{'node' if key == 'caSha256' else 'client'} CA, from the seed's operator "
                               "(python -m federation fingerprints on their side; README: Trust between operators)")
                    (warnings if preview else r.problems).append(problem)
        if (certificates["nodeCertificate"] is None) != (certificates["nodeClientCertificate"] is None):
            r.problem("nodeCertificate" if certificates["nodeCertificate"] is None else "nodeClientCertificate",
                      None, "both nodeCertificate and nodeClientCertificate (signed by the seed), or neither")
    # 0 is the project default, which the engine applies to every stack: "not set".
    factor = r.integer("replicationFactor", 0, 0, 9)
    if not is_seed and factor:
        r.problem("replicationFactor", r.values["replicationFactor"], "0 (unset) on a member: the seed sets it")
    elif factor and (factor < 3 or factor % 2 == 0):
        r.problem("replicationFactor", r.values["replicationFactor"],
                  "0 (follows the clouds present) or an odd number from 3 to 9: a majority must survive")

    return CockroachSettings(
        role=role,
        member=member,
        cluster_name=cluster_name,
        image=image,
        namespace=namespace,
        replicas=replicas,
        memory=memory,
        cpu=cpu,
        seed_stack=seed_stack,
        join_addresses=joins,
        replication_factor=factor or 0,
        members=members,
        cluster_organization=organization,
        ca_certificate=certificates["caCertificate"],
        client_ca_certificate=certificates["clientCaCertificate"],
        node_certificate=certificates["nodeCertificate"],
        node_client_certificate=certificates["nodeClientCertificate"],
        force_removal=r.boolean("forceRemoval", False),
        ca_sha256=pins["caSha256"],
        client_ca_sha256=pins["clientCaSha256"],
        allow_rekey=allow_rekey,
        early_requests=early,
        refusals=refusals,
        invited=invited,
        signature_wait=signature_wait,
        join_token=join_token,
        shared_secrets=r.boolean("sharedSecrets", False),
        ca_private_key=ca_key,
        enterprise_license=licence,
    ), warnings


# Early certificate requests reach the seed's signing `up` from the federation tool through its environment, never
# through the tracked stack file: a tool killed mid-run (SIGKILL, a CI timeout) leaves nothing behind there.
EARLY_REQUESTS_VARIABLE = "CRDB_FEDERATION_EARLY_REQUESTS"
EARLY_REQUESTS_KEY = "earlyRequests"  # its name in problems, as a config key's
REFUSALS_VARIABLE = "CRDB_FEDERATION_REFUSALS"
REFUSALS_KEY = "refusals"

CONFIG_KEYS = (
    "cloud", "region", "availabilityZone", "image", "serverFlavor", "agentFlavor", "nodeCount", "bootVolumeSize",
    "dataVolumeSize", "dataVolumeType", "sshPublicKey", "networkMode", "networkCidr", "dnsServers", "mtu",
    "externalNetwork", "existingNetwork", "publicAddressing", "adminCidrs", "federationCidrs", "sqlCidrs",
    "kubernetesMode", "k3sVersion", "k3sInstallScriptUrl", "k3sInstallScriptSha256", "k3sReleasesUrl", "httpProxy", "noProxy", "ntpServers",
    "osUpgradeVersion",
    "apiReadyTimeout", "existingNodes", "role", "memberName", "clusterName", "cockroachImage", "cockroachMemory",
    "cockroachCpu", "namespace", "seedStack", "joinAddresses", "replicationFactor", "members",
    "clusterOrganization", "caCertificate", "clientCaCertificate", "nodeCertificate", "nodeClientCertificate",
    "forceRemoval", "caSha256", "clientCaSha256", "allowRekey", "sharedSecrets", "invited", "signatureWait",
)


def _signing_input(variable: str) -> Optional[str]:
    """The JSON the signing service gives the seed's `up` in `variable`, or in the file it names (@path)."""
    value = os.environ.get(variable)
    if value and value.startswith("@"):
        return Path(value[1:]).read_text()
    return value


def _given_keys() -> list[str]:
    """The keys of this project the stack sets, known or not (the SDK's config map, as the engine filled it)."""
    given = {**pulumi.runtime.config.get_config_env(), **pulumi.runtime.config.CONFIG.get()}
    return [key.split(":", 1)[1] for key in given if key.startswith(f"{PROJECT}:") and
            key.split(":", 1)[1] not in SECRET_KEYS]


def load_settings(config: Optional[pulumi.Config] = None, stack: Optional[str] = None) -> Settings:
    """Reads every known key from the stack's config and parses it (the one place that touches pulumi.Config)."""
    config = config or pulumi.Config()
    values = {key: config.get(key) for key in CONFIG_KEYS}
    # An unknown key's value goes into the error message: not a secret's.
    values.update({key: "[secret]" if pulumi.runtime.is_config_secret(f"{PROJECT}:{key}") else config.get(key)
                   for key in _given_keys() if key not in CONFIG_KEYS})
    if EARLY_REQUESTS_KEY in values:
        raise SettingsError([f"{PROJECT}:{EARLY_REQUESTS_KEY} = (requests): expected no such key in the stack file: an "
                             "earlier version of the federation tool left it there when it was stopped mid-join; "
                             f"remove it (pulumi config rm {EARLY_REQUESTS_KEY})"])
    values[EARLY_REQUESTS_KEY] = _signing_input(EARLY_REQUESTS_VARIABLE)
    values[REFUSALS_KEY] = _signing_input(REFUSALS_VARIABLE)
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
    settings = parse_settings(values, stack or pulumi.get_stack(), secrets, preview=pulumi.runtime.is_dry_run())
    for warning in settings.warnings:
        pulumi.log.warn(warning)
    return settings
