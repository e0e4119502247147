#!/usr/bin/env bash
# Fuzzes request parsing + validation (fuzz/fuzz_targets/parse_validate.rs) with cargo-fuzz
# (libFuzzer, AddressSanitizer; needs the nightly toolchain) for a bounded time.
#   bash scripts/fuzz.sh [SECONDS]        # default 60; CI runs it with 60
# Starts from the seed corpus in fuzz/corpus/parse_validate (copied: new inputs are not kept)
# with a dictionary of the request's field names. A crash fails the run; its input is written
# to fuzz/artifacts/parse_validate/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
# Its own target dir: sanitizer flags would otherwise rebuild the main one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cordial/target}/fuzz"
corpus="$(mktemp -d)"
trap 'rm -rf "$corpus"' EXIT
cp fuzz/corpus/parse_validate/* "$corpus"/
cargo +nightly fuzz run parse_validate "$corpus" -- \
    -max_total_time="$secs" -dict=fuzz/parse_validate.dict -max_len=4096 \
    -rss_limit_mb=4096 -print_final_stats=1
