"""The API readiness gate: retry and timeout logic, and one real mutual-TLS probe against a loopback server."""

import datetime
import http.server
import ipaddress
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from components.readiness import ApiNotReadyError, probe_readyz, wait_until_ready


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_waits_until_ready():
    answers = iter([(False, "connection refused"), (False, "HTTP 500: etcd not ready"), (True, "HTTP 200: ok")])
    clock = FakeClock()
    attempts = wait_until_ready(lambda: next(answers), url="https://x/readyz", timeout=60, interval=5,
                                clock=clock, sleep=clock.sleep)
    assert attempts == 3 and clock.now == 10


def test_times_out_with_the_last_answer():
    clock = FakeClock()
    with pytest.raises(ApiNotReadyError, match=r"not ready after 30s and 7 attempts; last answer: connection refused"):
        wait_until_ready(lambda: (False, "connection refused"), url="https://x/readyz", timeout=30, interval=5,
                         clock=clock, sleep=clock.sleep)


def test_gives_up_only_at_its_own_deadline_when_probes_take_time():
    clock = FakeClock()

    def slow_refusal():
        clock.now += 0.4  # each probe costs time, as a real connection attempt does
        return False, "no route to host"

    with pytest.raises(ApiNotReadyError, match=r"not ready after 30s"):
        wait_until_ready(slow_refusal, url="https://x/readyz", timeout=30, interval=5, clock=clock, sleep=clock.sleep)
    assert 30 <= clock.now < 31


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject, issuer_name, public_key, signing_key, *, ca=False, eku=None, ip=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _pem(obj):
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM).decode()
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture
def api_server(tmp_path):
    """A loopback HTTPS server that, like kube-apiserver, requires a client certificate from client-ca."""
    server_ca_key, client_ca_key, server_key, client_key = _key(), _key(), _key(), _key()
    server_ca = _cert("server-ca", "server-ca", server_ca_key.public_key(), server_ca_key, ca=True)
    client_ca = _cert("client-ca", "client-ca", client_ca_key.public_key(), client_ca_key, ca=True)
    server_cert = _cert("kube-apiserver", "server-ca", server_key.public_key(), server_ca_key,
                        eku=ExtendedKeyUsageOID.SERVER_AUTH, ip="127.0.0.1")
    admin_cert = _cert("admin", "client-ca", client_key.public_key(), client_ca_key, eku=ExtendedKeyUsageOID.CLIENT_AUTH)
    (tmp_path / "server.crt").write_text(_pem(server_cert))
    (tmp_path / "server.key").write_text(_pem(server_key))
    (tmp_path / "client-ca.crt").write_text(_pem(client_ca))
    state = {"status": 500, "body": b"[-]etcd failed"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(state["status"] if self.path == "/readyz" else 404)
            self.end_headers()
            self.wfile.write(state["body"])

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    context.load_verify_locations(tmp_path / "client-ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"https://127.0.0.1:{httpd.server_address[1]}/readyz", "state": state,
           "ca": _pem(server_ca), "cert": _pem(admin_cert), "key": _pem(client_key), "other_ca": _pem(client_ca)}
    httpd.shutdown()
    httpd.server_close()


def test_probe_speaks_mutual_tls_and_reads_readyz(api_server):
    s = api_server
    ready, seen = probe_readyz(s["url"], s["ca"], s["cert"], s["key"], timeout=5)
    assert not ready and seen.startswith("HTTP 500")
    s["state"].update(status=200, body=b"ok")
    assert probe_readyz(s["url"], s["ca"], s["cert"], s["key"], timeout=5) == (True, "HTTP 200: ok")


def test_probe_refuses_a_server_signed_by_another_ca(api_server):
    s = api_server
    s["state"].update(status=200, body=b"ok")
    ready, seen = probe_readyz(s["url"], s["other_ca"], s["cert"], s["key"], timeout=5)
    assert not ready and "CERTIFICATE_VERIFY_FAILED" in seen


def test_probe_reports_connection_refused(api_server):
    s = api_server
    ready, seen = probe_readyz("https://127.0.0.1:1/readyz", s["ca"], s["cert"], s["key"], timeout=2)
    assert not ready and "refused" in seen.lower()


def test_a_new_server_behind_the_same_address_is_waited_for_again(monkeypatch):
    """A healed or replaced server 0 keeps its address (the port and floating IP stay) but boots a new API."""
    from components import readiness

    waited = []
    monkeypatch.setattr(readiness._ApiReadinessProvider, "_wait", lambda self, props: waited.append(props["serverId"]))
    provider = readiness._ApiReadinessProvider()
    old = {"url": "https://198.18.0.10:6443/readyz", "serverId": "a", "caPem": "ca", "certPem": "c", "keyPem": "k",
           "kubeconfig": "kc", "__provider": "ref"}
    healed = {**old, "serverId": "b"}
    assert provider.diff("id", old, healed).changes
    provider.update("id", old, healed)
    # Only the stored provider reference changed: the state is rewritten, nothing is waited for.
    moved = {**old, "__provider": "new-ref"}
    assert provider.diff("id", old, moved).changes
    provider.update("id", old, moved)
    assert waited == ["b"]
    assert not provider.diff("id", old, dict(old)).changes
