"""After an interrupted or failed run (federation/recovery.py): what the sweep may delete is what carries the stack's
owner mark, in the stack's own project, and nothing else: not an operator's namesakes, not another project's stack
of the same name that an admin's listing shows, not what is still being made."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from components.ownership import OWNER_KEY, owner_tag
from federation import locks, recovery
from federation.runner import PulumiStack

OURS = "0a1b2c3d4e5f6071"  # the stack's owner ID, as its state holds it
THEIRS = "9f8e7d6c5b4a3921"  # a same-named stack's in another project
PROJECT, OTHER_PROJECT = "p-otc", "p-otc-production"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwn ops@laptop"


class Conflict(Exception):
    """openstacksdk's ConflictException: a 409 (e.g. neutron SecurityGroupInUse)."""


class FakeCloud:
    """The openstacksdk calls the sweep makes, answering as the services do for credentials of `project` (an admin's
    if `admin`):
    - Neutron lists every project's resources to an admin unless the query names a project, and the caller's own
      otherwise (neutron-lib neutron_lib/db/utils.py model_query_scope_is_project: `not context.is_admin`), and
      filters by device_owner (neutron db_base_plugin_common _get_collection filters);
    - Nova lists servers and server groups of the caller's project alone unless all_tenants / all_projects is asked
      (nova api/openstack/compute/servers.py _get_servers, server_groups.py index), and key pairs of the caller's
      user alone (api/openstack/compute/keypairs.py _index: `user_id = user_id or context.user_id`);
    - Cinder lists the caller's project's volumes unless all_tenants, and shows a volume's project to admins only
      (cinder api/v3/volumes.py; os-vol-tenant-attr:tenant_id is an admin's attribute).
    """

    def __init__(self, project=PROJECT, admin=False, user="u-ops", refuse=(), **resources):
        self.current_project_id, self.current_user_id, self.admin = project, user, admin
        self.resources = {kind: list(resources.get(kind, [])) for kind in (
            "servers", "volumes", "ips", "ports", "security_groups", "server_groups", "keypairs", "routers", "subnets",
            "networks")}
        self.refuse, self.deleted, self.queries = set(refuse), [], []
        self.compute = SimpleNamespace(
            servers=lambda: self._own("servers"), server_groups=lambda: self._own("server_groups"),
            keypairs=lambda: [k for k in self.resources["keypairs"] if k.user_id == self.current_user_id],
            delete_keypair=self._delete, delete_server=self._delete, delete_server_group=self._delete,
            find_server=lambda id, ignore_missing: None)
        self.block_storage = SimpleNamespace(volumes=self._volumes, delete_volume=self._delete)
        listing = {kind: (lambda kind: lambda **query: self._neutron(kind, query))(kind)
                   for kind in ("ips", "ports", "security_groups", "routers", "subnets", "networks")}
        self.network = SimpleNamespace(
            **listing, delete_ip=self._delete, delete_port=self._delete, delete_security_group=self._delete,
            delete_router=self._delete, delete_subnet=self._delete, delete_network=self._delete,
            remove_interface_from_router=lambda router, port_id: self._delete(f"{router}/{port_id}"))

    def _own(self, kind):
        return [r for r in self.resources[kind] if r.project_id == self.current_project_id]

    def _volumes(self):
        return [SimpleNamespace(**{**vars(v), "project_id": v.project_id if self.admin else None})
                for v in self._own("volumes")]

    def _neutron(self, kind, query):
        self.queries.append((kind, dict(query)))
        project = query.get("project_id") or (None if self.admin else self.current_project_id)
        return [r for r in self.resources[kind] if project in (None, r.project_id)
                and query.get("device_owner") in (None, getattr(r, "device_owner", None))]

    def _delete(self, id, ignore_missing=True):
        if id in self.refuse:
            raise Conflict(f"409 Conflict: {id} is in use")
        self.deleted.append(id)


def _mark(owner=OURS, project=PROJECT):
    return dict(tags=[owner_tag(owner)] if owner else [], project_id=project)


def _server(id, name, owner=OURS, status="ACTIVE", project=PROJECT):
    return SimpleNamespace(id=id, name=name, status=status, project_id=project,
                           metadata={OWNER_KEY: owner} if owner else {})


