"""CockroachDB renderers: the start command is executed (with a fake cockroach that records its argv),
scripts pass shellcheck, and every manifest passes strict Kubernetes OpenAPI validation."""

import json
import subprocess

import pytest
from kubernetes_validate import ValidationError

from components import cockroach_manifests as m
from tests.validators import assert_shellcheck_clean, assert_valid_kubernetes

NODES = (
    m.NodeAddresses("vexxhost-k3s-0", "203.0.113.10", "10.20.0.10"),
    m.NodeAddresses("vexxhost-k3s-1", "203.0.113.11", "10.20.0.11"),
    m.NodeAddresses("vexxhost-k3s-2", "203.0.113.12", "10.20.0.12"),
)
SEED_JOIN = ("198.51.100.1:26257", "198.51.100.2:26257", "198.51.100.3:26257")


def spec(**overrides):
    values = dict(
        namespace="cockroachdb", member="vexxhost", region="ca-ymq-1", zone="az1", cluster_name="crdb-federation",
        image="cockroachdb/cockroach:v26.2.0", replicas=3, join=SEED_JOIN, insecure=False, memory="4Gi", cpu="2",
        storage_size="100Gi", storage_class="local-path", nodes=NODES,
    )
    values.update(overrides)
    return m.CockroachSpec(**values)


FAKE_COCKROACH = """#!/usr/bin/env python3
import json, sys, os
with open(os.environ["ARGV_FILE"], "w") as handle:
    json.dump(sys.argv[1:], handle)
"""


def run_start_script(tmp_path, script, node_name, addresses=None):
    """Runs the container command as Kubernetes would, returning (exit code, argv given to cockroach, stderr)."""
    address_dir = tmp_path / "addresses"
    address_dir.mkdir(exist_ok=True)
    for name, line in (addresses or m.render_address_config_map(spec())["data"]).items():
        (address_dir / name).write_text(line)
    fake = tmp_path / "cockroach"
    fake.write_text(FAKE_COCKROACH)
    fake.chmod(0o755)
    argv_file = tmp_path / "argv.json"
    env = {"PATH": "/usr/bin:/bin", "NODE_NAME": node_name, "ADDRESS_DIR": str(address_dir),
           "COCKROACH": str(fake), "ARGV_FILE": str(argv_file)}
    result = subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    argv = json.loads(argv_file.read_text()) if argv_file.exists() else None
    return result.returncode, argv, result.stderr


@pytest.mark.parametrize("node", NODES, ids=lambda n: n.name)
def test_each_pod_starts_with_exactly_the_flags_of_its_node(tmp_path, node):
    container = m.render_statefulset(spec())["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["/bin/bash", "-c"]
    code, argv, stderr = run_start_script(tmp_path, container["command"][2], node.name)
    assert code == 0, stderr
    assert argv == [
        "start",
        f"--advertise-addr={node.public_ip}:26257",
        f"--locality-advertise-addr=cloud=vexxhost@{node.private_ip}:26257",
        "--listen-addr=:26257",
        "--http-addr=:8080",
        "--locality=cloud=vexxhost,region=ca-ymq-1,zone=az1",
        "--join=198.51.100.1:26257,198.51.100.2:26257,198.51.100.3:26257",
        "--cluster-name=crdb-federation",
        "--certs-dir=/cockroach/cockroach-certs",
        "--store=path=/cockroach/cockroach-data",
        "--cache=25%",
        "--max-sql-memory=25%",
    ]


def test_insecure_mode_has_no_certs_dir(tmp_path):
    script = m.render_start_script(spec(insecure=True))
    _, argv, _ = run_start_script(tmp_path, script, NODES[0].name)
    assert "--insecure" in argv
    assert not [a for a in argv if a.startswith("--certs-dir")]


def test_unknown_node_fails_clearly_without_starting(tmp_path):
    code, argv, stderr = run_start_script(tmp_path, m.render_start_script(spec()), "stranger")
    assert code == 1 and argv is None
    assert "no advertised addresses for node stranger" in stderr


def test_address_file_without_final_newline_still_starts(tmp_path):
    code, argv, stderr = run_start_script(tmp_path, m.render_start_script(spec()), "x", {"x": "203.0.113.9 10.0.0.9"})
    assert code == 0, stderr
    assert "--advertise-addr=203.0.113.9:26257" in argv


def test_malformed_address_file_fails(tmp_path):
    code, argv, stderr = run_start_script(tmp_path, m.render_start_script(spec()), "x", {"x": "203.0.113.9"})
    assert code == 1 and argv is None
    assert "must hold" in stderr


def test_scripts_pass_shellcheck():
    for insecure in (False, True):
        s = spec(insecure=insecure)
        assert_shellcheck_clean(m.render_start_script(s), "bash")
        assert_shellcheck_clean(m.render_init_script(s, "10.20.0.10"), "bash")
        assert_shellcheck_clean(m.render_replication_script(s, "10.20.0.10", 5), "bash")


def run_client_script(tmp_path, script, fake_body):
    fake = tmp_path / "cockroach"
    fake.write_text("#!/bin/bash\n" + fake_body)
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "COCKROACH": str(fake), "RETRY_SECONDS": "0", "CALLS": str(tmp_path / "calls")}
    return subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_init_succeeds_once_or_when_already_initialised(tmp_path):
    script = m.render_init_script(spec(), "10.20.0.10")
    ok = run_client_script(tmp_path, script, 'echo "$@" >> "$CALLS"; echo "Cluster successfully initialized"')
    assert ok.returncode == 0
    assert (tmp_path / "calls").read_text().split() == [
        "init", "--certs-dir=/cockroach/cockroach-certs", "--host=10.20.0.10:26257", "--cluster-name=crdb-federation"]
    again = run_client_script(tmp_path, script, 'echo "ERROR: cluster has already been initialized"; exit 1')
    assert again.returncode == 0 and "already initialised" in again.stdout


