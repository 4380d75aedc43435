"""One stack's k3s control plane, from real components: kine (SQLite) as the datastore, kube-apiserver bound to
server 0's public address on 6443, kube-controller-manager, kube-scheduler, and kwok for the kubelets.

Everything comes from the user data Nova holds for server 0: the CA files (server-ca serves the API,
client-ca checks clients, request-header-ca the front proxy, service.key signs service-account tokens) and
the k3s config (addresses, tls-san, secrets-encryption, *-arg keys). The flags follow what k3s itself gives
its embedded components (pkg/daemons/control/server.go, release-1.35); the datastore sits in a directory
named after server 0's data volume, as k3s's sits on the volume, so a healed server 0 finds its cluster.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.kube_api import KubeApi
from components.kubernetes import render_kubeconfig
from components.settings import K3S_CLUSTER_CIDRS, KUBE_API_PORT

from . import pki
from .userdata import NodeUserData

CLUSTER_CIDR, SERVICE_CIDR = K3S_CLUSTER_CIDRS
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
ISSUER = "https://kubernetes.default.svc.cluster.local"
# The config keys of k3s a stand-in can act on, and those it cannot (the test lists these, nothing is dropped).
HONOURED = {
    "node-name": "the Node's name", "node-ip": "the Node's InternalIP, the serving certificate",
    "node-external-ip": "the Node's ExternalIP, the API's bind address, the serving certificate",
    "node-label": "the Node's labels (and the kubelet's --node-labels parser)",
    "advertise-address": "kube-apiserver --advertise-address", "tls-san": "the serving certificate's names",
    "secrets-encryption": "kube-apiserver --encryption-provider-config (aescbc)",
    "disable": "nothing is deployed but what the program deploys",
    "kube-apiserver-arg": "passed to the real kube-apiserver", "kube-controller-manager-arg":
    "passed to the real kube-controller-manager", "kube-scheduler-arg": "passed to the real kube-scheduler",
    "kubelet-arg": "judged by the real kubelet's flag parser",
    "server": "an agent's must be server 0's private address on 6443 (checked by the stand-in)",
}
UNCHECKED = {
    "token": "k3s's bootstrap-data passphrase: no k3s runs here",
    "agent-token": "agents' tokens are compared with it by the stand-in, not by k3s",
    "write-kubeconfig-mode": "k3s writes no kubeconfig here",
    "flannel-backend": "no CNI runs here",
}


@dataclass(frozen=True)
class Binaries:
    directory: Path

    def __getattr__(self, name: str) -> str:
        return str(self.directory / name.replace("_", "-"))


class StandInError(Exception):
    pass


def _signal(process: subprocess.Popen, number: int) -> None:
    """To the component's whole process group (each starts a session of its own)."""
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:
        pass


def classify(config: dict[str, Any]) -> dict[str, list[str]]:
    """Each key of a k3s config: honoured or checked here, not checkable, or unknown to the stand-in."""
    found: dict[str, list[str]] = {"honoured": [], "unchecked": [], "unknown": []}
    for key in config:
        found["honoured" if key in HONOURED else "unchecked" if key in UNCHECKED else "unknown"].append(key)
    return found


