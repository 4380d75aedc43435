"""Pure renderers for the k3s nodes' cloud-init user data: same input, same bytes.

Servers ignore later changes to their user data (a change would otherwise replace them), so what is
here is what a node boots with once; k3s is upgraded in place afterwards (components/upgrades.py).
Nothing here may depend on time, dict order or randomness outside its arguments.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from dataclasses import dataclass
from typing import Mapping, Optional

import yaml

from .cockroach_manifests import HOST_DATA_MOUNT, HOST_STORE_DIR, NODE_LABEL
from .settings import K3S_CLUSTER_CIDRS, KUBE_API_PORT, KubernetesSettings

# Nova's limit is on the base64 text it is sent (nova/api/openstack/compute/schemas/servers.py: user_data
# maxLength 65535, format base64): about 49 KB of user data.
NOVA_USER_DATA_LIMIT = 65535
K3S_TLS_DIR = "/var/lib/rancher/k3s/server/tls"
K3S_CONFIG_PATH = "/etc/rancher/k3s/config.yaml"
# k3s keeps a node's password here and refuses a known node name with another one.
K3S_NODE_PASSWORD_PATH = "/etc/rancher/node/password"
K3S_SERVER_DIR = "/var/lib/rancher/k3s/server"
# What of the k3s server lives on its data volume, so a replaced server 0 keeps the cluster: the datastore
# and the credentials (secrets-encryption key and others). The names on the volume never change: a healed
# server 0 of an older stack finds its datastore where that stack's first boot put it.
K3S_SERVER_ON_VOLUME = (("db", "k3s-db"), ("cred", "k3s-cred"))
# The kubelet's drop-in directory that k3s passes as --config-dir and creates without wiping
# (k3s pkg/agent/config/config.go, release-1.35: DataDir/agent/etc/kubelet.conf.d); k3s writes its own
# defaults there as 00-k3s-defaults.conf, and drop-ins merge in lexical order.
KUBELET_DROPIN_PATH = "/var/lib/rancher/k3s/agent/etc/kubelet.conf.d/50-crdb-federation-shutdown.conf"
# logind caps every shutdown inhibitor at InhibitDelayMaxSec; Ubuntu's unattended-upgrades ships a drop-in
# with 30 s (kubernetes/kubernetes#102818). Drop-ins sort by file name across directories: this one is last.
LOGIND_DROPIN_PATH = "/etc/systemd/logind.conf.d/zz-crdb-federation-shutdown.conf"
# On a reboot the kubelet stops pods gracefully for this long: CockroachDB's drain (its pods' 300 s grace
# period) plus the critical pods' share.
SHUTDOWN_GRACE_SECONDS = 330
SHUTDOWN_GRACE_CRITICAL_SECONDS = 30
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


def k3s_unit(is_server: bool) -> str:
    """The systemd unit k3s's installer writes: k3s on servers, k3s-agent on agents (install.sh SYSTEM_NAME)."""
    return "k3s" if is_server else "k3s-agent"


