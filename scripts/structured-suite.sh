#!/usr/bin/env bash
# The whole structured-output suite (50 schemas and regexes) on the real model, then compile and
# per-token mask times replayed from its outputs. CI runs every third case of the suite only.
# Usage: bash scripts/structured-suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${TMPDIR:-/tmp}/cordial-structured-outputs.json"
CORDIAL_STRUCTURED_SUITE=full CORDIAL_STRUCTURED_OUT="$out" \
  cargo test -p cordial-server --test blackbox_format the_schema_suite -- --nocapture 2>&1 |
  grep -E 'structured suite|^  |test result'
cargo run -q --release -p cordial-grammar --example timing -- \
  crates/server/tests/fixtures/structured-suite.json "$out"
