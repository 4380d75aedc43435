"""The stack's lock (federation/locks.py): a holder is released only when it is provably gone, judged with real
processes run through the real shim, in this PID namespace and in another (unshare --pid)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from federation import bucket, locks
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
    with pytest.raises(NotImplementedError, match="file:// or s3:// backend only, not gs://state"):
        with locks.holding("gs://state", "organization/crdb-federation/otc"):
            pass


def test_a_lock_a_killed_tool_process_held_is_released_by_the_next_hold_and_a_live_ones_is_not(tmp_path):
    """The seed's signing service killed while it held the seed's lock (its recovery sweep): started again, it
    proves that process gone as it proves a CLI's (the same record) and takes the stack."""
    backend, stack = f"file://{tmp_path}", "organization/crdb-federation/seed"
    directory = locks.lock_directory(backend, stack)
    directory.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "from federation import locks; locks.record_this_process(); "
                               "import time; time.sleep(60)"], cwd=locks.Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 10
    while not (locks.RECORDS / str(holder.pid)).exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (directory / "left.json").write_text(json.dumps({"pid": holder.pid, "username": "op", "hostname":
                                                     socket.gethostname(), "timestamp": "2099-01-01T00:00:00Z"}))
    with pytest.raises(locks.StackLocked, match=f"\\(pid {holder.pid}\\)"):
        with locks.holding(backend, stack):
            pass
    holder.kill()
    holder.wait()
    with locks.holding(backend, stack):
        assert len(list(directory.iterdir())) == 1  # ours alone
    assert list(directory.iterdir()) == []


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


# ------------------------------------------------------------------------------------------ an s3:// backend
# The CLI's refusal on an s3:// backend, verbatim from tests/integration/test_objectstore.py (pulumi v3.259.0,
# versitygw): lock.go lockURLForError joins the key to the path of the backend URL as backend.go
# translateLegacyS3Params left it (its query re-encoded, sorted, request_checksum_calculation added).
S3_BACKEND = "s3://crdb-federation-state?endpoint=http%3A%2F%2F127.0.0.1%3A57401&use_path_style=true&region=us-east-1"
S3_LOCKED = ("error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or "
             "delete the lock file with `pulumi cancel`.\n  s3://crdb-federation-state/.pulumi/locks/organization/"
             "crdb-federation/seed/held-by-alice.json?endpoint=http%3A%2F%2F127.0.0.1%3A57401&region=us-east-1&"
             "request_checksum_calculation=when_required&use_path_style=true: created by alice@seed-operator "
             "(pid 4242) at 2026-01-01T00:00:00Z\n")
SEED_LOCK = ".pulumi/locks/organization/crdb-federation/seed/held-by-alice.json"


@pytest.fixture
def no_checksum_env(monkeypatch):
    monkeypatch.delenv("AWS_REQUEST_CHECKSUM_CALCULATION", raising=False)


def test_an_s3_backend_url_is_read_as_the_cli_reads_it(no_checksum_env):
    location = bucket.parse(S3_BACKEND)
    assert (location.bucket, location.prefix, location.endpoint, location.region, location.path_style,
            location.profile, location.disable_https) == (
        "crdb-federation-state", "", "http://127.0.0.1:57401", "us-east-1", True, None, False)
    assert location.checksums == {"request_checksum_calculation": "when_required"}
    assert location.url == ("s3://crdb-federation-state?endpoint=http%3A%2F%2F127.0.0.1%3A57401&region=us-east-1&"
                            "request_checksum_calculation=when_required&use_path_style=true")
    # The v1-era names, a profile, gocloud's `prefix` and the URL's own path, which both prefix every key.
    legacy = bucket.parse("s3://state/team/a?endpoint=minio:9000&disableSSL=true&s3ForcePathStyle=1&profile=ops"
                          "&prefix=p-&ssetype=AES256")
    assert (legacy.endpoint, legacy.disable_https, legacy.path_style, legacy.profile) == (
        "http://minio:9000", True, True, "ops")
    assert (legacy.prefix, legacy.path_prefix) == ("p-team/a/", "team/a/")
    assert legacy.encryption == {"ServerSideEncryption": "AES256"}
    # Nothing to translate: the URL stays as given; on AWS itself no checksum mode is forced.
    assert bucket.parse("s3://state?region=eu-west-1").url == "s3://state?region=eu-west-1"
    assert bucket.parse("s3://state?region=eu-west-1").checksums == {}
    assert bucket.parse("file:///state") is None


