#!/usr/bin/env bash
# Installs cargo-fuzz (the libFuzzer driver used by `make fuzz`) into the project-local
# root .tools (gitignored). Idempotent: returns at once when this version is there.
# The fuzz targets themselves also need the nightly toolchain (`cargo +nightly fuzz`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"

# Pinned: upgrade on purpose, with a run of `make fuzz`.
VERSION=0.13.2

if [ -x "$tools/bin/cargo-fuzz" ] && "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -q " $VERSION"; then
    exit 0
fi

echo "ensure-cargo-fuzz: compiling cargo-fuzz $VERSION into $tools (once, a few minutes)" >&2
cargo install cargo-fuzz --version "$VERSION" --locked --root "$tools" --quiet

if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "ensure-cargo-fuzz: cargo-fuzz missing from $tools/bin after install" >&2
    exit 1
fi
