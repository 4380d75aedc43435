"""The whole program (__main__.py) under mocks: seed and member roles, network modes, exports, errors."""

import json

import pytest
import yaml
from cryptography import x509
from pulumi.runtime.sync_await import _sync_await

from components.settings import SettingsError
from tests.fakes import FakeCloud
from tests.harness import run_program
from tests.test_cockroach_manifests import run_start_script
from tests.validators import assert_valid_kubernetes

SEED_STACK = "organization/crdb-federation/seed"
COMMON = {
    "cloud": "openstack",
    "region": "RegionOne",
    "image": "ubuntu-24.04",
    "serverFlavor": "m1.large",
    "externalNetwork": "public",
    "adminCidrs": ["198.51.100.0/24"],
    "federationCidrs": ["0.0.0.0/0"],
}
SEED = {**COMMON, "role": "seed", "replicationFactor": 5}
MEMBER = {**COMMON, "seedStack": SEED_STACK, "nodeCount": 4, "availabilityZone": "az2"}


@pytest.fixture(scope="module")
def seed():
    return run_program(SEED, stack="seed")


@pytest.fixture(scope="module")
def seed_outputs(seed):
    return {name: seed.output(name) for name in seed.globals["_exports"]}


@pytest.fixture(scope="module")
def member(seed_outputs):
    return run_program(MEMBER, stack="vexxhost", stack_outputs={SEED_STACK: seed_outputs})


def start_script(run):
    sts = run.cloud.one(":StatefulSet")
    return sts.inputs["spec"]["template"]["spec"]["containers"][0]["command"][2]


def start_argv(run, node_name, tmp_path):
    """Executes the rendered start command for one node, with the rendered address map, and returns argv."""
    addresses = run.cloud.one(":ConfigMap").inputs["data"]
    code, argv, stderr = run_start_script(tmp_path, start_script(run), node_name, addresses)
    assert code == 0, stderr
    return argv


def flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def is_secret(output):
    return _sync_await(output.is_secret())


def test_seed_exports(seed, seed_outputs):
    assert seed_outputs["role"] == "seed"
    assert seed_outputs["joinAddresses"] == [f"{n['publicIp']}:26257" for n in seed_outputs["nodes"]]
    assert seed_outputs["sqlUrl"].startswith(f"postgresql://root@{seed_outputs['nodes'][0]['publicIp']}:26257/")
    assert "sslmode=verify-full" in seed_outputs["sqlUrl"] and "password" not in seed_outputs["sqlUrl"]
    assert seed_outputs["adminUiUrl"] == f"https://{seed_outputs['nodes'][0]['publicIp']}:8080"
    assert seed_outputs["locality"] == "cloud=seed,region=RegionOne,zone=nova"
    assert seed_outputs["clusterName"] == "crdb-federation"
    for name in ("kubeconfig", "caPrivateKey", "rootClientKey"):
        assert is_secret(seed.globals["_exports"][name]), name
    assert not is_secret(seed.globals["_exports"]["caCertificate"])


