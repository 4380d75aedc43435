"""The federation with its operators apart, on the shared S3 backend (issue 29): the seed's operator and three
members' operators, each on a machine of its own (tests/integration/operators.py), each with one OpenStack project,
one object store user under the README's policy and one passphrase, and nothing of the others'.

The path is the one the README gives operators who join by hand: each member's `scripts/up.sh` builds its cloud
and publishes its certificate requests (its nodes wait); the seed's operator admits them and runs the seed's
`up`, which reads their requests through StackReferences and signs them; each member's next `up` reads the
signatures through its StackReference to the seed and installs them. Every read crosses the shared bucket with the
reader's own key pair; every write is the writer's own stack. Then: what the bucket shows a member, each stack's
second run, and each operator's refresh and destroy.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
from cryptography import x509

from federation.locks import lock_prefix
from tests.integration import objectstore
from tests.integration.objectstore import ObjectStore, Operator
from tests.integration.operators import BUCKET, OperatorMachine, make_operator, open_account
from tests.integration.project import API_READY_TIMEOUT, NOTHING, in_cloud, whole
from tests.integration.state_scan import scan_document

PROJECT = "crdb-federation"
SEED = "seed"
MEMBERS = ("canonical", "vexxhost", "zte")
STACKS = (SEED, *MEMBERS)
# One node per member: three clouds' worth of joins within the tier's time; the seed keeps its three.
MEMBER_NODES = 1
LICENCE = "crl-0-integration-tier"
OUTAGE_SECONDS = 30  # the outage: shorter than the CLI's retries of a checkpoint
FORCED = {"CRDB_FORCE_REMOVAL": "true"}  # no SQL answers here (README: Remove a cloud)


def qualified(stack: str) -> str:
    return f"organization/{PROJECT}/{stack}"


@pytest.fixture(scope="module")
def store(toolchain, tmp_path_factory) -> ObjectStore:
    binary = objectstore.cached_binary()
    if binary is None:
        pytest.fail(f"versitygw v{objectstore.pinned_version()} is missing: bash scripts/install-objectstore.sh "
                    "builds it (scripts/test.sh runs it)")
    running = ObjectStore(binary, tmp_path_factory.mktemp("objectstore")).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def operators(store, local_cloud, standin, toolchain, tmp_path_factory) -> dict[str, OperatorMachine]:
    """Four operators apart; the bucket provisioned with one user per operator and the README's policy."""
    store_users = {s: Operator(f"{s}-operator", secrets.token_urlsafe(24), PROJECT, s) for s in STACKS}
    store.provision(BUCKET, store_users.values())
    admin = local_cloud.connect()
    auth_url, region = admin.config.auth["auth_url"], admin.config.region_name
    base = tmp_path_factory.mktemp("operators")
    return {s: make_operator(base, s, open_account(admin, s), store, store_users[s], toolchain, auth_url, region)
            for s in STACKS}


@dataclass
class Outage:
    """The store stopped for `seconds` once the engine of one of the runs starts making a cloud resource of `node`
    (any, when empty), then started again; `stopped`: when it stopped (time.monotonic)."""

    store: ObjectStore
    seconds: float
    node: str = ""
    stopped: float = 0.0

    def during(self, processes: list[subprocess.Popen], event_logs: list[Path]) -> threading.Timer:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and all(p.poll() is None for p in processes) and not any(
                _creating(log, self.node) for log in event_logs):
            time.sleep(0.2)
        assert all(p.poll() is None for p in processes), "a run ended before the outage began"
        self.store.stop()
        self.stopped = time.monotonic()
        back = threading.Timer(self.seconds, self.store.start)
        back.start()
        return back


