"""The federation tool without a Pulumi CLI: fake stacks emit real Automation API engine events."""

import json
import os
import subprocess
import sys
import time

import pytest
from rich.console import Console

from federation import timeline
from federation.dashboard import progress_table, summary_table
from federation.progress import CloudProgress, phase_of
from federation.runner import PulumiStack, Run, join, run_concurrently, server_urns, servers_in_error
from tests.harness import ROOT

from tests.fake_stacks import MEMBER_TYPES, FakeCli, FakeStack, event


@pytest.fixture(autouse=True)
def reset_counters():
    FakeStack.active = FakeStack.most_active = 0


def test_phase_of_resource_types():
    assert [phase_of(t) for t in MEMBER_TYPES] == [
        None, "network", "network", "network", "servers", "kubernetes", "kubernetes", "cockroachdb", None,
        "cockroachdb"]


def test_events_drive_phases_forward_and_joined_on_the_daemonset():
    progress = CloudProgress("otc")
    progress.start(0.0)
    seen = []
    for index, resource_type in enumerate(MEMBER_TYPES):
        progress.on_event(event("pre", resource_type), now=float(index))
        progress.on_event(event("outputs", resource_type), now=index + 0.5)
        seen.append(progress.phase)
    assert seen == ["", "network", "network", "network", "servers", "kubernetes", "kubernetes", "cockroachdb",
                    "cockroachdb", "joined"]
    assert progress.phases == {"network": 1.0, "servers": 4.0, "kubernetes": 5.0, "cockroachdb": 7.0, "joined": 9.5}
    assert progress.resources_done == progress.resources_started == len(MEMBER_TYPES)


def _render(table) -> str:
    console = Console(record=True, width=140)
    console.print(table)
    return console.export_text()


@pytest.mark.parametrize("operation, final, count", [("preview", "previewed", "6/6"), ("destroy", "destroyed", "2/2")])
def test_preview_and_destroy_never_claim_a_join(operation, final, count):
    progress = CloudProgress("otc", operation)
    progress.start(0.0)
    for index, resource_type in enumerate(MEMBER_TYPES):
        op = "delete" if operation == "destroy" else "create"
        progress.on_event(event("pre", resource_type, sequence=index, op=op), now=float(index))
        progress.on_event(event("outputs", resource_type, sequence=index, op=op), now=index + 0.5)
    # A preview also reports outputs of resources it never started (unchanged ones): they are not "done".
    for index, resource_type in enumerate(MEMBER_TYPES):
        progress.on_event(event("outputs", resource_type, sequence=100 + index, op="same"), now=20.0)
    assert progress.phase != "joined" and "joined" not in progress.phases
    assert progress.resources_done == progress.resources_started == len(MEMBER_TYPES)
    progress.finish(21.0)
    assert progress.phase == final
    text = _render(progress_table([progress], 22.0, "t"))
    assert f"{final} {count}" in text and "joined" not in text


def test_concurrency_is_bounded_and_real(tmp_path):
    stacks = [FakeStack(f"c{i}", duration=0.3) for i in range(6)]
    run = Run([s.name for s in stacks], "up", tmp_path / "logs")
    start = time.monotonic()
    run_concurrently(run, stacks, parallelism=3)
    elapsed = time.monotonic() - start
    assert FakeStack.most_active == 3
    assert 0.6 <= elapsed < 1.2  # two waves of 0.3 s, not six
    assert all(p.status == "succeeded" and p.phase == "joined" for p in run.progress.values())


def test_one_failure_does_not_stop_the_others(tmp_path):
    stacks = [FakeStack("good1", 0.1), FakeStack("bad", 0.1, fail_after=4), FakeStack("good2", 0.1)]
    run = Run([s.name for s in stacks], "up", tmp_path / "logs")
    run_concurrently(run, stacks, parallelism=3)
    status = {name: p.status for name, p in run.progress.items()}
    assert status == {"good1": "succeeded", "bad": "failed", "good2": "succeeded"}
    bad = run.progress["bad"]
    assert bad.phase == "servers"
    # The engine's diagnostic on the failing resource, not the Automation API's closing summary.
    assert bad.error == "error: openstack:compute/instance:Instance: quota exceeded\n  on cloud bad"
    assert len(bad.error.splitlines()) <= 5
    log = (tmp_path / "logs" / "bad.log").read_text()
    assert "openstack:compute/instance:Instance creating" in log and "RuntimeError" in log
    assert "DaemonSet creating" in (tmp_path / "logs" / "good1.log").read_text()


