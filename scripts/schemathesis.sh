#!/usr/bin/env bash
# Runs schemathesis (PyPI) against /openapi.json of the release binary serving the default
# model on loopback: every operation, generated bodies (valid and invalid per the schema),
# check `not_a_server_error` (no 5xx) plus the response-schema checks of JSON answers.
#   bash scripts/schemathesis.sh [MAX_EXAMPLES]     # per operation; default 100 (SEED=1)
# The venv lives in ~/.cache/cordial/schemathesis-venv. The server runs with a short context
# (--max-model-len 192) and --default-timeout 20 so that generated max_tokens stay cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${1:-100}"
venv="$HOME/.cache/cordial/schemathesis-venv"
if [ ! -x "$venv/bin/schemathesis" ] && [ ! -x "$venv/bin/st" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'schemathesis>=3.39,<5'
fi
st="$venv/bin/schemathesis"
[ -x "$st" ] || st="$venv/bin/st"
bin="${CARGO_TARGET_DIR:-target}/release/cordial"
[ -x "$bin" ] || cargo build --release -p cordial-server
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log="$(mktemp /tmp/cordial-schemathesis-XXXX.log)"
"$bin" serve --port "$port" --max-model-len 192 --default-timeout 20 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    kill -0 $pid || { cat "$log"; exit 1; }
    sleep 0.2
done
"$st" --version
rc=0
"$st" run "http://127.0.0.1:$port/openapi.json" \
    --url "http://127.0.0.1:$port" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --max-examples "$examples" --request-timeout 60 --workers 4 \
    --seed "${SEED:-1}" "${@:2}" || rc=$?
echo "server log: $log; completions answered by status:"
grep -o 'path=[^ ]*completions status=[0-9]*' "$log" | awk '{print $2}' | sort | uniq -c || true
exit $rc
