"""Benchmark: how long the program takes to evaluate under mocks, against the bare SDK as the floor.

Prints, for every stack file and for one member at 3, 10, 30 and 100 nodes: seconds, resources
registered, the floor (the bare SDK registering as many trivial resources under the same mocks) and
the ratio; then the longest dependency chain from a first resource to the CockroachDB StatefulSet,
each link named. Run: venv/bin/python bench/evaluate.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pulumi
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from federation.runner import stack_names  # noqa: E402
from tests.fakes import FakeCloud, Registered  # noqa: E402
from tests.harness import PROJECT, run_program, stack_config  # noqa: E402

SEED_STACK = "organization/crdb-federation/seed"
MEMBER = {
    "cloud": "bench", "region": "RegionOne", "image": "ubuntu-24.04", "serverFlavor": "m1.large",
    "externalNetwork": "public", "adminCidrs": ["198.51.100.0/24"], "federationCidrs": ["0.0.0.0/0"],
    "seedStack": SEED_STACK,
}
# The links no member can avoid: where nodes live, the VM, its API, and the workload.
UNAVOIDABLE = ["Network", "Subnet", "Port", "Instance", "ApiReadiness", "Namespace", "StatefulSet"]


def timed_program(config, stack, seed_outputs=None):
    cloud = FakeCloud(real_crypto=False)
    start = time.perf_counter()
    run = run_program(config, stack=stack, stack_outputs={SEED_STACK: seed_outputs or {}}, cloud=cloud)
    return time.perf_counter() - start, run


def timed_floor(count):
    """The bare SDK: `count` trivial custom resources registered under the same mocks."""
    cloud = FakeCloud(real_crypto=False)
    cloud.install(project=PROJECT, stack="floor")

    def program():
        for index in range(count):
            pulumi.CustomResource("bench:index:Trivial", f"r{index}", {"value": index})

    start = time.perf_counter()
    _sync_await(run_pulumi_func(program))
    return time.perf_counter() - start


def best(samples):
    return min(samples), statistics.median(samples)


def kind(resource: Registered) -> str:
    if resource.type == "pulumi-python:dynamic:Resource":
        return "ApiReadiness"
    return resource.type.rsplit(":", 1)[-1]


def longest_chain(cloud: FakeCloud, target: Registered) -> list[Registered]:
    graph = cloud.by_urn()
    memo: dict[str, list[Registered]] = {}

    def chain(urn: str) -> list[Registered]:
        if urn not in memo:
            node = graph[urn]
            longest: list[Registered] = []
            for dep in node.dependencies:
                if dep in graph:
                    candidate = chain(dep)
                    if len(candidate) > len(longest):
                        longest = candidate
            memo[urn] = longest + [node]
        return memo[urn]

    return chain(target.urn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the best is reported)")
    args = parser.parse_args()

    print(f"{'case':<22}{'resources':>10}{'seconds':>10}{'median':>10}{'floor s':>10}{'ratio':>8}")
    seed_config = stack_config("seed")
    seed_outputs = None
    rows = []

    def measure(label, config, stack, outputs):
        samples, run = [], None
        for _ in range(args.repeat):
            seconds, run = timed_program(config, stack, outputs)
            samples.append(seconds)
        count = len(run.cloud.resources)
        floor = min(timed_floor(count) for _ in range(args.repeat))
        fastest, median = best(samples)
        rows.append((label, count, fastest, floor))
        print(f"{label:<22}{count:>10}{fastest:>10.3f}{median:>10.3f}{floor:>10.3f}{fastest / floor:>8.2f}", flush=True)
        return run

    seed_run = measure("stack seed", seed_config, "seed", None)
    seed_outputs = {name: seed_run.output(name) for name in seed_run.globals["_exports"]}
    for stack in stack_names():
        if stack != "seed":
            measure(f"stack {stack}", stack_config(stack), stack, seed_outputs)

    scale = []
    for nodes in (3, 10, 30, 100):
        run = measure(f"member {nodes} nodes", {**MEMBER, "nodeCount": nodes}, "bench", seed_outputs)
        scale.append((nodes, rows[-1][2], rows[-1][1]))

    (n0, t0, _), (n1, t1, _) = scale[0], scale[-1]
    per_node = (t1 - t0) / (n1 - n0)
    print(f"\nscaling: {per_node * 1000:.1f} ms per node; predicted {t0 + per_node * (30 - n0):.3f}s at 30 nodes, "
          f"measured {scale[2][1]:.3f}s")
    print(f"worst ratio to floor: {max(r[2] / r[3] for r in rows):.2f}")

    sts = run.cloud.one(":StatefulSet")
    links = longest_chain(run.cloud, sts)
    print(f"\nlongest dependency chain to the StatefulSet ({len(links)} links):")
    for index, link in enumerate(links, 1):
        print(f"  {index}. {kind(link):<22} {link.name}")
    work = [link for link in links if not link.type.startswith("pulumi:providers:")]
    print(f"links that call a cloud or Kubernetes API: {len(work)}; unavoidable: {len(UNAVOIDABLE)} "
          f"({' -> '.join(UNAVOIDABLE)}); providers only configure clients")
    server = run.cloud.named("bench-k3s-0")
    via_server = longest_chain(run.cloud, server)
    print("the parallel path through the server: " + " -> ".join(kind(link) for link in via_server) + " -> ApiReadiness")


if __name__ == "__main__":
    main()
