"""Runs Pulumi operations on many stacks at once: bounded parallelism, one failure never stops the others,
each stack's full log in its own file."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from . import faults, locks, recovery, stack_config
from .progress import CloudProgress

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "crdb-federation"
OPERATIONS = ("up", "preview", "destroy")


class StackNotInBackend(RuntimeError):
    """The backend has no such stack, and the command may not create it."""


def stack_names() -> list[str]:
    """Every stack of the project: one stacks/Pulumi.<name>.yaml each."""
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))


class Stack(Protocol):
    """What the orchestrator needs of a stack; PulumiStack is the real one, tests use fakes."""

    name: str

    def run(self, operation: str, on_event: Callable[[Any], None], on_output: Callable[[str], None]) -> None: ...

    def outputs(self) -> dict[str, Any]: ...

    def add_members(self, stacks: Sequence[str]) -> list[str]: ...


def stack_workspace(work_dir: Path, environment: Optional[dict[str, str]] = None) -> Any:
    """A LocalWorkspace over the project that leaves the repository's current stack alone: `pulumi stack
    select` would move it to whichever stack the tool touched last, and a bare `pulumi` afterwards would target
    that one. Every operation passes --stack anyway (automation _stack.py), so selecting only checks that the
    stack exists, as the Automation API does for remote workspaces (_local_workspace.py select_stack)."""
    from pulumi import automation as auto

    workspace = auto.LocalWorkspace(work_dir=str(work_dir), env_vars=dict(environment or {}),
                                    pulumi_command=_recorded_cli())
    workspace.select_stack = lambda name: workspace._run_pulumi_cmd_sync(["stack", "--stack", name])
    return workspace


def _recorded_cli() -> Any:
    """The CLI on PATH, run through the shim that records where each of its processes runs, so that a lock it
    leaves can be proven stale (federation/locks.py)."""
    import shutil

    from pulumi import automation as auto

    real = shutil.which("pulumi")
    if real is None:
        return None  # the Automation API's own error names the missing CLI
    return auto.PulumiCommand(root=str(locks.cli_root(real)), skip_version_check=True)


class PulumiStack:
    """A stack of this project through the Automation API (a LocalWorkspace over the project directory,
    so the CLI reads stacks/Pulumi.<name>.yaml as `pulumi up` does)."""

    def __init__(self, name: str, work_dir: Path = ROOT, automation_stack: Any = None,
                 delete_server: Optional[Callable[[str], None]] = None, environment: Optional[dict[str, str]] = None,
                 *, create: bool = False):
        """`create`: a stack the backend lacks is created (a first `up`, which says so); otherwise it is refused,
        naming the backend: a recovery, removal or status of a stack that is not there must never make one, with
        the whole live deployment then counted as its orphans."""
        from pulumi import automation as auto

        self.name = name
        self.work_dir = work_dir
        self.retry_delay = 5.0
        self.backend_url = (environment or {}).get("PULUMI_BACKEND_URL") or os.environ.get("PULUMI_BACKEND_URL", "")
        self.created = False
        if automation_stack is None:
            workspace = stack_workspace(work_dir, environment)
            try:
                automation_stack = auto.Stack.select(name, workspace)
            except auto.StackNotFoundError:
                if not create:
                    backend = self.backend_url or "the CLI's login"
                    raise StackNotInBackend(f"{name}: no such stack in the state backend ({backend}); nothing was "
                                            "created. Its first `up` creates it; if it runs already, set "
                                            "PULUMI_BACKEND_URL to the backend that holds it") from None
                automation_stack = auto.Stack.create(name, workspace)
                self.created = True
            except auto.CommandError as error:
                # Wrong credentials or a store that does not answer: one line naming the backend, before anything.
                said = faults.backend_fault(name, str(error), self.backend_url)
                if said is None:
                    raise
                raise faults.CloudFault(said) from None
        self._stack = automation_stack
        self._delete_server = delete_server or self._delete_server_in_cloud
        # Where set_signing leaves what the seed's next `up` signs (this process's own, 0700).
        self._signing_files = Path(tempfile.mkdtemp(prefix="crdb-signing-"))
        # Set once the checks an `up` starts with have passed, or its own `up` succeeded, in this run of the tool:
        # the seed's later signing `up`s and a member's converging `up`, minutes later, skip them.
        self._checked = False

    def run(self, operation: str, on_event: Callable[[Any], None], on_output: Callable[[str], None]) -> None:
        if self.created:
            on_output(f"{self.name} was not in the state backend ({self.backend_url or 'the CLI login'}): created it "
                      "for its first up")
            self.created = False
        if operation in ("up", "destroy"):
            self._unlocked(lambda: self._run(operation, on_event, on_output), on_output)
        else:
            self._run(operation, on_event, on_output)

    def prepare(self, on_output: Callable[[str], None]) -> None:
        """The checks an `up` starts with, ahead of it: an interrupted or failed last run's leftovers are cleared
        and servers in ERROR healed. The signing service has the seed's done while the members build, so that the
        seed's first signing `up` starts the engine at once (the targeted refresh alone takes 10 s)."""
        if not self._checked:
            self._unlocked(lambda: self._check_before_up(on_output), on_output)

    def _check_before_up(self, on_output: Callable[[str], None]) -> None:
        self._recover(on_output)
        broken = self._broken_servers(on_output)
        if broken:
            self._heal(broken, on_output)
        self._checked = True

    def _run(self, operation: str, on_event: Callable[[Any], None], on_output: Callable[[str], None]) -> None:
        if operation == "destroy":
            self._recover(on_output)
        if operation == "up" and not self._checked:
            self._check_before_up(on_output)
        self._checked = False
        method = getattr(self._stack, operation)
        try:
            try:
                method(on_event=on_event, on_output=on_output, color="never", show_secrets=False)
            except Exception as error:
                if operation not in ("up", "destroy") or SERVER_IN_ERROR_NOT_DELETED not in str(error):
                    raise
                # The provider waits for a deleted server to leave ACTIVE or SHUTOFF only; one in ERROR fails
                # that wait at once although Nova goes on deleting it. The next attempt finds it gone.
                on_output(f"a server in ERROR was still being deleted; retrying in {self.retry_delay:.0f}s")
                time.sleep(self.retry_delay)
                method(on_event=on_event, on_output=on_output, color="never", show_secrets=False)
        except Exception as error:
            explanation = self._explain(str(error))
            if explanation is None:
                raise
            on_output(explanation)
            raise faults.CloudFault(explanation) from error
        self._checked = operation == "up"

    def _explain(self, text: str) -> Optional[str]:
        return explain_failure(self.name, text, self.backend_url, self.work_dir)

    def _unlocked(self, work: Callable[[], None], on_output: Callable[[str], None]) -> None:
        """Runs `work`; if a lock refuses it and every holder is provably gone (federation/locks.py: a CLI this tool
        ran in this boot and PID namespace, whose process runs no more), deletes those holders' lock objects alone
        and runs it once more. Anything else is refused, naming who holds the stack and what to run."""
        try:
            work()
        except locks.StackLocked:
            raise
        except Exception as error:
            holders = locks.lock_holders(str(error))
            if not holders:
                raise
            if not all(locks.provably_gone(h) for h in holders):
                raise locks.StackLocked(_held_message(self.name, holders)) from error
            on_output(f"{self.name}'s lock was left by a run that is gone ("
                      + "; ".join(h.describe() for h in holders) + "): releasing that lock alone")
            if not all(locks.release(h, self.backend_url, self.qualified_name()) for h in holders):
                raise locks.StackLocked(_held_message(self.name, holders)) from error
            work()

    def _recover(self, on_output: Callable[[str], None]) -> None:
        """An interrupted run leaves pending operations in the state and, in the cloud, what its creates had made;
        a create whose answer the cloud lost (an API that went away mid-request) leaves something too, after a run
        that failed or even one that succeeded on a retry. So every `up` and `destroy` through the tool first clears
        pending creates with a refresh, then, holding the stack's lock, deletes what provably is the stack's and
        its state does not hold (federation/recovery.py)."""
        pending = recovery.pending_operations(self._deployment())
        if pending:
            self._stack.refresh(clear_pending_creates=True, on_output=on_output, color="never", show_secrets=False)
            on_output(f"the last run of {self.name} was interrupted: {len(pending)} pending operation(s) "
                      f"({recovery.describe_pending(pending)}), cleared by a refresh")
        unheld = locks.cannot_hold(self.backend_url)
        if unheld:
            on_output(f"{self.name}: not looking for what an interrupted run left in the cloud: {unheld}; "
                      f"`python -m federation orphans {self.name}` lists it")
            return
        try:
            with self.holding():
                cloud, orphans = self.orphans(settle=SETTLE_SECONDS)
                deletable = [o for o in orphans if not o.kept]
                if deletable:
                    on_output(f"{self.name}: {len(deletable)} resource(s) in the cloud carry this stack's mark and "
                              "its state does not hold them (left by an interrupted or failed run); deleting them")
                recovery.delete_orphans(cloud, deletable, on_output)
        except locks.StackLocked:
            raise
        except Exception as error:  # the run itself will say what is wrong with the cloud, in the operator's words
            on_output(f"{self.name}: could not look for what an earlier run left in the cloud ({error}); going on")
            return
        for orphan in orphans:
            if orphan.kept:
                on_output(f"not deleted: {orphan.line()}")

    def holding(self) -> Any:
        """The stack's lock, held by this process (federation/locks.py)."""
        return locks.holding(self.backend_url, self.qualified_name())

    def _cli(self, args: list[str]) -> Any:
        """One CLI call in the stack's workspace (its environment, its secrets provider)."""
        return self._stack.workspace._run_pulumi_cmd_sync(args)

    def _deployment(self) -> dict[str, Any]:
        """The stack's state without decrypting it (automation's export_stack passes --show-secrets): IDs, types
        and pending operations are all the recovery reads."""
        done = self._cli(["stack", "export", "--stack", self.name])
        return json.loads(done.stdout).get("deployment") or {}

    def orphans(self, settle: float = 0) -> tuple[Any, list[recovery.Orphan]]:
        """The stack's cloud, and what provably is the stack's in it (or bears its names) that the state lacks;
        `settle`: seconds to wait for the stack's own resources still being made (recovery.settled)."""
        config = stack_config.resolve(self.name, self.work_dir)
        cloud, member = self._cloud()
        deployment = self._deployment()
        if recovery.pending_operations(deployment):
            raise locks.StackLocked(f"{self.name} has pending operations: a run is under way or was interrupted; "
                                    "its next `up` through the tool clears them first")
        ownership = recovery.Ownership.of(deployment, member, cloud, config.get("sshPublicKey") or None)
        known = recovery.state_ids(deployment)
        return cloud, recovery.settled(lambda: recovery.find_orphans(cloud, ownership, known), settle)

    def _cloud(self) -> tuple[Any, str]:
        """The stack's cloud and its member name."""
        return stack_cloud(self.name, self.work_dir), self.member_name()

    def _broken_servers(self, on_output: Callable[[str], None]) -> list[str]:
        """Servers to heal. A server that ended in ERROR is otherwise only `updated` by the next `up`, which
        leaves it in ERROR (the provider hides an `error` power state from its diff). A targeted refresh
        reads each server's current status first, so one that broke later is found too."""
        servers = server_urns(self._deployment())
        if not servers:
            return []
        self._stack.refresh(target=servers, on_output=on_output, color="never")
        return servers_in_error(self._deployment())

    def _heal(self, broken: list[str], on_output: Callable[[str], None]) -> None:
        """Deletes each server in ERROR in the cloud, then forgets it and its volume attachments, so the `up`
        that follows creates it again, on the same port and with the same data volume.

        Not `--replace`: Nova refuses to detach a volume from a server in ERROR (409), so the engine could
        never delete the attachment first; deleting the server detaches its volumes. Nothing else is
        replaced either: the node's decommission resource stays, and the healed node rejoins with its store."""
        deployment = self._deployment()
        ids = server_ids(deployment)
        on_output(f"healing {len(broken)} server(s) in ERROR: deleting them in the cloud, then creating them "
                  f"again: {', '.join(broken)}")
        for urn in broken:
            self._delete_server(ids[urn])
        self._stack.refresh(target=broken + attachments_of(deployment, broken), on_output=on_output, color="never")

    def _delete_server_in_cloud(self, server_id: str) -> None:
        cloud, _ = self._cloud()
        server = cloud.compute.get_server(server_id)
        cloud.compute.delete_server(server)
        cloud.compute.wait_for_delete(server, wait=600)

    def outputs(self, secrets: bool = False) -> dict[str, Any]:
        """The stack's outputs; its secret ones only with `secrets` (the CLI prints "[secret]" otherwise and
        decrypts nothing): only the seed's status needs one, its root client key."""
        if secrets:
            return {key: value.value for key, value in self._stack.outputs().items()}
        done = self._cli(["stack", "output", "--json", "--stack", self.name])
        return json.loads(done.stdout or "{}")

    def config(self) -> dict[str, Any]:
        """The stack's config, its secrets left encrypted (automation's get_all_config passes --show-secrets, and
        the seed's holds its CA key and licence)."""
        done = self._cli(["config", "--json", "--stack", self.name])
        return json.loads(done.stdout or "{}")

    def members(self) -> list[str]:
        """The seed's crdb-federation:members: the stacks it admitted for good."""
        listed = self.config().get(MEMBERS_KEY) or {}
        return listed.get("objectValue") or json.loads(listed.get("value") or "[]")

    def add_members(self, stacks: Sequence[str]) -> list[str]:
        """Admits member stacks on the seed: appends those not yet in crdb-federation:members (through the
        CLI, which honours stackConfigDir); returns the ones added. A read, then a write of the stack file: two
        joins on one seed take turns, or one's entries would be lost."""
        with locks.stack_file_lock(stack_config.stack_file(self.name, self.work_dir)):
            current = self.members()
            added = [stack for stack in dict.fromkeys(stacks) if stack not in current]
            self._write_members(added, start=len(current))
        return added

    def _write_members(self, stacks: Sequence[str], start: int) -> None:
        """crdb-federation:members[start], [start+1], ... in one CLI call (a batch of any size)."""
        from pulumi import automation as auto

        if stacks:
            self._stack.set_all_config({f"{MEMBERS_KEY}[{index}]": auto.ConfigValue(stack)
                                        for index, stack in enumerate(stacks, start=start)}, path=True)

    def set_signing(self, early: dict[str, dict[str, str]], refusals: dict[str, dict[str, str]]) -> None:
        """What the seed's next `up` signs and refuses (components/settings.py EARLY_REQUESTS_VARIABLE and
        REFUSALS_VARIABLE), or nothing: in its engine's environment alone, so nothing of them outlives this process."""
        from components.settings import EARLY_REQUESTS_VARIABLE, REFUSALS_VARIABLE

        environment = self._stack.workspace.env_vars
        for variable, value in ((EARLY_REQUESTS_VARIABLE, early), (REFUSALS_VARIABLE, refusals)):
            if not value:
                environment.pop(variable, None)
                continue
            # In a file the variable names (@path): Linux refuses one environment string over 128 KiB
            # (MAX_ARG_STRLEN), about 45 members' requests.
            path = self._signing_files / f"{variable}.json"
            path.write_text(json.dumps(value, sort_keys=True))
            environment[variable] = f"@{path}"

    def config_value(self, key: str) -> str:
        """One config value (project:key), decrypted with the stack's own secrets provider; "" when unset."""
        if key not in self.config():
            return ""
        return self._cli(["config", "get", key, "--stack", self.name]).stdout.strip()

    def qualified_name(self) -> str:
        """organization/project/stack, as the seed lists it (`pulumi stack --show-name -Q`)."""
        done = self._cli(["stack", "--show-name", "--fully-qualify-stack-names", "--stack", self.name])
        return done.stdout.strip()

    def member_name(self) -> str:
        return stack_config.resolve(self.name, self.work_dir).get("memberName") or self.name


def explain_failure(name: str, text: str, backend_url: str, work_dir: Path = ROOT) -> Optional[str]:
    """The operator's words for a run that failed on its state backend, a missing stack reference, a cloud out of
    quota or a cloud API that stopped answering (federation/faults.py); None for anything else. Reading the cloud
    to say more must never hide the run's own error."""
    from . import preflight

    backend = faults.backend_fault(name, text, backend_url)
    if backend:
        return backend
    missing = faults.missing_stack_message(name, text, faults.references_of(name, work_dir))
    if missing:
        return missing
    text += faults.build_faults(text, lambda: stack_cloud(name, work_dir))  # why Nova ended a build in ERROR
    resources = faults.quotas_exceeded(text)
    outage = faults.api_outage(text)
    if not resources and outage is None:
        return None
    try:
        cloud = stack_cloud(name, work_dir)
    except Exception:
        cloud = None
    if resources:
        try:
            settings = preflight.stack_settings(name, work_dir)
            return faults.quota_message(name, *faults.quota_headrooms(cloud, settings, resources))
        except Exception:
            return faults.quota_message(name, [], resources)
    try:
        catalog = cloud.session.auth.get_access(cloud.session).service_catalog.catalog
    except Exception:  # Keystone itself may be the one gone
        catalog = []
    return faults.outage_message(name, outage, faults.service_of(outage.url, catalog))


def stack_cloud(name: str, work_dir: Path = ROOT) -> Any:
    """The stack's cloud, with its own clouds.yaml entry as `pulumi up` uses it."""
    import openstack

    config = stack_config.resolve(name, work_dir)
    return openstack.connect(cloud=config["cloud"], region_name=config["region"])


def _held_message(stack: str, holders: Sequence[locks.LockHolder]) -> str:
    return (f"another run holds {stack}: " + "; ".join(f"{h.url}: {h.describe()}" for h in holders)
            + ". Nothing was started. Run again once it ends; if you know that run is gone (its machine or container "
            f"stopped), `pulumi cancel --stack {stack}` releases the lock")


MEMBERS_KEY = "crdb-federation:members"
SERVER_TYPE = "openstack:compute/instance:Instance"
ATTACH_TYPE = "openstack:compute/volumeAttach:VolumeAttach"
# terraform-provider-openstack's delete wait: Pending ACTIVE/SHUTOFF, Target DELETED/SOFT_DELETED.
SERVER_IN_ERROR_NOT_DELETED = "unexpected state 'ERROR', wanted target 'DELETED, SOFT_DELETED'"


def _servers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in deployment.get("resources") or [] if r.get("type") == SERVER_TYPE]


def server_urns(deployment: dict[str, Any]) -> list[str]:
    """The URNs of every server in an exported stack state (pure)."""
    return [r["urn"] for r in _servers(deployment)]


def server_ids(deployment: dict[str, Any]) -> dict[str, str]:
    """Server URN -> its Nova id (pure)."""
    return {r["urn"]: r.get("id", "") for r in _servers(deployment)}


def attachments_of(deployment: dict[str, Any], servers: Sequence[str]) -> list[str]:
    """The volume attachments that depend on these servers (pure)."""
    return [r["urn"] for r in deployment.get("resources") or []
            if r.get("type") == ATTACH_TYPE and set(servers) & set(r.get("dependencies") or [])]


def servers_in_error(deployment: dict[str, Any]) -> list[str]:
    """Servers whose last read found them in ERROR, or whose create failed and which that read did not find
    running (pure). A create whose wait an API outage cut short left a server that runs: it is kept, with its ID,
    and the next `up` only clears its init errors."""
    def broken(resource: dict[str, Any]) -> bool:
        state = (resource.get("outputs") or {}).get("powerState")
        return state == "error" or bool(resource.get("initErrors")) and state not in ("active", "shutoff")

    return [r["urn"] for r in _servers(deployment) if broken(r)]


def default_backend() -> None:
    """The same local file backend as scripts/up.sh unless PULUMI_BACKEND_URL says otherwise."""
    if not os.environ.get("PULUMI_BACKEND_URL"):
        state = ROOT / ".pulumi-state"
        state.mkdir(exist_ok=True)
        os.environ["PULUMI_BACKEND_URL"] = f"file://{state}"


class Run:
    """One orchestrated run: the progress of every cloud, on one clock that starts with the run."""

    def __init__(self, names: Sequence[str], operation: str, log_dir: Path,
                 clock: Callable[[], float] = time.monotonic):
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, not {operation!r}")
        self.operation = operation
        self.log_dir = log_dir
        self.clock = clock
        self.t0 = clock()
        self.started_wall = time.time()
        self.progress = {name: CloudProgress(name, operation) for name in names}
        self.lock = threading.Lock()
        # Called with (stack name, engine event) for every event of every stack (the signer listens).
        self.listeners: list[Callable[[str, Any], None]] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def now(self) -> float:
        return self.clock() - self.t0

    def execute(self, stack: Stack) -> CloudProgress:
        """Runs the operation on one stack; any failure is recorded, never raised."""
        progress = self.progress[stack.name]
        with self.lock:
            progress.start(self.now())
        # Appended to: a member's two `up`s and the seed's signing runs each add theirs.
        with open(self.log_dir / f"{stack.name}.log", "a", encoding="utf-8") as log:
            def on_output(line: str) -> None:
                log.write(line.rstrip("\n") + "\n")
                log.flush()

            def on_event(event: Any) -> None:
                with self.lock:
                    progress.on_event(event, self.now())
                for listener in self.listeners:
                    listener(stack.name, event)

            try:
                stack.run(self.operation, on_event, on_output)
                error: Optional[BaseException] = None
            except Exception as caught:  # one cloud's failure must not stop the others
                error = caught
                if not isinstance(caught, faults.CloudFault):  # a fault's message is in the log already
                    log.write("".join(traceback.format_exception(caught)))
            with self.lock:
                progress.finish(self.now(), error)
        return progress

    def add(self, name: str) -> None:
        with self.lock:
            self.progress = {name: CloudProgress(name, self.operation), **self.progress}

    def skip(self, name: str, reason: str) -> None:
        with self.lock:
            progress = self.progress[name]
            progress.start(self.now())
            progress.finish(self.now(), RuntimeError(reason))

    def snapshot(self) -> list[CloudProgress]:
        with self.lock:
            return [p.copy() for p in self.progress.values()]


def run_concurrently(run: Run, stacks: Sequence[Stack], parallelism: int) -> None:
    if parallelism < 1:
        raise ValueError("parallelism must be at least 1")
    with ThreadPoolExecutor(max_workers=min(parallelism, max(len(stacks), 1)), thread_name_prefix="stack") as pool:
        list(pool.map(run.execute, stacks))


def seed_is_up(seed: Stack) -> bool:
    try:
        outputs = seed.outputs()
    except Exception:
        return False
    return bool(outputs.get("joinAddresses")) and bool(outputs.get("caCertificate"))


def join(run: Run, seed: Stack, members: Sequence[Stack], parallelism: int, *, needs_seed: bool = True,
         signing: Optional[Callable[[], Any]] = None) -> None:
    """Joins members in the order trust needs, all at once at each step:
    1. the seed, if it is not up;
    2. every member: it builds its cloud and makes its certificate requests. With `signing` (a context manager
       factory: the seed's signing service, federation/service.py, the same one `python -m federation serve`
       runs) the seed signs while they build: the service reads each member's requests from its state in the
       backend and signs every member whose requests arrived in one seed `up`, and the member's own `up`, waiting
       in its SignatureWait, installs the certificates and joins;
    3. the seed admits the members still waiting (crdb-federation:members) and signs their requests (signed
       early: it lists the addresses they exported);
    4. those members again: they install their certificates and join (signed early: they take the join list
       with every member's addresses).
    Members configured with explicit join addresses and CA (no seedStack) neither wait for nor use the seed."""
    if needs_seed and not seed_is_up(seed):
        run.add(seed.name)
        run.execute(seed)
        if run.progress[seed.name].status != "succeeded":
            for member in members:
                run.skip(member.name, f"not started: the seed stack '{seed.name}' is not up")
            return
    if not needs_seed:
        run_concurrently(run, members, parallelism)
        return
    if signing is None:
        run_concurrently(run, members, parallelism)
    else:
        with signing():
            run_concurrently(run, members, parallelism)
    # Signed early, a member's nodes joined within its first `up`; the seed's signing `up`s could not list the
    # addresses it exports at the end of that `up`, so the seed and the member run once more for their join lists
    # (off the critical path: the nodes already run).
    waiting = [m for m in members if run.progress[m.name].status == "succeeded" and (
        signing is not None or not _signed(m))]
    if not waiting:
        return
    seed.add_members([m.outputs()["stack"] for m in waiting])
    if seed.name not in run.progress:
        run.add(seed.name)
    run.execute(seed)
    if run.progress[seed.name].status != "succeeded":
        for member in waiting:
            run.skip(member.name, f"built, but the seed '{seed.name}' did not sign its certificates "
                                  f"(see {run.log_dir / (seed.name + '.log')})")
        return
    run_concurrently(run, waiting, parallelism)


SETTLE_SECONDS = 120  # how long a sweep waits for a dead run's server or volume to settle (recovery.settled)


class RecordedSeed:
    """The seed as the signing service runs it within a join: each signing `up` is a run of the join's dashboard,
    timeline and log, as the members' are."""

    def __init__(self, run: Run, seed: Stack):
        self._run, self._seed = run, seed
        self.name = seed.name

    def run(self, operation: str, on_event: Callable[[Any], None], on_output: Callable[[str], None]) -> None:
        if self.name not in self._run.progress:
            self._run.add(self.name)
        progress = self._run.execute(self._seed)
        if progress.status != "succeeded":
            raise RuntimeError(progress.error or f"the seed's {operation} failed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._seed, name)


def _signed(stack: Stack) -> bool:
    try:
        return bool(stack.outputs().get("certificatesSigned"))
    except Exception:
        return False
