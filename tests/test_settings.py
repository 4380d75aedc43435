"""Settings: every invalid value is reported at once, naming the key, the value and the expectation."""

import json

import pulumi
import pytest
import yaml

from federation.stack_config import as_config_strings

from components.settings import (
    CONFIG_KEYS, DEFAULT_COCKROACH_IMAGE, DEFAULT_K3S_VERSION, SettingsError, parse_settings,
)
from tests.harness import ROOT
from tests.test_trust import another_ca

VALID = {
    "cloud": "vexxhost",
    "region": "ca-ymq-1",
    "image": "ubuntu-24.04",
    "serverFlavor": "v3-standard-4",
    "externalNetwork": "public",
    "adminCidrs": '["198.20.0.0/24"]',
    "federationCidrs": '["198.18.0.0/15"]',
    "seedStack": "org/crdb-federation/seed",
    # What the seed's operator hands over out of band (python -m federation fingerprints).
    "caSha256": '["' + "ab" * 32 + '"]',
    "clientCaSha256": '["' + "cd" * 32 + '"]',
}


def problems(values, secrets=None, stack="member"):
    with pytest.raises(SettingsError) as error:
        parse_settings(values, stack, secrets)
    return error.value.problems


def test_valid_member_defaults():
    settings = parse_settings(VALID, "vexxhost")
    assert settings.cockroach.member == "vexxhost"
    assert settings.cockroach.role == "member"
    assert settings.openstack.node_count == 3
    assert settings.openstack.agent_flavor == "v3-standard-4"
    assert settings.network.mode == "managed"
    assert settings.network.public_addressing == "floating"
    assert settings.kubernetes.k3s_version == DEFAULT_K3S_VERSION
    assert settings.cockroach.image == DEFAULT_COCKROACH_IMAGE
    assert settings.cockroach.replicas == 3


def test_settings_are_frozen():
    settings = parse_settings(VALID, "vexxhost")
    with pytest.raises(Exception):
        settings.openstack.node_count = 5


@pytest.mark.parametrize("key, value, expected", [
    ("networkCidr", "10.0.0.0/33", "IPv4 CIDR"),
    ("networkCidr", "10.0.0.1/24", "IPv4 CIDR"),
    ("adminCidrs", '["not-a-cidr"]', "list of CIDRs"),
    ("adminCidrs", '"0.0.0.0/0"', "list of non-empty strings"),
    ("federationCidrs", '["10.0.0.0/8", "300.1.1.1/32"]', "list of CIDRs"),
    ("nodeCount", "0", "integer from 1"),
    ("nodeCount", "three", "integer from 1"),
    ("bootVolumeSize", "5", "integer from 10"),
    ("mtu", "9999", "0 (Neutron decides) or an MTU from 1280 to 9000"),
    ("mtu", "1000", "0 (Neutron decides) or an MTU from 1280 to 9000"),
    ("networkMode", "magic", "one of managed, existing"),
    ("publicAddressing", "elastic", "one of floating, fixed"),
    ("kubernetesMode", "eks", "one of k3s, existing"),
    ("role", "leader", "one of seed, member"),
    ("k3sVersion", "latest", "pinned k3s release"),
    ("k3sReleasesUrl", "http://mirror.example/k3s", "https://"),
    ("httpProxy", "proxy:3128", "http:// or https:// URL"),
    ("dnsServers", '["1.1.1.1", "dns.example"]', "IP addresses"),
    ("sshPublicKey", "-----BEGIN OPENSSH PRIVATE KEY-----", "OpenSSH public key"),
    ("memberName", "Bad_Name", "DNS label"),
    ("region", "region one", "locality tier value"),
    ("availabilityZone", "az=1", "locality tier value"),
    ("cockroachImage", "cockroachdb/cockroach:latest", "pinned tag"),
    ("cockroachImage", "cockroachdb/cockroach", "pinned tag"),
    ("dataVolumeSize", "1", "integer from 2"),
    ("osUpgradeVersion", "two words", "label of up to 63"),
    ("osUpgradeVersion", "2026-12-", "beginning and ending with a letter or digit"),
    ("ntpServers", '["ntp one"]', "host names or IP addresses"),
    ("adminCidrs", '["203.0.113.0/24"]', "not a documentation range"),
    ("federationCidrs", '["198.18.0.0/15", "2001:db8::/48"]', "not a documentation range"),
    ("sqlCidrs", '["192.0.2.0/28"]', "not a documentation range"),
    ("federationCidrs", '["0.0.0.0/0"]', "narrower than the whole internet"),
    ("sqlCidrs", '["::/0"]', "narrower than the whole internet"),
    ("networkCidr", "10.42.0.0/24", "apart from k3s's pod and service ranges"),
    ("networkCidr", "10.0.0.0/8", "apart from k3s's pod and service ranges"),
    ("joinAddresses", '["198.51.100.5:26257"]', "not one of a documentation range"),
    ("seedStack", "seed", "full stack name"),
    ("caCertificate", "not a certificate", "a PEM certificate"),
    ("cockroachMemory", "lots", "quantity"),
    ("cockroachCpu", "two", "CPU quantity"),
    ("joinAddresses", '["192.168.10.5"]', "host:port"),
    ("forceRemoval", "maybe", "true or false"),
])
def test_each_bad_value_names_key_value_and_expectation(key, value, expected):
    found = problems({**VALID, key: value})
    matching = [p for p in found if p.startswith(f"crdb-federation:{key} = ")]
    assert matching, found
    assert expected in matching[0]
    # A bad list entry is named by itself; any other value in full.
    entries = ("not-a-cidr", "300.1.1.1/32", "dns.example", "192.168.10.5", "2001:db8::/48", "ntp one")
    shown = [v for v in entries if v in value] or [json.loads(value)[0] if value.startswith("[") else value]
    assert repr(shown[0]) in matching[0] or key == "caCertificate"


