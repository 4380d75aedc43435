"""The scene's cost on the real engine, against the local cloud and the k3s stand-in: one operator runs every stack
on a local file backend, each stack with its own passphrase (tests/integration/project.py), members with
--nodes nodes (1 by default).

1. Each member's join against its floor. The floor is the member's own single `up` with its certificates given
   ahead: a first `up` makes its node key and certificate requests and what they need (identity_excludes), the
   seed signs them (a seed `up` given them as early requests, as the signing service does), then the member's full
   `up` is timed; its SignatureWait is not wanted (the seed's output answers already) so it never waits. Alone, and
   three at once. Then the join through the signing service (federation/service.py, in this process, with the
   seed's real `up`s): every member's `pulumi up` at once, for each of --counts.
2. The service's signing latency per member: from its first read of the member's complete requests to its first
   read of the seed's outputs answering them (the member's own poll adds at most components/signature.POLL_SECONDS).
3. CPU-seconds per member's join with the most members at once: the whole machine's (/proc/stat) over the members,
   and where they go, by kind of process (Sampler).
4. The seed's signing `up` for --paper admitted members ("paper members": stacks in the backend with real
   certificate requests and no cloud), with its engine's events: wall, CPU, per member and marginal, and where.

    scripts/bench.sh scene [--counts 1,3,15] [--paper 1,15,50,100] [--nodes 1] [--parts floors,joins,paper]
                           [--out bench-results]

Prints a Markdown report and writes it, with the raw numbers as JSON, to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.tier_memory import kind_of  # noqa: E402
from federation.backend_state import (  # noqa: E402
    DYNAMIC_TYPE, ORGANIZATION, PROJECT, REQUEST_SUFFIXES, SIGNATURE_WAIT_SUFFIX, BackendReader,
)
from federation.runner import PulumiStack, stack_names  # noqa: E402
from federation.service import Invitations, SigningService  # noqa: E402
from tests.integration import overlay  # noqa: E402
from tests.integration.project import ROOT, Project, start_local_cloud  # noqa: E402
from tests.paper_members import member_requests, waiting_state  # noqa: E402

SEED = "seed"
FORCED = {"CRDB_FORCE_REMOVAL": "true"}  # no SQL answers the members' removal checks here
HZ = os.sysconf("SC_CLK_TCK")
UP_TIMEOUT = 3600  # 15 members' `up`s at once on two cores
GOAL_RATIO, GOAL_LATENCY, GOAL_CPU = 1.2, 30.0, 60.0
IDENTITY_TYPE = "crdb-federation:federation:NodeIdentity"  # components/federation.py NodeIdentity
PAPER_NETWORK = ipaddress.ip_network("10.250.0.0/16")  # private: the seed checks no clash there
# A single environment string may not exceed 32 pages (Linux MAX_ARG_STRLEN): execve fails with E2BIG beyond.
MAX_ARG_STRLEN = 32 * 4096


def qualified(stack: str) -> str:
    return f"{ORGANIZATION}/{PROJECT}/{stack}"


# ------------------------------------------------------------------------------------------- CPU by process
CLI = "Pulumi CLIs (engines)"
PYTHON = "Python language hosts, programs, dynamic providers"
PLUGINS = "provider plugins"
CONTROL = "control planes (k3s stand-in)"
OPENSTACK = "local OpenStack"
SEED_RUNS = "the seed's signing runs (CLI and all below it)"
BENCH = "this bench (signing service threads, sampler)"
OTHER = "other"


@dataclasses.dataclass(frozen=True)
class Proc:
    """One process as /proc/<pid>/stat shows it (proc(5))."""

    pid: int
    ppid: int
    start: int  # clock ticks after boot: with the pid, one process even when pids are reused
    comm: str  # changes at exec (the tool's CLI shim becomes the CLI)
    ticks: int  # utime + stime: its own CPU, every thread
    reaped: int  # cutime + cstime: that of the children it has waited for
    command: str


def parse_stat(pid: int, text: str, command: str = "") -> Proc:
    head, _, rest = text.rpartition(")")  # comm is in parentheses and may hold anything
    fields = rest.split()  # fields[0] is field 3 (state): ppid is 4, utime..cstime 14-17, starttime 22
    return Proc(pid, int(fields[1]), int(fields[19]), head.partition("(")[2], int(fields[11]) + int(fields[12]),
                int(fields[13]) + int(fields[14]), command)


def read_procs(commands: dict[tuple[int, int, str], str], proc: Path = Path("/proc")) -> dict[int, Proc]:
    """Every process now; `commands` caches command lines by (pid, start, comm), kept for live processes only."""
    found, seen = {}, {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
            first = parse_stat(pid, stat)
            key = (pid, first.start, first.comm)
            command = commands.get(key)
            if command is None or _program(command) in SHELLS:  # a shell may yet exec, keeping its pid and comm
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        seen[key] = command or f"[{first.comm}]"
        found[pid] = dataclasses.replace(first, command=seen[key])
    commands.clear()
    commands.update(seen)
    return found


SHELLS = ("env", "bash", "sh")  # the tool's CLI shim: #!/usr/bin/env bash, then exec of the CLI


def _program(command: str) -> str:
    words = command.split()
    return os.path.basename(words[0]) if words else ""


def stack_of(command: str) -> str:
    """The stack a CLI command line names (--stack, -s or --stack=), short."""
    words = command.split()
    for index, word in enumerate(words):
        if word in ("--stack", "-s") and index + 1 < len(words):
            return words[index + 1].rsplit("/", 1)[-1]
        if word.startswith("--stack="):
            return word.split("=", 1)[1].rsplit("/", 1)[-1]
    return ""


def command_kind(command: str) -> str:
    """A process's kind by its command line (tier_memory.kind_of for the clouds' own)."""
    if any(word in command for word in ("pulumi-language-python", "pulumi-resource-pulumi-python", "pulumi.dynamic")):
        return PYTHON
    if "pulumi-resource-" in command:
        return PLUGINS
    if _program(command) == "pulumi":
        return CLI
    if "bench/scene.py" in command:
        return BENCH
    if "tests.integration.standin" in command or kind_of(command) == "control planes":
        return CONTROL
    return OPENSTACK if kind_of(command) == "local OpenStack" else OTHER


def process_kind(proc: Proc, procs: dict[int, Proc], bench_pid: int) -> str:
    """Anything at or below a CLI this process started for the seed is the seed's signing runs (the service's, or
    the floor's): its engine, program and plugins. The members' polls of the seed's outputs run below their own CLI."""
    cursor: Optional[Proc] = proc
    for _ in range(32):
        if cursor is None:
            break
        if _program(cursor.command) == "pulumi":
            if cursor.ppid == bench_pid and stack_of(cursor.command) == SEED:
                return SEED_RUNS
            break
        cursor = procs.get(cursor.ppid)
    return command_kind(proc.command)


