"""python -m federation {serve,join,preview,preflight,remove,orphans,ranges,status,fingerprints,prepare,explain,report}:
the whole federation from one terminal."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from rich.console import Console
from rich.live import Live

from components.settings import COCKROACH_SQL_PORT, split_address
from components.signature import WAIT_SECONDS

from . import preflight, secrets, stack_config, timeline
from .dashboard import preflight_table, progress_table, summary_table
from .locks import StackLocked
from .service import Invitations
from .runner import (
    PROJECT, ROOT, SETTLE_SECONDS, PulumiStack, RecordedSeed, Run, StackNotInBackend, default_backend, join,
    run_concurrently, stack_names,
)

SEED = "seed"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m federation", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    # Each stack's own secrets provider (federation/secrets.py); for every command that runs a stack's engine.
    keys = argparse.ArgumentParser(add_help=False)
    keys.add_argument("--passphrases", type=Path, default=secrets.DEFAULT_DIRECTORY,
                      help="a directory with <stack>.passphrase per stack (default: %(default)s)")
    keys.add_argument("--one-passphrase", action="store_true",
                      help="use PULUMI_CONFIG_PASSPHRASE for every stack: one operator runs them all (a demo)")
    for name, text in (("join", "make sure the seed is up, then `pulumi up` every chosen member at once"),
                       ("preview", "`pulumi preview` every chosen stack at once")):
        command = commands.add_parser(name, help=text, parents=[keys])
        command.add_argument("stacks", nargs="*", help="stacks (default: every member; preview: every stack)")
        command.add_argument("--seed", default=SEED, help="the seed stack (default: %(default)s)")
        command.add_argument("--parallel", type=int, default=16, help="stacks at once (default: %(default)s)")
        command.add_argument("--runs-dir", type=Path, default=ROOT / "runs", help="timelines, reports and logs")
        command.add_argument("--no-dashboard", action="store_true", help="print the summary only")
        if name == "join":
            command.add_argument("--skip-preflight", action="store_true", help="start clouds without checking them")
            command.add_argument("--my-address", help="this machine's public IP, for preflight's admin range check")
            command.add_argument("--two-step", action="store_true",
                                 help="sign after the members' ups, then up them again (what an operator does by hand)")
    serve = commands.add_parser("serve", parents=[keys],
                                help="the seed's signing service and the scene's dashboard: signs invited members "
                                     "as their requests appear in the backend (runs until stopped)")
    serve.add_argument("--seed", default=SEED, help="the seed stack (default: %(default)s)")
    serve.add_argument("--host", default="127.0.0.1", help="the dashboard's address (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8080, help="the dashboard's port, 0 for any (default: %(default)s)")
    serve.add_argument("--no-dashboard", action="store_true", help="no terminal table: one line per event")
    check = commands.add_parser("preflight", help="check each cloud against what its stack needs; creates nothing",
                                parents=[keys])
    check.add_argument("stacks", nargs="*", help="stacks (default: every stack)")
    check.add_argument("--my-address", help="this machine's public IP (default: asked of %s)" % preflight.MY_ADDRESS_URL)
    check.add_argument("--parallel", type=int, default=8)
    check.add_argument("--json", type=Path, help="also write the findings to this file as JSON")
    remove = commands.add_parser("remove", help="decommission a member's whole cloud, then destroy its stack",
                                 parents=[keys])
    remove.add_argument("stack")
    remove.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    remove.add_argument("--yes", action="store_true", help="do it (without it: say what would happen)")
    orphans = commands.add_parser("orphans", help="a member's resources in its cloud that its state does not hold "
                                  "(an interrupted run's); read-only unless --delete", parents=[keys])
    orphans.add_argument("stack")
    orphans.add_argument("--delete", action="store_true", help="delete those that hold nothing")
    orphans.add_argument("--settle", type=float, default=SETTLE_SECONDS, metavar="SECONDS",
                         help="with --delete: how long to wait for the stack's own servers and volumes still being "
                              "made by a dead run to settle (default: %(default)s)")
    destroy = commands.add_parser("destroy", help="refused: use `remove`, which decommissions first")
    destroy.add_argument("stack")
    commands.add_parser("ranges", help="every stack's node addresses, as federationCidrs entries")
    status = commands.add_parser("status", help="nodes per cloud, liveness and replication health over SQL",
                                 parents=[keys])
    status.add_argument("--seed", default=SEED)
    status.add_argument("--host", help="a node to connect to (default: the seed's first join address)")
    status.add_argument("--certs-dir", type=Path, help="ca.crt, client.root.crt, client.root.key (default: from the seed)")
    prints = commands.add_parser("fingerprints", help="the seed's CA fingerprints, for its operator to hand over")
    prints.add_argument("--seed", default=SEED)
    # scripts/up.sh's steps around one operator's own `pulumi up` (federation/own_run.py).
    prepare = commands.add_parser("prepare", help="before an `up` of this stack: release a lock a gone run of this "
                                  "machine left, clear an interrupted run's leftovers, heal servers in ERROR")
    prepare.add_argument("stack")
    explain = commands.add_parser("explain", help="after a failed `up` of this stack: say what stopped it")
    explain.add_argument("stack")
    explain.add_argument("errors", type=Path, help="the CLI's error output")
    explain.add_argument("--events", type=Path, help="the run's engine event log (pulumi up --event-log)")
    report = commands.add_parser("report", help="render a run's timeline JSON as a self-contained HTML report")
    report.add_argument("timeline", type=Path)
    report.add_argument("-o", "--output", type=Path)
    return parser.parse_args(argv)


def fail(message: str) -> int:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {message}")
    return 2


def require_pulumi_cli() -> Optional[int]:
    if shutil.which("pulumi") is None:
        return fail("the Pulumi CLI is not installed or not on PATH; install it "
                    "(https://www.pulumi.com/docs/iac/download-install/) and run this again")
    return None


def orchestrate(run: Run, work: Callable[[], None], dashboard: bool, console: Console) -> int:
    title = f"crdb-federation {run.operation}"
    if dashboard:
        with Live(get_renderable=lambda: progress_table(run.snapshot(), run.now(), title), console=console,
                  refresh_per_second=4):
            work()
    else:
        work()
    clouds = run.snapshot()
    console.print(summary_table(clouds))
    record = timeline.timeline(run.operation, run.started_wall, clouds)
    path = timeline.save(record, run.log_dir.parent)
    report = path.with_suffix(".html")
    report.write_text(timeline.render_report(record))
    console.print(f"timeline: {path}\nreport: {report}\nlogs: {run.log_dir}/<stack>.log")
    failed = [c.stack for c in clouds if c.status != "succeeded"]
    if failed:
        console.print(f"[bold red]failed:[/] {', '.join(failed)}")
        return 1
    return 0


def run_dir(base: Path, operation: str) -> Path:
    import time
    return base / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{operation}" / "logs"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    console = Console()
    if args.command == "report":
        if not args.timeline.is_file():
            return fail(f"no timeline file {args.timeline}")
        output = args.output or args.timeline.with_suffix(".html")
        output.write_text(timeline.render_report(json.loads(args.timeline.read_text())))
        console.print(f"report: {output}")
        return 0

    if args.command in ("prepare", "explain"):
        from . import own_run

        errors = Console(stderr=True, soft_wrap=True)

        def say(line: str) -> None:
            errors.print(line, markup=False, highlight=False)
        if args.command == "prepare":
            return own_run.prepare(args.stack, say)
        return own_run.explain(args.stack, args.errors, say, events=args.events)

    known = stack_names()
    chosen = getattr(args, "stacks", None) or ([args.stack] if getattr(args, "stack", None) else [])
    unknown = [s for s in chosen if s not in known]
    if unknown:
        return fail(f"unknown stack(s) {', '.join(unknown)}; stacks: {', '.join(known)}")
    if args.command == "destroy":
        return fail(f"a plain destroy can lose data; run `python -m federation remove {args.stack}`: it decommissions "
                    "the cloud's nodes first (README: Remove a cloud)")
    if args.command == "remove" and args.stack == SEED:
        return fail("the seed holds the established cluster and the federation's CAs; it is not removed from here")
    if args.command in ("serve", "join", "preview", "remove", "ranges", "fingerprints", "orphans") or (
            args.command == "status" and not (args.host and args.certs_dir)):
        missing = require_pulumi_cli()
        if missing is not None:
            return missing
    if args.command in ("serve", "join", "preview", "remove", "orphans"):
        # The CLI's own words for a stack file that is no mapping do not name the file (v3.259: "getting stack
        # configuration: expected project to be an object"); ours do, before any engine starts. A join leaves
        # out a member whose file is broken, as one that fails preflight; it needs its seed's.
        checked = [args.seed] if args.command in ("join", "serve") else (chosen or known)
        unreadable = list(stack_file_errors(checked).values())
        if unreadable:
            return fail("; ".join(unreadable))
    default_backend()
    try:
        environments = stack_environments(args, known)
    except secrets.SecretsSetupError as error:
        return fail(str(error))

    if args.command == "preflight":
        findings = preflight.run_preflight(args.stacks or known, ROOT, my_address=_my_address(args),
                                           parallel=args.parallel, environments=environments,
                                           passphrases=args.passphrases)
        console.print(preflight_table(findings))
        if args.json:
            args.json.write_text(json.dumps([dataclasses.asdict(f) for f in findings], indent=1))
        failed = preflight.failed_stacks(findings)
        if failed:
            console.print(f"[bold red]preflight failed:[/] {', '.join(failed)}")
        return 1 if failed else 0
    if args.command == "join":
        members = [s for s in (args.stacks or known) if s != args.seed]
        run = Run(members, "up", run_dir(args.runs_dir, "join"))
        for name, error in stack_file_errors(members).items():
            run.skip(name, error)
            members.remove(name)
        if not args.skip_preflight:
            members = checked_members(run, members, _my_address(args), console, environments, args.passphrases)
        for name in [m for m in members if m not in environments]:
            run.skip(name, secrets.what_to_do([name], args.passphrases))
        members = [m for m in members if m in environments]
        needs_seed = needs_the_seed(members)
        # The members' `up`s wait for the signatures the seed's signing service makes meanwhile
        # (components/signature.py, federation/service.py), as with operators apart; --two-step: they do not.
        waiting = {WAIT_SECONDS: "0"} if args.two_step else {}
        stacks = [LazyStack(name, {**environments[name], **waiting}) for name in members]
        seed = LazyStack(args.seed, environments.get(args.seed, {}))
        signing = None if args.two_step or not needs_seed else lambda: signing_service(
            RecordedSeed(run, seed), Invitations(tuple(f"organization/{PROJECT}/{m}" for m in members)),
            log_line(run.log_dir / f"{args.seed}.log"))
        return orchestrate(run, lambda: join(run, seed, stacks, args.parallel, needs_seed=needs_seed,
                                             signing=signing), not args.no_dashboard, console)
    if args.command == "serve":
        return serve_command(args, LazyStack(args.seed, environments[args.seed]), console)
    if args.command == "preview":
        names = args.stacks or known
        run = Run(names, "preview", run_dir(args.runs_dir, "preview"))
        return orchestrate(run, lambda: run_concurrently(run, [LazyStack(n, environments[n]) for n in names],
                                                         args.parallel), not args.no_dashboard, console)
    if args.command == "remove":
        if not args.yes:
            console.print(f"`remove {args.stack}` destroys that stack. Its cloud-wide decommission resource goes first: "
                          "it refuses, deleting nothing, when fewer than 3 live nodes or fewer clouds than the "
                          "replication factor would remain; otherwise it decommissions every node of the cloud at "
                          "once and waits for 'decommissioned'. Only then go its servers and data volumes. "
                          "Pass --yes to do it.")
            return 0
        run = Run([args.stack], "destroy", run_dir(args.runs_dir, "remove"))
        code = orchestrate(run, lambda: run_concurrently(run, [LazyStack(args.stack, environments[args.stack])], 1),
                           True, console)
        if code == 0:
            console.print(f"next: remove {args.stack} from the seed's crdb-federation:members and run `pulumi up "
                          "--stack seed`; every operator drops its addresses from federationCidrs")
        return code
    if args.command == "orphans":
        return orphans_command(LazyStack(args.stack, environments[args.stack]), args.delete, console, args.settle)
    if args.command == "ranges":
        return ranges_command(known, console)
    if args.command == "fingerprints":
        return fingerprints_command(args.seed, console)
    return status_command(args, console, environments.get(args.seed, {}))


def stack_file_errors(stacks: Sequence[str]) -> dict[str, str]:
    """What the CLI would refuse in each stack's file, in words naming the file or the key, by stack."""
    errors = {}
    for name in dict.fromkeys(stacks):
        try:
            stack_config.resolve(name)
        except stack_config.StackConfigError as error:
            errors[name] = str(error)
    return errors