@pytest.mark.parametrize("version, valid", [
    ("2026-12", True), ("v1", True), ("a" * 63, True), ("2026-12-", False), ("2026.12_", False), ("a" * 64, False),
])
def test_the_os_upgrade_version_is_a_label_value_the_controller_can_put_on_its_jobs(version, valid):
    """system-upgrade-controller v0.20.1 pkg/upgrade/job/job.go sets the Job label upgrade.cattle.io/version to
    plan.Status.LatestVersion (the Plan's version, '+' made '-' by plan.go MungeVersion). The API server refuses a
    label value over 63 characters or not alphanumeric at both ends (apimachinery pkg/util/validation
    IsValidLabelValue; kubernetes-validate checks schemas, not label syntax): no Job could ever be made."""
    if valid:
        settings = parse_settings({**VALID, "osUpgradeVersion": version}, "vexxhost")
        assert settings.kubernetes.os_upgrade_version == version
    else:
        assert [p for p in problems({**VALID, "osUpgradeVersion": version}) if "osUpgradeVersion" in p]


@pytest.mark.parametrize("missing", ["cloud", "region", "image", "serverFlavor", "adminCidrs", "federationCidrs"])
def test_required_keys(missing):
    values = {k: v for k, v in VALID.items() if k != missing}
    assert any(p.startswith(f"crdb-federation:{missing} = None") for p in problems(values))


def test_all_problems_reported_at_once():
    found = problems({**VALID, "nodeCount": "0", "networkCidr": "bad", "role": "x", "adminCidrs": '["x"]'})
    keys = {p.split(" = ")[0] for p in found}
    assert {"crdb-federation:nodeCount", "crdb-federation:networkCidr", "crdb-federation:role",
            "crdb-federation:adminCidrs"} <= keys
    message = str(SettingsError(found))
    assert f"{len(found)} problem(s)" in message


def test_managed_network_needs_external_network():
    values = {k: v for k, v in VALID.items() if k != "externalNetwork"}
    assert any("externalNetwork = None: expected the external network" in p for p in problems(values))


def test_existing_network_needs_its_name():
    found = problems({**VALID, "networkMode": "existing", "publicAddressing": "fixed"})
    assert any(p.startswith("crdb-federation:existingNetwork = None") for p in found)


def test_fixed_addressing_is_for_existing_networks_only():
    found = problems({**VALID, "publicAddressing": "fixed"})
    assert any(p.startswith("crdb-federation:publicAddressing = 'fixed'") for p in found)


def test_existing_network_with_fixed_public_addresses_is_valid():
    values = {k: v for k, v in VALID.items() if k != "externalNetwork"}
    settings = parse_settings({**values, "networkMode": "existing", "publicAddressing": "fixed",
                               "existingNetwork": "provider-net"}, "ovh")
    assert settings.network.existing_network == "provider-net"