def test_init_retries_until_the_node_answers(tmp_path):
    body = 'echo x >> "$CALLS"; [ "$(wc -l < "$CALLS")" -ge 3 ] || { echo "connection refused"; exit 1; }'
    result = run_client_script(tmp_path, m.render_init_script(spec(), "10.20.0.10"), body)
    assert result.returncode == 0
    assert len((tmp_path / "calls").read_text().splitlines()) == 3


def test_replication_job_sets_the_factor(tmp_path):
    result = run_client_script(tmp_path, m.render_replication_script(spec(), "10.20.0.10", 5),
                               'printf "%s\\n" "$@" >> "$CALLS"')
    assert result.returncode == 0
    calls = (tmp_path / "calls").read_text().splitlines()
    assert "--execute=ALTER RANGE default CONFIGURE ZONE USING num_replicas = 5;" in calls


def all_manifests(s):
    return [
        m.render_namespace(s), m.render_address_config_map(s),
        m.render_secret(s, m.NODE_SECRET, {"ca.crt": "x", "node.crt": "y", "node.key": "z"}),
        *m.render_services(s), m.render_pod_disruption_budget(s), m.render_statefulset(s),
        m.render_job(s, "init", m.render_init_script(s, "10.20.0.10")),
        m.render_job(s, "replication-5", m.render_replication_script(s, "10.20.0.10", 5)),
    ]


@pytest.mark.parametrize("insecure", [False, True])
def test_every_manifest_passes_strict_openapi_validation(insecure):
    for manifest in all_manifests(spec(insecure=insecure)):
        assert_valid_kubernetes(manifest)


def test_validator_rejects_a_wrong_manifest():
    broken = m.render_statefulset(spec())
    broken["spec"]["podManagmentPolicy"] = "Parallel"
    with pytest.raises(ValidationError):
        assert_valid_kubernetes(broken)


def test_statefulset_follows_the_design():
    sts = m.render_statefulset(spec())
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["terminationGracePeriodSeconds"] >= 300
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert container["resources"]["requests"] == container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    probe = container["readinessProbe"]
    assert probe == {"httpGet": {"path": "/health?ready=1", "port": 8080, "scheme": "HTTPS"},
                     "initialDelaySeconds": 10, "periodSeconds": 5, "failureThreshold": 2}
    assert "livenessProbe" not in container
    certs = next(v for v in pod["volumes"] if v["name"] == "certs")
    assert certs["secret"] == {"secretName": m.NODE_SECRET, "defaultMode": 0o400}
    claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "local-path" and claim["resources"]["requests"]["storage"] == "100Gi"
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in container["env"]


def test_services_and_budget():
    headless, public = m.render_services(spec())
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert public["metadata"]["name"] == "cockroachdb-public"
    assert {p["port"] for p in public["spec"]["ports"]} == {26257, 8080}
    assert m.render_pod_disruption_budget(spec())["spec"]["maxUnavailable"] == 1


def test_address_map_is_keyed_by_node_name():
    assert m.render_address_config_map(spec())["data"] == {
        "vexxhost-k3s-0": "203.0.113.10 10.20.0.10\n", "vexxhost-k3s-1": "203.0.113.11 10.20.0.11\n",
        "vexxhost-k3s-2": "203.0.113.12 10.20.0.12\n"}


def test_changed_join_list_changes_the_pod_template():
    a = m.render_statefulset(spec())["spec"]["template"]["metadata"]["annotations"]
    b = m.render_statefulset(spec(join=SEED_JOIN[:2]))["spec"]["template"]["metadata"]["annotations"]
    assert a != b


def test_node_certificate_names():
    assert "cockroachdb-public.cockroachdb.svc.cluster.local" in m.node_certificate_dns_names("cockroachdb")
    assert m.node_certificate_ips(NODES) == ["127.0.0.1", "203.0.113.10", "10.20.0.10", "203.0.113.11",
                                             "10.20.0.11", "203.0.113.12", "10.20.0.12"]