def needs_the_seed(members: Sequence[str]) -> bool:
    """Some member takes its trust from the seed's stack (readable stack files only: the others are left out)."""
    readable = [name for name in members if name not in stack_file_errors([name])]
    return any(stack_config.resolve(name).get("seedStack") for name in readable)


def stack_environments(args: argparse.Namespace, known: Sequence[str]) -> dict[str, dict[str, str]]:
    """The secrets environment of every stack whose engine this command runs (none for the others)."""
    command = args.command
    if command == "join":
        members = [s for s in (args.stacks or known) if s != args.seed]
        # Members with explicit join addresses and CA (no seedStack) never run the seed's engine.
        involved = members + ([args.seed] if needs_the_seed(members) else [])
    elif command in ("preview", "preflight"):
        involved = args.stacks or list(known)
    elif command in ("remove", "orphans"):
        involved = [args.stack]
    elif command == "status" and not (args.host and args.certs_dir) or command == "serve":
        involved = [args.seed]
    else:
        return {}
    environments, missing = secrets.stack_environments(list(dict.fromkeys(involved)), args.passphrases,
                                                       one_passphrase=args.one_passphrase)
    # Preflight reports a member without one as that member's failure, and join leaves it out as it leaves out
    # one that fails preflight; every other command (and a join without its seed's) runs none of them.
    refused = [s for s in missing if command not in ("preflight", "join") or s == getattr(args, "seed", None)]
    if refused:
        raise secrets.SecretsSetupError(secrets.what_to_do(refused, args.passphrases))
    if not args.one_passphrase:
        secrets.use_files_only()
    return environments


