"""`python -m freesel_backend select`, end to end on generated files, in a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY_IMAGE_SIZE, TINY_MODEL, write_noise_images

pytestmark = pytest.mark.slow

TINY = ["--model", TINY_MODEL, "--random-init", "--image-size", str(TINY_IMAGE_SIZE), "--device", "cpu"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "freesel_backend", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_noise_images(folder / "nested", 9)
    (folder / "corrupt.jpg").write_bytes((folder / "nested" / "img_000.jpg").read_bytes()[:200])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("a text file with an image suffix")
    return folder


def test_select_ranks_a_folder_and_lists_unreadable_files_with_their_error(image_folder: Path, tmp_path: Path) -> None:
    out, saved = tmp_path / "ranking.json", tmp_path / "patterns.npz"
    result = run_cli(
        "select", str(image_folder), "--budget", "4", *TINY, "--out", str(out), "--save-patterns", str(saved)
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [row["rank"] for row in report["ranking"]] == list(range(1, 10))
    assert [row["picked"] for row in report["ranking"]] == [True] * 4 + [False] * 5
    assert {Path(row["path"]).name for row in report["ranking"]} == {f"img_{i:03d}.jpg" for i in range(9)}
    assert report["ranking"][0]["distance"] is None  # first pick, nothing to compare with
    assert all(row["distance"] >= 0 for row in report["ranking"][1:])
    errors = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert errors.keys() == {"corrupt.jpg", "empty.png", "notes.jpg"}
    assert (
        "truncated" in errors["corrupt.jpg"]
        and "empty" in errors["empty.png"]
        and "not an image" in errors["notes.jpg"]
    )
    assert report["weights"] == "random-init"
    assert "RANDOM weights" in result.stderr
    assert "12/12" in result.stderr  # the progress bar covered every file

    with np.load(saved) as data:
        assert data["patterns"].dtype == np.float32
        assert len(data["paths"]) == 9
        assert set(data["owner"].tolist()) == set(range(9))
        np.testing.assert_allclose(np.linalg.norm(data["patterns"], axis=1), 1.0, atol=1e-5)


def test_saved_patterns_re_rank_with_labelled_images_as_seeds_without_the_model(
    image_folder: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "patterns.npz"
    assert run_cli("select", str(image_folder), "--budget", "2", *TINY, "--save-patterns", str(saved)).returncode == 0
    labelled = tmp_path / "labelled.txt"
    labelled.write_text("\n".join(str(p) for p in sorted((image_folder / "nested").glob("*.jpg"))[:3]))
    # An unknown model name proves no model is built when patterns are loaded.
    result = run_cli("select", "unused", "--budget", "3", "--load-patterns", str(saved), "--labelled", str(labelled),
                     "--model", "no_such_model", "--strategy", "fds")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n_seeds"] == 3 and report["n_picked"] == 3
    assert report["weights"] == "random-init"  # provenance comes from the saved file
    ranked = {row["path"] for row in report["ranking"]}
    assert len(ranked) == 6 and not ranked & set(labelled.read_text().splitlines())


def test_missing_weights_fail_with_one_sentence_naming_model_and_path(image_folder: Path, tmp_path: Path) -> None:
    result = run_cli("select", str(image_folder), "--budget", "2", "--model", TINY_MODEL,
                     "--weights", str(tmp_path / "missing.pth"))
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert TINY_MODEL in message and "missing.pth" in message and "--weights" in message


def test_a_missing_image_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("select", str(tmp_path / "nowhere"), "--budget", "2", *TINY)
    assert result.returncode == 2
    assert "no such folder or list file" in result.stderr
