"""Pure renderers for the k3s nodes' cloud-init user data: same input, same bytes.

Servers ignore later changes to their user data (a change would otherwise replace them), so what is
here is what a node boots with once; k3s is upgraded in place afterwards (components/upgrades.py).
Nothing here may depend on time, dict order or randomness outside its arguments.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from typing import Mapping, Optional

import yaml

from .cockroach_manifests import HOST_DATA_MOUNT, HOST_STORE_DIR, NODE_LABEL
from .settings import K3S_CLUSTER_CIDRS, KUBE_API_PORT, KubernetesSettings

NOVA_USER_DATA_LIMIT = 64 * 1024
K3S_TLS_DIR = "/var/lib/rancher/k3s/server/tls"
K3S_CONFIG_PATH = "/etc/rancher/k3s/config.yaml"
# k3s keeps a node's password here and refuses a known node name with another one.
K3S_NODE_PASSWORD_PATH = "/etc/rancher/node/password"
# The server's datastore; kept on its data volume, so a replaced server 0 keeps the cluster's objects.
K3S_DB_DIR = "/var/lib/rancher/k3s/server/db"
INSTALL_SCRIPT_PATH = "/usr/local/sbin/crdb-federation-install-k3s"
DATA_VOLUME_SCRIPT_PATH = "/usr/local/sbin/crdb-federation-data-volume"
METADATA_ADDRESS = "169.254.169.254/32"
# The raw-table rule that keeps pods (and the node) from the metadata service: set at boot, checked before k3s.
METADATA_RULE = f"-d {METADATA_ADDRESS} -j DROP"
METADATA_CHAINS = "PREROUTING OUTPUT"
# The CA files k3s adopts when present before its first start (relative to K3S_TLS_DIR).
K3S_CA_FILES = (
    "server-ca", "client-ca", "request-header-ca", "etcd/peer-ca", "etcd/server-ca",
)


@dataclass(frozen=True)
class K3sNode:
    name: str
    private_ip: str
    public_ip: str
    is_server: bool
    # The Cinder volume that holds this node's CockroachDB store (None: no volume of ours, e.g. tests).
    data_volume_id: Optional[str] = None


@dataclass(frozen=True)
class K3sJoin:
    """The cluster's join secrets. Only the server gets the server token; agents get the agent token in
    the pinned form, so they verify the server's CA before they send it anything."""

    server_token: str
    agent_password: str
    server_ca_pem: str


def agent_join_token(server_ca_pem: str, agent_password: str) -> str:
    """k3s's secure token: K10<sha256 of the server CA bundle as k3s serves it>::node:<agent password>."""
    return f"K10{hashlib.sha256(server_ca_pem.encode()).hexdigest()}::node:{agent_password}"


class _Literal(str):
    """A string that YAML renders as a literal block, so certificates stay readable."""


def _literal_representer(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal_representer)


def _dump(document: object) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def render_k3s_config(node: K3sNode, *, join: K3sJoin, server_private_ip: str, flannel_backend: str) -> str:
    """/etc/rancher/k3s/config.yaml: each key is a k3s flag."""
    config: dict[str, object] = {
        "node-name": node.name,
        "node-ip": node.private_ip,
        "node-external-ip": node.public_ip,
        "node-label": [f"{NODE_LABEL}=true"],
        # On a reboot (an OS upgrade) the kubelet stops pods gracefully: longer than CockroachDB's drain.
        "kubelet-arg": ["shutdown-grace-period=330s", "shutdown-grace-period-critical-pods=30s"],
    }
    if node.is_server:
        config.update({
            "token": join.server_token,
            "agent-token": join.agent_password,
            # Advertising the floating IP would break in-cluster API access (it is NAT, not on the NIC).
            "advertise-address": node.private_ip,
            "tls-san": sorted({node.public_ip, node.private_ip}),
            "disable": ["traefik", "servicelb"],
            "write-kubeconfig-mode": "0600",
            "secrets-encryption": True,
            "flannel-backend": flannel_backend,
        })
    else:
        config["server"] = f"https://{server_private_ip}:{KUBE_API_PORT}"
        config["token"] = agent_join_token(join.server_ca_pem, join.agent_password)
    return _dump(config)


