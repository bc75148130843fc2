#!/usr/bin/env bash
# Installs what `make bench` needs beyond the Rust toolchain and python3: wrk (the HTTP
# load generator, with Lua scripting) from Debian's packages. Idempotent: returns at
# once when wrk is on PATH. Needs root (or sudo) for apt-get.
set -euo pipefail

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v zip >/dev/null 2>&1 || missing+=(zip)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
else
    echo "ensure-bench-tools: need ${missing[*]}; install them (e.g. apt-get install ${missing[*]}) as root" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-bench-tools: need ${missing[*]} and there is no apt-get; install them by hand" >&2
    exit 1
fi

echo "ensure-bench-tools: installing ${missing[*]} with apt-get" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

for tool in "${missing[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "ensure-bench-tools: $tool still missing after apt-get install" >&2
        exit 1
    fi
done