class CpuByKind:
    """CPU-seconds by kind of process, from successive snapshots of every process.

    A process counts what it spent between snapshots; one first seen after the first snapshot counts all it spent
    since it started. A child that ended is counted up to its last snapshot; the rest of it, and every child that
    began and ended between two snapshots, shows only in its parent's `reaped` once the parent waited for it: that
    remainder goes to the parent's kind (the members' SignatureWait polls of the seed's outputs, short CLIs, land
    with their dynamic provider). What no one waits for (an orphan adopted by init), and the kernel's interrupts,
    stay unattributed: the machine's total less the kinds'."""

    def __init__(self, kind: Callable[[Proc, dict[int, Proc]], str]):
        self.kind = kind
        self.seconds: dict[str, float] = {}
        self._kinds: dict[tuple[int, int, str], str] = {}  # by (pid, start, command line)
        self._last: Optional[dict[int, Proc]] = None

    def add(self, procs: dict[int, Proc]) -> None:
        last, self._last = self._last, procs
        if last is None:
            return  # the baseline: nothing spent before it counts
        gone = [p for pid, p in last.items() if not _same(procs.get(pid), p)]
        for pid, proc in procs.items():
            before = last.get(pid) if _same(last.get(pid), proc) else None
            own = proc.ticks - (before.ticks if before else 0)
            reaped = proc.reaped - (before.reaped if before else 0)
            reaped -= sum(child.ticks + child.reaped for child in gone if child.ppid == pid)
            spent = own + max(reaped, 0)
            if spent > 0:
                key = (proc.pid, proc.start, proc.command)
                kind = self._kinds.get(key) or self._kinds.setdefault(key, self.kind(proc, procs))
                self.seconds[kind] = self.seconds.get(kind, 0.0) + spent / HZ


def _same(now: Optional[Proc], before: Optional[Proc]) -> bool:
    return now is not None and before is not None and now.start == before.start


def machine_cpu_seconds(stat: Path = Path("/proc/stat")) -> float:
    fields = stat.read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # all but idle and iowait
    return busy / HZ


