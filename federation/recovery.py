"""After an interrupted or failed run: the pending operations it left in the state, and what its creates made in
the cloud that the state does not hold (orphans: they cost quota, and Nova and Neutron let a re-run make them twice).

Only what this stack provably made is ever deleted. The proof is the stack's owner ID (components/ownership.py), a
random ID kept in the stack's own state and written on every resource the program makes: a Neutron tag, Nova and
Cinder metadata. A name proves nothing: an operator's project holds their own `otc-bastion` and `otc-backup`, and
under admin credentials Neutron lists every project's resources, another stack's of the same name included. So:
- every listing is scoped to the stack's own project (and key pairs to its own user), whatever the role;
- a resource is a candidate only if it carries this stack's owner ID; a router interface only if it is on a
  router that does; a key pair (no place for a mark) only under the exact name the program gives, with the exact
  public key the stack's config holds, so deleting it loses nothing the next `up` does not make again;
- what holds data or is still changing is kept: a volume attached or not `available`, a server still building
  (the sweep waits a while for those to settle: under the stack's lock only a dead run can have left them), a
  port bound to something, a floating IP associated with a port;
- the program's names without the mark (made before the mark existed, or the operator's own) and server groups
  (Nova keeps no mark on them) are listed, never deleted;
- the sweep runs under the stack's lock (federation/locks.py), so no other run is creating anything meanwhile.

Orphans are deleted, not imported: an interrupted create never held data, and the next `up` makes each one again,
whole, with exactly the program's inputs.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from components.ownership import OWNER_KEY, owner_id_in_state, owner_tag


# ------------------------------------------------------------------------------------------ the state
def pending_operations(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment.get("pending_operations") or [])


def describe_pending(operations: Iterable[dict[str, Any]]) -> str:
    return ", ".join(f"{op.get('type', '?')} {op['resource']['urn'].rsplit('::', 1)[-1]}" for op in operations)


def state_ids(deployment: dict[str, Any]) -> set[str]:
    """The IDs of every resource the state holds (the cloud's IDs for the OpenStack ones)."""
    return {r["id"] for r in deployment.get("resources") or [] if r.get("id")}


@dataclass(frozen=True)
class Ownership:
    """What a resource must show to be this stack's: its owner ID (None where the state predates the mark: then
    nothing is deleted), the project the stack's credentials act in, and the exact key pair it makes (Nova lists
    the caller's own user's alone)."""

    member: str
    owner_id: Optional[str]
    project_id: str
    ssh_public_key: Optional[str] = None

    @staticmethod
    def of(deployment: dict[str, Any], member: str, cloud: Any, ssh_public_key: Optional[str]) -> "Ownership":
        return Ownership(member, owner_id_in_state(deployment.get("resources") or [], member),
                         cloud.current_project_id, ssh_public_key)

    def marked(self, resource: Any) -> bool:
        """Carries this stack's owner ID: a Neutron tag, or Nova or Cinder metadata."""
        if not self.owner_id:
            return False
        return (owner_tag(self.owner_id) in (getattr(resource, "tags", None) or [])
                or (getattr(resource, "metadata", None) or {}).get(OWNER_KEY) == self.owner_id)

    def in_project(self, resource: Any) -> bool:
        """In the stack's own project. Cinder shows a volume's project to admins only (None otherwise), and then
        lists the caller's own project alone (cinder api/v3/volumes.py: all_tenants is an admin's filter)."""
        project = getattr(resource, "project_id", None)
        return project is None or project == self.project_id

    def named(self, name: Optional[str]) -> bool:
        """One of the names the program gives (components/member.py, network.py, security.py, kubernetes.py)."""
        return bool(name) and _program_names(self.member).match(name) is not None


def _program_names(member: str) -> re.Pattern:
    """Exactly the names the program gives its member's resources, and nothing of a member whose name merely starts
    with this one's (`ibm-2-k3s-0` is not ibm's)."""
    return re.compile(rf"^{re.escape(member)}-(k3s-\d+(-data|-port)?|net|subnet|router|spread|ssh|nodes|api|admin-ui"
                      rf"|federation|sql)$")


# ------------------------------------------------------------------------------------------ the cloud
@dataclass(frozen=True)
class Orphan:
    kind: str
    id: str
    name: str
    detail: str
    kept: str = ""  # why it is not deleted, if it is not
    within: str = ""  # the ID of what it is removed from (a router interface's router)
    changing: bool = False  # kept only while Nova or Cinder are still making it

    def line(self) -> str:
        return f"{self.kind} {self.name or '(no name)'} {self.id} ({self.detail})" + (
            f": kept, {self.kept}" if self.kept else "")


UNMARKED = "it has the program's name but not this stack's owner mark (made before the mark, or not the stack's)"
# Neutron's device_owner of a router's interface: legacy, distributed (DVR) and HA routers (neutron-lib
# neutron_lib/constants.py DEVICE_OWNER_ROUTER_INTF, _DVR_INTERFACE, _HA_REPLICATED_INT).
ROUTER_INTERFACE_OWNERS = ("network:router_interface", "network:router_interface_distributed",
                           "network:ha_router_replicated_interface")
# A server or volume still changing: Nova or Cinder are not done with it (recovery.settled waits a while).
SERVER_SETTLED = ("ACTIVE", "SHUTOFF", "ERROR", "STOPPED", "SUSPENDED", "PAUSED")
VOLUME_SETTLED = ("available", "error")


def find_orphans(cloud: Any, ownership: Ownership, known: set[str]) -> list[Orphan]:
    """The stack's resources in the cloud (an openstacksdk connection) whose IDs its state does not hold, each with
    why it is kept if it is; and, kept, the program's names that carry no owner mark."""
    found: list[Orphan] = []
    project = ownership.project_id
    own_servers = set()

    def candidates(listing: Iterable[Any]) -> Iterable[Any]:
        """In the stack's project, unknown to its state, and marked or bearing one of the program's names."""
        for resource in listing:
            if (resource.id not in known and ownership.in_project(resource)
                    and (ownership.marked(resource) or ownership.named(resource.name))):
                yield resource

    def unmarked(resource: Any) -> str:
        return "" if ownership.marked(resource) else UNMARKED

    # Nova and Cinder list the caller's own project unless asked for all (nova api/openstack/compute/servers.py,
    # all_tenants; cinder likewise); Neutron lists every project's to an admin (neutron_lib/db/utils.py
    # model_query_scope_is_project), so each Neutron listing names the project.
    for server in candidates(cloud.compute.servers()):
        changing = ownership.marked(server) and server.status not in SERVER_SETTLED
        kept = unmarked(server) or (f"still {server.status}: Nova is not done with it" if changing else "")
        if not kept:
            own_servers.add(server.id)
        found.append(Orphan("server", server.id, server.name, server.status, kept, changing=changing))
    for volume in candidates(cloud.block_storage.volumes()):
        changing = ownership.marked(volume) and not volume.attachments and volume.status not in VOLUME_SETTLED
        kept = unmarked(volume) or ("attached" if volume.attachments else f"status {volume.status}" if changing else "")
        found.append(Orphan("volume", volume.id, volume.name, volume.status, kept, changing=changing))
    for ip in cloud.network.ips(project_id=project):
        if ip.id not in known and ownership.in_project(ip) and ownership.marked(ip):
            kept = f"associated with port {ip.port_id}" if ip.port_id else ""
            found.append(Orphan("floating IP", ip.id, ip.floating_ip_address, ip.description or "", kept))
    for port in candidates(cloud.network.ports(project_id=project)):
        bound = port.device_id and not (port.device_owner.startswith("compute:") and port.device_id in own_servers)
        kept = unmarked(port) or (f"bound to {port.device_owner} {port.device_id}" if bound else "")
        found.append(Orphan("port", port.id, port.name, port.status, kept))
    # A router's interface is a port Neutron makes, with no name and no mark: one on a router of this stack that the
    # state does not hold (a lost answer to an add, which Neutron refuses to make twice).
    every_router = [r for r in cloud.network.routers(project_id=project) if ownership.in_project(r)]
    marked_routers = {r.id: r for r in every_router if ownership.marked(r)}  # the state's own routers too
    routers = list(candidates(every_router))
    for device_owner in ROUTER_INTERFACE_OWNERS:
        for port in cloud.network.ports(project_id=project, device_owner=device_owner):
            if port.device_id in marked_routers and port.id not in known and ownership.in_project(port):
                subnets = ",".join(ip.get("subnet_id", "") for ip in port.fixed_ips or [])
                found.append(Orphan("router interface", port.id, marked_routers[port.device_id].name,
                                    f"subnet {subnets}", within=port.device_id))
    found += [Orphan("router", r.id, r.name, r.status or "", unmarked(r)) for r in routers]
    for subnet in candidates(cloud.network.subnets(project_id=project)):
        found.append(Orphan("subnet", subnet.id, subnet.name, subnet.cidr or "", unmarked(subnet)))
    for network in candidates(cloud.network.networks(project_id=project)):
        found.append(Orphan("network", network.id, network.name, network.status or "", unmarked(network)))
    for group in candidates(cloud.network.security_groups(project_id=project)):
        found.append(Orphan("security group", group.id, group.name, group.description or "", unmarked(group)))
    # Key pairs belong to the Nova user that made them (nova api/openstack/compute/keypairs.py: the caller's own
    # unless an admin names another); only the exact name, with the stack's own public key, is the stack's.
    key_name = f"{ownership.member}-ssh"
    for keypair in cloud.compute.keypairs():
        if keypair.name == key_name and keypair.name not in known:
            same = ownership.ssh_public_key and _same_key(keypair.public_key, ownership.ssh_public_key)
            kept = "" if same else "its public key is not the stack's sshPublicKey: not provably the stack's"
            found.append(Orphan("key pair", keypair.name, keypair.name, keypair.fingerprint or "", kept))
    for group in cloud.compute.server_groups():
        if group.name == f"{ownership.member}-spread" and group.id not in known and ownership.in_project(group):
            found.append(Orphan("server group", group.id, group.name, ",".join(group.policies or []),
                                "Nova keeps no mark on a server group: delete it yourself if it is the stack's"))
    return found


def settled(find: Callable[[], list[Orphan]], wait: float, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> list[Orphan]:
    """The orphans once what carries the stack's mark and is still being made has settled, or `wait` has passed
    (those then stay kept). Under the stack's lock no run of the stack is making anything: a server still building
    or a volume still `creating` was left by a dead run, and its port or name would stop the next `up`."""
    deadline = clock() + wait
    while True:
        orphans = find()
        if not any(o.changing for o in orphans) or clock() >= deadline:
            return orphans
        sleep(min(5.0, max(deadline - clock(), 0.0)))


def _same_key(a: Optional[str], b: str) -> bool:
    """The same public key, whatever comment follows it (`ssh-ed25519 AAAA… user@host`)."""
    return (a or "").split()[:2] == b.split()[:2]


# The kinds one openstacksdk call deletes: (proxy, method).
_PLAIN_DELETES = {"floating IP": ("network", "delete_ip"), "port": ("network", "delete_port"),
                  "router": ("network", "delete_router"), "subnet": ("network", "delete_subnet"),
                  "network": ("network", "delete_network"), "security group": ("network", "delete_security_group"),
                  "key pair": ("compute", "delete_keypair")}
_DELETE_ORDER = ("floating IP", "server", "router interface", "port", "router", "subnet", "network", "volume",
                 "key pair", "security group")


def delete_orphans(cloud: Any, orphans: Iterable[Orphan], on_output: Callable[[str], None],
                   wait: float = 300) -> tuple[list[Orphan], list[tuple[Orphan, str]]]:
    """Deletes the orphans that are not kept (servers first waited out, so their ports come free). One that the
    cloud refuses (a 409: something came to use it) is reported and the rest go on. Returns (deleted, failed)."""
    deletable = sorted((o for o in orphans if not o.kept), key=lambda o: _DELETE_ORDER.index(o.kind))
    deleted, failed = [], []
    for orphan in deletable:
        on_output(f"deleting an orphan {orphan.line()}")
        try:
            _delete(cloud, orphan, wait)
        except Exception as error:  # openstacksdk's ConflictException, HttpException, ResourceTimeout
            on_output(f"could not delete {orphan.line()}: {error}")
            failed.append((orphan, str(error)))
            continue
        deleted.append(orphan)
    return deleted, failed


def _delete(cloud: Any, orphan: Orphan, wait: float) -> None:
    if orphan.kind == "server":
        cloud.compute.delete_server(orphan.id, ignore_missing=True)
        server = cloud.compute.find_server(orphan.id, ignore_missing=True)
        if server is not None:
            cloud.compute.wait_for_delete(server, wait=wait)
    elif orphan.kind == "router interface":
        cloud.network.remove_interface_from_router(orphan.within, port_id=orphan.id)
    elif orphan.kind == "volume":
        cloud.block_storage.delete_volume(orphan.id, ignore_missing=True)
    else:
        service, method = _PLAIN_DELETES[orphan.kind]
        getattr(getattr(cloud, service), method)(orphan.id, ignore_missing=True)
