"""After an interrupted run: the lock it left, its pending operations and the cloud resources that exist in the
cloud but not in the stack's state (orphans: they cost quota, and Nova and Neutron let a re-run make them twice).

Orphans are deleted, not imported. An interrupted create never held data (a server still building, an empty
volume never attached, a floating IP associated with nothing), and the program names every resource after its
member, so the next `up` makes each one again, whole, with exactly the program's inputs; an import would have to
match those inputs field by field or be replaced anyway. What could hold data is never deleted: a volume that
is attached or not `available`.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

MEMBER_TAG = "crdb-federation-member"  # metadata on servers and volumes (components/kubernetes.py)
# "  file:///…/locks/…/<id>.json: created by user@host (pid 123) at 2026-12-01T23:59:00Z"
# (pulumi v3.259.0 pkg/backend/diy/lock.go checkForLock)
_LOCK_LINE = re.compile(r"^\s*(?P<url>\S+): created by (?P<user>[^@\s]+)@(?P<host>\S+) \(pid (?P<pid>\d+)\) "
                        r"at (?P<at>\S+)\s*$")


@dataclass(frozen=True)
class LockHolder:
    url: str
    user: str
    host: str
    pid: int
    at: str


def lock_holders(message: str) -> list[LockHolder]:
    """The holders the CLI names when it refuses a locked stack."""
    found = []
    for line in message.splitlines():
        match = _LOCK_LINE.match(line)
        if match:
            found.append(LockHolder(match["url"], match["user"], match["host"], int(match["pid"]), match["at"]))
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale(holders: Iterable[LockHolder], hostname: Optional[str] = None,
          alive: Optional[Callable[[int], bool]] = None) -> bool:
    """Every holder is a process of this machine that no longer runs (a killed engine): nobody else can be
    in the middle of this stack. A holder on another machine is never judged from here."""
    holders = list(holders)
    here = hostname or socket.gethostname()
    alive = alive or _pid_alive
    return bool(holders) and all(h.host == here and not alive(h.pid) for h in holders)


# ------------------------------------------------------------------------------------------ the state
def pending_operations(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment.get("pending_operations") or [])


def describe_pending(operations: Iterable[dict[str, Any]]) -> str:
    return ", ".join(f"{op.get('type', '?')} {op['resource']['urn'].rsplit('::', 1)[-1]}" for op in operations)


def state_ids(deployment: dict[str, Any]) -> set[str]:
    """The IDs of every resource the state holds (the cloud's IDs for the OpenStack ones)."""
    return {r["id"] for r in deployment.get("resources") or [] if r.get("id")}


# ------------------------------------------------------------------------------------------ the cloud
@dataclass(frozen=True)
class Orphan:
    kind: str
    id: str
    name: str
    detail: str
    kept: str = ""  # why it is not deleted, if it is not
    within: str = ""  # the ID of what it is removed from (a router interface's router)

    def line(self) -> str:
        return f"{self.kind} {self.name or '(no name)'} {self.id} ({self.detail})" + (
            f": kept, {self.kept}" if self.kept else "")


def _names(member: str) -> re.Pattern:
    """The names the program gives (`<member>-k3s-<n>`, its `-data` and `-port`, `<member>-net`, `-router`,
    `-spread`, `-ssh`, `-<purpose>` of a security group), and nothing of a member whose name merely starts with
    this one's (`ibm-2-k3s-0` is not ibm's)."""
    return re.compile(rf"^{re.escape(member)}-(k3s-\d+(-data|-port)?|[a-z]+)$")


def mine(member: str, name: Optional[str], metadata: Optional[dict] = None, description: str = "") -> bool:
    """Named as the program names the member's resources, tagged with the member, or described so."""
    names = _names(member)
    return bool(name and names.match(name)) or (metadata or {}).get(MEMBER_TAG) == member or bool(
        description.startswith("crdb-federation ") and names.match(description[len("crdb-federation "):]))


def find_orphans(cloud: Any, member: str, known: set[str]) -> list[Orphan]:
    """The member's resources in the cloud (openstacksdk connection) whose IDs the state does not hold."""
    found: list[Orphan] = []
    for server in cloud.compute.servers():
        if mine(member, server.name, server.metadata) and server.id not in known:
            found.append(Orphan("server", server.id, server.name, server.status))
    for volume in cloud.block_storage.volumes():
        if mine(member, volume.name, volume.metadata) and volume.id not in known:
            kept = "attached" if volume.attachments else (
                "" if volume.status in ("available", "error", *_VOLUME_BUSY) else f"status {volume.status}")
            found.append(Orphan("volume", volume.id, volume.name, volume.status, kept))
    for ip in cloud.network.ips():
        if mine(member, None, description=ip.description or "") and ip.id not in known:
            kept = f"associated with port {ip.port_id}" if ip.port_id else ""
            found.append(Orphan("floating IP", ip.id, ip.floating_ip_address, ip.description or "", kept))
    for port in cloud.network.ports():
        if mine(member, port.name) and port.id not in known:
            kept = f"bound to {port.device_owner}" if port.device_id and port.device_owner.startswith(
                "compute:") and port.device_id in known else ""
            found.append(Orphan("port", port.id, port.name, port.status, kept))
    # Networks, subnets and routers by their description (components/network.py owned_by): their names are the
    # operator's too in networkMode existing. A router's interface is a port with no name: one of the member's
    # routers' that the state does not hold (a lost answer to an add, which Neutron refuses to make twice).
    routers = {r.id: r for r in cloud.network.routers() if mine(member, None, description=r.description or "")}
    for port in cloud.network.ports(device_owner="network:router_interface"):
        if port.device_id in routers and port.id not in known:
            subnets = ",".join(ip.get("subnet_id", "") for ip in port.fixed_ips or [])
            found.append(Orphan("router interface", port.id, routers[port.device_id].name, f"subnet {subnets}",
                                within=port.device_id))
    found += [Orphan("router", r.id, r.name, r.status or "") for r in routers.values() if r.id not in known]
    for subnet in cloud.network.subnets():
        if mine(member, None, description=subnet.description or "") and subnet.id not in known:
            found.append(Orphan("subnet", subnet.id, subnet.name, subnet.cidr or ""))
    for network in cloud.network.networks():
        if mine(member, None, description=network.description or "") and network.id not in known:
            found.append(Orphan("network", network.id, network.name, network.status or ""))
    for group in cloud.network.security_groups():
        if mine(member, group.name) and group.id not in known:
            found.append(Orphan("security group", group.id, group.name, group.description or ""))
    for keypair in cloud.compute.keypairs():  # a second create of one fails outright: Nova's names are unique
        if mine(member, keypair.name) and keypair.name not in known:
            found.append(Orphan("key pair", keypair.name, keypair.name, keypair.fingerprint or ""))
    for group in cloud.compute.server_groups():
        if mine(member, group.name) and group.id not in known:
            found.append(Orphan("server group", group.id, group.name, ",".join(group.policies or [])))
    return found


_VOLUME_BUSY = ("creating", "downloading")
# The kinds one openstacksdk call deletes: (proxy, method).
_PLAIN_DELETES = {"floating IP": ("network", "delete_ip"), "port": ("network", "delete_port"),
                  "router": ("network", "delete_router"), "subnet": ("network", "delete_subnet"),
                  "network": ("network", "delete_network"), "security group": ("network", "delete_security_group"),
                  "key pair": ("compute", "delete_keypair"), "server group": ("compute", "delete_server_group")}
_DELETE_ORDER = ("floating IP", "server", "router interface", "port", "router", "subnet", "network", "volume",
                 "server group", "key pair", "security group")


def delete_orphans(cloud: Any, orphans: Iterable[Orphan], on_output: Callable[[str], None],
                   wait: float = 300) -> list[Orphan]:
    """Deletes the orphans that hold nothing (servers first waited out, so their ports and volumes come free);
    returns those deleted."""
    deletable = sorted((o for o in orphans if not o.kept), key=lambda o: _DELETE_ORDER.index(o.kind))
    deleted = []
    for orphan in deletable:
        on_output(f"deleting an orphan {orphan.line()}")
        if orphan.kind == "server":
            cloud.compute.delete_server(orphan.id, ignore_missing=True)
            server = cloud.compute.find_server(orphan.id, ignore_missing=True)
            if server is not None:
                cloud.compute.wait_for_delete(server, wait=wait)
        elif orphan.kind == "router interface":
            cloud.network.remove_interface_from_router(orphan.within, port_id=orphan.id)
        elif orphan.kind == "volume":
            if orphan.detail in _VOLUME_BUSY:  # Cinder deletes no volume still being made
                volume = cloud.block_storage.get_volume(orphan.id)
                cloud.block_storage.wait_for_status(volume, status="available", failures=["error"], wait=wait)
            cloud.block_storage.delete_volume(orphan.id, ignore_missing=True)
        else:
            service, method = _PLAIN_DELETES[orphan.kind]
            getattr(getattr(cloud, service), method)(orphan.id, ignore_missing=True)
        deleted.append(orphan)
    return deleted
