"""What one cloud's `pulumi up` is doing, from the engine's events (pure: no Pulumi CLI needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

PHASES = ("network", "servers", "kubernetes", "cockroachdb", "joined")
STATEFULSET = "kubernetes:apps/v1:StatefulSet"


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
    status: str = "waiting"  # waiting | running | succeeded | failed
    phase: str = ""
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    resources_done: int = 0
    resources_started: int = 0
    phases: dict[str, float] = field(default_factory=dict)  # phase -> when it was first reached
    error: str = ""

    def start(self, now: float) -> None:
        self.status, self.started_at = "running", now

    def _reach(self, phase: Optional[str], now: float) -> None:
        if phase is None:
            return
        # Phases only move forward: a late key or secret does not send a cloud back.
        if not self.phase or PHASES.index(phase) > PHASES.index(self.phase):
            self.phase = phase
        self.phases.setdefault(phase, now)

    def on_event(self, event: Any, now: float) -> None:
        """Feeds one pulumi.automation EngineEvent."""
        if event.resource_pre_event is not None:
            metadata = event.resource_pre_event.metadata
            if metadata.op not in ("same", "read") and metadata.type != "pulumi:pulumi:Stack":
                self.resources_started += 1
            self._reach(phase_of(metadata.type), now)
        elif event.res_outputs_event is not None:
            metadata = event.res_outputs_event.metadata
            if metadata.op not in ("same", "read") and metadata.type != "pulumi:pulumi:Stack":
                self.resources_done += 1
            # The StatefulSet's create returns once its pods are ready: the nodes are live in the cluster.
            if metadata.type == STATEFULSET:
                self._reach("joined", now)
        elif event.diagnostic_event is not None and event.diagnostic_event.severity == "error":
            self.error = _last_lines(event.diagnostic_event.message)

    def finish(self, now: float, error: Optional[BaseException] = None) -> None:
        self.finished_at = now
        if error is None:
            self.status = "succeeded"
            self._reach("joined", now)
        else:
            self.status = "failed"
            self.error = _last_lines(str(error)) or self.error or type(error).__name__

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
            "finished_at": self.finished_at, "elapsed": self.elapsed, "resources_done": self.resources_done,
            "phases": dict(self.phases), "error": self.error,
        }


def summary_order(cloud: dict[str, Any]) -> tuple:
    """Clouds that joined, fastest first, then the others: the order of the terminal summary and the report."""
    return (cloud["status"] != "succeeded", cloud.get("elapsed") is None, cloud.get("elapsed") or 0.0, cloud["stack"])


def _last_lines(text: str, count: int = 5) -> str:
    lines = [line.rstrip() for line in (text or "").strip().splitlines() if line.strip()]
    return "\n".join(lines[-count:])
