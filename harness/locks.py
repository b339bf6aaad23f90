"""The backend's locks (locks/*.txt, and the requirements-*.txt files installed with --no-deps)
against the distributions of an environment: which one is at another version, which one no lock
names. `python -m harness.locks --unlocked LOCK...` prints the latter, one name a line (scripts/setup.sh
removes them)."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable

REPO_ROOT = Path(__file__).resolve().parent.parent
BACKEND_LOCK = REPO_ROOT / "locks" / "backend.txt"
TEST_LOCK = REPO_ROOT / "locks" / "backend-test.txt"
NO_DEPS_FILES = (REPO_ROOT / "requirements-label-studio-ml.txt", REPO_ROOT / "requirements-offline-model.txt")
# pip comes with the virtual environment; the package itself is installed from the source tree
NOT_LOCKED = frozenset({"pip", "freesel-backend"})

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def canonical_name(name: str) -> str:
    """PEP 503 normalised name: Jinja2, jinja_2.x -> jinja2, label-studio-ml."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(paths: Iterable[Path]) -> dict[str, str]:
    """Name -> version of every `name==version` line of the files."""
    return {
        canonical_name(name): version
        for path in paths
        for name, version in _PIN.findall(Path(path).read_text())
    }


def installed_versions() -> dict[str, str]:
    """Name -> version of every distribution the running interpreter sees."""
    return {canonical_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}


def version_mismatches(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    return sorted(
        f"{name} {installed[name]} installed, {version} locked"
        for name, version in locked.items()
        if name in installed and installed[name] != version
    )


def unlocked(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    return sorted(set(installed) - set(locked) - NOT_LOCKED)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--unlocked":
        print("usage: python -m harness.locks --unlocked LOCK...", file=sys.stderr)
        return 2
    for name in unlocked(locked_versions(Path(path) for path in argv[1:]), installed_versions()):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
