"""Fails clearly when the clouds.yaml entry a stack names cannot be found where OpenStack tools look."""

import os
import sys
from pathlib import Path

import yaml


def clouds_yaml_paths() -> list[Path]:
    explicit = os.environ.get("OS_CLIENT_CONFIG_FILE")
    if explicit:
        return [Path(explicit)]
    return [Path.cwd() / "clouds.yaml", Path.home() / ".config/openstack/clouds.yaml", Path("/etc/openstack/clouds.yaml")]


def main(stack_file: str) -> int:
    config = (yaml.safe_load(Path(stack_file).read_text()) or {}).get("config", {})
    if config.get("crdb-federation:kubernetesMode") == "existing":
        return 0
    cloud = config.get("crdb-federation:cloud")
    if not cloud:
        print(f"error: {stack_file} sets no crdb-federation:cloud (the clouds.yaml entry)", file=sys.stderr)
        return 2
    searched = clouds_yaml_paths()
    for path in searched:
        if path.is_file():
            clouds = (yaml.safe_load(path.read_text()) or {}).get("clouds", {})
            if cloud in clouds:
                return 0
    where = ", ".join(str(p) for p in searched)
    print(f"error: no OpenStack credentials for cloud '{cloud}' (crdb-federation:cloud in {stack_file}): "
          f"add a '{cloud}' entry to clouds.yaml in one of: {where}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
