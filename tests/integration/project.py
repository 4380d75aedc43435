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
        if args and args[0] in TOOL_SECRETS_COMMANDS:
            args = (args[0], "--passphrases", str(self.passphrases), *args[1:])
        return subprocess.run([str(ROOT / "venv" / "bin" / "python"), "-m", "federation", *args],
                              cwd=self.directory, env={**self.env(), "PATH": f"{Path(self.pulumi).parent}:"
                                                                            f"{os.environ['PATH']}", **(env or {})},
                              capture_output=True, text=True, timeout=timeout)


def step_ops(events: list[dict], type_prefix: str = "") -> dict[str, str]:
    """URN -> the engine's step for it (same, create, update, replace, delete, ...), from an event log."""
    ops = {}
    for event in events:
        pre = event.get("resourcePreEvent")
        if pre and pre["metadata"]["type"].startswith(type_prefix):
            ops[pre["metadata"]["urn"]] = pre["metadata"]["op"]
    return ops
