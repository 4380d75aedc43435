"""What one cloud's `pulumi up` is doing, from the engine's events (pure: no Pulumi CLI needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .faults import CloudFault
from .locks import StackLocked

# "signing": built, its CockroachDB nodes waiting for the seed to sign their certificates.
PHASES = ("network", "servers", "kubernetes", "cockroachdb", "signing", "joined")
# What each operation's last phase is called: only an `up` joins anything.
FINAL_PHASE = {"up": "joined", "preview": "previewed", "destroy": "destroyed"}
DAEMONSET = "kubernetes:apps/v1:DaemonSet"
STACK = "pulumi:pulumi:Stack"
# Another run holds the stack: the file/S3 backends' words (pulumi v3.259.0 pkg/backend/diy/lock.go
# checkForLock), then Pulumi Cloud's (automation errors.py conflict_text). The engine started nothing.
LOCKED = ("the stack is currently locked by", "Another update is currently in progress")


def phases_of(operation: str) -> tuple[str, ...]:
    """The phases a run of this operation goes through, in order."""
    if operation == "destroy":
        return ("destroying", "destroyed")
    return PHASES[:-1] + (FINAL_PHASE[operation],)


def phase_of(resource_type: str) -> Optional[str]:
    """The phase a resource type belongs to; None for those that mark no phase (keys, passwords, components)."""
    if resource_type.startswith("openstack:networking/"):
        return "network"
    if resource_type.startswith("openstack:compute/"):
        return "servers"
    if resource_type in ("pulumi-python:dynamic:Resource", "pulumi:providers:kubernetes"):
        return "kubernetes"
    if resource_type.startswith("kubernetes:"):
        return "cockroachdb"
    return None


@dataclass
class CloudProgress:
    """One row of the dashboard and one cloud of the timeline. Times are seconds since the run started."""

    stack: str
    operation: str = "up"  # up | preview | destroy
    status: str = "waiting"  # waiting | running | succeeded | failed | refused (another run holds the stack)
    phase: str = ""
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    phases: dict[str, float] = field(default_factory=dict)  # phase -> when it was first reached
    error: str = ""
    started_urns: set[str] = field(default_factory=set)
    done_urns: set[str] = field(default_factory=set)
    # The engine's own error diagnostics, (urn, message), in arrival order.
    diagnostics: list[tuple[str, str]] = field(default_factory=list)
    # [start, end] of each of this cloud's engine runs (a member's two `up`s, the seed's signing ones), and of
    # each wait within a run for the seed's signature (components/signature.py); end None while it lasts.
    runs: list[list[Optional[float]]] = field(default_factory=list)
    waits: list[list[Optional[float]]] = field(default_factory=list)

    def copy(self) -> "CloudProgress":
        return CloudProgress(**{**self.__dict__, "phases": dict(self.phases), "started_urns": set(self.started_urns),
                                "done_urns": set(self.done_urns), "diagnostics": list(self.diagnostics),
                                "runs": [list(r) for r in self.runs], "waits": [list(w) for w in self.waits]})

    def start(self, now: float) -> None:
        """A run of this cloud begins; its elapsed time counts from the first."""
        self.status = "running"
        if self.started_at is None:
            self.started_at = now
        self.runs.append([now, None])

    def engine_seconds(self, now: Optional[float] = None) -> float:
        """Time in this cloud's own engine runs."""
        return sum(_span(r, now) for r in self.runs)

    def seed_waits(self, now: Optional[float] = None) -> list[tuple[float, float]]:
        """(start, end) of each wait for the seed: between this cloud's runs, and each run's wait for its
        signature (one that lasts ends `now`)."""
        gaps = [(earlier[1], later[0]) for earlier, later in zip(self.runs, self.runs[1:]) if earlier[1] is not None]
        return gaps + [(w[0], w[0] + _span(w, now)) for w in self.waits]

    def seed_wait_seconds(self, now: Optional[float] = None) -> float:
        return sum(max(0.0, end - start) for start, end in self.seed_waits(now))

    @property
    def resources_started(self) -> int:
        return len(self.started_urns)

    @property
    def resources_done(self) -> int:
        return len(self.done_urns)

    def _reach(self, phase: Optional[str], now: float) -> None:
        order = phases_of(self.operation)
        if phase is None or phase not in order:
            return
        # Phases only move forward: a late key or secret does not send a cloud back.
        if not self.phase or order.index(phase) > order.index(self.phase):
            self.phase = phase
        self.phases.setdefault(phase, now)

    def on_event(self, event: Any, now: float) -> None:
        """Feeds one pulumi.automation EngineEvent."""
        if event.resource_pre_event is not None:
            metadata = event.resource_pre_event.metadata
            if metadata.op not in ("same", "read") and metadata.type != STACK:
                self.started_urns.add(metadata.urn)
                if _is_signature_wait(metadata):
                    self.waits.append([now, None])
            self._reach("destroying" if self.operation == "destroy" else phase_of(metadata.type), now)
        elif event.res_outputs_event is not None:
            metadata = event.res_outputs_event.metadata
            # A step is done once it has started: a preview also reports outputs of unchanged resources.
            if metadata.urn in self.started_urns:
                self.done_urns.add(metadata.urn)
                if _is_signature_wait(metadata) and self.waits and self.waits[-1][1] is None:
                    self.waits[-1][1] = now
            # The DaemonSet's step returns once its pods are ready: the nodes are live in the cluster. Unless
            # it was not awaited: then the nodes wait for the seed's signature.
            if metadata.type == DAEMONSET and self.operation == "up":
                self._reach("signing" if _not_awaited(metadata) else "joined", now)
        elif event.diagnostic_event is not None and event.diagnostic_event.severity == "error":
            diagnostic = event.diagnostic_event
            self.diagnostics.append((diagnostic.urn or "", _last_lines(diagnostic.message)))
            self.error = self.engine_error()

    def engine_error(self) -> str:
        """The engine's first error on a resource (the cause); the stack's own summary only if there is none."""
        for urn, message in self.diagnostics:
            if message and STACK not in urn:
                return message
        return self.diagnostics[-1][1] if self.diagnostics else ""

    def finish(self, now: float, error: Optional[BaseException] = None) -> None:
        self.finished_at = now
        for span in self.runs[-1:] + self.waits[-1:]:
            if span[1] is None:
                span[1] = now
        if error is None:
            self.status = "succeeded"
            if self.phase != "signing":
                self._reach(FINAL_PHASE[self.operation], now)
        elif isinstance(error, CloudFault):
            self.status, self.error = "failed", str(error)
        elif isinstance(error, StackLocked):  # the tool's own words, holders named (federation/locks.py)
            self.status, self.error = "refused", str(error)
        elif any(marker in str(error) for marker in LOCKED):
            self.status, self.error = "refused", lock_holders(str(error))
        else:
            self.status = "failed"
            # The Automation API's exception ends with the run's summary; the engine said what went wrong.
            self.error = self.engine_error() or _last_lines(str(error)) or type(error).__name__

    @property
    def elapsed(self) -> Optional[float]:
        if self.started_at is None:
            return None
        return (self.finished_at if self.finished_at is not None else self.started_at) - self.started_at

    def elapsed_at(self, now: float) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at if self.finished_at is not None else now) - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack, "status": self.status, "phase": self.phase, "started_at": self.started_at,
            "operation": self.operation, "finished_at": self.finished_at, "elapsed": self.elapsed,
            "resources_done": self.resources_done, "resources_started": self.resources_started,
            "phases": dict(self.phases), "error": self.error,
            "runs": [list(r) for r in self.runs], "waits": [list(w) for w in self.waits],
            "engine_seconds": self.engine_seconds(), "seed_wait_seconds": self.seed_wait_seconds(),
            "seed_waits": self.seed_waits(),
        }


