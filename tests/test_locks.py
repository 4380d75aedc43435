"""The stack's lock (federation/locks.py): a holder is released only when it is provably gone, judged with real
processes run through the real shim, in this PID namespace and in another (unshare --pid)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from federation import locks
from tests.validators import assert_shellcheck_clean

# The CLI's refusal, as pulumi v3.259.0 pkg/backend/diy/lock.go checkForLock words it.
LOCKED = ("error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or "
          "delete the lock file with `pulumi cancel`.\n  file:///state/.pulumi/locks/organization/crdb-federation/"
          "otc/5a3c.json: created by ops@builder (pid 4242) at 2026-12-01T23:59:00Z\n")


def test_the_holders_are_read_from_the_clis_refusal():
    [holder] = locks.lock_holders(LOCKED)
    assert (holder.user, holder.host, holder.pid, holder.at) == ("ops", "builder", 4242, "2026-12-01T23:59:00Z")
    assert holder.url.endswith("/otc/5a3c.json")


def test_the_shim_is_clean_shell():
    assert_shellcheck_clean(locks.render_cli_shim("/opt/pulumi/bin/pulumi", Path("/var/lib/runs")), "bash")


@pytest.fixture
def shim(tmp_path):
    """The real shim in front of a stand-in CLI that, like the real one, takes its lock as itself (the pid the shim
    exec'd into) and then runs until it is killed."""
    real = tmp_path / "real-pulumi"
    real.write_text('#!/usr/bin/env bash\necho "$$" > "$1"\nexec sleep 600\n')
    real.chmod(0o755)
    records = tmp_path / "records"
    root = locks.cli_root(str(real), records=records, directory=tmp_path / "state")
    return root / "bin" / "pulumi", records


def _holder(pid: int, at: float | None = None, host: str | None = None) -> locks.LockHolder:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at if at is not None else time.time() + 1))
    return locks.LockHolder("file:///state/x.json", "ops", host or os.uname().nodename, pid, stamp)


def _started(command: list[str], pid_file: Path) -> subprocess.Popen:
    process = subprocess.Popen(command)
    for _ in range(200):
        if pid_file.is_file() and pid_file.read_text().strip():
            return process
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"{command} never wrote {pid_file}")


def test_a_cli_the_tool_ran_here_is_gone_only_once_its_process_is(shim, tmp_path):
    cli, records = shim
    pid_file = tmp_path / "pid"
    process = _started([str(cli), str(pid_file)], pid_file)
    pid = int(pid_file.read_text())
    assert pid == process.pid  # the shim exec'd: the lock names the pid it recorded
    record = locks.read_record(pid, records)
    assert record.place == locks.here() and record.ticks == locks.start_ticks(pid)
    holder = _holder(pid)
    assert not locks.provably_gone(holder, records=records)  # still running
    process.kill()
    process.wait()
    assert locks.provably_gone(holder, records=records)
    # Another machine's, or another container's that shares our hostname but was never recorded: no proof.
    assert not locks.provably_gone(_holder(pid, host="laptop"), records=records)
    assert not locks.provably_gone(_holder(pid + 1), records=records)
    # A record of a process that started after the lock was taken is another process under a reused pid.
    assert not locks.provably_gone(_holder(pid, at=time.time() - 3600), records=records)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and util-linux unshare (scripts/test.sh runs as root in CI)")
def test_a_live_holder_in_another_pid_namespace_is_never_released(shim, tmp_path):
    """A run in a container on this machine: same hostname, its pid meaningless here. The old rule (same hostname,
    pid not running here) released its lock while it ran."""
    cli, records = shim
    pid_file = tmp_path / "pid"
    process = _started(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", str(cli), str(pid_file)], pid_file)
    try:
        inner_pid = int(pid_file.read_text())  # its pid in its own namespace (1 or 2), not one of ours
        record = locks.read_record(inner_pid, records)
        assert record.place.pid_namespace != locks.here().pid_namespace
        assert not locks.provably_gone(_holder(inner_pid), records=records)
    finally:
        process.kill()  # --kill-child: the namespace's process goes with it
        process.wait()


def test_the_tool_holds_the_stack_as_the_cli_does_and_refuses_when_another_run_does(tmp_path):
    backend = f"file://{tmp_path}"
    directory = locks.lock_directory(backend, "organization/crdb-federation/otc")
    assert directory == tmp_path / ".pulumi/locks/organization/crdb-federation/otc"
    directory.mkdir(parents=True)
    # What a released CLI lock can leave: gocloud.dev fileblob's attributes sidecar (blob/fileblob/attrs.go), which
    # no listing returns as an object, so the CLI does not count it as a lock, and neither does the tool.
    (directory / "9ba1373a.json.attrs").write_text("{}")
    with locks.holding(backend, "organization/crdb-federation/otc"):
        [ours] = [p for p in directory.iterdir() if not p.name.endswith(".attrs")]
        content = json.loads(ours.read_text())
        assert content["pid"] == os.getpid() and set(content) == {"pid", "username", "hostname", "timestamp"}
        with pytest.raises(locks.StackLocked, match=f"another run holds this stack: .*\\(pid {os.getpid()}\\)"):
            with locks.holding(backend, "organization/crdb-federation/otc"):
                pass
    assert [p.name for p in directory.iterdir()] == ["9ba1373a.json.attrs"]
    with pytest.raises(NotImplementedError, match="file:// backend only"):
        with locks.holding("s3://state?region=x", "organization/crdb-federation/otc"):
            pass


def test_only_the_proven_holders_own_lock_object_is_released(tmp_path):
    """`pulumi cancel` deletes every lock object of the stack (backend.go CancelCurrentUpdate), a live run's too."""
    directory = tmp_path / ".pulumi/locks/organization/crdb-federation/otc"
    directory.mkdir(parents=True)
    dead, live = directory / "dead.json", directory / "live.json"
    for path in (dead, live, directory / "dead.json.attrs"):  # fileblob's sidecar goes with its object
        path.write_text("{}")
    holder = locks.LockHolder(f"file://{dead}?no_tmp_dir=true", "ops", "builder", 1, "2026-12-01T23:59:00Z")
    assert locks.release(holder, f"file://{tmp_path}") and not dead.exists() and live.exists()
    assert [p.name for p in directory.iterdir()] == ["live.json"]
    assert not locks.release(holder, "s3://state")
