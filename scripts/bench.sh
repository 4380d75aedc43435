#!/usr/bin/env bash
# A real-engine benchmark inside the integration tier's network namespace: bench/real_engine.py (previews,
# memory, a second up), or with `scene` first, bench/scene.py (each member's join through the signing service
# against its floor, the service's signing latency, CPU per join, the seed's signing up for up to 100 members),
# or with `agents` first, bench/agent_start.py (when a 3-node deploy's servers start). Needs what the
# integration tier needs: scripts/test.sh run once as root (venv, pinned CLI, local cloud, Kubernetes
# binaries), and the Python language host and provider plugins beside the CLI.
# The other arguments go to the script.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "error: run as root: the benchmark runs in a network namespace" >&2; exit 2; }
[ -x venv/bin/python ] || { echo "error: no venv/; run scripts/test.sh once first" >&2; exit 2; }
pulumi_bin=$(bash scripts/install-pulumi.sh)
netns=crdb-federation-tests
ip netns list | grep -qw "$netns" || ip netns add "$netns"
ip netns exec "$netns" ip link set lo up
script=bench/real_engine.py
case "${1:-}" in
  scene) script=bench/scene.py; shift ;;
  agents) script=bench/agent_start.py; shift ;;
esac
exec ip netns exec "$netns" env PATH="$pulumi_bin:$PWD/venv/bin:$PATH" CRDB_TEST_NETNS="$netns" \
  venv/bin/python "$script" "$@"
