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
# Pinned: upgrade on purpose, with a run of `make fuzz`.
cargo install cargo-fuzz --version 0.13.2 --locked --root "$tools"

if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "ensure-cargo-fuzz: cargo-fuzz missing from $tools/bin after install" >&2
    exit 1
fi
