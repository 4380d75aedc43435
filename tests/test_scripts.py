"""The README's main command fails clearly, before touching anything, when the CLI or credentials are missing."""

import os
import subprocess
import sys

from tests.harness import ROOT
from tests.validators import assert_shellcheck_clean


def test_scripts_pass_shellcheck():
    for script in ("scripts/up.sh", "scripts/test.sh", "scripts/bench.sh", ".ci/run", "scripts/install-pulumi.sh",
                   "tests/integration/localcloud/localcloud.sh"):
        assert_shellcheck_clean((ROOT / script).read_text(), "bash")


def test_up_without_a_way_to_install_the_cli_says_so(tmp_path):
    # No cached CLI (a new HOME), no release download (no network here) and no Go on PATH.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["bash", str(ROOT / "scripts/up.sh"), "seed"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "Go is not installed to build the CLI" in result.stderr
    assert "could not install the pinned Pulumi CLI" in result.stderr


def test_up_with_unknown_stack_lists_the_stacks(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "scripts/up.sh"), "atlantis"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 2 and "no stack file" in result.stderr and "vexxhost" in result.stderr


def run_check(tmp_path, clouds_yaml=None):
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("OS_CLIENT_CONFIG_FILE", None)
    if clouds_yaml is not None:
        (tmp_path / "clouds.yaml").write_text(clouds_yaml)
        env["OS_CLIENT_CONFIG_FILE"] = str(tmp_path / "clouds.yaml")
    return subprocess.run([sys.executable, str(ROOT / "scripts/check_credentials.py"),
                           str(ROOT / "stacks/Pulumi.vexxhost.yaml")], env=env, capture_output=True, text=True,
                          cwd=tmp_path)


def test_missing_credentials_name_the_cloud_and_where_to_put_them(tmp_path):
    result = run_check(tmp_path)
    assert result.returncode == 2
    assert "no OpenStack credentials for cloud 'vexxhost'" in result.stderr and "clouds.yaml" in result.stderr
    other = run_check(tmp_path, "clouds:\n  otc:\n    auth: {}\n")
    assert other.returncode == 2


def test_credentials_found_in_clouds_yaml(tmp_path):
    assert run_check(tmp_path, "clouds:\n  vexxhost:\n    auth: {}\n").returncode == 0
