"""Trust between independent operators: the CA keys never leave the seed.

Every stack makes its own node key and three certificate requests for it (the node certificate, signed by the
node CA; `client.node.crt` and the client certificate of the members' SQL user, components/ops_user.py, both
signed by the client CA) and publishes the requests. The seed holds both CAs; it signs the requests of the member
stacks it lists in `members`, checks what they ask for, and publishes the certificates and a join list spread over
clouds. A member installs what the seed signed: its state never holds a CA key, so it can mint neither a `root`
client certificate nor a node certificate for another cloud's addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import pulumi
from pulumi.output import UNKNOWN

from . import pki
from .ops_user import OPS_USER
from .signature import requests_digest
from .settings import is_non_public

NODE_COMMON_NAME = "node"
# The common name each request must ask for, by its kind (its key in certificateRequests).
REQUEST_COMMON_NAMES = {"node": NODE_COMMON_NAME, "client": NODE_COMMON_NAME, "ops": OPS_USER}
# At most this many addresses in a --join list, taken round-robin over clouds.
JOIN_LIMIT = 5


@dataclass(frozen=True)
class CertificateRequests:
    node: pulumi.Output[str]
    client: pulumi.Output[str]
    ops: pulumi.Output[str]  # the members' SQL user's client certificate (components/ops_user.py)


@dataclass(frozen=True)
class Trust:
    """What a stack's nodes trust and present, and where they join. The signed certificates are None
    until the seed has signed this stack's requests."""

    ca_pem: pulumi.Output[str]
    client_ca_pem: pulumi.Output[str]
    node_key_pem: pulumi.Output[str]
    node_cert_pem: pulumi.Output[Optional[str]]
    node_client_cert_pem: pulumi.Output[Optional[str]]
    join: pulumi.Output[list[str]]
    # None until the seed signed it (a seed of an earlier version never does): removals and OS upgrades then refuse.
    ops_client_cert_pem: pulumi.Output[Optional[str]]


class StackNotReady(pulumi.RunError):
    """A referenced stack has not exported what this one needs (it is not up yet, or is another project)."""


def stack_output(reference: pulumi.StackReference, stack: str, name: str, key: str, todo: str,
                 early: Any = None) -> pulumi.Output:
    """An output of another stack (`early`, if given, instead: what the tool took from that stack's running
    `up`, newer than its last outputs), or one clear error naming the setting, the stack and what to do.

    (A StackReference to a stack without outputs has no keys: require_output raises a bare KeyError.)
    In a preview (a pull request's, say) it is a warning and the value is unknown, so the preview still
    shows what this stack builds."""

    def present(value):
        if early is not None:
            return early
        if value is not None:
            return value
        problem = f"crdb-federation:{key} = {stack!r}: that stack has no output {name!r}. {todo}"
        if pulumi.runtime.is_dry_run():
            pulumi.log.warn(problem + " Previewing with the value unknown.")
            return UNKNOWN
        raise StackNotReady(problem)

    return reference.get_output(name).apply(present)


def spread_join(clouds: Sequence[tuple[str, Sequence[str]]], limit: int = JOIN_LIMIT) -> list[str]:
    """Up to `limit` addresses taken round-robin over the clouds in order, so the list spans as many
    clouds as exist (at least 3 once there are 3) and no cloud is its only way in."""
    queues = [list(dict.fromkeys(addresses)) for _, addresses in clouds]
    chosen: list[str] = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                address = queue.pop(0)
                if address not in chosen:
                    chosen.append(address)
    return chosen


