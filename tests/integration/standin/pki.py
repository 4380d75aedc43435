"""The certificates k3s makes for itself at its first start, made here from the CA files the user data writes.

k3s signs its API serving certificate with server-ca, for the tls-san entries, the node's addresses, the
`kubernetes` service names and the first address of the service range; its components present client
certificates of client-ca; the front proxy presents one of request-header-ca (k3s pkg/daemons/control/deps).
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
                 "localhost")
# k3s's default service range 10.43.0.0/16: its first address is the `kubernetes` service.
KUBERNETES_SERVICE_IP = "10.43.0.1"


def _key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def issue(ca_cert_pem: str, ca_key_pem: str, common_name: str, *, organization: str | None = None,
          server: bool = False, dns: Sequence[str] = (), ips: Sequence[str] = ()) -> tuple[str, str]:
    """A leaf certificate and key (PEM) signed by the given CA."""
    ca = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        subject.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name(subject)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    names = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in dict.fromkeys(ips)]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key)


def serving_names(config: dict) -> tuple[list[str], list[str]]:
    """The names and addresses of k3s's API serving certificate, from the server's k3s config."""
    sans = list(config.get("tls-san") or [])
    ips = [s for s in sans if _is_ip(s)] + [config["node-ip"], config.get("node-external-ip") or config["node-ip"],
                                             config.get("advertise-address") or config["node-ip"],
                                             "127.0.0.1", KUBERNETES_SERVICE_IP]
    dns = [*SERVICE_NAMES, *[s for s in sans if not _is_ip(s)], config["node-name"]]
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False
