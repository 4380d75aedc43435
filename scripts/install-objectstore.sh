#!/usr/bin/env bash
# Builds the S3 object store of the shared-state-backend tests (tests/integration/objectstore.py) from the
# Go module proxy into a cache outside the repo, keyed by version, and prints the directory that holds it
# (messages go to stderr, so `bin=$(scripts/install-objectstore.sh)` is safe on a first run). A second run
# finds the cache and takes well under a second.
#
#   versitygw  github.com/versity/versitygw (Apache-2.0): an S3 gateway over a plain directory (its posix
#              backend), with users in a JSON file (its internal IAM) and bucket policies whose Allow and
#              Deny statements name users by access key and objects by key prefix
#              (auth/bucket_policy.go, auth/access-control.go).
#
# Its go.mod has no `replace`, so `go install …@v` builds it directly. MinIO and Garage are AGPL: not used.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSITYGW_VERSION=1.8.0

cache="${CRDB_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crdb-federation}/objectstore/versitygw-v$VERSITYGW_VERSION"
bin="$cache/bin"
say() { echo "$*" >&2; }

# grep reads the whole answer (no -q): under pipefail a grep that quits early can SIGPIPE the writer.
if [ -x "$bin/versitygw" ] &&
   "$bin/versitygw" --version 2>/dev/null | grep -x "Version  : v$VERSITYGW_VERSION" >/dev/null; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null 2>&1 || { say "error: Go is needed to build the object store (install Go 1.25+)"; exit 2; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/.install.XXXXXX")
trap 'rm -rf "$work"' EXIT

say "building versitygw v$VERSITYGW_VERSION from the Go module proxy (a few minutes, once)"
# main.Version is what `versitygw --version` prints (its Makefile sets it the same way); the check above reads it.
GOBIN="$work/out" GOFLAGS=-mod=mod GOWORK=off CGO_ENABLED=0 \
  go install -trimpath -ldflags "-s -w -X main.Version=v$VERSITYGW_VERSION" \
  "github.com/versity/versitygw/cmd/versitygw@v$VERSITYGW_VERSION" >&2
mkdir -p "$bin"
mv "$work/out/versitygw" "$bin/versitygw"
"$bin/versitygw" --version >&2
echo "$bin"
