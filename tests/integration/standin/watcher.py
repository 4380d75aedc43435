"""Watches the local cloud and does for each stack what its servers would do if they booted.

- A stack's server 0 is ACTIVE and its public address is attached (a floating IP on its port, or a fixed
  address of its port): its control plane starts, from the user data Nova holds, if the real kubelet
  accepts what that user data gives it (a kubelet that refuses its flags crash-loops k3s: no API).
- Each ACTIVE server of a stack with a running control plane registers its Node, as its k3s kubelet would,
  once the kubelet accepts its flags and drop-ins and (agents) its config points at server 0.
- A server that is gone: an agent's Node stays and goes NotReady (kwok stops reporting for it, as a dead
  kubelet stops), as on a real k3s cloud; server 0 gone stops the control plane, whose datastore stays with
  the data volume until the volume goes too.

Each stack's findings (what was honoured, what could not be checked, the kubelet's verdicts, failures) are
written to <state>/<member>/report.json for the tests to read.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from components.cloudinit import agent_join_token
from components.settings import KUBE_API_PORT

from . import kubelet
from .controlplane import Binaries, ControlPlane, StandInError, classify
from .userdata import NodeUserData, from_nova

MEMBER_KEY = "crdb-federation-member"
log = logging.getLogger("standin")


@dataclass
class Stack:
    member: str
    plane: Optional[ControlPlane] = None
    server_id: Optional[str] = None
    registered: dict[str, str] = field(default_factory=dict)  # node name -> server id
    report: dict[str, Any] = field(default_factory=lambda: {"nodes": {}, "events": []})


class Watcher:
    def __init__(self, cloud: Any, state: Path, binaries: Binaries, only: frozenset[str] | set[str] = frozenset()):
        self.cloud, self.state, self.binaries, self.only = cloud, state, binaries, only
        self.stacks: dict[str, Stack] = {}
        self.user_data: dict[str, NodeUserData] = {}
        # Every control plane ever started, so that none outlives the watcher.
        self.started: list[ControlPlane] = []

    # ----------------------------------------------------------------------------------------- one round
    def round(self) -> None:
        # The hypervisor's view, as the cloud's admin: every project's servers (each operator has a project of its own).
        servers = [s for s in self.cloud.compute.servers(details=True, all_projects=True)
                   if (s.metadata or {}).get(MEMBER_KEY)]
        by_member: dict[str, list[Any]] = {}
        for server in servers:
            if not self.only or server.metadata[MEMBER_KEY] in self.only:
                by_member.setdefault(server.metadata[MEMBER_KEY], []).append(server)
        for member in set(by_member) | set(self.stacks):
            stack = self.stacks.setdefault(member, Stack(member))
            try:
                self._converge(stack, by_member.get(member, []))
            except Exception as error:  # one stack's trouble never stops the others
                self._event(stack, f"error: {error}\n{traceback.format_exc(limit=3)}")
            self._save(stack)
        self._forget_volumes()

    def _converge(self, stack: Stack, servers: list[Any]) -> None:
        active = [s for s in servers if s.status == "ACTIVE"]
        server0 = next((s for s in active if (s.metadata or {}).get("k3s-role") == "server"), None)
        if stack.plane and (server0 is None or server0.id != stack.server_id):
            self._event(stack, f"server 0 {stack.server_id} is gone: stopping its control plane")
            stack.plane.stop()
            stack.plane, stack.registered = None, {}
        if stack.plane and stack.plane.alive():
            self._event(stack, f"control plane components exited: {', '.join(stack.plane.alive())}; restarting")
            stack.plane.stop()
            stack.plane, stack.registered = None, {}
        if server0 is not None and stack.plane is None and self._reachable(server0):
            self._start(stack, server0)
        if stack.plane is None:
            return
        present = {s.name: s for s in active}
        for server in active:
            if stack.registered.get(server.name) != server.id:
                self._register(stack, server)
        for name in [n for n in stack.registered if n not in present]:
            self._event(stack, f"{name}: its server is gone; its kubelet stops reporting, its Node stays")
            stack.plane.unmanage(name)
            del stack.registered[name]

    def _start(self, stack: Stack, server0: Any) -> None:
        data = self._user_data(server0)
        stack.report["config"] = classify(data.k3s_config)
        verdict = self._judge(stack, server0.name, data)
        if not verdict.accepted:
            return
        volume = data.data_volume_id or server0.id
        plane = ControlPlane(stack.member, data, self.state / "datastores" / volume, self.state / stack.member / "run",
                             self.binaries)
        self._event(stack, f"server 0 {server0.id} is ACTIVE at {plane.public_ip}: starting its control plane "
                           f"(datastore of volume {volume})")
        started = time.monotonic()
        self.started.append(plane)
        try:
            plane.start()
        except StandInError as error:
            plane.stop()
            self._event(stack, f"control plane failed: {error}")
            return
        stack.plane, stack.server_id = plane, server0.id
        stack.report.update({"api": plane.url, "adminKubeconfig": str(plane.kubeconfigs["admin"]),
                             "runDir": str(plane.run), "startSeconds": round(time.monotonic() - started, 1)})
        self._event(stack, f"control plane ready at {plane.url} in {stack.report['startSeconds']}s")

    def _register(self, stack: Stack, server: Any) -> None:
        data = self._user_data(server)
        if not self._judge(stack, server.name, data).accepted:
            return
        if not data.is_server:
            problem = self._agent_problem(stack, data)
            if problem:
                stack.report["nodes"][server.name].update(registered=False, problem=problem)
                self._event(stack, f"{server.name}: not registered: {problem}")
                stack.registered[server.name] = server.id  # its k3s agent would retry the same forever
                return
        stack.plane.register(data)
        stack.registered[server.name] = server.id
        stack.report["nodes"][server.name].update(registered=True, serverId=server.id)
        self._event(stack, f"{server.name}: Node registered")

    def _agent_problem(self, stack: Stack, agent: NodeUserData) -> Optional[str]:
        """What a k3s agent checks before it joins: the server URL, and the token's CA hash and password."""
        server = stack.plane.server
        expected = f"https://{server.k3s_config['node-ip']}:{KUBE_API_PORT}"
        if agent.k3s_config.get("server") != expected:
            return f"server is {agent.k3s_config.get('server')!r}, not server 0's {expected}"
        token = agent_join_token(server.tls("server-ca.crt"), str(server.k3s_config.get("agent-token")))
        if agent.k3s_config.get("token") != token:
            return "its token does not pin server 0's CA with server 0's agent token"
        return None

    def _judge(self, stack: Stack, name: str, data: NodeUserData) -> kubelet.KubeletVerdict:
        verdict = kubelet.judge(Path(self.binaries.kubelet), kubelet.kubelet_flags(data.k3s_config),
                                data.kubelet_dropins())
        stack.report["nodes"].setdefault(name, {})["kubelet"] = {"accepted": verdict.accepted,
                                                                   "output": verdict.output[-600:]}
        if not verdict.accepted:
            self._event(stack, f"{name}: the kubelet refuses what the user data gives it; k3s would crash-loop:\n"
                               f"{verdict.output[-600:]}")
        return verdict

    # ----------------------------------------------------------------------------------------- the cloud
    def _user_data(self, server: Any) -> NodeUserData:
        if server.id not in self.user_data:
            # The list omits user data; a single GET with microversion 2.3+ returns it (base64).
            full = self.cloud.compute.get_server(server.id)
            self.user_data[server.id] = from_nova(full.user_data)
        return self.user_data[server.id]

    def _reachable(self, server: Any) -> bool:
        """Its public address is on its port: a floating IP associated with it, or one of its fixed IPs."""
        public = self._user_data(server).k3s_config.get("node-external-ip")
        ports = list(self.cloud.network.ports(device_id=server.id))
        fixed = {ip["ip_address"] for port in ports for ip in port.fixed_ips}
        if public in fixed:
            return True
        return any(ip.port_id in {p.id for p in ports} for ip in self.cloud.network.ips(floating_ip_address=public))

    def _forget_volumes(self) -> None:
        """A datastore goes with its data volume, as k3s's does."""
        root = self.state / "datastores"
        if not root.is_dir():
            return
        volumes = {v.id for v in self.cloud.block_storage.volumes(all_projects=True)}
        running = {str(s.plane.datastore) for s in self.stacks.values() if s.plane}
        for directory in root.iterdir():
            if directory.name not in volumes and str(directory) not in running:
                shutil.rmtree(directory, ignore_errors=True)

    # ----------------------------------------------------------------------------------------- records
    def _event(self, stack: Stack, text: str) -> None:
        log.info("%s: %s", stack.member, text)
        stack.report["events"].append({"time": time.time(), "text": text})

    def _save(self, stack: Stack) -> None:
        path = self.state / stack.member / "report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stack.report, indent=1))

    def stop(self) -> None:
        for plane in self.started:
            plane.stop()
