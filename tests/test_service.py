"""The seed's signing service (federation/service.py) and what it reads of the backend (federation/backend_state.py).

The states here have the shapes pulumi v3.259.0's diy backend writes (pkg/backend/diy): a checkpoint
{"version": 3, "checkpoint": {"stack", "latest": deployment}} whose pending_operations hold {"resource", "type"}
(apitype.OperationV2), a lock {"pid", "username", "hostname", "timestamp"} (lock.go lockContent), and a history entry
with "kind", "result", "startTime" and "endTime" in seconds (apitype.UpdateInfo). The real ones are read in
tests/integration/test_operators_apart.py."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from components.signature import join_proof, requests_digest
from federation.backend_state import BackendReader, StackView
from federation.service import Invitations, SigningService, plan, read_invitations, row
from tests.paper_members import member_requests

PREFIX = "organization/crdb-federation/"
SEED_IP = "198.18.0.10"


def requests_for(ip: str) -> dict[str, str]:
    return member_requests([ip])


def deployment(stack: str, requests: dict[str, str], *, waiting: bool = True, done: bool = False, proof: str = "",
               digest: str = "", outputs: dict | None = None) -> dict:
    """A member's checkpoint as its `up` leaves it: its three requests made, its SignatureWait pending (waiting)."""
    prefix = f"urn:pulumi:{stack}::crdb-federation::"
    resources = [{"urn": f"{prefix}pulumi:pulumi:Stack::crdb-federation-{stack}", "type": "pulumi:pulumi:Stack",
                  "outputs": outputs or {}},
                 {"urn": f"{prefix}openstack:networking/port:Port::{stack}-k3s-0-port",
                  "type": "openstack:networking/port:Port"}]
    resources += [{"urn": f"{prefix}tls:index/certRequest:CertRequest::{stack}-identity-{kind}-csr",
                   "type": "tls:index/certRequest:CertRequest", "outputs": {"certRequestPem": pem}}
                  for kind, pem in requests.items()]
    wait = {"urn": f"{prefix}pulumi-python:dynamic:Resource::{stack}-signature", "type": "pulumi-python:dynamic:Resource",
            "inputs": {"stack": PREFIX + stack, "proof": proof,
                       "requests": digest or requests_digest(requests["node"], requests["client"], requests["ops"])}}
    pending = []
    if waiting and not done:
        pending = [{"resource": wait, "type": "creating"},
                   {"resource": {"urn": f"{prefix}openstack:compute/instance:Instance::{stack}-k3s-0",
                                 "type": "openstack:compute/instance:Instance"}, "type": "creating"}]
    elif done:
        resources.append(wait)
    return {"resources": resources, "pending_operations": pending}


def view(stack: str, requests: dict[str, str], *, running: bool = True, last: dict | None = None, **kwargs) -> StackView:
    return StackView(stack, deployment(stack, requests, **kwargs), 1000.0 if running else None, last or {})


def seed_view(signed: dict | None = None, refusals: dict | None = None) -> StackView:
    outputs = {"member": "seed", "nodes": [{"publicIp": SEED_IP, "privateIp": "10.0.0.5"}],
               "signedCertificates": signed or {}, "refusals": refusals or {}}
    return StackView("seed", {"resources": [{"urn": "urn:pulumi:seed::crdb-federation::pulumi:pulumi:Stack::x",
                                             "type": "pulumi:pulumi:Stack", "outputs": outputs}]})


def digest_of(requests: dict[str, str]) -> str:
    return requests_digest(requests["node"], requests["client"], requests["ops"])


@pytest.fixture(scope="module")
def asked():
    return {name: requests_for(ip) for name, ip in (("a", "198.18.0.21"), ("b", "198.18.0.22"), ("c", "198.18.0.23"))}


def test_an_invited_member_is_signed_and_an_uninvited_one_refused_and_told_why(asked):
    refused: dict = {}
    made = plan([view("a", asked["a"]), view("c", asked["c"])], seed_view(), Invitations((PREFIX + "a",)), refused, [])
    assert made.batch == (PREFIX + "a",) and set(made.early) == {PREFIX + "a"}
    assert made.early[PREFIX + "a"] == {"member": "a", **asked["a"]}
    assert refused[PREFIX + "c"] == {"requests": digest_of(asked["c"]), "reason": (
        f"{PREFIX}c is not invited: the seed's operator lists the stacks it signs in crdb-federation:invited "
        "(ask them to add it)")}
    assert made.new_refusals == (PREFIX + "c",) and made.needs_seed_up


