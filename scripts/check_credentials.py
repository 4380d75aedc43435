"""Fails clearly when the clouds.yaml entry a stack names cannot be found where OpenStack tools look."""

import os
import pwd
import sys
from pathlib import Path

import yaml


def clouds_yaml_paths() -> list[Path]:
    """Where the openstack provider looks, in its order (gophercloud/utils v2 openstack/clientconfig/utils.go
    FindAndReadCloudsYAML): OS_CLIENT_CONFIG_FILE if that file exists, then clouds.yaml and then clouds.yml in the
    working directory, the user's ~/.config/openstack and /etc/openstack (FindAndReadYAML). Its `~` is the
    account's home directory (Go's user.Current().HomeDir, from the password database), not $HOME."""
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    searched = [Path(os.environ["OS_CLIENT_CONFIG_FILE"])] if os.environ.get("OS_CLIENT_CONFIG_FILE") else []
    for name in ("clouds.yaml", "clouds.yml"):
        searched += [Path.cwd() / name, home / ".config/openstack" / name, Path("/etc/openstack") / name]
    return searched


def main(stack_file: str) -> int:
    config = (yaml.safe_load(Path(stack_file).read_text()) or {}).get("config", {})
    if config.get("crdb-federation:kubernetesMode") == "existing":
        return 0
    cloud = config.get("crdb-federation:cloud")
    if not cloud:
        print(f"error: {stack_file} sets no crdb-federation:cloud (the clouds.yaml entry)", file=sys.stderr)
        return 2
    searched = clouds_yaml_paths()
    found = next((path for path in searched if path.is_file()), None)
    if found is None:
        where = ", ".join(str(p) for p in searched)
        print(f"error: no OpenStack credentials for cloud '{cloud}' (crdb-federation:cloud in {stack_file}): "
              f"no clouds.yaml in any of: {where}", file=sys.stderr)
        return 2
    # The provider reads the first file it finds, and only that one.
    if cloud not in ((yaml.safe_load(found.read_text()) or {}).get("clouds") or {}):
        print(f"error: no OpenStack credentials for cloud '{cloud}' (crdb-federation:cloud in {stack_file}): "
              f"{found}, the clouds.yaml the openstack provider reads, has no '{cloud}' entry", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