def _volume(id, name, owner=OURS, status="available", attachments=(), project=PROJECT):
    return SimpleNamespace(id=id, name=name, status=status, attachments=list(attachments), project_id=project,
                           metadata={OWNER_KEY: owner} if owner else {})


def _port(id, name, owner=OURS, device_id="", device_owner="", project=PROJECT, fixed_ips=()):
    return SimpleNamespace(id=id, name=name, status="DOWN", device_id=device_id, device_owner=device_owner,
                           fixed_ips=list(fixed_ips), **_mark(owner, project))


def _neutron(id, name, owner=OURS, project=PROJECT, **fields):
    return SimpleNamespace(id=id, name=name, description=f"crdb-federation {name}", status="ACTIVE",
                           **_mark(owner, project), **fields)


def _keypair(name, public_key=SSH_KEY, user="u-ops"):
    return SimpleNamespace(name=name, public_key=public_key, fingerprint="c5:0a:93", user_id=user)


def _ownership(owner=OURS, project=PROJECT):
    return recovery.Ownership("otc", owner, project, SSH_KEY)


def _operators_own():
    """What the issue found deleted: the operator's own `<member>-<word>` resources, in the stack's project."""
    return dict(
        servers=[_server("s-bastion", "otc-bastion", owner=None)],
        volumes=[_volume("v-backup", "otc-backup", owner=None)],
        ports=[_port("p-vip", "otc-vip", owner=None)],
        security_groups=[_neutron("sg-web", "otc-web", owner=None)],
        keypairs=[_keypair("otc-laptop", "ssh-ed25519 AAAAlaptop ops@laptop")],
        server_groups=[SimpleNamespace(id="g-prod", name="otc-prod", policies=["anti-affinity"], project_id=PROJECT)])


def test_an_operators_own_resources_named_like_the_members_are_never_candidates():
    cloud = FakeCloud(**_operators_own())
    assert recovery.find_orphans(cloud, _ownership(), known=set()) == []
    assert recovery.delete_orphans(cloud, [], lambda line: None) == ([], [])
    assert cloud.deleted == []


def test_only_what_carries_the_stacks_mark_is_deleted_and_the_programs_names_without_it_are_listed_kept():
    cloud = FakeCloud(
        servers=[_server("s-known", "otc-k3s-0"), _server("s-orphan", "otc-k3s-1"),
                 _server("s-renamed", "renamed-by-hand"), _server("s-unmarked", "otc-k3s-2", owner=None)],
        volumes=[_volume("v-orphan", "otc-k3s-1-data"), _volume("v-attached", "otc-k3s-2-data", status="in-use",
                                                                         attachments=[{}])],
        ips=[SimpleNamespace(id="f-orphan", floating_ip_address="198.18.0.9", description="crdb-federation otc-k3s-1",
                             port_id=None, **_mark()),
             SimpleNamespace(id="f-described", floating_ip_address="198.18.0.8",
                             description="crdb-federation otc-k3s-1", port_id=None, **_mark(owner=None))],
        ports=[_port("p-orphan", "otc-k3s-1-port")],
        keypairs=[_keypair("otc-ssh")])
    orphans = recovery.find_orphans(cloud, _ownership(), known={"s-known"})
    assert [(o.kind, o.id, o.kept) for o in orphans] == [
        ("server", "s-orphan", ""), ("server", "s-renamed", ""), ("server", "s-unmarked", recovery.UNMARKED),
        ("volume", "v-orphan", ""), ("volume", "v-attached", "attached"), ("floating IP", "f-orphan", ""),
        ("port", "p-orphan", ""), ("key pair", "otc-ssh", "")]
    said = []
    deleted, failed = recovery.delete_orphans(cloud, orphans, said.append)
    # The floating IP and the servers first (their ports come free), never what is kept.
    assert cloud.deleted == ["f-orphan", "s-orphan", "s-renamed", "p-orphan", "v-orphan", "otc-ssh"]
    assert len(deleted) == 6 and not failed
    assert said[0] == "deleting an orphan floating IP 198.18.0.9 f-orphan (crdb-federation otc-k3s-1)"


def test_a_state_without_the_mark_deletes_nothing():
    """A stack last deployed before the mark existed: its names are listed, nothing is a candidate for deletion."""
    cloud = FakeCloud(servers=[_server("s-old", "otc-k3s-1", owner=None)])
    [orphan] = recovery.find_orphans(cloud, _ownership(owner=None), known=set())
    assert orphan.kept == recovery.UNMARKED


