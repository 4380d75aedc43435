"""A member signed within its own `up` (components/signature.py): the seed's signing service has the seed sign
requests it was given before the member exported them, the member's wait reads the seed's outputs, and the trust
checks are those of the two-step path. The service's decisions are tests/test_service.py's."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.settings import EARLY_REQUESTS_VARIABLE, REFUSALS_VARIABLE
from components.signature import (
    WAIT_SECONDS, SignatureRefused, _SignatureWaitProvider, answer, join_proof, requests_digest, wait_for_signature,
)
from federation.runner import PulumiStack
from tests.fakes import FakeCloud
from tests.harness import MEMBER, MEMBER_STACK, SEED, SEED_SECRETS, outputs_of, pinned_to, run_program

SIGNED = {"signedCertificates": {MEMBER_STACK: {"node": "N", "client": "C", "ops": "O", "requests": "d"}}}


def test_only_a_signature_of_these_very_requests_answers_and_a_refusal_of_them_ends_the_wait():
    assert answer(SIGNED, MEMBER_STACK, "d") == {"node": "N", "client": "C", "ops": "O"}
    assert answer(SIGNED, MEMBER_STACK, "newer requests") is None
    assert answer(SIGNED, "organization/crdb-federation/other", "d") is None
    refused = {**SIGNED, "refusals": {MEMBER_STACK: {"requests": "e", "reason": "not invited"}}}
    assert answer(refused, MEMBER_STACK, "d") is not None  # a refusal of other requests changes nothing
    with pytest.raises(SignatureRefused, match="refused to sign organization/crdb-federation/vexxhost's "
                                               "certificate requests: not invited"):
        answer(refused, MEMBER_STACK, "e")


def test_the_wait_polls_the_seeds_outputs_until_they_answer_and_names_what_it_waited_for_at_its_deadline():
    reads = iter([{}, RuntimeError("connection refused"), SIGNED])

    def read():
        found = next(reads)
        if isinstance(found, Exception):
            raise found
        return found

    assert wait_for_signature(read, MEMBER_STACK, "d", timeout=60, sleep=lambda s: None)["node"] == "N"
    clock = iter(range(100))
    failing = wait_for_signature(lambda: (_ for _ in ()).throw(RuntimeError("no such stack")), MEMBER_STACK,
                                 "d" * 64, timeout=3, clock=lambda: next(clock), sleep=lambda s: None)
    assert failing["node"] == "" and failing["unsigned"].startswith(
        f"no signature of {MEMBER_STACK}'s certificate requests (SHA-256 {'d' * 16}...) appeared in the seed's "
        "outputs within 3 s (the last read of the seed's outputs failed: no such stack)")
    assert "python -m federation serve" in failing["unsigned"]


def test_the_wait_is_skipped_when_not_wanted_or_set_to_zero(monkeypatch):
    def never(_seed):
        raise AssertionError("read the seed although nothing is waited for")

    monkeypatch.setattr("components.signature.seed_outputs", never)
    props = {"stack": MEMBER_STACK, "seed": "organization/crdb-federation/seed", "requests": "d" * 64,
             "timeout": 600}
    assert _SignatureWaitProvider().create({**props, "wanted": False}).outs["unsigned"] == ""
    monkeypatch.setenv(WAIT_SECONDS, "0")  # `join --two-step`
    made = _SignatureWaitProvider().create({**props, "wanted": True})
    assert made.outs["node"] == "" and made.outs["unsigned"].startswith("not waited for (signatureWait 0)")


def test_a_refusal_fails_the_wait_with_the_seeds_reason(monkeypatch):
    refused = {"refusals": {MEMBER_STACK: {"requests": "d" * 64, "reason": "its join proof does not match"}}}
    monkeypatch.setattr("components.signature.seed_outputs", lambda seed: refused)
    with pytest.raises(SignatureRefused, match="its join proof does not match"):
        _SignatureWaitProvider().create({"stack": MEMBER_STACK, "seed": "s", "requests": "d" * 64, "wanted": True,
                                         "timeout": 5})


def test_a_join_proof_answers_one_stack_and_one_set_of_requests():
    proof = join_proof("token", MEMBER_STACK, "d")
    assert len(proof) == 64 and "token" not in proof
    assert proof != join_proof("token", MEMBER_STACK, "e") != join_proof("token", "organization/x/y", "d")
    assert proof != join_proof("other token", MEMBER_STACK, "d")


def test_an_unsigned_wait_waits_again_and_a_signed_one_never_does():
    diff = _SignatureWaitProvider().diff
    signed = {"stack": "s", "requests": "d", "wanted": True, "node": "N"}
    assert not diff("id", signed, {"stack": "s", "requests": "d", "wanted": True}).changes
    # The second `up` after a join: the seed's output now answers the same requests.
    assert not diff("id", signed, {"stack": "s", "requests": "d", "wanted": False}).changes
    # Nor do a new timeout, seed or proof change a wait that ended signed.
    assert not diff("id", signed, {"stack": "s", "requests": "d", "wanted": False, "timeout": 5, "proof": "p"}).changes
    assert diff("id", signed, {"stack": "s", "requests": "d2", "wanted": True}).replaces == ["requests"]
    unsigned = {"stack": "s", "requests": "d", "wanted": True, "node": ""}
    assert diff("id", unsigned, {"stack": "s", "requests": "d", "wanted": True}).replaces == ["requests"]
    # Signed meanwhile through the seed's output: nothing to wait for, recorded by an update.
    answered = diff("id", unsigned, {"stack": "s", "requests": "d", "wanted": False})
    assert answered.changes and not answered.replaces


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


def test_early_requests_and_refusals_reach_the_seeds_engine_through_its_environment_alone():
    """A tool killed mid-join (SIGKILL, a CI timeout) left them in the tracked stack file, where they beat the
    members' own requests in every later seed `up`: they are no config at all now."""
    cli_calls = []
    workspace = SimpleNamespace(env_vars={}, _run_pulumi_cmd_sync=lambda args: cli_calls.append(args))
    automation = SimpleNamespace(workspace=workspace, set_config=lambda *a, **k: cli_calls.append(("set", a)),
                                 set_all_config=lambda *a, **k: cli_calls.append(("set-all", a)))
    seed = PulumiStack("seed", automation_stack=automation)
    early = {MEMBER_STACK: {"member": "vexxhost", "node": "n", "client": "c"}}
    refusals = {"organization/crdb-federation/zte": {"requests": "d", "reason": "not invited"}}
    seed.set_signing(early, refusals)
    # In files the variables name: one environment string may not exceed 128 KiB, about 45 members' requests.
    named = {v: Path(workspace.env_vars[v][1:]) for v in (EARLY_REQUESTS_VARIABLE, REFUSALS_VARIABLE)}
    assert json.loads(named[EARLY_REQUESTS_VARIABLE].read_text()) == early and cli_calls == []
    assert json.loads(named[REFUSALS_VARIABLE].read_text()) == refusals
    seed.set_signing({}, {})
    assert workspace.env_vars == {} and cli_calls == []


