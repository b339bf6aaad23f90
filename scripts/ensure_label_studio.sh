#!/usr/bin/env bash
# Ensure a Label Studio installation (default 1.23.2) in its own virtual environment, installed
# from its lock (locks/label-studio-<version>.txt: every distribution at an exact version, hashes
# checked) and proven by a start: Label Studio runs in a scratch data folder on a free loopback
# port, as a user would run it (SENTRY_DSN unset), until GET /health answers.
#
# Label Studio's dependencies differ from the backend's, so it lives in .venv-ls (git-ignored),
# separate from the backend's .venv.
#
# Idempotent: a marker naming the version and the lock's hash is written only after that start;
# a missing or incomplete environment, or a changed lock, is rebuilt. Quiet on success; the last
# line printed on stdout is the absolute path of the `label-studio` executable.
#
# Environment overrides:
#   LS_VENV     path of the virtual environment (default: <repo>/.venv-ls)
#   LS_VERSION  Label Studio version (default: 1.23.2)
#   LS_LOCK     lock file to install (default: <repo>/locks/label-studio-<version>.txt)
#   PYTHON      interpreter used to create the venv (default: python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LS_VENV:-$repo_root/.venv-ls}"
version="${LS_VERSION:-1.23.2}"
lock="${LS_LOCK:-$repo_root/locks/label-studio-$version.txt}"
python="${PYTHON:-python3}"
exe="$venv/bin/label-studio"
start_timeout=300

if [[ ! -f "$lock" ]]; then
    echo "ensure_label_studio.sh: no lock for Label Studio $version ($lock); create it with: scripts/refresh_locks.sh $version" >&2
    exit 1
fi
marker="$venv/.label-studio-$version-lock-$(sha256sum "$lock" | cut -c1-16).started"

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

# Incomplete, different-version or different-lock environment: start from scratch (but never
# delete a non-empty folder that is not a virtual environment, e.g. a mistyped LS_VENV).
if [[ -d "$venv" && ! -f "$venv/pyvenv.cfg" && -n "$(ls -A "$venv")" ]]; then
    echo "ensure_label_studio.sh: $venv exists and is not a virtual environment; refusing to replace it" >&2
    exit 1
fi
rm -rf "$venv"
"$python" -m venv "$venv" >>"$log" 2>&1 || fail "could not create virtual environment $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$lock" \
    >>"$log" 2>&1 || fail "pip install -r $lock failed"
[[ -x "$exe" ]] || fail "label-studio executable missing after install: $exe"
installed="$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("label-studio"))' 2>>"$log")" \
    || fail "label-studio does not import"
[[ "$installed" == "$version" ]] || fail "installed label-studio $installed, expected $version"

# The start check: a fresh SQLite database (migrations included), no analytics or update check.
scratch="$(mktemp -d -t ensure-label-studio.XXXXXX)"
port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"
set -m  # its own process group, so that stopping it ends every process it started
(
    cd "$scratch"
    exec env -u SENTRY_DSN LABEL_STUDIO_BASE_DATA_DIR="$scratch/data" COLLECT_ANALYTICS=false \
        LATEST_VERSION_CHECK=false "$exe" start --no-browser --internal-host 127.0.0.1 --port "$port" \
        --host "$url" </dev/null >>"$log" 2>&1
) &
server=$!
set +m
stop_server() {
    kill -TERM -- "-$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$scratch"
}
trap stop_server EXIT
health="import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/health', timeout=5)"
deadline=$((SECONDS + start_timeout))
until "$venv/bin/python" -c "$health" "$url" 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || fail "label-studio $version exited during its start check"
    ((SECONDS < deadline)) || fail "label-studio $version did not answer $url/health within $start_timeout s"
    sleep 1
done
stop_server
trap - EXIT

touch "$marker"
rm -f "$log"
echo "$exe"
