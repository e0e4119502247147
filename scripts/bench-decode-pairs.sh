#!/usr/bin/env bash
# Decode speed next to llama.cpp as a distribution of paired ratios. On a shared host the memory
# bandwidth a VM gets swings within minutes (27-44 GB/s seen on one machine in one hour), and a
# decode at 1B+ is bandwidth-bound, so one run of each program says little. This runs PAIRS
# pairs back to back, alternating which goes first, and prints each pair's ratio and their
# median, with the read bandwidth measured before and after.
#
#   HARNESS=/path/to/harness bash scripts/bench-decode-pairs.sh MODEL.gguf [PAIRS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
HARNESS="${HARNESS:?set HARNESS to the side-by-side harness folder (peer-llamacpp.sh, membw.c)}"
BIN="${CORDIAL_BIN:-target/release/cordial}"
THREADS="${THREADS:-2}"
model="${1:?model file}"
pairs="${2:-10}"
[ -x "$BIN" ] || cargo build --release -p cordial-server
default_model="$("$BIN" fetch-model 2>/dev/null | tail -1)"
peer_dir="$(dirname "$(INSTALL_ONLY=1 "$HARNESS/peer-llamacpp.sh" "$default_model" | tail -1)")"
gcc -O3 -march=native -pthread -o /tmp/cordial-membw "$HARNESS/membw.c"
membw() { /tmp/cordial-membw 1 10 "$THREADS" | awk '/^read/ {print $9}'; }
ours() {
  "$BIN" bench --model "$model" --threads "$THREADS" --prefill-tokens 0 --batch 1 \
    --decode-tokens 128 2>&1 | awk '/^decode 128/ {print $3}'
}
peer() {
  "$peer_dir/llama-bench" -m "$model" -t "$THREADS" -p 0 -n 128 -r 1 -o json 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])'
}
echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "$(nproc) CPUs, threads=$THREADS, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $model, read bandwidth before: $(membw) GB/s"
: > /tmp/cordial-pairs
for i in $(seq "$pairs"); do
  if (( i % 2 )); then u="$(ours)"; l="$(peer)"; else l="$(peer)"; u="$(ours)"; fi
  r="$(echo "$u / $l" | bc -l)"
  printf 'pair %2d: cordial %6.1f tok/s  llama.cpp %6.1f tok/s  ratio %.2f\n' "$i" "$u" "$l" "$r"
  echo "$r" >> /tmp/cordial-pairs
done
echo "# read bandwidth after: $(membw) GB/s"
sort -g /tmp/cordial-pairs | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2;
  printf "decode ratio: median %.2f, min %.2f, max %.2f over %d pairs\n", m, a[1], a[NR], NR}'
