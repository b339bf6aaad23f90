#!/usr/bin/env bash
# Refresh the locks: resolve every lock anew at the latest releases the inputs allow (requirements*.txt,
# locks/label-studio.in), install each into a scratch virtual environment, check it there (the
# backend: the fast tests; Label Studio: a real start answering /health, scripts/ensure_label_studio.sh)
# and only when every check passes replace locks/*.txt. Nothing is written on a failure.
# Usage: scripts/refresh_locks.sh [LABEL_STUDIO_VERSION ...]   (default: every version locked now)
# Takes a while: the backend's scratch environment installs torch (~5.5 GB).
# Resolver: uv (installed into .venv-lock-tools), for CPython 3.11 on Linux x86_64.
set -euo pipefail
cd "$(dirname "$0")/.."

versions=("$@")
if ((${#versions[@]} == 0)); then
    for lock in locks/label-studio-*.txt; do
        version=${lock#locks/label-studio-}
        versions+=("${version%.txt}")
    done
fi

tools="$PWD/.venv-lock-tools"
[[ -x $tools/bin/uv ]] || { python3 -m venv "$tools" && "$tools/bin/pip" install --quiet uv==0.13.8; }
scratch="$(mktemp -d -t freesel-locks.XXXXXX)"
trap 'rm -rf "$scratch"' EXIT

compile() {  # OUTPUT INPUT...: inputs given relative to the working directory, as the lock's header shows them
    local output=$1
    shift
    "$tools/bin/uv" pip compile --quiet --generate-hashes --python-version 3.11 \
        --python-platform x86_64-manylinux_2_28 --custom-compile-command scripts/refresh_locks.sh \
        --output-file "$output" "$@"
}

compile "$scratch/backend.txt" requirements.txt
# the runtime part at the runtime lock's versions, so that tests run what users install
compile "$scratch/backend-test.txt" requirements.txt requirements-test.txt requirements-bench.txt \
    --constraint "$scratch/backend.txt"
cp locks/label-studio.in "$scratch/"
for version in "${versions[@]}"; do
    echo "label-studio==$version" >"$scratch/label-studio-$version.in"
    # what one release needs beyond label-studio.in (locks/label-studio-<version>.in, where there is one)
    [[ ! -f locks/label-studio-$version.in ]] || cat "locks/label-studio-$version.in" >>"$scratch/label-studio-$version.in"
    (cd "$scratch" && compile "label-studio-$version.txt" "label-studio-$version.in" label-studio.in)
done

FREESEL_VENV="$scratch/venv" FREESEL_LOCKS="$scratch" scripts/setup.sh --test
"$scratch/venv/bin/python" -m pytest -q -p no:cacheprovider -m "not integration and not slow" -x

for version in "${versions[@]}"; do
    echo "refresh_locks: installing and starting Label Studio $version" >&2
    LS_VERSION=$version LS_LOCK="$scratch/label-studio-$version.txt" LS_VENV="$scratch/ls-$version" \
        scripts/ensure_label_studio.sh >/dev/null
done

# The locks name the scratch constraint file; name the lock it stands for instead.
sed -i "s|$scratch/backend.txt|locks/backend.txt|" "$scratch/backend-test.txt"
cp "$scratch/backend.txt" "$scratch/backend-test.txt" locks/
for version in "${versions[@]}"; do
    cp "$scratch/label-studio-$version.txt" locks/
done