def _up_at_once(machines: list[OperatorMachine], round_name: str,
                outage: Optional[Outage] = None) -> dict[str, tuple[int, str, float]]:
    """Each operator's `scripts/up.sh`, all started together (the store stopped meanwhile, with an outage);
    stack -> (exit code, output, seconds from the start, or from the store's stop with an outage)."""
    started = time.monotonic()
    logs = {m.stack: (m.directory / f"{round_name}.log", m.directory / f"{round_name}-events.jsonl") for m in machines}
    processes = {m.stack: m.start(m.up_command("--event-log", str(logs[m.stack][1])), logs[m.stack][0])
                 for m in machines}
    back = outage.during(list(processes.values()), [events for _, events in logs.values()]) if outage else None
    done = {}
    for machine in machines:
        code = processes[machine.stack].wait(timeout=1500)
        done[machine.stack] = (code, logs[machine.stack][0].read_text(),
                               time.monotonic() - (outage.stopped if outage else started))
    if back:
        back.join()
    return done


def _outputs(machine: OperatorMachine, stack: str) -> dict:
    """A stack's public outputs as this operator reads them from the shared backend (no secret shown)."""
    return json.loads(machine.command("pulumi", "stack", "output", "--json", "--stack", qualified(stack),
                                      "--non-interactive").stdout or "{}")


def _require(done: dict[str, tuple[int, str, float]], round_name: str) -> None:
    """The next round builds on this one: stop here, with each failed operator's own output."""
    failed = {stack: output for stack, (code, output, _) in done.items() if code != 0}
    assert not failed, "\n".join(f"{round_name} up of {s} failed:\n{o[-4000:]}" for s, o in failed.items())


@pytest.fixture(scope="module")
def federation(operators, store):
    """The seed up; three members' first `up`s at once, through a 30 s store outage; the seed admits and signs them;
    their second `up`s."""
    try:
        yield _bring_up(operators, store)
    finally:  # whatever a failed round or test left behind
        for stack in (*MEMBERS, SEED):
            operators[stack].pulumi("destroy", "--yes", "--skip-preview", check=False, timeout=900, env=FORCED)


def _bring_up(operators: dict[str, OperatorMachine], store: ObjectStore) -> dict:
    seed = operators[SEED]
    for machine in operators.values():
        machine.pulumi("stack", "init", "--secrets-provider", "passphrase")
        machine.pulumi("config", "set", "crdb-federation:apiReadyTimeout", str(API_READY_TIMEOUT))
    seed.pulumi("config", "set", "--secret", "crdb-federation:enterpriseLicense", LICENCE)
    rounds = {"seed": _up_at_once([seed], "seed-up")}
    _require(rounds["seed"], "seed")
    # The seed's operator hands every member's operator the CA fingerprints, out of band.
    prints = seed.tool("fingerprints")
    assert prints.returncode == 0, prints.stdout + prints.stderr
    pins = dict(line.split(": ", 1) for line in prints.stdout.splitlines() if line.startswith("crdb-federation:"))
    members = [operators[m] for m in MEMBERS]
    for machine in members:
        machine.pulumi("config", "set", "crdb-federation:nodeCount", str(MEMBER_NODES))
        for key, values in pins.items():
            for index, fingerprint in enumerate(json.loads(values)):
                machine.pulumi("config", "set", "--path", f"{key}[{index}]", fingerprint)
    # The store goes away for 30 s as the first member starts making its cloud: every run rides it out.
    rounds["first"] = _up_at_once(members, "first-up", Outage(store, OUTAGE_SECONDS))
    _require(rounds["first"], "first")
    waiting = {m.stack: _outputs(m, m.stack).get("certificatesSigned") for m in members}
    for index, member in enumerate(MEMBERS):
        seed.pulumi("config", "set", "--path", f"crdb-federation:members[{index}]", qualified(member))
    rounds["signing"] = _up_at_once([seed], "signing-up")
    _require(rounds["signing"], "signing")
    rounds["second"] = _up_at_once(members, "second-up")
    print("rounds (exit code, seconds):",
          json.dumps({r: {s: (c, round(t)) for s, (c, _, t) in done.items()} for r, done in rounds.items()}))
    return {"rounds": rounds, "pins": pins, "waiting": waiting}