def test_seed_needs_three_nodes_and_no_seed_stack():
    values = {**VALID, "role": "seed", "nodeCount": "2", "clusterOrganization": "acme"}
    found = problems(values, LICENCE)
    assert any(p.startswith("crdb-federation:nodeCount = '2': expected at least 3") for p in found)
    assert any(p.startswith("crdb-federation:seedStack = 'org/crdb-federation/seed'") for p in found)


def test_member_needs_a_way_to_the_cluster():
    values = {k: v for k, v in VALID.items() if k != "seedStack"}
    found = problems(values)
    assert any(p.startswith("crdb-federation:seedStack = None") for p in found)
    assert any(p.startswith("crdb-federation:caCertificate = None") for p in found)
    assert any(p.startswith("crdb-federation:clientCaCertificate = None") for p in found)


PEM, _ = another_ca()


def test_a_certificate_must_parse_not_only_look_like_pem():
    garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    values = {k: v for k, v in VALID.items() if k != "seedStack"}
    found = problems({**values, "joinAddresses": '["198.18.0.5:26257"]', "caCertificate": garbled,
                      "clientCaCertificate": PEM})
    assert found == ["crdb-federation:caCertificate = '-----BEGIN CERTIFICATE-----\\nAAAA\\n-----EN...': "
                     "expected a PEM certificate"]


def test_member_with_explicit_join_and_ca_certificates_is_valid():
    values = {k: v for k, v in VALID.items() if k != "seedStack"}
    settings = parse_settings({**values, "joinAddresses": '["198.18.0.5:26257", "crdb.example.org:26257"]',
                               "caCertificate": PEM, "clientCaCertificate": PEM}, "m")
    assert settings.cockroach.join_addresses == ("198.18.0.5:26257", "crdb.example.org:26257")
    assert settings.cockroach.node_certificate is None


def test_a_member_never_holds_a_ca_key():
    found = problems(VALID, {"caPrivateKey": pulumi.Output.from_input("key")})
    assert any(p.startswith("crdb-federation:caPrivateKey = '(secret)': expected no CA key on a member") for p in found)


def test_signed_certificates_come_together():
    found = problems({**VALID, "nodeCertificate": PEM})
    assert any(p.startswith("crdb-federation:nodeClientCertificate = None: expected both") for p in found)


SEED = {**{k: v for k, v in VALID.items() if k not in ("seedStack", "caSha256", "clientCaSha256")}, "role": "seed",
        "clusterOrganization": "acme"}
LICENCE = {"enterpriseLicense": pulumi.Output.from_input("crl-0-abc")}


def test_seed_ca_certificate_and_key_come_together():
    found = problems({**SEED, "caCertificate": PEM}, LICENCE)
    assert any(p.startswith("crdb-federation:caPrivateKey = None: expected both") for p in found)


def test_seed_needs_a_licence_for_up_and_warns_in_a_preview():
    seed = {k: v for k, v in SEED.items() if k != "clusterOrganization"}
    found = problems(seed, LICENCE)
    assert any("clusterOrganization and the secret crdb-federation:enterpriseLicense: expected both" in p
               for p in found)
    assert problems(SEED) == [p for p in problems(SEED) if "enterpriseLicense" in p]
    preview = parse_settings(SEED, "s", preview=True)
    assert preview.warnings and "throttles an unlicensed cluster" in preview.warnings[0]
    assert not parse_settings(SEED, "s", LICENCE).warnings


def test_seed_only_keys_are_refused_on_members():
    found = problems({**VALID, "members": '["org/crdb-federation/otc"]', "clusterOrganization": "acme"}, LICENCE)
    keys = {p.split(" = ")[0] for p in found}
    assert {"crdb-federation:members", "crdb-federation:clusterOrganization",
            "crdb-federation:enterpriseLicense"} <= keys


def test_seed_lists_members_by_full_stack_name():
    found = problems({**SEED, "members": '["otc"]'}, LICENCE)
    assert any(p.startswith("crdb-federation:members = 'otc': expected full stack names") for p in found)
    settings = parse_settings({**SEED, "members": '["organization/crdb-federation/otc"]'}, "s", LICENCE)
    assert settings.cockroach.members == ("organization/crdb-federation/otc",)