def render_install_script(kubernetes: KubernetesSettings, *, is_server: bool, no_proxy: tuple[str, ...]) -> str:
    """POSIX sh that checks the node is fit for CockroachDB, then installs the pinned k3s release with its
    upstream installer (which checks the sha256)."""
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# Installs the pinned k3s release; its flags are in " + K3S_CONFIG_PATH + ".",
        "set -eu",
        f"export INSTALL_K3S_VERSION={q(kubernetes.k3s_version)}",
        f"export INSTALL_K3S_EXEC={q('server' if is_server else 'agent')}",
        f"export GITHUB_URL={q(kubernetes.k3s_releases_url)}",
    ]
    if kubernetes.http_proxy:
        # The k3s installer copies these into the service environment, so containerd pulls through the proxy too.
        lines += [
            f"export HTTP_PROXY={q(kubernetes.http_proxy)}",
            f"export HTTPS_PROXY={q(kubernetes.http_proxy)}",
            f"export NO_PROXY={q(','.join(no_proxy))}",
        ]
    lines += [
        "fail() { echo \"crdb-federation: $*\" >&2; exit 1; }",
        "command -v curl >/dev/null 2>&1 || fail 'curl is required on the image'",
        # Pods must never read this node's user data (it holds the cluster CA keys on the server).
        f"for chain in {METADATA_CHAINS}; do",
        f"  iptables -w -t raw -C \"$chain\" {METADATA_RULE} 2>/dev/null ||"
        " fail \"the metadata service is not blocked ($chain); k3s is not installed\"",
        "done",
        # A CockroachDB node stops itself when its clock drifts from its peers'.
        "systemctl is-active --quiet chrony || systemctl is-active --quiet chronyd ||"
        " fail 'chrony is not running; CockroachDB needs synchronised clocks'",
        "chronyc waitsync 30 0.1 >/dev/null 2>&1 || echo 'crdb-federation: warning: the clock is not synchronised yet' >&2",
        'installer=$(mktemp)',
        "trap 'rm -f \"$installer\"' EXIT",
        "attempt=1",
        f"until curl -fsSL --retry 3 -o \"$installer\" {q(kubernetes.k3s_install_script_url)} && sh \"$installer\"; do",
        '  if [ "$attempt" -ge 10 ]; then',
        "    fail 'k3s installation failed 10 times'",
        "  fi",
        "  attempt=$((attempt + 1))",
        "  sleep 15",
        "done",
        "",
    ]
    return "\n".join(lines)


def render_data_volume_script(volume_id: str, *, is_server: bool) -> str:
    """POSIX sh: waits for this node's data volume, formats it only when it holds no filesystem (a volume
    re-attached to a replacement server keeps its store), and mounts it by UUID on every boot. On the
    server it also holds the k3s datastore. DISK_BY_ID, DATA_MOUNT, FSTAB and K3S_DB default to the
    node's paths; tests point them elsewhere."""
    q = shlex.quote
    datastore = [
        f'k3s_db="${{K3S_DB:-{K3S_DB_DIR}}}"',
        'mkdir -p "$mount_point/k3s-db" "$(dirname "$k3s_db")"',
        'ln -sfn "$mount_point/k3s-db" "$k3s_db"',
    ] if is_server else []
    return "\n".join([
        "#!/bin/sh",
        "# Mounts this node's CockroachDB data volume; never formats a volume that holds a filesystem.",
        "set -eu",
        f"volume_id={q(volume_id)}",
        f'mount_point="${{DATA_MOUNT:-{HOST_DATA_MOUNT}}}"',
        'by_id="${DISK_BY_ID:-/dev/disk/by-id}"',
        'fstab="${FSTAB:-/etc/fstab}"',
        # Nova gives virtio disks the first 20 characters of the volume id as serial; virtio-scsi the whole id.
        'serial=$(printf "%s" "$volume_id" | cut -c1-20)',
        'device=""',
        "waited=0",
        'while [ -z "$device" ]; do',
        '  for candidate in "$by_id"/virtio-"$serial"* "$by_id"/scsi-*"$volume_id"* "$by_id"/scsi-*"$serial"*; do',
        '    if [ -e "$candidate" ]; then device=$(readlink -f "$candidate"); break; fi',
        "  done",
        '  if [ -z "$device" ]; then',
        '    if [ "$waited" -ge "${ATTACH_TIMEOUT:-600}" ]; then',
        '      echo "crdb-federation: data volume $volume_id is not attached after ${waited}s" >&2',
        "      exit 1",
        "    fi",
        "    sleep 5",
        "    waited=$((waited + 5))",
        "  fi",
        "done",
        'if ! blkid "$device" >/dev/null 2>&1; then',
        '  mkfs.ext4 -q -L crdb-data "$device"',
        "fi",
        'uuid=$(blkid -s UUID -o value "$device")',
        'mkdir -p "$mount_point"',
        'if ! grep -q "^UUID=$uuid " "$fstab"; then',
        '  echo "UUID=$uuid $mount_point ext4 defaults,nofail,x-systemd.device-timeout=300 0 2" >> "$fstab"',
        "fi",
        'mountpoint -q "$mount_point" || mount "$mount_point"',
        # The store lives in a directory that exists only on the volume: without the mount, no pod starts.
        f'mkdir -p "$mount_point/{HOST_STORE_DIR.rsplit("/", 1)[-1]}"',
        *datastore,
        "",
    ])


