"""Runs the whole Pulumi program under mocks, with a stack's config, and resolves what it exported.

Mocks are installed before the program module runs (it is executed fresh each time with runpy), and
with preview=False so every `apply` runs on known values.
"""

from __future__ import annotations

import json
import os
import runpy
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import pulumi
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from federation import stack_config as stack_config_module
from tests.fakes import FakeCloud

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "crdb-federation"


def resolve(value: Any) -> Any:
    """The value of an Output, or of a structure holding Outputs, after the mocks have produced it."""
    return _sync_await(pulumi.Output.from_input(value).future())


@dataclass
class ProgramRun:
    cloud: FakeCloud
    globals: dict[str, Any]

    def output(self, name: str) -> Any:
        """A stack export, resolved; `name` is the key passed to pulumi.export."""
        return resolve(self.globals["_exports"][name])


def stack_config(stack: str) -> dict[str, Any]:
    """stacks/Pulumi.<stack>.yaml as the CLI resolves it (project defaults applied, required keys enforced)."""
    return stack_config_module.resolve(stack)


def project_defaults() -> dict[str, Any]:
    """The declared defaults, which the engine gives every stack that does not set the key."""
    _, declared = stack_config_module.declared_config()
    return {key: spec["default"] for key, spec in declared.items() if "default" in spec}


def _config_string(value: Any) -> str:
    if isinstance(value, dict) and "secure" in value:
        raise ValueError("encrypted values cannot be read under mocks; pass the secret in plain text to the test")
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run_program(
    config: dict[str, Any],
    *,
    stack: str = "test",
    secrets: Optional[dict[str, str]] = None,
    stack_outputs: Optional[dict[str, dict[str, Any]]] = None,
    cloud: Optional[FakeCloud] = None,
    preview: bool = False,
    environment: Optional[dict[str, str]] = None,
) -> ProgramRun:
    """`preview` True runs as `pulumi preview` does (only where a test is about preview behaviour); `environment`:
    variables the engine's process has for this run (the language host passes its own on to the program)."""
    # Each stack gets its own public range, as each cloud has its own floating IPs.
    prefix = f"198.18.{zlib.crc32(stack.encode()) % 250}" if stack != "test" else "198.18.0"
    cloud = cloud or FakeCloud()
    cloud.stack_outputs.update(stack_outputs or {})
    cloud.public_prefix = prefix
    cloud.install(project=PROJECT, stack=stack, preview=preview)
    # As the engine does: every declared default reaches the program unless the stack sets the key.
    all_config = {f"{PROJECT}:{k}": _config_string(v) for k, v in {**project_defaults(), **config}.items()}
    all_config.update({f"{PROJECT}:{k}": v for k, v in (secrets or {}).items()})
    pulumi.runtime.set_all_config(all_config, [f"{PROJECT}:{k}" for k in (secrets or {})])

    exports: dict[str, Any] = {}
    program_globals: dict[str, Any] = {}

    def program() -> None:
        program_globals.update(runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__"))

    original_export = pulumi.export
    pulumi.export = lambda name, value: exports.__setitem__(name, value)
    saved = {key: os.environ.get(key) for key in environment or {}}
    os.environ.update(environment or {})
    try:
        # Runs the program like the engine does: waits for every registration and apply, raises their errors.
        _sync_await(run_pulumi_func(program))
    finally:
        pulumi.export = original_export
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    program_globals["_exports"] = exports
    return ProgramRun(cloud, program_globals)


def evaluate(build: Callable[[], Any]) -> Any:
    """Runs `build` (which creates resources) under the installed mocks, waits for every registration and
    apply, and returns its result with every Output resolved."""
    result: dict[str, Any] = {}

    @pulumi.runtime.test
    def run():
        return pulumi.Output.from_input(build()).apply(lambda value: result.__setitem__("value", value))

    run()
    assert "value" in result, "the build's outputs never resolved"
    return result["value"]


# One federation for the whole-program tests: a seed, and a member that joins it.
SEED_STACK = "organization/crdb-federation/seed"
MEMBER_STACK = "organization/crdb-federation/vexxhost"
COMMON = {
    "cloud": "openstack",
    "region": "RegionOne",
    "image": "ubuntu-24.04",
    "serverFlavor": "m1.large",
    "externalNetwork": "public",
    "adminCidrs": ["198.20.0.0/24"],
    "federationCidrs": ["198.18.0.0/15"],
}
SEED = {**COMMON, "role": "seed", "replicationFactor": 5, "clusterOrganization": "Acme"}
SEED_SECRETS = {"enterpriseLicense": "crl-0-test-licence"}
MEMBER = {**COMMON, "seedStack": SEED_STACK, "nodeCount": 4, "availabilityZone": "az2"}


def pinned_to(seed_outputs: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A member's config with the fingerprints of its seed's CAs, as its operator sets them out of band."""
    from components.federation import fingerprints

    return {**config, "caSha256": fingerprints(seed_outputs["caCertificate"]),
            "clientCaSha256": fingerprints(seed_outputs["clientCaCertificate"])}


def outputs_of(run):
    return {name: run.output(name) for name in run.globals["_exports"]}
