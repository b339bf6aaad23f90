#!/usr/bin/env bash
# Main job: set up .venv, then serve the FreeSel Label Studio ML backend on http://localhost:9090
# with an embedded Redis (data under MODEL_DIR, default ./model_dir) and three workers.
# With LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY set: ready to be connected from that Label Studio.
# With neither set: the demo (`python -m freesel_backend demo`): a local Label Studio on
# http://localhost:8080 (LABEL_STUDIO_PORT), installed on first use, with a project
# 'FreeSel demo' of sample photographs connected to the backend and ranked.
# Extra arguments go to `serve` (or `demo`), e.g. `scripts/run.sh --port 9091`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [[ -z "${LABEL_STUDIO_API_KEY:-}" && -z "${LABEL_STUDIO_URL:-}${LABEL_STUDIO_HOST:-}" ]]; then
    exec .venv/bin/python -m freesel_backend demo "$@"
fi
[[ -n "${LABEL_STUDIO_API_KEY:-}" ]] || echo "run.sh: LABEL_STUDIO_API_KEY is not set: the backend cannot reach Label Studio (README, 'Connecting to Label Studio')" >&2
exec .venv/bin/python -m freesel_backend serve "$@"
