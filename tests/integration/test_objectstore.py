"""The shared state backend's write boundary, with the real store and the real Pulumi CLI (issue 29).

Two operators, each a CLI process with its own HOME, passphrase and object store user, never another's:
alice runs the seed's stack, bob vexxhost's. Every operator reads every stack; each writes only its own.
What bob must not do to the seed's stack, through the CLI or straight to the store with his own key pair,
is refused by the store, in its own words, and changes nothing. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.integration import objectstore
from tests.integration.objectstore import ObjectStore, Operator, S3Error

PULUMI_VERSION = "v3.259.0"
BUCKET = "crdb-federation-state"
PROJECT = "crdb-federation"
ALICE = Operator("alice", secrets.token_urlsafe(24), PROJECT, "seed")
BOB = Operator("bob", secrets.token_urlsafe(24), PROJECT, "vexxhost")
SEED_STATE = f".pulumi/stacks/{PROJECT}/seed.json"
SEED_LOCKS = f".pulumi/locks/organization/{PROJECT}/seed/"
# The lock an interrupted `up` of the seed's leaves behind (pulumi pkg/backend/diy/lock.go, lockContent).
HELD_LOCK = SEED_LOCKS + "held-by-alice.json"
LOCK_BODY = json.dumps({"pid": 4242, "username": "alice", "hostname": "seed-operator",
                        "timestamp": "2026-01-01T00:00:00Z"}).encode()


def explicit_deny(user: str, action: str, resource: str) -> str:
    """versitygw's answer to a request a bucket policy's Deny covers (s3err/s3err.go, GetExplicitDenyAccessErr)."""
    return (f'User: {user} is not authorized to perform: {action} on resource: "arn:aws:s3:::{resource}" '
            "with an explicit deny in a resource-based policy")


# --- what the tests need ------------------------------------------------------------------------------

def _pulumi() -> Optional[str]:
    cached = objectstore.tools_cache() / "pulumi" / PULUMI_VERSION / "bin" / "pulumi"
    return shutil.which("pulumi") or (str(cached) if cached.exists() else None)


def _missing() -> list[str]:
    missing = []
    if objectstore.cached_binary() is None:
        missing.append(f"versitygw v{objectstore.pinned_version()} (bash scripts/install-objectstore.sh builds it)")
    pulumi = _pulumi()
    if pulumi is None:
        return missing + [f"the Pulumi CLI {PULUMI_VERSION} (scripts/install-pulumi.sh installs it)"]
    version = subprocess.run([pulumi, "version"], capture_output=True, text=True).stdout.strip()
    if version != PULUMI_VERSION:
        missing.append(f"Pulumi CLI {PULUMI_VERSION} (found {version} at {pulumi})")
    host = "pulumi-language-python"
    if not (shutil.which(host) or (Path(pulumi).resolve().parent / host).exists()):
        missing.append(f"the Python language host {host} (on PATH or beside the CLI)")
    return missing


@dataclass
class Machine:
    """One operator's machine: a project directory, a HOME, a passphrase and one object store user."""
    operator: Operator
    directory: Path
    env: dict[str, str]
    pulumi: str

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.pulumi, *args, "--non-interactive"], cwd=self.directory, env=self.env,
                              capture_output=True, text=True, timeout=180)

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"{self.operator.access}: pulumi {' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout


