#!/usr/bin/env bash
# Short libFuzzer runs of every cargo-fuzz target in fuzz/ (`make fuzz`): signed_payload
# (arbitrary signed bodies through the real handler), split (split_reply) and format
# (Markdown to WhatsApp markup).
#
# FUZZ_SECONDS (default 30) bounds each target's run; run longer with
# `make fuzz FUZZ_SECONDS=3600`. Exits non-zero if any target crashes (a panic, a
# failed assertion, a sanitizer report, a timeout or running out of memory); libFuzzer
# leaves the input in fuzz/artifacts/<target>/, to replay with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`.
#
# Needs cargo-fuzz (installed into .tools by scripts/ensure-cargo-fuzz.sh) and a
# nightly toolchain for the sanitizer flags: `cargo +nightly` when rustup has one,
# otherwise the default toolchain with RUSTC_BOOTSTRAP=1. The first build compiles the
# whole crate again with AddressSanitizer into fuzz/target (several minutes).
# Inputs libFuzzer finds go to fuzz/corpus-work/<target>/ (gitignored); the seeds are only
# read: tests/fixtures/ (Meta's webhook shapes, kept there once) for signed_payload,
# fuzz/corpus/<target>/ for the others.
#
# FUZZ_SANITIZER (default address) and FUZZ_DEV=1 (an unoptimised build) trade depth for
# build time: `make test` runs a short smoke with FUZZ_SANITIZER=none FUZZ_DEV=1, which
# still finds panics (Rust is memory-safe without the sanitizer), in a fraction of the
# build time; `make fuzz` keeps AddressSanitizer and optimisation for long runs.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${FUZZ_SECONDS:-30}
build_flags=(--sanitizer "${FUZZ_SANITIZER:-address}")
if [ "${FUZZ_DEV:-0}" = 1 ]; then
    build_flags+=(--dev)
fi
targets=(signed_payload split format)

bash "$root/scripts/ensure-cargo-fuzz.sh"
export PATH="$root/.tools/bin:$PATH"

if rustup run nightly rustc --version >/dev/null 2>&1; then
    cargo=(cargo +nightly)
else
    echo "fuzz-smoke: no nightly toolchain; using $(rustc --version) with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
    cargo=(cargo)
fi

# libFuzzer's progress lines (thousands) go to a log per target; the output keeps the
# final stats, and the log's tail when a target crashes.
logs="$root/target/fuzz-logs"
mkdir -p "$logs"
cd "$root/fuzz"
failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus-work/$target"
    log="$logs/$target.log"
    echo "fuzz-smoke: $target for ${seconds}s (build and progress: target/fuzz-logs/$target.log)" >&2
    seeds="corpus/$target"
    [ "$target" = signed_payload ] && seeds="../tests/fixtures"
    if "${cargo[@]}" fuzz run "${build_flags[@]}" "$target" "corpus-work/$target" "$seeds" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1; then
        grep -E '^(stat::|Done )' "$log" | sed "s/^/  $target: /" >&2 || true
    else
        failed+=("$target")
        echo "fuzz-smoke: $target failed; the end of $log:" >&2
        tail -n 60 "$log" >&2
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz-smoke: crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz-smoke: no crash in ${targets[*]} (${seconds}s each)" >&2
