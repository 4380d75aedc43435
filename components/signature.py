"""A member's nodes start within its own `up`: it waits there for the seed's signature, read from the backend.

A stack's outputs are written when its update ends, so through outputs alone a member's requests reach the seed
only after the member's whole first `up`, and the certificates come back only with a second. Instead the seed's
signing service (`python -m federation serve`, federation/service.py) reads the requests from the member's
in-progress state, which the diy backend saves after every step, and signs them in a seed `up` whose outputs hold
the certificates. `SignatureWait`, created by the member's `up` once its requests exist, polls those outputs (what
`pulumi stack output --stack <seed>` shows any reader of the backend, no secret of the seed's) until they answer
these requests, or say the seed refused them, or its time is up.

Nothing read here is trusted: the member checks these certificates as it checks the seed's output (they chain to
the pinned CA and are for its own key: components/federation.signed_for). With no service signing, the wait ends
at its deadline (crdb-federation:signatureWait; 0 skips it), the `up` says what it waited for, and the nodes wait
for the next `up`: the two-step path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
from typing import Any, Callable, Optional

import pulumi
import pulumi.dynamic as dynamic

# The federation tool's override of crdb-federation:signatureWait for one run (`join --two-step` sets 0).
WAIT_SECONDS = "CRDB_SIGNATURE_WAIT"
DEFAULT_WAIT = 600
POLL_SECONDS = 2.0
PROVIDER_KEY = "__provider"
# What a signature holds: the node certificate, client.node's and the members' SQL user's (components/ops_user.py).
SIGNED = ("node", "client", "ops")


class SignatureRefused(Exception):
    """The seed's operator (its signing service) refused these requests, and published why."""


def requests_digest(node_request: str, client_request: str, ops_request: str = "") -> str:
    """What a signature answers: the SHA-256 of the requests (the SQL user's, when sent: without it, the digest of a
    member that sends two is what it was)."""
    requests = [node_request, client_request] + ([ops_request] if ops_request else [])
    return hashlib.sha256("\n".join(r.strip() for r in requests).encode()).hexdigest()


def join_proof(token: str, stack: str, digest: str) -> str:
    """What a member publishes to show it holds the join token the seed's operator gave it out of band: an HMAC of
    its stack and its requests (public: it gives nothing of the token, and answers only these requests)."""
    return hmac.new(token.encode(), f"{stack}\n{digest}".encode(), hashlib.sha256).hexdigest()


def answer(seed_outputs: dict[str, Any], stack: str, digest: str) -> Optional[dict[str, str]]:
    """The certificates the seed's outputs hold for these requests of `stack`, None while they hold none (pure).
    SignatureRefused when the seed published a refusal of these very requests."""
    signed = (seed_outputs.get("signedCertificates") or {}).get(stack) or {}
    if signed.get("requests") == digest and signed.get("node"):
        return {kind: signed.get(kind) or "" for kind in SIGNED}
    refusal = (seed_outputs.get("refusals") or {}).get(stack) or {}
    if refusal.get("requests") == digest:
        raise SignatureRefused(f"the seed's operator refused to sign {stack}'s certificate requests: "
                               f"{refusal.get('reason') or 'no reason given'}")
    return None


