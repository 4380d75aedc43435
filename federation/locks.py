"""The stack's lock on a diy backend: who holds it, whether that holder is provably gone, and the tool's own hold
of it while the recovery sweep deletes anything.

The CLI's lock object names a pid, a user, a hostname and a time (pulumi v3.259.0 pkg/backend/diy/lock.go
newLockContent). A hostname and a pid prove nothing: containers, `--network host` containers and machines left
with a default name share hostnames, and a pid is only meaningful in its own PID namespace. So the tool runs the
CLI through a shim that, before it execs the real CLI (same pid), records the pid with the machine's boot ID, its
PID namespace and the process's start time. A holder is provably gone only when such a record shows it ran in
this boot and this PID namespace, and no process with that pid and start time runs now. Then only its own lock
object is deleted, never all of them as `pulumi cancel` does (backend.go CancelCurrentUpdate).

The tool takes and releases the lock alike on a file:// directory and an s3:// bucket (federation/bucket.py, with
the operator's own credentials): one check-write-check routine over a LockStore of either kind.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import os
import re
import shlex
import socket
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Protocol
from urllib.parse import unquote, urlsplit

from . import bucket

STATE_DIRECTORY = Path(os.environ.get("XDG_STATE_HOME", "~/.local/state")).expanduser() / "crdb-federation"
RECORDS = STATE_DIRECTORY / "cli-runs"
PROC = Path("/proc")

# "  file:///…/locks/…/<id>.json: created by user@host (pid 123) at 2026-12-01T23:59:00Z"
# (pulumi v3.259.0 pkg/backend/diy/lock.go checkForLock)
_LOCK_LINE = re.compile(r"^\s*(?P<url>\S+): created by (?P<user>[^@\s]+)@(?P<host>\S+) \(pid (?P<pid>\d+)\) "
                        r"at (?P<at>\S+)\s*$")


class StackLocked(RuntimeError):
    """Another run holds the stack: nothing was changed."""


@dataclass(frozen=True)
class LockHolder:
    url: str
    user: str
    host: str
    pid: int
    at: str

    def describe(self) -> str:
        """As the CLI words it (lock.go checkForLock)."""
        return f"created by {self.user}@{self.host} (pid {self.pid}) at {self.at}"


def lock_holders(message: str) -> list[LockHolder]:
    """The holders the CLI names when it refuses a locked stack."""
    found = []
    for line in message.splitlines():
        match = _LOCK_LINE.match(line)
        if match:
            found.append(LockHolder(match["url"], match["user"], match["host"], int(match["pid"]), match["at"]))
    return found


# ------------------------------------------------------------------------------------------ this machine
@dataclass(frozen=True)
class Place:
    """Where a process runs: the boot of the machine and the PID namespace (its inode)."""

    boot_id: str
    pid_namespace: int


def here(proc: Path = PROC) -> Place:
    return Place((proc / "sys/kernel/random/boot_id").read_text().strip(), os.stat(proc / "self/ns/pid").st_ino)


def start_ticks(pid: int, proc: Path = PROC) -> Optional[int]:
    """The process's start time in clock ticks since boot (proc(5) /proc/pid/stat field 22), or None if no such
    process runs. The fields after the command name, which may hold spaces, start at field 3."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class RunRecord:
    """What the shim wrote for one CLI process: where it ran, when it started (ticks since boot, and the
    machine's boot time in seconds since the epoch)."""

    place: Place
    ticks: int
    boot_time: int

    def started(self, ticks_per_second: int) -> float:
        return self.boot_time + self.ticks / ticks_per_second


def read_record(pid: int, records: Path = RECORDS) -> Optional[RunRecord]:
    try:
        boot_id, namespace, ticks, boot_time = (records / str(pid)).read_text().split()
        return RunRecord(Place(boot_id, int(namespace)), int(ticks), int(boot_time))
    except (FileNotFoundError, ValueError):
        return None


def provably_gone(holder: LockHolder, *, hostname: Optional[str] = None, records: Path = RECORDS,
                  proc: Path = PROC) -> bool:
    """True only if the holder was a CLI this tool ran on this machine, in this boot and this PID namespace, and
    that process runs no more. Anything else (another machine, another container with our hostname, a CLI run by
    hand, a reused pid) is not proof."""
    if holder.host != (hostname or socket.gethostname()):
        return False
    record = read_record(holder.pid, records)
    if record is None or record.place != here(proc):
        return False
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    # A lock is taken after its process starts: a record of a later process under the same pid proves nothing.
    if record.started(ticks_per_second) > _epoch(holder.at) + 1:
        return False
    return start_ticks(holder.pid, proc) != record.ticks


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def render_cli_shim(real_cli: str, records: Path) -> str:
    """The `pulumi` the tool runs (pure): records this process's place and start, then becomes the real CLI with
    the same pid, which is the pid its lock object will name."""
    return f"""#!/usr/bin/env bash
# crdb-federation: records where this CLI process runs (federation/locks.py), then execs the real CLI.
set -eu
records={shlex.quote(str(records))}
mkdir -p "$records"
stat=$(<"/proc/$$/stat")
read -r -a fields <<<"${{stat##*) }}"
boot_time=$(awk '$1 == "btime" {{ print $2 }}' /proc/stat)
ns=$(stat -L -c %i /proc/self/ns/pid)
printf '%s %s %s %s\\n' "$(</proc/sys/kernel/random/boot_id)" "$ns" "${{fields[19]}}" "$boot_time" \\
  >"$records/$$.tmp" && mv -f "$records/$$.tmp" "$records/$$"
exec {shlex.quote(real_cli)} "$@"
"""


