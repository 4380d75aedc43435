#!/usr/bin/env bash
# Sets up and runs `pulumi up` for one stack (default: the seed) on a local file state backend.
# Usage: scripts/up.sh [STACK] [extra pulumi up flags, e.g. --yes]
set -euo pipefail
cd "$(dirname "$0")/.."
stack="${1:-seed}"
shift || true

fail() { echo "error: $*" >&2; exit 2; }

if [ ! -f "stacks/Pulumi.$stack.yaml" ]; then
  known=$(for f in stacks/Pulumi.*.yaml; do f=${f#stacks/Pulumi.}; printf '%s ' "${f%.yaml}"; done)
  fail "no stack file stacks/Pulumi.$stack.yaml (stacks: $known)"
fi
# The pinned CLI, installed (or found in its cache) by the project itself.
pulumi_bin=$(bash scripts/install-pulumi.sh) || fail "could not install the pinned Pulumi CLI (see above)"
export PATH="$pulumi_bin:$PATH"

[ -x venv/bin/python ] || python3 -m venv venv
venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt

# Credentials: the clouds.yaml entry the stack names, where every OpenStack tool looks for it.
venv/bin/python scripts/check_credentials.py "stacks/Pulumi.$stack.yaml" || exit 2

# State: a local file backend unless the caller chose another (e.g. PULUMI_BACKEND_URL=s3://...).
if [ -z "${PULUMI_BACKEND_URL:-}" ]; then
  mkdir -p .pulumi-state
  export PULUMI_BACKEND_URL="file://$PWD/.pulumi-state"
fi
# Secrets: this stack's own (README: Secrets apart). A stack reading another one keeps all of that stack's
# outputs in its own state, decrypted where its secrets provider can: stacks must never share one. The
# stack file may name a KMS or Vault key (secretsprovider:); otherwise a passphrase of this stack alone, from
# PULUMI_CONFIG_PASSPHRASE(_FILE) or $CRDB_PASSPHRASES/<stack>.passphrase. On Pulumi Cloud too: its own
# secrets provider would let anyone with Stack Read on this stack decrypt its secrets.
provider=$(sed -n 's/^secretsprovider:[[:space:]]*//p' "stacks/Pulumi.$stack.yaml")
passphrases="${CRDB_PASSPHRASES:-$HOME/.config/crdb-federation/passphrases}"
if [ -z "$provider" ] || [ "$provider" = passphrase ]; then
  if [ -z "${PULUMI_CONFIG_PASSPHRASE:-}${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ] && [ -f "$passphrases/$stack.passphrase" ]; then
    export PULUMI_CONFIG_PASSPHRASE_FILE="$passphrases/$stack.passphrase"
  fi
  if [ -z "${PULUMI_CONFIG_PASSPHRASE:-}${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
    fail "no passphrase for stack $stack: write one of its own into $passphrases/$stack.passphrase (chmod 600) or set PULUMI_CONFIG_PASSPHRASE_FILE; it encrypts this stack's secrets (CA keys, kubeconfig), and no other stack may share it"
  fi
  provider=passphrase
fi

pulumi stack select --create --secrets-provider "$provider" --stack "$stack" --non-interactive
# Through the shim that records where this CLI process runs, so that a lock it leaves when killed can be proven
# stale by the federation tool (README: When a run is interrupted).
shim=$(venv/bin/python -m federation.locks "$(command -v pulumi)")
exec "$shim/bin/pulumi" up --stack "$stack" "$@"