def test_a_join_token_is_proven_by_the_members_proof_of_these_requests(asked):
    invitations = Invitations((PREFIX + "a", PREFIX + "b"), {PREFIX + "a": "t0k3n", PREFIX + "b": "other"})
    digest = digest_of(asked["a"])
    good = view("a", asked["a"], proof=join_proof("t0k3n", PREFIX + "a", digest))
    # b holds a's proof: it answers another stack and other requests.
    stolen = view("b", asked["b"], proof=join_proof("t0k3n", PREFIX + "a", digest))
    refused: dict = {}
    made = plan([good, stolen], seed_view(), invitations, refused, [])
    assert made.batch == (PREFIX + "a",)
    assert "carry no proof of the join token" in refused[PREFIX + "b"]["reason"]


def test_a_forged_request_is_refused_alone_and_the_others_are_signed_in_the_same_batch(asked):
    forged = requests_for(SEED_IP)
    refused: dict = {}
    made = plan([view("a", asked["a"]), view("b", forged)], seed_view(),
                Invitations((PREFIX + "a", PREFIX + "b")), refused, [])
    assert made.batch == (PREFIX + "a",)
    assert refused[PREFIX + "b"]["reason"] == f"{PREFIX}b: its node request names {SEED_IP}, an address of the seed"


def test_a_member_mid_step_or_of_an_earlier_version_is_left_for_later(asked):
    mid_step = view("a", asked["a"], digest="d" * 64)  # its wait is on other requests than its state holds now
    old = StackView("b", {"resources": deployment("b", asked["b"])["resources"][:-1]})  # no SignatureWait at all
    made = plan([mid_step, old], seed_view(), Invitations((PREFIX + "a", PREFIX + "b")), {}, [])
    assert not made.needs_seed_up and made.early == {}


def test_a_signed_member_stays_in_every_signing_and_is_admitted_for_good_once_its_up_succeeded(asked):
    signed = {PREFIX + "a": {"node": "N", "requests": digest_of(asked["a"])}}
    running = view("a", asked["a"], done=True)
    made = plan([running], seed_view(signed), Invitations((PREFIX + "a",)), {}, [])
    assert not made.needs_seed_up and set(made.early) == {PREFIX + "a"}
    finished = view("a", asked["a"], done=True, running=False, last={"result": "succeeded"},
                    outputs={"certificatesSigned": True})
    made = plan([finished], seed_view(signed), Invitations((PREFIX + "a",)), {}, [])
    assert made.joined == (PREFIX + "a",) and made.batch == ()
    assert not plan([finished], seed_view(signed), Invitations((PREFIX + "a",)), {}, [PREFIX + "a"]).needs_seed_up
    # New requests (a scale-up): signed again.
    again = plan([view("a", asked["b"])], seed_view(signed), Invitations((PREFIX + "a",)), {}, [PREFIX + "a"])
    assert again.batch == (PREFIX + "a",)


def test_a_refusal_is_published_once(asked):
    refused: dict = {}
    plan([view("c", asked["c"])], seed_view(), Invitations(()), refused, [])
    published = plan([view("c", asked["c"])], seed_view(refusals=refused), Invitations(()), refused, [])
    assert published.refusals == refused and not published.needs_seed_up


@pytest.mark.parametrize("kwargs, state", [
    ({}, "waiting for signature"),
    ({"waiting": False}, "building"),
    ({"done": True, "signed": True}, "signed"),
    ({"done": True, "signed": True, "running": False, "last": {"result": "succeeded", "startTime": 900,
                                                                 "endTime": 1100}}, "joined"),
    ({"running": False, "last": {"result": "failed", "message": "boom", "startTime": 900, "endTime": 950}},
     "failed"),
    ({"refused": True}, "refused"),
])
def test_a_rows_state(asked, kwargs, state):
    signed = kwargs.pop("signed", False)
    refused = {PREFIX + "a": {"requests": digest_of(asked["a"]), "reason": "no"}} if kwargs.pop("refused", False) else {}
    outputs = {"certificatesSigned": True} if state == "joined" else None
    seed = seed_view({PREFIX + "a": {"node": "N", "requests": digest_of(asked["a"])}} if signed else None)
    shown = row(view("a", asked["a"], outputs=outputs, **kwargs), seed, refused, seen_start=None)
    assert shown["state"] == state
    if state in ("joined", "failed"):
        assert (shown["started"], shown["ended"]) == (900, kwargs["last"]["endTime"])
    else:
        assert shown["started"] == 1000.0 and shown["ended"] is None


