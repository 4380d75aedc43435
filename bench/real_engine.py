"""Benchmark on the real engine against the local cloud (issue 8's goals):

1. per stack, `pulumi preview` wall time next to the same CLI previewing an empty program (the floor);
   goal: at most 3x the floor;
2. 16 concurrent previews through `python -m federation preview`: makespan / slowest single preview,
   and peak memory of the whole process tree (sum of RSS, and of PSS, which counts shared pages once);
   goal: within 6 GiB in total;
3. a second `up` of an unchanged stack: goal 0 changes to its OpenStack resources.

Run it with scripts/bench.sh (it needs the integration tier's toolchain and network namespace).
Prints a Markdown report and writes it, with the raw numbers as JSON, to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federation.runner import stack_names  # noqa: E402
from tests.integration import overlay  # noqa: E402
from tests.integration.project import ROOT, Project, start_local_cloud, step_ops  # noqa: E402

GIB = 1024 ** 3
SEED = "seed"


def timed(action) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def empty_program(directory: Path) -> Path:
    """The floor: a Python program that declares nothing, on the same CLI, venv and backend."""
    directory.mkdir(parents=True)
    (directory / "Pulumi.yaml").write_text(
        "name: bench-floor\nruntime:\n  name: python\n  options:\n"
        f"    toolchain: pip\n    virtualenv: {ROOT / 'venv'}\n")
    (directory / "__main__.py").write_text("import pulumi  # declares nothing\n")
    return directory


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _memory(pids: list[int]) -> tuple[int, int]:
    """Sum of RSS and of PSS, in bytes, over the given processes (gone ones count 0)."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def peak_tree_memory(command: list[str], **popen) -> tuple[float, int, int, subprocess.CompletedProcess]:
    """Runs a command; returns its wall time, peak summed RSS and PSS of its process tree, and the result."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    peaks = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss, pss = _memory(_tree(process.pid))
            peaks[0], peaks[1] = max(peaks[0], rss), max(peaks[1], pss)
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    return elapsed, peaks[0], peaks[1], subprocess.CompletedProcess(command, process.returncode, output, "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "crdb-federation-bench")
    parser.add_argument("--floor-runs", type=int, default=3)
    parser.add_argument("--skip-up", action="store_true", help="previews only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.out))
    pulumi = subprocess.run(["which", "pulumi"], capture_output=True, text=True, check=True).stdout.strip()
    cloud = start_local_cloud(work / "localcloud-start.log")
    state = work / "state"
    state.mkdir()
    project = Project(overlay.copy_project(ROOT, work / "project"), state, cloud, pulumi)
    floor = Project(empty_program(work / "floor"), state, cloud, pulumi)
    results: dict = {"cpus": os.cpu_count(), "pulumi": pulumi}

    floor.select("floor")
    floor.run("preview", stack="floor")  # warm-up: plugin and language-host caches
    results["floor_s"] = statistics.median(timed(lambda: floor.run("preview", stack="floor"))
                                           for _ in range(args.floor_runs))

    stacks = stack_names()
    for stack in stacks:
        project.select(stack)
    project.run("preview", stack=SEED)  # warm-up
    results["preview_s"] = {stack: timed(lambda: project.run("preview", stack=stack)) for stack in stacks}

    tool = [str(ROOT / "venv" / "bin" / "python"), "-m", "federation", "preview", "--no-dashboard",
            "--parallel", "16", "--runs-dir", str(work / "runs"), "--passphrases", str(project.passphrases)]
    elapsed, rss, pss, done = peak_tree_memory(tool, cwd=project.directory,
                                               env={**project.env(), "PATH": f"{Path(pulumi).parent}:{os.environ['PATH']}"})
    (work / "concurrent-preview.log").write_text(done.stdout)
    results["concurrent"] = {"stacks": len(stacks), "exit": done.returncode, "makespan_s": elapsed,
                             "peak_rss_bytes": rss, "peak_pss_bytes": pss}

    if not args.skip_up:
        project.run("config", "set", "crdb-federation:apiReadyTimeout", "30", stack=SEED)
        project.run("config", "set", "--secret", "crdb-federation:enterpriseLicense", "crl-0-bench", stack=SEED)
        try:
            runs = []
            for _ in range(2):
                started = time.monotonic()
                events, _ = project.events("up", SEED, "--yes", "--skip-preview")
                runs.append({"elapsed_s": time.monotonic() - started,
                             "openstack": dict(Counter(step_ops(events, "openstack:").values())),
                             "all": dict(Counter(step_ops(events).values()))})
            results["up"] = runs
        finally:
            # Its nodes never ran (the local cloud boots nothing): nothing to decommission.
            project.run("destroy", "--yes", "--skip-preview", stack=SEED, check=False,
                        env={"CRDB_FORCE_REMOVAL": "true"})

    (work / "results.json").write_text(json.dumps(results, indent=2))
    report = render(results)
    (work / "report.md").write_text(report)
    print(report)
    print(f"\nraw numbers and logs: {work}")
    return 0


def render(results: dict) -> str:
    floor = results["floor_s"]
    lines = [f"Empty-program floor: {floor:.1f} s (median of runs on {results['cpus']} CPUs)", "",
             "| stack | preview (s) | x floor |", "|---|---:|---:|"]
    for stack, seconds in results["preview_s"].items():
        lines.append(f"| {stack} | {seconds:.1f} | {seconds / floor:.2f} |")
    slowest = max(results["preview_s"].values())
    concurrent = results["concurrent"]
    lines += ["", f"Slowest single preview: {slowest:.1f} s; worst ratio to floor: {slowest / floor:.2f} (goal <= 3)",
              "", f"{concurrent['stacks']} concurrent previews through the federation tool (exit {concurrent['exit']}):",
              f"- makespan {concurrent['makespan_s']:.1f} s = {concurrent['makespan_s'] / slowest:.2f} x the slowest single preview",
              f"- peak memory of the process tree: RSS {concurrent['peak_rss_bytes'] / GIB:.2f} GiB "
              f"({concurrent['peak_rss_bytes'] / concurrent['stacks'] / GIB * 1024:.0f} MiB per stack), "
              f"PSS {concurrent['peak_pss_bytes'] / GIB:.2f} GiB (goal <= 6 GiB)"]
    for index, run in enumerate(results.get("up", []), 1):
        lines.append(f"- `up` #{index} of {SEED}: {run['elapsed_s']:.0f} s; OpenStack steps {run['openstack']}; "
                     f"all steps {run['all']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
