"""CockroachDB renderers: the start script and jobs are executed (with a fake cockroach that records what
it is given), scripts pass shellcheck, and every manifest passes strict Kubernetes OpenAPI validation."""

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest
from kubernetes_validate import ValidationError

from components import cockroach_manifests as m
from components import upgrades
from components.ops_user import OPS_CERT_FILE, OPS_KEY_FILE, OPS_USER
from tests.validators import assert_shellcheck_clean, assert_valid_kubernetes

NODES = (
    m.NodeAddresses("vexxhost-k3s-0", "198.18.0.10", "10.20.0.10"),
    m.NodeAddresses("vexxhost-k3s-1", "198.18.0.11", "10.20.0.11"),
    m.NodeAddresses("vexxhost-k3s-2", "198.18.0.12", "10.20.0.12"),
)
SEED_JOIN = ("198.19.0.1:26257", "198.19.0.2:26257", "198.19.0.3:26257")


def spec(**overrides):
    values = dict(
        namespace="cockroachdb", member="vexxhost", region="ca-ymq-1", zone="az1", cluster_name="crdb-federation",
        image="cockroachdb/cockroach:v26.2.0", memory="4Gi", cpu="2", nodes=NODES,
    )
    values.update(overrides)
    return m.CockroachSpec(**values)


FAKE_COCKROACH = """#!/usr/bin/env python3
import json, os, signal, sys, time
with open(os.environ["ARGV_FILE"], "w") as handle:
    json.dump(sys.argv[1:], handle)
if os.environ.get("STAY"):
    def note(sig, _):
        with open(os.environ["SIGNALS_FILE"], "a") as handle:
            handle.write(signal.Signals(sig).name + "\\n")
        if sig == signal.SIGTERM:
            sys.exit(0)
    signal.signal(signal.SIGHUP, note)
    signal.signal(signal.SIGTERM, note)
    while True:
        time.sleep(0.1)
"""


def node_dirs(tmp_path, addresses=None, *, signed=True, join=SEED_JOIN):
    """The files Kubernetes mounts into a pod: addresses, the join list and the node certificates."""
    address_dir, join_dir, certs = tmp_path / "addresses", tmp_path / "join", tmp_path / "certs"
    for directory in (address_dir, join_dir, certs):
        directory.mkdir(exist_ok=True)
    for name, line in (addresses or m.render_address_config_map(spec())["data"]).items():
        (address_dir / name).write_text(line)
    (join_dir / "join").write_text(m.render_join_config_map(spec(), join)["data"]["join"])
    (certs / "ca.crt").write_text("ca")
    if signed:
        for name in ("node.crt", "client.node.crt"):
            (certs / name).write_text("signed")
    return {"ADDRESS_DIR": str(address_dir), "JOIN_DIR": str(join_dir), "CERTS_DIR": str(certs)}


def start_env(tmp_path, node_name, dirs, **extra):
    fake = tmp_path / "cockroach"
    fake.write_text(FAKE_COCKROACH)
    fake.chmod(0o755)
    return {"PATH": "/usr/bin:/bin", "NODE_NAME": node_name, "COCKROACH": str(fake),
            "ARGV_FILE": str(tmp_path / "argv.json"), "SIGNALS_FILE": str(tmp_path / "signals"), **dirs, **extra}


def run_start_script(tmp_path, script, node_name, addresses=None):
    """Runs the container command as Kubernetes would, returning (exit code, argv given to cockroach, stderr)."""
    env = start_env(tmp_path, node_name, node_dirs(tmp_path, addresses))
    result = subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    argv_file = tmp_path / "argv.json"
    argv = json.loads(argv_file.read_text()) if argv_file.exists() else None
    return result.returncode, argv, result.stderr