class FakeReader:
    def __init__(self, views: dict[str, StackView]):
        self.views = views

    def stacks(self):
        return sorted(self.views)

    def view(self, stack):
        return self.views[stack]


class FakeSeed:
    """Signs what it is given, as the seed's program does (components/federation.py published_certificates), in a
    `up` that takes a moment; or fails as `failures` say."""

    name = "seed"

    def __init__(self, reader: FakeReader, failures=()):
        self.reader, self.failures, self.ups, self.admitted = reader, list(failures), [], []

    def prepare(self, on_output):
        pass

    def members(self):
        return list(self.admitted)

    def add_members(self, stacks):
        self.admitted += [s for s in stacks if s not in self.admitted]

    def set_signing(self, early, refusals):
        self.early, self.refusals = early, refusals

    def run(self, operation, on_event, on_output):
        self.ups.append(sorted(self.early))
        time.sleep(0.05)
        if self.failures:
            raise RuntimeError(self.failures.pop(0))
        signed = {s: {"node": "N", "requests": requests_digest(r["node"], r["client"], r["ops"])}
                  for s, r in self.early.items()}
        self.reader.views["seed"] = seed_view(signed, self.refusals)


def _until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_the_service_signs_a_batch_says_why_a_seed_up_failed_and_retries(asked, monkeypatch):
    monkeypatch.setattr("federation.service.RETRY_SECONDS", (0.1,))
    reader = FakeReader({"seed": seed_view(), "a": view("a", asked["a"]), "b": view("b", asked["b"])})
    seed = FakeSeed(reader, failures=["error: the seed's cloud said 503"])
    said = []
    with SigningService(seed, reader, Invitations((PREFIX + "a", PREFIX + "b")), said.append, poll=0.02) as service:
        _until(lambda: any(line.startswith("signed a, b") for line in said))
        shown = {r["stack"]: r["state"] for r in service.snapshot()["rows"]}
    assert seed.ups == [[PREFIX + "a", PREFIX + "b"]] * 2
    assert "the seed's up failed: error: the seed's cloud said 503" in said
    assert shown == {"a": "signed", "b": "signed"}


def test_a_member_the_seeds_up_refuses_by_name_is_refused_and_the_others_signed_next(asked):
    reader = FakeReader({"seed": seed_view(), "a": view("a", asked["a"]), "b": view("b", asked["b"])})
    seed = FakeSeed(reader, failures=[f"crdb-federation:members: {PREFIX}b asks to sign a new node key"])
    said = []
    with SigningService(seed, reader, Invitations((PREFIX + "a", PREFIX + "b")), said.append, poll=0.02) as service:
        _until(lambda: any(line.startswith("signed a") for line in said))
        _until(lambda: PREFIX + "b" in (reader.views["seed"].outputs().get("refusals") or {}))
        rows = {r["stack"]: r for r in service.snapshot()["rows"]}
    assert rows["b"]["state"] == "refused" and "asks to sign a new node key" in rows["b"]["detail"]
    assert seed.ups[1] == [PREFIX + "a"]


def test_a_restarted_service_finds_what_is_signed_in_the_seeds_outputs_and_signs_only_the_rest(asked):
    signed = {PREFIX + "a": {"node": "N", "requests": digest_of(asked["a"])}}
    reader = FakeReader({"seed": seed_view(signed), "a": view("a", asked["a"], done=True),
                         "b": view("b", asked["b"])})
    seed = FakeSeed(reader)
    with SigningService(seed, reader, Invitations((PREFIX + "a", PREFIX + "b")), lambda line: None, poll=0.02):
        _until(lambda: seed.ups)
    assert seed.ups[0] == [PREFIX + "a", PREFIX + "b"]  # a kept, b new: one `up`
    assert len(seed.ups) == 1


def test_invitations_come_from_the_seeds_config_and_tokens_only_for_invited_stacks():
    config = {"crdb-federation:invited": {"value": json.dumps([PREFIX + "a"]), "objectValue": [PREFIX + "a"]}}
    assert read_invitations(config, json.dumps({PREFIX + "a": "t"})) == Invitations((PREFIX + "a",), {PREFIX + "a": "t"})
    with pytest.raises(ValueError, match=r"joinTokens names \['organization/crdb-federation/b'\]"):
        read_invitations(config, json.dumps({PREFIX + "b": "t"}))


