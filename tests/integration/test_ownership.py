"""What is not the stack's is never touched, on the real engine against the local cloud, whose credentials are an
admin's (so Neutron lists every project's resources to them, as it does to a real cloud's admins).

One member (platform9, nodeCount 1, the seed's public outputs from its own config) shares its project with its
operator's own work named like the member's resources, and the cloud holds another project's stack of the same
name. Nothing of theirs survives by luck: each is checked after a failed join, the converging join and `orphans
--delete`; what the stack's failed run left carries its mark and is deleted; what is still being made is kept.
"""

from __future__ import annotations

import json
import secrets

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from components.ownership import OWNER_KEY, owner_tag
from tests.integration.project import NOTHING, explicit_member, in_cloud, passphrase, whole
from tests.integration.test_faults import _destroyed, _join, _network_quota, seed  # noqa: F401 (a fixture)

STACK = "platform9"
# A member name of this run's own: what an aborted earlier run left in the shared local cloud is, rightly, not this
# stack's, and would only be listed.
MEMBER = f"{STACK}-{secrets.token_hex(2)}"
THEIRS = "9f8e7d6c5b4a3921"  # the other project's stack's owner ID


def _public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " ops@laptop"


@pytest.fixture(scope="module")
def operators_own(project):
    """The operator's own resources in the stack's project, each `<member>-<word>` as the issue found them deleted,
    and `platform9-net`, named exactly like the program's network (made by hand, so without the stack's mark)."""
    cloud = project.cloud.connect()
    network = cloud.network.create_network(name=f"{MEMBER}-net")
    subnet = cloud.network.create_subnet(network_id=network.id, cidr="10.99.0.0/24", ip_version=4,
                                         name=f"{MEMBER}-ops-subnet")
    image = cloud.image.find_image("ubuntu-24.04")
    flavor = next(iter(sorted(cloud.compute.flavors(), key=lambda f: f.ram)))
    made = {
        "server": cloud.compute.create_server(name=f"{MEMBER}-bastion", image_id=image.id, flavor_id=flavor.id,
                                              networks=[{"uuid": network.id}]),
        "volume": cloud.block_storage.create_volume(name=f"{MEMBER}-backup", size=1),
        "port": cloud.network.create_port(name=f"{MEMBER}-vip", network_id=network.id),
        "security group": cloud.network.create_security_group(name=f"{MEMBER}-web", description="the operator's"),
        "key pair": cloud.compute.create_keypair(name=f"{MEMBER}-laptop", public_key=_public_key()),
        "server group": cloud.compute.create_server_group(name=f"{MEMBER}-prod", policies=["anti-affinity"]),
        "network": network,
        "subnet": subnet,
    }
    cloud.compute.wait_for_server(made["server"], wait=300)
    cloud.block_storage.wait_for_status(made["volume"], status="available", wait=120)
    yield made
    cloud.compute.delete_server(made["server"].id, ignore_missing=True)
    cloud.compute.wait_for_delete(made["server"], wait=300)
    for kind, delete in (("port", cloud.network.delete_port), ("security group", cloud.network.delete_security_group),
                         ("key pair", cloud.compute.delete_keypair), ("server group", cloud.compute.delete_server_group),
                         ("volume", cloud.block_storage.delete_volume), ("subnet", cloud.network.delete_subnet),
                         ("network", cloud.network.delete_network)):
        delete(made[kind].name if kind == "key pair" else made[kind].id, ignore_missing=True)


@pytest.fixture(scope="module")
def other_project(project):
    """Production's stack `platform9` in another project of the same cloud: its network, subnet, router, port and
    security group, each marked with its own stack's owner ID, made by the admin for that project."""
    cloud = project.cloud.connect()
    other = cloud.identity.find_project("crdb-production") or cloud.identity.create_project(
        name="crdb-production", domain_id="default")
    tags = [owner_tag(THEIRS)]
    network = cloud.network.create_network(name=f"{MEMBER}-net", project_id=other.id, description=f"crdb-federation "
                                           f"{MEMBER}-net")
    made = {"network": network,
            "subnet": cloud.network.create_subnet(name=f"{MEMBER}-subnet", network_id=network.id, cidr="10.98.0.0/24",
                                                  ip_version=4, project_id=other.id),
            "router": cloud.network.create_router(name=f"{MEMBER}-router", project_id=other.id),
            "port": cloud.network.create_port(name=f"{MEMBER}-k3s-0-port", network_id=network.id, project_id=other.id),
            "security group": cloud.network.create_security_group(name=f"{MEMBER}-nodes", project_id=other.id)}
    for resource in made.values():
        cloud.network.set_tags(resource, tags)
    yield made
    for kind, delete in (("port", cloud.network.delete_port), ("router", cloud.network.delete_router),
                         ("security group", cloud.network.delete_security_group), ("subnet", cloud.network.delete_subnet),
                         ("network", cloud.network.delete_network)):
        delete(made[kind].id, ignore_missing=True)


