#!/usr/bin/env bash
# lm-evaluation-harness against cordial, end to end, by hand (not CI: lm-eval pulls torch).
#
#   bash scripts/lm-eval/run.sh
#
# 1. A venv under ${XDG_CACHE_HOME:-$HOME/.cache}/cordial/lm-eval-venv with lm-eval (+ transformers
#    and gguf, for the tokenizer), made once and reused while its pinned requirement matches.
#    lm-eval 0.4.13 itself no longer depends on torch, and nothing here needs it (~0.8 GB).
# 2. The release server ($CORDIAL_BIN, or this checkout's release build) on a free loopback port.
# 3. A Hugging Face tokenizer built from the model's own GGUF (export_tokenizer.py), so that
#    lm-eval can count context tokens without reaching any hub.
# 4. `lm_eval --model local-completions` with tokenized_requests=False on the local task
#    tasks/cordial_tiny_ll (multiple choice = log-likelihoods: echo + logprobs requests).
# 5. compare.py: the same items scored with forced_output_tokens + include_output_logprobs.
# The last line is `RESULT match` or `RESULT MISMATCH` (exit status 0 / 1).
set -euo pipefail
if [[ -n "${CORDIAL_BIN:-}" && "$CORDIAL_BIN" != /* ]]; then
    CORDIAL_BIN="$PWD/$CORDIAL_BIN"
fi
cd "$(dirname "$0")"
HERE=$PWD
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cordial"
VENV="$CACHE/lm-eval-venv"
REQ="lm-eval[api]==0.4.13 transformers==5.24.0 gguf==0.19.0"
MODEL_NAME=cordial-lm-eval
log() { echo "[lm-eval] $*" >&2; }

if [[ ! -x "$VENV/bin/lm_eval" || "$(cat "$VENV/.cordial-req" 2>/dev/null)" != "$REQ" ]]; then
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
TOKDIR="$CACHE/lm-eval-tokenizer"
"$VENV/bin/python" "$HERE/export_tokenizer.py" "$GGUF" "$TOKDIR"

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE_URL="http://127.0.0.1:$PORT"
SERVER_LOG=$(mktemp "${TMPDIR:-/tmp}/cordial-lm-eval-server.XXXXXX")
"$BIN" serve --host 127.0.0.1 --port "$PORT" --served-model-name "$MODEL_NAME" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
OUT=$(mktemp -d "${TMPDIR:-/tmp}/cordial-lm-eval-out.XXXXXX")
cleanup() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    rm -f "$SERVER_LOG"
}
trap cleanup EXIT
for _ in $(seq 1 300); do
    curl -sf "$BASE_URL/health" >/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SERVER_LOG" >&2; exit 1; }
    sleep 0.5
done
log "server up at $BASE_URL; results in $OUT"

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
START=$(date +%s)
(cd "$HERE/tasks" && "$VENV/bin/lm_eval" --model local-completions \
    --model_args "model=$MODEL_NAME,base_url=$BASE_URL/v1/completions,tokenized_requests=False,tokenizer_backend=huggingface,tokenizer=$TOKDIR,num_concurrent=1,max_retries=1" \
    --tasks cordial_tiny_ll --include_path "$HERE/tasks" --batch_size 1 \
    --output_path "$OUT" --log_samples)
log "lm_eval took $(( $(date +%s) - START )) s"
"$VENV/bin/python" "$HERE/compare.py" --base-url "$BASE_URL" --model "$MODEL_NAME" \
    --tokenizer "$TOKDIR" --output "$OUT"
