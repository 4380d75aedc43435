"""After an interrupted run (federation/recovery.py): the lock a killed engine left, the pending operations in
the state, and the member's resources in the cloud that the state does not hold."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from federation import recovery
from federation.runner import PulumiStack

# The CLI's refusal, as pulumi v3.259.0 pkg/backend/diy/lock.go checkForLock words it.
LOCKED = ("error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or "
          "delete the lock file with `pulumi cancel`.\n  file:///state/.pulumi/locks/organization/crdb-federation/"
          "otc/5a3c.json: created by ops@builder (pid 4242) at 2026-12-01T23:59:00Z\n")


def test_the_lock_holders_are_read_from_the_refusal_and_only_dead_local_ones_are_stale():
    [holder] = recovery.lock_holders(LOCKED)
    assert (holder.user, holder.host, holder.pid, holder.at) == ("ops", "builder", 4242, "2026-12-01T23:59:00Z")
    assert recovery.stale([holder], hostname="builder", alive=lambda pid: False)
    assert not recovery.stale([holder], hostname="builder", alive=lambda pid: True)  # still running
    assert not recovery.stale([holder], hostname="laptop", alive=lambda pid: False)  # someone else's machine
    assert not recovery.stale([], hostname="builder")


class FakeCloud:
    """The openstacksdk calls recovery makes, over lists of resources."""

    def __init__(self, **resources):
        self.resources = {kind: list(resources.get(kind, [])) for kind in (
            "servers", "volumes", "ips", "ports", "security_groups", "server_groups", "keypairs", "routers", "subnets",
            "networks")}
        self.deleted: list[str] = []
        self.compute = SimpleNamespace(
            servers=lambda: self.resources["servers"], server_groups=lambda: self.resources["server_groups"],
            keypairs=lambda: self.resources["keypairs"], delete_keypair=self._delete,
            delete_server=lambda id, ignore_missing: self.deleted.append(id),
            find_server=lambda id, ignore_missing: None, delete_server_group=self._delete)
        self.block_storage = SimpleNamespace(volumes=lambda: self.resources["volumes"], delete_volume=self._delete)
        self.network = SimpleNamespace(
            ips=lambda: self.resources["ips"], security_groups=lambda: self.resources["security_groups"],
            ports=lambda device_owner=None: [p for p in self.resources["ports"]
                                             if device_owner in (None, p.device_owner)],
            routers=lambda: self.resources["routers"], subnets=lambda: self.resources["subnets"],
            networks=lambda: self.resources["networks"], delete_ip=self._delete, delete_port=self._delete,
            delete_security_group=self._delete, delete_router=self._delete, delete_subnet=self._delete,
            delete_network=self._delete,
            remove_interface_from_router=lambda router, port_id: self.deleted.append(f"{router}/{port_id}"))

    def _delete(self, id, ignore_missing):
        self.deleted.append(id)


def _server(id, name, metadata=None, status="BUILD"):
    return SimpleNamespace(id=id, name=name, metadata=metadata or {}, status=status)


def _volume(id, name, status="available", attachments=()):
    return SimpleNamespace(id=id, name=name, metadata={}, status=status, attachments=list(attachments))


def test_orphans_are_the_members_resources_the_state_does_not_hold_and_what_holds_data_is_kept():
    cloud = FakeCloud(
        servers=[_server("s-known", "otc-k3s-0"), _server("s-orphan", "otc-k3s-1"),
                 _server("s-tagged", "renamed", {recovery.MEMBER_TAG: "otc"}), _server("s-other", "zte-k3s-0"),
                 _server("s-longer", "otc-2-k3s-0"), _server("s-hand", "otc-k3s-0-debug-copy")],
        volumes=[_volume("v-orphan", "otc-k3s-1-data"), _volume("v-attached", "otc-k3s-2-data", "in-use", [{}])],
        ips=[SimpleNamespace(id="f-orphan", floating_ip_address="198.18.0.9", description="crdb-federation otc-k3s-1",
                             port_id=None)],
        ports=[SimpleNamespace(id="p-orphan", name="otc-k3s-1-port", status="DOWN", device_id="", device_owner="")],
        keypairs=[SimpleNamespace(name="otc-ssh", fingerprint="ab:cd")],
    )
    orphans = recovery.find_orphans(cloud, "otc", known={"s-known"})
    assert [(o.kind, o.id, o.kept) for o in orphans] == [
        ("server", "s-orphan", ""), ("server", "s-tagged", ""), ("volume", "v-orphan", ""),
        ("volume", "v-attached", "attached"), ("floating IP", "f-orphan", ""), ("port", "p-orphan", ""),
        ("key pair", "otc-ssh", "")]
    said = []
    deleted = recovery.delete_orphans(cloud, orphans, said.append)
    # The floating IP and the servers first (their ports and volumes come free), never the attached volume.
    assert cloud.deleted == ["f-orphan", "s-orphan", "s-tagged", "p-orphan", "v-orphan", "otc-ssh"]
    assert len(deleted) == 6 and said[0] == "deleting an orphan floating IP 198.18.0.9 f-orphan (crdb-federation " \
                                            "otc-k3s-1)"


def _owned(id, name, **fields):
    return SimpleNamespace(id=id, name=name, description=f"crdb-federation {name}", status="ACTIVE", **fields)


def test_a_network_subnet_router_and_interface_the_state_lacks_are_orphans_and_an_operators_namesake_is_not():
    """Neutron's names are not unique and, in networkMode existing, the operator's own network may be called
    `<member>-net`: only the program's description marks them. A router interface the state lacks (the answer to
    its add was lost) is removed first, since Neutron refuses a second one on the subnet."""
    interface = SimpleNamespace(id="p-if", name="", status="ACTIVE", device_id="r-known",
                                device_owner="network:router_interface", fixed_ips=[{"subnet_id": "sn-known"}])
    known_if = SimpleNamespace(id="p-if-known", name="", status="ACTIVE", device_id="r-known",
                               device_owner="network:router_interface", fixed_ips=[{"subnet_id": "sn-other"}])
    cloud = FakeCloud(
        routers=[_owned("r-known", "otc-router"), _owned("r-orphan", "otc-router")],
        subnets=[_owned("sn-orphan", "otc-subnet", cidr="10.20.0.0/24")],
        networks=[_owned("n-orphan", "otc-net"),
                  SimpleNamespace(id="n-operators", name="otc-net", description="", status="ACTIVE")],
        ports=[interface, known_if])
    orphans = recovery.find_orphans(cloud, "otc", known={"r-known", "sn-known", "p-if-known"})
    assert [(o.kind, o.id) for o in orphans] == [
        ("router interface", "p-if"), ("router", "r-orphan"), ("subnet", "sn-orphan"), ("network", "n-orphan")]
    recovery.delete_orphans(cloud, orphans, lambda line: None)
    assert cloud.deleted == ["r-known/p-if", "r-orphan", "sn-orphan", "n-orphan"]


class _Interrupted:
    """An Automation API stack whose last run was killed: a pending create in its state, and a lock."""

    def __init__(self, locked: bool):
        self.locked = locked
        self.calls: list[tuple[str, dict]] = []

    def export_stack(self):
        cleared = any(c == ("refresh", {"clear_pending_creates": True}) for c in
                      [(name, {k: v for k, v in kw.items() if k == "clear_pending_creates"}) for name, kw in self.calls])
        pending = [] if cleared else [{"type": "creating", "resource": {
            "urn": "urn:pulumi:otc::crdb-federation::openstack:compute/instance:Instance::otc-k3s-1"}}]
        return SimpleNamespace(deployment={"resources": [], "pending_operations": pending})

    def refresh(self, **kwargs):
        if self.locked:
            raise RuntimeError(LOCKED)
        self.calls.append(("refresh", kwargs))

    def cancel(self):
        self.locked = False
        self.calls.append(("cancel", {}))

    def up(self, **kwargs):
        self.calls.append(("up", kwargs))


@pytest.mark.parametrize("locked", [False, True])
def test_an_up_after_an_interrupted_one_deletes_its_orphans_clears_the_pending_creates_then_runs(
        locked, monkeypatch):
    monkeypatch.setattr(recovery, "_pid_alive", lambda pid: False)
    monkeypatch.setattr(recovery.socket, "gethostname", lambda: "builder")
    cloud = FakeCloud(servers=[_server("s-orphan", "otc-k3s-1")])
    automation = _Interrupted(locked)
    stack = PulumiStack("otc", automation_stack=automation)
    monkeypatch.setattr(stack, "_cloud", lambda: (cloud, "otc"))
    said = []
    stack.run("up", lambda e: None, said.append)
    assert cloud.deleted == ["s-orphan"]
    assert [c[0] for c in automation.calls] == (["cancel"] if locked else []) + ["refresh", "up"]
    assert automation.calls[-2][1]["clear_pending_creates"] is True
    assert [line for line in said if "interrupted" in line] == [
        "the last run of otc was interrupted: 1 pending operation(s) (creating otc-k3s-1), cleared by a refresh; "
        "deleting what they left in the cloud"]
    if locked:
        assert said[0] == ("otc's lock was left by a run that is gone (pid 4242 on builder since "
                           "2026-12-01T23:59:00Z): releasing it (pulumi cancel)")


def test_a_lock_a_live_run_holds_is_never_released(monkeypatch):
    monkeypatch.setattr(recovery, "_pid_alive", lambda pid: True)
    monkeypatch.setattr(recovery.socket, "gethostname", lambda: "builder")
    automation = _Interrupted(locked=True)
    stack = PulumiStack("otc", automation_stack=automation)
    monkeypatch.setattr(stack, "_cloud", lambda: (FakeCloud(), "otc"))
    with pytest.raises(RuntimeError, match="currently locked"):
        stack.run("up", lambda e: None, lambda line: None)
    assert automation.calls == []


def test_the_orphans_command_lists_read_only_and_deletes_only_when_asked(monkeypatch, capsys, tmp_path):
    from federation import __main__ as tool

    cloud = FakeCloud()
    found = [recovery.Orphan("server", "s-orphan", "otc-k3s-1", "BUILD"),
             recovery.Orphan("volume", "v-attached", "otc-k3s-2-data", "in-use", "attached")]
    monkeypatch.setattr(tool, "require_pulumi_cli", lambda: None)
    monkeypatch.setattr(tool.LazyStack, "orphans", lambda self: (cloud, found))
    (tmp_path / "otc.passphrase").write_text("otc's own")
    arguments = ["orphans", "otc", "--passphrases", str(tmp_path)]
    assert tool.main(arguments) == 1 and cloud.deleted == []
    listed = capsys.readouterr().out
    assert "server otc-k3s-1 s-orphan (BUILD)" in listed and "kept, attached" in listed
    assert tool.main([*arguments, "--delete"]) == 1  # the attached volume stays
    assert cloud.deleted == ["s-orphan"] and "deleted 1 of 2 orphan(s)" in capsys.readouterr().out


class _Failed(_Interrupted):
    """The last run failed (an API went away mid-request): no pending operation, and its history says so."""

    def __init__(self, result: str):
        super().__init__(locked=False)
        self.result = result

    def export_stack(self):
        return SimpleNamespace(deployment={"resources": [], "pending_operations": []})

    def history(self, page_size):
        return [SimpleNamespace(result=self.result)]


@pytest.mark.parametrize("result", ["failed", "succeeded"])
def test_after_a_failed_run_what_the_cloud_made_without_answering_is_deleted_and_after_a_good_one_nothing_is_looked_for(
        result, monkeypatch):
    cloud = FakeCloud(ports=[SimpleNamespace(id="p-lost", name="otc-k3s-1-port", status="DOWN", device_id="",
                                             device_owner="")])
    automation = _Failed(result)
    stack = PulumiStack("otc", automation_stack=automation)
    looked = []
    monkeypatch.setattr(stack, "_cloud", lambda: looked.append(1) or (cloud, "otc"))
    said = []
    stack.run("up", lambda e: None, said.append)
    assert [c[0] for c in automation.calls] == ["up"]  # no pending create, so no refresh
    if result == "failed":
        assert cloud.deleted == ["p-lost"]
        assert said[0] == "the last run of otc failed and left 1 resource(s) its state does not hold; deleting them"
    else:
        assert not looked and not cloud.deleted