def test_replication_factor_is_the_seeds():
    found = problems({**VALID, "replicationFactor": "5"})
    assert any(p.startswith("crdb-federation:replicationFactor = '5': expected 0 (unset) on a member") for p in found)
    # The project default (0) reaches every member through the engine: that is "unset", not a problem.
    assert parse_settings({**VALID, "replicationFactor": "0"}, "m").cockroach.replication_factor == 0


@pytest.mark.parametrize("factor", ["1", "4"])
def test_seed_replication_factor_is_odd_and_at_least_three(factor):
    found = problems({**SEED, "replicationFactor": factor}, LICENCE)
    assert any(p.startswith(f"crdb-federation:replicationFactor = '{factor}': expected 0 (follows the clouds "
                            "present) or an odd number from 3 to 9") for p in found)
    assert parse_settings({**SEED, "replicationFactor": "5"}, "s", LICENCE).cockroach.replication_factor == 5


def test_provider_networks_carry_node_traffic_encrypted():
    values = {k: v for k, v in VALID.items() if k != "externalNetwork"}
    existing = parse_settings({**values, "networkMode": "existing", "publicAddressing": "fixed",
                               "existingNetwork": "provider"}, "m")
    assert existing.kubernetes.flannel_backend == "wireguard-native"
    assert parse_settings(VALID, "m").kubernetes.flannel_backend == "vxlan"


def test_existing_kubernetes_needs_kubeconfig_and_nodes():
    found = problems({**VALID, "kubernetesMode": "existing", "existingNodes": '["node-a 203.0.113.1"]'})
    assert any(p.startswith("crdb-federation:kubeconfig = None") for p in found)
    assert any(p.startswith("crdb-federation:existingNodes = 'node-a 203.0.113.1'") for p in found)


def test_every_config_key_is_declared_in_the_project_and_its_default_means_absent():
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    # Secrets are not declared: the engine refuses a plaintext default for a secret key, and a declared
    # key without default is required on every stack.
    assert set(declared) == set(CONFIG_KEYS)
    for key, declaration in declared.items():
        assert declaration.get("description"), key
        assert declaration["type"] in ("string", "integer", "boolean", "array"), key
    # The engine hands every declared default to every stack: each must mean what an absent key means.
    defaults = as_config_strings({k: d["default"] for k, d in declared.items() if "default" in d})
    for role_values, secrets in ((VALID, {}), (SEED, LICENCE)):
        assert parse_settings({**defaults, **role_values}, "m", secrets) == parse_settings(role_values, "m", secrets)


def test_a_member_of_a_seed_pins_its_cas_by_fingerprint():
    pinned = parse_settings({**VALID, "caSha256": '["AB:' + ":".join(["CD"] * 31) + '"]'}, "vexxhost").cockroach
    assert pinned.ca_sha256 == ("ab" + "cd" * 31,)  # openssl's form, normalised
    unpinned = {k: v for k, v in VALID.items() if k not in ("caSha256", "clientCaSha256")}
    found = problems(unpinned)
    assert [p for p in found if p.startswith("crdb-federation:caSha256 = []: expected the SHA-256 fingerprint")]
    # A preview (a pull request's) only warns: the seed's operator hands the fingerprints over later.
    assert parse_settings(unpinned, "vexxhost", preview=True).warnings
    assert "crdb-federation:clientCaSha256 = 'nope'" in " ".join(problems({**VALID, "clientCaSha256": '["nope"]'}))


def test_fingerprints_and_rekeys_belong_to_their_side():
    found = problems({**SEED, "caSha256": '["' + "ab" * 32 + '"]', "allowRekey": '["org/crdb-federation/otc"]'},
                     LICENCE)
    assert any(p.startswith("crdb-federation:caSha256 = ") and "no value on the seed" in p for p in found)
    assert any(p.startswith("crdb-federation:allowRekey = 'org/crdb-federation/otc': expected stacks listed in")
               for p in found)
    assert any("crdb-federation:allowRekey" in p and "no value on a member" in p
               for p in problems({**VALID, "allowRekey": '["org/crdb-federation/otc"]'}))


def test_a_key_this_program_does_not_read_is_refused_with_the_one_it_resembles():
    assert problems({**VALID, "federationCidr": '["198.18.0.0/15"]'}, secrets={"kubeconfg": object()}) == [
        "crdb-federation:federationCidr = '[\"198.18.0.0/15\"]': expected no such key: this program reads "
        "crdb-federation:federationCidrs",
        "crdb-federation:kubeconfg = '[secret]': expected no such key: this program reads crdb-federation:kubeconfig"]
