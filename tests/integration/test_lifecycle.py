"""A federation's life on the real engine against the local cloud and the k3s stand-in, in order: the seed's
`up`, three members joining at once through the federation tool (each member's up publishes its requests,
the seed signs, each member's second up installs them), reading the cloud and every cluster back, a second
`up` of everything, upgrades and setting changes that must replace nothing, a heal of server 0, a retired
image, a scale-up and scale-down carried out, a member's removal, and a destroy that leaves nothing behind.

Containers never run (kwok simulates the kubelets), so no SQL answers: every decommissioning refuses, which
is what the refusals below prove, and the removals that follow are forced.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from components.ops_user import OPS_CERT_FILE, OPS_KEY_FILE
from tests.integration.project import API_READY_TIMEOUT, explicit_member, passphrase, step_ops
from tests.integration.state_scan import scan_tree
from tests.test_trust import another_ca

SEED = "seed"
SEED_STACK = "organization/crdb-federation/seed"
# One member per way of reaching a cloud: managed network with floating IPs, an existing provider
# network with public fixed addresses, and one behind an HTTP proxy.
MEMBERS = ("canonical", "vexxhost", "zte")
NOVA_USER_DATA_LIMIT = 65535
SENSITIVE_PORTS = ((22, 22, "tcp"), (6443, 6443, "tcp"), (8080, 8080, "tcp"), (10250, 10250, "tcp"),
                   (2379, 2380, "tcp"), (8472, 8472, "udp"))
NO_REPLACE = ("openstack:compute/instance:Instance", "openstack:networking/port:Port",
              "openstack:blockstorage/volume:Volume")
LICENCE = "crl-0-integration-tier"
DECOMMISSION = "pulumi-python:dynamic:Resource"
FORCED = {"CRDB_FORCE_REMOVAL": "true"}  # no SQL answers here (README: Remove a cloud)
# The node's own certificates, its client certificate for node RPC, and the one for the members' SQL user
# (components/ops_user.py), all for the one node key.
NODE_FILES = {"ca.crt", "ca-client.crt", "node.crt", "node.key", "client.node.crt", "client.node.key",
              OPS_CERT_FILE, OPS_KEY_FILE}


@pytest.fixture(scope="module")
def federation(project, standin):
    """The seed's `up`, then the members' through `python -m federation join`; yields what they said."""
    for stack in (SEED, *MEMBERS):
        project.select(stack)
        project.run("config", "set", "crdb-federation:apiReadyTimeout", str(API_READY_TIMEOUT), stack=stack)
    project.run("config", "set", "--secret", "crdb-federation:enterpriseLicense", LICENCE, stack=SEED)
    seed_events, seed_output = project.events("up", SEED, "--yes", "--skip-preview")
    # The seed's operator hands every member's operator the CA fingerprints, out of band.
    prints = project.tool("fingerprints")
    assert prints.returncode == 0, prints.stdout + prints.stderr
    pins = dict(line.split(": ", 1) for line in prints.stdout.splitlines() if line.startswith("crdb-federation:"))
    for stack in MEMBERS:
        for key, values in pins.items():
            for index, fingerprint in enumerate(json.loads(values)):
                project.run("config", "set", "--path", f"{key}[{index}]", fingerprint, stack=stack)
    runs = project.directory / "runs"
    # Preflight would stop every member at its shipped (placeholder) admin range; it is proven in
    # test_preflight.py, this module proves what happens after it.
    joined = project.tool("join", *MEMBERS, "--no-dashboard", "--skip-preflight", "--runs-dir", str(runs))
    yield {"seed_events": seed_events, "seed_output": seed_output, "join": joined, "runs": runs, "pins": pins}
    for stack in (SEED, *MEMBERS):  # whatever a failed test left behind
        project.run("destroy", "--yes", "--skip-preview", stack=stack, check=False, timeout=900, env=FORCED)


def _type(urn: str) -> str:
    """A resource's type from its URN (urn:pulumi:stack::project::parent$...$type::name)."""
    return urn.split("::")[2].rsplit("$", 1)[-1]


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[1]


def _errors(events: list[dict]) -> list[str]:
    return [e["diagnosticEvent"]["message"] for e in events if e.get("diagnosticEvent", {}).get("severity") == "error"]


def _outputs(project, stack: str) -> dict:
    return json.loads(project.run("stack", "output", "--json", stack=stack).stdout)


def _items(standin, member: str, path: str) -> list[dict]:
    return standin.get(member, path)["items"]