def test_the_reader_sees_a_running_update_its_pending_wait_and_the_last_finished_one(tmp_path, asked):
    root = tmp_path / "state"
    stacks = root / ".pulumi" / "stacks" / "crdb-federation"
    stacks.mkdir(parents=True)
    checkpoint = {"version": 3, "checkpoint": {"stack": PREFIX + "a", "latest": deployment("a", asked["a"])}}
    (stacks / "a.json.gz").write_bytes(gzip.compress(json.dumps(checkpoint).encode()))
    (stacks / "a.json.gz.bak").write_bytes(b"old")
    locks = root / ".pulumi" / "locks" / "organization" / "crdb-federation" / "a"
    locks.mkdir(parents=True)
    (locks / "0f3c.json").write_text(json.dumps({"pid": 7, "username": "op", "hostname": "h",
                                                 "timestamp": "2026-12-07T22:10:05.123456789Z"}))
    history = root / ".pulumi" / "history" / "crdb-federation" / "a"
    history.mkdir(parents=True)
    for nanos, result in ((1796681000000000000, "failed"), (1796681300000000000, "succeeded")):
        (history / f"a-{nanos}.history.json").write_text(json.dumps({"kind": "update", "result": result,
                                                                      "startTime": 1, "endTime": 2}))
        (history / f"a-{nanos}.checkpoint.json").write_text("{}")
    reader = BackendReader(f"file://{root}")
    assert reader.stacks() == ["a"]
    seen = reader.view("a")
    assert seen.running_since == pytest.approx(1796681405.123456)
    assert seen.last_update["result"] == "succeeded"
    assert seen.requests() == asked["a"] and seen.waiting().member == "a" and not seen.waiting().done
    assert seen.phase() == "servers"  # its pending steps: the wait (no phase of its own), a server's create


class WaitingMember:
    """A member's `up` as the backend shows it: its requests and its pending wait appear in its state after `delay`;
    it then polls the seed's outputs as its SignatureWait does (components/signature.wait_for_signature)."""

    def __init__(self, name: str, requests: dict[str, str], reader: FakeReader, delay: float):
        self.name, self.requests, self.reader, self.delay = name, requests, reader, delay
        self.calls, self.found = [], None

    def run(self, operation, on_event, on_output):
        from components.signature import answer, wait_for_signature

        self.calls.append(operation)
        if len(self.calls) == 1:
            time.sleep(self.delay)
            self.reader.views[self.name] = view(self.name, self.requests)
            self.found = wait_for_signature(lambda: self.reader.views["seed"].outputs(), PREFIX + self.name,
                                            digest_of(self.requests), timeout=10, interval=0.02)
            self.reader.views[self.name] = view(self.name, self.requests, done=True, running=False,
                                                last={"result": "succeeded"}, outputs={"certificatesSigned": True})

    def outputs(self, secrets=False):
        return {"stack": PREFIX + self.name, "certificatesSigned": bool(self.found and self.found["node"])}


def test_join_signs_through_the_same_service_and_each_member_joins_in_its_first_up(asked, tmp_path):
    """`python -m federation join` on one machine: the members' `up`s wait on the backend as operators apart do,
    and the service (the one `serve` runs) signs them in batches through the seed's recorded `up`s."""
    from federation.runner import RecordedSeed, Run, join

    reader = FakeReader({"seed": seed_view()})
    seed = FakeSeed(reader)
    seed.outputs = lambda secrets=False: {"joinAddresses": ["198.18.0.10:26257"], "caCertificate": "ca"}
    members = [WaitingMember(n, asked[n], reader, delay) for n, delay in (("a", 0.0), ("b", 0.3), ("c", 0.35))]
    run = Run([m.name for m in members], "up", tmp_path / "logs")
    join(run, seed, members, parallelism=3, signing=lambda: SigningService(
        RecordedSeed(run, seed), reader, Invitations(tuple(PREFIX + m.name for m in members)), lambda line: None,
        poll=0.02))
    assert all(m.found["node"] == "N" for m in members)
    # a asked first; however the threads were scheduled, one batch at last signed all three.
    assert PREFIX + "a" in seed.ups[0] and [PREFIX + "a", PREFIX + "b", PREFIX + "c"] in seed.ups
    assert [m.calls for m in members] == [["up", "up"]] * 3  # the second only takes the join list
    assert all(run.progress[m.name].status == "succeeded" for m in members)
    assert run.progress["seed"].status == "succeeded"


