#!/usr/bin/env bash
# Set up .venv (requirements + test requirements) and run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k selection`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest -q "$@"