def test_the_seed_up_completes_with_every_kubernetes_object(federation):
    events = federation["seed_events"]
    assert not _errors(events), _errors(events)
    created = step_ops(events)
    assert set(created.values()) == {"create"}, {u: o for u, o in created.items() if o != "create"}
    by_type: dict[str, int] = {}
    for urn in created:
        by_type[_type(urn)] = by_type.get(_type(urn), 0) + 1
    print("seed up, created by type:", json.dumps(by_type, indent=1, sort_keys=True))
    for kind in ("apps/v1:DaemonSet", "batch/v1:Job", "batch/v1:CronJob", "core/v1:Secret", "core/v1:ConfigMap",
                 "apps/v1:Deployment", "upgrade.cattle.io/v1:Plan", "rbac.authorization.k8s.io/v1:Role"):
        assert by_type.get(f"kubernetes:{kind}"), (kind, by_type)
    # Each node's data volume, attached; the decommissioning of each node and of the whole cloud.
    assert by_type["openstack:blockstorage/volume:Volume"] == by_type["openstack:compute/volumeAttach:VolumeAttach"] == 3
    decommissions = sorted(_name(u) for u in created if _type(u) == DECOMMISSION and u.endswith("-decommission"))
    assert decommissions == ["seed-decommission", "seed-k3s-0-decommission", "seed-k3s-1-decommission",
                             "seed-k3s-2-decommission"]


def test_three_members_join_at_once_through_the_tool(federation, project):
    joined = federation["join"]
    assert joined.returncode == 0, joined.stdout[-4000:] + joined.stderr[-2000:]
    [timeline] = list(federation["runs"].glob("*-join/*.json"))
    record = json.loads(timeline.read_text())
    clouds = {c["stack"]: c for c in record["clouds"]}
    assert set(clouds) == {SEED, *MEMBERS}
    for stack, cloud in clouds.items():
        assert cloud["status"] == "succeeded" and cloud["phase"] == "joined", cloud
    print("join timeline:", json.dumps({s: c["phases"] for s, c in clouds.items()}, indent=1))
    for stack in MEMBERS:
        assert _outputs(project, stack)["certificatesSigned"] is True, stack
    report = timeline.with_suffix(".html").read_text()
    assert report.count('data-status="succeeded"') == len(clouds) and report.count('class="joined"') == len(clouds)


def test_every_cluster_read_back_through_its_kubernetes_api(federation, project, standin):
    seed = _outputs(project, SEED)
    ca = x509.load_pem_x509_certificate(seed["caCertificate"].encode())
    for stack in (SEED, *MEMBERS):
        nodes = {n["metadata"]["name"] for n in _items(standin, stack, "/api/v1/nodes")}
        assert nodes == {f"{stack}-k3s-{i}" for i in range(3)}, (stack, nodes)
        pods = _items(standin, stack, "/api/v1/namespaces/cockroachdb/pods?labelSelector=app.kubernetes.io%2Fname%3Dcockroachdb")
        ready = {p["spec"]["nodeName"] for p in pods if any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))}
        assert ready == nodes, (stack, ready)  # one CockroachDB pod on every node, ready
        join = standin.get(stack, "/api/v1/namespaces/cockroachdb/configmaps/cockroachdb-join")["data"]["join"]
        if stack != SEED:
            assert join.strip().split(",") == seed["federationJoin"], stack
        secret = standin.get(stack, "/api/v1/namespaces/cockroachdb/secrets/cockroachdb-node-certs")["data"]
        assert set(secret) == NODE_FILES, stack
        files = {k: base64.b64decode(v).decode() for k, v in secret.items()}
        # The only key is the stack's own node key; the certificates chain to the federation's CA.
        assert files["node.key"] == files["client.node.key"] == files[OPS_KEY_FILE]
        assert sum("PRIVATE KEY" in t for t in files.values()) == 3
        key = serialization.load_pem_private_key(files["node.key"].encode(), None)
        assert key.public_key().public_numbers() != ca.public_key().public_numbers()
        x509.load_pem_x509_certificate(files["node.crt"].encode()).verify_directly_issued_by(ca)
        jobs = {j["metadata"]["name"]: j for j in _items(standin, stack, "/apis/batch/v1/namespaces/cockroachdb/jobs")}
        cronjobs = _items(standin, stack, "/apis/batch/v1/namespaces/cockroachdb/cronjobs")
        if stack == SEED:
            assert jobs["init"]["status"].get("succeeded") == 1, jobs["init"]["status"]
            assert [c["metadata"]["name"] for c in cronjobs] == ["cluster-settings"]
        else:
            assert "init" not in jobs and not cronjobs, stack
        plans = {p["metadata"]["name"] for p in _items(standin, stack, "/apis/upgrade.cattle.io/v1/namespaces/system-upgrade/plans")}
        assert plans == {"k3s-server", "k3s-agent"}, (stack, plans)
        controller = standin.get(stack, "/apis/apps/v1/namespaces/system-upgrade/deployments/system-upgrade-controller")
        assert controller["status"].get("readyReplicas") == 1, stack
        # What the program manages, by the API server's own record of who applied which fields.
        daemonset = standin.get(stack, "/apis/apps/v1/namespaces/cockroachdb/daemonsets/cockroachdb")
        spec_owners = {f["manager"] for f in daemonset["metadata"]["managedFields"]
                       if "f:template" in f.get("fieldsV1", {}).get("f:spec", {})}
        # (pulumi-kubernetes creates as "pulumi-kubernetes" and applies updates as "pulumi-kubernetes-<id>".)
        assert spec_owners and all(m.startswith("pulumi-kubernetes") for m in spec_owners), (stack, spec_owners)
        # Every key of each node's k3s config was honoured or checked by a real component, or is listed here.
        report = standin.report(stack)
        assert not report["config"]["unknown"], report["config"]
        print(f"{stack}: k3s config keys the stand-in cannot check: {report['config']['unchecked']}")
        assert all(n["kubelet"]["accepted"] for n in report["nodes"].values()), report["nodes"]