def _machine(base: Path, store: ObjectStore, operator: Operator, pulumi: str) -> Machine:
    directory = base / operator.access
    home = directory / "home"
    home.mkdir(parents=True)
    # A program that exports one public output, run by this very interpreter's virtualenv (it has the SDK).
    (directory / "Pulumi.yaml").write_text(
        f"name: {PROJECT}\nruntime:\n  name: python\n  options:\n    virtualenv: {sys.prefix}\n")
    (directory / "__main__.py").write_text("import pulumi\npulumi.export('pub', 'hello')\n")
    base_env = {"PATH": f"{Path(pulumi).parent}{os.pathsep}{os.environ.get('PATH', '')}", "LANG": "C.UTF-8"}
    env = objectstore.pulumi_env(base_env, store.endpoint, BUCKET, operator)
    env.update(HOME=str(home), PULUMI_HOME=str(home / ".pulumi"),
               PULUMI_CONFIG_PASSPHRASE=secrets.token_urlsafe(16))
    return Machine(operator, directory, env, pulumi)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ObjectStore:
    missing = _missing()
    if missing:
        pytest.skip("shared state backend tests cannot run, missing: " + "; ".join(missing))
    running = ObjectStore(objectstore.cached_binary(), tmp_path_factory.mktemp("objectstore")).start()
    try:
        running.provision(BUCKET, [ALICE, BOB])
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def machines(store, tmp_path_factory) -> tuple[Machine, Machine]:
    """alice's seed is up (a state, its backup, a history entry and a checkpoint backup); bob's stack exists."""
    base, pulumi = tmp_path_factory.mktemp("operators"), _pulumi()
    alice, bob = (_machine(base, store, o, pulumi) for o in (ALICE, BOB))
    alice.ok("stack", "init", "seed", "--secrets-provider", "passphrase")
    alice.ok("up", "--yes", "--skip-preview", "--stack", "seed")
    bob.ok("stack", "init", "vexxhost", "--secrets-provider", "passphrase")
    # What bob's `stack import` would write over the seed: its own state, read with bob's key.
    (bob.directory / "seed.json").write_text(bob.ok("stack", "export", "--stack", "seed"))
    return alice, bob


def snapshot(store: ObjectStore) -> dict[str, bytes]:
    return {key: store.root.get(BUCKET, key) for key in store.root.keys(BUCKET)}


def seed_keys(store: ObjectStore) -> dict[str, str]:
    """One real key of each kind the seed's `up` wrote."""
    keys = store.root.keys(BUCKET)
    kinds = (("state", SEED_STATE, ".json"), ("state backup", SEED_STATE, ".bak"),
             ("history", f".pulumi/history/{PROJECT}/seed/", ".history.json"),
             ("checkpoint", f".pulumi/history/{PROJECT}/seed/", ".checkpoint.json"),
             ("backup", f".pulumi/backups/{PROJECT}/seed/", ".json"))
    return {kind: next(k for k in keys if k.startswith(prefix) and k.endswith(suffix))
            for kind, prefix, suffix in kinds}


# --- the policy --------------------------------------------------------------------------------------

def readme_policy() -> dict:
    """The JSON block of the README's "The shared state backend" section."""
    readme = (objectstore.ROOT / "README.md").read_text()
    section = readme.split("### The shared state backend", 1)[1]
    return json.loads(re.search(r"```json\n(.*?)\n```", section, re.DOTALL).group(1))


def test_the_readme_policy_is_the_tested_one():
    assert readme_policy() == objectstore.operator_policy(BUCKET, [ALICE, BOB])


def test_the_store_holds_the_policy(store):
    assert store.root.get_policy(BUCKET) == objectstore.operator_policy(BUCKET, [ALICE, BOB])


# --- what works --------------------------------------------------------------------------------------

def test_each_operator_writes_its_own_stack(store, machines):
    alice, bob = machines
    assert set(seed_keys(store)) == {"state", "state backup", "history", "checkpoint", "backup"}
    assert f".pulumi/stacks/{PROJECT}/vexxhost.json" in store.root.keys(BUCKET)
    # Straight to the store too: bob's own history is his to write and delete.
    own = f".pulumi/history/{PROJECT}/vexxhost/note.json"
    store.client(BOB).put(BUCKET, own, b"{}")
    store.client(BOB).delete(BUCKET, own)


def test_every_operator_reads_every_stack(store, machines):
    _, bob = machines
    assert json.loads(bob.ok("stack", "output", "--stack", "seed", "--json")) == {"pub": "hello"}
    exported = json.loads(bob.ok("stack", "export", "--stack", "seed"))
    assert [r["outputs"] for r in exported["deployment"]["resources"]] == [{"pub": "hello"}]
    assert store.client(BOB).get(BUCKET, SEED_STATE) == store.root.get(BUCKET, SEED_STATE)


# --- what is refused, through the CLI ----------------------------------------------------------------