def record_this_process(records: Path = RECORDS, proc: Path = PROC) -> None:
    """What the shim records for a CLI, for this process (the tool holding a lock of its own), so that a later run
    on this machine can prove it gone when it was killed holding one."""
    records.mkdir(parents=True, exist_ok=True)
    place, pid = here(proc), os.getpid()
    boot_time = next(line.split()[1] for line in (proc / "stat").read_text().splitlines() if line.startswith("btime"))
    temporary = records / f"{pid}.tmp"
    temporary.write_text(f"{place.boot_id} {place.pid_namespace} {start_ticks(pid, proc)} {boot_time}\n")
    temporary.replace(records / str(pid))


def cli_root(real_cli: str, records: Path = RECORDS, directory: Path = STATE_DIRECTORY) -> Path:
    """A directory whose bin/pulumi is the shim for this real CLI (automation PulumiCommand takes a root)."""
    text = render_cli_shim(real_cli, records)
    root = directory / "cli" / hashlib.sha256(text.encode()).hexdigest()[:16]
    shim = root / "bin" / "pulumi"
    if not shim.is_file() or shim.read_text() != text:
        shim.parent.mkdir(parents=True, exist_ok=True)
        temporary = shim.with_suffix(f".{os.getpid()}")
        temporary.write_text(text)
        temporary.chmod(0o755)
        temporary.replace(shim)
    return root


# ------------------------------------------------------------------------------------------ the tool's own hold
class LockStore(Protocol):
    """A diy backend's objects, keyed as the CLI keys them (relative to the backend): a file:// directory or an
    s3:// bucket (federation/bucket.py). url() names an object as the tool's refusal does; key_of() reads back
    the URL the CLI's refusal names a lock object by, None when it is not one of this backend's objects."""

    def list(self, prefix: str) -> list[str]: ...
    def get(self, key: str) -> bytes: ...
    def put(self, key: str, body: bytes) -> None: ...
    def delete(self, key: str) -> None: ...
    def url(self, key: str) -> str: ...
    def key_of(self, url: str) -> Optional[str]: ...


# gocloud.dev's fileblob, the diy backend's file:// store, keeps each object's attributes beside it in a sidecar file
# (blob/fileblob/attrs.go, attrsExt) that no listing returns as an object.
ATTRS_SUFFIX = ".attrs"


@dataclass(frozen=True)
class FileStore:
    """A file:// backend's directory (gocloud.dev fileblob): a key is a path under it."""

    root: Path

    def list(self, prefix: str) -> list[str]:
        directory = self.root / prefix
        if not directory.is_dir():
            return []
        return [prefix + p.name for p in directory.iterdir() if p.is_file() and not p.name.endswith(ATTRS_SUFFIX)]

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def put(self, key: str, body: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)

    def delete(self, key: str) -> None:
        path = self.root / key
        path.unlink(missing_ok=True)
        path.with_name(path.name + ATTRS_SUFFIX).unlink(missing_ok=True)  # fileblob's sidecar goes with its object

    def url(self, key: str) -> str:
        return str(self.root / key)

    def key_of(self, url: str) -> Optional[str]:
        path = _file_path(url)
        if path is None:
            return None
        try:
            return Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            return None


def _file_root(backend_url: str) -> Optional[Path]:
    """The directory of a file:// backend (pulumi's diy `file://~` is the home directory), else None."""
    parts = urlsplit(backend_url)
    if parts.scheme != "file":
        return None
    path = unquote(parts.netloc + parts.path)
    return Path(path).expanduser() if path.startswith("~") else Path(path)


def _file_path(url: str) -> Optional[Path]:
    parts = urlsplit(url)
    return Path(unquote(parts.path)) if parts.scheme == "file" else None


HELD_BACKENDS = "the tool holds a stack's lock itself on a file:// or s3:// backend only"


def cannot_hold(backend_url: str) -> Optional[str]:
    """Why the tool cannot hold a stack's lock on this backend, or None when it can (pure: nothing is dialled)."""
    if _file_root(backend_url) is not None:
        return None
    try:
        if bucket.parse(backend_url) is not None:
            return None
    except bucket.UnsupportedBackend as error:
        return str(error)
    return f"{HELD_BACKENDS}, not {backend_url.split('?', 1)[0] or 'the CLI login'}"