def summary_order(cloud: dict[str, Any]) -> tuple:
    """Clouds that joined, fastest first, then the others: the order of the terminal summary and the report."""
    return (cloud["status"] != "succeeded", cloud.get("elapsed") is None, cloud.get("elapsed") or 0.0, cloud["stack"])


def _span(span: list[Optional[float]], now: Optional[float]) -> float:
    end = span[1] if span[1] is not None else now
    return max(0.0, end - span[0]) if end is not None else 0.0


SIGNATURE_WAIT_NAME = "-signature"  # components/cockroach.py: the member's SignatureWait


def _is_signature_wait(metadata: Any) -> bool:
    return metadata.type == "pulumi-python:dynamic:Resource" and metadata.urn.endswith(SIGNATURE_WAIT_NAME)


def _not_awaited(metadata: Any) -> bool:
    inputs = getattr(getattr(metadata, "new", None), "inputs", None) or {}
    annotations = (inputs.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get("pulumi.com/skipAwait", "")).lower() == "true"


def _last_lines(text: str, count: int = 5) -> str:
    lines = [line.rstrip() for line in (text or "").strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:])


def lock_holders(message: str) -> str:
    """Who holds the stack, from the CLI's refusal: each lock's "created by user@host (pid N) at time" line."""
    holders = [line.strip() for line in message.splitlines() if "created by" in line]
    return ("another run holds this stack" + (": " + "; ".join(holders) if holders else "")
            + ". Nothing was started; run again once it ends (if its process is gone, `pulumi cancel` "
            "releases the lock)")