def render_install_script(kubernetes: KubernetesSettings, *, is_server: bool, no_proxy: tuple[str, ...],
                          data_mount: Optional[str] = None) -> str:
    """POSIX sh that checks the node is fit for CockroachDB (its data volume mounted, the metadata service
    blocked, the clock synchronised), then installs the pinned k3s release with the pinned upstream installer
    (its sha256 checked here; it checks the k3s binary's). DATA_MOUNT defaults to `data_mount`."""
    q = shlex.quote
    url, sha256 = kubernetes.k3s_install_script_url, kubernetes.k3s_install_script_sha256
    mismatch = (f"the k3s install script at {url} does not have the pinned sha256 {sha256} "
                "(crdb-federation:k3sInstallScriptSha256); k3s is not installed")
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
    ]
    if data_mount:
        # On the server the datastore lives on the volume: without it k3s would start an empty cluster.
        lines += [
            f'mountpoint -q "${{DATA_MOUNT:-{data_mount}}}" ||'
            f' fail "the data volume is not mounted at ${{DATA_MOUNT:-{data_mount}}}; k3s is not installed"',
        ]
    lines += [
        # Pods must never read this node's user data (it holds the cluster CA keys on the server).
        f"for chain in {METADATA_CHAINS}; do",
        f"  iptables -w -t raw -C \"$chain\" {METADATA_RULE} 2>/dev/null ||"
        " fail \"the metadata service is not blocked ($chain); k3s is not installed\"",
        "done",
        # A CockroachDB node stops itself when its clock drifts from its peers'.
        "systemctl is-active --quiet chrony || systemctl is-active --quiet chronyd ||"
        " fail 'chrony is not running; CockroachDB needs synchronised clocks'",
        # A node whose clock is off stops itself (500 ms max offset): better no k3s than a crash-looping store.
        # 30 tries 10 s apart; NTP does not pass an HTTP proxy, so a proxied cloud needs ntpServers it reaches.
        "chronyc waitsync 30 0.1 >/dev/null 2>&1 || fail 'the clock is not synchronised after 5 minutes; set"
        " crdb-federation:ntpServers to NTP servers this cloud reaches; k3s is not installed'",
        'installer=$(mktemp)',
        "trap 'rm -f \"$installer\"' EXIT",
        "attempt=1",
        f'until curl -fsSL --retry 3 -o "$installer" {q(url)}; do',
        f'  [ "$attempt" -lt 10 ] || fail {q(f"the k3s install script could not be downloaded from {url} (10 attempts)")}',
        "  attempt=$((attempt + 1))",
        "  sleep 15",
        "done",
        # Only the script that was pinned runs: k3s's installer then checks the k3s binary against its release.
        f'echo {q(sha256 + "  ")}"$installer" | sha256sum -c --status - || fail {q(mismatch)}',
        "attempt=1",
        'until sh "$installer"; do',
        "  [ \"$attempt\" -lt 10 ] || fail 'k3s installation failed 10 times'",
        "  attempt=$((attempt + 1))",
        "  sleep 15",
        "done",
        "",
    ]
    return "\n".join(lines)


