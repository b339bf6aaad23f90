#!/usr/bin/env bash
# Audit the pinned runtime requirements for known vulnerabilities with pip-audit.
# pip-audit needs a vulnerability service (PyPI's JSON API or OSV); where neither is reachable
# (as on the build machines, where a proxy answers without vulnerability data), this says so and exits 0, so CI never depends on it. The known
# issues of the old pins and what the backend does about them are in docs/reliability.md.
# pip-audit is installed into .venv-audit (git-ignored), apart from the backend's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
probe='import json, urllib.request; body = json.load(urllib.request.urlopen("https://pypi.org/pypi/werkzeug/2.0.2/json", timeout=10)); assert body.get("vulnerabilities")'
if ! python3 -c "$probe" 2>/dev/null; then
    echo "audit.sh: no vulnerability database reachable (https://pypi.org/pypi/<name>/json); skipped. See docs/reliability.md."
    exit 0
fi
[[ -x .venv-audit/bin/pip-audit ]] || { python3 -m venv .venv-audit && .venv-audit/bin/pip install -q pip-audit; }
# The installed environment, so label-studio-ml's pins (Flask, Werkzeug, Jinja2, ...) are audited too.
.venv-audit/bin/pip-audit --path "$(ls -d .venv/lib/python3*/site-packages)" "$@"