def seed_outputs(seed_stack: str) -> dict[str, Any]:
    """The seed's outputs as any reader of the backend sees them (secrets shown as "[secret]", so no passphrase of
    the seed's is needed: pulumi stack output without --show-secrets)."""
    cli = shutil.which("pulumi")
    if cli is None:
        raise RuntimeError("the pulumi CLI is not on this `up`'s PATH, so the seed's outputs cannot be read")
    done = subprocess.run([cli, "stack", "output", "--json", "--non-interactive", "--stack", seed_stack],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError((done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"])
    return json.loads(done.stdout or "{}")


def wait_for_signature(read: Callable[[], dict[str, Any]], stack: str, digest: str, timeout: float, *,
                       interval: float = POLL_SECONDS, clock: Callable[[], float] = time.monotonic,
                       sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
    """Polls the seed's outputs until they answer these requests; at the deadline, empty certificates and why
    (`unsigned`), naming what it waited for. SignatureRefused passes through."""
    deadline = clock() + timeout
    problem = ""
    while True:
        try:
            found = answer(read(), stack, digest)
            problem = ""
        except SignatureRefused:
            raise
        except Exception as error:  # a backend that hiccups: keep polling, say it if it lasts to the deadline
            found, problem = None, f" (the last read of the seed's outputs failed: {error})"
        if found is not None:
            return {**found, "unsigned": ""}
        if clock() >= deadline:
            return {**dict.fromkeys(SIGNED, ""), "unsigned": (
                f"no signature of {stack}'s certificate requests (SHA-256 {digest[:16]}...) appeared in the seed's "
                f"outputs within {timeout:.0f} s{problem}. Its CockroachDB nodes wait: the seed's operator signs them "
                "with `python -m federation serve` running (or by admitting this stack in crdb-federation:members "
                "and running the seed's `up`); then run this `up` again")}
        sleep(interval)


class _SignatureWaitProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        found = {**dict.fromkeys(SIGNED, ""), "unsigned": ""}  # not wanted: the seed's output answers already
        timeout = float(os.environ.get(WAIT_SECONDS) or props.get("timeout") or 0)
        if props["wanted"] and timeout > 0:
            found = wait_for_signature(lambda: seed_outputs(props["seed"]), props["stack"], props["requests"],
                                       timeout)
        elif props["wanted"]:
            found["unsigned"] = (f"not waited for (signatureWait 0): {props['stack']}'s nodes wait until the seed has "
                                 "signed its requests and this `up` runs again")
        return dynamic.CreateResult(id_=props["requests"][:16], outs={**props, **found})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        # New requests, or still unsigned and still wanted: wait again (a replace runs create).
        # Once signed, `wanted` turning false (the seed's output now holds the same certificate) is no change:
        # a second `up` after a join is all "same". The seed, timeout and proof only steer a wait.
        again = olds.get("requests") != news.get("requests") or (bool(news.get("wanted")) and not olds.get("node"))
        watched = ("stack", PROVIDER_KEY) if olds.get("node") else ("wanted", "stack", PROVIDER_KEY)
        changed = again or any(olds.get(k) != news.get(k) for k in watched)
        return dynamic.DiffResult(changes=changed, replaces=["requests"] if again else [])

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(outs={**news, **{k: olds.get(k, "") for k in (*SIGNED, "unsigned")}})


class SignatureWait(dynamic.Resource):
    """The seed's signature of this stack's requests, waited for within the `up` (see the module's doc).
    `wanted`: false when the seed's output already holds a certificate for these requests. Its inputs are what the
    seed's signing service reads from this stack's in-progress state: the stack, the digest of the requests it
    waits on and, with a join token, the proof of it."""

    node: pulumi.Output[str]
    client: pulumi.Output[str]
    ops: pulumi.Output[str]
    unsigned: pulumi.Output[str]

    def __init__(self, name: str, *, stack: str, seed: str, node_request: pulumi.Input[str],
                 client_request: pulumi.Input[str], wanted: pulumi.Input[bool], ops_request: pulumi.Input[str] = "",
                 timeout: int = DEFAULT_WAIT, token: Optional[pulumi.Input[str]] = None,
                 opts: Optional[pulumi.ResourceOptions] = None):
        digest = pulumi.Output.all(node_request, client_request, ops_request).apply(lambda v: requests_digest(*v))
        # The proof derives from a secret but reveals nothing of it: it stays readable for the seed's service.
        proof = pulumi.Output.unsecret(pulumi.Output.all(token, digest).apply(
            lambda v: join_proof(v[0], stack, v[1]) if v[0] else "")) if token is not None else ""
        super().__init__(_SignatureWaitProvider(), name,
                         {"stack": stack, "seed": seed, "requests": digest, "wanted": wanted, "timeout": timeout,
                          "proof": proof, "unsigned": None, **dict.fromkeys(SIGNED)}, opts)
