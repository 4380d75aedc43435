"""Certificate helpers over pulumi-tls: every key and certificate lives in Pulumi state as a secret."""

from __future__ import annotations

from typing import Optional, Sequence

import pulumi
import pulumi_tls as tls

CA_VALIDITY_HOURS = 10 * 365 * 24
LEAF_VALIDITY_HOURS = 2 * 365 * 24
# A leaf within this many hours of expiry is re-issued by the next `pulumi up`.
LEAF_EARLY_RENEWAL_HOURS = 60 * 24
SERVER_AND_CLIENT = ("digital_signature", "key_encipherment", "server_auth", "client_auth")
CLIENT_ONLY = ("digital_signature", "key_encipherment", "client_auth")


def private_key(name: str, opts: pulumi.ResourceOptions, *, rsa: bool = False) -> tls.PrivateKey:
    """ECDSA P-256 by default; RSA 2048 where a consumer expects RSA."""
    if rsa:
        return tls.PrivateKey(name, algorithm="RSA", rsa_bits=2048, opts=opts)
    return tls.PrivateKey(name, algorithm="ECDSA", ecdsa_curve="P256", opts=opts)


def certificate_authority(
    name: str, common_name: str, opts: pulumi.ResourceOptions, *, rsa: bool = False, organization: Optional[str] = None
) -> tuple[tls.PrivateKey, tls.SelfSignedCert]:
    key = private_key(f"{name}-key", opts, rsa=rsa)
    subject = tls.SelfSignedCertSubjectArgs(common_name=common_name, organization=organization)
    cert = tls.SelfSignedCert(
        f"{name}-cert",
        private_key_pem=key.private_key_pem,
        subject=subject,
        is_ca_certificate=True,
        set_subject_key_id=True,
        validity_period_hours=CA_VALIDITY_HOURS,
        allowed_uses=["cert_signing", "crl_signing", "digital_signature", "key_encipherment"],
        opts=opts,
    )
    return key, cert


def certificate_request(
    name: str,
    *,
    key_pem: pulumi.Input[str],
    common_name: str,
    opts: pulumi.ResourceOptions,
    organization: Optional[str] = None,
    dns_names: pulumi.Input[Sequence[str]] = (),
    ip_addresses: pulumi.Input[Sequence[str]] = (),
) -> tls.CertRequest:
    return tls.CertRequest(
        f"{name}-csr",
        private_key_pem=key_pem,
        subject=tls.CertRequestSubjectArgs(common_name=common_name, organization=organization),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        opts=opts,
    )


def sign_request(
    name: str,
    *,
    request_pem: pulumi.Input[str],
    ca_cert_pem: pulumi.Input[str],
    ca_key_pem: pulumi.Input[str],
    uses: Sequence[str],
    opts: pulumi.ResourceOptions,
) -> tls.LocallySignedCert:
    """A leaf certificate for a request; re-issued by the first `up` within LEAF_EARLY_RENEWAL_HOURS of expiry."""
    return tls.LocallySignedCert(
        f"{name}-cert",
        cert_request_pem=request_pem,
        ca_cert_pem=ca_cert_pem,
        ca_private_key_pem=ca_key_pem,
        validity_period_hours=LEAF_VALIDITY_HOURS,
        early_renewal_hours=LEAF_EARLY_RENEWAL_HOURS,
        allowed_uses=list(uses),
        opts=opts,
    )


def signed_certificate(
    name: str,
    *,
    ca_cert_pem: pulumi.Input[str],
    ca_key_pem: pulumi.Input[str],
    common_name: str,
    uses: Sequence[str],
    opts: pulumi.ResourceOptions,
    organization: Optional[str] = None,
    rsa: bool = False,
) -> tuple[tls.PrivateKey, tls.LocallySignedCert]:
    """A key and its certificate, both made where the CA key is."""
    key = private_key(f"{name}-key", opts, rsa=rsa)
    request = certificate_request(name, key_pem=key.private_key_pem, common_name=common_name,
                                  organization=organization, opts=opts)
    cert = sign_request(name, request_pem=request.cert_request_pem, ca_cert_pem=ca_cert_pem, ca_key_pem=ca_key_pem,
                        uses=uses, opts=opts)
    return key, cert
