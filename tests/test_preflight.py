"""Preflight's decisions, without a cloud (the integration tier asks the local OpenStack)."""

from __future__ import annotations

import dataclasses

import pytest

from federation.preflight import (
    FAIL, PASS, SKIP, WARN, Flavor, Needs, admin_findings, check_stack, documentation_overlaps, flavor_findings,
    federation_findings, is_public, mtu_findings, needs, quota_findings, seed_findings, settings_findings,
    stack_settings,
)
from tests.harness import ROOT

LARGE = Flavor("m1.large", 4, 8192, 80)
SMALL = Flavor("m1.small", 1, 2048, 20)


def test_a_managed_seed_needs_three_servers_volumes_floating_ips_and_its_groups():
    settings = stack_settings("seed", ROOT)
    need = needs(settings, LARGE, SMALL)
    # Each node has a boot volume and a data volume of its own.
    assert (need.instances, need.volumes, need.floatingip, need.router) == (3, 6, 3, 1)
    assert (need.cores, need.ram) == (4 + 2 * 1, 8192 + 2 * 2048)
    assert need.gigabytes == 3 * (settings.openstack.boot_volume_size + settings.openstack.data_volume_size)
    assert need.ports == 3 + 2  # node ports, DHCP, router interface
    assert need.security_group_rule > need.security_group >= 2


def test_a_provider_network_member_needs_no_router_network_or_floating_ip():
    need = needs(stack_settings("vexxhost", ROOT), LARGE, LARGE)
    assert (need.network, need.subnet, need.router, need.floatingip, need.ports) == (0, 0, 0, 0, 3)


def test_quota_headroom_fails_naming_the_resource_and_by_how_much():
    need = Needs(**{field.name: 0 for field in dataclasses.fields(Needs)} | {"volumes": 3, "cores": 8})
    [short] = quota_findings("otc", need, {"volumes": (10, 8), "cores": (-1, 500), "ports": (1, 1)})
    assert (short.stack, short.status, short.found) == ("otc", FAIL, "volumes: need 3, free 2 (limit 10, used 8)")
    assert "by 1" in short.todo
    [fine] = quota_findings("otc", need, {"volumes": (10, 7), "cores": (-1, 500), "ports": (1, 1)})
    assert fine.status == PASS and fine.found == "headroom for cores 8, volumes 3"  # ports not needed


def test_a_flavor_too_small_for_cockroachdb_or_missing_fails():
    settings = stack_settings("seed", ROOT)  # cockroachMemory 4Gi, cockroachCpu 2 by default
    findings = flavor_findings("seed", settings, {"m1.xlarge": SMALL})
    [finding] = findings  # agentFlavor is unset: the server flavor serves both
    assert finding.status == FAIL and finding.setting == "serverFlavor"
    assert "at least 3 vCPU and 5120 MiB" in finding.todo
    assert flavor_findings("seed", settings, {})[0].found == "no flavor 'm1.xlarge'"
    assert {f.status for f in flavor_findings("seed", settings, {"m1.xlarge": LARGE})} == {PASS}


def test_admin_ranges_reject_documentation_ranges_and_must_hold_this_machine():
    assert documentation_overlaps(["203.0.113.0/24", "2001:db8::/48", "8.8.8.0/24"]) == ["203.0.113.0/24", "2001:db8::/48"]
    [doc] = admin_findings("seed", ["203.0.113.0/24"], "8.8.8.8")
    assert doc.status == FAIL and "documentation" in doc.found
    [outside] = admin_findings("seed", ["8.8.4.0/24"], "8.8.8.8")
    assert outside.status == FAIL and "add 8.8.8.8/32" in outside.todo
    assert admin_findings("seed", ["8.8.8.0/24"], "8.8.8.8")[0].status == PASS
    assert admin_findings("seed", ["8.8.8.0/24"], None)[0].status == SKIP


def test_public_means_reachable_from_other_clouds():
    assert is_public("198.51.100.0/24") and is_public("2a01:4f8::/32")
    assert not is_public("10.1.0.0/16") and not is_public("100.64.3.0/24") and not is_public("fd00::/64")


def test_mtu_of_an_existing_network_must_leave_pods_1280_and_a_managed_mtu_above_vxlan_warns():
    existing = stack_settings("vexxhost", ROOT)  # flannel wireguard-native: 80 bytes a packet
    assert mtu_findings("vexxhost", existing, 1500)[0].status == PASS
    assert mtu_findings("vexxhost", existing, 1360)[0].status == PASS
    too_small = mtu_findings("vexxhost", existing, 1350)[0]
    assert too_small.status == FAIL and "pods get 1270 (wireguard-native)" in too_small.found
    assert "at least 1360" in too_small.todo
    otc = stack_settings("otc", ROOT)  # mtu 1500 on a managed network
    warned = mtu_findings("otc", otc, None)[0]
    assert warned.status == WARN and "1450" in warned.todo