def test_an_s3_url_the_tool_cannot_honour_is_said_not_guessed(no_checksum_env):
    with pytest.raises(bucket.UnsupportedBackend, match="role"):
        bucket.parse("s3://state?role=arn:aws:iam::1:role/x")
    with pytest.raises(bucket.UnsupportedBackend, match="use_path_style"):
        bucket.parse("s3://state?use_path_style=yes")
    assert locks.cannot_hold("s3://state?region=x") is None and locks.cannot_hold("file:///state") is None
    assert "role" in locks.cannot_hold("s3://state?role=arn:aws:iam::1:role/x")
    assert locks.cannot_hold("gs://state?x=1") == ("the tool holds a stack's lock itself on a file:// or s3:// "
                                                   "backend only, not gs://state")


def test_the_clis_s3_lock_url_names_one_key_of_the_backend(no_checksum_env):
    [holder] = locks.lock_holders(S3_LOCKED)
    assert (holder.user, holder.host, holder.pid, holder.at) == ("alice", "seed-operator", 4242, "2026-01-01T00:00:00Z")
    location = bucket.parse(S3_BACKEND)
    assert bucket.key_of(location, holder.url) == SEED_LOCK
    assert bucket.lock_url(location, SEED_LOCK) == holder.url
    assert bucket.key_of(location, holder.url.replace("//crdb-federation-state/", "//other/")) is None
    # Under a path the URL shows it, and its key is relative to it; gocloud's `prefix` the URL keeps in its query.
    nested = bucket.parse("s3://state/team?region=x&prefix=p-")
    assert bucket.lock_url(nested, SEED_LOCK) == f"s3://state/team/{SEED_LOCK}?region=x&prefix=p-"
    assert bucket.key_of(nested, f"s3://state/team/{SEED_LOCK}?region=x&prefix=p-") == SEED_LOCK
    assert bucket.key_of(nested, f"s3://state/{SEED_LOCK}") is None


def test_only_a_stacks_own_lock_object_in_the_bucket_is_ever_released(no_checksum_env):
    """Decided before the store is asked anything: no request is made for these."""
    [holder] = locks.lock_holders(S3_LOCKED)
    for url in (holder.url.replace("held-by-alice.json", "../seed.json"),
                holder.url.replace(SEED_LOCK, ".pulumi/stacks/crdb-federation/seed.json"),
                holder.url.replace("//crdb-federation-state/", "//other/")):
        assert not locks.release(dataclasses.replace(holder, url=url), S3_BACKEND)
    assert not locks.release(holder, S3_BACKEND, qualified_stack="organization/crdb-federation/vexxhost")
    assert not locks.release(holder, "gs://crdb-federation-state")
    assert locks.lock_prefix("organization/crdb-federation/seed") == ".pulumi/locks/organization/crdb-federation/seed/"


def test_the_bucket_is_reached_as_the_url_says(no_checksum_env, monkeypatch):
    for name in ("AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "alice")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    client = bucket.Bucket(bucket.parse(S3_BACKEND))._client
    assert (client.meta.endpoint_url, client.meta.region_name) == ("http://127.0.0.1:57401", "us-east-1")
    assert client.meta.config.s3 == {"addressing_style": "path"}
    assert client.meta.config.request_checksum_calculation == "when_required"
