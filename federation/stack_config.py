"""A stack's configuration as the Pulumi CLI resolves it, without the CLI.

The engine (pkg/workspace/config.go, v3.259.0) applies three rules to the keys `Pulumi.yaml` declares
before any program runs: a declared key without a default is required on every stack, a declared
default reaches every stack that does not set the key, and a set value must have the declared type.
The unit tier and preflight read stacks through this module; the integration tier checks it against
`pulumi config --json` and the CLI's own error for every stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


class StackConfigError(ValueError):
    """The CLI would refuse this stack before running the program; the message is the CLI's."""


def declared_config(project_file: Path = ROOT / "Pulumi.yaml") -> tuple[str, dict[str, dict[str, Any]]]:
    project = yaml.safe_load(project_file.read_text())
    return project["name"], project.get("config") or {}


def stack_file(stack: str, root: Path = ROOT) -> Path:
    return root / "stacks" / f"Pulumi.{stack}.yaml"


def _missing_keys_error(stack: str, keys: list[str]) -> StackConfigError:
    if len(keys) == 1:
        return StackConfigError(f"Stack '{stack}' is missing configuration value '{keys[0]}'")
    keys = sorted(keys)
    listed = ", ".join(f"'{k}'" for k in keys[:-2])
    listed = (listed + ", " if listed else "") + f"'{keys[-2]}' and '{keys[-1]}'"
    return StackConfigError(f"Stack '{stack}' is missing configuration values {listed}")


def _has_type(value: Any, declared: dict[str, Any]) -> bool:
    kind = declared.get("type")
    if kind == "string":
        return not isinstance(value, (list, dict))
    if kind == "integer":
        try:
            int(str(value), 10)
            return not isinstance(value, bool)
        except ValueError:
            return False
    if kind == "boolean":
        return str(value).lower() in ("true", "false")
    if kind == "array":
        return isinstance(value, list) and all(_has_type(item, declared.get("items") or {}) for item in value)
    return True


def _type_name(declared: dict[str, Any]) -> str:
    if declared.get("type") == "array":
        return f"List<{_type_name(declared.get('items') or {})}>"
    return {"string": "string", "integer": "integer", "boolean": "boolean"}.get(declared.get("type"), declared.get("type"))


def resolve(stack: str, root: Path = ROOT) -> dict[str, Any]:
    """Every `<project>:` key of the stack, with the project defaults applied, keyed without the namespace.

    Values keep their YAML types (lists stay lists); encrypted values stay `{"secure": ...}`. Raises
    StackConfigError with the CLI's message for a missing required key or a value of the wrong type."""
    name, declared = declared_config(root / "Pulumi.yaml")
    path = stack_file(stack, root)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise StackConfigError(f"{path.name} is not YAML: {' '.join(str(error).split())}") from None
    if not isinstance(document, dict) or not isinstance(document.get("config") or {}, dict):
        raise StackConfigError(f"{path.name}: expected a mapping whose config: is a mapping of "
                               f"{name}:<key>: <value>, found {type(document).__name__}"
                               + ("" if not isinstance(document, dict) else
                                  f" with config: a {type(document['config']).__name__}"))
    values = {key.split(":", 1)[1]: value for key, value in (document.get("config") or {}).items()
              if key.startswith(f"{name}:")}
    missing = [key for key, spec in declared.items() if "default" not in spec and key not in values]
    if missing:
        raise _missing_keys_error(stack, missing)
    for key in sorted(declared):
        spec = declared[key]
        value = values.get(key)
        if key in values and not (isinstance(value, dict) and "secure" in value) and not _has_type(value, spec):
            raise StackConfigError(
                f"Stack '{stack}' with configuration key '{key}' must be of type '{_type_name(spec)}'")
    return {**{key: spec["default"] for key, spec in declared.items() if "default" in spec}, **values}


def as_config_strings(values: dict[str, Any]) -> dict[str, str]:
    """The values as the engine hands them to a program: strings, with lists and maps as JSON."""
    def text(value: Any) -> str:
        if isinstance(value, (list, dict)):
            return json.dumps(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return {key: text(value) for key, value in values.items()}
