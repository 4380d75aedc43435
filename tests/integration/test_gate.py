"""The API gate against a real API server: a program whose kubeconfig trusts the wrong CA never gets past it,
as it would not on a real cloud (the stand-in serves with a certificate of the user data's server CA)."""

from __future__ import annotations

from tests.integration.test_lifecycle import FORCED, LICENCE, _errors

STACK = "seed"
GATE_TIMEOUT = 30  # the smallest apiReadyTimeout settings accept


def test_a_kubeconfig_that_trusts_the_wrong_ca_fails_the_gate_and_nothing_past_it_runs(project, standin):
    kubernetes = project.directory / "components" / "kubernetes.py"
    original = kubernetes.read_text()
    wrong = original.replace('server_ca = self.pki.ca_certs["server-ca"].cert_pem',
                             'server_ca = self.pki.ca_certs["client-ca"].cert_pem')
    assert wrong != original
    kubernetes.write_text(wrong)
    project.select(STACK)
    project.run("config", "set", "crdb-federation:apiReadyTimeout", str(GATE_TIMEOUT), stack=STACK)
    project.run("config", "set", "--secret", "crdb-federation:enterpriseLicense", LICENCE, stack=STACK)
    try:
        events, output = project.events("up", STACK, "--yes", "--skip-preview")
    finally:
        kubernetes.write_text(original)
    errors = _errors(events)
    refusal = next((m for m in errors if "readyz not ready after 30s" in m), None)
    print("the gate's refusal:", refusal)
    assert refusal and "CERTIFICATE_VERIFY_FAILED" in refusal, errors or output[-3000:]
    # The API did answer (the stand-in ran the cluster of this server 0); only the trust was wrong.
    assert standin.report(STACK).get("api"), standin.report(STACK)
    created_kubernetes = [e for e in events if e.get("resOutputsEvent", {}).get("metadata", {}).get(
        "type", "").startswith("kubernetes:") and e["resOutputsEvent"]["metadata"]["op"] == "create"]
    assert not created_kubernetes
    project.run("destroy", "--yes", "--skip-preview", stack=STACK, env=FORCED)
