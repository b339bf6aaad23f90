"""The package as pip builds it: what the wheel ships, and a fresh virtual environment that
imports it and runs `freesel` from outside the repository."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out),
         str(REPO_ROOT)],
        check=True, timeout=600,
    )
    return next(out.glob("freesel_backend-*.whl"))


def test_the_wheel_ships_the_package_with_its_report_template_and_nothing_else(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "freesel_backend/report/templates/report.html.j2" in names
    assert "freesel_backend/engine/patterns.py" in names and "freesel_backend/_wsgi.py" in names
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"freesel_backend"}  # no benchmarks/, no tests/
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "freesel = freesel_backend.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_a_fresh_environment_imports_the_package_and_runs_freesel_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True, timeout=600)
    # the dependencies (torch, timm, ...) come from this interpreter's environment
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = [entry for entry in sys.path if Path(entry).name == "site-packages"]
    (Path(site_packages) / "dependencies.pth").write_text("".join(f"{entry}\n" for entry in ours))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import freesel_backend; print(freesel_backend.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout
    assert where.startswith(site_packages)
    help_text = subprocess.run([str(environment / "bin" / "freesel"), "--help"], cwd=elsewhere, capture_output=True,
                               text=True, check=True, timeout=300).stdout
    assert "usage: freesel" in help_text and "quickstart" in help_text