class LockedStack(FakeStack):
    """The CLI's refusal when another run holds the stack (pulumi v3.259.0 pkg/backend/diy/lock.go)."""

    def run(self, operation, on_event, on_output):
        raise RuntimeError(
            "code: 255\n stdout: \n stderr: error: the stack is currently locked by 1 lock(s). Either wait for the "
            "other process(es) to end or delete the lock file with `pulumi cancel`.\n  file:///state/.pulumi/locks/"
            "organization/crdb-federation/otc/5a3c.json: created by ops@laptop (pid 4242) at 2026-12-01T23:59:00Z\n")


def test_a_stack_another_run_holds_is_refused_naming_the_holder_not_failed(tmp_path):
    run = Run(["otc", "zte"], "up", tmp_path / "logs")
    run_concurrently(run, [LockedStack("otc"), FakeStack("zte", 0.05)], parallelism=2)
    otc = run.progress["otc"]
    assert (otc.status, run.progress["zte"].status) == ("refused", "succeeded")
    assert otc.error.startswith("another run holds this stack: file:///state/.pulumi/locks/organization/"
                                "crdb-federation/otc/5a3c.json: created by ops@laptop (pid 4242) at "
                                "2026-12-01T23:59:00Z. Nothing was started")
    console = Console(record=True, width=300, file=open(os.devnull, "w"))
    console.print(summary_table(run.snapshot()))
    shown = console.export_text()
    assert "refused" in shown and "ops@laptop (pid 4242)" in shown
    report = timeline.render_report(timeline.timeline("up", run.started_wall, run.snapshot()))
    assert 'data-status="refused"' in report


def test_join_brings_up_a_seed_that_is_not_up_first(tmp_path):
    seed = FakeStack("seed", 0.05)
    members = [FakeStack("a", 0.05), FakeStack("b", 0.05)]
    run = Run(["a", "b"], "up", tmp_path / "logs")
    join(run, seed, members, parallelism=4)
    assert list(run.progress) == ["seed", "a", "b"]
    assert run.progress["seed"].finished_at <= min(run.progress[m].started_at for m in ("a", "b"))
    assert all(p.status == "succeeded" for p in run.progress.values())


def test_join_skips_a_seed_that_is_up(tmp_path):
    seed = FakeStack("seed", outputs={"joinAddresses": ["192.0.2.1:26257"], "caCertificate": "ca"})
    run = Run(["a"], "up", tmp_path / "logs")
    join(run, seed, [FakeStack("a")], parallelism=4)
    assert seed.calls == [] and list(run.progress) == ["a"]


def test_join_does_not_start_members_when_the_seed_fails(tmp_path):
    seed, member = FakeStack("seed", fail_after=1), FakeStack("a")
    run = Run(["a"], "up", tmp_path / "logs")
    join(run, seed, [member], parallelism=4)
    assert member.calls == []
    assert run.progress["a"].status == "failed" and "seed stack 'seed' is not up" in run.progress["a"].error


class SigningSeed(FakeStack):
    """A seed whose `up` signs what it admitted: the members' outputs then say they are signed."""

    def __init__(self, members, **kwargs):
        super().__init__("seed", outputs={"joinAddresses": ["198.18.0.1:26257"], "caCertificate": "ca"}, **kwargs)
        self.members = members

    def run(self, operation, on_event, on_output):
        super().run(operation, on_event, on_output)
        for member in self.members:
            if member.outputs()["stack"] in getattr(self, "admitted", []):
                member._outputs["certificatesSigned"] = True


def waiting(name, **kwargs):
    return FakeStack(name, outputs={"stack": f"organization/crdb-federation/{name}", "certificatesSigned": False},
                     **kwargs)


