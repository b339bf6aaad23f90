#!/usr/bin/env bash
# Set up .venv (requirements + test requirements) and run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k selection`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# tests/test_report.py renders the selection report in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }
fi
exec .venv/bin/python -m pytest -q "$@"
