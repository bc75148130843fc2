#!/usr/bin/env bash
# Installs cargo-fuzz (the libFuzzer driver used by `make fuzz`) into the project-local
# root .tools (gitignored). Idempotent: returns at once when .tools/bin/cargo-fuzz exists.
# The fuzz targets themselves also need the nightly toolchain (`cargo +nightly fuzz`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"

if [ -x "$tools/bin/cargo-fuzz" ]; then
    exit 0
fi

echo "ensure-cargo-fuzz: installing cargo-fuzz into $tools" >&2
cargo install cargo-fuzz --locked --root "$tools"

if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "ensure-cargo-fuzz: cargo-fuzz missing from $tools/bin after install" >&2
    exit 1
fi
