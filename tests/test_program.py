"""The whole program (__main__.py) under mocks: seed and member roles, the signing flow, network modes,
exports, the engine options that protect data, and errors."""

import json
import subprocess

import pytest
import yaml
from cryptography import x509
from pulumi.runtime.sync_await import _sync_await

from components.settings import SettingsError
from tests.fakes import FakeCloud
from tests.harness import MEMBER, MEMBER_STACK, SEED, SEED_SECRETS, SEED_STACK, outputs_of, pinned_to, run_program
from tests.test_cockroach_manifests import node_dirs, start_env
from tests.validators import assert_valid_kubernetes

# The seed, a member's first up, the seed signing it, the member's second up: fixtures in conftest.py.


def daemonset(run):
    return run.cloud.one(":DaemonSet")


def start_argv(run, node_name, tmp_path):
    """Executes the rendered start command for one node, with the rendered address map and join list."""
    script = daemonset(run).inputs["spec"]["template"]["spec"]["containers"][0]["command"][2]
    maps = {c.inputs["metadata"]["name"]: c.inputs["data"] for c in run.cloud.of_type(":ConfigMap")}
    dirs = node_dirs(tmp_path, maps["cockroachdb-node-addresses"], join=tuple(maps["cockroachdb-join"]["join"].strip()
                                                                                .split(",")))
    env = start_env(tmp_path, node_name, dirs)
    result = subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "argv.json").read_text())


def flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def is_secret(output):
    return _sync_await(output.is_secret())


def node_files(run):
    secret = next(s for s in run.cloud.of_type(":Secret") if s.outputs["metadata"]["name"] == "cockroachdb-node-certs")
    return secret.outputs["stringData"]


def test_seed_exports(seed, seed_outputs):
    assert seed_outputs["role"] == "seed"
    assert seed_outputs["joinAddresses"] == [f"{n['publicIp']}:26257" for n in seed_outputs["nodes"]]
    assert seed_outputs["sqlUrl"].startswith(f"postgresql://root@{seed_outputs['nodes'][0]['publicIp']}:26258/")
    assert "sslmode=verify-full" in seed_outputs["sqlUrl"] and "password" not in seed_outputs["sqlUrl"]
    assert seed_outputs["adminUiUrl"] == f"https://{seed_outputs['nodes'][0]['publicIp']}:8080"
    assert seed_outputs["locality"] == "cloud=seed,region=RegionOne,zone=nova"
    assert seed_outputs["clusterName"] == "crdb-federation"
    assert seed_outputs["certificatesSigned"] is True and seed_outputs["signedCertificates"] == {}
    assert set(seed_outputs["federationJoin"]) == set(seed_outputs["joinAddresses"])
    for name in ("kubeconfig", "rootClientKey"):
        assert is_secret(seed.globals["_exports"][name]), name
    # No CA key is ever an output: nobody can read one through a StackReference.
    assert not [name for name, value in seed_outputs.items() if "PRIVATE KEY" in json.dumps(value)
                and name != "rootClientKey"]