def _still_there(cloud, operators_own, other_project) -> dict[str, bool]:
    """Each of the operator's and the other project's resources, by kind: still in the cloud, unchanged."""
    find = {"server": lambda r: cloud.compute.find_server(r.id, ignore_missing=True),
            "volume": lambda r: cloud.block_storage.find_volume(r.id, ignore_missing=True),
            "port": lambda r: cloud.network.find_port(r.id, ignore_missing=True),
            "security group": lambda r: cloud.network.find_security_group(r.id, ignore_missing=True),
            "key pair": lambda r: cloud.compute.find_keypair(r.name, ignore_missing=True),
            "server group": lambda r: cloud.compute.find_server_group(r.id, ignore_missing=True),
            "network": lambda r: cloud.network.find_network(r.id, ignore_missing=True),
            "subnet": lambda r: cloud.network.find_subnet(r.id, ignore_missing=True),
            "router": lambda r: cloud.network.find_router(r.id, ignore_missing=True)}
    there = {f"operator's {kind} {r.name}": find[kind](r) is not None for kind, r in operators_own.items()}
    there.update({f"production's {kind} {r.name}": find[kind](r) is not None for kind, r in other_project.items()})
    return there


def _the_stacks(cloud) -> dict[str, list[str]]:
    """in_cloud() less the operator's own `<member>-…` resources: the stack's nodes' alone."""
    nodes = (f"{MEMBER}-k3s-", f"crdb-federation {MEMBER}-k3s-")
    return {kind: [n for n in names if n.startswith(nodes)] for kind, names in in_cloud(cloud, MEMBER).items()}


def _owner_id(project) -> str:
    state = json.loads(project.run("stack", "export", stack=STACK).stdout)["deployment"]
    [owner] = [r["outputs"]["hex"] for r in state["resources"] if r["urn"].endswith(f"::{MEMBER}-owner")]
    return owner


def test_orphans_of_a_stack_the_backend_lacks_creates_nothing_and_says_so(project):
    """A stack file and its operator's passphrase, but no such stack in the backend (never deployed there, or a
    fresh clone pointed at another backend): nothing is created, nothing listed, and it says so."""
    project.passphrases.mkdir(exist_ok=True)
    (project.passphrases / f"{STACK}.passphrase").write_text(passphrase(STACK))
    (project.passphrases / f"{STACK}.passphrase").chmod(0o600)
    listed = project.tool("orphans", STACK)
    print(listed.stdout + listed.stderr)
    assert listed.returncode != 0
    assert f"{STACK}: no such stack in the state backend" in listed.stdout + listed.stderr
    assert "nothing was created" in listed.stdout + listed.stderr
    stacks = project.run("stack", "ls", "--json").stdout
    assert STACK not in [s["name"] for s in json.loads(stacks)]


