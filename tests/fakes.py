"""Pulumi mocks that behave like the real providers where the tests depend on it.

- OpenStack ports get distinct fixed IPs, floating IPs distinct public addresses.
- pulumi-tls is faked with real cryptography: keys, CA certificates, CSRs and signatures are real,
  so tests verify actual chains, not strings.
- A StackReference answers with the outputs registered for its stack name.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import itertools
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    provider: str
    urn: str = ""
    parent: str = ""
    custom: bool = True
    dependencies: set[str] = field(default_factory=set)
    # Resource options the engine applies (mocks do not apply them; tests check they are asked for).
    options: dict[str, Any] = field(default_factory=dict)


class RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, also recording each resource's URN, parent and dependencies (the engine's graph)."""

    def __init__(self, cloud: "FakeCloud"):
        super().__init__(cloud)
        self.cloud = cloud

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            # Registrations run concurrently; (type, name) identifies a resource in this program.
            record = self.cloud.registered[(request.type, request.name)]
            dependencies = set(request.dependencies)
            for urns in request.propertyDependencies.values():
                dependencies |= set(urns.urns)
            if request.provider:
                # A provider reference is "<urn>::<id>"; the engine orders a resource after its provider.
                dependencies.add(request.provider.rsplit("::", 1)[0])
            record.urn, record.parent, record.custom = response.urn, request.parent, bool(request.custom)
            record.dependencies = dependencies
            timeouts = request.customTimeouts
            record.options = {
                "ignore_changes": list(request.ignoreChanges),
                "delete_before_replace": request.deleteBeforeReplace,
                "deleted_with": request.deletedWith,
                "retain_on_delete": request.retainOnDelete,
                "replace_on_changes": list(request.replaceOnChanges),
                "replacement_trigger": (request.replacement_trigger.string_value
                                        if request.HasField("replacement_trigger") else None),
                "custom_timeouts": {k: getattr(timeouts, k) for k in ("create", "update", "delete")
                                    if getattr(timeouts, k)},
            }
        return response


def _pem_key(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _name(subject: dict[str, Any] | None) -> x509.Name:
    attributes = []
    subject = subject or {}
    if subject.get("organization"):
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject["organization"]))
    if subject.get("commonName"):
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, subject["commonName"]))
    return x509.Name(attributes)


def _sans(inputs: dict[str, Any]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in inputs.get("dnsNames") or []]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in inputs.get("ipAddresses") or []]
    return names


def _usages(builder: x509.CertificateBuilder, uses: list[str], is_ca: bool) -> x509.CertificateBuilder:
    builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature="digital_signature" in uses,
        content_commitment=False,
        key_encipherment="key_encipherment" in uses,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign="cert_signing" in uses,
        crl_sign="crl_signing" in uses,
        encipher_only=False,
        decipher_only=False,
    ), critical=True)
    ekus = [oid for use, oid in (("server_auth", ExtendedKeyUsageOID.SERVER_AUTH),
                                 ("client_auth", ExtendedKeyUsageOID.CLIENT_AUTH)) if use in uses]
    if ekus:
        builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
    return builder


def _sign(subject: x509.Name, issuer: x509.Name, public_key, signing_key, inputs: dict[str, Any], sans) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(hours=int(inputs.get("validityPeriodHours") or 24))))
    builder = _usages(builder, list(inputs.get("allowedUses") or []), bool(inputs.get("isCaCertificate")))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signing_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


# A stack's keys outlive its runs in the real state: one RSA key per resource name here too, which also
# spares the suite generating hundreds of them.
_RSA_KEYS: dict[tuple[str, int], Any] = {}


def _rsa_key(name: str, bits: int):
    if (name, bits) not in _RSA_KEYS:
        _RSA_KEYS[(name, bits)] = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return _RSA_KEYS[(name, bits)]


def fake_tls(type_: str, inputs: dict[str, Any], name: str = "") -> dict[str, Any]:
    if type_ == "tls:index/privateKey:PrivateKey":
        if inputs.get("algorithm") == "RSA":
            key = _rsa_key(name, int(inputs.get("rsaBits") or 2048))
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {**inputs, "privateKeyPem": _pem_key(key), "publicKeyPem": public.decode()}
    if type_ == "tls:index/selfSignedCert:SelfSignedCert":
        key = serialization.load_pem_private_key(inputs["privateKeyPem"].encode(), None)
        name = _name(inputs.get("subject"))
        return {**inputs, "certPem": _sign(name, name, key.public_key(), key, inputs, _sans(inputs))}
    if type_ == "tls:index/certRequest:CertRequest":
        key = serialization.load_pem_private_key(inputs["privateKeyPem"].encode(), None)
        builder = x509.CertificateSigningRequestBuilder().subject_name(_name(inputs.get("subject")))
        if _sans(inputs):
            builder = builder.add_extension(x509.SubjectAlternativeName(_sans(inputs)), critical=False)
        csr = builder.sign(key, hashes.SHA256())
        return {**inputs, "certRequestPem": csr.public_bytes(serialization.Encoding.PEM).decode()}
    if type_ == "tls:index/locallySignedCert:LocallySignedCert":
        csr = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        ca = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        ca_key = serialization.load_pem_private_key(inputs["caPrivateKeyPem"].encode(), None)
        try:
            sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            sans = []
        return {**inputs, "certPem": _sign(csr.subject, ca.subject, csr.public_key(), ca_key, inputs, sans)}
    raise KeyError(type_)