class Sampler:
    """While a block runs: its wall time, the machine's CPU-seconds, and CPU-seconds by kind of process (every
    process's /proc/<pid>/stat every `every` seconds; the sampling's own cost is in this bench's kind)."""

    def __init__(self, every: float = 1.0):
        self.every = every
        bench_pid = os.getpid()
        self.by_kind = CpuByKind(lambda proc, procs: process_kind(proc, procs, bench_pid))
        self._commands: dict[tuple[int, int, str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.by_kind.add(read_procs(self._commands))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __enter__(self) -> "Sampler":
        self._sample()
        self.cpu0, self.t0 = machine_cpu_seconds(), time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.cpu = machine_cpu_seconds() - self.cpu0
        self.wall = time.monotonic() - self.t0

    def result(self) -> dict[str, Any]:
        return {"wall": self.wall, "cpu_seconds": self.cpu, "cpu_by_kind": dict(self.by_kind.seconds)}


# ------------------------------------------------------------------------------------------- engine events
def plain_event(event: Any) -> dict[str, Any]:
    """An Automation API engine event in the shape of the CLI's --event-log lines (all the functions below read)."""
    row: dict[str, Any] = {"timestamp": event.timestamp}
    for field, name in (("resource_pre_event", "resourcePreEvent"), ("res_outputs_event", "resOutputsEvent")):
        step = getattr(event, field)
        if step is not None:
            op = step.metadata.op
            row[name] = {"metadata": {"op": getattr(op, "value", op), "urn": step.metadata.urn,
                                      "type": step.metadata.type}}
    return row


def read_events(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def _metadata(event: dict[str, Any], kind: str) -> dict[str, Any]:
    return (event.get(kind) or {}).get("metadata") or {}


def step_counts(events: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """resource type -> step (create, same, read, delete...) -> how many the engine took."""
    counts: dict[str, dict[str, int]] = {}
    for event in events:
        step = _metadata(event, "resourcePreEvent")
        if step:
            by_op = counts.setdefault(step["type"], {})
            by_op[step["op"]] = by_op.get(step["op"], 0) + 1
    return counts


def engine_phases(events: list[dict[str, Any]], started: float, ended: float) -> dict[str, Optional[float]]:
    """An `up` split at its first and last step (event timestamps are whole seconds): before the first, the CLI,
    the language host, the program and the plugins starting; after the last, outputs, checkpoint and exit."""
    firsts = [e["timestamp"] for e in events if _metadata(e, "resourcePreEvent")]
    steps = firsts + [e["timestamp"] for e in events if _metadata(e, "resOutputsEvent")]
    if not firsts:
        return {"to first step": None, "steps": None, "after last step": None}
    return {"to first step": min(firsts) - started, "steps": max(steps) - min(firsts),
            "after last step": ended - max(steps)}


def wait_seconds(events: list[dict[str, Any]]) -> Optional[float]:
    """How long the member's `up` spent in its SignatureWait (components/signature.py), from its event log."""
    def when(kind: str) -> Optional[int]:
        return next((e["timestamp"] for e in events if _metadata(e, kind).get("type") == DYNAMIC_TYPE
                     and _metadata(e, kind)["urn"].endswith(SIGNATURE_WAIT_SUFFIX)), None)

    began, ended = when("resourcePreEvent"), when("resOutputsEvent")
    return ended - began if began is not None and ended is not None else None


# ------------------------------------------------------------------------------------------- the floor's target
def _urn_type(urn: str) -> str:
    return urn.split("::")[2].rsplit("$", 1)[-1]


def identity_closure(steps: list[dict[str, Any]]) -> set[str]:
    """What must be made with a member's node key and three certificate requests (its NodeIdentity and that
    component's children), from its `pulumi preview --json` steps: those, their ancestor components and everything
    they depend on, transitively (parent, dependencies, property dependencies, deletedWith, provider: the links
    pulumi v3.259.0 pkg/resource/state.go GetAllDependencies lists). The node request names the node's addresses,
    so its port and floating IP, their network and security groups, come with it."""
    states = {step["urn"]: step.get("newState") or {} for step in steps if step.get("urn")}
    identities = {urn for urn, state in states.items() if state.get("type") == IDENTITY_TYPE}
    if not identities:
        raise RuntimeError(f"no {IDENTITY_TYPE} in the member's preview")
    wanted = identities | {urn for urn, state in states.items() if state.get("parent") in identities}
    frontier = list(wanted)
    while frontier:
        state = states.get(frontier.pop(), {})
        links = [state.get("parent"), state.get("deletedWith"), (state.get("provider") or "").rsplit("::", 1)[0],
                 *(state.get("dependencies") or []),
                 *(u for urns in (state.get("propertyDependencies") or {}).values() for u in urns)]
        for link in links:
            if link and link not in wanted:
                wanted.add(link)
                frontier.append(link)
    return wanted & set(states)


def identity_excludes(steps: list[dict[str, Any]]) -> list[str]:
    """What the floor's first `up` leaves out: everything but identity_closure (providers and the root stack are
    never left out: the engine includes them implicitly).

    Excluded rather than the closure targeted. pulumi v3.259.0 `up --help`: "--target: Specify a single resource URN
    to update. Other resources will not be updated"; "--target-dependents: Allows updating of dependent targets
    discovered but not specified in --target list" (dependents, never dependencies); "--exclude: Specify a resource
    URN to ignore. These resources will not be updated"; "--exclude-dependents: Allows ignoring of dependent targets
    discovered but not specified in --exclude list". With targets, the engine refuses any step that depends on a
    create it skips (step_generator.go validateSteps: "untargeted create"), providers included, and it includes
    every provider: the member's Kubernetes provider takes its kubeconfig from the cluster's API readiness gate, so a
    targeted run stops there. That check runs only with --target (or --target-replace): with --exclude the provider
    is made with an unknown kubeconfig, which pulumi-kubernetes' Configure takes as an unreachable cluster, and its
    next `up` updates it (its clusterIdentifier keeps it from being replaced)."""
    keep = identity_closure(steps)
    urns = [step["urn"] for step in steps if step.get("urn")]
    return sorted(u for u in set(urns) - keep if not _urn_type(u).startswith(("pulumi:providers:",
                                                                              "pulumi:pulumi:Stack")))


def member_of(resources: list[dict[str, Any]]) -> str:
    """The member's name (its locality's cloud=), from its node request's URN (<member>-identity-node-csr)."""
    suffix = next(s for s, kind in REQUEST_SUFFIXES.items() if kind == "node")
    urn = next(r["urn"] for r in resources if r.get("urn", "").endswith(suffix))
    return urn.rsplit("::", 1)[-1][:-len(suffix)]


# ------------------------------------------------------------------------------------------- paper members
def paper_requests(index: int) -> dict[str, str]:
    """A paper member's three requests for a key of its own, its node request naming an address of its own in
    PAPER_NETWORK."""
    return member_requests([str(PAPER_NETWORK[index + 1])])


def paper_deployment(stack: str, requests: dict[str, str]) -> dict[str, Any]:
    """Its state, with the outputs the seed reads of a member it lists in crdb-federation:members (no addresses)."""
    return waiting_state(stack, requests, {"member": stack, "certificateRequests": requests, "joinAddresses": []})


# ------------------------------------------------------------------------------------------- the scene
class Scene:
    """The local cloud, the stand-in, and a copy of the project on a file backend of its own (one operator)."""

    def __init__(self, base: Path, nodes: int):
        self.base, self.nodes = base, nodes
        binaries = subprocess.run(["bash", str(ROOT / "scripts" / "install-kubernetes.sh")], capture_output=True,
                                  text=True, check=True).stdout.strip()
        cloud = start_local_cloud(base / "localcloud.log")
        os.environ["OS_CLIENT_CONFIG_FILE"] = str(cloud.clouds_yaml)  # the seed's checks before its `up`s
        self.standin = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.standin", "--state", str(base / "standin"), "--binaries",
             binaries, "--cloud", cloud.name], cwd=ROOT, stdout=open(base / "standin.log", "w"),
            stderr=subprocess.STDOUT, env={**os.environ, "OS_CLIENT_CONFIG_FILE": str(cloud.clouds_yaml)})
        (base / "state").mkdir()
        self.backend = f"file://{base / 'state'}"
        self.project = Project(overlay.copy_project(ROOT, base / "project"), base / "state", cloud,
                               shutil.which("pulumi"))
        self.pool = [s for s in stack_names() if s != SEED]
        self.made: set[str] = set()  # member stacks with something in the cloud
        self.paper: dict[str, dict[str, str]] = {}  # paper stack -> its requests, once imported
        self.paper_stacks: set[str] = set()

    def say(self, name: str) -> Callable[[str], None]:
        lock, path = threading.Lock(), self.base / f"{name}.log"

        def write(line: str) -> None:
            with lock, open(path, "a", encoding="utf-8") as log:
                log.write(f"{time.strftime('%H:%M:%S')} {line.rstrip()}\n")
        return write

    def seed_up(self) -> float:
        p = self.project
        p.select(SEED)
        p.run("config", "set", "crdb-federation:apiReadyTimeout", "300", stack=SEED)
        p.run("config", "set", "--secret", "crdb-federation:enterpriseLicense", "crl-0-bench", stack=SEED)
        started = time.monotonic()
        p.run("up", "--yes", "--skip-preview", stack=SEED, timeout=1800)
        elapsed = time.monotonic() - started
        prints = p.tool("fingerprints").stdout
        pins = dict(line.split(": ", 1) for line in prints.splitlines() if line.startswith("crdb-federation:"))
        for stack in self.pool:
            p.select(stack)
            for key, value in (("apiReadyTimeout", "300"), ("nodeCount", str(self.nodes)),
                               ("signatureWait", "1800")):  # 15 members building at once on two cores
                p.run("config", "set", f"crdb-federation:{key}", value, stack=stack)
            for key, values in pins.items():
                for index, fingerprint in enumerate(json.loads(values)):
                    p.run("config", "set", "--path", f"{key}[{index}]", fingerprint, stack=stack)
        return elapsed

    def idle(self, seconds: float) -> dict[str, Any]:
        """The machine with the seed up and nothing running: what every window below carries anyway."""
        with Sampler() as sampled:
            time.sleep(seconds)
        return sampled.result()

    def seed(self) -> PulumiStack:
        return PulumiStack(SEED, work_dir=self.project.directory, environment=self.project.env(SEED))

    # -- one member's `up` -----------------------------------------------------------------------------------
    def up(self, member: str, label: str) -> dict[str, Any]:
        """The member's `pulumi up`, timed from its start to its end (the pods Ready: readiness is awaited in it)."""
        self.made.add(member)
        log = self.base / f"{label}-{member}.events.jsonl"
        started = time.monotonic()
        done = self.project.run("up", "--yes", "--skip-preview", "--event-log", str(log), stack=member,
                                check=False, timeout=UP_TIMEOUT)
        seconds = time.monotonic() - started
        (self.base / f"{label}-{member}.log").write_text(done.stdout + done.stderr)
        return {"seconds": seconds, "exit": done.returncode, "waited": wait_seconds(read_events(log)),
                "error": "" if done.returncode == 0 else (done.stdout + done.stderr)[-1500:]}

    def ups(self, members: list[str], label: str) -> dict[str, Any]:
        """Every member's `up` at once, the machine sampled meanwhile."""
        with Sampler() as sampled, ThreadPoolExecutor(max_workers=len(members)) as pool:
            runs = dict(zip(members, pool.map(lambda m: self.up(m, label), members)))
        return {"members": runs, **sampled.result()}

    # -- 1. the floor ----------------------------------------------------------------------------------------
    def identity_up(self, member: str) -> dict[str, Any]:
        """The floor's first `up`: the member's node key and requests and what they need, nothing else
        (identity_excludes; --exclude-dependents also leaves out anything the preview did not show that needs what
        is left out)."""
        self.made.add(member)
        preview = self.project.run("preview", "--json", stack=member, timeout=1800)
        steps = json.loads(preview.stdout).get("steps") or []
        excluded = identity_excludes(steps)
        started = time.monotonic()
        self.project.run("up", "--yes", "--skip-preview", "--exclude-dependents",
                         *[a for urn in excluded for a in ("--exclude", urn)], stack=member, timeout=1800)
        made = sorted(identity_closure(steps))
        return {"seconds": time.monotonic() - started, "made": len(made), "excluded": len(excluded),
                "types": sorted({_urn_type(u) for u in made})}

    def early_request(self, member: str) -> dict[str, str]:
        """What the seed signs for a member, read from its state (its `requests()`: the floor's first `up` makes no
        SignatureWait, which current_requests would need)."""
        view = BackendReader(self.backend).view(member)
        requests = view.requests()
        if set(requests) != {"node", "client", "ops"}:
            raise RuntimeError(f"{member}'s state holds requests {sorted(requests)} after its first up")
        return {"member": member_of(view.resources()), **requests}

    def seed_signing_up(self, early: dict[str, dict[str, str]]) -> dict[str, Any]:
        """One seed `up` signing `early`, as the service runs it (set_signing; its checks before, untimed)."""
        seed, say = self.seed(), self.say("seed-signing")
        seed.prepare(say)  # before set_signing, as the service does: its CLI calls then carry no early requests
        seed.set_signing(early, {})
        events: list[dict[str, Any]] = []
        size = len(json.dumps(early, sort_keys=True))
        started = time.time()
        try:
            with Sampler() as sampled:
                seed.run("up", lambda event: events.append(plain_event(event)), say)
        except Exception as error:
            return {"members": len(early), "early_bytes": size, "error": f"{type(error).__name__}: {error}"[-1500:]}
        return {"members": len(early), "early_bytes": size, **sampled.result(),
                "phases": engine_phases(events, started, time.time()), "steps": step_counts(events)}

    def floor(self, members: list[str]) -> dict[str, Any]:
        with ThreadPoolExecutor(max_workers=len(members)) as pool:
            first = dict(zip(members, pool.map(self.identity_up, members)))
        signing = self.seed_signing_up({qualified(m): self.early_request(m) for m in members})
        if "error" in signing:
            raise RuntimeError(f"the seed's signing up failed: {signing['error']}")
        return {"first": first, "signing": signing, **self.ups(members, f"floor-{len(members)}")}

    # -- 1, 2, 3. the join through the service ---------------------------------------------------------------
    def join(self, members: list[str]) -> dict[str, Any]:
        timings: dict[str, dict[str, float]] = {}

        def on_timing(stack: str, what: str, when: float) -> None:
            timings.setdefault(stack.rsplit("/", 1)[-1], {}).setdefault(what, when)

        service = SigningService(self.seed(), BackendReader(self.backend), Invitations(tuple(map(qualified, members))),
                                 self.say(f"service-{len(members)}"), seed_stack=SEED, on_timing=on_timing)
        with service:
            # As with `serve`, started ahead of the members: its checks of the seed are done when they ask.
            deadline = time.monotonic() + 900
            while not service.status.startswith("watching") and time.monotonic() < deadline:
                time.sleep(1)
            ups = self.ups(members, f"join-{len(members)}")
        latency = {m: t["answered"] - t["requests seen"] if {"answered", "requests seen"} <= set(t) else None
                   for m, t in ((m, timings.get(m, {})) for m in members)}
        return {**ups, "latency": latency, "timings": timings}

    # -- 4. the seed's signing `up` for paper members ------------------------------------------------------------
    def make_paper(self, count: int) -> list[str]:
        """paper-000 ... up to `count`, made once each (`stack init`, then `stack import` of paper_deployment)."""
        directory = self.base / "paper"
        directory.mkdir(exist_ok=True)

        def make(index: int, stack: str) -> None:
            requests = paper_requests(index)
            (directory / f"{stack}.json").write_text(json.dumps(paper_deployment(stack, requests)))
            self.paper_stacks.add(stack)  # removed at the end, made or not
            self.project.run("stack", "init", "--no-select", "--secrets-provider", "passphrase", stack=stack)
            self.project.run("stack", "import", "--file", str(directory / f"{stack}.json"), stack=stack)
            self.paper[stack] = requests

        stacks = [f"paper-{index:03d}" for index in range(count)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda item: make(*item), [(i, s) for i, s in enumerate(stacks) if s not in self.paper]))
        return stacks

    def paper_signing(self, count: int) -> dict[str, Any]:
        stacks = self.make_paper(count)
        signed = self.seed_signing_up({qualified(s): {"member": s, **self.paper[s]} for s in stacks})
        if "error" not in signed or signed["early_bytes"] <= MAX_ARG_STRLEN:
            return signed
        # So many early requests exceed one environment string: the seed's program is still timed with them admitted
        # in crdb-federation:members, read through each paper stack's outputs (reset_seed removes them).
        self.seed().add_members([qualified(s) for s in stacks])
        return {**self.seed_signing_up({}), "members": count, "admitted": True, "early_error": signed["error"],
                "early_bytes": signed["early_bytes"]}

    # -- cleaning up ---------------------------------------------------------------------------------------------
    def destroy(self, members: list[str]) -> None:
        def one(stack: str) -> None:
            self.project.run("destroy", "--yes", "--skip-preview", stack=stack, check=False, timeout=1800, env=FORCED)
            self.made.discard(stack)

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(one, members))
        self.reset_seed()

    def reset_seed(self) -> None:
        """The seed pins each member's key at its first signature (a Stash per member): only its `up` without them
        forgets those pins; the next round brings new keys under the same names."""
        self.project.run("config", "rm", "crdb-federation:members", stack=SEED, check=False)
        self.project.run("up", "--yes", "--skip-preview", stack=SEED, timeout=1800)

    def close(self) -> None:
        try:
            if self.made:
                self.destroy(sorted(self.made))
            for stack in sorted(self.paper_stacks):
                self.project.run("stack", "rm", "--force", "--yes", stack=stack, check=False)
            self.project.run("destroy", "--yes", "--skip-preview", stack=SEED, check=False, timeout=1800, env=FORCED)
        finally:
            self.standin.terminate()
            self.standin.wait(timeout=120)