def container(**overrides):
    return m.render_daemonset(spec(**overrides))["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("node", NODES, ids=lambda n: n.name)
def test_each_pod_starts_with_exactly_the_flags_of_its_node(tmp_path, node):
    command = container()["command"]
    assert command[:2] == ["/bin/bash", "-c"]
    code, argv, stderr = run_start_script(tmp_path, command[2], node.name)
    assert code == 0, stderr
    assert argv == [
        "start",
        "--listen-addr=:26257",
        f"--advertise-addr={node.public_ip}:26257",
        f"--locality-advertise-addr=cloud=vexxhost@{node.private_ip}:26257",
        "--sql-addr=:26258",
        f"--advertise-sql-addr={node.public_ip}:26258",
        "--http-addr=:8080",
        "--locality=cloud=vexxhost,region=ca-ymq-1,zone=az1",
        "--join=198.19.0.1:26257,198.19.0.2:26257,198.19.0.3:26257",
        "--cluster-name=crdb-federation",
        "--certs-dir=/cockroach/cockroach-certs",
        "--store=path=/cockroach/cockroach-data",
        "--cache=25%",
        "--max-sql-memory=25%",
    ]


def test_unknown_node_fails_clearly_without_starting(tmp_path):
    code, argv, stderr = run_start_script(tmp_path, m.render_start_script(spec()), "stranger")
    assert code == 1 and argv is None
    assert "no advertised addresses for node stranger" in stderr


def test_address_file_without_final_newline_still_starts(tmp_path):
    code, argv, stderr = run_start_script(tmp_path, m.render_start_script(spec()), "x",
                                          {"x": "198.18.0.9 10.0.0.9 signed"})
    assert code == 0, stderr
    assert "--advertise-addr=198.18.0.9:26257" in argv


def test_malformed_address_file_fails(tmp_path):
    code, argv, stderr = run_start_script(tmp_path, m.render_start_script(spec()), "x", {"x": "198.18.0.9"})
    assert code == 1 and argv is None
    assert "must hold" in stderr


def wait_for(predicate, seconds=15.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_a_node_waits_for_its_signed_certificates_then_starts(tmp_path):
    dirs = node_dirs(tmp_path, signed=False)
    env = start_env(tmp_path, NODES[0].name, dirs, CERT_CHECK_SECONDS="1")
    process = subprocess.Popen(["/bin/bash", "-c", m.render_start_script(spec())], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert process.poll() is None and not (tmp_path / "argv.json").exists()
        for name in ("node.crt", "client.node.crt"):
            (tmp_path / "certs" / name).write_text("signed")
        assert process.wait(timeout=15) == 0
        assert "waiting for the seed to sign" in process.stdout.read()
        assert json.loads((tmp_path / "argv.json").read_text())[0] == "start"
    finally:
        process.kill()


def test_a_node_added_since_the_last_signature_waits_until_the_certificate_covers_it(tmp_path):
    added = spec(nodes=NODES + (m.NodeAddresses("vexxhost-k3s-3", "198.18.0.13", "10.20.0.13", signed=False),))
    addresses = m.render_address_config_map(added)["data"]
    assert addresses["vexxhost-k3s-3"] == "198.18.0.13 10.20.0.13 waiting\n"
    env = start_env(tmp_path, "vexxhost-k3s-3", node_dirs(tmp_path, addresses), CERT_CHECK_SECONDS="1")
    process = subprocess.Popen(["/bin/bash", "-c", m.render_start_script(added)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert process.poll() is None and not (tmp_path / "argv.json").exists()
        (tmp_path / "addresses" / "vexxhost-k3s-3").write_text("198.18.0.13 10.20.0.13 signed\n")
        assert process.wait(timeout=15) == 0
        assert "--advertise-addr=198.18.0.13:26257" in json.loads((tmp_path / "argv.json").read_text())
    finally:
        process.kill()


def test_renewed_certificates_reach_the_running_process_by_sighup_and_sigterm_drains_it(tmp_path):
    env = start_env(tmp_path, NODES[0].name, node_dirs(tmp_path), CERT_CHECK_SECONDS="1", STAY="1")
    process = subprocess.Popen(["/bin/bash", "-c", m.render_start_script(spec())], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    signals = tmp_path / "signals"
    try:
        assert wait_for((tmp_path / "argv.json").exists)
        (tmp_path / "certs" / "node.crt").write_text("renewed")
        assert wait_for(lambda: signals.exists() and "SIGHUP" in signals.read_text())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert signals.read_text().split() == ["SIGHUP", "SIGTERM"]
    finally:
        process.kill()


def test_scripts_pass_shellcheck():
    s = spec()
    assert_shellcheck_clean(m.render_start_script(s), "bash")
    assert_shellcheck_clean(m.render_init_script(s, "10.20.0.10"), "bash")
    for factor in (0, 5):
        assert_shellcheck_clean(m.render_cluster_settings_script("10.20.0.10", factor), "bash")
    job = m.render_decommission_job("cockroachdb", s.image, "decommission-x", [4, 5], "10.20.0.11:26257", 3600,
                                    "crdb-federation")
    assert_shellcheck_clean(job["spec"]["template"]["spec"]["containers"][0]["command"][2], "bash")
    assert_shellcheck_clean(upgrades.os_upgrade_gate_script(8080), "sh")
    assert_shellcheck_clean(upgrades.os_upgrade_script(), "sh")


def run_client_script(tmp_path, script, fake_body, **env):
    fake = tmp_path / "cockroach"
    fake.write_text("#!/bin/bash\n" + fake_body)
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "COCKROACH": str(fake), "RETRY_SECONDS": "0", "PROBE_SECONDS": "2",
           "CALLS": str(tmp_path / "calls"), **env}
    return subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)


def calls(tmp_path):
    return [line.split() for line in (tmp_path / "calls").read_text().splitlines()]


def test_init_runs_when_the_cluster_does_not_answer_yet(tmp_path):
    script = m.render_init_script(spec(), "10.20.0.10")
    body = ('echo "$@" >> "$CALLS"; case "$1" in sql) exit 1 ;; init) echo "Cluster successfully initialized" ;; esac')
    assert run_client_script(tmp_path, script, body).returncode == 0
    assert calls(tmp_path) == [
        ["sql", "--host=10.20.0.10:26258", "--execute=SELECT", "1", "--certs-dir=/cockroach/cockroach-certs"],
        ["init", "--host=10.20.0.10:26257", "--cluster-name=crdb-federation", "--certs-dir=/cockroach/cockroach-certs"],
    ]


def test_init_is_skipped_when_the_cluster_already_answers(tmp_path):
    body = 'echo "$@" >> "$CALLS"'
    result = run_client_script(tmp_path, m.render_init_script(spec(), "10.20.0.10"), body)
    assert result.returncode == 0 and "already answers SQL" in result.stdout
    assert [c[0] for c in calls(tmp_path)] == ["sql"]


def test_init_accepts_an_initialised_cluster_and_retries_until_the_node_answers(tmp_path):
    body = ('echo "$@" >> "$CALLS"; [ "$1" = sql ] && exit 1; '
            '[ "$(grep -c ^init "$CALLS")" -ge 3 ] || { echo "connection refused"; exit 1; }; '
            'echo "ERROR: cluster has already been initialized"; exit 1')
    result = run_client_script(tmp_path, m.render_init_script(spec(), "10.20.0.10"), body)
    assert result.returncode == 0 and "already initialised" in result.stdout
    assert [c[0] for c in calls(tmp_path)] == ["sql", "init", "init", "init"]


@pytest.mark.parametrize("clouds, factor", [(1, 3), (4, 3), (5, 5), (7, 5)])
def test_cluster_settings_follow_the_clouds_present(tmp_path, clouds, factor):
    licence = tmp_path / "licence"
    licence.mkdir()
    (licence / "organization").write_text("Acme's Databases")
    (licence / "license").write_text("crl-0-abc")
    body = f'printf "%s\\n" "$@" >> "$CALLS"; case "$*" in *count*) printf "count\\n{clouds}\\n" ;; esac'
    result = run_client_script(tmp_path, m.render_cluster_settings_script("10.20.0.10", 0), body,
                               LICENCE_DIR=str(licence))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "calls").read_text().splitlines()
    assert "--execute=SET CLUSTER SETTING cluster.organization = 'Acme''s Databases';" in lines
    assert "--execute=SET CLUSTER SETTING enterprise.license = 'crl-0-abc';" in lines
    assert f"--execute=ALTER RANGE default CONFIGURE ZONE USING num_replicas = {factor};" in lines
    assert "--host=10.20.0.10:26258" in lines
    assert m.replication_factor_for(clouds) == factor


def test_a_pinned_replication_factor_is_kept(tmp_path):
    licence = tmp_path / "licence"
    licence.mkdir()
    for name in ("organization", "license"):
        (licence / name).write_text("x")
    result = run_client_script(tmp_path, m.render_cluster_settings_script("10.20.0.10", 7),
                               'printf "%s\\n" "$@" >> "$CALLS"', LICENCE_DIR=str(licence))
    lines = (tmp_path / "calls").read_text().splitlines()
    assert result.returncode == 0 and "--execute=ALTER RANGE default CONFIGURE ZONE USING num_replicas = 7;" in lines
    assert not [line for line in lines if "count" in line]


def all_manifests(s):
    return [
        m.render_namespace(s), m.render_address_config_map(s), m.render_join_config_map(s, SEED_JOIN),
        m.render_secret(s, m.NODE_SECRET, {"ca.crt": "x", "node.crt": "y", "node.key": "z"}),
        m.render_public_service(s), m.render_daemonset(s),
        m.render_daemonset(spec(http_proxy="http://proxy.example:3128", no_proxy=("localhost",)), await_ready=False),
        m.render_job(s, "init", m.render_init_script(s, "10.20.0.10")),
        m.render_cluster_settings_cron_job(s, "10.20.0.10", 0),
        m.render_decommission_job("cockroachdb", s.image, "decommission-x", [4], "10.20.0.11:26257", 3600, "x"),
        upgrades.render_plan_crd(), *upgrades.render_controller(), *upgrades.render_k3s_plans("v1.35.6+k3s1"),
        upgrades.render_os_plan("2026-12", ["10.20.0.10"], 8080),
    ]


def test_every_manifest_passes_strict_openapi_validation():
    for manifest in all_manifests(spec()):
        if manifest["apiVersion"].startswith("upgrade.cattle.io/"):
            continue  # a custom resource: the CRD is ours and accepts it; validated by shape below
        assert_valid_kubernetes(manifest)


def test_validator_rejects_a_wrong_manifest():
    broken = m.render_daemonset(spec())
    broken["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailabel"] = 1
    with pytest.raises(ValidationError):
        assert_valid_kubernetes(broken)


def test_daemonset_follows_the_design():
    ds = m.render_daemonset(spec())
    pod = ds["spec"]["template"]["spec"]
    main = pod["containers"][0]
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["terminationGracePeriodSeconds"] >= 300
    assert pod["nodeSelector"] == {m.NODE_LABEL: "true"}
    assert main["resources"]["requests"] == main["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert main["readinessProbe"] == {"httpGet": {"path": "/health?ready=1", "port": 8080, "scheme": "HTTPS"},
                                      "initialDelaySeconds": 10, "periodSeconds": 5, "failureThreshold": 2}
    assert "livenessProbe" not in main
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["certs"]["secret"] == {"secretName": m.NODE_SECRET, "defaultMode": 0o400}
    # The store is the node's own data volume; a node whose volume is not mounted never starts one.
    assert volumes["datadir"]["hostPath"] == {"path": m.HOST_STORE_DIR, "type": "Directory"}
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in main["env"]
    assert "--insecure" not in main["command"][2]
    assert "metadata" not in ds or "annotations" not in ds["metadata"]


def test_pods_get_the_proxy_and_unsigned_members_are_not_awaited():
    env = {e["name"]: e.get("value") for e in container(http_proxy="http://proxy:3128", no_proxy=("a", "b"))["env"]}
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://proxy:3128" and env["NO_PROXY"] == "a,b"
    assert "HTTPS_PROXY" not in {e["name"] for e in container()["env"]}
    waiting = m.render_daemonset(spec(), await_ready=False)
    assert waiting["metadata"]["annotations"] == {"pulumi.com/skipAwait": "true"}
    assert waiting["spec"] == m.render_daemonset(spec())["spec"]


def test_what_changes_while_nodes_run_never_touches_the_pod_template():
    """A new join list, a new node's addresses or renewed certificates restart nothing."""
    template = m.render_daemonset(spec())["spec"]["template"]
    more_nodes = spec(nodes=NODES + (m.NodeAddresses("vexxhost-k3s-3", "198.18.0.13", "10.20.0.13"),))
    assert m.render_daemonset(more_nodes)["spec"]["template"] == template
    assert m.render_join_config_map(spec(), SEED_JOIN) != m.render_join_config_map(spec(), SEED_JOIN[:2])


def test_service():
    public = m.render_public_service(spec())
    assert public["metadata"]["name"] == "cockroachdb-public"
    assert {p["port"] for p in public["spec"]["ports"]} == {26257, 26258, 8080}


def test_seed_jobs_keep_no_ttl_and_settings_run_on_a_schedule():
    init = m.render_job(spec(), "init", "true")
    assert "ttlSecondsAfterFinished" not in init["spec"]
    cron = m.render_cluster_settings_cron_job(spec(), "10.20.0.10", 0)
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["schedule"] == m.SETTINGS_SCHEDULE
    mounts = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    assert {v["secret"]["secretName"] for v in mounts} == {m.CLIENT_SECRET, m.LICENCE_SECRET}


def test_decommission_job_uses_the_members_own_node_certificates():
    """The exact command line, every flag as CockroachDB v26's docs list it (cockroach-node, "Client connection"
    and decommission flags): --host "of any live node", --certs-dir, --cluster-name (the nodes run with one:
    cockroach-start says node decommission "must specify either --cluster-name or
    --disable-cluster-name-verification"), --cert-principal-map, --wait."""
    job = m.render_decommission_job("cockroachdb", "img:v1", "decommission-x", [4, 5], "10.20.0.11:26257", 3600,
                                    "crdb-federation")
    pod = job["spec"]["template"]["spec"]
    # The RPC client always loads client.root.crt (pkg/base/config.go: the CLI's user is root): the member's
    # client.node.crt goes there, CN=node mapped to root for the client's own check.
    assert pod["volumes"] == [{"name": "certs", "secret": {
        "secretName": m.NODE_SECRET, "defaultMode": 0o400, "items": [
            {"key": "ca.crt", "path": "ca.crt"}, {"key": "client.node.crt", "path": "client.root.crt"},
            {"key": "client.node.key", "path": "client.root.key"}]}}]
    command = pod["containers"][0]["command"][2]
    assert command == (
        'set -euo pipefail\n"${COCKROACH:-/cockroach/cockroach}" node decommission 4 5 --host=10.20.0.11:26257 '
        "--cluster-name=crdb-federation --cert-principal-map=node:root --wait=all "
        "--certs-dir=/cockroach/cockroach-certs\n")
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    # A resource created before clusterName was one of its properties: the nodes' name is not checked.
    older = m.render_decommission_job("cockroachdb", "img:v1", "d", [4], "10.20.0.11:26257", 60, None)
    assert "--disable-cluster-name-verification" in older["spec"]["template"]["spec"]["containers"][0]["command"][2]


def test_upgrade_plans_go_one_node_at_a_time_server_first():
    server, agent = upgrades.render_k3s_plans("v1.35.6+k3s1")
    for plan in (server, agent):
        assert plan["spec"]["concurrency"] == 1 and plan["spec"]["version"] == "v1.35.6+k3s1"
        assert plan["spec"]["cordon"] is True and plan["spec"]["exclusive"] is True
    assert agent["spec"]["prepare"]["args"] == ["prepare", "k3s-server"]
    os_plan = upgrades.render_os_plan("2026-12", ["10.20.0.10", "10.20.0.11"], 8080)
    assert os_plan["spec"]["concurrency"] == 1 and os_plan["spec"]["drain"]["force"] is True
    assert os_plan["spec"]["upgrade"]["command"] == os_plan["spec"]["prepare"]["command"] == ["chroot", "/host"]
    # The controller's default Job deadline (900 s) cannot hold two health waits, apt and a reboot.
    assert os_plan["spec"]["jobActiveDeadlineSecs"] == 7200 and os_plan["spec"]["postCompleteDelay"] == "2m"
    # ContainerSpec's env field is `envs` (system-upgrade-controller v0.20.1 types.go).
    assert os_plan["spec"]["prepare"]["envs"] == [{"name": "CRDB_NODES", "value": "10.20.0.10 10.20.0.11"}]


# The OS plan's Job, run as the controller makes it, on vexxhost-k3s-1 (n8) in a federation of three clouds with
# three nodes each. The fake commands answer from a FakeCluster (tests/fakes.py), state after state: each `sleep`
# of the scripts moves to the next state, the last one stays.
THIS_NODE = "vexxhost-k3s-1"
VEX_PRIVATE = {7: "10.20.0.10", 8: "10.20.0.11", 9: "10.20.0.12"}


def federation_cluster(*, down=(), lagging=False):
    """Every range has a replica in each cloud. r1: on this node, its lease in seed (n1) and its otc replica on n4;
    r2: led here (n7); with `lagging`, r3 (led by n9) has only two replicas while it is up-replicated."""
    from tests.fakes import FakeCluster, FakeNode, FakeRange

    clouds = {1: "seed", 2: "seed", 3: "seed", 4: "otc", 5: "otc", 6: "otc", 7: "vexxhost", 8: "vexxhost",
              9: "vexxhost"}
    nodes = [FakeNode(i, f"198.18.{(i - 1) // 3 + 1}.{(i - 1) % 3 + 1}:26257", f"cloud={cloud},region=r,zone=z",
                      is_live=i not in down, private_ip=VEX_PRIVATE.get(i, "")) for i, cloud in clouds.items()]
    ranges = [FakeRange(1, (1, 4, 8), 1), FakeRange(2, (7, 5, 2), 7),
              FakeRange(3, (9, 6) if lagging else (9, 6, 3), 9)]
    return FakeCluster(nodes, ranges=tuple(ranges))


# A signed node's secret (components/cockroach.py node_files): the node's, client.node's and the SQL user's files.
NODE_SECRET_FILES = (*m.NODE_FILES, OPS_CERT_FILE, OPS_KEY_FILE)


def cluster_answer_csv(cluster):
    """What `cockroach sql --format=csv --user=<the members' SQL user>` prints for the gate's statements, answered by
    this node's CockroachDB."""
    connection = cluster.connect("198.18.3.2", user=OPS_USER)
    connection.execute(upgrades.ALLOW_INTERNALS_SQL)
    not_live, at_risk = connection.execute(upgrades.GATE_SQL).fetchone()
    return f"nodes_not_live,ranges_at_risk\n{not_live},{at_risk}\n"


def write_state(directory, cluster, *, certificates=NODE_SECRET_FILES):
    """`certificates`: the files of this node's secret, mounted at CERTS_DIR in its CockroachDB container."""
    directory.mkdir(parents=True)
    for node_id, ip in VEX_PRIVATE.items():
        if cluster.ready(node_id):
            (directory / f"ready-{ip}").write_text("")
        (directory / f"vars-{ip}").write_text(cluster.prometheus_vars(node_id))
    live_here = cluster.node(8).is_live
    (directory / "container").write_text("c0ffee\n" if live_here else "")
    (directory / "certs").mkdir()
    for name in certificates:
        (directory / "certs" / name).write_text("pem")
    if live_here:
        (directory / "sql").write_text(cluster_answer_csv(cluster))


FAKE_STATE = 'n=$(cat "$T/count"); [ -d "$T/states/$n" ] || n=$(cat "$T/last"); state="$T/states/$n"\n'
FAKE_COMMANDS = {
    # CockroachDB's HTTP endpoints, this cloud's nodes only (as the gate reaches them).
    "curl": FAKE_STATE + 'url=""; for a in "$@"; do url=$a; done; echo "curl $url" >> "$T/calls"\n'
                         'ip=${url#https://}; ip=${ip%%:*}\n'
                         'case "$url" in *health*) [ -e "$state/ready-$ip" ] ;;\n'
                         '  *_status/vars*) cat "$state/vars-$ip" ;; esac',
    # k3s's crictl: the CockroachDB container of this node, and in it a shell test of its mounted certificates (their
    # directory is the state's certs/) or `cockroach sql`.
    "k3s": FAKE_STATE + 'echo "k3s $*" >> "$T/calls"\n'
                        'case "$2" in ps) cat "$state/container" ;;\n'
                        '  exec) case "$4" in /bin/bash) shift 5\n'
                        f'      /bin/sh -c "$(printf %s "$1" | sed "s#{m.CERTS_DIR}#$state/certs#g")" ;;\n'
                        '    *) [ -s "$state/sql" ] && cat "$state/sql" ;; esac ;; esac',
    "apt-get": 'echo "apt-get $*" >> "$T/calls"',
    "systemctl": 'echo "systemctl $*" >> "$T/calls"',
    "sleep": 'echo "sleep $*" >> "$T/calls"; echo $(($(cat "$T/count") + 1)) > "$T/count"',
    "hostname": f"echo {THIS_NODE}",
}


def job_steps(plan):
    """The Job pod's containers in the order system-upgrade-controller v0.20.1 pkg/upgrade/job/job.go makes them
    ("first, we prepare", "then we cordon/drain": init containers, each run to success before the next), then the
    upgrade container."""
    spec = plan["spec"]
    steps = [("prepare", spec["prepare"])] if spec.get("prepare") else []
    if spec.get("drain") is not None or spec.get("cordon"):
        steps.append(("drain" if spec.get("drain") is not None else "cordon", None))
    return steps + [("upgrade", spec["upgrade"])]


def run_os_upgrade_job(tmp_path, states, *, reboot_required, certificates=NODE_SECRET_FILES):
    """One pod of the OS plan's Job: each container's script with the fake commands; a drain (which cordons the
    node) is recorded as `drain <node>`. Returns the last container's result and every call made."""
    plan = upgrades.render_os_plan("2026-12", list(VEX_PRIVATE.values()), 8080)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE_COMMANDS.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    for index, cluster in enumerate(states):
        write_state(tmp_path / "states" / str(index), cluster, certificates=certificates)
    (tmp_path / "count").write_text("0")
    (tmp_path / "last").write_text(str(len(states) - 1))
    (tmp_path / "calls").write_text("")
    if reboot_required:
        (tmp_path / "reboot-required").write_text("")
    done = None
    for name, container in job_steps(plan):
        if container is None:
            with open(tmp_path / "calls", "a") as calls:
                calls.write(f"{name} {THIS_NODE}\n")
            continue
        assert container["command"] == ["chroot", "/host"] and container["args"][:2] == ["sh", "-c"]
        script = container["args"][2].replace("/var/run/reboot-required", str(tmp_path / "reboot-required"))
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "T": str(tmp_path),
               **{e["name"]: e["value"] for e in container.get("envs", [])}}
        # The unhealthy case runs 180 rounds of fakes: seconds idle, over 30 s on a loaded machine.
        done = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            break
    return done, (tmp_path / "calls").read_text().splitlines()


def test_the_gate_asks_this_nodes_own_cockroachdb_as_the_members_sql_user():
    """The command the fakes stand in for: the DaemonSet's container on this node (its name), its binary, logged in
    as the members' SQL user (CockroachDB refuses a SQL login as `node`: pkg/sql/pgwire/auth.go handleAuthentication,
    pkg/security/certs_test.go TestUseSplitCACerts) with that user's certificate and key, which the CLI loads from
    --certs-dir as client.<user>.crt/.key (pkg/security/certnames) and which the node secret mounted there holds; its
    SQL port on 127.0.0.1, which the node certificate names; crdb_internal opened first (v26.2 docs:
    allow_unsafe_internals defaults to off)."""
    import shlex

    from components.cockroach import node_files

    gate = upgrades.render_os_plan("2026-12", ["10.20.0.10"], 8080)["spec"]["prepare"]["args"][2]
    daemonset = m.render_daemonset(spec())["spec"]["template"]["spec"]
    assert "k3s crictl ps --quiet --label io.kubernetes.container.name=cockroachdb" in gate
    assert daemonset["containers"][0]["name"] == "cockroachdb"
    assert {"name": "certs", "mountPath": "/cockroach/cockroach-certs", "readOnly": True} in \
        daemonset["containers"][0]["volumeMounts"]
    assert {"name": "certs", "secret": {"secretName": m.NODE_SECRET, "defaultMode": 0o400}} in daemonset["volumes"]
    signed = node_files("ca", "client ca", "node key", "node.crt", "client.node.crt", "ops.crt")
    assert signed[OPS_CERT_FILE] == "ops.crt" and signed[OPS_KEY_FILE] == "node key"
    assert (OPS_CERT_FILE, OPS_KEY_FILE) == ("client.crdb_federation_ops.crt", "client.crdb_federation_ops.key")
    assert "127.0.0.1" in m.node_certificate_ips(NODES)
    exec_line = next(line for line in gate.splitlines() if "crictl exec" in line and " sql " in line)
    assert shlex.split(exec_line)[1:] == [
        "60", "k3s", "crictl", "exec", "$container", "/cockroach/cockroach", "sql",
        "--certs-dir=/cockroach/cockroach-certs", f"--user={OPS_USER}", "--host=127.0.0.1:26258", "--format=csv",
        "--execute=SET allow_unsafe_internals = true", f"--execute={upgrades.GATE_SQL}"]


def test_a_node_without_the_sql_users_certificate_is_not_upgraded_and_says_what_to_run(tmp_path):
    """A member whose seed has not signed its request for the SQL user's certificate (an earlier seed): the gate
    refuses at once, before the cordon and the drain, naming the file and the `up`s that bring it."""
    plan = upgrades.render_os_plan("2026-12", list(VEX_PRIVATE.values()), 8080)
    done, calls = run_os_upgrade_job(tmp_path, [federation_cluster()], reboot_required=True,
                                     certificates=m.NODE_FILES)
    assert done.returncode == 1
    assert (f"no client certificate for the SQL user {OPS_USER} (/cockroach/cockroach-certs/{OPS_CERT_FILE})"
            in done.stderr and "runs up on the seed" in done.stderr), done.stderr
    assert f"drain {THIS_NODE}" not in calls and not [c for c in calls if c.startswith(("apt-get", "systemctl"))]
    assert not [c for c in calls if " sql " in c] and "sleep 10" not in calls, calls
    assert plan["spec"]["prepare"]["args"][2].count(OPS_CERT_FILE) == 2


def test_this_clouds_nodes_alone_miss_a_range_led_in_a_third_cloud():
    """What cannot run here, held to the upstream source: pkg/kv/kvserver/replica_metrics.go calcRangeCounter counts
    a range's under-replicated and unavailable metrics only on its live leaseholder (or first live replica). otc's n4
    is down and r1's lease is in seed: every node of this cloud reports 0, though r1 has a replica on this node and
    one more loss would take it below quorum. The whole cluster's stores, and its liveness, do tell."""
    cluster = federation_cluster(down={4})
    assert [cluster.store_metrics(i)["ranges.underreplicated"] for i in VEX_PRIVATE] == [0, 0, 0]
    assert cluster.store_metrics(1)["ranges.underreplicated"] == 1
    assert cluster_answer_csv(cluster) == "nodes_not_live,ranges_at_risk\n1,1\n"
    assert cluster_answer_csv(federation_cluster()).endswith("\n0,0\n")


def test_the_os_upgrade_waits_until_the_cluster_is_healthy(tmp_path):
    states = [federation_cluster(down={9}), federation_cluster(lagging=True), federation_cluster()]
    done, calls = run_os_upgrade_job(tmp_path, states, reboot_required=False)
    assert done.returncode == 0, done.stderr
    upgraded = calls.index("apt-get update")
    assert calls[:upgraded].count("sleep 10") == 2
    assert "curl https://10.20.0.12:8080/health?ready=1" in calls[:upgraded]
    assert "systemctl reboot" not in calls


def test_a_node_is_not_rebooted_while_another_clouds_node_is_down_and_the_lease_is_in_a_third(tmp_path):
    """Row 2 of issue 28: otc's n4 is down (its own OS upgrade), r1 has replicas here, on n4 and in seed, which
    holds its lease. This cloud's own metrics are all 0; the gate waits until n4 is back."""
    states = [federation_cluster(down={4}), federation_cluster(down={4}), federation_cluster()]
    done, calls = run_os_upgrade_job(tmp_path, states, reboot_required=True)
    upgraded = calls.index("apt-get update")
    assert calls[:upgraded].count("sleep 10") == 2, calls
    assert calls[-2:] == ["systemctl reboot", "sleep 3600"]


def test_after_a_reboot_the_job_does_not_complete_before_the_node_is_back(tmp_path):
    # systemctl reboot returns at once: the script must not end (and the Job complete) after it.
    done, calls = run_os_upgrade_job(tmp_path, [federation_cluster()], reboot_required=True)
    assert calls[-2:] == ["systemctl reboot", "sleep 3600"] and done.returncode != 0


def test_an_unhealthy_cluster_is_neither_upgraded_nor_cordoned(tmp_path):
    """Row 3 of issue 28: the gate is the prepare container, which the controller runs before the drain (job.go);
    when it gives up, the node was never cordoned (the controller uncordons only after a completed Job,
    handle_batch.go), and nothing was upgraded."""
    done, calls = run_os_upgrade_job(tmp_path, [federation_cluster(lagging=True)], reboot_required=True)
    assert f"drain {THIS_NODE}" not in calls, calls[:3]
    assert done.returncode == 1 and f"not upgrading {THIS_NODE}, which stays schedulable" in done.stderr
    assert not [c for c in calls if c.startswith(("apt-get", "systemctl"))]


def test_upgrade_controller_rights_are_split_as_upstream_splits_them():
    """system-upgrade-controller v0.20.1 manifests/clusterrole.yaml: writing Jobs and reading Secrets only in
    its own namespace (on the seed, a cluster-wide secrets read would include the root client certificate)."""
    objects = {(o["kind"], o["metadata"]["name"]): o for o in upgrades.render_controller()}
    cluster = objects[("ClusterRole", "crdb-federation-system-upgrade")]["rules"]
    for rule in cluster:
        assert "secrets" not in rule["resources"]
        if "jobs" in rule["resources"]:
            assert rule["verbs"] == ["get", "list", "watch"]
    role = objects[("Role", "crdb-federation-system-upgrade")]
    assert role["metadata"]["namespace"] == upgrades.NAMESPACE
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"jobs", "secrets"}
    assert objects[("RoleBinding", "crdb-federation-system-upgrade")]["roleRef"]["kind"] == "Role"
    assert ("ClusterRoleBinding", "crdb-federation-system-upgrade-drainer") in objects


def test_a_stop_while_waiting_for_certificates_ends_the_container_at_once(tmp_path):
    """As the container's PID 1 (in a PID namespace of its own), a shell without a TERM handler ignores TERM:
    the pod would wait out its 300 s grace period. The script stops at once."""
    if os.geteuid() != 0:
        pytest.skip("a PID namespace needs root (scripts/test.sh runs the tests as root)")
    env = start_env(tmp_path, NODES[0].name, node_dirs(tmp_path, signed=False), CERT_CHECK_SECONDS="1")
    process = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "/bin/bash", "-c",
                                m.render_start_script(spec())], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: "waiting for the seed" in (process.stdout.readline() or ""))
        shell = int(open(f"/proc/{process.pid}/task/{process.pid}/children").read().split()[0])
        os.kill(shell, signal.SIGTERM)
        assert process.wait(timeout=5) == 143
    finally:
        process.kill()


