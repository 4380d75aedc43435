"""A cloud that stops answering or runs out of quota mid-run (federation/faults.py): recognised in the engine's
error, said in the operator's words, with the headroom read from the cloud."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from federation import faults, runner
from federation.runner import PulumiStack
from tests.fake_stacks import FakeCli
from tests.test_recovery import PROJECT, FakeCloud, _server

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
        self.workspace = FakeCli(self)

    def export_stack(self):
        return SimpleNamespace(deployment={"resources": []})

    def up(self, **kwargs):
        raise RuntimeError(self.error)


def test_an_up_the_quota_stopped_says_which_quota_and_by_how_much_to_raise_it(monkeypatch):
    # huawei (3 nodes, floating IPs) made one floating IP; the project allows 1 and has 1 in use.
    cloud = QuotaCloud({"floating_ips": 1}, servers=[_server("s0", "huawei-k3s-0", status="ACTIVE")],
                       volumes=[SimpleNamespace(id="v0", name="huawei-k3s-0-data", metadata={}, size=20,
                                                attachments=[{"server_id": "s0"}], project_id=PROJECT)],
                       ips=[SimpleNamespace(id="f0", description="crdb-federation huawei-k3s-0", port_id="p0",
                                            project_id=PROJECT)])
    stack = PulumiStack("huawei", automation_stack=_FailingUp(FIP_QUOTA))
    stack._checked = True  # the recovery an up starts with is tests/test_recovery.py's
    monkeypatch.setattr(runner, "stack_cloud", lambda name, work_dir=None: cloud)
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
    stack._checked = other_checked = True  # the recovery an up starts with is tests/test_recovery.py's
    monkeypatch.setattr(runner, "stack_cloud", lambda name, work_dir=None: Catalogued())
    with pytest.raises(faults.CloudFault, match=r"network API \(Neutron\) did not answer"):
        stack.run("up", lambda e: None, lambda line: None)
    other = PulumiStack("huawei", automation_stack=_FailingUp("error: something else"))
    other._checked = other_checked
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
    message = faults.missing_stack_message("vmware", engine, faults.References(
        seed_stack="organization/crdb-federation/half-seed"))
    assert message.startswith("vmware: the stack organization/crdb-federation/half-seed that it reads "
                              "(crdb-federation:seedStack) does not exist in this state backend, so the run stopped "
                              "(what it had made is in the stack's state; the next run completes it)")
    assert faults.missing_stack_message("vmware", NEUTRON_DOWN) is None


# ---------------------------------------------------------------------------------------------- issue 27, row 7
# pulumi-kubernetes v4.32.0 provider/pkg/provider/provider.go: Configure marks the cluster unreachable with
# "unable to load schema information from the API server: %v" (getResources, client-go's GET /openapi/v2 with its
# 32 s timeout) and Create then fails with "configured Kubernetes cluster is unreachable: %s".
KUBE_UNREACHABLE = ('  kubernetes:core/v1:Namespace (huawei-cockroachdb):\n    error: configured Kubernetes cluster is '
                    'unreachable: unable to load schema information from the API server: Get '
                    '"https://203.0.113.10:6443/openapi/v2?timeout=32s": dial tcp 203.0.113.10:6443: i/o timeout')


def test_a_kubernetes_api_this_machine_cannot_reach_is_no_cloud_outage_and_names_adminCidrs():
    outage = faults.api_outage(KUBE_UNREACHABLE)
    assert outage == faults.ApiOutage("https://203.0.113.10:6443/openapi/v2?timeout=32s",
                                      "dial tcp 203.0.113.10:6443: i/o timeout", kubernetes=True)
    message = faults.outage_message("huawei", outage, None)
    assert message.startswith("huawei: this machine cannot reach the member's Kubernetes API at "
                              "https://203.0.113.10:6443 (dial tcp 203.0.113.10:6443: i/o timeout), so the run stopped")
    assert "crdb-federation:adminCidrs includes this machine's public address" in message
    assert "did not answer" not in message
    # Go's words for a request without the openstack provider's (gophercloud/utils RoundTripper) are no cloud API.
    assert faults.api_outage('Get "https://203.0.113.10:8080/x": dial tcp 203.0.113.10:8080: i/o timeout') is None


# ---------------------------------------------------------------------------------------------- issue 27, row 8
# pulumi v3.259.0 pkg/backend/backend.go backendClient.GetStackOutputs: fmt.Errorf("unknown stack %q", name), the
# name as the StackReference got it: the seed's reference to each of its members (components/federation.py).
UNKNOWN_MEMBER = ('pulumi:pulumi:StackReference organization/crdb-federation/otc  error: Preview failed: unknown '
                  'stack "organization/crdb-federation/otc"')


def test_a_member_the_seed_lists_that_the_backend_does_not_have_is_named_as_its_members_entry():
    seed = faults.References(members=("organization/crdb-federation/huawei", "organization/crdb-federation/otc"))
    message = faults.missing_stack_message("seed", UNKNOWN_MEMBER, seed)
    assert message.startswith("seed: crdb-federation:members lists organization/crdb-federation/otc, which does not "
                              "exist in this state backend, so the run stopped")
    assert "correct or remove it in crdb-federation:members" in message
    assert "seedStack" not in message and "Bring the seed up" not in message
    # Neither configured: the words name both places, not the seed alone.
    other = faults.missing_stack_message("seed", UNKNOWN_MEMBER)
    assert "crdb-federation:members (the seed)" in other and "Bring the seed up" not in other


def test_the_stacks_a_stack_reads_come_from_its_stack_file(tmp_path):
    (tmp_path / "stacks").mkdir()
    (tmp_path / "Pulumi.yaml").write_text(
        "name: crdb-federation\nconfig:\n  seedStack: {type: string, default: ''}\n"
        "  members: {type: array, items: {type: string}, default: []}\n")
    (tmp_path / "stacks" / "Pulumi.seed.yaml").write_text(
        "config:\n  crdb-federation:members: [organization/crdb-federation/otc]\n")
    assert faults.references_of("seed", tmp_path) == faults.References("", ("organization/crdb-federation/otc",))
    assert faults.references_of("absent", tmp_path) == faults.References()


# ---------------------------------------------------------------------------------------------- issue 27, row 9
# nova compute/utils.py get_over_quota_detail joins every exhausted quota with ", " into exception.py
# TooManyInstances ("Quota exceeded for %(overs)s: Requested %(req)s, but already used %(used)s of %(allowed)s
# %(overs)s"), answered as a 403 (api/openstack/compute/servers.py create); gophercloud v2.8.0 errors.go
# ErrUnexpectedResponseCode; terraform-provider-openstack v3.4.0 resourceComputeInstanceV2Create.
NOVA_CORES_RAM = ('Error creating OpenStack server: Expected HTTP response code [202] when accessing [POST '
                  'http://127.0.0.1:8774/v2.1/servers], but got 403 instead: {"forbidden": {"code": 403, "message": '
                  '"Quota exceeded for cores, ram: Requested 4, 8192, but already used 40, 81920 of 40, 81920 cores, '
                  'ram"}}')
# nova compute/api.py _provision_instances: a server group that is full.
NOVA_GROUP_FULL = "Quota exceeded, too many servers in group"
# cinder quota.py names a volume type's own quotas volumes_<type>, gigabytes_<type>; quota_utils.py
# process_reserve_over_quota raises exception.py VolumeLimitExceeded / VolumeSizeExceedsAvailableQuota with that
# name, and api/middleware/fault.py FaultWrapper._error puts the class name in front (413 overLimit);
# terraform-provider-openstack v3.4.0 resourceBlockStorageVolumeV3Create.
CINDER_TYPED_VOLUMES = ('Error creating openstack_blockstorage_volume_v3: Expected HTTP response code [202] when '
                        'accessing [POST http://127.0.0.1:8776/v3/p/volumes], but got 413 instead: {"overLimit": '
                        '{"code": 413, "message": "VolumeLimitExceeded: Maximum number of volumes allowed (4) '
                        'exceeded for quota \'volumes_ssd\'.", "retryAfter": "0"}}')
CINDER_TYPED_GIGABYTES = ("VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
                          "gigabytes_ssd quota. Requested 20G, quota is 100G and 90G has been consumed.")
# terraform-provider-openstack v3.4.0 resourceNetworkingPortV2Create, through gophercloud/utils v2 client.go
# RoundTripper.RoundTrip; Go net/net.go OpError: a connect the kernel timed out (ETIMEDOUT), and
# net/dnsclient.go DNSError for a name that does not resolve.
NEUTRON_TIMED_OUT = ('Error creating openstack_networking_port_v2: Post "http://203.0.113.5:9696/v2.0/ports": '
                     'OpenStack connection error, retries exhausted. Aborting. Last error was: dial tcp '
                     '203.0.113.5:9696: connect: connection timed out')
NOVA_NO_SUCH_HOST = ('Error creating OpenStack server: Post "https://compute.example.net/v2.1/servers": OpenStack '
                     'connection error, retries exhausted. Aborting. Last error was: dial tcp: lookup '
                     'compute.example.net: no such host')
# terraform-provider-openstack v3.4.0 resourceComputeInstanceV2Create waits with ServerV2StateRefreshFunc, which
# returns Nova's status and no error; terraform-plugin-sdk helper/retry UnexpectedStateError.Error() words it.
BOOT_IN_ERROR = ("Error waiting for instance (5b1f0c52-8a4e-4d6b-9f0e-2c7d1a3e4f50) to become ready: unexpected "
                 "state 'ERROR', wanted target 'ACTIVE'. last error: %!s(<nil>)")
# nova compute/manager.py _build_resources: _prep_block_device's OverQuota (volume/cinder.py passes Cinder's message
# on) becomes exception.py BuildAbortException, "Build of instance %(instance_uuid)s aborted: %(reason)s", the
# server's fault (compute/utils.py exception_to_dict).
BOOT_VOLUME_FAULT = ("Build of instance 5b1f0c52-8a4e-4d6b-9f0e-2c7d1a3e4f50 aborted: VolumeLimitExceeded: Maximum "
                     "number of volumes allowed (10) exceeded for quota 'volumes'.")


def test_every_quota_nova_names_is_named_and_a_full_server_group_too():
    assert faults.quotas_exceeded(NOVA_CORES_RAM) == ["cores", "ram"]
    assert faults.quotas_exceeded(NOVA_GROUP_FULL) == ["server_group_members"]


def test_a_volume_types_own_quota_is_named_after_the_type():
    assert faults.quotas_exceeded(CINDER_TYPED_VOLUMES) == ["volumes_ssd"]
    assert faults.quotas_exceeded(CINDER_TYPED_GIGABYTES) == ["gigabytes_ssd"]
    assert faults.quotas_exceeded(CINDER_QUOTA) == ["volumes"]


def test_a_volume_types_headroom_counts_the_data_volumes_of_that_type_and_the_boot_volumes_of_the_default():
    # 3 nodes, 20 GB boot volumes of the cloud's default type, 50 GB data volumes of dataVolumeType.
    s = SimpleNamespace(node_count=3, boot_volume_size=20, data_volume_size=50, data_volume_type="ssd")
    assert faults.volume_type_quota("volumes_ssd") == ("volumes", "ssd")
    assert faults.volume_type_quota("security_group") is None
    assert (faults.typed_need("volumes_ssd", s, "standard"), faults.typed_need("gigabytes_ssd", s, "standard")) == (
        3, 150)
    assert faults.typed_need("gigabytes_standard", s, "standard") == 60
    untyped = SimpleNamespace(**{**vars(s), "data_volume_type": None})
    assert faults.typed_need("volumes_standard", untyped, "standard") == 6


def test_a_connect_that_timed_out_and_a_name_that_does_not_resolve_are_outages():
    assert faults.api_outage(NEUTRON_TIMED_OUT) == faults.ApiOutage(
        "http://203.0.113.5:9696/v2.0/ports", "dial tcp 203.0.113.5:9696: connect: connection timed out")
    assert faults.api_outage(NOVA_NO_SUCH_HOST) == faults.ApiOutage(
        "https://compute.example.net/v2.1/servers", "dial tcp: lookup compute.example.net: no such host")
    # A cancel is no outage.
    assert faults.api_outage(NEUTRON_TIMED_OUT.replace("dial tcp 203.0.113.5:9696: connect: connection timed out",
                                                       "context canceled")) is None


def test_a_build_that_ended_in_error_is_explained_by_the_servers_fault(monkeypatch):
    assert faults.quotas_exceeded(BOOT_IN_ERROR) == []  # the provider's words alone name no quota
    servers = {"5b1f0c52-8a4e-4d6b-9f0e-2c7d1a3e4f50": SimpleNamespace(fault={"code": 500,
                                                                             "message": BOOT_VOLUME_FAULT})}
    cloud = SimpleNamespace(compute=SimpleNamespace(get_server=servers.__getitem__))
    assert faults.build_faults(BOOT_IN_ERROR, lambda: cloud) == "\n" + BOOT_VOLUME_FAULT
    assert faults.build_faults(BOOT_IN_ERROR, lambda: 1 / 0) == ""  # an unread cloud leaves the run's own error
    assert faults.build_faults(NEUTRON_DOWN, lambda: 1 / 0) == ""

    stack = PulumiStack("huawei", automation_stack=SimpleNamespace())
    monkeypatch.setattr(runner, "stack_cloud", lambda name, work_dir=None: cloud)
    said = stack._explain(BOOT_IN_ERROR)
    assert said.startswith("huawei: the cloud refused a create, its quota exhausted. volumes:"), said


def test_a_volume_types_quota_stopping_an_up_says_how_far_short_it_is(monkeypatch):
    from dataclasses import replace

    from federation import preflight
    from federation.runner import ROOT

    settings = preflight.stack_settings("huawei", ROOT)
    settings = replace(settings, openstack=replace(settings.openstack, data_volume_type="ssd", data_volume_size=50))
    # huawei made one data volume of type ssd; the project allows 2 ssd volumes, both in use.
    cloud = QuotaCloud({}, servers=[_server("s0", "huawei-k3s-0")], volumes=[SimpleNamespace(
        id="v0", name="huawei-k3s-0-data", metadata={}, size=50, attachments=[], volume_type="ssd",
        project_id=PROJECT)])
    # Cinder lists a type's own quotas with the project's (openstacksdk QuotaSet keeps them as unknown attributes).
    cloud.block_storage.get_quota_set = lambda project, usage: SimpleNamespace(
        volumes=20, gigabytes=1000, volumes_ssd=2, usage={"volumes": 4, "gigabytes": 100, "volumes_ssd": 2})
    cloud.block_storage.get_type = lambda name: SimpleNamespace(name="standard")  # cinder types/default
    headrooms, unread = faults.quota_headrooms(cloud, settings, faults.quotas_exceeded(CINDER_TYPED_VOLUMES))
    assert (headrooms, unread) == ([faults.Headroom("volumes_ssd", limit=2, used=2, own=1, need=3)], [])
    message = faults.quota_message("huawei", headrooms)
    assert ("volumes_ssd: this stack needs 3 in all and holds 1; the quota is 2 with 2 in use, so it is 2 short: ask "
            "the cloud's operator to raise the volumes_ssd quota by 2 (to 4)") in message


# The state backend's own words through the real CLI v3.259.0 and the Versity S3 gateway v1.8.0 (the integration
# tier's store), quoted from a run with a wrong secret and with an unknown access key.
WRONG_SECRET = ('error: read ".pulumi/meta.yaml": blob (key ".pulumi/meta.yaml") (code=Unknown): operation error S3: '
                'GetObject, https response error StatusCode: 403, RequestID: 9JPR72V3NYLLM1ME, HostID: K07NFGX=, api '
                'error SignatureDoesNotMatch: The request signature we calculated does not match the signature you '
                'provided. Check your key and signing method.')
UNKNOWN_KEY = ('error: read ".pulumi/meta.yaml": blob (key ".pulumi/meta.yaml") (code=Unknown): operation error S3: '
               'GetObject, https response error StatusCode: 403, RequestID: M3XOB48UTATQ9STD, HostID: 05PWH7=, api '
               'error InvalidAccessKeyId: The AWS Access Key Id you provided does not exist in our records.')
BACKEND = "s3://crdb-federation-state?endpoint=http://127.0.0.1:7070&use_path_style=true&region=us-east-1"


def test_a_state_backend_that_refuses_the_operators_credentials_is_named_with_what_to_check():
    for text, code in ((WRONG_SECRET, "SignatureDoesNotMatch"), (UNKNOWN_KEY, "InvalidAccessKeyId")):
        said = faults.backend_fault("vexxhost", text, BACKEND)
        assert said.startswith(f"vexxhost: the state backend s3://crdb-federation-state refused this operator's "
                               f"credentials ({code}: ") and "Nothing was started" in said
        assert "AWS_SECRET_ACCESS_KEY" in said and "127.0.0.1:7070" not in said
    assert faults.backend_fault("vexxhost", "error: something else", BACKEND) is None


def test_a_backend_that_stops_answering_mid_run_is_named_and_not_taken_for_a_cloud_outage():
    # Verbatim from a real `pulumi up` (v3.259.0) whose Versity S3 gateway was stopped mid-run.
    text = ('error: pre-step event returned an error: failed to save snapshot: An IO error occurred while writing the '
            'new snapshot file: blob (key ".pulumi/stacks/demo/dev.json") (code=Unknown): operation error S3: PutObject, '
            'exceeded maximum number of attempts, 3, https response error StatusCode: 0, RequestID: , HostID: , request '
            'send failed, Put "http://127.0.0.1:48383/crdb-federation-state/.pulumi/stacks/demo/dev.json?x-id=PutObject"'
            ': dial tcp 127.0.0.1:48383: connect: connection refused\nerror: there was a problem deleting the lock at '
            's3://crdb-federation-state/.pulumi/locks/organization/demo/dev/8820.json?endpoint=http%3A%2F%2F127.0.0.1'
            '%3A48383, manual clean up may be required: blob (key ".pulumi/locks/organization/demo/dev/8820.json") '
            '(code=Unknown): operation error S3: HeadObject, exceeded maximum number of attempts, 3, https response '
            'error StatusCode: 0, RequestID: , HostID: , request send failed, Head "http://127.0.0.1:48383/crdb-'
            'federation-state/.pulumi/locks/organization/demo/dev/8820.json": dial tcp 127.0.0.1:48383: connect: '
            'connection refused')
    said = faults.backend_fault("vexxhost", text, BACKEND)
    assert said.startswith("vexxhost: the state backend s3://crdb-federation-state did not answer (dial tcp "
                           "127.0.0.1:48383: connect: connection refused), so the run stopped")
    assert "the next `scripts/up.sh vexxhost` (or `python -m federation join vexxhost`) deletes it" in said
    assert said.endswith("`pulumi cancel --stack vexxhost` releases it once no run of vexxhost is going on.")
    assert faults.api_outage(text) is None  # no OpenStack API was involved


def test_the_tool_names_a_backend_that_refuses_the_operators_credentials_before_anything_runs(monkeypatch):
    from pulumi import automation as auto

    def refused(cls, name, workspace):
        raise auto.CommandError(auto.CommandResult("", WRONG_SECRET, 255))

    monkeypatch.setattr(auto.Stack, "select", classmethod(refused))
    monkeypatch.setattr("federation.runner.stack_workspace", lambda work_dir, environment: object())
    with pytest.raises(faults.CloudFault, match=r"vexxhost: the state backend s3://crdb-federation-state refused this "
                                                r"operator's credentials \(SignatureDoesNotMatch: "):
        PulumiStack("vexxhost", environment={"PULUMI_BACKEND_URL": BACKEND}, create=True)