def render_data_volume_script(volume_id: str, *, is_server: bool) -> str:
    """POSIX sh: waits for this node's data volume, formats it only when it is readable and carries no
    signature at all (a volume re-attached to a replacement server keeps its store; one that cannot be read
    is refused, never formatted), and mounts it by UUID on every boot. On the server it also holds the k3s
    datastore and credentials. DISK_BY_ID, DATA_MOUNT, FSTAB and K3S_SERVER_DIR default to the node's paths;
    tests point them elsewhere."""
    q = shlex.quote
    server = [
        f'server_dir="${{K3S_SERVER_DIR:-{K3S_SERVER_DIR}}}"',
        'mkdir -p "$server_dir"',
        f"for entry in {' '.join(f'{name}:{kept}' for name, kept in K3S_SERVER_ON_VOLUME)}; do",
        '  link="$server_dir/${entry%%:*}"',
        '  kept="$mount_point/${entry#*:}"',
        '  if [ -e "$link" ] && [ ! -L "$link" ]; then',
        '    fail "$link is on the boot disk already; not moving it onto the data volume"',
        "  fi",
        '  mkdir -p "$kept"',
        '  ln -sfn "$kept" "$link"',
        "done",
    ] if is_server else []
    return "\n".join([
        "#!/bin/sh",
        "# Mounts this node's CockroachDB data volume; never formats a volume that holds anything or cannot be read.",
        "set -eu",
        f"volume_id={q(volume_id)}",
        f'mount_point="${{DATA_MOUNT:-{HOST_DATA_MOUNT}}}"',
        'by_id="${DISK_BY_ID:-/dev/disk/by-id}"',
        'fstab="${FSTAB:-/etc/fstab}"',
        "fail() { echo \"crdb-federation: $*\" >&2; exit 1; }",
        # udev's 60-persistent-storage.rules name a disk by its serial: Nova gives virtio disks the first 20
        # characters of the volume id, virtio-scsi the whole id. On VMware, Cinder sets the disk's UUID to the
        # volume id (cinder vmdk.py update_backing_disk_uuid; Nova sets disk.EnableUUID), which the guest sees
        # as its WWN: wwn-0x<id without hyphens>, and scsi-3<the same>.
        'serial=$(printf "%s" "$volume_id" | cut -c1-20)',
        'hex=$(printf "%s" "$volume_id" | tr -d - | tr A-F a-f)',
        'device=""',
        "waited=0",
        'while [ -z "$device" ]; do',
        '  for candidate in "$by_id"/virtio-"$serial"* "$by_id"/scsi-*"$volume_id"* "$by_id"/scsi-*"$serial"* \\',
        '      "$by_id"/wwn-0x"$hex" "$by_id"/scsi-3"$hex"; do',
        '    if [ -e "$candidate" ]; then device=$(readlink -f "$candidate"); break; fi',
        "  done",
        '  if [ -z "$device" ]; then',
        '    if [ "$waited" -ge "${ATTACH_TIMEOUT:-600}" ]; then',
        '      fail "data volume $volume_id is not attached after ${waited}s"',
        "    fi",
        "    sleep 5",
        "    waited=$((waited + 5))",
        "  fi",
        "done",
        # blkid exits 2 both when a device holds nothing and when it cannot be read at all (blkid(8), EXIT
        # STATUS; blkid.c returns BLKID_EXIT_NOTFOUND when open() fails), and plain blkid skips ambivalent
        # results: probe low-level, then format only a device that reads in full and carries no signature.
        "probe=0",
        'blkid -p "$device" >/dev/null 2>&1 || probe=$?',
        'case "$probe" in',
        "  0) ;;",
        "  2)",
        '    read_bytes=$(dd if="$device" bs=1048576 count=1 iflag=direct status=none 2>/dev/null | wc -c)',
        '    if [ "$read_bytes" -ne 1048576 ]; then',
        '      fail "data volume $volume_id ($device) cannot be read (${read_bytes} of 1048576 bytes); not formatting it"',
        "    fi",
        '    signatures=$(wipefs --noheadings --output TYPE "$device") ||'
        ' fail "cannot look for signatures on $device; not formatting it"',
        '    if [ -n "$signatures" ]; then',
        '      fail "$device carries signatures blkid did not identify ($signatures); not formatting it"',
        "    fi",
        '    mkfs.ext4 -q -L crdb-data "$device"',
        "    ;;",
        '  *) fail "blkid -p $device exited $probe (an ambivalent or failed probe); not formatting it" ;;',
        "esac",
        'uuid=$(blkid -p -s UUID -o value "$device")',
        '[ -n "$uuid" ] || fail "$device has no filesystem UUID"',
        'mkdir -p "$mount_point"',
        'if ! grep -q "^UUID=$uuid " "$fstab"; then',
        '  echo "UUID=$uuid $mount_point ext4 defaults,nofail,x-systemd.device-timeout=300 0 2" >> "$fstab"',
        "fi",
        'mountpoint -q "$mount_point" || mount -T "$fstab" "$mount_point"',
        # The store lives in a directory that exists only on the volume: without the mount, no pod starts.
        f'mkdir -p "$mount_point/{HOST_STORE_DIR.rsplit("/", 1)[-1]}"',
        *server,
        "",
    ])


def render_unit_dropin(mount_point: str) -> str:
    """A drop-in for k3s's unit: it starts only once the data volume is mounted. The fstab entry is `nofail`,
    which orders the mount before nothing (systemd.mount(5)); RequiresMountsFor= adds Requires= and After=
    on it (systemd.unit(5)), so after a reboot k3s never starts on the boot disk's empty mount point."""
    return f"[Unit]\nRequiresMountsFor={mount_point}\n"