def test_a_stop_while_waiting_for_certificates_is_not_held_by_the_check_interval(tmp_path):
    """Row 6 of issue 28: bash runs a trap only once its foreground command has completed (bash(1), SIGNALS), so a
    foreground `sleep 60` would hold a TERM for up to a minute. With the default interval, the script stops within
    seconds."""
    env = start_env(tmp_path, NODES[0].name, node_dirs(tmp_path, signed=False), CERT_CHECK_SECONDS="60")
    process = subprocess.Popen(["/bin/bash", "-c", m.render_start_script(spec())], env=env, stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        assert wait_for(lambda: "waiting for the seed" in (process.stdout.readline() or ""))
        time.sleep(0.5)  # into the wait
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 143 and time.monotonic() - started < 5
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # with the sleep the script left behind


def test_address_map_is_keyed_by_node_name():
    assert m.render_address_config_map(spec())["data"] == {
        "vexxhost-k3s-0": "198.18.0.10 10.20.0.10 signed\n", "vexxhost-k3s-1": "198.18.0.11 10.20.0.11 signed\n",
        "vexxhost-k3s-2": "198.18.0.12 10.20.0.12 signed\n"}


def test_node_certificate_names():
    assert "cockroachdb-public.cockroachdb.svc.cluster.local" in m.node_certificate_dns_names("cockroachdb")
    assert m.node_certificate_ips(NODES) == ["127.0.0.1", "198.18.0.10", "10.20.0.10", "198.18.0.11",
                                             "10.20.0.11", "198.18.0.12", "10.20.0.12"]
    assert m.sql_url("198.18.0.10").startswith("postgresql://root@198.18.0.10:26258/")
