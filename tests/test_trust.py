"""Trust between operators, for the whole program under mocks: a member takes nothing from the seed's outputs
on trust (CA certificates pinned by fingerprint, signed certificates chained to them and for its own key),
the seed keeps each member's key as first signed, and a stack that can read another's secrets says so."""

from __future__ import annotations

import datetime

import pulumi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from components.federation import fingerprints
from tests.fakes import FakeCloud
from tests.harness import MEMBER, MEMBER_STACK, SEED, SEED_SECRETS, SEED_STACK, outputs_of, pinned_to, run_program


def another_ca(common_name: str = "someone else's CA") -> tuple[str, str]:
    """A CA certificate and its key that are not the federation's (a forger may well copy its name)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


def member_run(pins_from: dict, seed_outputs: dict, **overrides):
    return run_program(pinned_to(pins_from, {**MEMBER, **overrides}), stack="vexxhost",
                       stack_outputs={SEED_STACK: seed_outputs})


def test_a_seed_output_whose_ca_is_not_the_pinned_one_is_refused_naming_its_fingerprint(signing_seed):
    genuine = outputs_of(signing_seed)
    forged_ca, _ = another_ca()
    swapped = {**genuine, "caCertificate": forged_ca}
    with pytest.raises(Exception) as refused:
        member_run(genuine, swapped)
    message = str(refused.value)
    assert f"crdb-federation:caSha256 = {fingerprints(genuine['caCertificate'])}" in message
    assert fingerprints(forged_ca)[0] in message and "Nothing of it is installed" in message


def test_a_signed_certificate_that_does_not_chain_to_the_pinned_ca_is_refused(signing_seed, waiting_member):
    genuine = outputs_of(signing_seed)
    # A certificate for the member's own key, but from the seed's other CA (the client CA): not the node CA.
    mine = genuine["signedCertificates"][MEMBER_STACK]
    forged = {**genuine, "signedCertificates": {MEMBER_STACK: {"node": mine["client"], "client": mine["client"]}}}
    with pytest.raises(Exception, match="the node certificate from the seed's .* does not chain to the pinned CA"):
        member_run(genuine, forged)


def test_a_signed_certificate_for_another_key_is_refused(signing_seed, seed):
    genuine = outputs_of(signing_seed)
    # The seed's own node certificate: chained to the node CA, but for the seed's key.
    others = seed.cloud.named("seed-own-node-cert").outputs["certPem"]
    forged = {**genuine, "signedCertificates": {MEMBER_STACK: {**genuine["signedCertificates"][MEMBER_STACK],
                                                                 "node": others}}}
    with pytest.raises(Exception, match="is not for this stack's own node key"):
        member_run(genuine, forged)


def test_the_seed_refuses_a_members_new_key_unless_its_operator_allows_the_rekey(waiting_member):
    cloud = FakeCloud()
    # What the seed's state kept from the member's first signature: another key's fingerprint.
    cloud.stash_outputs["seed-admissions-vexxhost-key"] = "00" * 32
    member = {MEMBER_STACK: outputs_of(waiting_member)}
    with pytest.raises(Exception, match=r"vexxhost asks to sign a new node key .* add organization/crdb-federation/"
                                        r"vexxhost to crdb-federation:allowRekey"):
        run_program({**SEED, "members": [MEMBER_STACK]}, stack="seed", secrets=SEED_SECRETS, stack_outputs=member,
                    cloud=cloud)
    assert cloud.named("seed-admissions-vexxhost-key").options["replacement_trigger"] == "pinned"
    # The operator confirmed the new key out of band: the Stash's replacement trigger changes, so the engine
    # replaces it and it keeps the new key (a fresh Stash, as the fake gives when nothing is stashed).
    allowed = FakeCloud()
    run = run_program({**SEED, "members": [MEMBER_STACK], "allowRekey": [MEMBER_STACK]}, stack="seed",
                      secrets=SEED_SECRETS, stack_outputs=member, cloud=allowed)
    assert allowed.named("seed-admissions-vexxhost-key").options["replacement_trigger"] == "rekey allowed"
    assert run.output("signedCertificates")[MEMBER_STACK]["node"]


def test_a_stack_that_can_read_another_stacks_secrets_says_so(signing_seed, waiting_member, monkeypatch):
    warnings = []
    monkeypatch.setattr(pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    genuine = outputs_of(signing_seed)
    member_run(genuine, genuine)  # the fake reference hands over rootClientKey: as one passphrase would
    assert any("can read the secret output 'rootClientKey' of organization/crdb-federation/seed" in w
               for w in warnings), warnings
    warnings.clear()
    member_run(genuine, genuine, sharedSecrets=True)
    assert not [w for w in warnings if "can read the secret output" in w]
    warnings.clear()
    run_program({**SEED, "members": [MEMBER_STACK]}, stack="seed", secrets=SEED_SECRETS,
                stack_outputs={MEMBER_STACK: outputs_of(waiting_member)})
    assert any(f"(seed) can read the secret output 'kubeconfig' of {MEMBER_STACK}" in w for w in warnings), warnings
    # With a secrets provider of its own, the engine elides what the reader cannot decrypt: no warning.
    warnings.clear()
    elided = {k: v for k, v in genuine.items() if k not in ("rootClientKey", "kubeconfig")}
    member_run(genuine, elided)
    assert not [w for w in warnings if "can read the secret output" in w]
