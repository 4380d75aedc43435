"""The seed's signing service (`python -m federation serve`): signs invited members while their own `up`s run.

It runs with the seed's credentials alone. It watches the shared backend (federation/backend_state.py) for member
stacks whose `up` waits in its SignatureWait (components/signature.py), decides which of them the seed signs
(`plan`, pure), and signs every member whose requests have arrived in one seed `up` (a batch), giving the seed's
program their requests and its refusals through its engine's environment (components/settings.py). The seed's
outputs then hold the certificates (with the digest of the requests they answer) and the refusals, which every
member's wait reads. Nothing is kept but in the backend and the seed's stack file, so a restart picks up where the
backend is: what is signed is in the seed's outputs, what waits is in the members' states.

Admission (set ahead of the event by the seed's operator, in the seed's stack file):
- crdb-federation:invited: the member stacks the service signs. Another stack that waits is refused, and told so.
- crdb-federation:joinTokens (a secret: stack -> token), optional: a listed stack is signed only when its wait
  carries the HMAC of its stack and requests made with that token (components/signature.join_proof), which its
  operator was given out of band and set as its secret crdb-federation:joinToken.
Every request then goes through the seed program's own checks (components/federation.py): its common names and
key, its addresses against the seed's and every other member's, a locality name not taken, the key pinned at its
first signature. The README's "Who can make the seed sign what" is the threat model.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence

from components.federation import admission_problems
from components.signature import join_proof, requests_digest

from .backend_state import BackendReader, StackView, Waiting

STATES = ("not started", "building", "waiting for signature", "signed", "joined", "failed", "refused")
RETRY_SECONDS = (10, 20, 40, 60)  # after a seed `up` that failed for a reason of the seed's own
# Members started together ask within seconds of one another, yet a seed `up` taken at the first arrival signs that
# one alone and the rest wait a whole seed `up` more: once there is something to sign, the service waits this long
# for the invited members whose `up` runs and that have not asked yet.
GATHER_SECONDS = 3.0


class Seed(Protocol):
    """What the service needs of the seed's stack (runner.PulumiStack)."""

    name: str

    def run(self, operation: str, on_event: Callable[[Any], None], on_output: Callable[[str], None]) -> None: ...

    def set_signing(self, early: dict[str, dict[str, str]], refusals: dict[str, dict[str, str]]) -> None: ...

    def add_members(self, stacks: Sequence[str]) -> list[str]: ...

    def members(self) -> list[str]: ...

    def prepare(self, on_output: Callable[[str], None]) -> None: ...


@dataclass(frozen=True)
class Invitations:
    """The seed operator's admission rule: invited stacks, and the join token of those that need one."""

    stacks: tuple[str, ...]
    tokens: dict[str, str] = field(default_factory=dict)

    def refusal(self, stack: str, digest: str, proof: str) -> Optional[str]:
        """Why `stack` may not be signed, or None."""
        if stack not in self.stacks:
            return (f"{stack} is not invited: the seed's operator lists the stacks it signs in crdb-federation:invited "
                    "(ask them to add it)")
        token = self.tokens.get(stack)
        if token and not hmac.compare_digest(proof, join_proof(token, stack, digest)):
            return (f"{stack}'s requests carry no proof of the join token the seed's operator gave it "
                    "(set it as the secret crdb-federation:joinToken, exactly as given, and run `up` again)")
        return None


@dataclass(frozen=True)
class Plan:
    """What the next seed `up` does: signs `early` (every admitted member's current requests, `batch` among them
    not signed yet), publishes `refusals`, and admits `joined` for good (crdb-federation:members)."""

    batch: tuple[str, ...]
    early: dict[str, dict[str, str]]
    refusals: dict[str, dict[str, str]]
    joined: tuple[str, ...]
    new_refusals: tuple[str, ...]

    @property
    def needs_seed_up(self) -> bool:
        return bool(self.batch or self.joined or self.new_refusals)


def current_requests(view: StackView) -> Optional[tuple[str, dict[str, str], Waiting]]:
    """(digest, requests, its wait) of a stack waiting on all three of its current requests; None while its state
    holds another set than its wait (mid-step) or no wait at all (a member of an earlier version)."""
    waiting, requests = view.waiting(), view.requests()
    if waiting is None or set(requests) != {"node", "client", "ops"}:
        return None
    digest = requests_digest(requests["node"], requests["client"], requests["ops"])
    if digest != waiting.requests:
        return None
    return digest, requests, waiting


