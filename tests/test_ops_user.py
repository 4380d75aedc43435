"""The members' SQL user (components/ops_user.py), for the whole program under mocks: the seed makes it with exactly
its grants, signs each member's third certificate request with the client CA after the same checks as the others,
and the member installs the certificate where its removals and its OS upgrade's gate log in with it. CockroachDB
refuses a SQL login as `node` (pkg/sql/pgwire/auth.go handleAuthentication; pkg/security/certs_test.go
TestUseSplitCACerts: `"node" is not a sql user`), which is what both used before."""

from __future__ import annotations

import json
import shlex

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from components.cockroach_manifests import CLIENT_SECRET
from components.ops_user import OPS_CERT_FILE, OPS_KEY_FILE, OPS_USER
from components.settings import EARLY_REQUESTS_VARIABLE
from components.signature import requests_digest
from tests.fakes import FakeCloud
from tests.harness import MEMBER, MEMBER_STACK, SEED, SEED_SECRETS, SEED_STACK, outputs_of, pinned_to, run_program


def node_secret(run) -> dict[str, str]:
    secret = next(s for s in run.cloud.of_type(":Secret") if s.outputs["metadata"]["name"] == "cockroachdb-node-certs")
    return secret.outputs["stringData"]


def request_for(common_name: str, key=None) -> str:
    """A certificate request for `common_name`, with a key of its own unless given one."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM).decode()


def seed_signing(member_outputs: dict, cloud: FakeCloud = None):
    return run_program({**SEED, "members": [MEMBER_STACK]}, stack="seed", secrets=SEED_SECRETS,
                       stack_outputs={MEMBER_STACK: member_outputs}, cloud=cloud)


def member_of(seed_outputs: dict):
    return run_program(pinned_to(seed_outputs, MEMBER), stack="vexxhost", stack_outputs={SEED_STACK: seed_outputs})


def test_the_seed_makes_the_members_sql_user_with_exactly_the_grants_its_statements_need(seed):
    """Its cluster-settings job (as root, every 10 minutes) runs them, each idempotent: the lease table, so members
    never need CREATE; the user; VIEWCLUSTERMETADATA for crdb_internal's gossip and store tables; the lease table's
    SELECT, INSERT, UPDATE (UPSERT) and DELETE. No role, no admin, nothing on any other object."""
    [cron] = seed.cloud.of_type("batch/v1:CronJob")
    pod = cron.inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["volumes"][0]["secret"]["secretName"] == CLIENT_SECRET  # client.root.crt: it runs as root
    script = pod["containers"][0]["command"][2]
    line = next(line for line in script.splitlines() if "CREATE USER" in line)
    statements = [word.split("=", 1)[1] for word in shlex.split(line) if word.startswith("--execute=")]
    assert statements == [
        "CREATE DATABASE IF NOT EXISTS crdb_federation",
        "CREATE TABLE IF NOT EXISTS crdb_federation.decommissions (holder STRING PRIMARY KEY, addresses STRING[] NOT "
        "NULL, expires TIMESTAMPTZ NOT NULL)",
        f"CREATE USER IF NOT EXISTS {OPS_USER}",
        f"GRANT SYSTEM VIEWCLUSTERMETADATA TO {OPS_USER}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE crdb_federation.decommissions TO {OPS_USER}",
    ]
    # Before the licence: a licence that cannot be read leaves the user made.
    assert script.index("CREATE USER") < script.index("enterprise.license")


def test_every_stack_asks_for_the_sql_users_certificate_for_its_own_node_key(waiting_member, seed):
    for run in (waiting_member, seed):
        requests = outputs_of(run)["certificateRequests"]
        ops = x509.load_pem_x509_csr(requests["ops"].encode())
        assert ops.subject.rfc4514_string() == f"CN={OPS_USER}"
        assert ops.public_key() == x509.load_pem_x509_csr(requests["node"].encode()).public_key()


def test_the_seed_signs_the_third_request_with_the_client_ca_and_the_member_installs_it(
        signing_seed, waiting_member, member):
    seed_outputs = outputs_of(signing_seed)
    signed = seed_outputs["signedCertificates"][MEMBER_STACK]
    certificate = x509.load_pem_x509_certificate(signed["ops"].encode())
    certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(seed_outputs["clientCaCertificate"].encode()))
    assert certificate.subject.rfc4514_string() == f"CN={OPS_USER}"
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {u._name for u in usages} == {"clientAuth"}
    request = x509.load_pem_x509_csr(outputs_of(waiting_member)["certificateRequests"]["ops"].encode())
    assert certificate.public_key() == request.public_key()
    # Installed where the gate's CLI finds it (client.<user>.crt/.key in the mounted node secret) and where the
    # removal's SQL takes it from (its decommission resources).
    files = node_secret(member)
    assert files[OPS_CERT_FILE] == signed["ops"] and files[OPS_KEY_FILE] == files["node.key"]
    assert member.cloud.named("vexxhost-decommission").outputs["opsCertPem"] == signed["ops"]
    # The seed's own nodes get one too, for their own gate and removals.
    own = x509.load_pem_x509_certificate(node_secret(signing_seed)[OPS_CERT_FILE].encode())
    assert own.subject.rfc4514_string() == f"CN={OPS_USER}"


@pytest.mark.parametrize("forged, refusal", [
    (lambda requests: request_for("root"), f"its ops request is for CN='root', not CN={OPS_USER}"),
    (lambda requests: request_for(OPS_USER), "its ops request is for another key than its node request"),
])
def test_a_forged_third_request_is_refused_with_words(waiting_member, forged, refusal):
    """CN=root would hand the member's operator the cluster; another key, a certificate the member may not hold.
    Either way the seed signs none of its requests, whether they came through its outputs or the tool."""
    published = outputs_of(waiting_member)
    requests = {**published["certificateRequests"]}
    requests["ops"] = forged(requests)
    with pytest.raises(Exception, match=f"the seed signs none of these requests:\n  - {MEMBER_STACK}: {refusal}"):
        seed_signing({**published, "certificateRequests": requests})
    early = {MEMBER_STACK: {"member": "vexxhost", **requests}}
    with pytest.raises(Exception, match=refusal):
        run_program(SEED, stack="seed", secrets=SEED_SECRETS, stack_outputs={MEMBER_STACK: {}},
                    environment={EARLY_REQUESTS_VARIABLE: json.dumps(early)})


def test_a_member_that_sends_no_third_request_still_gets_its_node_and_client_certificates(waiting_member, seed_outputs):
    """One seed `up` admits a member of this version and one of an earlier version, which sends two requests: the
    seed signs what each sent, and publishes the SQL user's certificate only for the one that asked for it."""
    current = outputs_of(waiting_member)
    older_run = run_program(pinned_to(seed_outputs, {**MEMBER, "memberName": "older"}), stack="older",
                            stack_outputs={SEED_STACK: seed_outputs})
    older_stack = "organization/crdb-federation/older"
    two = {k: v for k, v in outputs_of(older_run)["certificateRequests"].items() if k != "ops"}
    older = {**outputs_of(older_run), "certificateRequests": two}
    signed = outputs_of(run_program({**SEED, "members": [MEMBER_STACK, older_stack]}, stack="seed",
                                    secrets=SEED_SECRETS, stack_outputs={MEMBER_STACK: current, older_stack: older})
                        )["signedCertificates"]
    assert set(signed[older_stack]) == {"node", "client", "requests"}
    assert set(signed[MEMBER_STACK]) == {"node", "client", "ops", "requests"}
    for kind in ("node", "client"):
        request = x509.load_pem_x509_csr(two[kind].encode())
        assert x509.load_pem_x509_certificate(signed[older_stack][kind].encode()).public_key() == request.public_key()
    # Through the tool too: its early requests may hold two.
    early = {older_stack: {"member": "older", **two}, MEMBER_STACK: {"member": "vexxhost", **current[
        "certificateRequests"]}}
    signed = outputs_of(run_program(SEED, stack="seed", secrets=SEED_SECRETS,
                                    stack_outputs={older_stack: {}, MEMBER_STACK: {}},
                                    environment={EARLY_REQUESTS_VARIABLE: json.dumps(early)}))["signedCertificates"]
    assert set(signed[older_stack]) == {"node", "client", "requests"}
    assert set(signed[MEMBER_STACK]) == {"node", "client", "ops", "requests"}