def metadata_block_command() -> list[str]:
    """bootcmd (every boot, before k3s): drop traffic to the metadata service from pods and the node. The
    node boots from a config drive, so nothing on it needs the metadata service after cloud-init read it."""
    return ["sh", "-c", f"for chain in {METADATA_CHAINS}; do iptables -w -t raw -C \"$chain\" {METADATA_RULE} 2>/dev/null"
                        f" || iptables -w -t raw -I \"$chain\" {METADATA_RULE}; done"]


def no_proxy_list(kubernetes: KubernetesSettings, network_cidr: str) -> tuple[str, ...]:
    """Addresses that never go through the proxy: loopback, the cluster ranges, the node network, and the user's."""
    entries = ["localhost", "127.0.0.1", network_cidr, *K3S_CLUSTER_CIDRS, ".svc", ".cluster.local", *kubernetes.no_proxy]
    return tuple(dict.fromkeys(entries))


def render_user_data(
    node: K3sNode,
    *,
    kubernetes: KubernetesSettings,
    join: K3sJoin,
    server_private_ip: str,
    network_cidr: str,
    node_password: str,
    ca_files: Optional[Mapping[str, str]] = None,
) -> str:
    """The whole #cloud-config document of one node. `ca_files` maps names relative to K3S_TLS_DIR to PEM text."""
    files = []
    for relative, content in sorted((ca_files or {}).items()):
        files.append({
            "path": f"{K3S_TLS_DIR}/{relative}",
            "owner": "root:root",
            "permissions": "0600" if relative.endswith(".key") else "0644",
            "content": _Literal(content),
        })
    config = render_k3s_config(node, join=join, server_private_ip=server_private_ip,
                               flannel_backend=kubernetes.flannel_backend)
    files.append({"path": K3S_CONFIG_PATH, "owner": "root:root", "permissions": "0600", "content": _Literal(config)})
    files.append({"path": K3S_NODE_PASSWORD_PATH, "owner": "root:root", "permissions": "0600",
                  "content": node_password + "\n"})
    script = render_install_script(kubernetes, is_server=node.is_server, no_proxy=no_proxy_list(kubernetes, network_cidr))
    files.append({"path": INSTALL_SCRIPT_PATH, "owner": "root:root", "permissions": "0700", "content": _Literal(script)})
    runcmd = [[INSTALL_SCRIPT_PATH]]
    if node.data_volume_id:
        files.append({"path": DATA_VOLUME_SCRIPT_PATH, "owner": "root:root", "permissions": "0700",
                      "content": _Literal(render_data_volume_script(node.data_volume_id, is_server=node.is_server))})
        runcmd.insert(0, [DATA_VOLUME_SCRIPT_PATH])
    ntp: dict[str, object] = {"enabled": True, "ntp_client": "chrony"}
    if kubernetes.ntp_servers:
        ntp["servers"] = list(kubernetes.ntp_servers)
    document: dict[str, object] = {
        "hostname": node.name,
        "preserve_hostname": False,
        "bootcmd": [metadata_block_command()],
        # CockroachDB stops a node whose clock drifts; chrony keeps it honest (the cloud's own servers from
        # DHCP and the distribution's pool, unless ntpServers names others).
        "ntp": ntp,
    }
    if kubernetes.http_proxy:
        # chrony and the image's packages come through the proxy too.
        document["apt"] = {"http_proxy": kubernetes.http_proxy, "https_proxy": kubernetes.http_proxy}
    document.update({"write_files": files, "runcmd": runcmd})
    text = "#cloud-config\n" + _dump(document)
    size = len(text.encode())
    if size > NOVA_USER_DATA_LIMIT:
        raise ValueError(f"user data of {node.name} is {size} bytes; Nova accepts at most {NOVA_USER_DATA_LIMIT}")
    return text
