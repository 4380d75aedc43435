"""A member signed within its own `up` (components/signature.py, federation/runner.py Signer): the seed signs
requests it was given before the member exported them, the member's wait reads what the tool left, and the
trust checks are those of the two-step path."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pulumi.automation.events import EngineEvent

from components.signature import (
    _SignatureWaitProvider, requests_digest, signature_file, wait_for_signature, write_signature,
)
from components.settings import EARLY_REQUESTS_VARIABLE
from federation.runner import CSR_TYPE, PulumiStack, Run, Signer, join
from tests.fake_stacks import FakeStack
from tests.fakes import FakeCloud
from tests.harness import MEMBER, MEMBER_STACK, SEED, SEED_SECRETS, outputs_of, pinned_to, run_program


def test_the_wait_takes_only_an_answer_to_these_requests_and_gives_up_at_its_deadline(tmp_path):
    path = signature_file(tmp_path, MEMBER_STACK)
    assert path.name == "organization+crdb-federation+vexxhost.json"
    write_signature(tmp_path, MEMBER_STACK, "old-digest", node="old", client="old")
    clock = iter(range(100))
    found = wait_for_signature(path, "digest", timeout=3, clock=lambda: next(clock), sleep=lambda s: None)
    assert found == {"node": "", "client": "", "ops": "", "refused": "no signature within 3s"}
    write_signature(tmp_path, MEMBER_STACK, "digest", node="N", client="C", ops="O")
    assert wait_for_signature(path, "digest", timeout=3) == {"node": "N", "client": "C", "ops": "O", "refused": ""}
    write_signature(tmp_path, MEMBER_STACK, "digest", refused="the seed's up did not sign it")
    assert wait_for_signature(path, "digest", timeout=3)["refused"] == "the seed's up did not sign it"
    assert not list(tmp_path.glob("*.partial"))


def test_an_unsigned_wait_waits_again_and_a_signed_one_never_does():
    diff = _SignatureWaitProvider().diff
    signed = {"stack": "s", "requests": "d", "wanted": True, "node": "N"}
    assert not diff("id", signed, {"stack": "s", "requests": "d", "wanted": True}).changes
    # The second `up` after a join through the tool: the seed's output now answers the same requests.
    assert not diff("id", signed, {"stack": "s", "requests": "d", "wanted": False}).changes
    assert diff("id", signed, {"stack": "s", "requests": "d2", "wanted": True}).replaces == ["requests"]
    unsigned = {"stack": "s", "requests": "d", "wanted": True, "node": ""}
    assert diff("id", unsigned, {"stack": "s", "requests": "d", "wanted": True}).replaces == ["requests"]
    # Signed meanwhile through the seed's output: nothing to wait for, recorded by an update.
    answered = diff("id", unsigned, {"stack": "s", "requests": "d", "wanted": False})
    assert answered.changes and not answered.replaces


def test_outside_the_tool_the_wait_gives_nothing_at_once(monkeypatch):
    monkeypatch.delenv("CRDB_SIGNATURES_DIR", raising=False)
    started = time.monotonic()
    made = _SignatureWaitProvider().create({"stack": MEMBER_STACK, "requests": "d" * 64, "wanted": True})
    assert made.outs["node"] == "" and "not joined through the federation tool" in made.outs["refused"]
    assert time.monotonic() - started < 1


@pytest.fixture(scope="module")
def early_signing_seed(waiting_member):
    """The seed's up given the member's requests early: the member stack has exported nothing yet."""
    requests = outputs_of(waiting_member)["certificateRequests"]
    early = {MEMBER_STACK: {"member": "vexxhost", **requests}}
    # The tool's signing up: the member is admitted for this run alone, by its early requests (not in members).
    return run_program(SEED, stack="seed", secrets=SEED_SECRETS, stack_outputs={MEMBER_STACK: {}},
                       environment={EARLY_REQUESTS_VARIABLE: json.dumps(early)})


def test_the_seed_signs_early_requests_and_lists_the_members_addresses_once_it_exports_them(
        early_signing_seed, signing_seed, waiting_member):
    early, late = outputs_of(early_signing_seed), outputs_of(signing_seed)
    assert set(early["signedCertificates"]) == set(late["signedCertificates"]) == {MEMBER_STACK}
    member_ips = [node["publicIp"] for node in outputs_of(waiting_member)["nodes"]]
    assert not [a for a in early["federationJoin"] if a.split(":")[0] in member_ips]
    assert [a for a in late["federationJoin"] if a.split(":")[0] in member_ips]


def test_early_requests_are_checked_as_published_ones_are(waiting_member):
    """A request for another common name is refused whichever way it reached the seed."""
    requests = outputs_of(waiting_member)["certificateRequests"]
    forged = {MEMBER_STACK: {"member": "vexxhost", "node": _request_for("root"), "client": requests["client"]}}
    with pytest.raises(Exception, match="its node request is for CN='root'"):
        run_program(SEED, stack="seed", secrets=SEED_SECRETS, stack_outputs={MEMBER_STACK: {}},
                    environment={EARLY_REQUESTS_VARIABLE: json.dumps(forged)})


def _request_for(common_name: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM).decode()


def test_a_member_installs_what_its_wait_found_after_checking_it(early_signing_seed, waiting_member, tmp_path):
    """The member's own `up`: its seed's output has no certificate yet; the wait found one in the tool's file."""
    seed_outputs = outputs_of(early_signing_seed)
    before_signing = {**seed_outputs, "signedCertificates": {}}
    mine = seed_outputs["signedCertificates"][MEMBER_STACK]

    def member_up(node: str, client: str):
        return run_program(pinned_to(seed_outputs, MEMBER), stack="vexxhost",
                           stack_outputs={"organization/crdb-federation/seed": before_signing},
                           cloud=FakeCloud(signature={"node": node, "client": client}))

    assert outputs_of(member_up(mine["node"], mine["client"]))["certificatesSigned"] is True
    # A forged answer in the file is refused as a forged seed output is.
    with pytest.raises(Exception, match="is not for this stack's own node key|does not chain to the pinned CA"):
        member_up(seed_outputs["rootClientCertificate"], mine["client"])
    # No answer: the nodes wait for the next `up`, as on the two-step path.
    assert outputs_of(member_up("", ""))["certificatesSigned"] is False


