"""The locks: every install line pinned and hashed, the environment that runs the tests at the locked
versions, Label Studio's locks with a sentry-sdk it starts with, and the web-facing packages at or above
their minimum safe versions (locks/minimum-safe-versions.txt). Fast, no network."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from harness.locks import (
    BACKEND_LOCK,
    NO_DEPS_FILES,
    REPO_ROOT,
    TEST_LOCK,
    canonical_name,
    installed_versions,
    locked_versions,
    unlocked,
    version_mismatches,
)
from freesel_backend.labelstudio.local import install_marker

LOCKS = REPO_ROOT / "locks"
LABEL_STUDIO_LOCKS = sorted(LOCKS.glob("label-studio-*.txt"))
SUPPORTED_LABEL_STUDIO = ("1.12.1", "1.13.1", "1.16.0", "1.20.0", "1.22.0", "1.23.2")
SAFE_VERSIONS = LOCKS / "minimum-safe-versions.txt"


def requirement_lines(path: Path) -> list[str]:
    """The file's requirements, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_every_installed_line_is_an_exact_version_with_a_hash():
    # pip's hash-checking mode is all or nothing per install command
    for path in [BACKEND_LOCK, TEST_LOCK, *NO_DEPS_FILES, *LABEL_STUDIO_LOCKS]:
        lines = requirement_lines(path)
        assert lines, path
        for line in lines:
            assert re.match(r"^[A-Za-z0-9._-]+==\S+ ", line) and "--hash=sha256:" in line, f"{path.name}: {line}"


def test_the_environment_holds_each_distribution_at_its_locked_version():
    locked = locked_versions([TEST_LOCK, *NO_DEPS_FILES])
    installed = installed_versions()
    assert version_mismatches(locked, installed) == [], "run scripts/setup.sh --test"
    assert unlocked(locked, installed) == [], "distributions no lock names: run scripts/setup.sh --test"


def test_a_distribution_at_another_version_or_unlocked_is_reported():
    locked = {"flask": "3.1.3", "werkzeug": "3.1.9"}
    installed = {"flask": "1.1.2", "werkzeug": "3.1.9", "itsdangerous": "2.0.1", "pip": "23.2.1"}
    assert version_mismatches(locked, installed) == ["flask 1.1.2 installed, 3.1.3 locked"]
    assert unlocked(locked, installed) == ["itsdangerous"]
    assert canonical_name("Jinja2") == "jinja2" and canonical_name("label_studio.ml") == "label-studio-ml"


def test_the_test_lock_keeps_the_runtime_lock_versions():
    runtime, test = locked_versions([BACKEND_LOCK]), locked_versions([TEST_LOCK])
    assert {name: test.get(name) for name in runtime} == runtime


def test_label_studio_ml_is_installed_without_its_flask_1_stack():
    runtime = locked_versions([BACKEND_LOCK])
    assert Version(runtime["flask"]) >= Version("3.1.3") and Version(runtime["werkzeug"]) >= Version("3.1")
    # what its CLI (label-studio-ml start) imports
    assert {"attr", "attrs", "colorama", "label-studio-tools", "appdirs", "lxml", "redis", "rq"} <= set(runtime)
    assert "label-studio-ml" not in runtime
    assert locked_versions(NO_DEPS_FILES)["label-studio-ml"] == "1.0.9"


def test_each_supported_label_studio_has_a_lock_with_sentry_sdk_2():
    assert {path.stem.removeprefix("label-studio-") for path in LABEL_STUDIO_LOCKS} >= set(SUPPORTED_LABEL_STUDIO)
    for path in LABEL_STUDIO_LOCKS:
        versions = locked_versions([path])
        assert versions["label-studio"] == path.stem.removeprefix("label-studio-")
        # sentry-sdk 3 stops Label Studio at start: TypeError: Unknown option 'send_default_pii'
        assert Version(versions["sentry-sdk"]).major == 2, path.name


def safe_versions() -> list[tuple[Requirement, str]]:
    entries = []
    for line in requirement_lines(SAFE_VERSIONS):
        requirement, advisories = line.split(maxsplit=1)
        entries.append((Requirement(requirement), advisories))
    return entries


def test_the_web_facing_packages_are_locked_at_or_above_their_minimum_safe_versions():
    runtime = locked_versions([BACKEND_LOCK])
    entries = safe_versions()
    assert {canonical_name(r.name) for r, _ in entries} >= {"flask", "werkzeug", "jinja2", "gunicorn", "requests",
                                                             "urllib3"}
    for requirement, advisories in entries:
        assert re.search(r"CVE-\d{4}-\d+|GHSA-", advisories), f"{requirement} names no advisory"
        assert requirement.specifier.contains(runtime[canonical_name(requirement.name)]), requirement
    assert "locks/minimum-safe-versions.txt" in (REPO_ROOT / "docs" / "reliability.md").read_text()


def test_the_package_declares_the_direct_requirements_of_the_lock():
    import tomllib

    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert declared == requirement_lines(REPO_ROOT / "requirements.txt")


def fake_label_studio_environment(venv: Path) -> None:
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("")
    for name in ("label-studio", "python"):
        (venv / "bin" / name).write_text("#!/bin/sh\nexit 1\n")
        (venv / "bin" / name).chmod(0o755)


def run_ensure_label_studio(venv: Path, version: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "LS_VENV": str(venv), "LS_VERSION": version}
    environment.pop("LS_LOCK", None)
    return subprocess.run(["bash", str(REPO_ROOT / "scripts" / "ensure_label_studio.sh")], env=environment,
                          capture_output=True, text=True, timeout=60)


def test_an_installed_label_studio_is_known_by_its_version_and_lock_hash(tmp_path):
    venv = tmp_path / "venv-ls"
    fake_label_studio_environment(venv)
    install_marker(venv, "1.23.2").touch()
    done = run_ensure_label_studio(venv, "1.23.2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == str(venv / "bin" / "label-studio")


def test_a_label_studio_version_without_a_lock_names_the_refresh_command(tmp_path):
    done = run_ensure_label_studio(tmp_path / "venv-ls", "1.10.1")
    assert done.returncode == 1 and "scripts/refresh_locks.sh 1.10.1" in done.stderr


def test_the_runtime_setup_keeps_an_environment_set_up_for_the_tests(tmp_path):
    """`scripts/run.sh` (the runtime setup) run from the test suite must not take the test packages away."""
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    installed = b"".join(path.read_bytes() for path in (TEST_LOCK, *NO_DEPS_FILES, REPO_ROOT / "pyproject.toml"))
    (venv / f".freesel-installed-{hashlib.sha256(installed).hexdigest()[:16]}").touch()
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO_ROOT, env={**os.environ, "FREESEL_VENV": str(venv)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "installing" not in done.stderr, done.stderr