def test_under_admin_credentials_another_projects_stack_of_the_same_name_is_untouched():
    """Staging and production, both `otc`, in two projects of one cloud: the staging sweep runs as an admin."""
    production = dict(project=OTHER_PROJECT, owner=THEIRS)
    cloud = FakeCloud(
        admin=True,
        servers=[_server("s-prod", "otc-k3s-0", **production)],
        volumes=[_volume("v-prod", "otc-k3s-0-data", **production)],
        ports=[_port("p-prod", "otc-k3s-0-port", **production),
               _port("if-prod", "", device_id="r-prod", device_owner="network:router_interface", **production)],
        routers=[_neutron("r-prod", "otc-router", **production)],
        subnets=[_neutron("sn-prod", "otc-subnet", cidr="10.20.0.0/24", **production)],
        networks=[_neutron("n-prod", "otc-net", **production)],
        security_groups=[_neutron("sg-prod", "otc-nodes", **production)],
        server_groups=[SimpleNamespace(id="g-prod", name="otc-spread", policies=["soft-anti-affinity"],
                                       project_id=OTHER_PROJECT)])
    assert recovery.find_orphans(cloud, _ownership(), known=set()) == []
    # Every Neutron listing named the stack's own project: an admin would otherwise see production's.
    assert {query.get("project_id") for _, query in cloud.queries} == {PROJECT}


def test_what_is_still_being_made_is_kept_until_it_settles():
    """A server in BUILD (the provider records its ID only once Nova answers the create, and a killed run never
    does) and a volume Cinder is still `creating`: kept while they change (Cinder deletes no volume in creating),
    waited for a while under the stack's lock (only a dead run of this stack can have left them), deleted once
    settled, and kept if they never settle in time."""
    cloud = FakeCloud(servers=[_server("s-building", "otc-k3s-1", status="BUILD")],
                      volumes=[_volume("v-creating", "otc-k3s-1-data", status="creating")])
    orphans = recovery.find_orphans(cloud, _ownership(), known=set())
    assert [(o.id, o.kept, o.changing) for o in orphans] == [
        ("s-building", "still BUILD: Nova is not done with it", True), ("v-creating", "status creating", True)]
    recovery.delete_orphans(cloud, orphans, lambda line: None)
    assert cloud.deleted == []

    now, slept = [0.0], []

    def sleep(seconds):  # Nova and Cinder finish while the sweep waits
        slept.append(seconds)
        now[0] += seconds
        cloud.resources["servers"][0].status, cloud.resources["volumes"][0].status = "ACTIVE", "available"

    found = recovery.settled(lambda: recovery.find_orphans(cloud, _ownership(), set()), 120, sleep, lambda: now[0])
    assert [(o.id, o.kept) for o in found] == [("s-building", ""), ("v-creating", "")] and slept == [5.0]
    cloud.resources["servers"][0].status = "BUILD"
    never = recovery.settled(lambda: recovery.find_orphans(cloud, _ownership(), set()), 12, lambda s: now.__setitem__(
        0, now[0] + s), lambda: now[0])
    assert [(o.id, bool(o.kept)) for o in never] == [("s-building", True), ("v-creating", False)]


@pytest.mark.parametrize("device_owner", recovery.ROUTER_INTERFACE_OWNERS)
def test_a_router_interface_the_state_lacks_is_found_on_legacy_dvr_and_ha_routers(device_owner):
    interface = _port("p-if", "", owner=None, device_id="r-known", device_owner=device_owner,
                      fixed_ips=[{"subnet_id": "sn-known"}])
    cloud = FakeCloud(routers=[_neutron("r-known", "otc-router"), _neutron("r-orphan", "otc-router")],
                      subnets=[_neutron("sn-orphan", "otc-subnet", cidr="10.20.0.0/24")],
                      networks=[_neutron("n-orphan", "otc-net"), _neutron("n-operators", "otc-net", owner=None)],
                      ports=[interface])
    orphans = recovery.find_orphans(cloud, _ownership(), known={"r-known", "sn-known"})
    assert [(o.kind, o.id, o.kept == "") for o in orphans] == [
        ("router interface", "p-if", True), ("router", "r-orphan", True), ("subnet", "sn-orphan", True),
        ("network", "n-orphan", True), ("network", "n-operators", False)]
    recovery.delete_orphans(cloud, orphans, lambda line: None)
    assert cloud.deleted == ["r-known/p-if", "r-orphan", "sn-orphan", "n-orphan"]