def test_seed_runs_init_and_replication_jobs(seed):
    jobs = {j.inputs["metadata"]["name"]: j for j in seed.cloud.of_type("batch/v1:Job")}
    assert set(jobs) == {"init", "replication-5"}
    assert seed.cloud.depends_on(jobs["replication-5"], jobs["init"])
    # Init must not wait for the StatefulSet: its pods only become ready after init.
    assert not seed.cloud.depends_on(jobs["init"], seed.cloud.one(":StatefulSet"))
    init = jobs["init"].inputs["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "cluster has already been initialized" in init
    replication = jobs["replication-5"].inputs["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "num_replicas = 5" in replication


def test_seed_nodes_join_each_other_privately(seed, seed_outputs, tmp_path):
    argv = start_argv(seed, "seed-k3s-1", tmp_path)
    private = [n["privateIp"] for n in seed_outputs["nodes"]]
    assert flag(argv, "join") == ",".join(f"{ip}:26257" for ip in private)
    assert flag(argv, "advertise-addr") == f"{seed_outputs['nodes'][1]['publicIp']}:26257"


def test_member_never_initialises(member):
    assert not member.cloud.of_type("batch/v1:Job")
    assert "caPrivateKey" not in member.globals["_exports"]
    assert not member.cloud.of_type("FederationCa")


def test_member_join_list_and_ca_come_from_the_seed(member, seed_outputs, tmp_path):
    assert member.cloud.one("StackReference").inputs["name"] == SEED_STACK
    outputs = {name: member.output(name) for name in ("nodes", "caCertificate", "locality")}
    assert outputs["caCertificate"] == seed_outputs["caCertificate"]
    for index, node in enumerate(outputs["nodes"]):
        argv = start_argv(member, node["name"], tmp_path)
        assert argv == [
            "start",
            f"--advertise-addr={node['publicIp']}:26257",
            f"--locality-advertise-addr=cloud=vexxhost@{node['privateIp']}:26257",
            "--listen-addr=:26257",
            "--http-addr=:8080",
            "--locality=cloud=vexxhost,region=RegionOne,zone=az2",
            "--join=" + ",".join(seed_outputs["joinAddresses"]),
            "--cluster-name=crdb-federation",
            "--certs-dir=/cockroach/cockroach-certs",
            "--store=path=/cockroach/cockroach-data",
            "--cache=25%",
            "--max-sql-memory=25%",
        ]
    assert outputs["locality"] == "cloud=vexxhost,region=RegionOne,zone=az2"


def test_member_node_certificate_chains_to_the_federation_ca(member, seed_outputs):
    secret = next(s for s in member.cloud.of_type(":Secret") if s.outputs["metadata"]["name"] == "cockroachdb-node-certs")
    files = secret.outputs["stringData"]
    ca = x509.load_pem_x509_certificate(seed_outputs["caCertificate"].encode())
    assert files["ca.crt"] == seed_outputs["caCertificate"]
    node = x509.load_pem_x509_certificate(files["node.crt"].encode())
    node.verify_directly_issued_by(ca)
    assert node.subject.rfc4514_string() == "CN=node"
    usages = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u._name for u in usages} == {"serverAuth", "clientAuth"}
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    for n in member.output("nodes"):
        assert {n["publicIp"], n["privateIp"]} <= ips
    assert "127.0.0.1" in ips
    assert {"localhost", "cockroachdb-public", "cockroachdb-public.cockroachdb.svc.cluster.local"} <= set(
        sans.get_values_for_type(x509.DNSName))


def test_seed_root_client_certificate(seed_outputs):
    ca = x509.load_pem_x509_certificate(seed_outputs["caCertificate"].encode())
    root = x509.load_pem_x509_certificate(seed_outputs["rootClientCertificate"].encode())
    root.verify_directly_issued_by(ca)
    assert root.subject.rfc4514_string() == "CN=root"


def kubernetes_manifests(run):
    """The Kubernetes objects the program created, as manifests (the mocks carry numbers as floats)."""
    manifests = []
    for r in run.cloud.resources:
        if r.type.startswith("kubernetes:") and not r.type.startswith("kubernetes:providers"):
            manifest = {k: v for k, v in r.outputs.items() if k in (
                "apiVersion", "kind", "metadata", "spec", "data", "stringData", "type")}
            manifests.append(json.loads(json.dumps(manifest), parse_float=lambda f: int(float(f))))
    return manifests


def test_every_kubernetes_object_is_valid(seed, member):
    for run in (seed, member):
        manifests = kubernetes_manifests(run)
        assert len(manifests) >= 7
        for manifest in manifests:
            assert_valid_kubernetes(manifest)


def test_kubernetes_resources_use_the_gated_provider(member):
    gate = member.cloud.one("dynamic:Resource")
    provider = member.cloud.one("pulumi:providers:kubernetes")
    assert member.cloud.depends_on(provider, gate)
    for r in member.cloud.resources:
        if r.type.startswith("kubernetes:") and r.custom and not r.type.startswith("pulumi:providers"):
            assert r.provider.startswith(provider.urn), r.name
            assert member.cloud.depends_on(r, gate)


def test_openstack_resources_use_the_explicit_provider(member):
    provider = member.cloud.one("pulumi:providers:openstack")
    assert provider.inputs["cloud"] == "openstack" and provider.inputs["region"] == "RegionOne"
    assert "password" not in provider.inputs
    for r in member.cloud.resources:
        if r.type.startswith("openstack:"):
            assert r.provider.startswith(provider.urn), r.name


def test_existing_network_stack_with_fixed_public_addresses(seed_outputs):
    config = {**MEMBER, "networkMode": "existing", "publicAddressing": "fixed", "existingNetwork": "ext-net"}
    del config["externalNetwork"]
    # The member signs its node certificate with the seed's CA, so it gets a real one.
    run = run_program(config, stack="ovh", stack_outputs={SEED_STACK: seed_outputs})
    assert not run.cloud.of_type("FloatingIp") and not run.cloud.of_type("Router")
    for node in run.output("nodes"):
        assert node["publicIp"] == node["privateIp"]
    ports = run.cloud.of_type("networking/port:Port")
    assert {p.inputs["networkId"] for p in ports} == {"net-ext-net"}


def test_existing_kubernetes_stack_builds_no_servers(seed_outputs):
    kubeconfig = yaml.safe_dump({"clusters": [{"name": "magnum", "cluster": {"server": "https://192.0.2.5:6443"}}]})
    config = {**MEMBER, "kubernetesMode": "existing",
              "existingNodes": ["mag-node-0 192.0.2.10 10.0.0.10", "mag-node-1 192.0.2.11 10.0.0.11"]}
    run = run_program(config, stack="magnum", secrets={"kubeconfig": kubeconfig},
                      stack_outputs={SEED_STACK: seed_outputs})
    assert not [r for r in run.cloud.resources if r.type.startswith("openstack:")]
    assert run.cloud.one("pulumi:providers:kubernetes").outputs["kubeconfig"] == kubeconfig
    assert run.cloud.one(":ConfigMap").inputs["data"] == {
        "mag-node-0": "192.0.2.10 10.0.0.10\n", "mag-node-1": "192.0.2.11 10.0.0.11\n"}
    assert run.output("apiEndpoint") == "https://192.0.2.5:6443"


def test_invalid_settings_create_nothing():
    cloud = FakeCloud()
    with pytest.raises(SettingsError) as error:
        run_program({**MEMBER, "nodeCount": 0, "adminCidrs": ["nope"]}, stack="broken", cloud=cloud)
    assert cloud.resources == [] and cloud.invokes == []
    assert "crdb-federation:nodeCount = '0'" in str(error.value)
    assert "crdb-federation:adminCidrs = 'nope'" in str(error.value)


def test_member_of_a_seed_without_outputs_fails_naming_the_seed_stack():
    # The seed's stack exists but has exported nothing yet (it is not up): `up` must say so, not KeyError.
    with pytest.raises(Exception, match=r"seedStack = 'organization/crdb-federation/seed': that stack has no "
                                        r"output '(caCertificate|joinAddresses)'\. Bring the seed up first"):
        run_program(MEMBER, stack="vexxhost", stack_outputs={SEED_STACK: {}})