class ControlPlane:
    """Start, stop, and the few API calls the stand-in makes as the cluster's kubelets would."""

    def __init__(self, member: str, server: NodeUserData, datastore: Path, run: Path, binaries: Binaries):
        self.member, self.server, self.datastore, self.run, self.binaries = member, server, datastore, run, binaries
        config = server.k3s_config
        self.public_ip = config.get("node-external-ip") or config["node-ip"]
        self.private_ip = config.get("advertise-address") or config["node-ip"]
        self.url = f"https://{self.public_ip}:{KUBE_API_PORT}"
        self.processes: list[subprocess.Popen] = []
        self.kubeconfigs: dict[str, Path] = {}

    # ----------------------------------------------------------------------------------------- start/stop
    def start(self, timeout: float = 180) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        self.datastore.mkdir(parents=True, exist_ok=True)
        tls = self._write_tls()
        subprocess.run(["ip", "addr", "replace", f"{self.public_ip}/32", "dev", "lo"], check=True)
        socket = self.run / "kine.sock"
        socket.unlink(missing_ok=True)
        self._spawn("kine", [self.binaries.kine, "--endpoint",
                             f"sqlite://{self.datastore / 'state.db'}?_journal=WAL&cache=shared&_busy_timeout=30000",
                             "--listen-address", f"unix://{socket}", "--metrics-bind-address", "0"])
        self._wait(lambda: socket.exists(), "kine's socket", 30)
        self._spawn("kube-apiserver", [self.binaries.kube_apiserver, *self._apiserver_flags(tls, socket)])
        self._wait(self.ready, f"{self.url}/readyz", timeout)
        common = ["--bind-address", self.public_ip]
        manager = self.kubeconfigs["system:kube-controller-manager"]
        self._spawn("kube-controller-manager", [
            self.binaries.kube_controller_manager, *common, f"--kubeconfig={manager}",
            f"--authentication-kubeconfig={manager}", f"--authorization-kubeconfig={manager}",
            f"--root-ca-file={tls['server-ca.crt']}", f"--service-account-private-key-file={tls['service.key']}",
            f"--cluster-signing-cert-file={tls['client-ca.crt']}", f"--cluster-signing-key-file={tls['client-ca.key']}",
            "--use-service-account-credentials=true", "--leader-elect=false",
            # As k3s runs it: no cloud controllers, node CIDRs from the cluster range.
            "--controllers=*,tokencleaner,-service,-route,-cloud-node-lifecycle", "--configure-cloud-routes=false",
            "--allocate-node-cidrs=true", f"--cluster-cidr={CLUSTER_CIDR}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            *self._extra("kube-controller-manager-arg")])
        scheduler = self.kubeconfigs["system:kube-scheduler"]
        self._spawn("kube-scheduler", [
            self.binaries.kube_scheduler, *common, f"--kubeconfig={scheduler}",
            f"--authentication-kubeconfig={scheduler}", f"--authorization-kubeconfig={scheduler}",
            "--leader-elect=false", *self._extra("kube-scheduler-arg")])
        # Nodes renew their leases as kubelets do, so the node lifecycle controller sees a server that went.
        self._spawn("kwok", [self.binaries.kwok, f"--kubeconfig={self.kubeconfigs['kwok']}",
                             f"--config={self.binaries.directory / 'kwok-stages.yaml'}",
                             f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                             "--node-lease-duration-seconds=40", f"--cidr={CLUSTER_CIDR}"])

    def stop(self) -> None:
        """Every component, then the address; safe to call again (and after a start that failed half-way)."""
        for process in reversed(self.processes):
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait()
        self.processes = []
        subprocess.run(["ip", "addr", "del", f"{self.public_ip}/32", "dev", "lo"], capture_output=True)

    def alive(self) -> list[str]:
        """The components that exited (empty: all run)."""
        return [p.args[0].rsplit("/", 1)[-1] for p in self.processes if p.poll() is not None]

    # ----------------------------------------------------------------------------------------- the API
    def api(self) -> KubeApi:
        return KubeApi(self.kubeconfigs["admin"].read_text())

    def ready(self) -> bool:
        try:
            return self.api().call("GET", "/readyz", text=True).strip() == "ok"
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def register(self, node: NodeUserData) -> None:
        """The Node a k3s kubelet registers for itself at its first start (labels as k3s sets them)."""
        config = node.k3s_config
        name = config["node-name"]
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
                  "node.kubernetes.io/instance-type": "k3s", "beta.kubernetes.io/instance-type": "k3s"}
        if node.is_server:
            labels |= {"node-role.kubernetes.io/control-plane": "true", "node-role.kubernetes.io/master": "true"}
        for label in config.get("node-label") or []:
            key, _, value = label.partition("=")
            labels[key] = value
        addresses = [{"type": "InternalIP", "address": config["node-ip"]}, {"type": "Hostname", "address": name}]
        if config.get("node-external-ip"):
            addresses.insert(1, {"type": "ExternalIP", "address": config["node-external-ip"]})
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": {KWOK_ANNOTATION: "fake"}},
                "status": {"addresses": addresses,
                           "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                           "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}}
        api = self.api()
        try:
            api.call("POST", "/api/v1/nodes", body)
        except urllib.error.HTTPError as error:
            if error.code != 409:
                raise
            # Known already (a healed server re-registers under its name): the simulated kubelet runs again.
            api.call("PATCH", f"/api/v1/nodes/{name}", {"metadata": {"annotations": {KWOK_ANNOTATION: "fake"}}},
                     content_type="application/merge-patch+json")

    def unmanage(self, name: str) -> None:
        """Its server is gone: its kubelet stops reporting, as a deleted server's would; the Node stays (k3s
        never deletes it)."""
        try:
            self.api().call("PATCH", f"/api/v1/nodes/{name}", {"metadata": {"annotations": {KWOK_ANNOTATION: None}}},
                            content_type="application/merge-patch+json")
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise

    # ----------------------------------------------------------------------------------------- files
    def _write_tls(self) -> dict[str, Path]:
        tls = self.run / "tls"
        tls.mkdir(exist_ok=True)
        paths: dict[str, Path] = {}

        def write(name: str, text: str) -> Path:
            path = tls / name
            path.write_text(text)
            path.chmod(0o600)
            paths[name] = path
            return path

        for name in ("server-ca.crt", "server-ca.key", "client-ca.crt", "client-ca.key", "request-header-ca.crt",
                     "request-header-ca.key", "service.key"):
            write(name, self.server.tls(name))
        dns, ips = pki.serving_names(self.server.k3s_config)
        for name, text in zip(("serving.crt", "serving.key"), pki.issue(
                paths["server-ca.crt"].read_text(), paths["server-ca.key"].read_text(), "kube-apiserver",
                server=True, dns=dns, ips=ips)):
            write(name, text)
        for name, text in zip(("proxy.crt", "proxy.key"), pki.issue(
                paths["request-header-ca.crt"].read_text(), paths["request-header-ca.key"].read_text(),
                "system:auth-proxy")):
            write(name, text)
        server_ca = paths["server-ca.crt"].read_text()
        for user, organization in (("admin", "system:masters"), ("kwok", "system:masters"),
                                   ("system:kube-controller-manager", None), ("system:kube-scheduler", None)):
            cert, key = pki.issue(paths["client-ca.crt"].read_text(),
                                  paths["client-ca.key"].read_text(), user, organization=organization)
            path = self.run / f"{user.replace(':', '-')}.kubeconfig"
            path.write_text(render_kubeconfig(self.member, self.url, server_ca, cert, key))
            path.chmod(0o600)
            self.kubeconfigs[user] = path
        if self.server.k3s_config.get("secrets-encryption"):
            write("encryption.yaml", self._encryption_config())
        return paths

    def _encryption_config(self) -> str:
        """aescbc, as k3s's secrets-encryption writes it; the key lives with the datastore, as k3s's does."""
        key_file = self.datastore / "encryption-key"
        if not key_file.exists():
            key_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
        return json.dumps({
            "kind": "EncryptionConfiguration", "apiVersion": "apiserver.config.k8s.io/v1",
            "resources": [{"resources": ["secrets"], "providers": [
                {"aescbc": {"keys": [{"name": "aescbckey", "secret": key_file.read_text()}]}}, {"identity": {}}]}]})

    def _apiserver_flags(self, tls: dict[str, Path], socket: Path) -> list[str]:
        flags = [
            f"--advertise-address={self.private_ip}", f"--bind-address={self.public_ip}",
            f"--secure-port={KUBE_API_PORT}", "--allow-privileged=true", "--anonymous-auth=false",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--client-ca-file={tls['client-ca.crt']}", f"--etcd-servers=unix://{socket}",
            f"--tls-cert-file={tls['serving.crt']}", f"--tls-private-key-file={tls['serving.key']}",
            f"--proxy-client-cert-file={tls['proxy.crt']}", f"--proxy-client-key-file={tls['proxy.key']}",
            f"--requestheader-client-ca-file={tls['request-header-ca.crt']}",
            "--requestheader-allowed-names=system:auth-proxy", "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group", "--requestheader-username-headers=X-Remote-User",
            f"--service-account-issuer={ISSUER}", f"--api-audiences={ISSUER},k3s",
            f"--service-account-key-file={tls['service.key']}",
            f"--service-account-signing-key-file={tls['service.key']}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--profiling=false", "--storage-backend=etcd3",
            f"--audit-log-path={self.run / 'audit.log'}", f"--audit-policy-file={self._audit_policy()}",
        ]
        if "encryption.yaml" in tls:
            flags.append(f"--encryption-provider-config={tls['encryption.yaml']}")
        return flags + self._extra("kube-apiserver-arg")

    def _audit_policy(self) -> Path:
        """Who wrote what: the program's writes, at request level (the read-back checks the field manager)."""
        path = self.run / "audit-policy.yaml"
        path.write_text(json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
                                    "rules": [{"level": "Metadata", "verbs": ["create", "update", "patch", "delete"]},
                                              {"level": "None"}]}))
        return path

    def _extra(self, key: str) -> list[str]:
        return [f"--{arg}" for arg in self.server.k3s_config.get(key) or []]

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.run / f"{name}.log", "ab")
        self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _wait(self, predicate, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            exited = self.alive()
            if exited or time.monotonic() > deadline:
                tail = "".join((self.run / f"{exited[0] if exited else 'kube-apiserver'}.log").read_text(
                    errors="replace").splitlines(keepends=True)[-15:])
                raise StandInError(f"{self.member}: {what} not ready ({'exited: ' + ', '.join(exited) if exited else 'timeout'}):\n{tail}")
            time.sleep(0.5)