def plan(views: Sequence[StackView], seed: StackView, invitations: Invitations,
         refused: dict[str, dict[str, str]], admitted: Sequence[str]) -> Plan:
    """Which members the next seed `up` signs, refuses and admits for good (pure). `refused`: the service's
    refusals so far (stack -> {requests, reason}), updated here with the new ones; `admitted`: the seed's
    crdb-federation:members."""
    outputs = seed.outputs()
    signed = outputs.get("signedCertificates") or {}
    published = outputs.get("refusals") or {}
    seed_ips = [ip for node in outputs.get("nodes") or [] for ip in (node.get("publicIp"), node.get("privateIp")) if ip]
    kept: dict[str, dict[str, Any]] = {}  # signed already, with these requests
    candidates: dict[str, dict[str, Any]] = {}
    for view in views:
        found = current_requests(view)
        if found is None:
            continue
        digest, requests, waiting = found
        stack = view.qualified
        entry = {"stack": stack, "member": waiting.member, "requests": requests, "digest": digest}
        if (refused.get(stack) or {}).get("requests") == digest:
            continue
        if (signed.get(stack) or {}).get("requests") == digest:
            kept[stack] = entry
            continue
        why = invitations.refusal(stack, digest, waiting.proof)
        if why is None and waiting.stack != stack:
            why = f"{stack}'s state says it is {waiting.stack}"
        if why:
            refused[stack] = {"requests": digest, "reason": why}
        else:
            candidates[stack] = entry
    # The seed program's checks, ahead of its `up`: a problem is refused with the member it names, the others go on.
    problems = admission_problems(outputs.get("member") or "", seed_ips, [*kept.values(), *candidates.values()])
    for stack in list(candidates):
        mine = [p for p in problems if p.startswith(f"{stack}: ")]
        if mine:
            refused[stack] = {"requests": candidates.pop(stack)["digest"], "reason": "; ".join(mine)}
    early = {stack: {"member": e["member"], **e["requests"]} for stack, e in {**kept, **candidates}.items()}
    by_stack = {view.qualified: view for view in views}
    joined = tuple(stack for stack in kept if stack not in admitted and _finished_signed(by_stack[stack]))
    new_refusals = tuple(s for s, r in refused.items() if (published.get(s) or {}).get("requests") != r["requests"])
    return Plan(tuple(candidates), early, dict(refused), joined, new_refusals)


def _finished_signed(view: StackView) -> bool:
    """Its last `up` ended, succeeded, with its certificates installed: its outputs (join addresses) exist."""
    return (view.running_since is None and view.last_update.get("result") == "succeeded"
            and bool(view.outputs().get("certificatesSigned")))


def row(view: StackView, seed: StackView, refused: dict[str, dict[str, str]], seen_start: Optional[float]) -> dict:
    """One dashboard row for a member stack (pure): its state, phase and times (federation/web.py's contract)."""
    found = current_requests(view)
    digest = found[0] if found else None
    stack = view.qualified
    answered = digest is not None and ((seed.outputs().get("signedCertificates") or {}).get(stack) or {}).get(
        "requests") == digest
    running = view.running_since is not None
    last = view.last_update
    state, detail, phase = "not started", "", ""
    refusal = refused.get(stack) or {}
    if refusal and (refusal["requests"] == digest or digest is None and not running):
        state, detail = "refused", refusal["reason"]
    elif running:
        waiting = view.waiting()
        phase = view.phase()
        state = "signed" if answered else (
            "waiting for signature" if waiting is not None and not waiting.done and digest else "building")
    elif last.get("result") == "failed":
        state, detail = "failed", (last.get("message") or "its last up failed")
    elif last.get("result") == "succeeded" and view.outputs().get("certificatesSigned"):
        state = "joined"
    elif last:
        state, detail = "waiting for signature", "its up ended unsigned: its next up installs the certificates"
    started = view.running_since if running else (
        seen_start if seen_start is not None else last.get("startTime"))
    ended = None if running or not last else last.get("endTime")
    return {"stack": view.stack, "state": state, "phase": phase, "detail": detail, "started": started,
            "ended": ended if state in ("joined", "failed") else None, "cluster": None}


