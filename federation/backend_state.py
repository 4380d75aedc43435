"""What the shared state backend shows of each stack while operators run their `up`s, read as the diy backend
writes it (pulumi v3.259.0 pkg/backend/diy), with no passphrase: the seed's signing service and its dashboard
see every member through this alone.

- `.pulumi/stacks/<project>/<stack>.json[.gz]`: the checkpoint, saved after every step of an update
  (backend/snapshot.go: a create is recorded as pending before the cloud is called, then with its outputs), so a
  member's certificate requests and its SignatureWait's inputs are there while its `up` still runs. The stack's
  own outputs are written only when the update ends (deployment_executor.go).
- `.pulumi/locks/<org>/<project>/<stack>/<id>.json`: present while an update runs, with the time it was taken
  (lock.go newLockContent, before the preview): when the operator's `up` started.
- `.pulumi/history/<project>/<stack>/<stack>-<nanos>.history.json[.gz]`: one per finished update
  (state.go addToHistory), with its kind, result and start and end times in seconds.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from . import locks
from .progress import PHASES, SIGNATURE_WAIT_NAME, phase_of

PROJECT = "crdb-federation"
ORGANIZATION = "organization"  # the diy backend's one organization (backend.go)
CSR_TYPE = "tls:index/certRequest:CertRequest"
# components/federation.py NodeIdentity's three requests, through components/pki.py certificate_request.
REQUEST_SUFFIXES = {"-identity-node-csr": "node", "-identity-client-csr": "client", "-identity-ops-csr": "ops"}
DYNAMIC_TYPE = "pulumi-python:dynamic:Resource"
SIGNATURE_WAIT_SUFFIX = SIGNATURE_WAIT_NAME  # components/cockroach.py names it <member>-signature
STACK_TYPE = "pulumi:pulumi:Stack"


@dataclass(frozen=True)
class Waiting:
    """A member's SignatureWait as its state records it: what it waits on."""

    member: str  # the member's cloud name (its locality's cloud=)
    stack: str  # organization/project/stack, as the member computed it
    requests: str  # the digest of the requests it waits on (components/signature.requests_digest)
    proof: str  # its join proof, or ""
    done: bool  # created: the wait ended (signed, or gave up)


@dataclass(frozen=True)
class StackView:
    """One stack as the backend shows it at one moment."""

    stack: str
    deployment: dict[str, Any] = field(default_factory=dict)  # the checkpoint's `latest`, {} before its first up
    running_since: Optional[float] = None  # epoch seconds the lock of a running update was taken
    last_update: dict[str, Any] = field(default_factory=dict)  # the newest history entry's UpdateInfo

    @property
    def qualified(self) -> str:
        return f"{ORGANIZATION}/{PROJECT}/{self.stack}"

    def resources(self) -> list[dict[str, Any]]:
        """Its resources, less those a replacement left to delete (`delete: true`: the engine creates the new one
        first and records the old after it until it is gone; resource/deploy/step.go CreateReplacementStep)."""
        return [r for r in self.deployment.get("resources") or [] if not r.get("delete")]

    def pending(self) -> list[dict[str, Any]]:
        return [p.get("resource") or {} for p in self.deployment.get("pending_operations") or []]

    def outputs(self) -> dict[str, Any]:
        """The stack's own outputs, as its last finished update left them."""
        root = next((r for r in self.resources() if r.get("type") == STACK_TYPE), {})
        return dict(root.get("outputs") or {})

    def requests(self) -> dict[str, str]:
        """kind -> PEM of the certificate requests its state holds (plaintext: only the key is secret)."""
        found = {}
        for resource in self.resources():
            if resource.get("type") != CSR_TYPE:
                continue
            kind = next((k for suffix, k in REQUEST_SUFFIXES.items() if resource.get("urn", "").endswith(suffix)), None)
            pem = (resource.get("outputs") or {}).get("certRequestPem")
            if kind and isinstance(pem, str) and pem.startswith("-----BEGIN CERTIFICATE REQUEST-----"):
                found[kind] = pem
        return found

    def waiting(self) -> Optional[Waiting]:
        """Its SignatureWait: pending while the `up` waits in it, a resource once the wait ended."""
        for resource, done in [(r, False) for r in self.pending()] + [(r, True) for r in self.resources()]:
            urn = resource.get("urn", "")
            if resource.get("type") == DYNAMIC_TYPE and urn.endswith(SIGNATURE_WAIT_SUFFIX):
                inputs = resource.get("inputs") or {}
                if isinstance(inputs.get("requests"), str) and isinstance(inputs.get("stack"), str):
                    proof = inputs.get("proof")
                    return Waiting(urn.rsplit("::", 1)[-1][:-len(SIGNATURE_WAIT_SUFFIX)], inputs["stack"],
                                   inputs["requests"], proof if isinstance(proof, str) else "", done)
        return None

    def phase(self) -> str:
        """What a running update is making: the furthest phase of its pending steps (its SignatureWait aside),
        else that of the last resource it made."""
        def phases(resources: list[dict[str, Any]]) -> list[str]:
            return [p for r in resources if not r.get("urn", "").endswith(SIGNATURE_WAIT_SUFFIX)
                    for p in [phase_of(r.get("type", ""))] if p]

        pending = phases(self.pending())
        if pending:
            return max(pending, key=PHASES.index)
        made = phases(self.resources())
        return made[-1] if made else ""