def _export(project, stack: str) -> dict:
    """The stack's state as its own operator sees it: decrypted with its own passphrase."""
    return json.loads(project.run("stack", "export", "--show-secrets", stack=stack).stdout)


def _secret_values(state: dict, names: tuple[str, ...]) -> dict[str, str]:
    """Private key PEMs of the named resources (by name suffix), and the kubeconfig output, of an export."""
    found = {}
    for resource in state["deployment"]["resources"]:
        name = resource["urn"].rsplit("::", 1)[1]
        outputs = resource.get("outputs") or {}
        if name.endswith(names) and "privateKeyPem" in outputs:
            found[name] = _plain(outputs["privateKeyPem"])
        if resource["type"] == "pulumi:pulumi:Stack":
            for key in ("kubeconfig", "rootClientKey"):
                if key in outputs:
                    found[f"{key} output"] = _plain(outputs[key])
    return found


def _plain(value) -> str:
    """An export's secret value ({"plaintext": "\"...\""} with --show-secrets) or plain string."""
    if isinstance(value, dict) and "plaintext" in value:
        return json.loads(value["plaintext"])
    return value


def _distinctive(secret: str) -> str:
    """A line of a secret that nothing else holds (a key's body; a kubeconfig's client key)."""
    return max(secret.splitlines(), key=len)


def test_no_operators_state_holds_another_operators_secrets(federation, project):
    """Each stack with its own passphrase: what a StackReference keeps of another stack stays encrypted for
    the reader, and the engine elides it."""
    seed = _secret_values(_export(project, SEED), ("authority-node-ca-key", "authority-client-ca-key",
                                                   "authority-root-key"))
    assert set(seed) == {"seed-authority-node-ca-key", "seed-authority-client-ca-key", "seed-authority-root-key",
                         "kubeconfig output", "rootClientKey output"}, set(seed)
    seed_text = json.dumps(_export(project, SEED))
    for member in MEMBERS:
        state = json.dumps(_export(project, member))
        leaked = [name for name, value in seed.items() if _distinctive(value) in state]
        assert not leaked, (member, leaked)
        mine = _secret_values(_export(project, member), ("identity-key",))
        assert set(mine) == {f"{member}-identity-key", "kubeconfig output"}, set(mine)
        assert not [name for name, value in mine.items() if _distinctive(value) in seed_text], member
        log = next(federation["runs"].glob(f"*-join/logs/{member}.log")).read_text()
        assert f"eliding undecryptable secrets for stack reference '{SEED_STACK}'" in log, member


def test_a_reader_of_the_whole_backend_finds_nothing_that_grants_access(federation, project):
    """What every operator may read (the shared backend: README, The shared state backend), without any stack's
    passphrase: every object of the seed's and the members' states, checkpoints, history and backups, walked for a
    private key, a k3s token, a kubeconfig credential, user data, a licence or a secret-named value in clear
    (tests/integration/state_scan.py). The file backend holds the same objects an S3 bucket would."""
    found = scan_tree(project.state)
    objects = sum(1 for p in (project.state / ".pulumi").rglob("*") if p.is_file())
    print(f"scanned {objects} objects of {len(MEMBERS) + 1} stacks:", [f.line() for f in found] or "nothing in clear")
    assert not found, [f.line() for f in found]


