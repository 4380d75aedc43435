#!/usr/bin/env bash
# Builds the Kubernetes binaries of the integration tier's k3s stand-in (tests/integration/standin) from the
# Go module proxy into a cache outside the repo, keyed by version, and prints the directory that holds them
# (messages go to stderr, so `bin=$(scripts/install-kubernetes.sh)` is safe on a first run). A second run
# finds the cache and takes well under a second.
#
#   kube-apiserver, kube-controller-manager, kube-scheduler  k8s.io/kubernetes: the stand-in's control plane
#   kubelet   only parses its flags and drop-ins here: the judge of what the user data gives k3s's kubelet
#   kubectl   to look at a stand-in's objects by hand (README: Testing)
#   kine      github.com/k3s-io/kine, k3s's own datastore shim, with SQLite
#   kwok      sigs.k8s.io/kwok: simulated kubelets (nodes and pods; containers never run)
#
# k8s.io/kubernetes' go.mod replaces its staging modules (k8s.io/api, ...) with ./staging paths, so
# `go install k8s.io/kubernetes/cmd/...@v` is refused; a wrapper module requires it and points each staging
# module at its published v0.<minor>.<patch> instead.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.35.4
KINE_VERSION=0.17.5
KWOK_VERSION=0.8.0
COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

cache="${CRDB_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/crdb-federation}/kubernetes/v$KUBERNETES_VERSION-kine$KINE_VERSION-kwok$KWOK_VERSION"
bin="$cache/bin"
say() { echo "$*" >&2; }

complete() {
  for name in "${COMMANDS[@]}" kine kwok; do [ -x "$bin/$name" ] || return 1; done
  [ -s "$bin/kwok-stages.yaml" ]
}
if complete; then echo "$bin"; exit 0; fi

command -v go >/dev/null 2>&1 || { say "error: Go is needed to build the Kubernetes stand-in's binaries (install Go 1.26+)"; exit 2; }
command -v gcc >/dev/null 2>&1 || { say "error: gcc is needed to build kine with SQLite (apt-get install gcc)"; exit 2; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/.install.XXXXXX")
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod GOWORK=off

say "building Kubernetes v$KUBERNETES_VERSION (${COMMANDS[*]}), kine v$KINE_VERSION and kwok v$KWOK_VERSION from the Go module proxy (several minutes, once)"
(
  cd "$work"
  go mod init crdb-federation/kubernetes-standin
  go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" >/dev/null
  upstream=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$KUBERNETES_VERSION.mod
  # Every module the upstream go.mod replaces with a ./staging path, at its published version.
  awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$upstream" | while read -r module; do
    go mod edit -replace "$module=$module@v0.${KUBERNETES_VERSION#1.}"
  done
  go get "k8s.io/kubernetes@v$KUBERNETES_VERSION"
  minor=${KUBERNETES_VERSION#1.}; minor=${minor%%.*}
  version_flags="-X k8s.io/component-base/version.gitVersion=v$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1"
  version_flags+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  mkdir -p out
  CGO_ENABLED=0 go build -trimpath -o out/ -ldflags "-s -w $version_flags" "${COMMANDS[@]/#/k8s.io/kubernetes/cmd/}"
  # Each in a module of its own: their dependency versions differ from Kubernetes'.
  GOBIN="$work/out" go install -trimpath -ldflags "-s -w" "github.com/k3s-io/kine@v$KINE_VERSION"
  GOBIN="$work/out" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
) >&2
# kwok ships its lifecycle stages as YAML beside its code (kwokctl embeds them; kwok needs them as --config):
# nodes become Ready and renew their leases, pods become Ready, Job pods complete, deleted pods go.
kwok_dir=$(go mod download -json "sigs.k8s.io/kwok@v$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
             pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
  cat "$kwok_dir/kustomize/stage/$stage.yaml"
  echo "---"
done > "$work/out/kwok-stages.yaml"
mkdir -p "$bin"
for name in "${COMMANDS[@]}" kine kwok kwok-stages.yaml; do mv "$work/out/$name" "$bin/$name"; done
"$bin/kube-apiserver" --version >&2
echo "$bin"
