"""The join's critical path and how its cost grows, on the real engine against the local cloud and the k3s
stand-in (issue 21).

1. Phases of one member's join, with the seed and other members joining at once, through the tool's two-step
   path (`join --two-step`: the member's `up`, the seed's signing `up`, the member's second `up`) and through
   the signer (`join`: one member `up`, which waits for the signature the seed makes while the member builds).
   Both next to the floor: the same member's single `up` whose signature exists the moment it asks. (The floor
   is signed by this script with the seed's CA, outside the seed's `up`: explicit configuration cannot give a
   fresh stack its certificates, since its key is made in that `up`.)
2. Growth: the seed plus 1, 3, 7 and 15 members at once through the tool: makespan, each cloud's join,
   CPU-seconds of the whole machine, peak PSS by kind (the control-plane stand-ins apart).

    scripts/bench.sh join [--counts 1,3,7,15] [--nodes 1] [--out bench-results]

Prints a Markdown report and writes it, with the raw numbers as JSON, to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tier_memory import kind_of, processes, pss  # noqa: E402
from components.signature import SIGNATURES_DIR, WAIT_SECONDS, requests_digest, write_signature  # noqa: E402
from federation.runner import PulumiStack, Run, Signer, stack_names  # noqa: E402
from tests.integration import overlay  # noqa: E402
from tests.integration.project import ROOT, Project, start_local_cloud  # noqa: E402

SEED = "seed"
FORCED = {"CRDB_FORCE_REMOVAL": "true"}
GIB = 1024 ** 3


# ------------------------------------------------------------------------------------------- measuring
class Sampler:
    """Peak PSS of every process by kind, and the machine's CPU-seconds, while a command runs."""

    def __init__(self, every: float = 2.0):
        self.every, self.peaks, self.total_peak = every, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _cpu_seconds() -> float:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
        return busy / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        while not self._stop.is_set():
            by_kind: dict[str, int] = {}
            for pid, command in processes().items():
                size = pss(pid)
                if size:
                    by_kind[kind_of(command)] = by_kind.get(kind_of(command), 0) + size
            for kind, size in by_kind.items():
                self.peaks[kind] = max(self.peaks.get(kind, 0), size)
            self.total_peak = max(self.total_peak, sum(by_kind.values()))
            self._stop.wait(self.every)

    def __enter__(self) -> "Sampler":
        self.cpu0, self.t0 = self._cpu_seconds(), time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu = self._cpu_seconds() - self.cpu0
        self.wall = time.monotonic() - self.t0


def cloud_rows(timeline_file: Path) -> dict[str, dict]:
    return {c["stack"]: c for c in json.loads(timeline_file.read_text())["clouds"]}


def ready_seconds(cloud: dict) -> float:
    """From the cloud's start to its CockroachDB pods Ready (the DaemonSet awaited: phase `joined`); a later
    converging `up` only updates join lists."""
    ready = (cloud.get("phases") or {}).get("joined")
    return ready - cloud["started_at"] if ready is not None else cloud["elapsed"]


def member_joins(clouds: dict[str, dict]) -> list[float]:
    """Every member's join, shortest first (the seed's own row left out)."""
    return sorted(ready_seconds(c) for name, c in clouds.items() if name != SEED)


def phases_of(cloud: dict) -> dict[str, float]:
    """A member's join split into its own engine runs and its waits for the seed. Two-step: the seed signs
    between the member's ups and the pods are Ready in the second. Signer: the seed signs while the first up
    waits in it, the pods are Ready in that up, and the second only updates the join lists."""
    runs, waits = cloud.get("runs") or [], cloud.get("waits") or []
    ready = ready_seconds(cloud)
    row = {"join": ready, "engine": cloud["engine_seconds"], "seed wait": cloud["seed_wait_seconds"],
           "first up": runs[0][1] - runs[0][0] if runs else 0.0,
           "ready in": "first up" if runs and ready <= runs[0][1] - cloud["started_at"] + 1 else "second up"}
    if len(runs) > 1:
        row["seed signing"] = runs[1][0] - runs[0][1]
        row["second up"] = runs[1][1] - runs[1][0]
    if waits:
        row["wait in its up"] = sum(w[1] - w[0] for w in waits if w[1] is not None)
    return row


