"""A node's user data as Nova holds it, read the way cloud-init and k3s would read it."""

from __future__ import annotations

import base64
import re
import shlex
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from components.cloudinit import (
    DATA_VOLUME_SCRIPT_PATH, K3S_CONFIG_PATH, K3S_TLS_DIR, KUBELET_DROPIN_PATH,
)

KUBELET_DROPIN_DIR = KUBELET_DROPIN_PATH.rsplit("/", 1)[0]


@dataclass(frozen=True)
class NodeUserData:
    """What one node's cloud-config writes: every write_files entry by path, and the k3s config they hold."""

    files: dict[str, str]
    k3s_config: dict[str, Any]
    runcmd: list[Any]

    @property
    def is_server(self) -> bool:
        return "server" not in self.k3s_config

    def tls(self, relative: str) -> str:
        """A file k3s adopts from its TLS directory (server-ca.crt, client-ca.key, service.key, ...)."""
        return self.files[f"{K3S_TLS_DIR}/{relative}"]

    def kubelet_dropins(self) -> dict[str, str]:
        """The drop-ins written into the kubelet's --config-dir, by file name."""
        return {path.rsplit("/", 1)[1]: text for path, text in self.files.items()
                if path.startswith(KUBELET_DROPIN_DIR + "/")}

    @property
    def data_volume_id(self) -> Optional[str]:
        script = self.files.get(DATA_VOLUME_SCRIPT_PATH, "")
        found = re.search(r"^volume_id=(\S+)$", script, re.MULTILINE)
        return shlex.split(found.group(1))[0] if found else None


def parse(text: str) -> NodeUserData:
    if not text.startswith("#cloud-config\n"):
        raise ValueError("user data is not a #cloud-config document")
    document = yaml.safe_load(text)
    files = {entry["path"]: entry.get("content", "") for entry in document.get("write_files") or []}
    if K3S_CONFIG_PATH not in files:
        raise ValueError(f"user data writes no {K3S_CONFIG_PATH}")
    return NodeUserData(files, yaml.safe_load(files[K3S_CONFIG_PATH]) or {}, list(document.get("runcmd") or []))


def from_nova(user_data: str) -> NodeUserData:
    """Nova returns user data base64-encoded (compute API microversion 2.3 and later)."""
    return parse(base64.b64decode(user_data).decode())
