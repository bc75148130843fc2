#!/usr/bin/env sh
# Installs moto_server (a local DynamoDB stand-in for the integration tests) into the
# project-local virtualenv .venv. Idempotent: returns at once when already installed.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"

if [ -x "$venv/bin/moto_server" ]; then
    exit 0
fi

python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5'

if [ ! -x "$venv/bin/moto_server" ]; then
    echo "ensure-moto: moto_server missing from $venv/bin after install" >&2
    exit 1
fi
