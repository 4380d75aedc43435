"""A run's timeline as JSON, and a self-contained HTML report that charts every cloud's join."""

from __future__ import annotations

import datetime
import html
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from .progress import FINAL_PHASE, PHASES, CloudProgress, summary_order

# "signing": built, its nodes waiting for their certificates (between a member's runs, or within one).
PHASE_COLOURS = {"network": "#4e79a7", "servers": "#f28e2b", "kubernetes": "#76b7b2", "cockroachdb": "#59a14f",
                 "signing": "#999999"}
WAIT_COLOUR = "#b07aa1"  # waiting for the seed's signature: between a member's runs, or within one
FAILED_COLOUR = "#e15759"
JOINED_COLOUR = "#222222"


def timeline(operation: str, started_wall: float, clouds: Sequence[CloudProgress]) -> dict[str, Any]:
    return {
        "operation": operation,
        "started": datetime.datetime.fromtimestamp(started_wall, datetime.timezone.utc).isoformat(timespec="seconds"),
        "clouds": [c.to_dict() for c in clouds],
    }


def save(record: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = record["started"].replace(":", "").replace("+0000", "Z")
    path = directory / f"{stamp}-{record['operation']}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def by_elapsed(clouds: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(clouds, key=summary_order)


def _segments(cloud: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(phase, start, end) for each phase the cloud reached, in seconds since the run started; the first
    phase starts with the cloud, each phase ends where the next begins, the last where the cloud finished."""
    begin, end = cloud.get("started_at"), cloud.get("finished_at")
    if begin is None or end is None:
        return []
    reached = sorted((t, p) for p, t in cloud.get("phases", {}).items() if p not in FINAL_PHASE.values())
    segments = []
    for index, (t, phase) in enumerate(reached):
        start = begin if index == 0 else t
        stop = reached[index + 1][0] if index + 1 < len(reached) else end
        segments.append((phase, start, stop))
    return segments


def _final_reached(cloud: dict[str, Any]) -> Optional[float]:
    """When a succeeded cloud reached its final phase, if before its run ended: signed early, a member's pods
    are Ready in its first `up`, and a later `up` only updates the join lists."""
    reached = (cloud.get("phases") or {}).get(FINAL_PHASE[cloud.get("operation", "up")])
    return reached if reached is not None and reached < cloud["finished_at"] - 1 else None


def _final_after(cloud: dict[str, Any]) -> float:
    """Seconds from the cloud's start to its final phase (its pods Ready, for an `up`): the join time."""
    reached = _final_reached(cloud)
    return reached - (cloud.get("started_at") or 0.0) if reached is not None else cloud["elapsed"]


def render_report(record: dict[str, Any]) -> str:
    """One HTML file with inline CSS and SVG: opens without a network."""
    clouds = by_elapsed(record["clouds"])
    span = max([c.get("finished_at") or 0.0 for c in clouds] + [1.0])
    width, label_width, row, top = 900, 140, 28, 40
    scale = (width - label_width - 120) / span
    height = top + row * len(clouds) + 40
    e = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="join timeline">',
    ]
    for tick in range(0, int(span) + 1, max(1, int(span // 10) or 1)):
        x = label_width + tick * scale
        parts.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{height - 30}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{top - 12}" font-size="10" text-anchor="middle">{tick}s</text>')
    for index, cloud in enumerate(clouds):
        y = top + index * row
        parts.append(f'<g class="cloud" data-stack="{e(cloud["stack"])}" data-status="{e(cloud["status"])}">')
        parts.append(f'<text x="0" y="{y + 17}" font-size="13">{e(cloud["stack"])}</text>')
        for phase, start, stop in _segments(cloud):
            colour = PHASE_COLOURS.get(phase, PHASE_COLOURS["signing"])
            parts.append(
                f'<rect class="phase" data-phase="{phase}" x="{label_width + start * scale:.1f}" y="{y + 4}" '
                f'width="{max((stop - start) * scale, 1):.1f}" height="{row - 8}" fill="{colour}">'
                f'<title>{e(cloud["stack"])} {phase}: {start:.1f}s to {stop:.1f}s</title></rect>')
        for start, stop in [w for w in cloud.get("seed_waits") or [] if w[1] > w[0]]:
            parts.append(
                f'<rect class="seed-wait" x="{label_width + start * scale:.1f}" y="{y + row - 9}" '
                f'width="{max((stop - start) * scale, 1):.1f}" height="5" fill="{WAIT_COLOUR}">'
                f'<title>{e(cloud["stack"])} waiting for the seed: {start:.1f}s to {stop:.1f}s</title></rect>')
        finished = cloud.get("finished_at")
        if finished is not None:
            x = label_width + finished * scale
            if cloud["status"] == "succeeded":
                reached = _final_reached(cloud)
                at = label_width + reached * scale if reached is not None else x
                parts.append(f'<circle class="joined" cx="{at:.1f}" cy="{y + row / 2}" r="5" fill="{JOINED_COLOUR}"/>')
                label = f'{FINAL_PHASE[cloud.get("operation", "up")]} {_final_after(cloud):.1f}s'
            else:
                parts.append(f'<rect class="failed" x="{x - 4:.1f}" y="{y + 6}" width="8" height="{row - 12}" '
                             f'fill="{FAILED_COLOUR}"/>')
                label = cloud["status"]  # failed, or refused (another run held the stack)
            parts.append(f'<text x="{x + 9:.1f}" y="{y + 17}" font-size="11">{label}</text>')
        parts.append("</g>")
    legend_y = height - 14
    for index, (phase, colour) in enumerate([*PHASE_COLOURS.items(), ("waiting for the seed", WAIT_COLOUR)]):
        x = label_width + index * 120
        parts.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 16}" y="{legend_y}" font-size="11">{phase}</text>')
    parts.append("</svg>")

    rows = []
    for cloud in clouds:
        elapsed = f'{cloud["elapsed"]:.1f}' if cloud.get("elapsed") is not None else "-"
        final = f"{_final_after(cloud):.1f}" if cloud["status"] == "succeeded" and cloud.get("finished_at") else "-"
        waited, engine = (f'{cloud.get(k) or 0.0:.1f}' for k in ("seed_wait_seconds", "engine_seconds"))
        rows.append(f'<tr data-stack="{e(cloud["stack"])}"><td>{e(cloud["stack"])}</td><td>{e(cloud["status"])}</td>'
                    f'<td>{final}</td><td>{elapsed}</td><td>{waited}</td><td>{engine}</td>'
                    f'<td><pre>{e(cloud.get("error") or "")}</pre></td></tr>')
    succeeded = sum(1 for c in clouds if c["status"] == "succeeded")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>crdb-federation {e(record['operation'])} {e(record['started'])}</title>
<style>body{{font-family:sans-serif;margin:24px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}pre{{margin:0;white-space:pre-wrap}}</style>
</head><body>
<h1>crdb-federation: {e(record['operation'])} of {len(clouds)} clouds</h1>
<p id="summary">Started {e(record['started'])}; {succeeded} of {len(clouds)} succeeded; phases: {', '.join(PHASES)}.</p>
{''.join(parts)}
<table><thead><tr><th>cloud</th><th>status</th><th>{e(FINAL_PHASE[record['operation']])} after s</th><th>whole run s</th><th>waiting for the seed</th><th>in its own engine runs</th><th>last error</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
</body></html>
"""
