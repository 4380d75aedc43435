"""When each server of a first `nodeCount: 3` deploy starts and ends, on the real engine against the local cloud
(issue 27 row 12: agents used to wait for server 0's boot, because their Node registration was deleted with server
0 and the SDK awaits a `deleted_with` resource's URN, which is known only once that resource is created).

    scripts/bench.sh agents [--source DIR] [--rounds N]

`--source` is a checkout of the program to measure (default: this one), e.g. `git worktree add /tmp/before
<commit>` for the code before a change. Each round: a fresh copy of the project and state, one explicit member
(no seed needed), `pulumi up` with an engine event log, then destroy. Prints each server's create start and end
in seconds from the up's first event, and the agents' start after server 0's start.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration import overlay  # noqa: E402
from tests.integration.project import Project, explicit_member, start_local_cloud  # noqa: E402
from tests.test_trust import another_ca  # noqa: E402

SERVER = "openstack:compute/instance:Instance"
STACK = "rackspace"  # a stack no integration test uses
FORCED = {"CRDB_FORCE_REMOVAL": "true"}


def server_times(events: list[dict]) -> dict[str, tuple[float, float]]:
    """Server name -> (create started, create ended), in seconds from the first event (pure)."""
    first = min(e["timestamp"] for e in events)
    started, ended = {}, {}
    for event in events:
        for key, into in (("resourcePreEvent", started), ("resOutputsEvent", ended)):
            metadata = (event.get(key) or {}).get("metadata") or {}
            if metadata.get("type") == SERVER and metadata.get("op") == "create":
                into[metadata["urn"].rsplit("::", 1)[1]] = event["timestamp"] - first
    return {name: (started[name], ended.get(name, float("nan"))) for name in sorted(started)}


def one_round(source: Path, cloud, pulumi: str, seed: dict) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="agent-start-") as scratch:
        base = Path(scratch)
        state = base / "state"
        state.mkdir()
        project = Project(overlay.copy_project(source, base / "project"), state, cloud, pulumi)
        explicit_member(project, STACK, 3, seed)
        # No stand-in runs here: the Kubernetes API gate fails after its shortest wait, once every server is made.
        project.run("config", "set", "crdb-federation:apiReadyTimeout", "30", stack=STACK)
        try:
            events, output = project.events("up", STACK, "--yes", "--skip-preview")  # ends at the gate
            times = server_times(events)
            if len(times) != 3:
                raise SystemExit(f"expected 3 server creates, got {times}:\n{output[-3000:]}")
            return times
        finally:
            project.run("destroy", "--yes", "--skip-preview", stack=STACK, check=False, env=FORCED)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pulumi", default="pulumi")
    args = parser.parse_args()
    import shutil

    pulumi = shutil.which(args.pulumi) or args.pulumi
    here = Path(__file__).resolve().parent.parent
    for link in ("venv", "policy/venv"):  # another checkout runs with this one's virtualenvs
        if not (args.source / link).exists():
            (args.source / link).symlink_to(here / link)
    cloud = start_local_cloud(Path(tempfile.mkdtemp()) / "start.log")
    seed = {"federationJoin": ["198.18.0.250:26257"], "caCertificate": another_ca("crdb-federation node CA")[0],
            "clientCaCertificate": another_ca("crdb-federation client CA")[0]}
    waits = []
    for round_ in range(args.rounds):
        times = one_round(args.source, cloud, pulumi, seed)
        zero = times[f"{STACK}-k3s-0"]
        agents = {n: t for n, t in times.items() if not n.endswith("-k3s-0")}
        waits += [t[0] - zero[0] for t in agents.values()]
        print(f"round {round_ + 1} ({datetime.now():%H:%M:%S}): " + json.dumps(
            {n: [round(t[0], 1), round(t[1], 1)] for n, t in times.items()}))
    print(f"agents' create start after server 0's start: median {statistics.median(waits):.1f} s, "
          f"max {max(waits):.1f} s over {len(waits)} agents ({args.source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
