#!/usr/bin/env bash
# Creates policy/venv, the policy pack's own virtualenv (pulumi-policy pins protobuf 5, apart from the
# program's), from policy/requirements.txt; a second run takes a second.
set -euo pipefail
cd "$(dirname "$0")/../policy"
[ -x venv/bin/python ] || python3 -m venv venv
stamp="venv/.installed-$(sha256sum requirements.txt | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  touch "$stamp"
fi