def test_a_member_refuses_a_seed_state_whose_ca_was_swapped(federation, project):
    """Whoever can write the seed's state file could swap its CA: the member's pinned fingerprint says no."""
    path = project.state / ".pulumi" / "stacks" / "crdb-federation" / f"{SEED}.json"
    original = path.read_text()
    checkpoint = json.loads(original)
    [stack] = [r for r in checkpoint["checkpoint"]["latest"]["resources"] if r["type"] == "pulumi:pulumi:Stack"]
    forged, _ = another_ca("crdb-federation node CA")
    stack["outputs"]["caCertificate"] = forged
    path.write_text(json.dumps(checkpoint))
    try:
        refused = project.run("preview", stack=MEMBERS[0], check=False)
    finally:
        path.write_text(original)
    text = refused.stdout + refused.stderr
    print("the member's refusal:", next((line for line in text.splitlines() if "caSha256" in line), text[-800:]))
    assert refused.returncode != 0
    from components.federation import fingerprints
    assert f"crdb-federation:caSha256 = {json.loads(federation['pins']['crdb-federation:caSha256'])}" in text
    assert fingerprints(forged)[0] in text and "is not pinned" in text


def test_a_member_whose_secrets_provider_decrypts_the_seeds_secrets_fails_preflight(federation, project, tmp_path):
    member = MEMBERS[0]
    shared = tmp_path / "passphrases"
    shared.mkdir()
    (shared / f"{member}.passphrase").write_text(passphrase(SEED))  # the seed's, by mistake
    (shared / f"{member}.passphrase").chmod(0o600)
    path = project.directory / "preflight-shared.json"
    project.tool("preflight", member, "--my-address", "198.18.0.10", "--json", str(path), "--passphrases", str(shared))
    [check] = [f for f in json.loads(path.read_text()) if f["check"] == "Secrets"]
    print("preflight with the seed's passphrase:", check)
    assert check["status"] == "fail" and f"decrypts {SEED_STACK}'s" in check["found"] and "rootClientKey" in check["found"]
    # With its own, it passes.
    project.tool("preflight", member, "--my-address", "198.18.0.10", "--json", str(path))
    [check] = [f for f in json.loads(path.read_text()) if f["check"] == "Secrets"]
    assert check["status"] == "pass", check


def test_a_member_in_a_backend_of_its_own_joins_through_explicit_config(federation, project, standin):
    """A member whose state lives apart from the seed's (its operator's own bucket, say): it reads nothing of
    the seed's state, and takes the seed's public outputs from its own config."""
    from tests.integration.project import Project

    apart = project.state.parent / "state-apart"
    apart.mkdir()
    alone = Project(project.directory, apart, project.cloud, project.pulumi)
    stack = "suse"  # a managed network, as canonical's
    seed = _outputs(project, SEED)
    explicit_member(alone, stack, 1, seed)
    try:
        events, output = alone.events("up", stack, "--yes", "--skip-preview", check=True)
        outputs = json.loads(alone.run("stack", "output", "--json", stack=stack).stdout)
        # Built and waiting: the seed signs requests it can read, and this stack's it cannot (another backend).
        assert outputs["certificatesSigned"] is False
        assert outputs["caCertificate"].strip() == seed["caCertificate"].strip()
        state = json.dumps(_export(alone, stack))
        assert SEED_STACK not in state and "StackReference" not in state
        assert standin.report(stack).get("api"), standin.report(stack)
    finally:
        alone.run("destroy", "--yes", "--skip-preview", stack=stack, check=False, env=FORCED)


