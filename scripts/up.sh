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
# The program's packages and the tool's (it prepares the run and explains a failure, below).
venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-tool.txt

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

# What every run starts with (README: When a run is interrupted): a lock that a gone run of this machine left is
# released, an interrupted run's leftovers are cleared, servers in ERROR healed. Credentials the backend refuses
# stop here, in one line, before anything is made.
venv/bin/python -m federation prepare "$stack" || exit 2
pulumi stack select --create --secrets-provider "$provider" --stack "$stack" --non-interactive
# Through the shim that records where this CLI process runs, so that a lock it leaves when killed can be proven
# stale by the federation tool. A failure the tool knows (a backend or cloud API that stopped answering, a quota)
# is then said in its words, read from the CLI's error stream and its engine event log (the only record of the
# diagnostics that does not take the terminal from the CLI; `--event-log` exists with PULUMI_DEBUG_COMMANDS
# alone, pulumi v3.259.0 cmd/pulumi/operations/up.go). A caller's own --event-log is the one read.
shim=$(venv/bin/python -m federation.locks "$(command -v pulumi)")
events="" previous=""
for arg in "$@"; do
  case "$arg" in --event-log=*) events=${arg#--event-log=} ;; esac
  [ "$previous" = --event-log ] && events=$arg
  previous=$arg
done
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
log_flags=()
if [ -z "$events" ]; then
  events="$scratch/events.jsonl"
  log_flags=(--event-log "$events")
fi
status=0
# stdout stays where it was (fd 3); stderr goes through tee, which the pipeline waits for (pipefail: the CLI's status).
{ PULUMI_DEBUG_COMMANDS=true "$shim/bin/pulumi" up --stack "$stack" ${log_flags[@]+"${log_flags[@]}"} "$@" \
    2>&1 1>&3 3>&- | tee "$scratch/errors" >&2; } 3>&1 || status=$?
if [ "$status" -ne 0 ]; then
  venv/bin/python -m federation explain "$stack" "$scratch/errors" --events "$events" || true
fi
exit "$status"
