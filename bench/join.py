"""Benchmark: concurrent joins. N fake stacks of known durations run through the real orchestrator;
prints the makespan divided by the slowest single join for N = 1, 4, 16 (goal: at most 1.1 at 16).
Run: venv/bin/python bench/join.py [--repeat N]"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federation.runner import Run, run_concurrently  # noqa: E402
from tests.fake_stacks import FakeStack  # noqa: E402


def makespan_ratio(count: int, parallelism: int, rng: random.Random) -> tuple[float, float, float]:
    durations = [rng.uniform(1.0, 2.0) for _ in range(count)]
    stacks = [FakeStack(f"cloud{index}", duration) for index, duration in enumerate(durations)]
    with tempfile.TemporaryDirectory() as directory:
        run = Run([s.name for s in stacks], "up", Path(directory) / "logs")
        start = time.monotonic()
        run_concurrently(run, stacks, parallelism)
        makespan = time.monotonic() - start
    assert all(p.status == "succeeded" for p in run.progress.values())
    return makespan, max(durations), makespan / max(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=16, help="the tool's default parallelism")
    args = parser.parse_args()
    rng = random.Random(2017)
    print(f"{'N':>3}{'makespan s':>12}{'slowest s':>11}{'ratio':>8}   (worst of {args.repeat})")
    for count in (1, 4, 16):
        results = [makespan_ratio(count, args.parallel, rng) for _ in range(args.repeat)]
        makespan, slowest, ratio = max(results, key=lambda r: r[2])
        print(f"{count:>3}{makespan:>12.3f}{slowest:>11.3f}{ratio:>8.3f}")


if __name__ == "__main__":
    main()