def test_the_unit_tiers_kubernetes_fakes_answer_as_the_real_api_does(federation, project, standin):
    """tests/test_decommission.py's FakeKube (a Job's life), tests/test_readiness.py's /readyz server and
    tests/test_kube_nodes.py's 404 are what the real API server answers: checked once here."""
    from components.cockroach_manifests import render_decommission_job
    from components.decommission import run_decommission_job
    from components.kube_nodes import remove_node
    from components.readiness import probe_readyz

    api = standin.api(SEED)
    job = render_decommission_job("cockroachdb", "cockroachdb/cockroach:v26.2.0", "fakes-agree", [1],
                                  "10.20.0.10:26257", 120, "crdb-federation")
    seen = []
    calls = api.call

    def recording(method, path, body=None, **kwargs):
        answer = calls(method, path, body, **kwargs)
        seen.append((method, path, answer))
        return answer

    api.call = recording
    run_decommission_job(api, job, 120, sleep=lambda _: time.sleep(1))
    statuses = [a.get("status", {}) for m, p, a in seen if m == "GET" and p.endswith("/jobs/fakes-agree")]
    assert statuses[-1].get("succeeded") == 1, statuses  # what FakeKube answers for a job that succeeded
    assert ("DELETE", "/apis/batch/v1/namespaces/cockroachdb/jobs/fakes-agree") in [(m, p) for m, p, _ in seen]
    assert remove_node(standin.api(SEED), "no-such-node") is False  # a 404, as the fake gives
    outputs = json.loads(project.run("stack", "output", "--json", "--show-secrets", stack=SEED).stdout)
    kubeconfig = yaml.safe_load(outputs["kubeconfig"])
    cluster, user = kubeconfig["clusters"][0]["cluster"], kubeconfig["users"][0]["user"]
    ready, seen_answer = probe_readyz(cluster["server"] + "/readyz", *(base64.b64decode(data).decode() for data in (
        cluster["certificate-authority-data"], user["client-certificate-data"], user["client-key-data"])))
    assert (ready, seen_answer) == (True, "HTTP 200: ok")  # what the readiness tests' server answers


def test_read_back_security_groups_ports_floating_ips_and_user_data(federation, project):
    cloud = project.cloud.connect()
    for stack in (SEED, *MEMBERS):
        groups = {g.id: g for g in cloud.network.security_groups() if g.name.startswith(f"{stack}-")}
        assert groups, stack
        for group in groups.values():
            for rule in group.security_group_rules:
                if rule["direction"] != "ingress" or rule.get("remote_ip_prefix") not in ("0.0.0.0/0", "::/0"):
                    continue
                for low, high, protocol in SENSITIVE_PORTS:
                    covers = rule.get("port_range_min") is None or (
                        rule["port_range_min"] <= high and rule["port_range_max"] >= low)
                    assert not (covers and rule.get("protocol") in (None, protocol)), (stack, group.name, rule)
        ports = {p.name: p for p in cloud.network.ports() if p.name.startswith(f"{stack}-k3s-")}
        servers = [s for s in cloud.compute.servers(details=True) if s.name.startswith(f"{stack}-k3s-")]
        assert len(ports) == len(servers) == 3, stack
        for port in ports.values():
            assert set(port.security_group_ids) == set(groups), (stack, port.name)
        volumes = {v.name: v for v in cloud.block_storage.volumes(details=True) if v.name.startswith(f"{stack}-k3s-")}
        for server in servers:
            full = cloud.compute.get_server(server.id)
            user_data = full.user_data or ""
            assert 0 < len(user_data) <= NOVA_USER_DATA_LIMIT and base64.b64decode(user_data), server.name
            # User data from a config drive, never from the metadata service pods could reach.
            assert full.has_config_drive in (True, "True", "true"), (server.name, full.has_config_drive)
            data = volumes[f"{server.name}-data"]
            assert [a["server_id"] for a in data.attachments] == [server.id], (server.name, data.attachments)


def test_a_second_up_of_every_stack_changes_nothing(federation, project):
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip((SEED, *MEMBERS), pool.map(
            lambda s: project.events("up", s, "--yes", "--skip-preview", check=True), (SEED, *MEMBERS))))
    for stack, (events, output) in results.items():
        # A stack reference is read on every run; that is no change.
        ops = {u: o for u, o in step_ops(events).items() if _type(u) != "pulumi:pulumi:StackReference"}
        assert ops and set(ops.values()) == {"same"}, (stack, {u: o for u, o in ops.items() if o != "same"})