def checkpoint_key(stack: str, project: str = PROJECT) -> str:
    return f".pulumi/stacks/{project}/{stack}.json"


def history_prefix(stack: str, project: str = PROJECT) -> str:
    return f".pulumi/history/{project}/{stack}/"


def decoded(body: bytes) -> dict[str, Any]:
    """A JSON object the CLI wrote, plain or gzip (encoding.DetectCompression); zstd is refused by name."""
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    elif body[:4] == b"\x28\xb5\x2f\xfd":
        raise ValueError("a zstd-compressed state (PULUMI_DIY_BACKEND_ZSTD): not read here; use plain or gzip")
    return json.loads(body)


def _epoch(rfc3339: str) -> Optional[float]:
    """Go's RFC3339Nano (up to nine fraction digits; Python takes six) as epoch seconds."""
    text = rfc3339.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


class BackendReader:
    """Reads stacks of one project from a file:// or s3:// diy backend with the reader's own credentials."""

    def __init__(self, backend_url: str, project: str = PROJECT):
        self.store = locks.lock_store(backend_url)
        self.project = project

    def stacks(self) -> list[str]:
        """Every stack of the project the backend holds."""
        names = set()
        for key in self.store.list(f".pulumi/stacks/{self.project}/"):
            name = key.rsplit("/", 1)[-1]
            for suffix in (".json", ".json.gz"):
                if name.endswith(suffix):
                    names.add(name[:-len(suffix)])
        return sorted(names)

    def view(self, stack: str) -> StackView:
        return StackView(stack, self._deployment(stack), self._running_since(stack), self._last_update(stack))

    def _deployment(self, stack: str) -> dict[str, Any]:
        for key in (checkpoint_key(stack, self.project), checkpoint_key(stack, self.project) + ".gz"):
            try:
                document = decoded(self.store.get(key))
            except FileNotFoundError:
                continue
            return (document.get("checkpoint") or {}).get("latest") or {}
        return {}

    def _running_since(self, stack: str) -> Optional[float]:
        started = []
        prefix = locks.lock_prefix(f"{ORGANIZATION}/{self.project}/{stack}")
        for key in self.store.list(prefix):
            try:
                stamp = json.loads(self.store.get(key)).get("timestamp") or ""
            except (FileNotFoundError, ValueError):
                continue  # released meanwhile
            when = _epoch(stamp)
            if when is not None:
                started.append(when)
        return min(started) if started else None

    def _last_update(self, stack: str) -> dict[str, Any]:
        entries = sorted(k for k in self.store.list(history_prefix(stack, self.project))
                         if k.endswith((".history.json", ".history.json.gz")))
        if not entries:
            return {}
        try:
            return decoded(self.store.get(entries[-1]))
        except (FileNotFoundError, ValueError):
            return {}
