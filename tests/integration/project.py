"""The real CLI over a re-pointed copy of the project, and the local cloud it targets; used by the
integration tier and by bench/."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
LOCALCLOUD = Path(__file__).resolve().parent / "localcloud" / "localcloud.sh"
# Every stack has a passphrase of its own, as every operator does (README: Secrets apart).
TOOL_SECRETS_COMMANDS = ("join", "preview", "preflight", "remove", "status", "orphans")


def passphrase(stack: str) -> str:
    return f"{stack.rsplit('/', 1)[-1]}'s operator alone knows this"


@dataclass(frozen=True)
class LocalCloud:
    clouds_yaml: Path
    name: str = "localcloud"

    def connect(self):
        import openstack

        os.environ["OS_CLIENT_CONFIG_FILE"] = str(self.clouds_yaml)
        return openstack.connect(cloud=self.name)


def start_local_cloud(log: Path) -> LocalCloud:
    """Starts (or finds running) the local OpenStack; raises with the start log's tail if it cannot."""
    with open(log, "w") as handle:
        started = subprocess.run(["bash", str(LOCALCLOUD), "start"], stdout=handle, stderr=subprocess.STDOUT)
    if started.returncode != 0:
        raise RuntimeError("the local OpenStack did not start:\n" + log.read_text()[-3000:])
    env = subprocess.run(["bash", str(LOCALCLOUD), "env"], capture_output=True, text=True, check=True).stdout
    return LocalCloud(Path(env.split("OS_CLIENT_CONFIG_FILE=")[1].split()[0]))


def stop_local_cloud() -> None:
    subprocess.run(["bash", str(LOCALCLOUD), "stop"], capture_output=True)


@dataclass(frozen=True)
class StandIn:
    """The running k3s stand-in: each stack's report and a client for its Kubernetes API."""

    state: Path
    binaries: Path

    def report(self, member: str) -> dict:
        path = self.state / member / "report.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def api(self, member: str):
        from components.kube_api import KubeApi

        kubeconfig = self.report(member).get("adminKubeconfig")
        if not kubeconfig:
            raise AssertionError(f"no control plane runs for {member}: {self.report(member).get('events')}")
        return KubeApi(Path(kubeconfig).read_text())

    def get(self, member: str, path: str) -> dict:
        return self.api(member).call("GET", path)

    def kubectl(self, member: str, *args: str) -> str:
        kubeconfig = self.report(member)["adminKubeconfig"]
        return subprocess.run([str(self.binaries / "kubectl"), "--kubeconfig", kubeconfig, *args],
                              capture_output=True, text=True, check=True).stdout


