#!/usr/bin/env bash
# Run the end-to-end test (a real Label Studio, Redis, gunicorn and worker: connect, rank, /next
# serves FreeSel's picks) against one Label Studio release from PyPI, installed from its lock
# (locks/label-studio-<version>.txt) on first use in its own virtual environment under LS_VENVS
# (default: .venv-ls-versions/<version>).
# Usage: scripts/test_label_studio_version.sh VERSION [pytest arguments], e.g. 1.20.0 -x
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:?usage: scripts/test_label_studio_version.sh VERSION [pytest arguments]}"
shift
if [[ ! -f "locks/label-studio-$version.txt" ]]; then
    echo "test_label_studio_version: no lock for Label Studio $version; create it with: scripts/refresh_locks.sh $version" >&2
    exit 1
fi
export LS_VERSION="$version" LS_VENV="${LS_VENVS:-$PWD/.venv-ls-versions}/$version"
echo "test_label_studio_version: Label Studio $version in $LS_VENV (first use installs it: ~1 GB, a minute or two)" >&2
exec scripts/test.sh tests/test_end_to_end.py "$@"