def attempt(work: Callable[[], Any], cleanup: Callable[[], None] = lambda: None) -> Any:
    """One measurement; a failure is recorded in its place and the next one runs, after the cleanup."""
    try:
        return work()
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"[-3000:]}
    finally:
        cleanup()


# ------------------------------------------------------------------------------------------- the report
def _s(value: Optional[float], digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _met(ok: Optional[bool]) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def _largest(section: dict[str, Any]) -> Optional[str]:
    done = [count for count, entry in section.items() if "error" not in entry]
    return max(done, key=int) if done else None


def floor_of(results: dict[str, Any], count: str, member: str) -> Optional[float]:
    run = ((results.get("floors") or {}).get(count) or {}).get("members", {}).get(member) or {}
    return run.get("seconds") if run.get("exit") == 0 else None


def floor_alone(results: dict[str, Any]) -> Optional[float]:
    members = ((results.get("floors") or {}).get("1") or {}).get("members") or {}
    return next((run["seconds"] for run in members.values() if run.get("exit") == 0), None)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def worst_ratio(results: dict[str, Any]) -> Optional[float]:
    """The goal's measure: the worst join, three at once, over that member's floor three at once."""
    members = ((results.get("joins") or {}).get("3") or {}).get("members") or {}
    ratios = [_ratio(run["seconds"] if run.get("exit") == 0 else None, floor_of(results, "3", member))
              for member, run in members.items()]
    return None if not ratios or None in ratios else max(ratios)  # type: ignore[type-var]


def join_section(results: dict[str, Any]) -> list[str]:
    lines = ["## 1. Each member's join against its floor", "",
             "The floor: the member's own single `up` with its certificates given ahead. A first `up` made its key and "
             "requests and what they need (its network, security groups, ports and floating IPs, which its measured "
             "`up` then finds made: the floor is that much lower), the seed signed them, then its `up` is timed; its "
             "SignatureWait is not wanted and never waits.", "",
             "| floor | member | first up s (resources made) | seed's signing up s | its up s | waited in it s |",
             "|---|---|---|---|---|---|"]
    for count, floor in sorted((results.get("floors") or {}).items(), key=lambda item: int(item[0])):
        label = "alone" if count == "1" else f"{count} at once"
        if "error" in floor:
            lines.append(f"| {label} | failed: {floor['error'].splitlines()[-1][:200]} | | | | |")
            continue
        for member, run in floor["members"].items():
            made = floor["first"][member]
            lines.append(f"| {label} | {member} | {_s(made['seconds'])} ({made['made']}) | "
                         f"{_s(floor['signing'].get('wall'))} | {_up(run)} | {_s(run.get('waited'))} |")
    lines += ["", "The join through the signing service: every member's `pulumi up` at once.", "",
              "| members at once | member | join s | ÷ floor alone | ÷ its floor 3 at once | waited in its up s | "
              "signing latency s |", "|---|---|---|---|---|---|---|"]
    alone = floor_alone(results)
    for count, join in sorted((results.get("joins") or {}).items(), key=lambda item: int(item[0])):
        if "error" in join:
            lines.append(f"| {count} | failed: {join['error'].splitlines()[-1][:200]} | | | | | |")
            continue
        for member, run in join["members"].items():
            seconds = run["seconds"] if run.get("exit") == 0 else None
            lines.append(f"| {count} | {member} | {_up(run)} | {_s(_ratio(seconds, alone), 2)} | "
                         f"{_s(_ratio(seconds, floor_of(results, '3', member)), 2)} | {_s(run.get('waited'))} | "
                         f"{_s(join['latency'].get(member))} |")
    ratio = worst_ratio(results)
    lines += ["", f"Goal: each join at most {GOAL_RATIO}x its floor, 3 at once: worst {_s(ratio, 2)}x, "
                  f"{_met(None if ratio is None else ratio <= GOAL_RATIO)}."]
    return lines


def _up(run: dict[str, Any]) -> str:
    return _s(run["seconds"]) if run.get("exit") == 0 else f"failed (exit {run.get('exit')})"


def latency_measure(results: dict[str, Any]) -> tuple[Optional[str], Optional[float]]:
    """The goal's measure: the worst signing latency with the most members at once."""
    joins = results.get("joins") or {}
    count = _largest(joins)
    values = [v for v in (joins[count]["latency"].values() if count else []) if v is not None]
    return count, max(values) if values else None


def latency_section(results: dict[str, Any]) -> list[str]:
    lines = ["## 2. The service's signing latency", "",
             "From the service's first read of a member's complete requests to its first read of the seed's outputs "
             "answering them (the member's own poll of those outputs adds at most 2 s: components/signature.py "
             "POLL_SECONDS).", "",
             "| members at once | min s | median s | max s | not answered |", "|---|---|---|---|---|"]
    for count, join in sorted((results.get("joins") or {}).items(), key=lambda item: int(item[0])):
        if "error" in join:
            continue
        values = sorted(v for v in join["latency"].values() if v is not None)
        missing = sum(v is None for v in join["latency"].values())
        lines.append(f"| {count} | {_s(values[0] if values else None)} | "
                     f"{_s(statistics.median(values) if values else None)} | {_s(values[-1] if values else None)} | "
                     f"{missing} |")
    count, worst = latency_measure(results)
    lines += ["", f"Goal: within {GOAL_LATENCY:.0f} s with 15 members: worst {_s(worst)} s with {count or '–'} at "
                  f"once, {_met(None if worst is None or count != '15' else worst <= GOAL_LATENCY)}."]
    return lines


def cpu_measure(results: dict[str, Any]) -> tuple[Optional[str], Optional[float]]:
    joins = results.get("joins") or {}
    count = _largest(joins)
    return count, joins[count]["cpu_seconds"] / int(count) if count else None


def cpu_section(results: dict[str, Any]) -> list[str]:
    count, per_member = cpu_measure(results)
    lines = ["## 3. CPU-seconds per member's join", ""]
    if count is None:
        return lines + ["Not measured."]
    join, members = results["joins"][count], int(count)
    idle = results.get("idle") or {}
    background = idle["cpu_seconds"] / idle["wall"] * join["wall"] if idle.get("wall") else None
    attributed = sum(join["cpu_by_kind"].values())
    lines += [f"{members} members at once: {join['wall']:.0f} s from the first `up`'s start to the last one's end; "
              f"the whole machine spent {join['cpu_seconds']:.0f} CPU-s ({per_member:.1f} per member), of which "
              f"{_s(background, 0)} at the rate of the machine idle with the seed up "
              f"({_s(None if background is None else (join['cpu_seconds'] - background) / members)} per member "
              "without it).", "",
              "| kind of process | CPU-s | per member | share |", "|---|---|---|---|"]
    rows = sorted(join["cpu_by_kind"].items(), key=lambda item: -item[1])
    rows.append(("not attributed (interrupts, orphans adopted by init)", join["cpu_seconds"] - attributed))
    for kind, seconds in rows:
        lines.append(f"| {kind} | {seconds:.0f} | {seconds / members:.1f} | "
                     f"{100 * seconds / join['cpu_seconds']:.0f}% |")
    lines += ["", "Sampled every second from /proc/<pid>/stat (utime+stime): a process that begins and ends between "
                  "samples counts with its parent's kind once the parent waited for it (its cutime+cstime).", "",
              f"Goal: at most {GOAL_CPU:.0f} CPU-s per member: {per_member:.1f} with {count} at once, "
              f"{_met(per_member <= GOAL_CPU if count == '15' else None)}."]
    return lines


def paper_section(results: dict[str, Any]) -> list[str]:
    paper = results.get("paper") or {}
    lines = ["## 4. The seed's signing `up` for N admitted members", "",
             "Paper members: stacks in the backend with real certificate requests and no cloud, all given to one seed "
             "`up` as early requests (the signing service's way: one environment variable, components/settings.py). "
             f"Where they exceed one environment string ({MAX_ARG_STRLEN // 1024} KiB, Linux MAX_ARG_STRLEN) the "
             "seed's `up` cannot start; \"N admitted\" then times the same program with them listed in "
             "crdb-federation:members instead, read through their outputs. Marginal: the change from the previous N, "
             "per member added. Engine event timestamps are whole seconds.", "",
             "| N | wall s | CPU-s | wall / member | CPU / member | marginal wall s | marginal CPU-s | "
             "to first step s | steps s | after last step s | early requests KiB |", "|---" * 11 + "|"]
    previous: Optional[dict[str, Any]] = None
    for count, run in sorted(paper.items(), key=lambda item: int(item[0])):
        size = run.get("early_bytes")
        kib = "–" if size is None else f"{size / 1024:.0f}" + (" (over 128)" if size > MAX_ARG_STRLEN else "")
        if "error" in run:
            lines.append(f"| {count} | failed: {run['error'].splitlines()[-1][:200]} | | | | | | | | | {kib} |")
            continue
        label = f"{count} admitted" if run.get("admitted") else count
        if run.get("admitted"):
            kib += f": {run['early_error'].splitlines()[-1][:120]}"
        n = int(count)
        marginal = [(run[k] - previous[k]) / (n - int(previous["members"])) if previous else None
                    for k in ("wall", "cpu_seconds")]
        phases = run["phases"]
        lines.append(f"| {label} | {run['wall']:.1f} | {run['cpu_seconds']:.0f} | {run['wall'] / n:.2f} | "
                     f"{run['cpu_seconds'] / n:.2f} | {_s(marginal[0], 2)} | {_s(marginal[1], 2)} | "
                     f"{_s(phases['to first step'])} | {_s(phases['steps'])} | {_s(phases['after last step'])} | "
                     f"{kib} |")
        previous = run
    largest = _largest(paper)
    if largest is not None:
        n = int(largest)
        kinds = sorted(paper[largest].get("cpu_by_kind", {}).items(), key=lambda item: -item[1])
        lines += ["", f"CPU-s meanwhile with {n} members, by kind of process: "
                  + ("; ".join(f"{kind} {seconds:.0f}" for kind, seconds in kinds) or "–") + ".",
                  "", f"Steps of the seed's `up` with {n} members, by resource type:", "",
                  "| resource type | step | count | per member |", "|---|---|---|---|"]
        for kind, ops in sorted(paper[largest]["steps"].items()):
            for op, number in sorted(ops.items()):
                lines.append(f"| {kind} | {op} | {number} | {number / n:.2f} |")
    return lines


def goals(results: dict[str, Any]) -> list[str]:
    ratio = worst_ratio(results)
    latency_count, latency = latency_measure(results)
    cpu_count, cpu = cpu_measure(results)
    rows = [("join, 3 at once, ÷ its floor 3 at once", f"≤ {GOAL_RATIO}", f"{_s(ratio, 2)}",
             None if ratio is None else ratio <= GOAL_RATIO),
            ("signing latency, 15 members", f"≤ {GOAL_LATENCY:.0f} s",
             f"{_s(latency)} s ({latency_count or '–'} at once)",
             None if latency is None or latency_count != "15" else latency <= GOAL_LATENCY),
            ("CPU-s per member's join, 15 at once", f"≤ {GOAL_CPU:.0f}", f"{_s(cpu)} ({cpu_count or '–'} at once)",
             None if cpu is None or cpu_count != "15" else cpu <= GOAL_CPU)]
    return ["| goal | target | measured | |", "|---|---|---|---|"] + [
        f"| {goal} | {target} | {measured} | {_met(ok)} |" for goal, target, measured, ok in rows]


def _cores(count: Optional[int]) -> str:
    return {1: "One", 2: "Two", 4: "Four"}.get(count or 0, str(count or "The"))


def render(results: dict[str, Any]) -> str:
    lines = [f"# The scene on the real engine ({results.get('nodes', 1)} node(s) per member, "
             f"{results.get('cores', '?')} cores)", "",
             f"Seed `up`: {_s(results.get('seed_up'))} s.", "", *goals(results), "",
             f"{_cores(results.get('cores'))} cores shared by every process of every cloud (the local OpenStack, each "
             "member's control plane, every engine and plugin) are this machine's limit, not the scene's: operators "
             "apart each run their `up` on a machine of their own, beside a cloud of their own.", ""]
    for section in (join_section, latency_section, cpu_section, paper_section):
        lines += section(results) + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def _counts(text: str) -> list[int]:
    return sorted({int(c) for c in text.split(",") if c.strip()})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=_counts, default=[1, 3, 15], help="members at once (default: 1,3,15)")
    parser.add_argument("--paper", type=_counts, default=[1, 15, 50, 100],
                        help="admitted paper members per seed signing up (default: 1,15,50,100)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per member (default: %(default)s)")
    parser.add_argument("--parts", default="floors,joins,paper", help="which parts run (default: %(default)s)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="the idle machine's sample")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"floors", "joins", "paper"}:
        parser.error(f"--parts: floors, joins or paper, not {', '.join(sorted(parts - {'floors', 'joins', 'paper'}))}")
    members = len(stack_names()) - 1
    if max(args.counts) > members or members < 3:
        parser.error(f"--counts: at most {members} members (the stack files)")
    base = Path(tempfile.mkdtemp(prefix="crdb-scene-bench-"))
    scene = Scene(base, args.nodes)
    results: dict[str, Any] = {"nodes": args.nodes, "cores": os.cpu_count(), "work": str(base)}
    print(f"working in {base}", flush=True)
    try:
        results["seed_up"] = scene.seed_up()
        results["idle"] = scene.idle(args.idle_seconds)
        if "floors" in parts:
            results["floors"] = {str(len(m)): attempt(lambda m=m: scene.floor(m), lambda m=m: scene.destroy(m))
                                 for m in (scene.pool[:1], scene.pool[:3])}
        if "joins" in parts:
            results["joins"] = {str(n): attempt(lambda n=n: scene.join(scene.pool[:n]),
                                                lambda n=n: scene.destroy(scene.pool[:n])) for n in args.counts}
        if "paper" in parts:
            results["paper"] = {str(n): attempt(lambda n=n: scene.paper_signing(n), scene.reset_seed)
                                for n in args.paper}
    finally:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scene.json").write_text(json.dumps(results, indent=1, default=str))
        scene.close()
    report = render(results)
    (args.out / "scene.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
