"""Kubernetes Node objects that must not outlive their servers.

k3s has no cloud provider that notices a deleted server (pkg/cloudprovider/instances.go: InstanceExists is
always true), so a removed agent's Node stays, NotReady and still labelled. DaemonSet pods tolerate
unreachable nodes, so its pod counts as scheduled and never available: the DaemonSet is never Current
(kstatus) and every later DaemonSet update waits out its timeout; system-upgrade-controller also picks the
ghost for its plans. A `NodeRegistration` is created before its server, which depends on it, so the engine
deletes it only after the server is gone, and its delete removes the Node.
"""

from __future__ import annotations

import urllib.error
from typing import Any, Optional

import pulumi
import pulumi.dynamic as dynamic

from .kube_api import KubeApi


class NodeNotRemoved(Exception):
    pass


def remove_node(kube: Any, node: str) -> bool:
    """Deletes the Node object; False when it was not there (never registered, or removed by hand)."""
    try:
        kube.call("DELETE", f"/api/v1/nodes/{node}")
        return True
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise NodeNotRemoved(f"the Kubernetes API refused to delete node {node}: HTTP {error.code}") from None
    except (urllib.error.URLError, OSError) as error:
        raise NodeNotRemoved(
            f"the Kubernetes API did not answer to delete node {node} ({getattr(error, 'reason', error)}); its "
            f"server is gone. Run `pulumi up` again once the API answers, or `kubectl delete node {node}`: "
            "until then every DaemonSet update waits for a pod that cannot run") from None


class _NodeRegistrationProvider(dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        # The kubelet registers the node itself when its server boots.
        return dynamic.CreateResult(id_=props["node"], outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        keys = [k for k in news if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(keys), replaces=["node"] if "node" in keys else [],
                                  delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(outs=news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        remove_node(KubeApi(props["kubeconfig"]), props["node"])


class NodeRegistration(dynamic.Resource):
    """Removes the Kubernetes Node `node` when deleted; see the module docstring."""

    def __init__(self, name: str, *, node: str, kubeconfig: pulumi.Input[str],
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(_NodeRegistrationProvider(), name, {"node": node, "kubeconfig": pulumi.Output.secret(kubeconfig)},
                         pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                             additional_secret_outputs=["kubeconfig"])))
