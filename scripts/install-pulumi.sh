#!/usr/bin/env bash
# Installs the pinned Pulumi CLI into a cache outside the repo, keyed by version, and prints the
# directory to put on PATH: that one line is all it writes on stdout (every message goes to stderr), so
# `bin=$(scripts/install-pulumi.sh)` works on a fresh machine's first run. A second run finds the cache and
# takes well under a second.
#
#   eval "$(scripts/install-pulumi.sh --env)"   # PATH for this shell
#
# 1. Official release archive (CLI plus language hosts), then the pinned provider plugins through
#    `pulumi plugin install`, where the release downloads are reachable.
# 2. Otherwise (machines that reach only package registries) build the CLI from the Go module proxy:
#    pkg/v3's go.mod carries `replace` directives, so `go install pkg/v3/cmd/pulumi@v` is refused; a
#    small wrapper module that requires pkg and sdk at the pinned version and repeats pkg's remaining
#    replace builds it. That path yields the CLI only: the Python language host and the provider
#    plugins must then already be on PATH (the integration tests say so when they are not).
set -euo pipefail
cd "$(dirname "$0")/.."

PULUMI_VERSION=3.259.0
# Provider plugins matching the SDK packages pinned in requirements.txt.
PLUGINS=(openstack:5.5.1 kubernetes:4.32.0 tls:5.5.1 random:4.21.1)
# pkg/v3's own go.mod replace, repeated by the wrapper module.
CLIPBOARD_REPLACE='github.com/atotto/clipboard=github.com/tgummerer/clipboard@v0.0.0-20241001131231-d02d263e614e'

cache="${CRDB_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crdb-federation}/pulumi/v$PULUMI_VERSION"
bin="$cache/bin"
want_env=false
[ "${1:-}" = "--env" ] && want_env=true

say() { echo "$*" >&2; }
done_() {
  if $want_env; then echo "export PATH=\"$bin:\$PATH\""; else echo "$bin"; fi
  exit 0
}

# grep reads the whole answer (no -q): under pipefail, a grep that quits at the first match can kill the
# writer of a second line with SIGPIPE, and a good cache would be rebuilt.
if [ -x "$bin/pulumi" ] && "$bin/pulumi" version 2>/dev/null | grep -x "v$PULUMI_VERSION" >/dev/null; then
  done_
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.install.XXXXXX")
trap 'rm -rf "$work"' EXIT

arch=$(uname -m); case "$arch" in x86_64) arch=x64 ;; aarch64) arch=arm64 ;; esac
url="https://get.pulumi.com/releases/sdk/pulumi-v$PULUMI_VERSION-linux-$arch.tar.gz"
if curl -fsSL --connect-timeout 5 --max-time 300 -o "$work/pulumi.tgz" "$url" 2>/dev/null; then
  say "installing Pulumi v$PULUMI_VERSION from the release archive"
  tar -xzf "$work/pulumi.tgz" -C "$work"
  rm -rf "$bin" && mv "$work/pulumi" "$bin"
  for p in "${PLUGINS[@]}"; do
    "$bin/pulumi" plugin install resource "${p%%:*}" "v${p##*:}" >&2
  done
  done_
fi

command -v go >/dev/null 2>&1 || {
  echo "error: the Pulumi release archive is unreachable and Go is not installed to build the CLI (install Go 1.25+)" >&2
  exit 2
}
say "release archive unreachable: building Pulumi v$PULUMI_VERSION from the Go module proxy (a few minutes, once)"
(
  cd "$work"
  export GOFLAGS=-mod=mod GOWORK=off
  go mod init crdb-federation/pulumi-cli
  go mod edit -replace "$CLIPBOARD_REPLACE"
  go get "github.com/pulumi/pulumi/pkg/v3@v$PULUMI_VERSION" "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_VERSION"
  go build -trimpath -o "$work/out/pulumi" \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION" \
    github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
) >&2
mkdir -p "$bin"
mv "$work/out/pulumi" "$bin/pulumi"
"$bin/pulumi" version >&2
done_