def test_the_operators_own_and_another_projects_stack_survive_a_failed_join_the_next_and_orphans_delete(
        project, standin, seed, operators_own, other_project):
    """The join fails halfway (no floating IP left), the next one converges, and `orphans --delete` runs: after
    each, every one of the operator's resources and production's are still there; what the failed run made carries
    the stack's mark, and the converged stack is whole, each resource once."""
    explicit_member(project, STACK, 1, seed)
    project.run("config", "set", "crdb-federation:memberName", MEMBER, stack=STACK)
    cloud = project.cloud.connect()
    everything = {name: True for name in _still_there(cloud, operators_own, other_project)}
    quota = cloud.network.get_quota(cloud.current_project_id, details=True).floating_ips
    _network_quota(cloud, floating_ips=quota["used"] + quota.get("reserved", 0))
    runs = project.directory / "runs-ownership"
    try:
        failed, log = _join(project, STACK, runs)
        print("the failing join said:", failed.stdout[-1500:], sep="\n")
        assert failed.returncode != 0
        assert _still_there(cloud, operators_own, other_project) == everything
        owner = _owner_id(project)
        # What it made before the quota stopped it carries the mark (Neutron's tags filter, Cinder's metadata).
        groups = {g.name for g in cloud.network.security_groups(project_id=cloud.current_project_id,
                                                                tags=owner_tag(owner))}
        volumes = {v.name: (v.metadata or {}).get(OWNER_KEY) for v in cloud.block_storage.volumes()
                   if (v.name or "").startswith(f"{MEMBER}-k3s-")}
        print("marked after the failed join:", sorted(groups), volumes)
        # How far it got before the quota stopped it varies; whatever it made carries the mark.
        assert f"{MEMBER}-nodes" in groups and set(volumes.values()) <= {owner}, (groups, volumes)
    finally:
        _network_quota(cloud, floating_ips=quota["limit"])
    joined, log = _join(project, STACK, runs)
    said = [line for line in log.splitlines() if "not deleted:" in line or "orphan" in line]
    print("the converging join said:", *said, sep="\n  ")
    assert joined.returncode == 0, joined.stdout[-3000:] + log[-3000:]
    assert _the_stacks(cloud) == whole(MEMBER, 1), _the_stacks(cloud)
    # The operator's `platform9-net` bears the program's network name without the mark: listed, never deleted.
    assert any(f"network {MEMBER}-net {operators_own['network'].id}" in line and "kept" in line for line in said)
    assert _still_there(cloud, operators_own, other_project) == everything
    removed = project.tool("orphans", STACK, "--delete")
    print("orphans --delete said:", removed.stdout[-2500:], removed.stderr[-1000:], sep="\n")
    assert _still_there(cloud, operators_own, other_project) == everything
    assert f"server {MEMBER}-bastion" not in removed.stdout and f"key pair {MEMBER}-laptop" not in removed.stdout


def test_a_marked_volume_still_being_made_is_kept_and_deleted_once_it_is_available(project, standin, seed):
    """A volume with the stack's mark that its state does not hold, as another run's would be while Cinder makes
    it (held in `creating` here with Cinder's admin reset-state): kept; once `available`, deleted."""
    cloud = project.cloud.connect()
    owner = _owner_id(project)
    volume = cloud.block_storage.create_volume(name=f"{MEMBER}-k3s-9-data", size=1,
                                               metadata={OWNER_KEY: owner, "crdb-federation-member": MEMBER})
    cloud.block_storage.wait_for_status(volume, status="available", wait=120)
    try:
        cloud.block_storage.reset_volume_status(volume, status="creating", attach_status=None, migration_status=None)
        listed = project.tool("orphans", STACK, "--delete", "--settle", "10")  # it stays in creating
        print("with a marked volume in creating:", listed.stdout[-1500:], sep="\n")
        assert f"volume {MEMBER}-k3s-9-data {volume.id} (creating): kept, status creating" in listed.stdout
        assert cloud.block_storage.find_volume(volume.id, ignore_missing=True) is not None
        cloud.block_storage.reset_volume_status(volume, status="available", attach_status=None, migration_status=None)
        removed = project.tool("orphans", STACK, "--delete")
        print("once available:", removed.stdout[-1500:], sep="\n")
        assert f"deleting an orphan volume {MEMBER}-k3s-9-data {volume.id}" in removed.stdout
        cloud.block_storage.wait_for_delete(volume, wait=120)
    finally:
        cloud.block_storage.delete_volume(volume.id, ignore_missing=True)


def test_destroy_leaves_the_stacks_nothing_and_the_operators_everything(project, operators_own, other_project):
    cloud = project.cloud.connect()
    everything = {name: True for name in _still_there(cloud, operators_own, other_project)}
    _destroyed(project, cloud, STACK)
    assert _the_stacks(cloud) == NOTHING
    assert _still_there(cloud, operators_own, other_project) == everything
