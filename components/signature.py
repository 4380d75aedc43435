"""A member's nodes start as soon as the seed has signed: a wait inside the member's own `up`.

A stack's outputs are written when its update ends, so through outputs alone a member's requests reach the
seed only after the member's whole first `up`, and the certificates come back only with a second. The
federation tool (`python -m federation join`) shortens that: it takes the member's requests from the engine's
events the moment they exist, has the seed sign every member whose requests arrived in one `up`, and leaves
each member's certificates in a file of the run (CRDB_SIGNATURES_DIR). `SignatureWait`, created by the
member's `up` once its requests exist, waits for that file, so the same `up` installs the certificates and
starts the nodes while its servers are still being built.

Nothing read here is trusted: the member checks these certificates as it checks the seed's output (they chain to
the pinned CA and are for its own key: components/federation.signed_for). Without the tool (an operator who runs
`pulumi up` by hand) the variable is unset, the wait gives nothing at once, and the two-step path applies.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pulumi
import pulumi.dynamic as dynamic

SIGNATURES_DIR = "CRDB_SIGNATURES_DIR"
WAIT_SECONDS = "CRDB_SIGNATURE_WAIT"
DEFAULT_WAIT = 600.0
PROVIDER_KEY = "__provider"
# What a signature holds: the node certificate, client.node's and the members' SQL user's (components/ops_user.py).
SIGNED = ("node", "client", "ops")


def requests_digest(node_request: str, client_request: str, ops_request: str = "") -> str:
    """What a signature answers: the SHA-256 of the requests (the SQL user's, when sent: without it, the digest of a
    member that sends two is what it was)."""
    requests = [node_request, client_request] + ([ops_request] if ops_request else [])
    return hashlib.sha256("\n".join(r.strip() for r in requests).encode()).hexdigest()


def signature_file(directory: Path, stack: str) -> Path:
    """Where the tool leaves the certificates of `stack` (org/project/stack)."""
    return Path(directory) / (stack.replace("/", "+") + ".json")


def write_signature(directory: Path, stack: str, digest: str, *, node: str = "", client: str = "", ops: str = "",
                    refused: str = "") -> None:
    """The tool's side: the certificates for the requests `digest`, or why there are none (the wait ends)."""
    path = signature_file(directory, stack)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".partial")
    temporary.write_text(json.dumps({"requests": digest, "node": node, "client": client, "ops": ops,
                                     "refused": refused}))
    temporary.replace(path)  # whole or absent: the wait never reads half a file


def wait_for_signature(path: Path, digest: str, timeout: float, *, interval: float = 1.0,
                       clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
    """The certificates the file holds for these requests; empty ones when the tool gave up on them, or at the
    deadline (the nodes then wait for the next `up`, as on the two-step path)."""
    deadline = clock() + timeout
    while True:
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            found = {}
        if found.get("requests") == digest and (found.get("node") or found.get("refused")):
            return {kind: found.get(kind) or "" for kind in (*SIGNED, "refused")}
        if clock() >= deadline:
            return {**dict.fromkeys(SIGNED, ""), "refused": f"no signature within {timeout:.0f}s"}
        sleep(interval)


class _SignatureWaitProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        directory = os.environ.get(SIGNATURES_DIR)
        found = {**dict.fromkeys(SIGNED, ""), "refused": "not joined through the federation tool"}
        if props["wanted"] and directory:
            found = wait_for_signature(signature_file(Path(directory), props["stack"]), props["requests"],
                                       float(os.environ.get(WAIT_SECONDS) or DEFAULT_WAIT))
        return dynamic.CreateResult(id_=props["requests"][:16], outs={**props, **found})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        # New requests, or still unsigned and still wanted: wait again (a replace runs create).
        # Once signed, `wanted` turning false (the seed's output now holds the same certificate) is no change:
        # a second `up` after a join through the tool is all "same".
        again = olds.get("requests") != news.get("requests") or (bool(news.get("wanted")) and not olds.get("node"))
        watched = ("stack", PROVIDER_KEY) if olds.get("node") else ("wanted", "stack", PROVIDER_KEY)
        changed = again or any(olds.get(k) != news.get(k) for k in watched)
        return dynamic.DiffResult(changes=changed, replaces=["requests"] if again else [])

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(outs={**news, **{k: olds.get(k, "") for k in (*SIGNED, "refused")}})


class SignatureWait(dynamic.Resource):
    """The seed's signature of this stack's requests, waited for within the `up` (see the module's doc).
    `wanted`: false when the seed's output already holds a certificate for these requests."""

    node: pulumi.Output[str]
    client: pulumi.Output[str]
    ops: pulumi.Output[str]

    def __init__(self, name: str, *, stack: str, node_request: pulumi.Input[str], client_request: pulumi.Input[str],
                 wanted: pulumi.Input[bool], ops_request: pulumi.Input[str] = "",
                 opts: Optional[pulumi.ResourceOptions] = None):
        digest = pulumi.Output.all(node_request, client_request, ops_request).apply(lambda v: requests_digest(*v))
        super().__init__(_SignatureWaitProvider(), name,
                         {"stack": stack, "requests": digest, "wanted": wanted, "refused": None,
                          **dict.fromkeys(SIGNED)}, opts)