# ------------------------------------------------------------------------------------------- the federation
class Bench:
    def __init__(self, base: Path, nodes: int):
        self.base, self.nodes = base, nodes
        binaries = subprocess.run(["bash", str(ROOT / "scripts" / "install-kubernetes.sh")], capture_output=True,
                                  text=True, check=True).stdout.strip()
        cloud = start_local_cloud(base / "localcloud.log")
        self.standin = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.standin", "--state", str(base / "standin"), "--binaries",
             binaries, "--cloud", cloud.name], cwd=ROOT, stdout=open(base / "standin.log", "w"),
            stderr=subprocess.STDOUT, env={**os.environ, "OS_CLIENT_CONFIG_FILE": str(cloud.clouds_yaml)})
        (base / "state").mkdir()
        self.project = Project(overlay.copy_project(ROOT, base / "project"), base / "state", cloud,
                               shutil.which("pulumi"))
        self.pool = [s for s in stack_names() if s != SEED]

    def seed_up(self) -> float:
        p = self.project
        p.select(SEED)
        p.run("config", "set", "crdb-federation:apiReadyTimeout", "300", stack=SEED)
        p.run("config", "set", "--secret", "crdb-federation:enterpriseLicense", "crl-0-bench", stack=SEED)
        started = time.monotonic()
        p.run("up", "--yes", "--skip-preview", stack=SEED, timeout=1800)
        elapsed = time.monotonic() - started
        prints = p.tool("fingerprints").stdout
        self.pins = dict(line.split(": ", 1) for line in prints.splitlines() if line.startswith("crdb-federation:"))
        for stack in self.pool:
            p.select(stack)
            p.run("config", "set", "crdb-federation:apiReadyTimeout", "300", stack=stack)
            p.run("config", "set", "crdb-federation:nodeCount", str(self.nodes), stack=stack)
            for key, values in self.pins.items():
                for index, fingerprint in enumerate(json.loads(values)):
                    p.run("config", "set", "--path", f"{key}[{index}]", fingerprint, stack=stack)
        return elapsed

    def join(self, members: list[str], *extra: str) -> dict:
        runs = self.base / f"runs-{len(members)}{''.join(extra)}"
        with Sampler() as sampled:
            done = self.project.tool("join", *members, "--no-dashboard", "--skip-preflight", "--runs-dir", str(runs),
                                     *extra, timeout=3600)
        timeline_file = next(iter(sorted(runs.glob("*-join/*.json"))), None)
        if done.returncode != 0 or timeline_file is None:
            raise RuntimeError(f"join {members} failed:\n{done.stdout[-4000:]}{done.stderr[-2000:]}")
        return {"clouds": cloud_rows(timeline_file), "makespan": sampled.wall, "cpu_seconds": sampled.cpu,
                "peak_pss": sampled.peaks, "peak_pss_total": sampled.total_peak, "report": str(
                    timeline_file.with_suffix(".html"))}

    def floor(self, members: list[str]) -> dict[str, dict]:
        """Each member's single `up`, its signature given the moment its requests exist (no seed `up`), all at
        once: alone, and beside as many others as the paths it is compared with."""
        directory = self.base / f"floor-signatures-{len(members)}"
        stacks = [PulumiStack(member, work_dir=self.project.directory, environment={
            **self.project.env(member), SIGNATURES_DIR: str(directory), WAIT_SECONDS: "600"}) for member in members]
        run = Run(members, "up", self.base / f"floor-logs-{len(members)}")
        with InstantSigner(run, self.ca(), [LocalMember(stack) for stack in stacks], directory), \
                ThreadPoolExecutor(max_workers=len(stacks)) as pool:
            list(pool.map(run.execute, stacks))
        clouds = {member: run.progress[member].to_dict() for member in members}
        failed = {member: cloud["error"] for member, cloud in clouds.items() if cloud["status"] != "succeeded"}
        if failed:
            raise RuntimeError(f"the floor's up failed: {failed}")
        return clouds

    def ca(self) -> dict[str, str]:
        """The seed's two CAs, from its state (this script runs every stack, as one operator)."""
        exported = json.loads(self.project.run("stack", "export", "--show-secrets", stack=SEED).stdout)
        found = {}
        for resource in exported["deployment"]["resources"]:
            outputs = resource.get("outputs") or {}
            for which in ("node", "client"):
                if resource["urn"].endswith(f"-authority-{which}-ca-key"):
                    found[f"{which} key"] = _plain(outputs["privateKeyPem"])
                if resource["urn"].endswith(f"-authority-{which}-ca-cert"):
                    found[f"{which} cert"] = _plain(outputs["certPem"])
        return found

    def destroy(self, members: list[str]) -> None:
        def one(stack: str) -> None:
            self.project.run("destroy", "--yes", "--skip-preview", stack=stack, check=False, timeout=1800, env=FORCED)

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(one, members))
        # The seed pins each member's key at its first signature (a Stash per member): only its `up` without
        # them forgets those pins (the step `remove` names next); the next round brings new keys under those names.
        self.project.run("config", "rm", "crdb-federation:members", stack=SEED, check=False)
        self.project.run("up", "--yes", "--skip-preview", stack=SEED, timeout=1800)

    def close(self) -> None:
        self.destroy(self.pool)
        self.project.run("destroy", "--yes", "--skip-preview", stack=SEED, check=False, timeout=1800, env=FORCED)
        self.standin.terminate()
        self.standin.wait(timeout=120)


def _plain(value) -> str:
    """A secret as `stack export --show-secrets` writes it: {"<sig>": …, "plaintext": "\"PEM\""}."""
    if isinstance(value, dict) and "plaintext" in value:
        return json.loads(value["plaintext"])
    return value


class LocalMember:
    """What the Signer needs of a member, for a stack this script runs."""

    def __init__(self, stack: PulumiStack):
        self.name, self._stack = stack.name, stack

    def qualified_name(self) -> str:
        return self._stack.qualified_name()

    def member_name(self) -> str:
        return self._stack.member_name()


