"""The backend reader's scan (tests/integration/state_scan.py) finds credentials in clear by their own shape, and
passes over what the engine encrypted (pulumi sdk/go/common/resource/properties.go SecretSig)."""

import json

from tests.integration.state_scan import SECRET_SIG, scan_document


def test_credentials_in_clear_are_found_with_where_and_encrypted_ones_are_not():
    encrypted = {SECRET_SIG: "1b47061264138c4ac30d75fd1eb44270", "ciphertext": "-----BEGIN PRIVATE KEY-----"}
    document = {"deployment": {"resources": [{"outputs": {
        "privateKeyPem": "-----BEGIN RSA PRIVATE KEY-----\nMIIE…", "userData": "#cloud-config\nruncmd: []",
        "kubeconfig": "users:\n- user:\n    client-key-data: LS0t", "token": "K10" + "a" * 64 + "::server:x",
        "licence": "crl-0-ChAQ1234567890abcdefghij", "password": "hunter2", "certificate": "-----BEGIN CERTIFICATE-----",
        "sealed": encrypted, "passwordLength": 32}}]}}
    found = {(f.where, f.what) for f in scan_document("stacks/p/s.json", json.dumps(document))}
    outputs = "$.deployment.resources[0].outputs"
    assert found == {
        (f"{outputs}.privateKeyPem", "private key"), (f"{outputs}.privateKeyPem", "a value under 'privateKeyPem'"),
        (f"{outputs}.userData", "cloud-init user data"),
        (f"{outputs}.kubeconfig", "kubeconfig credential"), (f"{outputs}.token", "k3s token"),
        (f"{outputs}.token", "a value under 'token'"), (f"{outputs}.licence", "CockroachDB licence"),
        (f"{outputs}.licence", "a value under 'licence'"), (f"{outputs}.password", "a value under 'password'")}