class NodeIdentity(pulumi.ComponentResource):
    """This stack's node key (it never leaves the stack) and its three certificate requests."""

    def __init__(self, name: str, *, dns_names: Sequence[str], ip_addresses: pulumi.Input[Sequence[str]],
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("crdb-federation:federation:NodeIdentity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = pki.private_key(f"{name}-key", child, rsa=True)
        self.key_pem = pulumi.Output.secret(key.private_key_pem)
        node = pki.certificate_request(f"{name}-node", key_pem=key.private_key_pem, common_name=NODE_COMMON_NAME,
                                       dns_names=list(dns_names), ip_addresses=ip_addresses, opts=child)
        client = pki.certificate_request(f"{name}-client", key_pem=key.private_key_pem,
                                         common_name=NODE_COMMON_NAME, opts=child)
        ops = pki.certificate_request(f"{name}-ops", key_pem=key.private_key_pem, common_name=OPS_USER, opts=child)
        self.requests = CertificateRequests(node.cert_request_pem, client.cert_request_pem, ops.cert_request_pem)
        self.register_outputs({"nodeRequest": node.cert_request_pem, "clientRequest": client.cert_request_pem,
                               "opsRequest": ops.cert_request_pem})


@dataclass(frozen=True)
class SignedCertificates:
    node: pulumi.Output[str]
    client: pulumi.Output[str]
    ops: pulumi.Output[str]


class FederationAuthority(pulumi.ComponentResource):
    """The seed's node CA (made here, or an operator's own) and client CA, and what it signs with them."""

    def __init__(self, name: str, *, own_ca: Optional[tuple[str, pulumi.Output]] = None,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("crdb-federation:federation:FederationAuthority", name, None, opts)
        self._child = pulumi.ResourceOptions(parent=self)
        if own_ca is not None:
            self.ca_pem = pulumi.Output.from_input(own_ca[0])
            self._ca_key = pulumi.Output.secret(own_ca[1])
        else:
            key, cert = pki.certificate_authority(f"{name}-node-ca", "crdb-federation node CA", self._child,
                                                  rsa=True, organization="Cockroach")
            self.ca_pem, self._ca_key = cert.cert_pem, pulumi.Output.secret(key.private_key_pem)
        client_key, client_cert = pki.certificate_authority(
            f"{name}-client-ca", "crdb-federation client CA", self._child, rsa=True, organization="Cockroach")
        self.client_ca_pem = client_cert.cert_pem
        self._client_ca_key = pulumi.Output.secret(client_key.private_key_pem)
        root_key, root_cert = pki.signed_certificate(
            f"{name}-root", ca_cert_pem=self.client_ca_pem, ca_key_pem=self._client_ca_key, common_name="root",
            uses=pki.CLIENT_ONLY, rsa=True, opts=self._child)
        self.root_cert_pem = root_cert.cert_pem
        self.root_key_pem = pulumi.Output.secret(root_key.private_key_pem)
        self.register_outputs({"caCertificate": self.ca_pem, "clientCaCertificate": self.client_ca_pem})

    def sign(self, name: str, requests: CertificateRequests) -> SignedCertificates:
        """Signs a stack's node request with the node CA, its client and SQL user's requests with the client CA."""
        node = pki.sign_request(f"{name}-node", request_pem=requests.node, ca_cert_pem=self.ca_pem,
                                ca_key_pem=self._ca_key, uses=pki.SERVER_AND_CLIENT, opts=self._child)
        client, ops = (pki.sign_request(f"{name}-{kind}", request_pem=request, ca_cert_pem=self.client_ca_pem,
                                        ca_key_pem=self._client_ca_key, uses=pki.CLIENT_ONLY, opts=self._child)
                       for kind, request in (("client", requests.client), ("ops", requests.ops)))
        return SignedCertificates(node.cert_pem, client.cert_pem, ops.cert_pem)


class AdmissionError(pulumi.RunError):
    """The seed refuses to sign what a member asked for."""


class TrustError(pulumi.RunError):
    """What a member read (from the seed's outputs or its own config) is not what it trusts."""


def certificates_in(pem: str) -> list[Any]:
    """Every certificate of a PEM bundle (during a CA rotation the seed's CA output holds two)."""
    from cryptography import x509

    return x509.load_pem_x509_certificates(pem.encode())


def sha256_fingerprint(certificate: Any) -> str:
    """As `openssl x509 -noout -fingerprint -sha256` prints it, in lower case without colons."""
    from cryptography.hazmat.primitives import hashes

    return certificate.fingerprint(hashes.SHA256()).hex()


def fingerprints(pem: str) -> list[str]:
    return [sha256_fingerprint(c) for c in certificates_in(pem)]


def pinned_bundle(pem: str, pins: Sequence[str], key: str, source: str) -> str:
    """The CA bundle `pem`, if every certificate in it is one `pins` names; `source`: where it came from."""
    if not pins:
        return pem
    unknown = [f for f in fingerprints(pem) if f not in pins]
    if unknown:
        raise TrustError(f"crdb-federation:{key} = {list(pins)}: {source} holds a certificate with SHA-256 "
                         f"{', '.join(unknown)}, which is not pinned. Nothing of it is installed. If the seed's "
                         "operator rotated the CA, ask them for the new fingerprint out of band and add it; "
                         "otherwise someone who can write the seed's state is steering this cloud elsewhere.")
    return pem


def signed_for(cert_pem: Optional[str], ca_pem: str, key_pem: str, what: str) -> Optional[str]:
    """`cert_pem`, if one of the CAs of `ca_pem` issued it and it is for this stack's own key."""
    if not cert_pem:
        return cert_pem
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    certificate = x509.load_pem_x509_certificate(cert_pem.encode())
    own = serialization.load_pem_private_key(key_pem.encode(), None).public_key()
    if certificate.public_key().public_numbers() != own.public_numbers():
        raise TrustError(f"{what} is not for this stack's own node key: it was signed for another request. "
                         "Nothing of it is installed.")
    for ca in certificates_in(ca_pem):
        try:
            certificate.verify_directly_issued_by(ca)
            return cert_pem
        except (InvalidSignature, ValueError, TypeError):
            continue
    raise TrustError(f"{what} does not chain to the pinned CA ({', '.join(fingerprints(ca_pem))}). "
                     "Nothing of it is installed.")


def warn_if_readable(value: Any, owner: str, output: str) -> None:
    """A StackReference keeps every output of the referenced stack in the reader's state, decrypted where the
    reader's secrets provider can: a secret that arrives readable means both stacks share one. One the reader cannot
    decrypt arrives elided (pulumi v3.259.0 pkg/backend/secrets.go errorCatchingSecretsManager: "{}" in its place)."""
    if isinstance(value, str) and value not in ("", "{}"):
        pulumi.log.warn(
            f"this stack ({pulumi.get_stack()}) can read the secret output {output!r} of {owner}: both stacks use "
            "one secrets provider, so this stack's state keeps it decrypted. Give each stack a secrets provider of "
            "its own (README: Secrets apart), or set crdb-federation:sharedSecrets true for a federation one "
            "operator runs alone.")


def _ip_sans(extensions: Any) -> list[str]:
    """The IP addresses among a certificate's or a request's subject alternative names."""
    from cryptography import x509

    try:
        sans = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]


def request_addresses(request_pem: str) -> tuple[str, list[str]]:
    """The common name and the IP addresses a PEM certificate request asks for."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    request = x509.load_pem_x509_csr(request_pem.encode())
    names = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (names[0].value if names else ""), _ip_sans(request.extensions)


def covers(certificate_pem: Optional[str], *ips: str) -> bool:
    """True when the certificate names every one of these IP addresses."""
    if not certificate_pem:
        return False
    from cryptography import x509

    named = set(_ip_sans(x509.load_pem_x509_certificate(certificate_pem.encode()).extensions))
    return all(ip in named for ip in ips)


def answers(certificate_pem: Optional[str], request_pem: str) -> bool:
    """True when the certificate names every IP address the request asks for (one for an older request of this
    stack, before a node was added, does not)."""
    return covers(certificate_pem, *request_addresses(request_pem)[1])


def request_problems(stack: str, requests: dict[str, str]) -> list[str]:
    """A member's requests that ask for another common name than their kind's (CN=root would make its operator the
    cluster's), or for another key than its node request's (the seed would sign a key the member may not hold)."""
    problems = []
    node_key = request_key_fingerprint(requests["node"])
    for kind, request in requests.items():
        expected = REQUEST_COMMON_NAMES.get(kind)
        common_name, _ = request_addresses(request)
        if expected is None:
            problems.append(f"{stack}: it sends a {kind!r} request, which the seed does not know")
        elif common_name != expected:
            problems.append(f"{stack}: its {kind} request is for CN={common_name!r}, not CN={expected}")
        if request_key_fingerprint(request) != node_key:
            problems.append(f"{stack}: its {kind} request is for another key than its node request")
    return problems


def check_admissions(seed: str, seed_ips: Sequence[str], members: Sequence[dict[str, Any]]) -> None:
    """Refuses, naming the member stack: a locality name already taken (replicas would no longer be spread
    over clouds), a request for another common name or key (request_problems), or for an address another
    stack's nodes use.

    `members` holds, per member stack: stack, member (its cloud= name) and requests (node, client and, from a
    member of this version on, ops PEM)."""
    problems = admission_problems(seed, seed_ips, members)
    if problems:
        raise AdmissionError("crdb-federation:members: the seed signs none of these requests:\n"
                             + "\n".join(f"  - {p}" for p in problems))


def admission_problems(seed: str, seed_ips: Sequence[str], members: Sequence[dict[str, Any]]) -> list[str]:
    """check_admissions' findings, each starting with the member stack it refuses (the signing service refuses
    those members alone and signs the others)."""
    problems = []
    names = {seed: "the seed"}
    # Private addresses repeat from cloud to cloud; a public one belongs to one stack.
    owners = {ip: "the seed" for ip in seed_ips if not is_non_public(ip)}
    for member in members:
        stack, name = member["stack"], member["member"]
        if name in names:
            problems.append(f"{stack}: its memberName {name!r} (locality cloud={name}) is already {names[name]}'s")
        names.setdefault(name, stack)
        problems += request_problems(stack, member["requests"])
        for kind, request in member["requests"].items():
            for ip in request_addresses(request)[1]:
                if is_non_public(ip):
                    continue
                if owners.setdefault(ip, stack) != stack:
                    problems.append(f"{stack}: its {kind} request names {ip}, an address of {owners[ip]}")
    return problems


class MemberAdmissions(pulumi.ComponentResource):
    """The seed's side of joining: reads each listed member stack's requests, checks and signs them, and
    publishes the certificates and the join list spread over the seed and the members."""

    signed: pulumi.Output[dict[str, dict[str, str]]]
    federation_join: pulumi.Output[list[str]]

    def __init__(self, name: str, *, seed_member: str, seed_ips: pulumi.Output[list[str]],
                 seed_join: pulumi.Output[list[str]], member_stacks: Sequence[str], authority: FederationAuthority,
                 allow_rekey: Sequence[str] = (), shared_secrets: bool = False,
                 early_requests: Optional[dict[str, dict[str, str]]] = None,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("crdb-federation:federation:MemberAdmissions", name, None, opts)
        todo = ("Its operator runs `pulumi up` of that stack first (it publishes its certificate requests), "
                "or remove it from crdb-federation:members.")
        seen: list[pulumi.Output[dict[str, Any]]] = []
        signed: dict[str, SignedCertificates] = {}
        sent_ops: dict[str, pulumi.Output[bool]] = {}
        digests: dict[str, pulumi.Output[str]] = {}
        for stack in member_stacks:
            reference = pulumi.StackReference(stack, opts=pulumi.ResourceOptions(parent=self))
            if not shared_secrets:
                reference.get_output("kubeconfig").apply(
                    lambda v, stack=stack: warn_if_readable(v, stack, "kubeconfig"))
            early = (early_requests or {}).get(stack)
            seen.append(pulumi.Output.all(
                stack=stack,
                member=stack_output(reference, stack, "member", "members", todo, early and early["member"]),
                requests=stack_output(reference, stack, "certificateRequests", "members", todo,
                                      early and {k: v for k, v in early.items() if k != "member"}),
                # Until the stack exports its addresses, the others join through the seed's and each other's.
                join=reference.get_output("joinAddresses").apply(lambda addresses: addresses or []) if early
                else stack_output(reference, stack, "joinAddresses", "members", todo),
            ))
        # Every request is checked against all the others before any is signed.
        checked = pulumi.Output.all(seed_ips, *seen).apply(lambda v: _checked(seed_member, v[0], v[1:]))
        for index, stack in enumerate(member_stacks):
            short = stack.rsplit('/', 1)[-1]
            requests = checked.apply(lambda members, i=index: members[i]["requests"])
            requests = self._pinned_key(f"{name}-{short}", stack, requests, stack in allow_rekey)
            signed[stack] = authority.sign(f"{name}-{short}", CertificateRequests(
                requests.apply(lambda r: r["node"]), requests.apply(lambda r: r["client"]),
                requests.apply(ops_request_or_stand_in)))
            sent_ops[stack] = requests.apply(lambda r: bool(r.get("ops")))
            digests[stack] = requests.apply(lambda r: requests_digest(r["node"], r["client"], r.get("ops") or ""))
        self.signed = pulumi.Output.all(**{
            stack: pulumi.Output.all(node=s.node, client=s.client, ops=s.ops, sent_ops=sent_ops[stack],
                                     requests=digests[stack]).apply(
                published_certificates) for stack, s in signed.items()}
        ) if signed else pulumi.Output.from_input({})
        self.federation_join = pulumi.Output.all(seed_join, checked).apply(lambda v: spread_join(
            [(seed_member, v[0])] + [(m["member"], m["join"]) for m in v[1]]))
        self.register_outputs({"federationJoin": self.federation_join})

    def _pinned_key(self, name: str, stack: str, requests: pulumi.Output[dict[str, str]],
                    rekey: bool) -> pulumi.Output[dict[str, str]]:
        """The member's requests, if their key is the one it first had signed (a Stash keeps it); another key is
        refused unless the seed's operator lists the stack in allowRekey (which pins the new one)."""
        key = requests.apply(lambda r: request_key_fingerprint(r["node"]))
        stash = pulumi.Stash(f"{name}-key", input=key, opts=pulumi.ResourceOptions(
            parent=self, replacement_trigger="rekey allowed" if rekey else "pinned"))

        def same(values: list[Any]) -> dict[str, str]:
            current, pinned, asked = values
            if asked != pinned:
                raise AdmissionError(
                    f"crdb-federation:members: {stack} asks to sign a new node key (SHA-256 of its public key "
                    f"{asked}, pinned {pinned} at its first signature); the seed signs none of its requests. If its "
                    f"operator replaced the key, confirm that out of band and add {stack} to "
                    "crdb-federation:allowRekey for one `up`.")
            return current

        return pulumi.Output.all(requests, stash.output, key).apply(same)


def ops_request_or_stand_in(requests: dict[str, str]) -> str:
    """The request the SQL user's certificate is signed for. Which resources exist cannot depend on what an output
    holds, so a member that sends no such request (one of an earlier version) has its client request signed a second
    time as a stand-in: CN=node, its own key and the client CA, exactly its client.node certificate, which
    published_certificates publishes nowhere. Its own request replaces it once it sends one."""
    return requests.get("ops") or requests["client"]


def published_certificates(signed: dict[str, Any]) -> dict[str, str]:
    """What the seed publishes for a member: node and client, ops when the member asked for it, and the digest of
    the requests they answer (what a member's wait and the seed's signing service match on)."""
    published = {"node": signed["node"], "client": signed["client"], "requests": signed["requests"]}
    if signed["sent_ops"]:
        published["ops"] = signed["ops"]
    return published


def request_key_fingerprint(request_pem: str) -> str:
    """SHA-256 of a certificate request's public key (DER SubjectPublicKeyInfo)."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_csr(request_pem.encode()).public_key()
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _checked(seed_member: str, seed_ips: list[str], members: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    check_admissions(seed_member, seed_ips, members)
    return list(members)
