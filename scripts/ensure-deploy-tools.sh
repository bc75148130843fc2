#!/usr/bin/env bash
# Installs the deployment tools into the project-local virtualenv .venv (shared with
# scripts/ensure-moto.sh, which only adds to it): cargo-lambda (brings zig, the
# cross-linker for arm64), aws-sam-cli (sam) and cfn-lint; and the Rust target
# aarch64-unknown-linux-gnu. Idempotent: returns at once when everything is there.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
target=aarch64-unknown-linux-gnu
# Pinned in one file (upgrade on purpose, with a run of `make validate build`).
requirements="$root/scripts/deploy-tools-requirements.txt"
mapfile -t pins < <(grep -v '^[[:space:]]*\(#\|$\)' "$requirements")

have_pins() {
    local frozen
    frozen=$("$venv/bin/python" -m pip freeze 2>/dev/null) || return 1
    for pin in "${pins[@]}"; do
        grep -qix "$pin" <<<"$frozen" || return 1
    done
}
have_tools() {
    have_pins && [ -x "$venv/bin/cargo-lambda" ] && [ -x "$venv/bin/sam" ] && [ -x "$venv/bin/cfn-lint" ] \
        && { [ -x "$venv/bin/python-zig" ] || [ -x "$venv/bin/zig" ] \
             || "$venv/bin/python" -c 'import ziglang' 2>/dev/null; }
}
have_target() {
    rustup target list --installed 2>/dev/null | grep -qx "$target"
}

if ! have_tools; then
    python=${PYTHON:-python3}
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    echo "ensure-deploy-tools: installing ${pins[*]} into $venv (once)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    for tool in cargo-lambda sam cfn-lint; do
        if [ ! -x "$venv/bin/$tool" ]; then
            echo "ensure-deploy-tools: $tool missing from $venv/bin after install" >&2
            exit 1
        fi
    done
fi

if ! have_target; then
    # rustup's targets belong to the toolchain, not to this project: this adds
    # $target to the default toolchain in ~/.rustup (about 200 MB), for every project.
    echo "ensure-deploy-tools: adding the Rust target $target to your rustup toolchain (~/.rustup, global)" >&2
    rustup target add "$target"
fi
