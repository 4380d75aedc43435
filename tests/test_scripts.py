"""The README's main command fails clearly, before touching anything, when the CLI or credentials are missing."""

import os
import subprocess

import pytest
import sys

from tests.harness import ROOT
from tests.validators import assert_shellcheck_clean


def test_scripts_pass_shellcheck():
    for script in ("scripts/up.sh", "scripts/test.sh", "scripts/bench.sh", ".ci/run", "scripts/install-pulumi.sh", "scripts/install-kubernetes.sh",
                   "scripts/install-objectstore.sh",
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


def test_only_the_first_clouds_yaml_found_is_read_as_the_provider_reads_it(tmp_path):
    """gophercloud/utils v2 clientconfig FindAndReadCloudsYAML returns the first file found (the working directory's
    before the home directory's): an entry in a later one is never seen by `pulumi up`."""
    (tmp_path / "clouds.yaml").write_text("clouds:\n  otc:\n    auth: {}\n")
    result = run_check(tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path / 'clouds.yaml'}, the clouds.yaml the openstack provider reads, has no 'vexxhost'" in result.stderr


# A stand-in for `go` that builds nothing: it writes each binary a build would make (a script answering
# `version`/`--version`) and, like the real go command, chatters on stdout, so a message that leaks from an
# installer onto stdout shows up in what the caller would put on PATH.
FAKE_GO = r"""#!/bin/bash
[ "$1 $2" = "env GOMODCACHE" ] && { echo "$FAKE_MODCACHE"; exit 0; }
if [ "$1 $2" = "mod download" ]; then  # like go: JSON on stdout, nothing else
  mkdir -p "$FAKE_MODCACHE/cache/download/k8s.io/kubernetes/@v"
  printf 'replace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n)\n' \
    > "$FAKE_MODCACHE/cache/download/k8s.io/kubernetes/@v/v1.35.4.mod"
  for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
               pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    mkdir -p "$FAKE_MODCACHE/kwok/kustomize/stage/${stage%/*}"
    echo "kind: Stage" > "$FAKE_MODCACHE/kwok/kustomize/stage/$stage.yaml"
  done
  printf '{\n\t"Dir": "%s",\n}\n' "$FAKE_MODCACHE/kwok"
  exit 0
fi
echo "go: chatter on stdout from: go $*"
binary() { printf '#!/bin/sh\necho v3.259.0\necho Kubernetes v1.35.4\n' > "$1"; chmod +x "$1"; }
if [ "$1" = build ]; then
  shift; out=""
  while [ $# -gt 0 ]; do
    case "$1" in
      -o) out=$2; shift ;;
      -trimpath|-ldflags) [ "$1" = -ldflags ] && shift ;;
      *) if [ "${out%/}" != "$out" ]; then mkdir -p "$out"; binary "$out/${1##*/}"; fi ;;
    esac
    shift
  done
  [ "${out%/}" = "$out" ] && { mkdir -p "$(dirname "$out")"; binary "$out"; }
fi
if [ "$1" = install ]; then
  module=${!#}; module=${module%@*}; binary "$GOBIN/${module##*/}"
fi
exit 0
"""


def cold_install(tmp_path, script: str):
    """Runs an installer on an empty tools cache with no network (curl fails) and the fake go."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(parents=True)
    for name, text in (("go", FAKE_GO), ("curl", "#!/bin/sh\nexit 6\n"), ("gcc", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    cache = tmp_path / "cache"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "CRDB_TOOLS_CACHE": str(cache),
           "FAKE_MODCACHE": str(tmp_path / "modcache")}
    return [subprocess.run(["bash", str(ROOT / script)], env=env, capture_output=True, text=True)
            for _ in range(2)], cache


def test_installers_print_only_their_bin_directory_on_a_cold_cache(tmp_path):
    # A first run on a fresh machine must give the caller exactly what it puts on PATH (test.sh and up.sh do
    # `bin=$(install...)`); a message on stdout once made every integration test skip on a new machine.
    for script, expected in (("scripts/install-pulumi.sh", "pulumi/v3.259.0/bin"),
                             ("scripts/install-kubernetes.sh", "kubernetes/v1.35.4-kine0.17.5-kwok0.8.0/bin")):
        (first, second), cache = cold_install(tmp_path / script.split("/")[-1], script)
        for run in (first, second):
            assert run.returncode == 0, run.stderr
            assert run.stdout == f"{cache}/{expected}\n", (script, run.stdout)
        assert "go: chatter" in first.stderr and "go: chatter" not in second.stderr, script


def test_up_refuses_a_stack_without_a_passphrase_of_its_own(tmp_path):
    """Stacks that share a secrets provider hold each other's secrets (a StackReference keeps them decrypted):
    up.sh wants this stack's own passphrase, and names where to put it."""
    cache = os.environ.get("CRDB_TOOLS_CACHE") or os.path.expanduser("~/.cache/crdb-federation")
    if not os.path.exists(f"{cache}/pulumi/v3.259.0/bin/pulumi"):
        pytest.skip("needs the pinned Pulumi CLI in the tools cache (scripts/test.sh installs it first)")
    (tmp_path / "clouds.yaml").write_text("clouds:\n  seed:\n    auth: {}\n")
    env = {"PATH": f"{ROOT / 'venv' / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "CRDB_TOOLS_CACHE": cache,
           "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml"), "PULUMI_BACKEND_URL": f"file://{tmp_path}"}
    result = subprocess.run(["bash", str(ROOT / "scripts/up.sh"), "seed"], env=env, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert (f"no passphrase for stack seed: write one of its own into {tmp_path}/.config/crdb-federation/"
            "passphrases/seed.passphrase") in result.stderr
