"""Preflight against the local OpenStack: a stack that passes, one deliberate failure per check, and
`join` refusing a cloud that fails preflight while another carries on."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.integration.test_lifecycle import API_READY_TIMEOUT, FORCED, LICENCE
from tests.test_trust import another_ca

MY_ADDRESS = "198.18.0.10"  # what preflight is told this machine's public address is
ADMIN_RANGE = "198.18.0.0/15"  # benchmarking range: not a documentation range
PREFIX = "crdb-federation:"
OTHER_PROJECT = "0123456789abcdef0123456789abcdef"


def _edit(project, stack: str, **values) -> None:
    """Changes keys of the overlaid stack file itself (None removes one), as an operator edits it."""
    path = project.directory / "stacks" / f"Pulumi.{stack}.yaml"
    document = yaml.safe_load(path.read_text())
    for key, value in values.items():
        if value is None:
            document["config"].pop(PREFIX + key, None)
        else:
            document["config"][PREFIX + key] = value
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def _preflight(project, *args: str, name: str = "preflight") -> tuple[object, dict[str, list[dict]]]:
    """Runs `python -m federation preflight`; returns the result and the findings by stack (also kept
    in <project>/<name>.json)."""
    path = project.directory / f"{name}.json"
    path.unlink(missing_ok=True)
    done = project.tool("preflight", "--my-address", MY_ADDRESS, "--json", str(path), *args, timeout=600)
    by_stack: dict[str, list[dict]] = {}
    for finding in json.loads(path.read_text()):
        by_stack.setdefault(finding["stack"], []).append(finding)
    return done, by_stack


@pytest.fixture(scope="module")
def broken(project):
    """One deliberate failure per stack (the seed is the one that passes), and the cloud things they need."""
    cloud = project.cloud.connect()
    tiny = cloud.network.create_network(name="tiny-public", is_router_external=True)
    cloud.network.create_subnet(network_id=tiny.id, cidr="192.0.0.0/29", ip_version=4, enable_dhcp=False,
                                allocation_pools=[{"start": "192.0.0.2", "end": "192.0.0.3"}])
    private = cloud.network.create_network(name="private-only")
    cloud.network.create_subnet(network_id=private.id, cidr="10.99.0.0/24", ip_version=4)
    # Another project's network, not shared (the admin may create one for any project ID).
    foreign = cloud.network.create_network(name="someone-elses", project_id=OTHER_PROJECT, is_shared=False)
    narrow = cloud.network.create_network(name="narrow", mtu=1300)  # wireguard leaves pods 1220
    cloud.network.create_subnet(network_id=narrow.id, cidr="198.19.7.0/24", ip_version=4)
    project.select("seed")  # exists, with no outputs yet: what a member's Seed check finds
    project.run("config", "set", "--secret", "crdb-federation:enterpriseLicense", LICENCE, stack="seed")
    _edit(project, "seed", adminCidrs=[ADMIN_RANGE], federationCidrs=[ADMIN_RANGE])
    _edit(project, "otc", adminCidrs=[ADMIN_RANGE], image="no-such-image")
    _edit(project, "huawei", adminCidrs=[ADMIN_RANGE], serverFlavor="m1.small")
    _edit(project, "suse", adminCidrs=[ADMIN_RANGE], externalNetwork="nowhere")
    _edit(project, "wind", adminCidrs=[ADMIN_RANGE], externalNetwork="tiny-public")
    _edit(project, "ibm", adminCidrs=[ADMIN_RANGE], existingNetwork="private-only")
    _edit(project, "redhat", adminCidrs=[ADMIN_RANGE], region="Nowhere")
    _edit(project, "rackspace", adminCidrs=[ADMIN_RANGE], existingNetwork="someone-elses")
    _edit(project, "vexxhost", adminCidrs=[ADMIN_RANGE], existingNetwork="narrow")
    yield cloud
    for network in (tiny, private, foreign, narrow):
        cloud.network.delete_network(network, ignore_missing=True)


@pytest.fixture(scope="module")
def every_stack(project, broken):
    done, findings = _preflight(project, name="preflight-every-stack")
    return done, findings


def test_preflight_exits_non_zero_with_findings_for_every_stack(every_stack, project):
    done, findings = every_stack
    assert done.returncode == 1, done.stdout + done.stderr
    assert set(findings) == {p.name[len("Pulumi."):-len(".yaml")] for p in (project.directory / "stacks").glob("*.yaml")}
    assert "preflight failed:" in done.stdout


def test_the_seed_passes(every_stack):
    findings = every_stack[1]["seed"]
    assert not [f for f in findings if f["status"] == "fail"], findings
    assert {"Access", "Image", "Flavors", "Quotas", "External network", "Admin range", "MTU"} <= {f["check"] for f in findings}


@pytest.mark.parametrize("stack, check, found", [
    ("otc", "Image", "no active image named 'no-such-image'"),
    ("huawei", "Flavors", "m1.small: 1 vCPU, 2048 MiB"),
    ("suse", "External network", "no network 'nowhere'"),
    ("wind", "External network", "'tiny-public' has 2 free address(es), 4 needed"),
    ("ibm", "Existing network", "'private-only' has only private subnets 10.99.0.0/24"),
    ("redhat", "Access", "Region Nowhere is not a valid region name"),
    ("rackspace", "Existing network", "'someone-elses' is neither shared nor this project's"),
    ("vexxhost", "MTU", "network MTU 1300, pods get 1220 (wireguard-native)"),
    # canonical keeps the shipped placeholders, and its seed has no outputs.
    ("canonical", "Admin range", f"{MY_ADDRESS} is outside 100.64.0.0/10"),
    ("canonical", "Federation range", "100.64.0.0/10 is not public"),
    ("canonical", "Seed", "has no joinAddresses/caCertificate/clientCaCertificate/federationJoin output(s)"),
])
def test_each_deliberate_failure_names_the_check_and_what_was_found(every_stack, stack, check, found):
    findings = every_stack[1][stack]
    failed = [f for f in findings if f["check"] == check and f["status"] == "fail"]
    assert any(found in f["found"] for f in failed), findings
    assert all(f["todo"] and f["setting"] for f in failed)


def test_an_exhausted_quota_fails_the_quota_check(project, broken):
    cloud = broken
    project_id = cloud.current_project_id
    used = cloud.compute.get_limits().absolute.instances_used
    cloud.set_compute_quotas(project_id, instances=used + 1)
    try:
        done, findings = _preflight(project, "seed")
    finally:
        cloud.set_compute_quotas(project_id, instances=-1)
    assert done.returncode == 1
    failed = [f["found"] for f in findings["seed"] if f["check"] == "Quotas" and f["status"] == "fail"]
    assert failed == [f"instances: need 3, free 1 (limit {used + 1}, used {used})"], findings["seed"]


def test_join_refuses_a_cloud_that_fails_preflight_while_another_carries_on(project, broken, standin):
    # zte passes preflight: its own ranges, and explicit join addresses and CA certificates instead of a seed.
    _edit(project, "zte", adminCidrs=[ADMIN_RANGE], federationCidrs=[ADMIN_RANGE], seedStack=None,
          joinAddresses=["198.19.0.200:26257"], apiReadyTimeout=API_READY_TIMEOUT)
    project.select("zte")
    for key in ("caCertificate", "clientCaCertificate"):
        project.run("config", "set", f"crdb-federation:{key}", stack="zte", stdin=another_ca("integration federation CA")[0])
    runs = project.directory / "runs-preflight"
    try:
        done = project.tool("join", "otc", "zte", "--no-dashboard", "--my-address", MY_ADDRESS, "--runs-dir", str(runs))
        [timeline] = list(runs.glob("*-join/*.json"))
        clouds = {c["stack"]: c for c in json.loads(timeline.read_text())["clouds"]}
        assert clouds["otc"]["status"] == "failed" and "preflight: Image" in clouds["otc"]["error"], clouds["otc"]
        assert not (timeline.parent / "logs" / "otc.log").exists()  # never started
        # zte ran for real and completed: built, its nodes waiting for certificates it was never given.
        assert clouds["zte"]["status"] == "succeeded", clouds["zte"]
        assert done.returncode == 1
    finally:
        project.run("destroy", "--yes", "--skip-preview", stack="zte", check=False, env=FORCED)
