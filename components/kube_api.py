"""The few Kubernetes API calls the program makes itself (from its dynamic resources), over mutual TLS with the
admin kubeconfig's client certificate: a client library would be a dependency for a handful of requests."""

from __future__ import annotations

import base64
import json
import urllib.request
from typing import Any, Optional

from .tls_files import client_tls_context


class KubeApi:
    """Calls to the API server a kubeconfig names, trusting only its CA and presenting its client certificate."""

    def __init__(self, kubeconfig: str):
        import yaml

        document = yaml.safe_load(kubeconfig)
        cluster, user = document["clusters"][0]["cluster"], document["users"][0]["user"]
        self.server = cluster["server"].rstrip("/")
        self.context = client_tls_context(*(base64.b64decode(data).decode() for data in (
            cluster["certificate-authority-data"], user["client-certificate-data"], user["client-key-data"])))

    def call(self, method: str, path: str, body: Optional[dict] = None, *, text: bool = False,
             content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method,
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
            payload = response.read().decode()
        return payload if text else json.loads(payload or "{}")
