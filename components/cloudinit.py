"""Pure renderers for the k3s nodes' cloud-init user data: same input, same bytes.

A changed `user_data` replaces a Nova server, so nothing here may depend on time, order of dict
iteration or randomness outside its arguments.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Mapping, Optional

import yaml

from .settings import KUBE_API_PORT, KubernetesSettings

NOVA_USER_DATA_LIMIT = 64 * 1024
K3S_TLS_DIR = "/var/lib/rancher/k3s/server/tls"
K3S_CONFIG_PATH = "/etc/rancher/k3s/config.yaml"
INSTALL_SCRIPT_PATH = "/usr/local/sbin/crdb-federation-install-k3s"
# Pod and service ranges of k3s; they must bypass any HTTP proxy.
K3S_CLUSTER_CIDRS = ("10.42.0.0/16", "10.43.0.0/16")
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


class _Literal(str):
    """A string that YAML renders as a literal block, so certificates stay readable."""


def _literal_representer(dumper: yaml.SafeDumper, value: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal_representer)


def _dump(document: object) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def render_k3s_config(node: K3sNode, *, token: str, server_private_ip: str) -> str:
    """/etc/rancher/k3s/config.yaml: each key is a k3s flag."""
    config: dict[str, object] = {
        "node-name": node.name,
        "node-ip": node.private_ip,
        "node-external-ip": node.public_ip,
        "token": token,
    }
    if node.is_server:
        config.update({
            # Advertising the floating IP would break in-cluster API access (it is NAT, not on the NIC).
            "advertise-address": node.private_ip,
            "tls-san": sorted({node.public_ip, node.private_ip}),
            "disable": ["traefik", "servicelb"],
            "write-kubeconfig-mode": "0600",
            "secrets-encryption": True,
        })
    else:
        config["server"] = f"https://{server_private_ip}:{KUBE_API_PORT}"
    return _dump(config)


def render_install_script(kubernetes: KubernetesSettings, *, is_server: bool, no_proxy: tuple[str, ...]) -> str:
    """POSIX sh that installs the pinned k3s release with its upstream installer (which checks the sha256)."""
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
        "command -v curl >/dev/null 2>&1 || { echo 'crdb-federation: curl is required on the image' >&2; exit 1; }",
        'installer=$(mktemp)',
        "trap 'rm -f \"$installer\"' EXIT",
        "attempt=1",
        f"until curl -fsSL --retry 3 -o \"$installer\" {q(kubernetes.k3s_install_script_url)} && sh \"$installer\"; do",
        '  if [ "$attempt" -ge 10 ]; then',
        "    echo 'crdb-federation: k3s installation failed 10 times' >&2",
        "    exit 1",
        "  fi",
        "  attempt=$((attempt + 1))",
        "  sleep 15",
        "done",
        "",
    ]
    return "\n".join(lines)


def no_proxy_list(kubernetes: KubernetesSettings, network_cidr: str) -> tuple[str, ...]:
    """Addresses that never go through the proxy: loopback, the cluster ranges, the node network, and the user's."""
    entries = ["localhost", "127.0.0.1", network_cidr, *K3S_CLUSTER_CIDRS, ".svc", ".cluster.local", *kubernetes.no_proxy]
    return tuple(dict.fromkeys(entries))


def render_user_data(
    node: K3sNode,
    *,
    kubernetes: KubernetesSettings,
    token: str,
    server_private_ip: str,
    network_cidr: str,
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
    files.append({
        "path": K3S_CONFIG_PATH,
        "owner": "root:root",
        "permissions": "0600",
        "content": _Literal(render_k3s_config(node, token=token, server_private_ip=server_private_ip)),
    })
    script = render_install_script(kubernetes, is_server=node.is_server, no_proxy=no_proxy_list(kubernetes, network_cidr))
    files.append({"path": INSTALL_SCRIPT_PATH, "owner": "root:root", "permissions": "0700", "content": _Literal(script)})
    document = {
        "hostname": node.name,
        "preserve_hostname": False,
        # CockroachDB stops a node whose clock drifts; chrony keeps it honest.
        "ntp": {"enabled": True, "ntp_client": "chrony"},
        "write_files": files,
        "runcmd": [[INSTALL_SCRIPT_PATH]],
    }
    text = "#cloud-config\n" + _dump(document)
    size = len(text.encode())
    if size > NOVA_USER_DATA_LIMIT:
        raise ValueError(f"user data of {node.name} is {size} bytes; Nova accepts at most {NOVA_USER_DATA_LIMIT}")
    return text