def test_no_operator_holds_another_operators_credentials(operators):
    for stack, machine in operators.items():
        own = machine.secrets()
        others = {f"{other}'s {what}": value for other, m in operators.items() if other != stack
                  for what, value in m.secrets().items()}
        environment = "\n".join(f"{k}={v}" for k, v in machine.env.items())
        assert all(value not in environment for value in others.values()), stack
        assert machine.env["AWS_ACCESS_KEY_ID"] == machine.store_user.access
        # Only its own clouds.yaml names a cloud.
        assert {k: v for k, v in machine.env.items() if k.startswith("OS_")} == {
            "OS_CLIENT_CONFIG_FILE": str(machine.clouds_yaml)}, stack
        files = {p: p.read_text(errors="replace") for p in machine.home.rglob("*") if p.is_file()
                 and not p.is_symlink() and ".pulumi/plugins" not in str(p)}
        for what, value in others.items():
            assert not [p for p, text in files.items() if value in text], (stack, what)
        assert own["cloud password"] in machine.clouds_yaml.read_text()
        assert oct(machine.passphrase_file.stat().st_mode)[-3:] == oct(machine.clouds_yaml.stat().st_mode)[-3:] == "600"


def test_every_round_ran_on_the_shared_backend(federation):
    for name, done in federation["rounds"].items():
        for stack, (code, output, _) in done.items():
            assert code == 0, f"{name} up of {stack}:\n{output[-4000:]}"


def test_members_waited_for_their_signature_then_installed_it(federation, operators):
    # Each first `up` ended with its nodes waiting; the next one installed what the seed signed.
    assert federation["waiting"] == {member: False for member in MEMBERS}
    for member in MEMBERS:
        assert _outputs(operators[member], member)["certificatesSigned"] is True


