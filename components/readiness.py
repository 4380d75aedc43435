"""A gate before any Kubernetes resource: waits until the API's /readyz answers `ok`.

The kubernetes provider fails against an API that is not up yet, and a fresh k3s server needs
minutes (boot, download, start). `ApiReadiness` is a dynamic resource whose create polls
`https://<api>/readyz` with the admin client certificate, trusting only the cluster's server CA;
its `kubeconfig` output is what the kubernetes.Provider consumes, so every Kubernetes resource
depends on the API being ready.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

import pulumi
import pulumi.dynamic as dynamic

from .tls_files import client_tls_context


class ApiNotReadyError(Exception):
    pass


# What the gate waits for again when it changes: the API's address and credentials, and the server behind it
# (a healed or replaced server 0 boots a new API; its address stays the same).
PROBED = ("url", "serverId", "caPem", "certPem", "keyPem", "kubeconfig")
PROVIDER_KEY = "__provider"


def probe_readyz(url: str, ca_pem: str, cert_pem: str, key_pem: str, *, timeout: float = 10.0) -> tuple[bool, str]:
    """One GET of /readyz with mutual TLS; returns (ready, what was seen)."""
    context = client_tls_context(ca_pem, cert_pem, key_pem)
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as response:
            body = response.read(256).decode(errors="replace").strip()
            return response.status == 200 and body == "ok", f"HTTP {response.status}: {body}"
    except urllib.error.HTTPError as error:
        return False, f"HTTP {error.code}: {error.read(256).decode(errors='replace').strip()}"
    except (urllib.error.URLError, OSError) as error:
        return False, str(getattr(error, "reason", error))


def wait_until_ready(
    probe: Callable[[], tuple[bool, str]],
    *,
    url: str,
    timeout: float,
    interval: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Calls `probe` until it reports ready; returns the number of attempts or raises with the last answer."""
    deadline = clock() + timeout
    attempts = 0
    while True:
        attempts += 1
        ready, seen = probe()
        if ready:
            return attempts
        # Probe until the deadline itself: the last wait is shortened, never skipped.
        remaining = deadline - clock()
        if remaining <= 0:
            raise ApiNotReadyError(
                f"Kubernetes API {url} not ready after {timeout:.0f}s and {attempts} attempts; last answer: {seen}. "
                "Check that the server booted (console log), that k3s installed, and that adminCidrs includes "
                "the address this program runs from."
            )
        sleep(min(interval, remaining))


class _ApiReadinessProvider(dynamic.ResourceProvider):
    def _wait(self, props: dict[str, Any]) -> None:
        url = props["url"]
        wait_until_ready(
            lambda: probe_readyz(url, props["caPem"], props["certPem"], props["keyPem"]),
            url=url,
            timeout=float(props["timeoutSeconds"]),
        )

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        self._wait(props)
        return dynamic.CreateResult(id_=props["url"], outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        # __provider: a reference to this module and class, which a later delete or read uses; a changed one
        # reaches the state by an update (that waits for nothing).
        changed = [k for k in (*PROBED, PROVIDER_KEY) if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(changed), replaces=[k for k in changed if k == "url"])

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        if any(olds.get(k) != news.get(k) for k in PROBED):
            self._wait(news)
        return dynamic.UpdateResult(outs=news)


class ApiReadiness(dynamic.Resource):
    """Ready once /readyz answers; `kubeconfig` passes through, so consumers wait for readiness."""

    kubeconfig: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        url: pulumi.Input[str],
        server_id: pulumi.Input[str],
        ca_pem: pulumi.Input[str],
        cert_pem: pulumi.Input[str],
        key_pem: pulumi.Input[str],
        kubeconfig: pulumi.Input[str],
        timeout_seconds: int,
        opts: Optional[pulumi.ResourceOptions] = None,
    ):
        secret_opts = pulumi.ResourceOptions(additional_secret_outputs=["keyPem", "kubeconfig"])
        super().__init__(
            _ApiReadinessProvider(),
            name,
            {
                "url": url,
                "serverId": server_id,
                "caPem": ca_pem,
                "certPem": cert_pem,
                "keyPem": pulumi.Output.secret(key_pem),
                "kubeconfig": pulumi.Output.secret(kubeconfig),
                "timeoutSeconds": timeout_seconds,
            },
            pulumi.ResourceOptions.merge(opts, secret_opts),
        )