def test_a_second_operator_on_the_same_stack_is_refused_naming_who_holds_it(federation, project):
    """Two people in one company run `up` of one stack at once: the first holds the backend's lock, the
    tool's run of the second is refused (not failed) with the holder, and nothing is made twice.

    An `up` of a converged stack can end before the tool's run reaches its own `up` (it did in CI), so
    the first operator's CLI is frozen (SIGSTOP) while it holds its real lock: a slow first run, made
    deterministic, then let go to finish."""
    stack = MEMBERS[0]
    locks = project.state / ".pulumi" / "locks" / "organization" / "crdb-federation" / stack
    first = subprocess.Popen([project.pulumi, "up", "--yes", "--skip-preview", "--non-interactive", "--stack", stack],
                             cwd=project.directory, env=project.env(stack), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    runs = project.directory / "runs-locked"
    try:
        deadline = time.monotonic() + 120
        while not list(locks.glob("*.json")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)
        assert list(locks.glob("*.json")), "the first operator's up ended or never took the lock"
        second = project.tool("join", stack, "--no-dashboard", "--skip-preflight", "--runs-dir", str(runs))
    finally:
        os.kill(first.pid, signal.SIGCONT)
        said, _ = first.communicate(timeout=900)
    assert first.returncode == 0, said[-3000:]
    [timeline] = list(runs.glob("*-join/*.json"))
    cloud = next(c for c in json.loads(timeline.read_text())["clouds"] if c["stack"] == stack)
    print("the second operator's run:", cloud["status"], cloud["error"])
    assert second.returncode == 1 and cloud["status"] == "refused", cloud
    assert f"(pid {first.pid})" in cloud["error"] and "created by" in cloud["error"]
    assert 'data-status="refused"' in timeline.with_suffix(".html").read_text()
    servers = [s.name for s in project.cloud.connect().compute.servers() if s.name.startswith(f"{stack}-")]
    assert sorted(servers) == [f"{stack}-k3s-{i}" for i in range(3)], servers


def _touched(events: list[dict], prefix: str = "") -> dict[str, str]:
    """What a run changed. The dynamic resources' default provider takes the whole stack config as its inputs,
    so any config change "updates" it: that changes no resource."""
    return {_name(u): op for u, op in step_ops(events, prefix).items()
            if op not in ("same", "read") and _type(u) != "pulumi:providers:pulumi-python"}


def test_a_k3s_version_bump_updates_the_plans_in_place_and_replaces_no_server(federation, project, standin):
    stack = MEMBERS[0]
    project.run("config", "set", "crdb-federation:k3sVersion", "v1.35.6+k3s1", stack=stack)
    events, output = project.events("up", stack, "--yes", "--skip-preview", check=True)
    touched = _touched(events)
    assert touched == {f"{stack}-upgrades-plan-k3s-server": "update", f"{stack}-upgrades-plan-k3s-agent": "update"}, \
        touched
    plans = _items(standin, stack, "/apis/upgrade.cattle.io/v1/namespaces/system-upgrade/plans")
    assert {p["spec"]["version"] for p in plans} == {"v1.35.6+k3s1"}


def test_an_ssh_key_and_a_zone_change_replace_no_server(federation, project):
    stack = MEMBERS[1]
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEgVk1p2Dq0r3n6cTt0kH6w8v2cE2dQbY8c1v5yq3zKx op@laptop"
    project.run("config", "set", "crdb-federation:sshPublicKey", key, stack=stack)
    project.run("config", "set", "crdb-federation:availabilityZone", "nova-elsewhere", stack=stack)
    try:
        events, output = project.events("up", stack, "--yes", "--skip-preview", check=True)
        touched = _touched(events)
        assert _node_changes(touched, stack) == {}, touched
        assert touched.get(f"{stack}-ssh") == "create", touched  # the keypair, and SSH opened to adminCidrs
        assert "this cloud's servers were built in 'nova' and cannot move" in output
        project.run("config", "rm", "crdb-federation:sshPublicKey", stack=stack)
        events, _ = project.events("up", stack, "--yes", "--skip-preview", check=True)
        touched = _touched(events)
        assert touched.get(f"{stack}-ssh") == "delete" and _node_changes(touched, stack) == {}, touched
    finally:
        project.run("config", "rm", "crdb-federation:sshPublicKey", stack=stack, check=False)
        project.run("config", "rm", "crdb-federation:availabilityZone", stack=stack, check=False)


def _node_changes(touched: dict[str, str], stack: str) -> dict[str, str]:
    """What happened to the servers, their ports, volumes and attachments beyond a port's security groups
    changing in place (SSH opened or closed)."""
    nodes = {n: op for n, op in touched.items() if n.startswith(f"{stack}-k3s-")
             and not n.endswith(("-password", "-registration", "-decommission"))}
    return {n: op for n, op in nodes.items() if not (n.endswith("-port") and op == "update")}


def test_a_new_kubeconfig_replaces_no_kubernetes_object(federation, project):
    """A re-issued admin certificate changes the kubeconfig: the provider is updated, not replaced (a replaced
    provider would re-create every object under the same names, create-before-delete)."""
    stack = MEMBERS[2]
    state = json.loads(project.run("stack", "export", stack=stack).stdout)
    [admin] = [r["urn"] for r in state["deployment"]["resources"] if r["urn"].endswith(f"::{stack}-pki-admin-cert")]
    events, output = project.events("up", stack, "--yes", "--skip-preview", "--replace", admin, check=True)
    touched = _touched(events)
    assert touched.get(f"{stack}-k8s") == "update", touched
    assert not [n for n, op in touched.items() if op in ("replace", "create-replacement", "delete-replaced")
                and n not in (f"{stack}-pki-admin-cert",)], touched
    assert not {n: op for n, op in _touched(events, "kubernetes:").items()}, output[-3000:]


def test_a_stack_whose_image_name_was_retired_still_updates(federation, project):
    """Clouds retire image names: the first deploy's image id is kept, and the lookup no longer fails."""
    cloud = project.cloud.connect()
    [image] = [i for i in cloud.image.images() if i.name == "ubuntu-24.04"]
    cloud.image.update_image(image, name="ubuntu-24.04-retired")
    try:
        events, output = project.events("up", SEED, "--yes", "--skip-preview", check=True)
        assert not _touched(events, "openstack:"), output[-3000:]
        assert _outputs(project, SEED)["imageId"] == image.id
        # Preflight (join runs it first) warns instead of failing: new and healed servers boot the pinned image.
        findings = project.directory / "preflight-retired.json"
        project.tool("preflight", SEED, "--my-address", "198.18.0.10", "--json", str(findings))
        [image_check] = [f for f in json.loads(findings.read_text()) if f["check"] == "Image"]
        assert image_check["status"] == "warn" and image.id in image_check["todo"], image_check
    finally:
        cloud.image.update_image(image, name="ubuntu-24.04")


def test_a_healed_server_0_is_waited_for_before_a_kubernetes_change_in_the_same_up(federation, project, standin):
    stack = MEMBERS[0]
    cloud = project.cloud.connect()
    victim = next(s for s in cloud.compute.servers() if s.name == f"{stack}-k3s-0")
    data = cloud.block_storage.find_volume(f"{victim.name}-data")
    cloud.compute.reset_server_state(victim, "error")
    project.run("config", "set", "crdb-federation:osUpgradeVersion", "2026-12", stack=stack)
    runs = project.directory / "runs-heal"
    healed_run = project.tool("join", stack, "--no-dashboard", "--skip-preflight", "--runs-dir", str(runs))
    log = next(runs.glob(f"*-join/logs/{stack}.log")).read_text()
    assert healed_run.returncode == 0, log[-4000:]
    assert "healing 1 server(s) in ERROR" in log and f"::{victim.name}" in log, log[-3000:]
    [healed] = [s for s in cloud.compute.servers() if s.name == victim.name]
    assert healed.id != victim.id and healed.status == "ACTIVE"
    assert [a["server_id"] for a in cloud.block_storage.get_volume(data).attachments] == [healed.id]
    # The same up changed the cluster of the new server 0, which kept its datastore (its data volume).
    plans = {p["metadata"]["name"] for p in _items(standin, stack, "/apis/upgrade.cattle.io/v1/namespaces/system-upgrade/plans")}
    assert plans == {"k3s-server", "k3s-agent", "os-upgrade"}
    assert f"{victim.name}-decommission deleting" not in log


def test_scaling_3_to_4_to_3_is_carried_out_one_node_at_a_time(federation, project, standin):
    stack = MEMBERS[0]
    cloud = project.cloud.connect()
    # By hand, with no signing service running: the two-step path, so the new node's request waits for no signature
    # (README: You run a member cloud).
    project.run("config", "set", "crdb-federation:signatureWait", "0", stack=stack)
    project.run("config", "set", "crdb-federation:nodeCount", "4", stack=stack)
    node = f"{stack}-k3s-3"
    events, output = project.events("up", stack, "--yes", "--skip-preview", check=True)
    created = {n for n, op in _touched(events, "openstack:").items() if op == "create"}
    assert created == {node, f"{node}-data", f"{node}-data-attach", f"{node}-port", f"{node}-fip",
                       f"{node}-fip-assoc"}, output[-3000:]
    assert node in {n["metadata"]["name"] for n in _items(standin, stack, "/api/v1/nodes")}

    project.run("config", "set", "crdb-federation:nodeCount", "3", stack=stack)
    refused, output = project.events("up", stack, "--yes", "--skip-preview")
    errors = _errors(refused)
    assert any(f"cannot reach the cluster to ask whether" in m and "Nothing was deleted" in m for m in errors), errors
    print("scale-down refusal:", next(m for m in errors if "cannot reach the cluster to ask" in m))
    assert node in [s.name for s in cloud.compute.servers()]
    assert not [n for n, op in _touched(refused, "openstack:").items() if op == "delete"]

    forced, output = project.events("up", stack, "--yes", "--skip-preview", check=True, env=FORCED)
    deleted = {n for n, op in _touched(forced).items() if op == "delete"}
    assert deleted == {node, f"{node}-data", f"{node}-data-attach", f"{node}-port", f"{node}-fip",
                       f"{node}-fip-assoc", f"{node}-decommission", f"{node}-node-password",
                       f"{node}-registration"}, output[-3000:]
    # Its Kubernetes Node went after its server: no NotReady ghost holds the DaemonSet back.
    assert node not in {n["metadata"]["name"] for n in _items(standin, stack, "/api/v1/nodes")}
    order = _delete_order(forced)
    assert order.index(f"{node}-decommission") < order.index(node) < order.index(f"{node}-registration"), order


def _delete_order(events: list[dict]) -> list[str]:
    """Resource names in the order the engine finished deleting them (its event stream)."""
    return [_name(e["resOutputsEvent"]["metadata"]["urn"]) for e in events
            if e.get("resOutputsEvent", {}).get("metadata", {}).get("op") == "delete"]


def _leftovers(cloud, stacks) -> dict[str, list]:
    def named(items, attribute="name"):
        return [getattr(i, attribute) for i in items if any(str(getattr(i, attribute) or "").startswith(f"{s}-")
                                                            for s in stacks)]

    return {
        "servers": named(cloud.compute.servers()),
        "volumes": named(cloud.block_storage.volumes()),
        "ports": named(cloud.network.ports()),
        "floating ips": [f.floating_ip_address for f in cloud.network.ips()
                         if any(f.description.startswith(f"crdb-federation {s}-") for s in stacks)],
        "routers": named(cloud.network.routers()),
        "networks": named(cloud.network.networks()),
        "security groups": named(cloud.network.security_groups()),
        "keypairs": named(cloud.compute.keypairs()),
        "server groups": named(cloud.compute.server_groups()),
    }


def test_removing_a_member_refuses_while_its_nodes_cannot_be_asked_then_leaves_nothing(federation, project):
    stack = MEMBERS[2]
    cloud = project.cloud.connect()
    before = _leftovers(cloud, [stack])
    refused = project.tool("remove", stack, "--yes", "--runs-dir", str(project.directory / "runs-remove"))
    log = next((project.directory / "runs-remove").glob(f"*-remove/logs/{stack}.log")).read_text()
    assert refused.returncode == 1 and "cannot reach the cluster to ask whether" in log and "Nothing was deleted" in log, log[-3000:]
    assert _leftovers(cloud, [stack]) == before
    # Nothing left the state either: the cloud's Kubernetes objects (deleted with its server 0, so their deletes
    # cost nothing) wait for the refused decommissioning, so the next `up` finds every one of them.
    events, output = project.events("up", stack, "--yes", "--skip-preview", check=True)
    assert not [n for n, op in _touched(events).items() if op == "create"], output[-3000:]
    removed = project.tool("remove", stack, "--yes", "--runs-dir", str(project.directory / "runs-remove-forced"),
                           env=FORCED)
    assert removed.returncode == 0, removed.stdout[-3000:]
    assert not any(_leftovers(cloud, [stack]).values()), _leftovers(cloud, [stack])


def test_destroy_decommissions_before_it_deletes_and_leaves_nothing_behind(federation, project):
    orders = {}
    for stack in (SEED, MEMBERS[0], MEMBERS[1]):
        events, _ = project.events("destroy", stack, "--yes", "--skip-preview", check=True, env=FORCED)
        orders[stack] = _delete_order(events)
    order = orders[SEED]
    for index in range(3):
        node = f"seed-k3s-{index}"
        assert order.index("seed-decommission") < order.index(f"{node}-decommission") < order.index(node), order
        assert order.index(f"{node}-decommission") < order.index(f"{node}-data"), order
    # The cloud's Kubernetes objects go after its decommissioning (as no-ops: deleted with the cluster).
    assert order.index("seed-decommission") < order.index("seed-nodes") and order.index("seed-decommission") < \
        order.index("seed-cockroachdb-node-certs"), order
    leftovers = _leftovers(project.cloud.connect(), [SEED, *MEMBERS])
    assert not any(leftovers.values()), leftovers
