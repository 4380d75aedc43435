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
import sys
from pathlib import Path

import pytest

from tests.integration import overlay
from tests.integration.project import ROOT, LocalCloud, Project, StandIn, start_local_cloud, stop_local_cloud

PULUMI_VERSION = "v3.259.0"
PLUGINS = ("openstack", "kubernetes", "tls", "random")


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


@pytest.fixture(scope="session")
def kubernetes_binaries() -> Path:
    """The k3s stand-in's Kubernetes binaries, built once by the project's own script (cached)."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "install-kubernetes.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail("scripts/install-kubernetes.sh could not provide the Kubernetes binaries:\n" + done.stderr[-3000:])
    return Path(done.stdout.strip())


@pytest.fixture(scope="session")
def local_cloud(toolchain, tmp_path_factory) -> LocalCloud:
    try:
        cloud = start_local_cloud(tmp_path_factory.mktemp("localcloud") / "start.log")
    except RuntimeError as error:
        pytest.fail(str(error))
    yield cloud
    if not os.environ.get("CRDB_KEEP_LOCALCLOUD"):
        stop_local_cloud()


@pytest.fixture(scope="session")
def standin(local_cloud, kubernetes_binaries, tmp_path_factory) -> StandIn:
    """The k3s stand-in for every stack the tests bring up (tests/integration/standin), for the whole session."""
    state = tmp_path_factory.mktemp("standin")
    log = open(state / "standin.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.standin", "--state", str(state), "--binaries",
         str(kubernetes_binaries), "--cloud", local_cloud.name], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "OS_CLIENT_CONFIG_FILE": str(local_cloud.clouds_yaml)})
    yield StandIn(state, kubernetes_binaries)
    process.terminate()
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="module")
def project(local_cloud, toolchain, tmp_path_factory) -> Project:
    base = tmp_path_factory.mktemp("project")
    directory = overlay.copy_project(ROOT, base / "project")
    state = base / "state"
    state.mkdir()
    return Project(directory, state, local_cloud, toolchain)