class SigningService:
    """Runs `plan` against the backend until stopped: one thread watches (every `poll` seconds), one signs."""

    def __init__(self, seed: Seed, reader: BackendReader, invitations: Invitations, say: Callable[[str], None],
                 *, poll: float = 1.0, seed_stack: str = "seed", cluster: Optional[ClusterView] = None,
                 on_timing: Optional[Callable[[str, str, float], None]] = None):
        """`on_timing(stack, what, epoch seconds)`, optional (bench/scene.py): called once per set of requests
        with `what` "requests seen" when a read first finds them complete, then "answered" when a read of the seed's
        outputs first finds them signed."""
        self.seed, self.reader, self.invitations, self.say = seed, reader, invitations, say
        self.cluster = cluster
        self.on_timing = on_timing
        self._timed: set[tuple[str, str, str]] = set()  # (stack, digest, what) already told
        self.poll, self.seed_stack = poll, seed_stack
        self.views: dict[str, StackView] = {}
        self.seed_view = StackView(seed_stack)
        self.refused: dict[str, dict[str, str]] = {}
        # The seed's crdb-federation:members, read once (a CLI call) and kept as this service adds to it.
        self.admitted: Optional[list[str]] = None
        self.starts: dict[str, float] = {}  # stack -> the lock time of the run the service saw start
        self.status = "starting"
        self.gathering_since: Optional[float] = None
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._watch, name="watch", daemon=True),
                        threading.Thread(target=self._sign, name="sign", daemon=True)]

    # -- watching ---------------------------------------------------------------------------------------------
    def observe(self) -> None:
        """Reads the seed and every stack that is invited or waits for a signature."""
        seed_view = self.reader.view(self.seed_stack)
        names = [n for n in self.reader.stacks() if n != self.seed_stack]
        views = {}
        for name in names:
            view = self.reader.view(name)
            # A refused stack keeps its row after its `up` failed (its wait, never made, is gone from its state).
            shown = view.qualified in self.invitations.stacks or view.qualified in self.refused
            if shown or view.waiting() is not None:
                views[name] = view
                if view.running_since is not None:
                    self.starts[name] = view.running_since
        with self.changed:  # also serialises _time: the signing thread observes too
            self.seed_view, self.views = seed_view, views
            self.changed.notify_all()
            if self.on_timing is not None:
                self._time(self.on_timing, views.values(), seed_view)

    def _time(self, on_timing: Callable[[str, str, float], None], views: Iterable[StackView],
              seed_view: StackView) -> None:
        signed = seed_view.outputs().get("signedCertificates") or {}
        for view in views:
            found = current_requests(view)
            if found is None:
                continue
            answered = (signed.get(view.qualified) or {}).get("requests") == found[0]
            for what in ("requests seen", "answered") if answered else ("requests seen",):
                if (view.qualified, found[0], what) not in self._timed:
                    self._timed.add((view.qualified, found[0], what))
                    on_timing(view.qualified, what, time.time())

    def _watch(self) -> None:
        unread = ""  # said once while it lasts, not every poll
        while not self.stopping.is_set():
            try:
                self.observe()
                if unread:
                    self.say("the backend answers again")
                unread = ""
            except Exception as error:  # a backend that hiccups: say it, keep watching
                if not unread:
                    self.say(f"could not read the backend: {_last_line(str(error))}; retrying every {self.poll:g} s")
                unread = str(error)
            self.stopping.wait(self.poll)

    # -- signing ----------------------------------------------------------------------------------------------
    def next_plan(self) -> Plan:
        with self.changed:
            views, seed_view = list(self.views.values()), self.seed_view
        if self.admitted is None:
            self.admitted = self.seed.members()
        return plan(views, seed_view, self.invitations, self.refused, self.admitted)

    def _sign(self) -> None:
        try:  # the seed's checks before an `up` while the first requests are on their way (its `up` repeats them)
            self.seed.prepare(self.say)
        except Exception as error:
            self.say(f"the checks before the seed's first signing up failed; its up repeats them: {error}")
        failures = 0
        while not self.stopping.is_set():
            try:
                current = self.next_plan()
            except Exception as error:  # the seed's config unread: the watcher says what the backend does
                self.status = f"could not plan the next signing: {_last_line(str(error))}"
                self.stopping.wait(self.poll)
                continue
            if not current.needs_seed_up or not self._gathered(current):
                if not current.needs_seed_up:
                    self.status = f"watching {len(self.invitations.stacks)} invited stack(s)"
                with self.changed:
                    self.changed.wait(self.poll)
                continue
            self.gathering_since = None
            try:
                signed = self.sign(current)
            except Exception as error:  # e.g. the seed's stack file unwritable: said, and the plan is made again
                self.status = f"could not sign: {_last_line(str(error))}"
                self.say(self.status)
                signed = False
            if signed:
                failures = 0
            else:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                self.status += f"; retrying in {delay} s"
                self.stopping.wait(delay)

    def _gathered(self, current: Plan) -> bool:
        """True once the batch need wait no longer (GATHER_SECONDS): every invited member whose `up` runs has asked,
        or the window is over."""
        now = time.monotonic()
        self.gathering_since = self.gathering_since or now
        with self.changed:
            views = list(self.views.values())
        asked = set(current.early) | set(current.refusals)
        coming = [v for v in views if v.running_since is not None and v.qualified in self.invitations.stacks
                  and v.qualified not in asked]
        return not coming or now - self.gathering_since >= GATHER_SECONDS

    def sign(self, current: Plan) -> bool:
        """One seed `up` for this plan; True when it succeeded or refused someone (the next plan goes on)."""
        for stack in current.new_refusals:
            self.say(f"refused {stack}: {current.refusals[stack]['reason']}")
        if current.joined:
            self.seed.add_members(current.joined)
            self.admitted = [*(self.admitted or []), *current.joined]
            self.say(f"admitted for good (crdb-federation:members): {', '.join(current.joined)}")
        what = ", ".join(s.rsplit("/", 1)[-1] for s in current.batch) or "no new member"
        self.status = f"signing {what} (seed up started {time.strftime('%H:%M:%S')})"
        self.say(self.status)
        self.seed.set_signing(current.early, current.refusals)
        lines: list[str] = []
        started = time.monotonic()
        try:
            self.seed.run("up", lambda event: None, lines.append)
        except Exception as error:
            text = f"{error}\n" + "\n".join(lines)
            named = [s for s in current.batch if s in text]
            for stack in named:
                line = next((l.strip() for l in text.splitlines() if stack in l), "")
                asked = current.early[stack]
                self.refused[stack] = {"requests": requests_digest(asked["node"], asked["client"], asked["ops"]),
                                       "reason": f"the seed's up refused it: {line}"}
            if named:
                self.say(f"the seed's up refused {', '.join(named)}; signing the others next")
                return True
            self.status = f"the seed's up failed: {_last_line(str(error))}"
            self.say(self.status)
            return False
        self.say(f"signed {what} in {time.monotonic() - started:.0f} s")
        self.observe()
        return True

    # -- the dashboard --------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self.changed:
            views, seed_view = dict(self.views), self.seed_view
        rows = {name: row(view, seed_view, self.refused, self.starts.get(name)) for name, view in views.items()}
        clouds = self.cluster.clouds if self.cluster else {}
        for name, view in views.items():
            waiting = view.waiting()
            rows[name]["cluster"] = clouds.get(waiting.member if waiting else name)
        for stack in self.invitations.stacks:
            name = stack.rsplit("/", 1)[-1]
            rows.setdefault(name, {"stack": name, "state": "not started", "phase": "", "detail": "",
                                   "started": None, "ended": None, "cluster": None})
        return {"seed": self.seed_stack, "now": time.time(), "service": self.status,
                "rows": [rows[name] for name in sorted(rows)]}

    def start(self) -> "SigningService":
        self.observe()
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        with self.changed:
            self.changed.notify_all()
        for thread in self.threads:
            thread.join()

    def __enter__(self) -> "SigningService":
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.stop()