def test_join_admits_the_members_that_wait_then_brings_them_up_again(tmp_path):
    members = [waiting("a", duration=0.02), waiting("b", duration=0.02)]
    seed = SigningSeed(members)
    run = Run(["a", "b"], "up", tmp_path / "logs")
    join(run, seed, members, parallelism=4)
    assert seed.admitted == ["organization/crdb-federation/a", "organization/crdb-federation/b"]
    assert seed.calls == ["up"] and [m.calls for m in members] == [["up", "up"], ["up", "up"]]
    # Each member's second run starts once the seed has signed; its elapsed time spans both, and the time
    # between them is time waiting for the seed.
    assert run.progress["seed"].finished_at <= min(run.progress[m].runs[1][0] for m in ("a", "b"))
    assert all(p.status == "succeeded" for p in run.progress.values())
    a = run.progress["a"]
    assert a.elapsed == pytest.approx(a.engine_seconds() + a.seed_wait_seconds())
    assert a.seed_wait_seconds() >= run.progress["seed"].engine_seconds() - 0.005


def test_a_member_whose_seed_does_not_sign_is_reported_failed(tmp_path):
    members = [waiting("a")]
    seed = SigningSeed(members, fail_after=2)
    run = Run(["a"], "up", tmp_path / "logs")
    join(run, seed, members, parallelism=4)
    assert members[0].calls == ["up"]
    assert run.progress["a"].status == "failed" and "the seed 'seed' did not sign" in run.progress["a"].error


def test_a_daemonset_not_awaited_means_waiting_for_the_seed_not_joined():
    progress = CloudProgress("otc")
    progress.start(0.0)
    data = {"sequence": 1, "timestamp": 0, "resOutputsEvent": {"metadata": {
        "op": "create", "urn": "urn:pulumi:s::p::kubernetes:apps/v1:DaemonSet::d", "type": "kubernetes:apps/v1:DaemonSet",
        "provider": "", "new": {"type": "kubernetes:apps/v1:DaemonSet", "urn": "u", "id": "d", "parent": "",
                                "provider": "", "inputs": {"metadata": {"annotations": {
                                    "pulumi.com/skipAwait": "true"}}}, "outputs": {}}}}}
    from pulumi.automation.events import EngineEvent
    progress.on_event(EngineEvent.from_json(data), now=1.0)
    progress.finish(2.0)
    assert progress.phase == "signing" and "joined" not in progress.phases


def test_members_with_explicit_join_and_ca_do_not_wait_for_the_seed(tmp_path):
    seed, member = FakeStack("seed", fail_after=1), FakeStack("a")
    run = Run(["a"], "up", tmp_path / "logs")
    join(run, seed, [member], parallelism=4, needs_seed=False)
    assert seed.calls == [] and member.calls == ["up"] and run.progress["a"].status == "succeeded"


def finished_run(tmp_path):
    stacks = [FakeStack("slow", 0.3), FakeStack("fast", 0.1), FakeStack("broken", 0.1, fail_after=5)]
    run = Run([s.name for s in stacks], "up", tmp_path / "logs")
    run_concurrently(run, stacks, parallelism=3)
    return run


def test_dashboard_and_summary(tmp_path):
    run = finished_run(tmp_path)
    console = Console(record=True, width=140)
    console.print(progress_table(run.snapshot(), run.now(), "join"))
    text = console.export_text()
    assert "slow" in text and "joined 6/6" in text and "10/10" in text and "kubernetes 3/6" in text
    console = Console(record=True, width=200)
    console.print(summary_table(run.snapshot()))
    summary = console.export_text()
    rows = [line for line in summary.splitlines() if line.split("│")[1:2] and line.split("│")[1].strip().isdigit()]
    assert [r.split("│")[2].strip() for r in rows] == ["fast", "slow", "broken"]
    assert "quota exceeded" in summary