def _csr_made(stack: str, kind: str, pem: str) -> EngineEvent:
    urn = f"urn:pulumi:{stack}::crdb-federation::{CSR_TYPE}::{stack}-identity-{kind}-csr"
    state = {"type": CSR_TYPE, "urn": urn, "id": "x", "parent": "", "provider": "", "inputs": {},
             "outputs": {"certRequestPem": pem}}
    return EngineEvent.from_json({"sequence": 1, "timestamp": 0, "resOutputsEvent": {"metadata": {
        "op": "create", "urn": urn, "type": CSR_TYPE, "provider": "", "new": state}}})


class EarlyMember(FakeStack):
    """A member's `up` under the tool: its requests appear after `delay`, then it waits for its signature."""

    def __init__(self, name, delay, directory):
        super().__init__(name, outputs={})
        self.delay, self.directory = delay, directory
        self.requests = {k: f"-----BEGIN CERTIFICATE REQUEST-----\n{name}-{k}\n" for k in ("node", "client", "ops")}

    def run(self, operation, on_event, on_output):
        self.calls.append(operation)
        time.sleep(self.delay)
        for kind, pem in self.requests.items():
            on_event(_csr_made(self.name, kind, pem))
        found = wait_for_signature(signature_file(self.directory, self.qualified_name()),
                                   requests_digest(*self.requests.values()), timeout=5,
                                   interval=0.01)
        self._outputs = {"stack": self.qualified_name(), "certificatesSigned": bool(found["node"]),
                         "certificateRequests": self.requests, "found": found}

    def qualified_name(self):
        return f"organization/crdb-federation/{self.name}"

    def member_name(self):
        return self.name


class BatchingSeed(FakeStack):
    """Signs what its early requests hold, slowly enough for members to arrive during one of its `up`s."""

    def __init__(self):
        super().__init__("seed", duration=0.3, outputs={"joinAddresses": ["198.18.0.1:26257"], "caCertificate": "ca"})
        self.batches, self.early, self.members = [], {}, []

    def add_members(self, stacks):
        added = [s for s in stacks if s not in self.members]
        self.members += added
        return added

    def set_early_requests(self, requests):
        self.early = dict(requests)

    def run(self, operation, on_event, on_output):
        self.batches.append(sorted(self.early))
        super().run(operation, on_event, on_output)
        self._outputs = {**self._outputs, "signedCertificates": {
            stack: {kind: f"signed {r[kind]}" for kind in ("node", "client", "ops")}
            for stack, r in self.early.items()}}


def test_the_tool_signs_members_in_batches_while_their_ups_run_and_each_joins_in_its_first_up(tmp_path, monkeypatch):
    monkeypatch.setattr(Signer, "GATHER_SECONDS", 0.0)  # every arrival after the first waits for the next batch
    seed = BatchingSeed()
    members = [EarlyMember("a", 0.0, tmp_path), EarlyMember("b", 0.1, tmp_path), EarlyMember("c", 0.12, tmp_path)]
    run = Run([m.name for m in members], "up", tmp_path / "logs")
    join(run, seed, members, parallelism=4, signatures=tmp_path)
    # a alone; b and c arrived while the seed signed a: one `up` for both. Then, off the critical path, one
    # seed `up` (no early requests left) and each member's second for the join lists of every member.
    prefix = "organization/crdb-federation/"
    assert seed.batches == [[prefix + "a"], [prefix + "a", prefix + "b", prefix + "c"], []]
    # Its checks before an `up` ran while the members built, not in the first signing `up`.
    assert seed.calls == ["prepare", "up", "up", "up"]
    assert [m.calls for m in members] == [["up", "up"]] * 3
    assert all(m._outputs["found"]["node"] == f"signed {m.requests['node']}" for m in members)
    assert seed.members == [prefix + n for n in "abc"] and seed.early == {}  # tidied: the members export them
    assert all(run.progress[m.name].status == "succeeded" for m in members)