def test_a_member_whose_seed_has_not_signed_the_third_still_builds_and_its_removal_says_what_to_run(signing_seed):
    """A seed of an earlier version publishes node and client alone: the member's nodes start; what needs the SQL
    user refuses, naming the `up`s that bring its certificate."""
    from components.decommission import DecommissionRefused, decommission

    seed_outputs = outputs_of(signing_seed)
    older = {**seed_outputs, "signedCertificates": {MEMBER_STACK: {
        k: v for k, v in seed_outputs["signedCertificates"][MEMBER_STACK].items() if k != "ops"}}}
    run = member_of(older)
    assert run.output("certificatesSigned") is True
    files = node_secret(run)
    assert "client.node.crt" in files and OPS_CERT_FILE not in files and OPS_KEY_FILE not in files
    props = run.cloud.named("vexxhost-decommission").outputs
    assert props["certPem"] and not props.get("opsCertPem")

    def never(*_):
        raise AssertionError("no cluster may be asked")

    with pytest.raises(DecommissionRefused, match=rf"no client certificate for the SQL user {OPS_USER} .* The seed's "
                                                  r"operator runs `up` on the seed .* then run `up` on this stack"):
        decommission(props, connect=never, run_job=never)


def test_the_tool_carries_the_third_request_and_the_member_installs_what_its_wait_found(waiting_member):
    """The early-signing path (components/signature.py): the seed's signing `up` is given the third request with the
    others, and the member's own `up` installs the certificate its wait found, after the same checks."""
    requests = outputs_of(waiting_member)["certificateRequests"]
    early = {MEMBER_STACK: {"member": "vexxhost", **requests}}
    seed_outputs = outputs_of(run_program(SEED, stack="seed", secrets=SEED_SECRETS, stack_outputs={MEMBER_STACK: {}},
                                          environment={EARLY_REQUESTS_VARIABLE: json.dumps(early)}))
    mine = seed_outputs["signedCertificates"][MEMBER_STACK]
    assert x509.load_pem_x509_certificate(mine["ops"].encode()).subject.rfc4514_string() == f"CN={OPS_USER}"

    def member_up(signature):
        return run_program(pinned_to(seed_outputs, MEMBER), stack="vexxhost",
                           stack_outputs={SEED_STACK: {**seed_outputs, "signedCertificates": {}}},
                           cloud=FakeCloud(signature=signature))

    assert node_secret(member_up(mine))[OPS_CERT_FILE] == mine["ops"]
    # The root client certificate in the file is refused as a forged seed output is: not for this stack's key.
    with pytest.raises(Exception, match=f"the client.{OPS_USER} certificate .* is not for this stack's own node key"):
        member_up({**mine, "ops": seed_outputs["rootClientCertificate"]})
    # The digest a member of an earlier version waits for (two requests) is what it was.
    assert requests_digest(requests["node"], requests["client"]) == requests_digest(
        requests["node"], requests["client"], "")
    assert requests_digest(*requests.values()) != requests_digest(requests["node"], requests["client"])
