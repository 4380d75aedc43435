"""Members on paper: real certificate requests and the state a member's `up` records while it waits for its
signature, with no cloud behind them. The signing service reads them as it reads a real member's
(federation/backend_state.py); `pulumi stack import` takes the state (the shape checked against the real CLI in
tests/integration/test_operators_apart.py), so the seed can be measured with more members than the local cloud
holds (bench/scene.py), and a forged request can be put where only its operator could."""

from __future__ import annotations

import ipaddress
from typing import Any, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from components.federation import NODE_COMMON_NAME
from components.ops_user import OPS_USER
from components.signature import requests_digest

PROJECT = "crdb-federation"
DYNAMIC_TYPE = "pulumi-python:dynamic:Resource"


def member_requests(addresses: Sequence[str]) -> dict[str, str]:
    """Three requests for one new key, as NodeIdentity makes them (components/federation.py): the node's naming
    `addresses`, client.node's, and the members' SQL user's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def request(common_name: str, ips: Sequence[str] = ()) -> str:
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        if ips:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]), critical=False)
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()

    return {"node": request(NODE_COMMON_NAME, addresses), "client": request(NODE_COMMON_NAME),
            "ops": request(OPS_USER)}


def waiting_state(stack: str, requests: dict[str, str], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A state `pulumi stack import` takes: the root stack (with `outputs`), its tls and dynamic providers, the three
    requests and the SignatureWait on them, as a member's `up` records them."""
    prefix = f"urn:pulumi:{stack}::{PROJECT}::"
    root = f"{prefix}pulumi:pulumi:Stack::{PROJECT}-{stack}"
    tls, dynamic = f"{prefix}pulumi:providers:tls::default_5_5_1", f"{prefix}pulumi:providers:pulumi-python::default"
    resources: list[dict[str, Any]] = [
        {"urn": root, "custom": False, "type": "pulumi:pulumi:Stack", "outputs": outputs or {}},
        {"urn": tls, "custom": True, "id": "tls", "type": "pulumi:providers:tls", "parent": root},
        {"urn": dynamic, "custom": True, "id": "dynamic", "type": "pulumi:providers:pulumi-python", "parent": root}]
    for kind, pem in requests.items():
        resources.append({"urn": f"{prefix}tls:index/certRequest:CertRequest::{stack}-identity-{kind}-csr",
                          "custom": True, "id": kind, "type": "tls:index/certRequest:CertRequest", "parent": root,
                          "provider": f"{tls}::tls", "inputs": {}, "outputs": {"certRequestPem": pem}})
    digest = requests_digest(requests["node"], requests["client"], requests["ops"])
    resources.append({"urn": f"{prefix}{DYNAMIC_TYPE}::{stack}-signature", "custom": True, "id": digest[:16],
                      "type": DYNAMIC_TYPE, "parent": root, "provider": f"{dynamic}::dynamic",
                      "inputs": {"stack": f"organization/{PROJECT}/{stack}", "requests": digest, "proof": ""},
                      "outputs": {}})
    return {"version": 3, "deployment": {"manifest": {"time": "2026-01-01T00:00:00Z", "magic": "", "version": ""},
                                         "resources": resources}}