def signing_service(seed, invitations: "Invitations", say: Callable[[str], None],
                    cluster: Optional["ClusterView"] = None) -> "SigningService":
    import os

    from .backend_state import BackendReader
    from .service import SigningService

    return SigningService(seed, BackendReader(os.environ["PULUMI_BACKEND_URL"]), invitations, say,
                          seed_stack=seed.name, cluster=cluster)


def log_line(path: Path) -> Callable[[str], None]:
    def say(line: str) -> None:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"[signing service] {line}\n")
    return say


def serve_command(args: argparse.Namespace, seed: "LazyStack", console: Console) -> int:
    """The seed's signing service with the scene's dashboard (web page and terminal), until interrupted."""
    import signal
    import threading
    import time

    from .dashboard import scene_table
    from .runner import seed_is_up
    from .service import ClusterView, read_invitations
    from .web import DashboardServer

    try:
        invitations = read_invitations(seed.config(), seed.config_value(f"{PROJECT}:joinTokens"))
    except (ValueError, StackNotInBackend) as error:
        return fail(str(error))
    if not invitations.stacks:
        return fail(f"{PROJECT}:invited = []: expected the member stacks the seed signs, set ahead by its operator "
                    f"(pulumi config set --path 'invited[0]' organization/{PROJECT}/<member> --stack {args.seed})")
    if not seed_is_up(seed):
        return fail(f"the seed stack '{args.seed}' is not up: bring it up first (scripts/up.sh {args.seed})")

    def say(line: str) -> None:
        console.print(f"{time.strftime('%H:%M:%S')} {line}", markup=False, highlight=False, soft_wrap=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cluster = ClusterView(lambda: seed.outputs(secrets=True)).start()  # the root client key: the seed's own
    with signing_service(seed, invitations, say, cluster) as service, \
            DashboardServer(service.snapshot, host=args.host, port=args.port) as web:
        say(f"dashboard: {web.url} ; signing the invited stacks: {', '.join(invitations.stacks)}")
        try:
            if args.no_dashboard or not console.is_terminal:
                stop.wait()
            else:
                with Live(scene_table(service.snapshot()), console=console, refresh_per_second=1) as live:
                    while not stop.wait(1.0):
                        live.update(scene_table(service.snapshot()))
        except KeyboardInterrupt:
            pass
        say("stopping: the seed's up under way ends first")
    cluster.stop()
    return 0


def fingerprints_command(seed: str, console: Console) -> int:
    """What the seed's operator hands every member's operator out of band: their caSha256 and clientCaSha256."""
    from components.federation import fingerprints

    outputs = preflight.pulumi_stack_outputs(ROOT)(seed)
    if not outputs.get("caCertificate"):
        return fail(f"the seed stack '{seed}' has no caCertificate output; bring it up first")
    console.print(f"crdb-federation:caSha256: {json.dumps(fingerprints(outputs['caCertificate']))}\n"
                  f"crdb-federation:clientCaSha256: {json.dumps(fingerprints(outputs['clientCaCertificate']))}",
                  soft_wrap=True)
    return 0


def orphans_command(stack: "LazyStack", delete: bool, console: Console, settle: float = 0) -> int:
    """Lists what provably is the stack's in its cloud and its state lacks (federation/recovery.py), and what bears
    its names without its mark; with --delete, removes the former while it holds the stack's lock."""
    from . import recovery

    try:
        with stack.holding() if delete else contextlib.nullcontext():
            cloud, orphans = stack.orphans(settle if delete else 0)
            for orphan in orphans:
                console.print(orphan.line(), soft_wrap=True)
            deletable = [o for o in orphans if not o.kept]
            if not orphans:
                console.print(f"{stack.name}: no orphans: nothing in its cloud carries this stack's mark without "
                              "being in its state")
                return 0
            if not delete:
                console.print(f"{len(orphans)} orphan(s), {len(deletable)} of them this stack's and holding nothing; "
                              f"`python -m federation orphans {stack.name} --delete` deletes those")
                return 1
            # Whole lines: an ID broken at the terminal's width could not be pasted into `openstack … delete`.
            deleted, _ = recovery.delete_orphans(cloud, deletable, lambda line: console.print(line, soft_wrap=True))
    except (StackNotInBackend, StackLocked, NotImplementedError) as refused:
        return fail(str(refused))
    console.print(f"deleted {len(deleted)} of {len(deletable)} orphan(s) not kept")
    return 0 if len(deleted) == len(orphans) else 1


def ranges_command(stacks: Sequence[str], console: Console) -> int:
    """What each operator puts in federationCidrs: every other stack's node addresses, one /32 each (public
    outputs: no stack's secrets are needed)."""
    read = preflight.pulumi_stack_outputs(ROOT)
    found: dict[str, list[str]] = {}
    for name in stacks:
        try:
            nodes = read(name).get("nodes") or []
        except Exception:
            nodes = []
        found[name] = [f"{n['publicIp']}/32" for n in nodes]
    for name, cidrs in found.items():
        console.print(f"# {name}: " + (" ".join(cidrs) if cidrs else "not up yet"))
    every = [c for cidrs in found.values() for c in cidrs]
    console.print("crdb-federation:federationCidrs:\n" + "".join(f"  - {c}\n" for c in every), end="")
    return 0


def _my_address(args: argparse.Namespace) -> Optional[str]:
    return args.my_address or preflight.public_address()


def checked_members(run: Run, members: list[str], my_address: Optional[str], console: Console,
                    environments: dict[str, dict[str, str]], passphrases: Path) -> list[str]:
    """Preflight every member; one that fails is marked failed in the run and not started, the others go on."""
    findings = preflight.run_preflight(members, ROOT, my_address=my_address, environments=environments,
                                       passphrases=passphrases)
    failed = preflight.failed_stacks(findings)
    if failed:
        console.print(preflight_table([f for f in findings if f.stack in failed and f.status == preflight.FAIL]))
    for name in failed:
        first = next(f for f in findings if f.stack == name and f.status == preflight.FAIL)
        run.skip(name, f"preflight: {first.check}: {first.setting}: {first.found} ({first.todo}); "
                       "see `python -m federation preflight " + name + "`")
    return [m for m in members if m not in failed]


def status_command(args: argparse.Namespace, console: Console, environment: dict[str, str]) -> int:
    from .status import collect, connect, render, write_client_certs

    host, certs = args.host, args.certs_dir
    with tempfile.TemporaryDirectory(prefix="crdb-federation-certs-") as scratch:
        if host is None or certs is None:
            outputs = LazyStack(args.seed, environment).outputs(secrets=True)  # the root client key
            if not outputs.get("joinAddresses"):
                return fail(f"the seed stack '{args.seed}' has no joinAddresses output; bring it up first")
            host = host or split_address(outputs["joinAddresses"][0])[0]
            certs = certs or write_client_certs(outputs, Path(scratch))
        try:
            with connect(host, certs) as connection:
                render(collect(connection), console)
        except Exception as error:  # a clear message, not a traceback
            return fail(f"cannot query the federation at {host}:{COCKROACH_SQL_PORT}: {error}")
    return 0


class LazyStack:
    """Selects the Automation API stack on first use, inside the worker thread that runs it; `environment`: its
    own secrets provider's (federation/secrets.py)."""

    def __init__(self, name: str, environment: Optional[dict[str, str]] = None):
        self.name, self.environment = name, environment or {}
        self._stack: Optional[PulumiStack] = None

    def _get(self, create: bool = False) -> PulumiStack:
        """Only an `up` may create the stack (PulumiStack says so when it does)."""
        if self._stack is None:
            self._stack = PulumiStack(self.name, environment=self.environment, create=create)
        return self._stack

    def run(self, operation, on_event, on_output) -> None:
        self._get(create=operation == "up").run(operation, on_event, on_output)

    def prepare(self, on_output) -> None:
        self._get().prepare(on_output)

    def outputs(self, secrets: bool = False) -> dict:
        return self._get().outputs(secrets)

    def add_members(self, stacks):
        return self._get().add_members(stacks)

    def set_signing(self, early, refusals):
        return self._get().set_signing(early, refusals)

    def members(self):
        return self._get().members()

    def config(self):
        return self._get().config()

    def config_value(self, key):
        return self._get().config_value(key)

    def qualified_name(self):
        return self._get().qualified_name()

    def member_name(self):
        return self._get().member_name()

    def orphans(self, settle: float = 0):
        return self._get().orphans(settle)

    def holding(self):
        return self._get().holding()


if __name__ == "__main__":
    sys.exit(main())
