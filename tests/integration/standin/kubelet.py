"""The real kubelet as the judge of what the user data gives it: its flag parser for every flag k3s passes
from the config file, and its config loader and validator for the drop-ins in k3s's --config-dir.

The kubelet parses its flags, loads and merges --config-dir, validates the result, and only then builds its
dependencies (k8s.io/kubernetes v1.35.4 cmd/kubelet/app/server.go). A cipher suite no TLS library knows
stops it right there (InitializeTLS), before it touches the host; explicit TLS file paths keep it from
writing a self-signed certificate first.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

STOP_CIPHER = "CRDB_FEDERATION_STOP_AFTER_VALIDATION"
# The machine running the tests may use cgroup v1; the nodes (Ubuntu 24.04) use v2. Only this is relaxed.
HOST_CONFIG = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nfailCgroupV1: false\n"


@dataclass(frozen=True)
class KubeletVerdict:
    accepted: bool
    output: str


def kubelet_flags(k3s_config: Mapping[str, object]) -> list[str]:
    """The kubelet flags k3s derives from its config file that the user data decides: node name, IP and
    labels, and every kubelet-arg passed through as --<arg> (k3s pkg/util/args.go GetArgs)."""
    flags = [f"--hostname-override={k3s_config['node-name']}", f"--node-ip={k3s_config['node-ip']}"]
    labels = list(k3s_config.get("node-label") or [])
    if labels:
        flags.append(f"--node-labels={','.join(labels)}")
    flags += [f"--{arg}" for arg in k3s_config.get("kubelet-arg") or []]
    return flags


def judge(kubelet: Path, flags: Sequence[str], dropins: Mapping[str, str], timeout: float = 60) -> KubeletVerdict:
    """Runs the kubelet until it has parsed `flags` and merged and validated `dropins` (name -> text)."""
    with tempfile.TemporaryDirectory(prefix="crdb-kubelet-") as scratch:
        directory = Path(scratch) / "kubelet.conf.d"
        directory.mkdir()
        (directory / "00-test-host.conf").write_text(HOST_CONFIG)
        for name, text in dropins.items():
            (directory / name).write_text(text)
        command = [str(kubelet), f"--config-dir={directory}", f"--tls-cert-file={scratch}/absent.crt",
                   f"--tls-private-key-file={scratch}/absent.key", f"--tls-cipher-suites={STOP_CIPHER}", *flags]
        done = subprocess.run(command, cwd=scratch, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    reached = "failed to construct kubelet dependencies" in output and STOP_CIPHER in output
    return KubeletVerdict(accepted=reached, output=output.strip())