class ClusterView:
    """The cluster's own view of each cloud where the seed's SQL answers: its live member nodes, as `root` with the
    seed's client certificate (federation/status.py), read every `every` seconds in a thread of its own."""

    def __init__(self, seed_outputs: Callable[[], dict[str, Any]], every: float = 15.0):
        self.seed_outputs, self.every = seed_outputs, every
        self.clouds: dict[str, dict[str, Any]] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="cluster", daemon=True)

    def read(self, certs: Any) -> dict[str, dict[str, Any]]:
        from components.settings import split_address

        from .status import connect, read_nodes, write_client_certs

        outputs = self.seed_outputs()
        host = split_address((outputs.get("joinAddresses") or [""])[0])[0]
        with connect(host, write_client_certs(outputs, certs)) as connection:
            nodes = read_nodes(connection)
        clouds: dict[str, dict[str, Any]] = {}
        for node in nodes:
            if node.membership == "active":
                cloud = clouds.setdefault(node.cloud, {"live": 0, "locality": f"cloud={node.cloud}"})
                cloud["live"] += int(node.is_live)
        return clouds

    def _watch(self) -> None:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="crdb-federation-certs-") as scratch:
            while not self.stopping.is_set():
                try:
                    self.clouds = self.read(Path(scratch) / "certs")
                except Exception:  # the SQL does not answer (yet): the rows say so
                    self.clouds = {}
                self.stopping.wait(self.every)

    def start(self) -> "ClusterView":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)


def _last_line(text: str) -> str:
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else text


def read_invitations(config: dict[str, Any], tokens_json: str = "") -> Invitations:
    """The seed's crdb-federation:invited (from `pulumi config --json`) and its secret joinTokens' value (pure)."""
    entry = config.get("crdb-federation:invited") or {}
    stacks = entry.get("objectValue") or json.loads(entry.get("value") or "[]")
    tokens = json.loads(tokens_json) if tokens_json else {}
    if not isinstance(tokens, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                               for k, v in tokens.items()):
        raise ValueError("crdb-federation:joinTokens = (secret): expected a mapping of invited stacks to tokens")
    unknown = sorted(set(tokens) - set(stacks))
    if unknown:
        raise ValueError(f"crdb-federation:joinTokens names {unknown}: expected only stacks in crdb-federation:invited")
    return Invitations(tuple(stacks), tokens)