def test_each_member_attached_with_certificates_chaining_to_the_pinned_ca(federation, operators, standin):
    seed = _outputs(operators[MEMBERS[0]], SEED)  # what a member reads of the seed
    ca = x509.load_pem_x509_certificate(seed["caCertificate"].encode())
    for member in MEMBERS:
        pods = standin.get(member, "/api/v1/namespaces/cockroachdb/pods")["items"]
        ready = [p["metadata"]["name"] for p in pods if any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
        assert len(ready) == MEMBER_NODES, (member, ready)
        join = standin.get(member, "/api/v1/namespaces/cockroachdb/configmaps/cockroachdb-join")["data"]["join"]
        assert join.strip().split(",") == seed["federationJoin"], member
        secret = standin.get(member, "/api/v1/namespaces/cockroachdb/secrets/cockroachdb-node-certs")["data"]
        files = {k: base64.b64decode(v).decode() for k, v in secret.items()}
        x509.load_pem_x509_certificate(files["node.crt"].encode()).verify_directly_issued_by(ca)
        assert all("BEGIN CERTIFICATE" in files[k] for k in ("ca.crt", "ca-client.crt"))


def _references(machine: OperatorMachine) -> dict[str, dict]:
    """The StackReferences in the operator's own state (read without its passphrase): name -> outputs."""
    exported = json.loads(machine.pulumi("stack", "export").stdout)
    return {r["urn"].rsplit("::", 1)[1]: r.get("outputs", {}).get("outputs", {})
            for r in exported["deployment"]["resources"] if r["type"] == "pulumi:pulumi:StackReference"}


def test_the_seed_read_every_member_and_every_member_read_the_seed(federation, operators):
    seed_reads = _references(operators[SEED])
    for member in MEMBERS:
        assert "certificateRequests" in seed_reads[qualified(member)], (member, sorted(seed_reads))
        member_reads = _references(operators[member])
        assert set(member_reads) == {qualified(SEED)}, member_reads
        assert qualified(member) in member_reads[qualified(SEED)]["signedCertificates"], member


def test_a_member_reading_the_whole_bucket_finds_no_secret(federation, operators, store):
    reader = store.client(operators["vexxhost"].store_user)
    keys = reader.keys(BUCKET)
    stacks_seen = {k.split("/")[3].split(".")[0] for k in keys if k.startswith(f".pulumi/stacks/{PROJECT}/")}
    assert stacks_seen == set(STACKS), stacks_seen
    findings = []
    for key in keys:
        body = reader.get(BUCKET, key)
        try:
            findings += scan_document(key, body.decode())
        except UnicodeDecodeError:
            findings.append(f"{key}: not text ({len(body)} bytes), unread")
    print(f"vexxhost's operator read {len(keys)} objects of {len(stacks_seen)} stacks")
    assert not findings, "\n".join(f.line() if hasattr(f, "line") else f for f in findings)


@pytest.mark.parametrize("target", ["vexxhost", SEED])
def test_a_member_cannot_remove_or_rewrite_another_members_or_the_seeds_stack(federation, operators, store, target):
    """canonical's operator, with its own key pair, against the real program's states: the store refuses."""
    canonical = operators["canonical"]
    before = {key: store.root.get(BUCKET, key) for key in store.root.keys(BUCKET)}
    other = qualified(target)
    denied = "api error AccessDenied: User: canonical-operator is not authorized to perform: s3:"
    # A state with secrets stops `state delete` earlier: it must be decrypted first, and only its operator can.
    for args, refusal in ((("stack", "rm", "--yes", "--force"), denied), (("stack", "tag", "set", "by", "x"), denied),
                          (("state", "delete", "--yes", "--force", f"urn:pulumi:{target}::{PROJECT}::"
                            f"pulumi:pulumi:Stack::{PROJECT}-{target}"), "error: failed to decrypt: incorrect passphrase")):
        done = canonical.command("pulumi", *args, "--stack", other, "--non-interactive",
                                 env={"PULUMI_CONFIG_PASSPHRASE_FILE": str(canonical.passphrase_file)})
        said = done.stdout + done.stderr
        assert done.returncode != 0 and refusal in said, (args, said)
        print(f"canonical's `pulumi {' '.join(args[:2])}` of {target}: {said.strip().splitlines()[-1][:400]}")
    state = f".pulumi/stacks/{PROJECT}/{target}.json"
    for call in (lambda c: c.delete(BUCKET, state), lambda c: c.put(BUCKET, state, b"{}")):
        with pytest.raises(objectstore.S3Error) as refused:
            call(store.client(canonical.store_user))
        assert refused.value.code == "AccessDenied", refused.value.body
    assert {key: store.root.get(BUCKET, key) for key in store.root.keys(BUCKET)} == before


def test_wrong_store_credentials_stop_a_members_up_in_one_line_before_anything_is_made(federation, operators, store):
    zte = operators["zte"]
    before = {key: store.root.get(BUCKET, key) for key in store.root.keys(BUCKET)}
    cloud_before = in_cloud(zte.cloud(), "zte")
    done = zte.command(*zte.up_command(), env={"AWS_SECRET_ACCESS_KEY": "not-" + zte.store_user.secret})
    said = done.stdout + done.stderr
    print(said[-1500:])
    assert done.returncode == 2, said[-3000:]
    words = [line for line in said.splitlines() if "refused this operator's credentials" in line]
    assert len(words) == 1 and words[0].startswith(
        "error: zte: the state backend s3://crdb-federation-state refused this operator's credentials "
        "(SignatureDoesNotMatch: "), said[-3000:]
    assert {key: store.root.get(BUCKET, key) for key in store.root.keys(BUCKET)} == before
    assert in_cloud(zte.cloud(), "zte") == cloud_before


def test_each_stacks_second_run_changes_nothing(federation, operators):
    for stack, machine in operators.items():
        done = machine.pulumi("preview", "--expect-no-changes", "--diff", check=False)
        assert done.returncode == 0, f"{stack}:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"


def _nodes(machine: OperatorMachine) -> dict[str, str]:
    return {s.name: s.id for s in machine.cloud().compute.servers()}


def test_a_30_second_store_outage_during_the_members_first_ups_is_ridden_out(federation, operators, store):
    """The CLI retries a checkpoint it cannot write (pulumi v3.259.0 pkg/backend/diy/state.go saveCheckpoint: 10 tries,
    from 1 s apart growing 1.2-fold, each with the AWS SDK's own 3 attempts), so each run goes on once the store is
    back, and each made its resources once."""
    first = federation["rounds"]["first"]
    print("after the store stopped for 30 s, the members' first runs ended (s):",
          {stack: round(seconds) for stack, (_, _, seconds) in first.items()})
    for member in MEMBERS:
        assert first[member][0] == 0 and first[member][2] > OUTAGE_SECONDS, (member, first[member][2])
        made = in_cloud(operators[member].cloud(), member)
        assert made["servers"] == [f"{member}-k3s-0"], made
        assert all(len(names) == len(set(names)) for names in made.values()), made
        assert store.root.keys(BUCKET, lock_prefix(qualified(member))) == []


# Longer than the CLI's retries of one checkpoint (73 to 80 s measured): the save fails and the update stops. A store
# that never comes back keeps it retrying each queued checkpoint as long again, for many minutes.
LONG_OUTAGE_SECONDS = 95


def test_a_store_outage_that_outlasts_the_clis_retries_is_said_in_one_line_and_the_next_up_converges(
        federation, operators, store):
    """zte's operator scales to two nodes; the store is gone longer than the CLI retries a checkpoint."""
    zte = operators["zte"]
    zte.pulumi("config", "set", "crdb-federation:nodeCount", "2")
    before = _nodes(zte)
    [(code, said, seconds)] = _up_at_once([zte], "outage-long", Outage(store, LONG_OUTAGE_SECONDS, "zte-k3s-1")).values()
    print(f"store stopped {LONG_OUTAGE_SECONDS} s; the run ended {seconds:.0f} s after it stopped; its last "
          "words:\n" + said[-2500:])
    assert code != 0
    words = [line for line in said.splitlines() if line.startswith("crdb-federation: zte: the state backend")]
    assert len(words) == 1 and "s3://crdb-federation-state did not answer" in words[0], said[-3000:]

    [(code, said, _)] = _up_at_once([zte], "after-outage").values()
    print("the next run:\n" + said[-2500:])
    assert code == 0, said[-4000:]
    assert in_cloud(zte.cloud(), "zte") == whole("zte", 2)  # each made once: nothing twice
    assert _nodes(zte)["zte-k3s-0"] == before["zte-k3s-0"]  # nothing lost
    assert store.root.keys(BUCKET, lock_prefix(qualified("zte"))) == []
    assert _outputs(zte, "zte")["certificatesSigned"] is True


def _creating(events, name: str) -> bool:
    """The engine has started to make one of the named node's cloud resources (its event log)."""
    if not events.exists():
        return False
    for line in events.read_text().splitlines():
        try:
            pre = json.loads(line).get("resourcePreEvent")
        except ValueError:  # a line being written
            continue
        if pre and pre["metadata"]["op"] == "create" and pre["metadata"]["type"].startswith("openstack:") \
                and f"::{name}" in pre["metadata"]["urn"]:
            return True
    return False


def test_each_operator_refreshes_and_destroys_its_own(federation, operators):
    operators["zte"].pulumi("refresh", "--yes", "--skip-preview")

    def destroy(stack: str) -> None:
        operators[stack].pulumi("destroy", "--yes", "--skip-preview", env=FORCED, timeout=900)

    with ThreadPoolExecutor(len(MEMBERS)) as members:  # each operator on its own machine, at once
        list(members.map(destroy, MEMBERS))
    destroy(SEED)
    for stack, machine in operators.items():
        assert in_cloud(machine.cloud(), stack) == NOTHING, stack