# Every command that writes a stack takes its lock first (pulumi pkg/backend/diy/backend.go, lock.go), so the
# store refuses bob's lock, e.g. for `up`, verbatim:
#   error: 2 errors occurred:
#       1) operation error S3: PutObject, https response error StatusCode: 403, RequestID: …, HostID: …,
#   api error AccessDenied: User: bob is not authorized to perform: s3:PutObject on resource:
#   "arn:aws:s3:::crdb-federation-state/.pulumi/locks/organization/crdb-federation/seed/<lock id>.json" with an
#   explicit deny in a resource-based policy
#       2) PermissionDenied
LOCKED_COMMANDS = {
    "up": ("up", "--yes", "--skip-preview", "--stack", "seed"),
    "refresh": ("refresh", "--yes", "--skip-preview", "--stack", "seed"),
    "destroy": ("destroy", "--yes", "--skip-preview", "--stack", "seed"),
    "stack import": ("stack", "import", "--stack", "seed", "--file", "seed.json"),
    "stack rm": ("stack", "rm", "seed", "--yes"),
    "stack rm --force": ("stack", "rm", "seed", "--yes", "--force"),
    "stack rename": ("stack", "rename", "--stack", "seed", "hijacked"),
    "state delete": ("state", "delete", "--stack", "seed", "--yes", "--force",
                     f"urn:pulumi:seed::{PROJECT}::pulumi:pulumi:Stack::{PROJECT}-seed"),
}


@pytest.mark.parametrize("name", LOCKED_COMMANDS)
def test_another_operators_cli_cannot_write_the_seed(store, machines, name):
    _, bob = machines
    before = snapshot(store)
    done = bob.run(*LOCKED_COMMANDS[name])
    assert done.returncode != 0
    # The lock's name is a fresh UUID per run (lock.go, lockPath).
    head, tail = explicit_deny("bob", "s3:PutObject", "\0").split("\0")
    answer = (re.escape(f"api error AccessDenied: {head}{BUCKET}/{SEED_LOCKS}") + r"[0-9a-f-]{36}\.json"
              + re.escape(tail))
    assert "operation error S3: PutObject, https response error StatusCode: 403" in done.stderr, done.stderr
    assert re.search(answer, done.stderr), done.stderr
    assert snapshot(store) == before


def test_another_operators_cli_cannot_tag_the_seed(store, machines):
    """`stack tag set` writes the tags file without a lock (pulumi pkg/backend/diy/stack_tags.go)."""
    _, bob = machines
    before = snapshot(store)
    done = bob.run("stack", "tag", "set", "--stack", "seed", "owner", "bob")
    tags = f"{BUCKET}/.pulumi/stacks/{PROJECT}/seed.pulumi-tags"
    assert done.returncode != 0
    assert "api error AccessDenied: " + explicit_deny("bob", "s3:PutObject", tags) in done.stderr, done.stderr
    assert snapshot(store) == before


def test_another_operators_cancel_leaves_the_seeds_lock(store, machines):
    """`pulumi cancel` deletes every lock of the stack (pulumi pkg/backend/diy/backend.go, CancelCurrentUpdate):
    bob's delete is refused and the lock stays; alice's own cancel then removes it."""
    alice, bob = machines
    store.client(ALICE).put(BUCKET, HELD_LOCK, LOCK_BODY)
    before = snapshot(store)
    done = bob.run("cancel", "--stack", "seed", "--yes")
    assert done.returncode != 0
    assert ("operation error S3: DeleteObject" in done.stderr and "api error AccessDenied: "
            + explicit_deny("bob", "s3:DeleteObject", f"{BUCKET}/{HELD_LOCK}") in done.stderr), done.stderr
    assert snapshot(store) == before
    alice.ok("cancel", "--stack", "seed", "--yes")
    assert not store.root.keys(BUCKET, SEED_LOCKS)


def test_another_operators_config_set_stays_on_its_own_machine(store, machines):
    """A diy stack's config is its operator's own Pulumi.<stack>.yaml, never in the backend (pulumi
    pkg/backend/diy/stack.go, ConfigLocation; pkg/cmd/pulumi/stack/io.go, SaveProjectStack): bob's `config set`
    on the seed writes bob's file and nothing else, so there is nothing for the store to refuse."""
    _, bob = machines
    before = snapshot(store)
    bob.ok("config", "set", "--stack", "seed", "owner", "bob")
    assert "owner: bob" in (bob.directory / "Pulumi.seed.yaml").read_text()
    assert snapshot(store) == before