def test_timeline_round_trips_as_json(tmp_path):
    run = finished_run(tmp_path)
    record = timeline.timeline("up", run.started_wall, run.snapshot())
    path = timeline.save(record, tmp_path)
    loaded = json.loads(path.read_text())
    assert loaded == record
    by_stack = {c["stack"]: c for c in loaded["clouds"]}
    assert by_stack["slow"]["elapsed"] > by_stack["fast"]["elapsed"]
    assert set(by_stack["fast"]["phases"]) == {"network", "servers", "kubernetes", "cockroachdb", "joined"}
    assert by_stack["broken"]["status"] == "failed"


CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)


def chromium(*args):
    assert CHROMIUM, "chromium is not installed; scripts/test.sh installs it"
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_shows_every_cloud_in_headless_chromium(tmp_path):
    from PIL import Image

    run = finished_run(tmp_path)
    record = timeline.timeline("up", run.started_wall, run.snapshot())
    page = tmp_path / "report.html"
    page.write_text(timeline.render_report(record))
    assert "http://" not in page.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
    dom = chromium("--dump-dom", page.as_uri()).stdout
    for stack in ("slow", "fast", "broken"):
        assert f'data-stack="{stack}"' in dom
    assert "2 of 3 succeeded" in dom
    assert dom.count('class="joined"') == 2 and dom.count('class="failed"') == 1
    shot = tmp_path / "report.png"
    chromium("--window-size=1000,400", f"--screenshot={shot}", page.as_uri())
    image = Image.open(shot).convert("RGB")
    colours = {colour for _, colour in image.getcolors(maxcolors=1_000_000)}
    for hex_colour in (*timeline.PHASE_COLOURS.values(), timeline.FAILED_COLOUR):
        rgb = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
        assert rgb in colours, f"{hex_colour} not drawn"