def test_a_key_pair_is_a_candidate_only_under_its_exact_name_with_the_stacks_own_public_key():
    cloud = FakeCloud(keypairs=[_keypair("otc-ssh", "ssh-ed25519 AAAAsomeoneelse x@y"),
                                _keypair("otc-ssh", SSH_KEY, user="u-colleague")])
    [orphan] = recovery.find_orphans(cloud, _ownership(), known=set())
    assert orphan.kept.startswith("its public key is not the stack's")


def test_one_resource_the_cloud_refuses_to_delete_does_not_stop_the_others():
    cloud = FakeCloud(refuse={"sg-orphan"}, security_groups=[_neutron("sg-orphan", "otc-nodes")],
                      ports=[_port("p-orphan", "otc-k3s-1-port")])
    said = []
    deleted, failed = recovery.delete_orphans(cloud, recovery.find_orphans(cloud, _ownership(), set()), said.append)
    assert [o.id for o in deleted] == ["p-orphan"] and [o.id for o, _ in failed] == ["sg-orphan"]
    assert said[-1].startswith("could not delete security group otc-nodes sg-orphan") and "409" in said[-1]


# ------------------------------------------------------------------------------------------ the tool's sweep
STATE = {"resources": [{"type": "random:index/randomId:RandomId", "outputs": {"hex": OURS},
                        "urn": "urn:pulumi:otc::crdb-federation::crdb-federation:member:CloudMember$random:index/"
                               "randomId:RandomId::otc-owner"}],
         "pending_operations": []}


class _Workspace:
    def __init__(self, stack):
        self.stack = stack

    def _run_pulumi_cmd_sync(self, args):
        self.stack.calls.append(("cli", args))
        if args[:2] == ["stack", "export"]:
            assert "--show-secrets" not in args
            return SimpleNamespace(stdout=json.dumps({"deployment": self.stack.deployment()}))
        if args[:2] == ["stack", "--show-name"]:
            return SimpleNamespace(stdout="organization/crdb-federation/otc\n")
        raise AssertionError(args)


class _Automation:
    """An Automation API stack: its state (with a pending create until a refresh clears it) and its operations."""

    def __init__(self, pending=False):
        self.pending, self.calls = pending, []
        self.workspace = _Workspace(self)

    def deployment(self):
        pending = [{"type": "creating", "resource": {
            "urn": "urn:pulumi:otc::crdb-federation::openstack:compute/instance:Instance::otc-k3s-1"}}]
        return {**STATE, "pending_operations": pending if self.pending else []}

    def refresh(self, **kwargs):
        assert kwargs.get("show_secrets") is False
        self.pending = not kwargs.get("clear_pending_creates") and self.pending
        self.calls.append(("refresh", kwargs))

    def up(self, **kwargs):
        assert kwargs["show_secrets"] is False
        self.calls.append(("up", kwargs))


def _stack(monkeypatch, tmp_path, automation, cloud):
    stack = PulumiStack("otc", automation_stack=automation,
                        environment={"PULUMI_BACKEND_URL": f"file://{tmp_path}"})
    monkeypatch.setattr(stack, "_cloud", lambda: (cloud, "otc"))
    monkeypatch.setattr(stack, "_broken_servers", lambda on_output: [])
    monkeypatch.setattr("federation.stack_config.resolve", lambda name, root: {"sshPublicKey": SSH_KEY})
    return stack


@pytest.mark.parametrize("pending", [True, False])
def test_every_up_through_the_tool_sweeps_under_the_stacks_lock_after_clearing_pending_creates(
        pending, monkeypatch, tmp_path):
    """After an interrupted run (pending creates) and after a run that succeeded on a retry while a create's answer
    was lost: the next up deletes what carries the mark, while the tool holds the stack's lock."""
    held = []
    own = _operators_own()
    cloud = FakeCloud(**{**own, "servers": [*own["servers"], _server("s-orphan", "otc-k3s-1")]})
    lock_dir = locks.lock_directory(f"file://{tmp_path}", "organization/crdb-federation/otc")
    original = cloud.compute.delete_server
    cloud.compute.delete_server = lambda id, ignore_missing: held.append(list(lock_dir.iterdir())) or original(id)
    automation = _Automation(pending)
    said = []
    _stack(monkeypatch, tmp_path, automation, cloud).run("up", lambda e: None, said.append)
    assert cloud.deleted == ["s-orphan"]
    assert [len(files) for files in held] == [1]  # the tool's own lock object, while it deleted
    assert not list(lock_dir.iterdir())  # released
    assert [c[0] for c in automation.calls if c[0] != "cli"] == (["refresh"] if pending else []) + ["up"]


