#!/usr/bin/env bash
# Set up .venv (requirements + test requirements) and run the whole test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k selection`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# Real labelled images for the quality benchmark's CI-sized run: Debian's Fashion-MNIST.
if [[ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]]; then
    echo "test: installing Debian package dataset-fashion-mnist" >&2
    (apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }) >&2
fi
exec .venv/bin/python -m pytest -q "$@"