def test_the_seed_publishes_the_digest_each_signature_answers_and_the_services_refusals(early_signing_seed,
                                                                                         waiting_member):
    requests = outputs_of(waiting_member)["certificateRequests"]
    signed = outputs_of(early_signing_seed)["signedCertificates"][MEMBER_STACK]
    assert signed["requests"] == requests_digest(requests["node"], requests["client"], requests["ops"])
    refusals = {"organization/crdb-federation/zte": {"requests": "d" * 64, "reason": "zte is not invited"}}
    seed = run_program(SEED, stack="seed", secrets=SEED_SECRETS, environment={REFUSALS_VARIABLE: json.dumps(refusals)})
    assert outputs_of(seed)["refusals"] == refusals


def test_the_seed_reads_what_it_signs_from_the_file_the_variable_names(waiting_member, tmp_path):
    requests = outputs_of(waiting_member)["certificateRequests"]
    given = tmp_path / "early.json"
    given.write_text(json.dumps({MEMBER_STACK: {"member": "vexxhost", **requests}}))
    seed = run_program(SEED, stack="seed", secrets=SEED_SECRETS, stack_outputs={MEMBER_STACK: {}},
                       environment={EARLY_REQUESTS_VARIABLE: f"@{given}"})
    assert set(outputs_of(seed)["signedCertificates"]) == {MEMBER_STACK}


def test_early_requests_an_earlier_tool_left_in_the_seeds_stack_file_are_refused_by_name():
    with pytest.raises(Exception, match=r"crdb-federation:earlyRequests = \(requests\): expected no such key in the "
                                        r"stack file: .*pulumi config rm earlyRequests"):
        run_program({**SEED, "earlyRequests": "{}"}, stack="seed", secrets=SEED_SECRETS)
