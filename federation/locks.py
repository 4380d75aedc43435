"""The stack's lock on a diy backend: who holds it, whether that holder is provably gone, and the tool's own hold
of it while the recovery sweep deletes anything.

The CLI's lock object names a pid, a user, a hostname and a time (pulumi v3.259.0 pkg/backend/diy/lock.go
newLockContent). A hostname and a pid prove nothing: containers, `--network host` containers and machines left
with a default name share hostnames, and a pid is only meaningful in its own PID namespace. So the tool runs the
CLI through a shim that, before it execs the real CLI (same pid), records the pid with the machine's boot ID, its
PID namespace and the process's start time. A holder is provably gone only when such a record shows it ran in
this boot and this PID namespace, and no process with that pid and start time runs now. Then only its own lock
object is deleted, never all of them as `pulumi cancel` does (backend.go CancelCurrentUpdate).
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
from typing import Iterator, Optional
from urllib.parse import unquote, urlsplit

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


def release(holder: LockHolder, backend_url: str) -> bool:
    """Deletes this one holder's lock object on a file backend; False where it cannot (another backend: the
    operator releases it)."""
    path = _file_path(holder.url)
    if path is None or _file_root(backend_url) is None:
        return False
    path.unlink(missing_ok=True)
    path.with_name(path.name + ATTRS_SUFFIX).unlink(missing_ok=True)
    return True


# ------------------------------------------------------------------------------------------ the tool's own hold
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


def lock_directory(backend_url: str, qualified_stack: str) -> Optional[Path]:
    """Where the CLI keeps the stack's lock objects: .pulumi/locks/<org>/<project>/<stack> (lock.go stackLockDir)."""
    root = _file_root(backend_url)
    return None if root is None else root / ".pulumi" / "locks" / Path(*qualified_stack.split("/"))


@contextmanager
def holding(backend_url: str, qualified_stack: str) -> Iterator[None]:
    """Holds the stack's lock as the CLI takes it (lock.go Lock: check, write our object, check again), so no
    `pulumi up`, `refresh` or `destroy` of the stack can start meanwhile. Raises StackLocked, naming the holders,
    when another run holds it, and NotImplementedError on a backend other than a file one."""
    directory = lock_directory(backend_url, qualified_stack)
    if directory is None:
        raise NotImplementedError(f"the tool holds a stack's lock itself on a file:// backend only, not {backend_url}")
    directory.mkdir(parents=True, exist_ok=True)
    ours = directory / f"{uuid.uuid4()}.json"
    _refuse_if_held(directory, ours)
    ours.write_text(json.dumps({"pid": os.getpid(), "username": getpass.getuser(), "hostname": socket.gethostname(),
                                "timestamp": datetime.now(timezone.utc).isoformat()}))
    try:
        _refuse_if_held(directory, ours)
        yield
    finally:
        ours.unlink(missing_ok=True)


# gocloud.dev's fileblob, the diy backend's file:// store, keeps each object's attributes beside it in a sidecar file
# (blob/fileblob/attrs.go, attrsExt) that no listing returns as an object.
ATTRS_SUFFIX = ".attrs"


def _refuse_if_held(directory: Path, ours: Path) -> None:
    others = [p for p in directory.iterdir() if p.is_file() and p != ours and not p.name.endswith(ATTRS_SUFFIX)]
    if others:
        said = []
        for path in others:
            try:
                content = json.loads(path.read_text())
                holder = LockHolder(str(path), content.get("username"), content.get("hostname"), content.get("pid"),
                                    content.get("timestamp"))
                said.append(f"{path}: {holder.describe()}")
            except (OSError, ValueError):
                said.append(str(path))
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
