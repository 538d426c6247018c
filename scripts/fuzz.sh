#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each, starting
# from the checked-in seed corpora (fuzz/corpus/<target>/), which it grows
# in a scratch copy (the checked-in corpus is not modified).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60, all)
#
# Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly --profile minimal
#   cargo install cargo-fuzz
# Crashes are left in fuzz/artifacts/<target>/; the script exits non-zero
# if any target found one.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

secs=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(handshake transmission roundtrip)
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: no nightly toolchain (rustup toolchain install nightly --profile minimal)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 2
fi

cargo +nightly fuzz build
status=0
for t in "${targets[@]}"; do
    work=$(mktemp -d)
    cp -r "corpus/$t/." "$work/"
    echo "fuzz: $t for ${secs}s" >&2
    start=$(date +%s)
    if ! cargo +nightly fuzz run "$t" "$work" -- -max_total_time="$secs" -print_final_stats=1; then
        status=1
    fi
    echo "fuzz: $t ran $(($(date +%s) - start))s, corpus $(ls "$work" | wc -l) files" >&2
    rm -rf "$work"
done
exit $status