class Project:
    """A copy of the project whose stacks are re-pointed at the local cloud, with its own file backend."""

    def __init__(self, directory: Path, state: Path, cloud: LocalCloud, pulumi: str):
        self.directory, self.state, self.cloud, self.pulumi = directory, state, cloud, pulumi
        # Each stack's passphrase in a file of its own, as the tool reads them (--passphrases).
        self.passphrases = directory / "passphrases"

    def env(self, stack: Optional[str] = None) -> dict[str, str]:
        """The CLI's environment for one stack's commands: that stack's own passphrase, and no other."""
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PULUMI_CONFIG_PASSPHRASE")},
            "PULUMI_BACKEND_URL": f"file://{self.state}",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DEBUG_COMMANDS": "true",  # enables --event-log
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "OS_CLIENT_CONFIG_FILE": str(self.cloud.clouds_yaml),
        }
        if stack:
            environment["PULUMI_CONFIG_PASSPHRASE"] = passphrase(stack)
        return environment

    def run(self, *args: str, stack: Optional[str] = None, check: bool = True, timeout: float = 900,
            stdin: Optional[str] = None, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
        command = [self.pulumi, *args, "--non-interactive"] + (["--stack", stack] if stack else [])
        done = subprocess.run(command, cwd=self.directory, env={**self.env(stack), **(env or {})},
                              capture_output=True, text=True, timeout=timeout, input=stdin)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-4000:]}"
                                 f"\n{done.stderr[-2000:]}")
        return done

    def select(self, stack: str) -> None:
        self.run("stack", "select", "--create", "--secrets-provider", "passphrase", stack, env=self.env(stack))
        self.passphrases.mkdir(exist_ok=True)
        (self.passphrases / f"{stack}.passphrase").write_text(passphrase(stack))
        (self.passphrases / f"{stack}.passphrase").chmod(0o600)

    def events(self, operation: str, stack: str, *args: str, check: bool = False,
               env: Optional[dict[str, str]] = None) -> tuple[list[dict], str]:
        """Runs `pulumi <operation>` with an engine event log; returns the events and the output."""
        log = self.directory / f"events-{stack}-{operation}.jsonl"
        log.unlink(missing_ok=True)
        done = self.run(operation, *args, "--event-log", str(log), stack=stack, check=check, env=env)
        # A CLI that refuses before the engine starts (an unreadable stack file) writes no log.
        lines = log.read_text().splitlines() if log.exists() else []
        events = [json.loads(line) for line in lines if line.strip()]
        return events, done.stdout + done.stderr

    def tool(self, *args: str, timeout: float = 1200, env: Optional[dict[str, str]] = None
             ) -> subprocess.CompletedProcess:
        """`python -m federation ...` inside the copy, on the same backend, each stack with its own passphrase."""
        return subprocess.run(**self._tool_call(args, env), capture_output=True, text=True, timeout=timeout)

    def start_tool(self, *args: str) -> subprocess.Popen:
        """The tool started in the background (its output to a pipe, read with communicate())."""
        return subprocess.Popen(**self._tool_call(args, None), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def _tool_call(self, args: tuple[str, ...], env: Optional[dict[str, str]]) -> dict:
        if args and args[0] in TOOL_SECRETS_COMMANDS:
            args = (args[0], "--passphrases", str(self.passphrases), *args[1:])
        return {"args": [str(ROOT / "venv" / "bin" / "python"), "-m", "federation", *args], "cwd": self.directory,
                "env": {**self.env(), "PATH": f"{Path(self.pulumi).parent}:{os.environ['PATH']}", **(env or {})}}


# Long enough for the stand-in to start a control plane on a loaded 2-core machine.
API_READY_TIMEOUT = 300


def explicit_member(project: Project, stack: str, node_count: int, seed: dict) -> None:
    """A member that takes the seed's public outputs (`seed`: federationJoin, caCertificate, clientCaCertificate)
    from its own config (no StackReference, no signing)."""
    project.select(stack)
    project.run("config", "rm", "crdb-federation:seedStack", stack=stack)
    project.run("config", "set", "crdb-federation:nodeCount", str(node_count), stack=stack)
    project.run("config", "set", "crdb-federation:apiReadyTimeout", str(API_READY_TIMEOUT), stack=stack)
    for index, address in enumerate(seed["federationJoin"]):
        project.run("config", "set", "--path", f"crdb-federation:joinAddresses[{index}]", address, stack=stack)
    for key in ("caCertificate", "clientCaCertificate"):
        project.run("config", "set", f"crdb-federation:{key}", stack=stack, stdin=seed[key])


def in_cloud(cloud, stack: str) -> dict[str, list[str]]:
    """The stack's servers, data volumes, ports and floating IPs in the cloud's project the tests run in, by name
    (IPs by description). Neutron shows an admin every project's (neutron_lib/db/utils.py
    model_query_scope_is_project), so its listings name the project, as Nova's and Cinder's do by default."""
    prefix, project = f"{stack}-", cloud.current_project_id
    return {
        "servers": sorted(s.name for s in cloud.compute.servers() if s.name.startswith(prefix)),
        "volumes": sorted(v.name for v in cloud.block_storage.volumes() if (v.name or "").startswith(prefix)),
        "ports": sorted(p.name for p in cloud.network.ports(project_id=project) if p.name.startswith(prefix)),
        "floating IPs": sorted(i.description for i in cloud.network.ips(project_id=project)
                               if (i.description or "").startswith(f"crdb-federation {prefix}")),
    }


def whole(stack: str, node_count: int) -> dict[str, list[str]]:
    """in_cloud() of a floating-address member with every node made once."""
    nodes = [f"{stack}-k3s-{i}" for i in range(node_count)]
    return {"servers": nodes, "volumes": [f"{n}-data" for n in nodes], "ports": [f"{n}-port" for n in nodes],
            "floating IPs": [f"crdb-federation {n}" for n in nodes]}


NOTHING = {"servers": [], "volumes": [], "ports": [], "floating IPs": []}


def step_ops(events: list[dict], type_prefix: str = "") -> dict[str, str]:
    """URN -> the engine's step for it (same, create, update, replace, delete, ...), from an event log."""
    ops = {}
    for event in events:
        pre = event.get("resourcePreEvent")
        if pre and pre["metadata"]["type"].startswith(type_prefix):
            ops[pre["metadata"]["urn"]] = pre["metadata"]["op"]
    return ops