# --- what is refused, straight to the store ----------------------------------------------------------

def _put(client, key):
    client.put(BUCKET, key, b'{"overwritten": "by bob"}')


def _copy(client, key):
    client.copy(BUCKET, f".pulumi/stacks/{PROJECT}/vexxhost.json", key)


DIRECT = {"put": (_put, "s3:PutObject"), "delete": (lambda c, k: c.delete(BUCKET, k), "s3:DeleteObject"),
          "copy onto": (_copy, "s3:PutObject")}


@pytest.fixture
def held_lock(store, machines) -> str:
    """The seed's lock, held by alice for the length of one test."""
    store.client(ALICE).put(BUCKET, HELD_LOCK, LOCK_BODY)
    yield HELD_LOCK
    store.client(ALICE).delete(BUCKET, HELD_LOCK)


@pytest.mark.parametrize("kind", ["state", "state backup", "history", "checkpoint", "backup", "lock"])
@pytest.mark.parametrize("how", DIRECT)
def test_another_operators_key_cannot_touch_the_seeds_objects(store, held_lock, kind, how):
    key = held_lock if kind == "lock" else seed_keys(store)[kind]
    before = snapshot(store)
    call, action = DIRECT[how]
    with pytest.raises(S3Error) as refused:
        call(store.client(BOB), key)
    assert (refused.value.status, refused.value.code) == (403, "AccessDenied")
    assert refused.value.message == explicit_deny("bob", action, f"{BUCKET}/{key}")
    assert snapshot(store) == before


def test_another_operators_batch_delete_spares_the_seed(store, machines):
    """DeleteObjects answers 200 and refuses key by key, so each key's answer is checked."""
    keys = sorted(seed_keys(store).values())
    before = snapshot(store)
    refused = store.client(BOB).delete_many(BUCKET, keys)
    assert refused == [(k, "AccessDenied", explicit_deny("bob", "s3:DeleteObject", f"{BUCKET}/{k}")) for k in keys]
    assert snapshot(store) == before


def test_another_operators_new_lock_on_the_seed_is_refused(store, machines):
    """A lock of bob's would stop the seed's next `up` (pulumi pkg/backend/diy/lock.go, checkForLock)."""
    key = SEED_LOCKS + "bob.json"
    with pytest.raises(S3Error) as refused:
        store.client(BOB).put(BUCKET, key, LOCK_BODY)
    assert refused.value.message == explicit_deny("bob", "s3:PutObject", f"{BUCKET}/{key}")
    assert key not in store.root.keys(BUCKET)


def test_no_operator_rewrites_the_layout_or_the_policy(store, machines):
    before, client, meta = snapshot(store), store.client(BOB), objectstore.META_KEY
    empty = {"Version": "2012-10-17", "Statement": []}
    for call, action, resource in (
            (lambda: client.put(BUCKET, meta, b"version: 0\n"), "s3:PutObject", f"{BUCKET}/{meta}"),
            (lambda: client.delete(BUCKET, meta), "s3:DeleteObject", f"{BUCKET}/{meta}"),
            (lambda: client.put_policy(BUCKET, empty), "s3:PutBucketPolicy", BUCKET),
            (lambda: client.delete_policy(BUCKET), "s3:DeleteBucketPolicy", BUCKET)):
        with pytest.raises(S3Error) as refused:
            call()
        assert refused.value.message == explicit_deny("bob", action, resource)
    assert snapshot(store) == before
    assert store.root.get_policy(BUCKET) == objectstore.operator_policy(BUCKET, [ALICE, BOB])


def test_a_key_outside_its_own_stack_is_refused(store, machines):
    """No Allow covers it, so versitygw refuses with its plain answer (auth/access-control.go,
    objectsAccessErrors: no identity-policy layer in its internal IAM)."""
    key = f".pulumi/stacks/{PROJECT}/vexxhost.json.extra"
    with pytest.raises(S3Error) as refused:
        store.client(BOB).put(BUCKET, key, b"{}")
    assert (refused.value.status, refused.value.code, refused.value.message) == (403, "AccessDenied", "Access Denied.")


# --- the tool's own hold of its stack's lock (federation/locks.py, federation/bucket.py) -------------

