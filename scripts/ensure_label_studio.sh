#!/usr/bin/env bash
# Ensure a Label Studio 1.23.2 installation in its own virtual environment.
#
# Label Studio conflicts with label-studio-ml's Flask/Werkzeug pins, so it lives in
# .venv-ls (git-ignored), separate from the backend's .venv.
#
# Idempotent: a marker file is written only after a successful install and import
# check; a missing or incomplete environment is rebuilt. Quiet on success; the last
# line printed on stdout is the absolute path of the `label-studio` executable.
#
# Environment overrides:
#   LS_VENV     path of the virtual environment (default: <repo>/.venv-ls)
#   LS_VERSION  Label Studio version (default: 1.23.2)
#   PYTHON      interpreter used to create the venv (default: python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LS_VENV:-$repo_root/.venv-ls}"
version="${LS_VERSION:-1.23.2}"
python="${PYTHON:-python3}"
marker="$venv/.label-studio-$version.installed"
exe="$venv/bin/label-studio"

if [[ -f "$marker" && -x "$exe" && -x "$venv/bin/python" ]]; then
    echo "$exe"
    exit 0
fi

log="$(mktemp -t ensure-label-studio.XXXXXX.log)"
fail() {
    echo "ensure_label_studio.sh: $1 (log: $log)" >&2
    tail -n 40 "$log" >&2 || true
    exit 1
}

# Incomplete or different-version environment: start from scratch (but never delete a
# non-empty folder that is not a virtual environment, e.g. a mistyped LS_VENV).
if [[ -d "$venv" && ! -f "$venv/pyvenv.cfg" && -n "$(ls -A "$venv")" ]]; then
    echo "ensure_label_studio.sh: $venv exists and is not a virtual environment; refusing to replace it" >&2
    exit 1
fi
rm -rf "$venv"
"$python" -m venv "$venv" >>"$log" 2>&1 || fail "could not create virtual environment $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >>"$log" 2>&1 \
    || fail "could not upgrade pip in $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "label-studio==$version" >>"$log" 2>&1 \
    || fail "pip install label-studio==$version failed"
[[ -x "$exe" ]] || fail "label-studio executable missing after install: $exe"
# Sanity check: the package imports and reports the expected version.
installed="$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("label-studio"))' 2>>"$log")" \
    || fail "label-studio does not import"
[[ "$installed" == "$version" ]] || fail "installed label-studio $installed, expected $version"

touch "$marker"
rm -f "$log"
echo "$exe"
