"""Upstream validators: cloud-init's own schema, shellcheck, and the Kubernetes OpenAPI schemas."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate

from components.settings import KUBERNETES_SCHEMA_VERSION


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed; .ci/run installs it (see README)")
    return path


def assert_valid_cloud_config(text: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        handle.write(text)
        handle.flush()
        result = subprocess.run([_tool("cloud-init"), "schema", "--config-file", handle.name],
                                capture_output=True, text=True)
    assert result.returncode == 0, f"cloud-init schema rejected the user data:\n{result.stdout}{result.stderr}"


def shellcheck(script: str, shell: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "script"
        path.write_text(script)
        return subprocess.run([_tool("shellcheck"), "--shell", shell, "--severity", "style", str(path)],
                              capture_output=True, text=True)


def assert_shellcheck_clean(script: str, shell: str) -> None:
    result = shellcheck(script, shell)
    assert result.returncode == 0, f"shellcheck --shell {shell}:\n{result.stdout}{result.stderr}"


def assert_valid_kubernetes(manifest: dict[str, Any]) -> None:
    """Strict OpenAPI validation for the Kubernetes version k3s is pinned to (raises on any problem)."""
    kubernetes_validate.validate(manifest, KUBERNETES_SCHEMA_VERSION, strict=True)