def test_each_row_carries_the_clusters_own_view_of_its_cloud_where_the_sql_answers(asked):
    from types import SimpleNamespace

    reader = FakeReader({"seed": seed_view(), "a": view("a", asked["a"]), "b": view("b", asked["b"])})
    cluster = SimpleNamespace(clouds={"a": {"live": 1, "locality": "cloud=a"}})
    service = SigningService(FakeSeed(reader), reader, Invitations((PREFIX + "a", PREFIX + "b")), print,
                             cluster=cluster)
    service.observe()
    rows = {r["stack"]: r["cluster"] for r in service.snapshot()["rows"]}
    assert rows == {"a": {"live": 1, "locality": "cloud=a"}, "b": None}


def test_the_service_times_each_members_requests_from_first_seen_to_answered_in_the_seeds_outputs(asked):
    """The hook bench/scene.py measures the signing latency with: once per set of requests, in that order."""
    reader = FakeReader({"seed": seed_view(), "a": view("a", asked["a"]), "b": view("b", asked["b"])})
    told = []
    with SigningService(FakeSeed(reader), reader, Invitations((PREFIX + "a", PREFIX + "b")), lambda line: None,
                        poll=0.02, on_timing=lambda stack, what, when: told.append((stack, what, when))):
        _until(lambda: len(told) == 4)
        time.sleep(0.1)  # later reads tell nothing more
    assert sorted((stack, what) for stack, what, _ in told) == [
        (PREFIX + s, what) for s in "ab" for what in ("answered", "requests seen")]
    for stack in (PREFIX + "a", PREFIX + "b"):
        seen, answered = (next(t for s, w, t in told if s == stack and w == what) for what in ("requests seen",
                                                                                                 "answered"))
        assert seen <= answered


def test_a_batch_waits_briefly_for_invited_members_whose_up_runs_and_has_not_asked_yet(asked):
    reader = FakeReader({"seed": seed_view(), "a": view("a", asked["a"]), "b": view("b", asked["b"], waiting=False)})
    seed = FakeSeed(reader)
    with SigningService(seed, reader, Invitations((PREFIX + "a", PREFIX + "b")), lambda line: None, poll=0.02):
        time.sleep(0.5)
        assert seed.ups == []  # b builds: a waits for it, within GATHER_SECONDS
        reader.views["b"] = view("b", asked["b"])
        _until(lambda: seed.ups)
    assert seed.ups[0] == [PREFIX + "a", PREFIX + "b"]


def test_a_request_replaced_by_a_scale_up_is_read_as_the_new_one_not_the_old_left_to_delete(asked):
    """A scale-up replaces the node request (new addresses): the engine records the new one, then the old one after it
    with delete: true until it is deleted, as a real zte scale-up's state showed."""
    old, new = asked["a"], {**asked["a"], "node": asked["b"]["node"]}
    state = deployment("a", new)
    state["resources"].append({"urn": "urn:pulumi:a::crdb-federation::tls:index/certRequest:CertRequest::"
                               "a-identity-node-csr", "type": "tls:index/certRequest:CertRequest", "delete": True,
                               "outputs": {"certRequestPem": old["node"]}})
    assert StackView("a", state, 1.0).requests()["node"] == asked["b"]["node"]


def test_a_refused_members_row_stays_refused_after_its_up_failed_at_its_wait(asked):
    """Its wait failed, so its state no longer holds one: the row still says why, until it runs again."""
    refused = {PREFIX + "c": {"requests": digest_of(asked["c"]), "reason": "c is not invited"}}
    failed = StackView("c", {"resources": deployment("c", asked["c"])["resources"]}, None, {"result": "failed"})
    shown = row(failed, seed_view(), refused, seen_start=None)
    assert (shown["state"], shown["detail"]) == ("refused", "c is not invited")


def test_a_signing_that_raises_is_said_and_tried_again_not_the_end_of_the_service(asked, monkeypatch):
    monkeypatch.setattr("federation.service.RETRY_SECONDS", (0.05,))
    reader = FakeReader({"seed": seed_view(), "a": view("a", asked["a"])})
    seed = FakeSeed(reader)
    calls = []

    def set_signing(early, refusals):
        calls.append(early)
        if len(calls) == 1:
            raise OSError("No space left on device")
        seed.early, seed.refusals = early, refusals

    seed.set_signing = set_signing
    said = []
    with SigningService(seed, reader, Invitations((PREFIX + "a",)), said.append, poll=0.02):
        _until(lambda: any(line.startswith("signed a") for line in said))
    assert "could not sign: No space left on device" in said