SEED_QUALIFIED = f"organization/{PROJECT}/seed"
UP_SEED = ("up", "--yes", "--skip-preview", "--stack", "seed")


def _as_operator(monkeypatch, machine: Machine) -> str:
    """This process's environment as the operator's CLI has it: its own AWS_* alone (boto3 reads the same
    chain as the CLI's Go SDK). Returns its backend URL."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in machine.env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return machine.env["PULUMI_BACKEND_URL"]


def test_the_tool_holds_its_own_stacks_lock_in_the_bucket(store, machines, monkeypatch):
    """While the tool holds the seed's lock with alice's key pair, alice's own `up` is refused as locked, naming
    the tool's lock object by the very URL the tool would print; once the hold ends, the same `up` runs."""
    from federation import bucket, locks

    alice, _ = machines
    backend = _as_operator(monkeypatch, alice)
    with locks.holding(backend, SEED_QUALIFIED):
        [ours] = store.root.keys(BUCKET, SEED_LOCKS)
        content = json.loads(store.root.get(BUCKET, ours))
        assert content["pid"] == os.getpid() and set(content) == {"pid", "username", "hostname", "timestamp"}
        done = alice.run(*UP_SEED)
        assert done.returncode != 0
        assert "the stack is currently locked by 1 lock(s)" in done.stderr, done.stderr
        [holder] = locks.lock_holders(done.stderr)
        assert holder.url == bucket.lock_url(bucket.parse(backend), ours), done.stderr
        assert holder.pid == os.getpid()
    assert not store.root.keys(BUCKET, SEED_LOCKS)
    alice.ok(*UP_SEED)


def test_another_operators_key_cannot_hold_the_seeds_lock(store, machines, monkeypatch):
    from botocore.exceptions import ClientError

    from federation import locks

    _, bob = machines
    backend = _as_operator(monkeypatch, bob)
    before = snapshot(store)
    with pytest.raises(ClientError) as refused:
        with locks.holding(backend, SEED_QUALIFIED):
            pytest.fail("bob held the seed's lock")
    error = refused.value.response["Error"]
    head, tail = explicit_deny("bob", "s3:PutObject", "\0").split("\0")
    assert error["Code"] == "AccessDenied" and "(AccessDenied)" in str(refused.value)
    assert re.fullmatch(re.escape(f"{head}{BUCKET}/{SEED_LOCKS}") + r"[0-9a-f-]{36}\.json" + re.escape(tail),
                        error["Message"]), error
    assert snapshot(store) == before


def test_the_tool_releases_the_one_lock_the_cli_named(store, held_lock, machines, monkeypatch):
    """The lock alice's interrupted `up` left, as the CLI's refusal names it: bob's key cannot delete it; alice's
    deletes that one object and nothing else, and nothing outside the seed's locks however it is named."""
    from dataclasses import replace

    from botocore.exceptions import ClientError

    from federation import bucket, locks

    alice, bob = machines
    done = alice.run(*UP_SEED)
    assert done.returncode != 0
    [holder] = locks.lock_holders(done.stderr)
    assert (holder.user, holder.host, holder.pid, holder.at) == ("alice", "seed-operator", 4242,
                                                                   "2026-01-01T00:00:00Z"), done.stderr
    before = snapshot(store)
    backend = _as_operator(monkeypatch, bob)
    with pytest.raises(ClientError) as refused:
        locks.release(holder, backend)
    assert refused.value.response["Error"]["Message"] == explicit_deny("bob", "s3:DeleteObject",
                                                                       f"{BUCKET}/{held_lock}")
    assert snapshot(store) == before

    backend = _as_operator(monkeypatch, alice)
    location = bucket.parse(backend)
    for elsewhere in (bucket.lock_url(location, SEED_STATE), holder.url.replace(f"s3://{BUCKET}/", "s3://other/"),
                      bucket.lock_url(location, f".pulumi/locks/organization/{PROJECT}/seed/../seed.json")):
        assert not locks.release(replace(holder, url=elsewhere), backend)
    assert not locks.release(holder, backend, qualified_stack=f"organization/{PROJECT}/vexxhost")
    assert snapshot(store) == before
    assert locks.release(holder, backend, qualified_stack=SEED_QUALIFIED)
    assert snapshot(store) == {k: v for k, v in before.items() if k != held_lock}
