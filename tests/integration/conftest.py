"""The integration tier: the real Pulumi CLI and provider plugins against the local OpenStack.

Every test here is marked `integration`. They need, as any Pulumi project's integration tests do, a
Pulumi CLI with the Python language host and the openstack, kubernetes, tls and random plugins (on
PATH or installed with `pulumi plugin install`), and an isolated network namespace (scripts/test.sh
makes one when run as root). Where something is missing, each test says exactly what, in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.integration import overlay

ROOT = Path(__file__).resolve().parents[2]
LOCALCLOUD = Path(__file__).resolve().parent / "localcloud" / "localcloud.sh"
PULUMI_VERSION = "v3.259.0"
PLUGINS = ("openstack", "kubernetes", "tls", "random")
PASSPHRASE = "integration-tier"


def pytest_collection_modifyitems(items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def _missing_toolchain() -> list[str]:
    missing = []
    pulumi = shutil.which("pulumi")
    if pulumi is None:
        return [f"the Pulumi CLI {PULUMI_VERSION} on PATH (scripts/install-pulumi.sh installs it)"]
    version = subprocess.run([pulumi, "version"], capture_output=True, text=True).stdout.strip()
    if version != PULUMI_VERSION:
        missing.append(f"Pulumi CLI {PULUMI_VERSION} (found {version} at {pulumi})")
    beside = Path(pulumi).resolve().parent
    for host, what in (("pulumi-language-python", "the Python language host"),
                       ("pulumi-resource-pulumi-python", "the Python dynamic provider")):
        if not (shutil.which(host) or (beside / host).exists()):
            missing.append(f"{what} {host} (on PATH or beside the CLI)")
    listed = subprocess.run([pulumi, "plugin", "ls", "--json"], capture_output=True, text=True).stdout
    installed = {p.get("name") for p in json.loads(listed or "[]") if p.get("kind") == "resource"}
    for plugin in PLUGINS:
        if plugin not in installed and not shutil.which(f"pulumi-resource-{plugin}"):
            missing.append(f"the {plugin} provider plugin (pulumi-resource-{plugin} on PATH or `pulumi plugin install`)")
    return missing


def _isolated() -> bool:
    """Only loopback: no route leaves this network namespace."""
    routes = Path("/proc/net/route").read_text().splitlines()[1:]
    return os.environ.get("CRDB_TEST_NETNS") is not None and not routes


@pytest.fixture(scope="session")
def toolchain() -> str:
    missing = _missing_toolchain()
    if missing:
        pytest.skip("integration tier cannot run, missing: " + "; ".join(missing))
    if not _isolated():
        pytest.skip("integration tier cannot run: it needs a network namespace with only loopback "
                    "(run scripts/test.sh as root; it creates one)")
    return shutil.which("pulumi")


@dataclass(frozen=True)
class LocalCloud:
    clouds_yaml: Path
    name: str = "localcloud"

    def connect(self):
        import openstack

        os.environ["OS_CLIENT_CONFIG_FILE"] = str(self.clouds_yaml)
        return openstack.connect(cloud=self.name)


@pytest.fixture(scope="session")
def local_cloud(toolchain, tmp_path_factory) -> LocalCloud:
    log = tmp_path_factory.mktemp("localcloud") / "start.log"
    with open(log, "w") as handle:
        started = subprocess.run(["bash", str(LOCALCLOUD), "start"], stdout=handle, stderr=subprocess.STDOUT)
    if started.returncode != 0:
        pytest.fail("the local OpenStack did not start:\n" + log.read_text()[-3000:])
    env = subprocess.run(["bash", str(LOCALCLOUD), "env"], capture_output=True, text=True, check=True).stdout
    clouds_yaml = Path(env.split("OS_CLIENT_CONFIG_FILE=")[1].split()[0])
    yield LocalCloud(clouds_yaml)
    if not os.environ.get("CRDB_KEEP_LOCALCLOUD"):
        subprocess.run(["bash", str(LOCALCLOUD), "stop"], capture_output=True)


class Project:
    """A copy of the project whose stacks are re-pointed at the local cloud, with its own file backend."""

    def __init__(self, directory: Path, state: Path, cloud: LocalCloud, pulumi: str):
        self.directory, self.state, self.cloud, self.pulumi = directory, state, cloud, pulumi

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PULUMI_BACKEND_URL": f"file://{self.state}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DEBUG_COMMANDS": "true",  # enables --event-log
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "OS_CLIENT_CONFIG_FILE": str(self.cloud.clouds_yaml),
        }

    def run(self, *args: str, stack: Optional[str] = None, check: bool = True, timeout: float = 900,
            stdin: Optional[str] = None) -> subprocess.CompletedProcess:
        command = [self.pulumi, *args, "--non-interactive"] + (["--stack", stack] if stack else [])
        done = subprocess.run(command, cwd=self.directory, env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=stdin)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-4000:]}"
                                 f"\n{done.stderr[-2000:]}")
        return done

    def select(self, stack: str) -> None:
        self.run("stack", "select", "--create", stack)

    def events(self, operation: str, stack: str, *args: str, check: bool = False) -> tuple[list[dict], str]:
        """Runs `pulumi <operation>` with an engine event log; returns the events and the output."""
        log = self.directory / f"events-{stack}-{operation}.jsonl"
        log.unlink(missing_ok=True)
        done = self.run(operation, *args, "--event-log", str(log), stack=stack, check=check)
        events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        return events, done.stdout + done.stderr

    def tool(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        """`python -m federation ...` inside the copy, on the same backend."""
        return subprocess.run([str(ROOT / "venv" / "bin" / "python"), "-m", "federation", *args],
                              cwd=self.directory, env={**self.env, "PATH": f"{Path(self.pulumi).parent}:"
                                                                          f"{os.environ['PATH']}"},
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def project(local_cloud, toolchain, tmp_path_factory) -> Project:
    base = tmp_path_factory.mktemp("project")
    directory = overlay.copy_project(ROOT, base / "project")
    state = base / "state"
    state.mkdir()
    return Project(directory, state, local_cloud, toolchain)


def step_ops(events: list[dict], type_prefix: str = "") -> dict[str, str]:
    """URN -> the engine's step for it (same, create, update, replace, delete, ...), from an event log."""
    ops = {}
    for event in events:
        pre = event.get("resourcePreEvent")
        if pre and pre["metadata"]["type"].startswith(type_prefix):
            ops[pre["metadata"]["urn"]] = pre["metadata"]["op"]
    return ops