def placeholder_tls(name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    pem = f"-----BEGIN PLACEHOLDER-----\n{name}\n-----END PLACEHOLDER-----\n"
    return {**inputs, "privateKeyPem": pem, "publicKeyPem": pem, "certPem": pem, "certRequestPem": pem}


_SECRET_SIG = "4dabf18193072939515e22adb298388d"


def is_secret_value(value: Any) -> bool:
    return isinstance(value, dict) and _SECRET_SIG in value


def unwrap_secrets(value: Any) -> Any:
    """Mocks receive secret inputs wrapped in the engine's secret envelope; providers see plain values."""
    if is_secret_value(value):
        return unwrap_secrets(value["value"])
    if isinstance(value, dict):
        return {k: unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    return value


@dataclass
class FakeCloud(pulumi.runtime.Mocks):
    """Records every registered resource; `stack_outputs` answers StackReferences by stack name."""

    stack_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: list[Registered] = field(default_factory=list)
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    public_prefix: str = "198.18.0"
    # Image names the cloud does not have (any more).
    missing_images: set = field(default_factory=set)
    # Stash name -> the value an earlier deploy kept (a fresh run is otherwise that first deploy).
    stash_outputs: dict = field(default_factory=dict)
    # False: placeholder PEM text instead of real keys, for benchmarks that time the program, not RSA.
    real_crypto: bool = True
    # What a member's SignatureWait found in the federation tool's file (components/signature.py): node, client.
    signature: dict = field(default_factory=dict)

    def __post_init__(self):
        self.registered: dict[tuple[str, str], Registered] = {}
        self._private = itertools.count(10)
        self._public = itertools.count(10)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs = unwrap_secrets(dict(args.inputs))
        outputs = dict(inputs)
        t = args.typ
        if t.startswith("tls:"):
            outputs = fake_tls(t, inputs, args.name) if self.real_crypto else placeholder_tls(args.name, inputs)
        elif t == "openstack:networking/port:Port":
            outputs["allFixedIps"] = [f"10.20.0.{next(self._private)}"]
        elif t == "openstack:networking/floatingIp:FloatingIp":
            outputs["address"] = f"{self.public_prefix}.{next(self._public)}"
        elif t == "pulumi:index:Stash":
            # The engine keeps the first value: what an earlier run stashed (stash_outputs), else this input.
            outputs["output"] = self.stash_outputs.get(args.name, inputs.get("input"))
        elif t == "random:index/randomPassword:RandomPassword":
            # Distinct per resource, as the real ones are: a test can tell which secret went where.
            digest = hashlib.sha256(args.name.encode()).hexdigest() * 4
            outputs["result"] = digest[:int(inputs.get("length", 16))]
        elif t == "random:index/randomId:RandomId":
            # Its hex output, 2 digits a byte (terraform-provider-random internal/provider/resource_id.go), distinct
            # per resource as the real ones are.
            outputs["hex"] = hashlib.sha256(args.name.encode()).hexdigest()[:2 * int(inputs.get("byteLength", 8))]
        elif t == "pulumi-python:dynamic:Resource" and args.name.endswith("-signature"):
            outputs.update(self.signature)
        elif t == "pulumi:pulumi:StackReference":
            name = inputs["name"]
            if name not in self.stack_outputs:
                raise KeyError(f"no fake outputs for stack {name}")
            outputs = {"name": name, "outputs": self.stack_outputs[name], "secretOutputNames": []}
        record = Registered(t, args.name, dict(args.inputs), outputs, args.provider or "")
        self.registered[(t, args.name)] = record
        self.resources.append(record)
        return [f"{args.name}-id", outputs]

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.invokes.append((args.token, dict(args.args)))
        if args.token == "openstack:images/getImageIds:getImageIds":
            name = args.args.get("name", "x")
            return {"ids": [] if name in self.missing_images else ["image-" + name]}
        if args.token == "openstack:networking/getNetwork:getNetwork":
            key = args.args.get("name") or args.args.get("networkId")
            return {"id": f"net-{key}", "name": key}
        return {}

    def install(self, *, project: str, stack: str, preview: bool = False) -> None:
        """Installs these mocks (with preview=False, so every apply runs) before any program code runs."""
        pulumi.runtime.set_mocks(self, project=project, stack=stack, preview=preview, monitor=RecordingMonitor(self),
                                 organization="organization")

    def by_urn(self) -> dict[str, Registered]:
        return {r.urn: r for r in self.resources}

    def depends_on(self, resource: Registered, other: Registered) -> bool:
        """True when `resource` transitively depends on `other` (through inputs, depends_on or parents' deps)."""
        graph, seen, stack = self.by_urn(), set(), [resource.urn]
        while stack:
            urn = stack.pop()
            if urn == other.urn:
                return True
            if urn in seen or urn not in graph:
                continue
            seen.add(urn)
            stack.extend(graph[urn].dependencies)
        return False

    def named(self, name: str) -> Registered:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, got {len(found)}"
        return found[0]

    def of_type(self, suffix: str) -> list[Registered]:
        return [r for r in self.resources if r.type.endswith(suffix)]

    def one(self, suffix: str) -> Registered:
        found = self.of_type(suffix)
        assert len(found) == 1, f"expected one {suffix}, got {[r.name for r in found]}"
        return found[0]