def test_nothing_is_deleted_while_another_run_holds_the_stack(monkeypatch, tmp_path):
    cloud = FakeCloud(servers=[_server("s-orphan", "otc-k3s-1")])
    lock_dir = locks.lock_directory(f"file://{tmp_path}", "organization/crdb-federation/otc")
    lock_dir.mkdir(parents=True)
    (lock_dir / "live.json").write_text(json.dumps({"pid": 4242, "username": "ops", "hostname": "elsewhere",
                                                    "timestamp": "2026-12-01T23:59:00Z"}))
    automation = _Automation()
    with pytest.raises(locks.StackLocked, match="another run holds this stack: .*ops@elsewhere \\(pid 4242\\)"):
        _stack(monkeypatch, tmp_path, automation, cloud).run("up", lambda e: None, lambda line: None)
    assert cloud.deleted == [] and "up" not in [c[0] for c in automation.calls]


def test_a_stack_the_backend_lacks_is_never_created_except_by_a_first_up(monkeypatch):
    from pulumi import automation as auto

    created = []
    monkeypatch.setattr(auto.Stack, "select", classmethod(lambda cls, name, ws: (_ for _ in ()).throw(
        auto.StackNotFoundError(auto.CommandResult("", "error: no stack named 'wind' found", 255)))))
    monkeypatch.setattr(auto.Stack, "create", classmethod(lambda cls, name, ws: created.append(name) or object()))
    monkeypatch.setattr("federation.runner.stack_workspace", lambda work_dir, environment: object())
    from federation.runner import StackNotInBackend
    with pytest.raises(StackNotInBackend, match="wind: no such stack in the state backend .*nothing was created"):
        PulumiStack("wind", environment={"PULUMI_BACKEND_URL": "file:///srv/state"})
    assert created == []
    assert PulumiStack("wind", create=True).created and created == ["wind"]


def test_the_orphans_command_lists_read_only_and_deletes_only_when_asked(monkeypatch, capsys, tmp_path):
    from federation import __main__ as tool

    cloud = FakeCloud()
    found = [recovery.Orphan("server", "s-orphan", "otc-k3s-1", "ACTIVE"),
             recovery.Orphan("volume", "v-attached", "otc-k3s-2-data", "in-use", "attached")]
    monkeypatch.setattr(tool, "require_pulumi_cli", lambda: None)
    monkeypatch.setattr(tool.LazyStack, "orphans", lambda self, settle: (cloud, found))
    monkeypatch.setattr(tool.LazyStack, "holding", lambda self: locks.holding(f"file://{tmp_path}", "o/p/otc"),
                        raising=False)
    (tmp_path / "otc.passphrase").write_text("otc's own")
    (tmp_path / "otc.passphrase").chmod(0o600)
    arguments = ["orphans", "otc", "--passphrases", str(tmp_path)]
    assert tool.main(arguments) == 1 and cloud.deleted == []
    listed = capsys.readouterr().out
    assert "server otc-k3s-1 s-orphan (ACTIVE)" in listed and "kept, attached" in listed
    assert tool.main([*arguments, "--delete"]) == 1  # the attached volume stays
    assert cloud.deleted == ["s-orphan"] and "deleted 1 of 1 orphan(s) not kept" in capsys.readouterr().out


def test_a_stack_the_sweep_finds_held_shows_as_refused_with_the_holder():
    from federation.progress import CloudProgress

    progress = CloudProgress("otc", "up")
    progress.finish(10.0, locks.StackLocked("another run holds this stack: /s/live.json: created by ops@elsewhere "
                                            "(pid 4242) at 2026-12-01T23:59:00Z. Nothing was started"))
    assert progress.status == "refused" and "created by ops@elsewhere (pid 4242)" in progress.error
