"""Client TLS material for libraries that read it from files: written readable by its owner only, into a
directory that is gone once the files have been read."""

from __future__ import annotations

import os
import ssl
import tempfile


def write_private(path: str, content: str) -> str:
    """Creates `path` (it must not exist) with mode 0600 and writes `content`; returns the path."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    return path


def client_tls_context(ca_pem: str, cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """Trusts only `ca_pem` and presents the client certificate (mutual TLS)."""
    context = ssl.create_default_context(cadata=ca_pem)
    with tempfile.TemporaryDirectory(prefix="crdb-federation-") as directory:
        context.load_cert_chain(write_private(os.path.join(directory, "client.crt"), cert_pem),
                                write_private(os.path.join(directory, "client.key"), key_pem))
    return context