def lock_store(backend_url: str) -> LockStore:
    """The backend's objects, reached with this operator's own credentials (an s3:// bucket: the AWS SDK's
    default chain, as the CLI's). NotImplementedError where cannot_hold() says why."""
    reason = cannot_hold(backend_url)
    if reason:
        raise NotImplementedError(reason)
    root = _file_root(backend_url)
    return FileStore(root) if root is not None else bucket.open_bucket(backend_url)


LOCKS = ".pulumi/locks"  # lock.go lockDir: workspace.BookkeepingDir/LockDir


def lock_prefix(qualified_stack: str) -> str:
    """Where the CLI keeps the stack's lock objects, relative to the backend: .pulumi/locks/<org>/<project>/<stack>/
    (pulumi v3.259.0 pkg/backend/diy/lock.go stackLockDir; bucket.go listBucket lists dir + "/")."""
    return f"{LOCKS}/{qualified_stack}/"


def lock_directory(backend_url: str, qualified_stack: str) -> Optional[Path]:
    """The stack's lock directory on a file backend, else None."""
    root = _file_root(backend_url)
    return None if root is None else root / lock_prefix(qualified_stack)


def _is_lock_key(key: str, qualified_stack: Optional[str]) -> bool:
    """A lock object of one stack: .pulumi/locks/<org>/<project>/<stack>/<id>.json (lock.go lockPath), of
    qualified_stack's when given. No segment may be empty, "." or "..": a store may resolve them as paths."""
    parts = key.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != LOCKS or not parts[-1].endswith(".json"):
        return False
    if any(p in ("", ".", "..") for p in parts):
        return False
    return qualified_stack is None or key.startswith(lock_prefix(qualified_stack))


def release(holder: LockHolder, backend_url: str, qualified_stack: Optional[str] = None) -> bool:
    """Deletes this one holder's lock object, named by the URL the CLI's refusal gives it (lock.go
    lockURLForError), never another's; False where it is not a stack's lock object in this backend (of
    qualified_stack's, when given) or the tool cannot hold this backend's locks. A store's refusal raises."""
    try:
        store = lock_store(backend_url)
    except NotImplementedError:
        return False
    key = store.key_of(holder.url)
    if key is None or not _is_lock_key(key, qualified_stack):
        return False
    store.delete(key)
    return True


@contextmanager
def holding(backend_url: str, qualified_stack: str) -> Iterator[None]:
    """Holds the stack's lock as the CLI takes it (lock.go Lock: check, write our object, check again, and
    Unlock deletes it), so no `pulumi up`, `refresh` or `destroy` of the stack can start meanwhile. Raises
    StackLocked, naming the holders, when another run holds it; NotImplementedError on a backend the tool cannot
    hold (cannot_hold); a store's refusal (e.g. AccessDenied for another operator's stack) as the store said it."""
    store = lock_store(backend_url)
    prefix = lock_prefix(qualified_stack)
    ours = f"{prefix}{uuid.uuid4()}.json"
    record_this_process()
    _refuse_if_held(store, prefix, ours)
    # The fields of lock.go newLockContent; Go's time.Time reads an RFC 3339 timestamp with an offset.
    store.put(ours, json.dumps({"pid": os.getpid(), "username": getpass.getuser(), "hostname": socket.gethostname(),
                                "timestamp": datetime.now(timezone.utc).isoformat()}).encode())
    try:
        _refuse_if_held(store, prefix, ours)
        yield
    finally:
        store.delete(ours)


def _refuse_if_held(store: LockStore, prefix: str, ours: str) -> None:
    """Refuses while another holds the stack; a lock left by a run provably gone (a CLI or a tool process of this
    machine, killed while it held it) is released instead."""
    others = [key for key in store.list(prefix) if key != ours]
    if others:
        said = []
        for key in others:
            try:
                content = json.loads(store.get(key))
                holder = LockHolder(store.url(key), content.get("username"), content.get("hostname"),
                                    content.get("pid"), content.get("timestamp"))
            except (OSError, ValueError):  # gone meanwhile, or not a lock the CLI wrote: still a holder
                said.append(store.url(key))
                continue
            if provably_gone(holder):
                store.delete(key)
            else:
                said.append(f"{holder.url}: {holder.describe()}")
    if others and said:
        raise StackLocked("another run holds this stack: " + "; ".join(said) + ". Nothing was started; run again "
                          "once it ends (if you know its process is gone, `pulumi cancel` releases the lock)")


@contextmanager
def stack_file_lock(path: Path, directory: Path = STATE_DIRECTORY) -> Iterator[None]:
    """Holds this machine's lock on a stack file while it is read and written back (the CLI writes it in place,
    not atomically: pulumi sdk/go/common/workspace/project.go save). The lock file lives outside the repository."""
    lock = directory / "stack-files" / f"{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


if __name__ == "__main__":  # scripts/up.sh: the shim for the CLI it found (prints the directory holding bin/pulumi)
    import sys

    print(cli_root(sys.argv[1]))
