#!/usr/bin/env bash
# Audit the locks (locks/*.txt and the requirement files installed with --no-deps) for known
# vulnerabilities with pip-audit: exactly what scripts/setup.sh, scripts/ensure_label_studio.sh
# and the Dockerfile install, without installing it (--no-deps --disable-pip).
# Usage: scripts/audit.sh [pip-audit arguments]   (exit 1 when pip-audit reports a vulnerability)
# pip-audit needs a vulnerability service (PyPI's JSON API or OSV); where neither is reachable (as
# on the build machines, where a proxy answers without vulnerability data) this says so and exits
# 0, so CI never depends on it; tests/test_locks.py checks locks/minimum-safe-versions.txt instead.
# pip-audit is installed into .venv-lock-tools (git-ignored), apart from the backend's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
probe='import json, urllib.request; body = json.load(urllib.request.urlopen("https://pypi.org/pypi/werkzeug/2.0.2/json", timeout=10)); assert body.get("vulnerabilities")'
if ! python3 -c "$probe" 2>/dev/null; then
    echo "audit.sh: no vulnerability database reachable (https://pypi.org/pypi/<name>/json); the locks were not audited. See docs/reliability.md."
    exit 0
fi
tools=.venv-lock-tools
[[ -x $tools/bin/pip-audit ]] || { python3 -m venv "$tools" && "$tools/bin/pip" install --quiet pip-audit==2.10.1; }
status=0
for lock in locks/backend*.txt locks/label-studio-*.txt requirements-label-studio-ml.txt requirements-offline-model.txt; do
    echo "audit.sh: $lock" >&2
    "$tools/bin/pip-audit" --requirement "$lock" --require-hashes --no-deps --disable-pip --progress-spinner off "$@" \
        || status=1
done
exit "$status"