def test_seed_runs_init_once_and_keeps_cluster_settings_current(seed):
    [init] = seed.cloud.of_type("batch/v1:Job")
    # Never re-created by a changed spec (a new image, a new address for node 0).
    assert set(init.options["ignore_changes"]) >= {"spec", "metadata"}
    assert init.options["custom_timeouts"] == {"create": "30m", "update": "30m"}
    # Not after the DaemonSet: its pods only become ready after init.
    assert not seed.cloud.depends_on(init, daemonset(seed))
    script = init.inputs["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "cluster has already been initialized" in script and "already answers SQL" in script
    [cron] = seed.cloud.of_type("batch/v1:CronJob")
    assert seed.cloud.depends_on(cron, init)
    command = cron.inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"][2]
    assert "factor=5" in command and "enterprise.license" in command
    licence = next(s for s in seed.cloud.of_type(":Secret") if s.outputs["metadata"]["name"] == "cockroachdb-licence")
    assert licence.outputs["stringData"] == {"organization": "Acme", "license": "crl-0-test-licence"}


def test_seed_nodes_join_each_other_privately(seed, seed_outputs, tmp_path):
    argv = start_argv(seed, "seed-k3s-1", tmp_path)
    private = [n["privateIp"] for n in seed_outputs["nodes"]]
    assert flag(argv, "join") == ",".join(f"{ip}:26257" for ip in private)
    assert flag(argv, "advertise-addr") == f"{seed_outputs['nodes'][1]['publicIp']}:26257"


def test_a_member_publishes_requests_and_waits_for_the_seed(waiting_member):
    outputs = outputs_of(waiting_member)
    assert outputs["certificatesSigned"] is False
    requests = outputs["certificateRequests"]
    for kind in ("node", "client"):
        request = x509.load_pem_x509_csr(requests[kind].encode())
        assert request.subject.rfc4514_string() == "CN=node"
    files = node_files(waiting_member)
    assert set(files) == {"ca.crt", "ca-client.crt", "node.key", "client.node.key"}
    assert daemonset(waiting_member).inputs["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}


def test_the_seed_signs_what_the_member_asked_and_publishes_the_join_list(signing_seed, waiting_member):
    outputs = outputs_of(signing_seed)
    signed = outputs["signedCertificates"][MEMBER_STACK]
    ca = x509.load_pem_x509_certificate(outputs["caCertificate"].encode())
    client_ca = x509.load_pem_x509_certificate(outputs["clientCaCertificate"].encode())
    node = x509.load_pem_x509_certificate(signed["node"].encode())
    client = x509.load_pem_x509_certificate(signed["client"].encode())
    node.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(client_ca)
    request = x509.load_pem_x509_csr(outputs_of(waiting_member)["certificateRequests"]["node"].encode())
    assert node.public_key() == request.public_key()
    assert signing_seed.cloud.one("StackReference").inputs["name"] == MEMBER_STACK
    member_join = outputs_of(waiting_member)["joinAddresses"]
    assert set(outputs["federationJoin"]) & set(member_join) and len(outputs["federationJoin"]) == 5


def test_the_member_installs_its_signed_certificates(member, signing_seed):
    files = node_files(member)
    seed_outputs = outputs_of(signing_seed)
    ca = x509.load_pem_x509_certificate(seed_outputs["caCertificate"].encode())
    client_ca = x509.load_pem_x509_certificate(seed_outputs["clientCaCertificate"].encode())
    assert files["ca.crt"] == seed_outputs["caCertificate"]
    assert files["ca-client.crt"] == seed_outputs["clientCaCertificate"]
    node = x509.load_pem_x509_certificate(files["node.crt"].encode())
    node.verify_directly_issued_by(ca)
    x509.load_pem_x509_certificate(files["client.node.crt"].encode()).verify_directly_issued_by(client_ca)
    assert node.subject.rfc4514_string() == "CN=node"
    usages = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u._name for u in usages} == {"serverAuth", "clientAuth"}
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    for n in member.output("nodes"):
        assert {n["publicIp"], n["privateIp"]} <= ips
    assert "127.0.0.1" in ips and "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "annotations" not in daemonset(member).inputs["metadata"]
    assert member.output("certificatesSigned") is True


def test_no_member_resource_holds_a_ca_key(member, signing_seed):
    ca_keys = [r.outputs["privateKeyPem"] for r in signing_seed.cloud.of_type("privateKey:PrivateKey")
               if "-ca-" in r.name]
    assert len(ca_keys) == 7  # two federation CAs and the five k3s CAs of the seed's own cluster
    for resource in member.cloud.resources:
        text = json.dumps([resource.inputs, resource.outputs], default=str)
        assert not [key for key in ca_keys if key in text], resource.name
    assert not member.cloud.of_type("FederationAuthority") and not member.cloud.of_type("batch/v1:Job")
    assert "caPrivateKey" not in json.dumps(member.cloud.one("StackReference").inputs)


def test_member_joins_through_the_seeds_join_list(member, signing_seed, tmp_path):
    outputs = {name: member.output(name) for name in ("nodes", "locality")}
    for node in outputs["nodes"]:
        argv = start_argv(member, node["name"], tmp_path)
        assert argv == [
            "start",
            "--listen-addr=:26257",
            f"--advertise-addr={node['publicIp']}:26257",
            f"--locality-advertise-addr=cloud=vexxhost@{node['privateIp']}:26257",
            "--sql-addr=:26258",
            f"--advertise-sql-addr={node['publicIp']}:26258",
            "--http-addr=:8080",
            "--locality=cloud=vexxhost,region=RegionOne,zone=az2",
            "--join=" + ",".join(outputs_of(signing_seed)["federationJoin"]),
            "--cluster-name=crdb-federation",
            "--certs-dir=/cockroach/cockroach-certs",
            "--store=path=/cockroach/cockroach-data",
            "--cache=25%",
            "--max-sql-memory=25%",
        ]
    assert outputs["locality"] == "cloud=vexxhost,region=RegionOne,zone=az2"


def test_the_seed_refuses_a_colliding_locality_name(seed_outputs):
    copycat = run_program(pinned_to(seed_outputs, {**MEMBER, "memberName": "other"}), stack="copycat",
                          stack_outputs={SEED_STACK: seed_outputs})
    published = {**outputs_of(copycat), "member": "seed"}
    with pytest.raises(Exception, match=r"its memberName 'seed' \(locality cloud=seed\) is already the seed's"):
        run_program({**SEED, "members": ["organization/crdb-federation/copycat"]}, stack="seed",
                    secrets=SEED_SECRETS, stack_outputs={"organization/crdb-federation/copycat": published})


def test_the_seed_refuses_a_request_for_another_clouds_address(waiting_member, seed):
    seed_request = seed.cloud.named("seed-identity-node-csr").outputs["certRequestPem"]
    forged = {**outputs_of(waiting_member), "certificateRequests": {
        "node": seed_request, "client": outputs_of(waiting_member)["certificateRequests"]["client"]}}
    with pytest.raises(Exception, match=r"its node request names 198\.18\.\d+\.\d+, an address of the seed"):
        run_program({**SEED, "members": [MEMBER_STACK]}, stack="seed", secrets=SEED_SECRETS,
                    stack_outputs={MEMBER_STACK: forged})


def test_a_member_may_not_take_the_seeds_name(seed_outputs):
    with pytest.raises(Exception, match=r"memberName = 'seed': expected a name other than the seed's"):
        run_program(pinned_to(seed_outputs, {**MEMBER, "memberName": "seed"}), stack="x",
                    stack_outputs={SEED_STACK: seed_outputs})


def test_each_node_is_decommissioned_before_what_holds_it_and_the_cloud_before_its_nodes(member):
    cloud = member.cloud
    per_node = [cloud.named(f"vexxhost-k3s-{i}-decommission") for i in range(4)]
    whole = cloud.named("vexxhost-decommission")
    for index, decommission in enumerate(per_node):
        node = f"vexxhost-k3s-{index}"
        # The engine deletes a resource before what it depends on.
        for holder in (node, f"{node}-data", f"{node}-data-attach"):
            assert cloud.depends_on(decommission, cloud.named(holder)), (decommission.name, holder)
        assert decommission.outputs["addresses"] == [f"{member.output('nodes')[index]['publicIp']}:26257"]
        assert cloud.depends_on(whole, decommission)
    # Not on each other: removing one node leaves the others' dependencies as they are.
    for one in per_node:
        assert not [other for other in per_node if other is not one and cloud.depends_on(one, other)]
    props = whole.outputs
    assert props["addresses"] == [f"{n['publicIp']}:26257" for n in member.output("nodes")]
    # The member's own node client certificate: no CA key, no root certificate.
    assert props["certPem"] == node_files(member)["client.node.crt"] and "root" not in json.dumps(props["sqlHosts"])
    assert props["force"] is False


def kube_objects(run):
    return [r for r in run.cloud.resources if r.type.startswith("kubernetes:") and r.custom
            and not r.type.startswith("pulumi:providers")]


def test_kubernetes_objects_go_with_the_cluster_only_after_the_decommissioning(member):
    """The engine deletes independent resources in parallel, batch by batch (step_generator.go ScheduleDeletes),
    and when a delete fails it spares only what that resource depends on: so the whole cloud's decommissioning
    depends on every Kubernetes object. They then go after it (as no-ops: deleted with the cluster's server),
    and a refusal keeps them in the state, next to the servers it keeps."""
    server = member.cloud.named("vexxhost-k3s-0")
    whole = member.cloud.named("vexxhost-decommission")
    objects = kube_objects(member)
    assert len(objects) > 10
    for r in objects:
        assert r.options["deleted_with"] == server.urn, r.name
        assert member.cloud.depends_on(whole, r), r.name
    assert daemonset(member).options["custom_timeouts"] == {"create": "30m", "update": "30m"}


def test_the_kubernetes_provider_is_the_members_whatever_its_kubeconfig(member):
    """pulumi-kubernetes v4.32.0 DiffConfig replaces the provider when the kubeconfig is unknown or names another
    cluster, and every object with it, create-before-delete under the same names; clusterIdentifier alone
    decides instead."""
    provider = member.cloud.one("pulumi:providers:kubernetes")
    assert provider.inputs["clusterIdentifier"] == "vexxhost"


def test_a_failed_init_is_run_again_but_nothing_else_re_creates_it(signing_seed):
    init = signing_seed.cloud.named("seed-init")
    assert init.options["ignore_changes"] == ["metadata", "spec"]
    assert init.options["delete_before_replace"] is True
    assert init.options.get("replace_on_changes") == ["*"]


def plans(run):
    return [r.inputs for r in run.cloud.resources if r.type == "kubernetes:upgrade.cattle.io/v1:Plan"]


def test_in_place_upgrade_plans_follow_k3s_version(member):
    assert [p["metadata"]["name"] for p in plans(member)] == ["k3s-server", "k3s-agent"]
    assert {p["spec"]["version"] for p in plans(member)} == {"v1.35.5+k3s1"}
    crd = member.cloud.one("CustomResourceDefinition")
    for plan in member.cloud.of_type("upgrade.cattle.io/v1:Plan"):
        assert member.cloud.depends_on(plan, crd)
    upgraded = run_program({**MEMBER, "k3sVersion": "v1.35.6+k3s1", "osUpgradeVersion": "2026-12"},
                           stack="vexxhost", stack_outputs={SEED_STACK: {}}, preview=True)
    assert [p["spec"]["version"] for p in plans(upgraded)] == ["v1.35.6+k3s1", "v1.35.6+k3s1", "2026-12"]


def kubernetes_manifests(run):
    """The Kubernetes objects the program created, as manifests (the mocks carry numbers as floats);
    custom resources left out (their CRD is ours and accepts them)."""
    manifests = []
    for r in run.cloud.resources:
        if not r.type.startswith("kubernetes:") or r.type.startswith("kubernetes:providers"):
            continue
        manifest = {k: v for k, v in r.outputs.items() if k in (
            "apiVersion", "kind", "metadata", "spec", "data", "stringData", "type", "rules", "roleRef", "subjects")}
        if not manifest["apiVersion"].startswith("upgrade.cattle.io/"):
            manifests.append(json.loads(json.dumps(manifest), parse_float=lambda f: int(float(f))))
    return manifests


def test_every_kubernetes_object_is_valid(seed, member):
    for run in (seed, member):
        manifests = kubernetes_manifests(run)
        assert len(manifests) >= 7
        for manifest in manifests:
            assert_valid_kubernetes(manifest)


def test_kubernetes_resources_use_the_gated_provider(member):
    gate = member.cloud.named("vexxhost-api-ready")
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
    run = run_program(pinned_to(seed_outputs, config), stack="ovh", stack_outputs={SEED_STACK: seed_outputs})
    assert not run.cloud.of_type("FloatingIp") and not run.cloud.of_type("Router")
    for node in run.output("nodes"):
        assert node["publicIp"] == node["privateIp"]
    ports = run.cloud.of_type("networking/port:Port")
    assert {p.inputs["networkId"] for p in ports} == {"net-ext-net"}


def test_existing_kubernetes_stack_builds_no_servers(seed_outputs):
    kubeconfig = yaml.safe_dump({"clusters": [{"name": "magnum", "cluster": {"server": "https://198.20.1.5:6443"}}]})
    config = {**MEMBER, "kubernetesMode": "existing",
              "existingNodes": ["mag-node-0 198.20.1.10 10.0.0.10", "mag-node-1 198.20.1.11 10.0.0.11"]}
    run = run_program(pinned_to(seed_outputs, config), stack="magnum", secrets={"kubeconfig": kubeconfig},
                      stack_outputs={SEED_STACK: seed_outputs})
    assert not [r for r in run.cloud.resources if r.type.startswith("openstack:")]
    assert run.cloud.one("pulumi:providers:kubernetes").outputs["kubeconfig"] == kubeconfig
    # Its first up: nothing is signed yet, so every node waits.
    assert run.cloud.named("magnum-addresses").inputs["data"] == {
        "mag-node-0": "198.20.1.10 10.0.0.10 waiting\n", "mag-node-1": "198.20.1.11 10.0.0.11 waiting\n"}
    assert run.output("apiEndpoint") == "https://198.20.1.5:6443"
    # Its nodes get the label the DaemonSet selects; nothing decommissions before the pods that hold the nodes.
    labels = [p.inputs["metadata"] for p in run.cloud.of_type("core/v1:NodePatch")]
    assert labels == [{"name": f"mag-node-{i}", "labels": {"crdb-federation/cockroachdb": "true"}} for i in (0, 1)]
    for decommission in (run.cloud.named("mag-node-0-decommission"), run.cloud.named("magnum-decommission")):
        assert run.cloud.depends_on(decommission, daemonset(run))
        assert not decommission.options["deleted_with"]
    # Deleting a label patch takes the label off: the DaemonSet would stop the node's pod before its replicas
    # moved. Each patch, and the node Secret and namespace the decommission Job needs, go only after it.
    for node in ("mag-node-0", "mag-node-1"):
        decommission = run.cloud.named(f"{node}-decommission")
        for needed in (f"magnum-{node}-label", "magnum-cockroachdb-node-certs", "magnum-ns"):
            assert run.cloud.depends_on(decommission, run.cloud.named(needed)), (node, needed)
    whole = run.cloud.named("magnum-decommission")
    for r in kube_objects(run):
        assert run.cloud.depends_on(whole, r), r.name


def test_invalid_settings_create_nothing():
    cloud = FakeCloud()
    with pytest.raises(SettingsError) as error:
        run_program({**MEMBER, "nodeCount": 0, "adminCidrs": ["nope"]}, stack="broken", cloud=cloud)
    assert cloud.resources == [] and cloud.invokes == []
    assert "crdb-federation:nodeCount = '0'" in str(error.value)
    assert "crdb-federation:adminCidrs = 'nope'" in str(error.value)


def test_a_misspelt_key_is_refused_naming_the_key_it_resembles_and_no_secret_value():
    cloud = FakeCloud()
    with pytest.raises(SettingsError) as error:
        run_program({**MEMBER, "nodeCont": 5}, stack="typo", secrets={"enterpriseLicence": "crl-0-secret"},
                    cloud=cloud)
    assert cloud.resources == []
    assert [p for p in error.value.problems if "no such key" in p] == [
        "crdb-federation:enterpriseLicence = '[secret]': expected no such key: this program reads "
        "crdb-federation:enterpriseLicense",
        "crdb-federation:nodeCont = '5': expected no such key: this program reads crdb-federation:nodeCount"]


def test_member_of_a_seed_without_outputs_fails_naming_the_seed_stack():
    # The seed's stack exists but has exported nothing yet (it is not up): `up` must say so, not KeyError.
    with pytest.raises(Exception, match=r"seedStack = 'organization/crdb-federation/seed': that stack has no "
                                        r"output '\w+'\. Bring the seed up first"):
        run_program({**MEMBER, "caSha256": ["ab" * 32], "clientCaSha256": ["cd" * 32]}, stack="vexxhost",
                    stack_outputs={SEED_STACK: {}})


def test_a_certificate_covers_exactly_the_addresses_it_names(member):
    from components.federation import covers
    cert = node_files(member)["client.node.crt"], node_files(member)["node.crt"]
    node = member.output("nodes")[0]
    assert covers(cert[1], node["publicIp"], node["privateIp"])
    assert not covers(cert[1], node["publicIp"], "198.18.250.250")
    assert not covers(cert[0], node["publicIp"]) and not covers(None, node["publicIp"])