def test_members_that_ask_within_the_gathering_window_share_one_signing_up(tmp_path, monkeypatch):
    monkeypatch.setattr(Signer, "GATHER_SECONDS", 1.0)
    seed = BatchingSeed()
    members = [EarlyMember("a", 0.0, tmp_path), EarlyMember("b", 0.3, tmp_path), EarlyMember("c", 1.6, tmp_path)]
    run = Run([m.name for m in members], "up", tmp_path / "logs")
    started = time.monotonic()
    join(run, seed, members, parallelism=4, signatures=tmp_path)
    prefix = "organization/crdb-federation/"
    # b asked 0.3 s after a: one `up` for both. c, 1.6 s after a, missed the window: the next batch.
    assert seed.batches[:2] == [[prefix + "a", prefix + "b"], [prefix + "a", prefix + "b", prefix + "c"]]
    assert all(m._outputs["found"]["node"] == f"signed {m.requests['node']}" for m in members)
    assert time.monotonic() - started < 5


def test_once_every_member_has_asked_the_batch_waits_no_longer(tmp_path, monkeypatch):
    monkeypatch.setattr(Signer, "GATHER_SECONDS", 30.0)
    seed = BatchingSeed()
    members = [EarlyMember("a", 0.0, tmp_path), EarlyMember("b", 0.2, tmp_path)]
    run = Run([m.name for m in members], "up", tmp_path / "logs")
    started = time.monotonic()
    join(run, seed, members, parallelism=2, signatures=tmp_path)
    assert seed.batches[0] == ["organization/crdb-federation/a", "organization/crdb-federation/b"]
    assert time.monotonic() - started < 5, "the batch waited out its window with nobody left to come"


def test_a_batch_the_seed_fails_to_sign_ends_the_waits_and_drops_members_that_never_exported(tmp_path):
    seed = BatchingSeed()
    seed.fail_after = 1
    class FailingMember(EarlyMember):
        def run(self, operation, on_event, on_output):
            super().run(operation, on_event, on_output)
            self.found, self._outputs = self._outputs["found"], {}  # a failed first up exports nothing
            raise RuntimeError("a's up failed")

    member = FailingMember("a", 0.0, tmp_path)
    run = Run(["a"], "up", tmp_path / "logs")
    join(run, seed, [member], parallelism=1, signatures=tmp_path)
    assert member.found["refused"].startswith("the seed's up did not sign it")
    assert run.progress["a"].status == "failed"
    assert seed.members == [] and seed.early == {}


def test_early_requests_reach_the_seeds_engine_through_its_environment_alone():
    """A tool killed mid-join (SIGKILL, a CI timeout) left them in the tracked stack file, where they beat the
    members' own requests in every later seed `up`: they are no config at all now."""
    cli_calls = []
    workspace = SimpleNamespace(env_vars={}, _run_pulumi_cmd_sync=lambda args: cli_calls.append(args))
    automation = SimpleNamespace(workspace=workspace, set_config=lambda *a, **k: cli_calls.append(("set", a)),
                                 set_all_config=lambda *a, **k: cli_calls.append(("set-all", a)))
    seed = PulumiStack("seed", automation_stack=automation)
    early = {MEMBER_STACK: {"member": "vexxhost", "node": "n", "client": "c"}}
    seed.set_early_requests(early)
    assert json.loads(workspace.env_vars[EARLY_REQUESTS_VARIABLE]) == early and cli_calls == []
    seed.set_early_requests({})
    assert workspace.env_vars == {} and cli_calls == []


def test_the_signer_writes_nothing_into_the_seeds_stack_file(tmp_path):
    seed = BatchingSeed()
    members = [EarlyMember("a", 0.0, tmp_path)]
    with Signer(Run(["a"], "up", tmp_path / "logs"), seed, members, tmp_path) as signer:
        for member in members:
            member.run("up", lambda event: signer.on_event(member.name, event), lambda line: None)
    assert seed.members == [] and seed.early == {}
    assert members[0]._outputs["found"]["node"] == f"signed {members[0].requests['node']}"


def test_early_requests_an_earlier_tool_left_in_the_seeds_stack_file_are_refused_by_name():
    with pytest.raises(Exception, match=r"crdb-federation:earlyRequests = \(requests\): expected no such key in the "
                                        r"stack file: .*pulumi config rm earlyRequests"):
        run_program({**SEED, "earlyRequests": "{}"}, stack="seed", secrets=SEED_SECRETS)
