#!/usr/bin/env bash
# The three Python SDKs (friendli, friendli-client, openai) against a running `cordial serve`.
#
#   bash scripts/sdk-tests/run.sh
#
# Venvs are created once under ${XDG_CACHE_HOME:-$HOME/.cache}/cordial/sdk-venvs/<name> (outside
# the clone) and reused while their pinned version matches. The server binary is $CORDIAL_BIN, or
# the release build of this checkout (`cargo build --release -p cordial-server`, in the current
# CARGO_TARGET_DIR). The last line printed is `N passed, M failed`; the exit status is non-zero
# on any failure.
set -euo pipefail
# A relative CORDIAL_BIN is relative to where this was started.
if [[ -n "${CORDIAL_BIN:-}" && "$CORDIAL_BIN" != /* ]]; then
    CORDIAL_BIN="$PWD/$CORDIAL_BIN"
fi
cd "$(dirname "$0")"
HERE=$PWD

export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ in the clone
VENVS="${XDG_CACHE_HOME:-$HOME/.cache}/cordial/sdk-venvs"
MODEL_NAME=cordial-sdk-test
# name|pip requirement|test file
SDKS=(
    "friendli|friendli==0.16.5|test_friendli.py"
    "friendli-client|friendli-client==1.5.8|test_friendli_client.py"
    "openai|openai==3.57.0|test_openai.py"
)
PASSED=0
FAILED=0

log() { echo "[sdk-tests] $*" >&2; }

# A venv for one SDK: reused when its marker names the same requirement, else made anew.
ensure_venv() {
    local name=$1 req=$2 dir="$VENVS/$1"
    if [[ -x "$dir/bin/python" && "$(cat "$dir/.cordial-req" 2>/dev/null)" == "$req" ]]; then
        return 0
    fi
    log "creating the $name venv ($req)"
    rm -rf "$dir"
    mkdir -p "$VENVS"
    timeout 300 python3 -m venv "$dir" &&
        timeout 600 "$dir/bin/pip" install -q --disable-pip-version-check "$req" &&
        echo "$req" >"$dir/.cordial-req"
}

# The server binary.
if [[ -n "${CORDIAL_BIN:-}" ]]; then
    BIN=$CORDIAL_BIN
else
    log "building the release binary"
    (cd "$HERE/../.." && cargo build --release -p cordial-server)
    TARGET_DIR=$(cd "$HERE/../.." && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    BIN="$TARGET_DIR/release/cordial"
fi
[[ -x "$BIN" ]] || { log "no executable at $BIN"; echo "0 passed, 1 failed"; exit 1; }

for entry in "${SDKS[@]}"; do
    IFS='|' read -r name req _ <<<"$entry"
    ensure_venv "$name" "$req" || log "could not install $req"
done

# The server, on a free loopback port; stopped on exit.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE_URL="http://127.0.0.1:$PORT"
SERVER_LOG=$(mktemp "${TMPDIR:-/tmp}/cordial-sdk-server.XXXXXX")
"$BIN" serve --host 127.0.0.1 --port "$PORT" --served-model-name "$MODEL_NAME" \
    --kv-cache-tokens 4096 >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
stop_server() {
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -f "$SERVER_LOG"
}
trap stop_server EXIT

# /health answers 200 once the model is loaded (the first start may fetch it).
if ! python3 - "$BASE_URL/health" "$SERVER_PID" <<'PY'; then
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("the server exited")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit("the server was not healthy within 300 s")
PY
    log "the server did not start; its log:"
    tail -n 40 "$SERVER_LOG" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
log "server up at $BASE_URL ($BIN)"

for entry in "${SDKS[@]}"; do
    IFS='|' read -r name req file <<<"$entry"
    log "== $req"
    py="$VENVS/$name/bin/python"
    out=$(CORDIAL_BASE_URL=$BASE_URL CORDIAL_MODEL_NAME=$MODEL_NAME \
        timeout 300 "$py" "$HERE/$file" 2>&1) || true
    echo "$out" | grep -v '^RESULT ' | sed "s/^/[$name] /"
    result=$(echo "$out" | grep '^RESULT ' | tail -n 1 || true)
    if [[ $result =~ ^RESULT\ ([0-9]+)\ ([0-9]+)$ ]]; then
        PASSED=$((PASSED + BASH_REMATCH[1]))
        FAILED=$((FAILED + BASH_REMATCH[2]))
    else
        log "$file did not finish (no RESULT line)"
        FAILED=$((FAILED + 1))
    fi
done

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server died during the checks; its log:"
    tail -n 40 "$SERVER_LOG" >&2
    FAILED=$((FAILED + 1))
fi

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