class InstantSigner(Signer):
    """Signs each request the moment it arrives, with the seed's CA, outside any seed `up` (the floor)."""

    GATHER_SECONDS = 0.0

    def __init__(self, run: Run, ca: dict[str, str], members, directory: Path):
        super().__init__(run, None, members, directory)
        self.ca_keys = ca

    def _prepare_seed(self) -> None:
        """No seed `up` here."""

    def _sign(self, batch: list[str]) -> None:
        self.taken.update(batch)
        for name in batch:
            node, client, ops = (self.requests[name][kind] for kind in ("node", "client", "ops"))
            write_signature(self.directory, self.members[name].qualified_name(), requests_digest(node, client, ops),
                            node=_sign(node, self.ca_keys["node cert"], self.ca_keys["node key"], server=True),
                            client=_sign(client, self.ca_keys["client cert"], self.ca_keys["client key"]),
                            ops=_sign(ops, self.ca_keys["client cert"], self.ca_keys["client key"]))


def _sign(request_pem: str, ca_pem: str, key_pem: str, server: bool = False) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    request = x509.load_pem_x509_csr(request_pem.encode())
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    uses = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    builder = (x509.CertificateBuilder().subject_name(request.subject).issuer_name(ca.subject)
               .public_key(request.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage(uses), critical=False))
    for extension in request.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


# ------------------------------------------------------------------------------------------- the report
def render(results: dict) -> str:
    floors = sorted(results["floors"].items(), key=lambda item: int(item[0]))
    alone, at_once = floors[0][1]["join"], floors[-1][1]["join"]
    lines = [f"# The join's critical path (real engine, local cloud, {results['nodes']} node(s) per member)", "",
             f"Seed `up`: {results['seed_up']:.1f} s. The floor is the member's single `up`, signed the moment it "
             f"asks (no seed `up`), alone and beside as many members as the paths ({floors[0][1]['member']}).", "",
             "## One member's join (start to pods Ready)", "",
             "| path | clouds at once | join s | ÷ floor alone | ÷ floor at once | every member's join s | Ready in | "
             "first up s | waited in it s | between its ups s | second up s | own engine s | waiting for the seed s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [(f"floor, {count} at once" if int(count) > 1 else "floor, alone", {"clouds": int(count), **row})
            for count, row in floors] + list(results["phases"].items())
    for label, row in rows:
        lines.append(f"| {label} | {row['clouds']} | {row['join']:.1f} | {row['join'] / alone:.2f} | "
                     f"{row['join'] / at_once:.2f} | {' / '.join(f'{j:.1f}' for j in row.get('joins', []))} | "
                     f"{row['ready in']} | {row['first up']:.1f} | "
                     f"{row.get('wait in its up', 0):.1f} | {row.get('seed signing', 0):.1f} | "
                     f"{row.get('second up', 0):.1f} | {row['engine']:.1f} | {row['seed wait']:.1f} |")
    lines += ["", "## Growth: the seed plus N members at once through the tool", "",
              "| members | makespan s | joins min / median / max s | CPU-s | CPU-s / 2 | PSS total GiB | "
              "control planes GiB | engines GiB | local OpenStack GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for count, row in results["growth"].items():
        joins = member_joins(row["clouds"])
        peaks = row["peak_pss"]
        lines.append(f"| {count} | {row['makespan']:.1f} | {joins[0]:.1f} / {joins[len(joins) // 2]:.1f} / "
                     f"{joins[-1]:.1f} | {row['cpu_seconds']:.0f} | {row['cpu_seconds'] / 2:.0f} | "
                     f"{row['peak_pss_total'] / GIB:.2f} | {peaks.get('control planes', 0) / GIB:.2f} | "
                     f"{peaks.get('Pulumi engines', 0) / GIB:.2f} | {peaks.get('local OpenStack', 0) / GIB:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,3,7,15")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per member (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c]
    base = Path(tempfile.mkdtemp(prefix="crdb-join-bench-"))
    bench = Bench(base, args.nodes)
    results: dict = {"nodes": args.nodes, "floors": {}, "phases": {}, "growth": {}}
    try:
        results["seed_up"] = bench.seed_up()
        three = bench.pool[:3]
        member = three[0]
        for members in ([member], three):
            clouds = bench.floor(members)
            results["floors"][len(members)] = {"member": member, **phases_of(clouds[member]),
                                               "joins": member_joins(clouds)}
            bench.destroy(members)
        for label, extra in (("two-step (before)", ("--two-step",)), ("signer (after)", ())):
            joined = bench.join(three, *extra)
            results["phases"][label] = {"clouds": len(three) + 1, **phases_of(joined["clouds"][member]),
                                        "joins": member_joins(joined["clouds"])}
            if not extra:
                results["growth"][3] = joined
            bench.destroy(three)
        for count in counts:
            if count not in results["growth"]:
                results["growth"][count] = bench.join(bench.pool[:count])
                bench.destroy(bench.pool[:count])
    finally:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "join_critical_path.json").write_text(json.dumps(results, indent=1, default=str))
        bench.close()
    report = render(results)
    (args.out / "join_critical_path.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
