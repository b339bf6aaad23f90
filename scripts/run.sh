#!/usr/bin/env bash
# Main job: set up .venv, then serve the FreeSel Label Studio ML backend on http://localhost:9090
# with an embedded Redis (data under MODEL_DIR, default ./model_dir) and three workers, ready to be
# connected from Label Studio. Set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY first (README).
# Extra arguments go to `serve`, e.g. `scripts/run.sh --port 9091`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[[ -n "${LABEL_STUDIO_API_KEY:-}" ]] || echo "run.sh: LABEL_STUDIO_API_KEY is not set: the backend cannot reach Label Studio (README, 'Connecting to Label Studio')" >&2
exec .venv/bin/python -m freesel_backend serve "$@"
