#!/usr/bin/env sh
# Installs moto_server (a local DynamoDB stand-in for the integration tests) into the
# project-local virtualenv .venv. Idempotent: returns at once when this version is there.
# Pinned, its dependencies too (scripts/moto-constraints.txt): upgrade on purpose.
set -eu

VERSION=5.2.5
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"

if [ -x "$venv/bin/moto_server" ] \
    && "$venv/bin/python" -m pip show moto 2>/dev/null | grep -qx "Version: $VERSION"; then
    exit 0
fi

python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    echo "ensure-moto: creating the virtualenv $venv (needs python3-venv)" >&2
    "$python" -m venv "$venv"
fi
echo "ensure-moto: installing moto[server]==$VERSION into $venv (once; about 300 MB)" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$root/scripts/moto-constraints.txt" "moto[server]==$VERSION"

if [ ! -x "$venv/bin/moto_server" ]; then
    echo "ensure-moto: moto_server missing from $venv/bin after install" >&2
    exit 1
fi