def test_cli_without_pulumi_says_so_without_traceback(tmp_path):
    env = {"PATH": os.path.dirname(sys.executable), "HOME": str(tmp_path)}
    for args in (["join"], ["preview", "otc"], ["status"]):
        result = subprocess.run([sys.executable, "-m", "federation", *args], cwd=ROOT, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 2, args
        assert "Pulumi CLI is not installed" in result.stderr and "Traceback" not in result.stderr


def test_cli_refuses_a_plain_destroy_and_removing_the_seed(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "federation", "destroy", "otc"], cwd=ROOT,
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "python -m federation remove otc" in result.stderr
    assert "decommissions" in result.stderr
    seed = subprocess.run([sys.executable, "-m", "federation", "remove", "seed", "--yes"], cwd=ROOT,
                          capture_output=True, text=True, env=env)
    assert seed.returncode == 2 and "not removed from here" in seed.stderr


def test_cli_report_command(tmp_path):
    run = finished_run(tmp_path)
    path = timeline.save(timeline.timeline("up", run.started_wall, run.snapshot()), tmp_path)
    result = subprocess.run([sys.executable, "-m", "federation", "report", str(path)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'data-stack="slow"' in path.with_suffix(".html").read_text()


# ------------------------------------------------------------------------------------------- healing
SERVER = "openstack:compute/instance:Instance"


def _resource(name: str, kind: str = SERVER, **fields) -> dict:
    return {"urn": f"urn:pulumi:canonical::crdb-federation::{kind}::{name}", "type": kind, **fields}


def _without_sweep(said: list[str]) -> list[str]:
    """What a run said, less the recovery sweep's word that it does not run here (no file backend, or no cloud:
    tests/test_recovery.py covers the sweep)."""
    sweep = ("not looking for what an interrupted run left", "could not look for what an earlier run left")
    return [line for line in said if not any(words in line for words in sweep)]


class _AutomationStack:
    """The Automation API stack as PulumiStack uses it: state before and after a refresh, and the calls."""

    def __init__(self, before: list[dict], after: list[dict]):
        self.states = [before, after]
        self.calls: list[tuple[str, dict]] = []
        self.workspace = FakeCli(self)

    def export_stack(self):
        resources = self.states[0] if not any(c[0] == "refresh" for c in self.calls) else self.states[1]
        return type("Deployment", (), {"deployment": {"resources": resources}})()

    def refresh(self, **kwargs):
        self.calls.append(("refresh", kwargs))

    def up(self, **kwargs):
        self.calls.append(("up", kwargs))


def test_servers_in_error_are_those_whose_create_failed_or_that_read_back_as_error():
    deployment = {"resources": [
        _resource("k3s-0", outputs={"powerState": "active"}),
        _resource("k3s-1", initErrors=["Error waiting for instance (x) to become ready"]),
        _resource("k3s-2", outputs={"powerState": "error"}),
        # Nova stopped answering while the provider waited: the server runs, and keeps its ID.
        _resource("k3s-3", initErrors=["Error waiting for instance (x) to become ready"],
                  outputs={"powerState": "active"}),
        _resource("port", kind="openstack:networking/port:Port", outputs={"powerState": "error"}),
    ]}
    assert [u.rsplit("::", 1)[1] for u in servers_in_error(deployment)] == ["k3s-1", "k3s-2"]
    assert len(server_urns(deployment)) == 4


def test_up_heals_a_server_in_error_by_deleting_it_in_the_cloud_and_forgetting_it_and_its_attachment():
    healthy, broken = _resource("k3s-0", id="id-0"), _resource("k3s-1", id="id-1")
    attach = "openstack:compute/volumeAttach:VolumeAttach"
    attached = _resource("k3s-1-data-attach", kind=attach, dependencies=[broken["urn"]])
    untouched = _resource("k3s-0-data-attach", kind=attach, dependencies=[healthy["urn"]])
    automation = _AutomationStack([healthy, broken, attached, untouched],
                                  [healthy, {**broken, "outputs": {"powerState": "error"}}, attached, untouched])
    said, deleted = [], []
    PulumiStack("canonical", automation_stack=automation, delete_server=deleted.append).run(
        "up", lambda e: None, said.append)
    (refresh, refreshed), (forget, forgotten), (up, upped) = automation.calls
    assert refresh == "refresh" and refreshed["target"] == [healthy["urn"], broken["urn"]]
    # Nova refuses to detach from a server in ERROR: the server goes first, in the cloud, detaching it.
    assert deleted == ["id-1"]
    assert forget == "refresh" and forgotten["target"] == [broken["urn"], attached["urn"]]
    assert up == "up" and "replace" not in upped
    assert _without_sweep(said) == [f"healing 1 server(s) in ERROR: deleting them in the cloud, then creating them again: "
                    f"{broken['urn']}"]


def test_up_of_a_healthy_or_empty_stack_replaces_nothing():
    for resources in ([], [_resource("k3s-0", outputs={"powerState": "active"})]):
        automation = _AutomationStack(resources, resources)
        PulumiStack("canonical", automation_stack=automation).run("up", lambda e: None, lambda line: None)
        assert "replace" not in automation.calls[-1][1]
        assert [c[0] for c in automation.calls] == (["refresh", "up"] if resources else ["up"])


def test_the_checks_before_an_up_run_once_ahead_of_it_and_again_only_after_a_failure():
    healthy = [_resource("k3s-0", outputs={"powerState": "active"})]
    automation = _AutomationStack(healthy, healthy)
    stack = PulumiStack("seed", automation_stack=automation)
    stack.prepare(lambda line: None)
    stack.prepare(lambda line: None)  # done once
    stack.run("up", lambda e: None, lambda line: None)
    stack.run("up", lambda e: None, lambda line: None)  # its own `up` just succeeded: nothing to check
    assert [c[0] for c in automation.calls] == ["refresh", "up", "up"]

    def fails(**kwargs):
        automation.calls.append(("up", kwargs))
        raise RuntimeError("update failed")

    automation.up = fails
    with pytest.raises(RuntimeError):
        stack.run("up", lambda e: None, lambda line: None)
    automation.calls.clear()
    stack.prepare(lambda line: None)  # a failed `up` is checked again before the next
    assert [c[0] for c in automation.calls] == ["refresh"]


def test_two_joins_admitting_members_on_one_seed_lose_no_entry(tmp_path, monkeypatch):
    """Each reads the members, then writes its own after them (the CLI writes the stack file in place): without
    taking turns, the second write lands on the first's index and one entry is lost."""
    import threading

    from pulumi.automation import ConfigValue

    monkeypatch.setattr("federation.locks.STATE_DIRECTORY", tmp_path)
    written: dict[str, str] = {}
    automation = _AutomationStack([], [])

    def read():
        time.sleep(0.05)  # a CLI call
        listed = [written[k] for k in sorted(written, key=lambda k: int(k.split("[")[1][:-1]))]
        return {"crdb-federation:members": ConfigValue(json.dumps(listed))} if listed else {}

    def write(config, path):
        time.sleep(0.05)
        written.update({k: v.value for k, v in config.items()})

    automation.get_all_config, automation.set_all_config = read, write
    seed = PulumiStack("seed", automation_stack=automation)
    joins = [threading.Thread(target=seed.add_members, args=([stack],)) for stack in ("o/p/a", "o/p/b")]
    for thread in joins:
        thread.start()
    for thread in joins:
        thread.join()
    assert sorted(written.values()) == ["o/p/a", "o/p/b"]


def test_the_seed_admits_a_whole_batch_in_one_config_call_after_those_it_lists():
    from pulumi.automation import ConfigValue

    automation = _AutomationStack([], [])
    automation.get_all_config = lambda: {"crdb-federation:members": ConfigValue(json.dumps(["o/p/a"]))}
    automation.set_all_config = lambda config, path: automation.calls.append(
        ("set-all", {"config": {k: v.value for k, v in config.items()}, "path": path}))
    added = PulumiStack("seed", automation_stack=automation).add_members(["o/p/a", "o/p/b", "o/p/c", "o/p/b"])
    assert added == ["o/p/b", "o/p/c"]
    assert automation.calls == [("set-all", {"config": {"crdb-federation:members[1]": "o/p/b",
                                                        "crdb-federation:members[2]": "o/p/c"}, "path": True})]


def test_preview_and_destroy_never_refresh_or_replace():
    automation = _AutomationStack([_resource("k3s-0", initErrors=["x"])], [])
    automation.preview = automation.destroy = lambda **kwargs: automation.calls.append(("other", kwargs))
    for operation in ("preview", "destroy"):
        PulumiStack("canonical", automation_stack=automation).run(operation, lambda e: None, lambda line: None)
    assert [c[0] for c in automation.calls] == ["other", "other"]
    assert not any("replace" in c[1] for c in automation.calls)


def test_a_server_in_error_whose_delete_outlasts_the_providers_wait_is_retried_once():
    automation = _AutomationStack([], [])
    failures = [RuntimeError("Error waiting for instance (x) to Delete:  unexpected state 'ERROR', "
                             "wanted target 'DELETED, SOFT_DELETED'. last error: %!s(<nil>)")]

    def destroy(**kwargs):
        automation.calls.append(("destroy", kwargs))
        if failures:
            raise failures.pop()

    automation.destroy = destroy
    stack = PulumiStack("canonical", automation_stack=automation)
    stack.retry_delay = 0
    said: list[str] = []
    stack.run("destroy", lambda e: None, said.append)
    assert [c[0] for c in automation.calls] == ["destroy", "destroy"]
    assert _without_sweep(said) == ["a server in ERROR was still being deleted; retrying in 0s"]


def test_other_failures_are_not_retried():
    automation = _AutomationStack([], [])

    def up(**kwargs):
        automation.calls.append(("up", kwargs))
        raise RuntimeError("Error creating OpenStack server: 409 Port is still in use")

    automation.up = up
    with pytest.raises(RuntimeError, match="still in use"):
        PulumiStack("canonical", automation_stack=automation).run("up", lambda e: None, lambda line: None)
    assert len(automation.calls) == 1


def test_join_does_not_start_a_member_that_fails_preflight_and_keeps_the_others(tmp_path, monkeypatch):
    from federation import __main__ as tool, preflight

    findings = [preflight.Finding("otc", "Image", preflight.FAIL, "image", "no active image named 'x'", "upload it"),
                preflight.Finding("zte", "Image", preflight.PASS, "image", "ubuntu-24.04 = 1234")]
    monkeypatch.setattr(preflight, "run_preflight", lambda stacks, root, my_address, environments, passphrases:
                        findings)
    run = Run(["otc", "zte"], "up", tmp_path / "logs")
    kept = tool.checked_members(run, ["otc", "zte"], None, Console(file=open(os.devnull, "w")), {}, tmp_path)
    assert kept == ["zte"]
    otc = run.progress["otc"]
    assert otc.status == "failed" and otc.error.startswith("preflight: Image: image: no active image named 'x'")
    assert run.progress["zte"].status == "waiting"


def test_preflight_command_prints_the_table_writes_json_and_exits_1_on_a_failure(tmp_path, monkeypatch, capsys):
    from federation import __main__ as tool, preflight

    findings = [preflight.Finding("otc", "Flavors", preflight.FAIL, "serverFlavor", "m1.small: 1 vCPU, 2048 MiB",
                                  "a flavor with at least 3 vCPU and 5120 MiB")]
    monkeypatch.setattr(preflight, "run_preflight", lambda stacks, root, my_address, parallel, environments, passphrases: findings)
    (tmp_path / "otc.passphrase").write_text("otc's own")
    (tmp_path / "otc.passphrase").chmod(0o600)
    code = tool.main(["preflight", "otc", "--my-address", "198.18.0.10", "--json", str(tmp_path / "f.json"),
                      "--passphrases", str(tmp_path)])
    assert code == 1
    assert json.loads((tmp_path / "f.json").read_text())[0]["found"] == "m1.small: 1 vCPU, 2048 MiB"
    assert "preflight failed: otc" in capsys.readouterr().out


def test_a_passphrase_file_others_can_read_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    from federation import __main__ as tool

    monkeypatch.setattr(tool, "require_pulumi_cli", lambda: None)
    (tmp_path / "otc.passphrase").write_text("otc's own")
    (tmp_path / "otc.passphrase").chmod(0o644)
    assert tool.main(["orphans", "otc", "--passphrases", str(tmp_path)]) != 0
    said = capsys.readouterr()
    assert f"{tmp_path / 'otc.passphrase'} has mode 0644: others on this machine can read the stack's passphrase; " \
           f"chmod 600 {tmp_path / 'otc.passphrase'}" in said.out + said.err


def test_every_stack_the_tool_runs_needs_a_secrets_provider_of_its_own(tmp_path, monkeypatch, capsys):
    """One passphrase for every stack hands each the others' secrets (a StackReference keeps them decrypted)."""
    from federation import __main__ as tool, secrets

    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "one for all")
    monkeypatch.setattr(tool, "require_pulumi_cli", lambda: None)
    code = tool.main(["preview", "otc", "zte", "--passphrases", str(tmp_path), "--no-dashboard"])
    error = capsys.readouterr().err
    assert code == 2 and f"otc ({tmp_path}/otc.passphrase), zte ({tmp_path}/zte.passphrase)" in error
    (tmp_path / "otc.passphrase").write_text("otc's own")
    (tmp_path / "otc.passphrase").chmod(0o600)
    assert secrets.stack_environments(["otc", "zte"], tmp_path, one_passphrase=False) == (
        {"otc": {"PULUMI_CONFIG_PASSPHRASE_FILE": str(tmp_path / "otc.passphrase")}}, ["zte"])
    # A demo run by one operator says so explicitly.
    assert secrets.stack_environments(["otc", "zte"], tmp_path / "none", one_passphrase=True) == (
        {"otc": {}, "zte": {}}, [])


def test_preflight_reports_a_stack_without_a_secrets_provider_of_its_own_as_that_stacks_failure(
        tmp_path, monkeypatch):
    from federation import __main__ as tool, preflight

    seen = {}
    monkeypatch.setattr(preflight, "run_preflight", lambda stacks, root, my_address, parallel, environments,
                        passphrases: seen.update(environments=environments, passphrases=passphrases) or [])
    (tmp_path / "otc.passphrase").write_text("otc's own")
    (tmp_path / "otc.passphrase").chmod(0o600)
    assert tool.main(["preflight", "otc", "zte", "--my-address", "198.18.0.10", "--passphrases", str(tmp_path)]) == 0
    assert seen == {"environments": {"otc": {"PULUMI_CONFIG_PASSPHRASE_FILE": str(tmp_path / "otc.passphrase")}},
                    "passphrases": tmp_path}
    [finding] = preflight.secrets_findings("zte", preflight.stack_settings("zte", tool.ROOT), lambda _: [],
                                           unkeyed=tmp_path / "zte.passphrase")
    assert finding.status == preflight.FAIL and finding.found == f"none of its own: no {tmp_path}/zte.passphrase"


def test_join_leaves_out_a_member_without_a_secrets_provider_of_its_own_and_needs_the_seeds(
        tmp_path, monkeypatch, capsys):
    from federation import __main__ as tool

    monkeypatch.setattr(tool, "require_pulumi_cli", lambda: None)
    started = {}
    monkeypatch.setattr(tool, "orchestrate", lambda run, work, dashboard, console: started.update(run=run) or 0)
    arguments = ["join", "otc", "zte", "--skip-preflight", "--no-dashboard", "--passphrases", str(tmp_path),
                 "--runs-dir", str(tmp_path / "runs")]
    (tmp_path / "otc.passphrase").write_text("otc's own")
    (tmp_path / "otc.passphrase").chmod(0o600)
    assert tool.main(arguments) == 2 and f"seed ({tmp_path}/seed.passphrase)" in capsys.readouterr().err
    (tmp_path / "seed.passphrase").write_text("the seed's own")
    (tmp_path / "seed.passphrase").chmod(0o600)
    assert tool.main(arguments) == 0
    progress = started["run"].progress
    assert progress["otc"].status == "waiting"
    assert progress["zte"].status == "failed" and f"zte ({tmp_path}/zte.passphrase)" in progress["zte"].error


def test_join_leaves_out_a_member_whose_stack_file_the_cli_would_refuse(tmp_path, monkeypatch):
    from federation import __main__ as tool, stack_config

    monkeypatch.setattr(tool, "require_pulumi_cli", lambda: None)
    started = {}
    monkeypatch.setattr(tool, "orchestrate", lambda run, work, dashboard, console: started.update(run=run) or 0)
    resolve = stack_config.resolve

    def broken_zte(stack, root=stack_config.ROOT):
        if stack == "zte":
            raise stack_config.StackConfigError("Pulumi.zte.yaml: expected a mapping whose config: is a mapping")
        return resolve(stack, root)

    monkeypatch.setattr(stack_config, "resolve", broken_zte)
    for stack in ("seed", "otc"):
        (tmp_path / f"{stack}.passphrase").write_text(f"{stack}'s own")
        (tmp_path / f"{stack}.passphrase").chmod(0o600)
    assert tool.main(["join", "otc", "zte", "--skip-preflight", "--no-dashboard", "--passphrases", str(tmp_path),
                      "--runs-dir", str(tmp_path / "runs")]) == 0
    progress = started["run"].progress
    assert progress["otc"].status == "waiting"
    assert progress["zte"].status == "failed" and progress["zte"].error.startswith("Pulumi.zte.yaml: expected")


def test_the_report_marks_when_pods_were_ready_not_when_a_later_up_ended():
    """Signed early, a member's pods are Ready in its first `up`; the converging second `up` ends later. The
    report's dot, label and table give the join time a person looks for; the table keeps the whole run's too."""
    cloud = {"stack": "zte", "status": "succeeded", "operation": "up", "started_at": 2.5, "finished_at": 272.9,
             "elapsed": 270.4, "phases": {"network": 24.5, "servers": 24.6, "kubernetes": 56.0,
                                          "cockroachdb": 137.9, "joined": 183.6}}
    report = timeline.render_report({"operation": "up", "started": "2026-12-02T14:26:42+00:00", "clouds": [cloud]})
    assert ">joined 181.1s<" in report and "<td>181.1</td><td>270.4</td>" in report
    assert "<th>joined after s</th><th>whole run s</th>" in report
    assert report.count('class="joined"') == 1
