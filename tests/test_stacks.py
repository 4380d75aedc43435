"""Every stack file of the federation evaluates under mocks, fed by the seed's real outputs."""

import pytest
import yaml

from components.settings import SECRET_KEYS
from federation.runner import stack_names
from tests.harness import ROOT, pinned_to, run_program, stack_config
from tests.harness import SEED_SECRETS, SEED_STACK
from tests.test_program import kubernetes_manifests
from tests.validators import assert_valid_cloud_config, assert_valid_kubernetes

OPERATORS = ["canonical", "easystack", "huawei", "ibm", "netapp", "otc", "platform9", "rackspace", "redhat", "suse",
             "t2cloud", "vexxhost", "vmware", "wind", "zte"]


def test_the_federation_has_a_seed_and_fifteen_operators():
    assert stack_names() == sorted(["seed", *OPERATORS])


@pytest.mark.parametrize("stack", stack_names())
def test_stack_file_hygiene(stack):
    text = (ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text()
    document = yaml.safe_load(text)
    # Only packages whose every resource names its provider: the engine denies the others' defaults
    # (tls, random and dynamic resources have none; a dynamic resource cannot take one).
    assert document["config"]["pulumi:disable-default-providers"] == ["openstack", "kubernetes"]
    config = stack_config(stack)
    for key in SECRET_KEYS:
        assert key not in config or isinstance(config[key], dict) and "secure" in config[key], key
    for word in ("password", "application_credential_secret", "BEGIN PRIVATE KEY"):
        assert word not in text
    assert "ADAPT" in text
    if stack != "seed":
        assert config["seedStack"] == SEED_STACK
    # Nothing is open to the world, and the shipped ranges are placeholders that no real peer matches.
    for key in ("adminCidrs", "federationCidrs", "sqlCidrs"):
        assert config[key] in ([], ["100.64.0.0/10"]), (key, config[key])


@pytest.fixture(scope="module")
def seed_run():
    # The licence is a secret each seed operator sets; the stack file carries none.
    return run_program(stack_config("seed"), stack="seed", secrets=SEED_SECRETS)


@pytest.fixture(scope="module")
def seed_outputs(seed_run):
    return {name: seed_run.output(name) for name in seed_run.globals["_exports"]}


def _check_run(run):
    servers = run.cloud.of_type("compute/instance:Instance")
    assert servers
    for server in servers:
        assert_valid_cloud_config(server.outputs["userData"])
    for manifest in kubernetes_manifests(run):
        assert_valid_kubernetes(manifest)


def test_default_providers_are_disabled_only_where_every_resource_has_an_explicit_one(seed_run):
    disabled = yaml.safe_load((ROOT / "stacks" / "Pulumi.seed.yaml").read_text())["config"][
        "pulumi:disable-default-providers"]
    for resource in seed_run.cloud.resources:
        package = resource.type.split(":")[0]
        if resource.custom and package != "pulumi":
            assert (package in disabled) == bool(resource.provider), (resource.type, resource.provider)


def test_seed_stack(seed_run, seed_outputs):
    _check_run(seed_run)
    assert seed_outputs["role"] == "seed"
    assert len(seed_outputs["joinAddresses"]) >= 3


@pytest.mark.parametrize("stack", OPERATORS)
def test_operator_stack_joins_through_the_seed(stack, seed_outputs):
    config = pinned_to(seed_outputs, stack_config(stack))  # its operator's first edit, with the seed's operator
    run = run_program(config, stack=stack, stack_outputs={SEED_STACK: seed_outputs})
    _check_run(run)
    assert run.output("caCertificate") == seed_outputs["caCertificate"]
    assert run.cloud.named(f"{stack}-join").inputs["data"]["join"] == ",".join(seed_outputs["federationJoin"]) + "\n"
    script = run.cloud.one(":DaemonSet").inputs["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert f'"--locality=cloud={stack},region={config["region"]},zone={config["availabilityZone"]}"' in script
    # Its first up publishes its requests; CockroachDB waits for the seed's signatures.
    assert run.output("certificatesSigned") is False
    assert set(run.output("certificateRequests")) == {"node", "client", "ops"}
    nodes = run.output("nodes")
    assert len(nodes) == config["nodeCount"]
    if config["publicAddressing"] == "fixed":
        assert all(n["publicIp"] == n["privateIp"] for n in nodes)
        assert not run.cloud.of_type("FloatingIp")
    else:
        assert len(run.cloud.of_type("FloatingIpAssociate")) == config["nodeCount"]


def test_pull_request_previews_cover_every_stack():
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    preview = workflow["jobs"]["preview"]
    assert sorted(preview["strategy"]["matrix"]["stack"]) == stack_names()
    action = next(step for step in preview["steps"] if str(step.get("uses", "")).startswith("pulumi/actions@"))
    assert action["with"]["command"] == "preview" and action["with"]["comment-on-pr"] is True
    assert action["with"]["policyPacks"] == "policy"
    assert "cloud-url" in action["with"] and "secrets-provider" in action["with"]
    # One operator's secrets per job: an environment per stack, and no repository-wide passphrase.
    assert preview["environment"] == "${{ matrix.stack }}"
    assert "vars.PULUMI_SECRETS_PROVIDER" not in (ROOT / ".github/workflows/ci.yml").read_text()
    test_job = workflow["jobs"]["test"]
    assert any("scripts/test.sh" in str(step.get("run", "")) for step in test_job["steps"])
