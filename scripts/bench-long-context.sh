#!/usr/bin/env bash
# bench-long-context.sh - long contexts, cordial next to llama-server, one server at a time
# on the same machine in the same minutes (rounds alternate the servers).
#
# Usage: scripts/bench-long-context.sh smollm2|gemma3 [ROUNDS]
#
#   smollm2: SmolLM2-135M-Instruct Q4_1 at -c 8192: a 7,264-token prompt (prefill rate, then
#            decode at that depth) and a 32-token prompt (decode at a short context);
#            cordial with --kv-cache-dtype f16 and q8_0, llama-server with -fa off, -fa on
#            and -fa on -ctk q8_0 -ctv q8_0.
#   gemma3:  Gemma 3 270M Q4_K_M at -c 32768: a 16,384-token prompt; cordial f16 (and its
#            KV memory from /metrics while the request runs), llama-server -fa off / on.
#
# Environment: CORDIAL (binary, default target/release/cordial), LLAMA_SERVER (llama.cpp's
# llama-server; default: the one on PATH), THREADS (2), OUT (a results file, default a fresh
# temp file), MAX_TOKENS (64), MEMBW (a read-bandwidth probe run as `$MEMBW 1 10 2`, default
# /tmp/membw when it exists), CHRT (a prefix for every server, e.g. "chrt -f 50" on a shared
# machine; then only the prefill rates hold: under it both servers' streamed chunks arrived
# together at the end, apparently because at one FIFO priority the compute threads keep the
# HTTP threads off the 2 cores, so the client's decode rate is meaningless; measure decode at
# depth with `cordial bench --depth N` and `llama-bench -d N`), SHORT (0 skips smollm2's
# short-context runs). Prints the CPU, the bandwidth, the load, and one JSON line per
# measurement. Loopback only; servers are stopped by their PID.
set -euo pipefail

WHICH="${1:?usage: $0 smollm2|gemma3 [ROUNDS]}"
ROUNDS="${2:-2}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CORDIAL="${CORDIAL:-$ROOT/target/release/cordial}"
THREADS="${THREADS:-2}"
MAX_TOKENS="${MAX_TOKENS:-64}"
OUT="${OUT:-$(mktemp -t long-context.XXXXXX.jsonl)}"
CLIENT="$HERE/long-context-client.py"
PORT=18731
SPID=""

stop() {
  if [ -n "$SPID" ]; then
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=""
  fi
}
trap stop EXIT

wait_ready() {
  for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "server on $PORT did not become ready" >&2
  return 1
}

case "$WHICH" in
  smollm2)
    MODEL="$("$CORDIAL" fetch-model smollm2)"
    CTX=8192; LONG=7264; VOCAB=1000:40000; FIRST=""
    ;;
  gemma3)
    MODEL="$("$CORDIAL" fetch-model gemma3-270m)"
    CTX=32768; LONG=16384; VOCAB=1000:200000; FIRST="--first-token 2"
    ;;
  *) echo "unknown model $WHICH" >&2; exit 2 ;;
esac
LLAMA_SERVER="${LLAMA_SERVER:-$(command -v llama-server || true)}"
if [ ! -x "$LLAMA_SERVER" ]; then
  echo "set LLAMA_SERVER to llama.cpp's llama-server binary" >&2
  exit 2
fi
MEMBW="${MEMBW:-/tmp/membw}"
CHRT="${CHRT:-}"

{
  echo "# $(date -u +%FT%TZ) $WHICH, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?)"
  echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) ($(nproc) vCPUs), flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512_vnni|avx_vnni|avx512_bf16)$' | tr '\n' ' ')"
  if [ -x "$MEMBW" ]; then echo "# membw 1 10 2: $($MEMBW 1 10 2 2>&1 | tail -3 | tr '\n' ' ')"; fi
} | tee -a "$OUT"

# cordial LABEL PROMPT_TOKENS EXTRA_FLAGS...
run_cordial() {
  local label="$1" ptok="$2"; shift 2
  $CHRT "$CORDIAL" serve --model "$MODEL" --port "$PORT" --threads "$THREADS" --max-num-seqs 1 \
    --max-model-len "$CTX" --kv-cache-tokens "$CTX" "$@" >"/tmp/bench-lc-cordial.log" 2>&1 &
  SPID=$!
  wait_ready
  grep -m1 "KV cache" /tmp/bench-lc-cordial.log | sed 's/^.*INFO [a-z_:]*: /# /' | tee -a "$OUT"
  measure "$label" "$ptok"
  stop
}

# llama LABEL PROMPT_TOKENS EXTRA_FLAGS...
run_llama() {
  local label="$1" ptok="$2"; shift 2
  $CHRT "$LLAMA_SERVER" -m "$MODEL" --port "$PORT" -t "$THREADS" -c "$CTX" -np 1 "$@" \
    >"/tmp/bench-lc-llama.log" 2>&1 &
  SPID=$!
  wait_ready
  measure "$label" "$ptok"
  stop
}

measure() {
  local label="$1" ptok="$2"
  echo "# $label, prompt $ptok: load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT"
  local sampler=""
  if [[ "$label" == cordial* ]]; then
    # The most KV memory held while the request runs (/metrics every second).
    rm -f /tmp/bench-lc-kv
    ( while true; do
        curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^cordial_kv_bytes_used /{print $2}' \
          >>/tmp/bench-lc-kv
        sleep 1
      done ) &
    sampler=$!
  fi
  # shellcheck disable=SC2086
  python3 "$CLIENT" --port "$PORT" --prompt-tokens "$ptok" --max-tokens "$MAX_TOKENS" \
    --runs 1 --vocab "$VOCAB" $FIRST --label "$label" | tee -a "$OUT"
  if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    echo "# $label: most KV bytes held during the request: $(sort -g /tmp/bench-lc-kv | tail -1)" \
      | tee -a "$OUT"
  fi
}

for round in $(seq 1 "$ROUNDS"); do
  echo "# round $round" | tee -a "$OUT"
  if [ "$WHICH" = smollm2 ]; then
    run_cordial "cordial f16" "$LONG" --kv-cache-dtype f16
    run_llama "llama-server -fa off" "$LONG" -fa off
    run_cordial "cordial q8_0" "$LONG" --kv-cache-dtype q8_0
    run_llama "llama-server -fa on" "$LONG" -fa on
    run_llama "llama-server -fa on q8_0" "$LONG" -fa on -ctk q8_0 -ctv q8_0
    if [ "${SHORT:-1}" != 0 ]; then
      run_cordial "cordial f16 short" 32 --kv-cache-dtype f16
      run_llama "llama-server -fa on short" 32 -fa on
      run_llama "llama-server -fa off short" 32 -fa off
    fi
  else
    run_cordial "cordial f16" "$LONG" --kv-cache-dtype f16
    run_llama "llama-server -fa off" "$LONG" -fa off
    run_llama "llama-server -fa on" "$LONG" -fa on
    run_cordial "cordial q8_0" "$LONG" --kv-cache-dtype q8_0
  fi
done
echo "# results in $OUT"