def test_the_seed_check_needs_outputs_from_the_seed_stack():
    member = stack_settings("canonical", ROOT)
    [missing] = seed_findings("canonical", member, lambda stack: {})
    assert missing.status == FAIL and "bring the seed up first" in missing.todo
    [unreadable] = seed_findings("canonical", member, lambda stack: (_ for _ in ()).throw(RuntimeError("no stack")))
    assert unreadable.status == FAIL and "no stack" in unreadable.found
    [old] = seed_findings("canonical", member, lambda stack: {"joinAddresses": ["127.0.0.1:1"], "caCertificate": "x"})
    assert old.status == FAIL and "clientCaCertificate/federationJoin" in old.found
    outputs = {"joinAddresses": ["127.0.0.1:1"], "caCertificate": "x", "clientCaCertificate": "y",
               "federationJoin": ["127.0.0.1:1"]}
    [silent] = seed_findings("canonical", member, lambda stack: outputs, timeout=0.5)
    assert silent.status == SKIP and "none of 1" in silent.found
    assert seed_findings("seed", stack_settings("seed", ROOT), lambda stack: {})[0].status == SKIP


def test_a_stack_the_settings_refuse_fails_before_any_cloud_is_asked(tmp_path):
    (tmp_path / "stacks").mkdir()
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    text = (ROOT / "stacks" / "Pulumi.seed.yaml").read_text().replace("nodeCount: 3", "nodeCount: 1")
    (tmp_path / "stacks" / "Pulumi.seed.yaml").write_text(text)

    def never(settings):
        raise AssertionError("no cloud may be asked")

    [finding] = check_stack("seed", tmp_path, my_address=None, seed_outputs=lambda s: {}, connect=never)
    assert finding.status == FAIL and finding.check == "Settings" and "nodeCount" in finding.found


def test_a_cloud_that_refuses_the_credentials_is_one_access_failure():
    def refuse(settings):
        raise RuntimeError("The request you have made requires authentication. (HTTP 401)")

    [finding] = check_stack("seed", ROOT, my_address=None, seed_outputs=lambda s: {}, connect=refuse)
    assert (finding.check, finding.status, finding.setting) == ("Access", FAIL, "cloud")
    assert "HTTP 401" in finding.found


@pytest.mark.parametrize("stack", ["seed", "vexxhost", "zte", "otc"])
def test_every_shipped_stack_parses_for_preflight(stack):
    assert stack_settings(stack, ROOT).stack == stack


def test_the_shipped_placeholder_ranges_fail_the_federation_check():
    [placeholder] = federation_findings("otc", stack_settings("otc", ROOT), [])
    assert placeholder.status == FAIL and "100.64.0.0/10 is not public" in placeholder.found


def test_the_federation_range_must_hold_the_seeds_nodes():
    from components.settings import parse_settings
    from tests.test_settings import VALID
    settings = parse_settings({**VALID, "federationCidrs": '["198.18.0.0/16"]'}, "otc")
    [outside] = federation_findings("otc", settings, ["198.18.0.5:26257", "198.19.0.7:26257"])
    assert outside.status == FAIL and outside.found == "198.19.0.7 outside it"
    assert federation_findings("otc", settings, ["198.18.0.5:26257"])[0].status == PASS


def test_a_seed_without_its_licence_fails_preflight():
    [missing] = settings_findings("seed", stack_settings("seed", ROOT))
    assert missing.status == FAIL and missing.check == "Licence" and "enterpriseLicense" in missing.todo


class Glance:
    """The image API preflight asks: images by name, and one by id."""

    def __init__(self, images):
        self.by_id = {i.id: i for i in images}

    def images(self, name):
        return [i for i in self.by_id.values() if i.name == name]

    def find_image(self, image_id, ignore_missing=True):
        return self.by_id.get(image_id)


def image_checks(images):
    from types import SimpleNamespace

    from federation.preflight import CloudChecks
    connection = SimpleNamespace(image=Glance(images))
    return CloudChecks("otc", stack_settings("otc", ROOT), connection)


def test_an_image_the_cloud_retired_after_the_first_deploy_only_warns_while_the_pinned_one_exists():
    from types import SimpleNamespace
    renamed = SimpleNamespace(id="6f0d2b3e-7c4a-4f5e-9d1b-2a3c4d5e6f70", name="ubuntu-24.04-old", status="active",
                              created_at="2026-01-01", os_type="linux", min_disk=0, min_ram=0)
    [kept] = image_checks([renamed]).image({}, pinned=renamed.id)
    assert kept.status == WARN and renamed.id in kept.todo
    [gone] = image_checks([]).image({}, pinned=renamed.id)
    assert gone.status == FAIL and "nor the pinned" in gone.found
    # Before any deploy there is nothing pinned: the name must exist.
    [first] = image_checks([renamed]).image({}, pinned=None)
    assert first.status == FAIL and "no active image named" in first.found


def test_a_stack_whose_secrets_provider_decrypts_the_seeds_secrets_fails():
    from federation.preflight import secrets_findings
    member = stack_settings("otc", ROOT)
    [leak] = secrets_findings("otc", member, lambda stack: ["kubeconfig", "rootClientKey"])
    assert leak.status == FAIL and "decrypts organization/crdb-federation/seed's kubeconfig, rootClientKey" in leak.found
    [apart] = secrets_findings("otc", member, lambda stack: [])
    assert apart.status == PASS and "cannot decrypt the secrets of organization/crdb-federation/seed" in apart.found
    # The seed reads nobody until it admits members.
    assert secrets_findings("seed", stack_settings("seed", ROOT), lambda stack: ["kubeconfig"]) == []
