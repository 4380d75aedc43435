"""A cloud that stops answering or runs out of quota mid-run (federation/faults.py): recognised in the engine's
error, said in the operator's words, with the headroom read from the cloud."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from federation import faults
from federation.runner import PulumiStack
from tests.test_recovery import FakeCloud, _server

# The engine's errors as the openstack provider (gophercloud) words them; the integration tier
# (tests/integration/test_faults.py) prints the real ones.
NEUTRON_DOWN = ('creating urn:pulumi:huawei::crdb-federation::openstack:networking/port:Port::huawei-k3s-1-port: '
                '1 error occurred:\n\t* Error creating OpenStack Neutron port: Post '
                '"http://127.0.0.1:9696/v2.0/ports": OpenStack connection error, retries exhausted. Aborting. Last '
                'error was: dial tcp 127.0.0.1:9696: connect: connection refused')
NOVA_503 = ("Error waiting for instance (5b1f) to become ready: Expected HTTP response code [200 204 300] when "
            "accessing [GET http://127.0.0.1:8774/v2.1/servers/5b1f], but got 503 instead")
FIP_QUOTA = ('Expected HTTP response code [201 202] when accessing [POST http://127.0.0.1:9696/v2.0/floatingips], '
             'but got 409 instead: {"NeutronError": {"type": "OverQuota", "message": "Quota exceeded for resources: '
             '[\'floatingip\'].", "detail": ""}}')
NOVA_QUOTA = "Quota exceeded for instances: Requested 1, but already used 10 of 10 instances"
CINDER_QUOTA = "VolumeLimitExceeded: Maximum number of volumes allowed (4) exceeded for quota 'volumes'."
CATALOG = [
    {"type": "compute", "name": "nova", "endpoints": [{"url": "http://127.0.0.1:8774/v2.1", "interface": "public"}]},
    {"type": "network", "name": "neutron", "endpoints": [{"url": "http://127.0.0.1:9696", "interface": "public"}]},
]


def test_an_api_that_did_not_answer_is_found_in_the_engines_error_with_its_url():
    assert faults.api_outage(NEUTRON_DOWN) == faults.ApiOutage(
        "http://127.0.0.1:9696/v2.0/ports", "dial tcp 127.0.0.1:9696: connect: connection refused")
    assert faults.api_outage(NOVA_503) == faults.ApiOutage("http://127.0.0.1:8774/v2.1/servers/5b1f", "HTTP 503")
    # A refusal with an answer is no outage: a quota, a 404, a bad request.
    assert faults.api_outage(FIP_QUOTA) is None
    assert faults.api_outage("error: the stack is currently locked by 1 lock(s)") is None


def test_the_outage_is_named_after_the_catalogs_service_or_its_address_when_the_catalog_is_gone():
    outage = faults.api_outage(NEUTRON_DOWN)
    assert faults.service_of(outage.url, CATALOG) == ("network", "neutron")
    message = faults.outage_message("huawei", outage, faults.service_of(outage.url, CATALOG))
    assert message.startswith("huawei: the cloud's network API (Neutron) did not answer at "
                              "http://127.0.0.1:9696 (dial tcp 127.0.0.1:9696: connect: connection refused)")
    assert "run `python -m federation join huawei`" in message
    assert faults.outage_message("huawei", outage, None).startswith("huawei: a cloud API did not answer at "
                                                                     "http://127.0.0.1:9696")


def test_each_services_words_for_an_exhausted_quota_name_the_resource():
    assert faults.quotas_exceeded(FIP_QUOTA) == ["floatingip"]
    assert faults.quotas_exceeded(NOVA_QUOTA) == ["instances"]
    assert faults.quotas_exceeded(CINDER_QUOTA) == ["volumes"]
    assert faults.quotas_exceeded("Quota exceeded for resources: ['port', 'security_group']") == [
        "ports", "security_group"]
    assert faults.quotas_exceeded(NEUTRON_DOWN) == []


def test_the_headroom_counts_what_the_stack_already_holds():
    # 2 floating IPs allowed, both in use, one of them this stack's; it needs 3: one short of the 3 it still makes.
    message = faults.quota_message("huawei", [faults.Headroom("floatingip", limit=2, used=2, own=1, need=3)])
    assert ("floatingip: this stack needs 3 in all and holds 1; the quota is 2 with 2 in use, so it is 2 short: "
            "ask the cloud's operator to raise the floatingip quota by 2 (to 4)") in message
    assert faults.Headroom("floatingip", limit=-1, used=9, own=0, need=3).short < 0  # unlimited
    assert "is enough now" in faults.quota_message("x", [faults.Headroom("ports", 10, 5, 2, 5)])


class QuotaCloud(FakeCloud):
    """FakeCloud with the quota and flavor reads preflight makes."""

    def __init__(self, limits, **resources):
        super().__init__(**resources)
        self.current_project_id = "p"
        flavor = SimpleNamespace(name="m1.large", vcpus=4, ram=8192, disk=40)
        self.compute.find_flavor = lambda name, ignore_missing: flavor
        self.compute.get_limits = lambda: SimpleNamespace(absolute=SimpleNamespace(
            instances=10, instances_used=2, total_cores=40, total_cores_used=8, total_ram=81920,
            total_ram_used=16384, server_groups=10, server_groups_used=1, server_group_members=10))
        self.block_storage.get_quota_set = lambda project, usage: SimpleNamespace(
            volumes=20, gigabytes=1000, usage={"volumes": 4, "gigabytes": 100})
        self.network.get_quota = lambda project, details: SimpleNamespace(**{
            field: {"limit": limits.get(field, 50), "used": 1} for field in (
                "ports", "floating_ips", "networks", "subnets", "routers", "security_groups", "security_group_rules")})


class _FailingUp:
    def __init__(self, error):
        self.error = error

    def export_stack(self):
        return SimpleNamespace(deployment={"resources": []})

    def up(self, **kwargs):
        raise RuntimeError(self.error)


def test_an_up_the_quota_stopped_says_which_quota_and_by_how_much_to_raise_it(monkeypatch):
    # huawei (3 nodes, floating IPs) made one floating IP; the project allows 1 and has 1 in use.
    cloud = QuotaCloud({"floating_ips": 1}, servers=[_server("s0", "huawei-k3s-0", status="ACTIVE")],
                       volumes=[SimpleNamespace(id="v0", name="huawei-k3s-0-data", metadata={}, size=20,
                                                attachments=[{"server_id": "s0"}])],
                       ips=[SimpleNamespace(id="f0", description="crdb-federation huawei-k3s-0", port_id="p0")])
    stack = PulumiStack("huawei", automation_stack=_FailingUp(FIP_QUOTA))
    monkeypatch.setattr(stack, "_cloud", lambda: (cloud, "huawei"))
    said = []
    with pytest.raises(faults.CloudFault) as raised:
        stack.run("up", lambda e: None, said.append)
    assert str(raised.value) == said[-1]
    assert ("floatingip: this stack needs 3 in all and holds 1; the quota is 1 with 1 in use, so it is 2 short: "
            "ask the cloud's operator to raise the floatingip quota by 2 (to 3)") in str(raised.value)
    assert FIP_QUOTA in str(raised.value.__cause__)  # the engine's own words stay, as its cause, in the log


def test_an_up_an_outage_stopped_names_the_service_and_one_that_failed_otherwise_is_left_as_it_was(monkeypatch):
    class Catalogued(FakeCloud):
        session = SimpleNamespace(auth=SimpleNamespace(get_access=lambda session: SimpleNamespace(
            service_catalog=SimpleNamespace(catalog=CATALOG))))

    stack = PulumiStack("huawei", automation_stack=_FailingUp(NEUTRON_DOWN))
    monkeypatch.setattr(stack, "_cloud", lambda: (Catalogued(), "huawei"))
    with pytest.raises(faults.CloudFault, match=r"network API \(Neutron\) did not answer"):
        stack.run("up", lambda e: None, lambda line: None)
    other = PulumiStack("huawei", automation_stack=_FailingUp("error: something else"))
    with pytest.raises(RuntimeError, match="something else") as raised:
        other.run("up", lambda e: None, lambda line: None)
    assert not isinstance(raised.value, faults.CloudFault)


def test_the_dashboard_shows_the_operators_words_for_a_cloud_fault():
    from federation.progress import CloudProgress

    progress = CloudProgress("huawei")
    progress.diagnostics.append(("urn:…:Port::huawei-k3s-1-port", "bare provider error"))
    progress.finish(1.0, faults.CloudFault("huawei: the cloud's network API (Neutron) did not answer"))
    assert (progress.status, progress.error) == ("failed", "huawei: the cloud's network API (Neutron) did not answer")


def test_a_seed_stack_the_backend_does_not_have_is_named_with_what_to_do():
    # The engine's words, as tests/integration/test_faults.py saw them on v3.259.0 with the seed stack absent.
    engine = ('pulumi:pulumi:StackReference organization/crdb-federation/half-seed  error: Preview failed: unknown '
              'stack "organization/crdb-federation/half-seed"')
    message = faults.missing_stack_message("vmware", engine)
    assert message.startswith("vmware: the stack organization/crdb-federation/half-seed that it reads "
                              "(crdb-federation:seedStack) does not exist in this state backend, so the run stopped "
                              "(what it had made is in the stack's state; the next run completes it)")
    assert faults.missing_stack_message("vmware", NEUTRON_DOWN) is None