def render_kubelet_dropin() -> str:
    """The kubelet's graceful node shutdown: on a reboot (an OS upgrade) pods are stopped within
    SHUTDOWN_GRACE_SECONDS, CockroachDB with its own 300 s. These exist only in the kubelet's configuration
    file, not as flags (kubernetes PR #125413), so they cannot be k3s kubelet-args; a drop-in needs its
    apiVersion and kind (kubernetes #124796)."""
    return _dump({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "shutdownGracePeriod": f"{SHUTDOWN_GRACE_SECONDS}s",
        "shutdownGracePeriodCriticalPods": f"{SHUTDOWN_GRACE_CRITICAL_SECONDS}s",
    })


def render_logind_dropin() -> str:
    """logind honours a shutdown inhibitor for at most InhibitDelayMaxSec: at least the kubelet's grace period."""
    return f"[Login]\nInhibitDelayMaxSec={SHUTDOWN_GRACE_SECONDS}\n"


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
    files.append({"path": KUBELET_DROPIN_PATH, "owner": "root:root", "permissions": "0600",
                  "content": _Literal(render_kubelet_dropin())})
    files.append({"path": LOGIND_DROPIN_PATH, "owner": "root:root", "permissions": "0644",
                  "content": _Literal(render_logind_dropin())})
    data_mount = HOST_DATA_MOUNT if node.data_volume_id else None
    script = render_install_script(kubernetes, is_server=node.is_server, no_proxy=no_proxy_list(kubernetes, network_cidr),
                                   data_mount=data_mount)
    files.append({"path": INSTALL_SCRIPT_PATH, "owner": "root:root", "permissions": "0700", "content": _Literal(script)})
    # cloud-init runs runcmd as one sh script without `set -e` (cc_runcmd.py, util.shellify): chained in one
    # entry, k3s is installed only when the data volume is in place.
    runcmd = [[INSTALL_SCRIPT_PATH]]
    if data_mount:
        files.append({"path": DATA_VOLUME_SCRIPT_PATH, "owner": "root:root", "permissions": "0700",
                      "content": _Literal(render_data_volume_script(node.data_volume_id, is_server=node.is_server))})
        files.append({"path": f"/etc/systemd/system/{k3s_unit(node.is_server)}.service.d/10-crdb-federation-data.conf",
                      "owner": "root:root", "permissions": "0644", "content": _Literal(render_unit_dropin(data_mount))})
        runcmd = [["sh", "-c", f"{DATA_VOLUME_SCRIPT_PATH} && exec {INSTALL_SCRIPT_PATH}"]]
    ntp: dict[str, object] = {"enabled": True, "ntp_client": "chrony"}
    if kubernetes.ntp_servers:
        ntp["servers"] = list(kubernetes.ntp_servers)
    document: dict[str, object] = {
        "hostname": node.name,
        "preserve_hostname": False,
        "bootcmd": [metadata_block_command()],
        # CockroachDB stops a node whose clock drifts; chrony keeps it honest. cloud-init writes chrony's whole
        # configuration from its template (templates/chrony.conf.ubuntu.tmpl: pools and servers only, no
        # sourcedir), so the servers are ntpServers or else the distribution's pool, never the cloud's DHCP ones.
        "ntp": ntp,
    }
    if kubernetes.http_proxy:
        # The image's packages come through the proxy too (NTP cannot: it is UDP).
        document["apt"] = {"http_proxy": kubernetes.http_proxy, "https_proxy": kubernetes.http_proxy}
    document.update({"write_files": files, "runcmd": runcmd})
    text = "#cloud-config\n" + _dump(document)
    encoded = len(base64.b64encode(text.encode()))
    if encoded > NOVA_USER_DATA_LIMIT:
        raise ValueError(f"user data of {node.name} is {encoded} characters in base64; Nova accepts at most "
                         f"{NOVA_USER_DATA_LIMIT}")
    return text
