"""The live terminal dashboard: a row per cloud, and the summary sorted by elapsed time; the scene's table."""

from __future__ import annotations

from typing import Sequence

from rich.markup import escape
from rich.table import Table

from .preflight import Finding
from .progress import CloudProgress, phases_of, summary_order
from .web import elapsed, format_elapsed

STATUS_STYLE = {"waiting": "dim", "running": "yellow", "succeeded": "green", "failed": "bold red",
                "refused": "magenta"}


def progress_table(clouds: Sequence[CloudProgress], now: float, title: str) -> Table:
    table = Table(title=title, expand=False)
    numbers = ("resources", "elapsed", "seed wait", "engine")
    for column in ("cloud", "phase", *numbers, "status"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for cloud in clouds:
        phase = cloud.phase or "-"
        order = phases_of(cloud.operation)
        position = f" {order.index(cloud.phase) + 1}/{len(order)}" if cloud.phase in order else ""
        resources = f"{cloud.resources_done}/{cloud.resources_started}"
        started = cloud.started_at is not None
        table.add_row(cloud.stack, phase + position, resources, *(
            f"{seconds:6.1f}s" if started else "-" for seconds in (
                cloud.elapsed_at(now), cloud.seed_wait_seconds(now), cloud.engine_seconds(now))),
            f"[{STATUS_STYLE[cloud.status]}]{cloud.status}[/]")
    return table


def summary_table(clouds: Sequence[CloudProgress]) -> Table:
    """Clouds that joined by elapsed time, fastest first; then the others with their last error lines."""
    table = Table(title="summary (fastest first)")
    for column in ("#", "cloud", "status", "elapsed", "seed wait", "engine", "last error"):
        table.add_column(column)
    ordered = sorted(clouds, key=lambda c: summary_order(c.to_dict()))
    for rank, cloud in enumerate(ordered, 1):
        elapsed = f"{cloud.elapsed:.1f}s" if cloud.elapsed is not None else "-"
        table.add_row(str(rank), cloud.stack, f"[{STATUS_STYLE[cloud.status]}]{cloud.status}[/]", elapsed,
                      f"{cloud.seed_wait_seconds():.1f}s", f"{cloud.engine_seconds():.1f}s",
                      cloud.error if cloud.status in ("failed", "refused") else "")
    return table


FINDING_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def preflight_table(findings: Sequence[Finding]) -> Table:
    """One row per finding, grouped by stack in the order checked."""
    table = Table(title="preflight")
    for column in ("stack", "check", "status", "setting", "found", "what to do"):
        table.add_column(column, overflow="fold")
    for finding in findings:
        table.add_row(finding.stack, finding.check, f"[{FINDING_STYLE[finding.status]}]{finding.status}[/]",
                      finding.setting, finding.found, finding.todo)
    return table


SCENE_STYLE = {"not started": "dim", "building": "cyan", "waiting for signature": "yellow", "signed": "blue",
               "joined": "green", "failed": "bold red", "refused": "magenta"}


def scene_table(snapshot: dict) -> Table:
    """The web page's table (federation.web's snapshot) for a terminal: the same columns, the detail folded."""
    table = Table(title=escape(f"seed {snapshot['seed']}: {snapshot['service']}"))
    for column in ("cloud", "state", "phase", "elapsed", "cluster", "detail"):
        table.add_column(column, justify="right" if column == "elapsed" else "left",
                         overflow="fold", no_wrap=column != "detail")
    for row in snapshot["rows"]:
        cluster = row.get("cluster")
        view = (escape(f"{cluster['live']} live {cluster.get('locality') or '-'}") if cluster
                else "[dim]SQL not answering[/]")
        table.add_row(escape(row["stack"]), f"[{SCENE_STYLE.get(row['state'], 'default')}]{escape(row['state'])}[/]",
                      escape(row.get("phase") or "-"), format_elapsed(elapsed(row, snapshot["now"])), view,
                      escape(row.get("detail") or ""))
    return table
