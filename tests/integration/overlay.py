"""Re-points the shipped stacks at the local cloud, changing only what is specific to a cloud.

Everything the federation decides (roles, node counts, ranges, versions, network modes) stays as the
stack files have it, so a preview here is a preview of the stacks operators run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

PROJECT = "crdb-federation"
# What the local cloud offers (tests/integration/localcloud/localcloud.sh seeds it).
LOCAL_CLOUD = {
    "cloud": "localcloud",
    "region": "RegionOne",
    "availabilityZone": "nova",
    "image": "ubuntu-24.04",
    "serverFlavor": "m1.large",
}
EXTERNAL_NETWORK = "public"  # router gateway and floating IPs, 198.18.0.0/24
PROVIDER_NETWORK = "provider"  # shared, fixed addresses are public, 198.19.0.0/24
# Neutron's limit for the local cloud's VXLAN tenant networks (1500 less the encapsulation): a stack whose
# cloud is not encapsulated (otc: 1500) is refused a network above it.
LOCAL_MAX_MTU = 1450
# What an operator clones: the program, the tool and the scripts that run them.
PROGRAM = ("Pulumi.yaml", "__main__.py", "components", "federation", "policy", "scripts", "requirements.txt",
           "requirements-tool.txt")


def overlay_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stack's `config:` block re-pointed at the local cloud (pure)."""
    result = dict(config)
    for key, value in LOCAL_CLOUD.items():
        result[f"{PROJECT}:{key}"] = value
    result.pop(f"{PROJECT}:agentFlavor", None)  # the server flavor serves both
    if f"{PROJECT}:externalNetwork" in result:
        result[f"{PROJECT}:externalNetwork"] = EXTERNAL_NETWORK
    if f"{PROJECT}:existingNetwork" in result:
        result[f"{PROJECT}:existingNetwork"] = PROVIDER_NETWORK
    if int(result.get(f"{PROJECT}:mtu", 0)) > LOCAL_MAX_MTU:
        result[f"{PROJECT}:mtu"] = LOCAL_MAX_MTU
    return result


def copy_project(root: Path, destination: Path) -> Path:
    """The program and its stacks, overlaid, in `destination`; the CLI uses the repo's virtualenv."""
    destination.mkdir(parents=True)
    for name in PROGRAM:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "venv"))
        else:
            shutil.copy2(source, destination / name)
    (destination / "venv").symlink_to(root / "venv")
    (destination / "policy" / "venv").symlink_to(root / "policy" / "venv")
    (destination / "stacks").mkdir()
    for stack_file in sorted((root / "stacks").glob("Pulumi.*.yaml")):
        document = yaml.safe_load(stack_file.read_text())
        document["config"] = overlay_config(document["config"])
        (destination / "stacks" / stack_file.name).write_text(yaml.safe_dump(document, sort_keys=False))
    return destination
