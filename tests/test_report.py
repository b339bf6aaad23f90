"""The selection report: one self-contained HTML page, rendered in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freesel_backend.engine.selection import Ranking
from freesel_backend.report.html import coverage_curve, pattern_map
from freesel_backend.cli.samples import scene_image
from tests.helpers import TINY_IMAGE_SIZE, TINY_MODEL, missing_prerequisite, random_patterns

TINY = ["--model", TINY_MODEL, "--random-init", "--image-size", str(TINY_IMAGE_SIZE), "--device", "cpu"]
RANK_BADGE = (0x18, 0x64, 0xAB)  # --rank in the template: the grid's rank badges
MAP_PICK = (0xE8, 0x59, 0x0C)  # --pick in the template: picked dots on the map


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "freesel_backend", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def selection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A `select` run over 20 generated scenes, two exact copies and one broken file, then `report`."""
    folder = tmp_path_factory.mktemp("scenes")
    for seed in range(20):
        scene_image(seed).save(folder / f"scene_{seed:02d}.png")
    for seed in (3, 11):
        scene_image(seed).save(folder / f"copy_of_{seed:02d}.png")
    (folder / "broken.jpg").write_bytes(b"definitely not a jpeg")
    out = tmp_path_factory.mktemp("out")
    ranking, patterns, html = out / "ranking.json", out / "patterns.npz", out / "report.html"
    selected = run_cli(
        "select", str(folder), "--budget", "8", *TINY, "--out", str(ranking), "--save-patterns", str(patterns)
    )
    assert selected.returncode == 0, selected.stderr
    reported = run_cli("report", str(ranking), "--patterns", str(patterns), "--out", str(html), "--details", "2")
    assert reported.returncode == 0, reported.stderr
    return {"ranking": ranking, "html": html, "folder": folder}


@pytest.mark.slow
def test_the_page_has_no_external_references(selection: dict[str, Path]) -> None:
    html = selection["html"].read_text()
    assert "http://" not in html and "https://" not in html
    markup = re.sub(r"<script>.*?</script>", "", html, flags=re.S)
    assert re.findall(r'<img[^>]+src="(?!data:image/jpeg;base64,)', markup) == []
    assert "<link" not in html and "@import" not in html


@pytest.mark.slow
def test_the_grid_shows_the_picks_in_ranking_order_with_rank_and_distance(selection: dict[str, Path]) -> None:
    html = selection["html"].read_text()
    ranked = json.loads(selection["ranking"].read_text())["ranking"]
    picked_names = [Path(row["path"]).name for row in ranked if row["picked"]]
    cells = re.findall(
        r'<div class="cell" id="pick-(\d+)".*?<div class="dist">(.*?)</div>\s*<div class="name"[^>]*>(.*?)</div>',
        html,
        re.S,
    )
    assert [int(rank) for rank, _, _ in cells] == list(range(1, 9))
    assert [name for _, _, name in cells] == picked_names
    assert cells[0][1] == "first pick"
    assert all(re.fullmatch(r"d = \d\.\d{3}", distance) for _, distance, _ in cells[1:])


@pytest.mark.slow
def test_failures_near_duplicates_and_settings_are_listed(selection: dict[str, Path]) -> None:
    html = selection["html"].read_text()
    failures = html[html.index('id="failures"') : html.index('id="settings"')]
    assert "broken.jpg" in failures and "not an image file" in failures
    duplicates = html[html.index('id="duplicates"') : html.index('id="failures"')]
    assert "Near-duplicates (2 groups)" in duplicates
    assert "copy_of_03.png" in duplicates and "copy_of_11.png" in duplicates
    assert "vit_tiny_patch16_224+random-init" in html and "patterns_per_image" in html
    assert html.count('class="detail"') == 2  # the patch views of the first two picks


@pytest.mark.integration
def test_chromium_renders_the_grid_above_the_map(selection: dict[str, Path], tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        message = "headless Chromium is needed to render the report: apt-get install -y chromium"
        missing_prerequisite(message)
    screenshot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = selection["html"].as_uri()
    subprocess.run([chromium, *flags, f"--screenshot={screenshot}", "--window-size=1400,2400", url],
                   capture_output=True, timeout=120, check=True)
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for element in ("pick-grid", "pattern-map", "coverage-curve", "duplicates", "failures"):
        assert f'id="{element}"' in dom
    assert dom.count('class="pick"') == 8  # one highlighted dot per pick

    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    badge_rows = np.nonzero((np.abs(pixels - RANK_BADGE).sum(axis=2) < 12).any(axis=1))[0]
    dot_rows = np.nonzero((np.abs(pixels - MAP_PICK).sum(axis=2) < 12).sum(axis=1) >= 3)[0]
    assert len(badge_rows) > 40, "no rank badges of the pick grid on screen"
    assert len(dot_rows) > 30, "no highlighted picks on the map on screen"
    assert np.median(badge_rows) < np.median(dot_rows), "the grid should come before the map"


def test_coverage_curve_is_the_largest_distance_left_after_each_pick() -> None:
    patterns = random_patterns(30, k=3, dim=8, seed=2)
    ranking = Ranking(order=np.arange(29), distance=np.zeros(29), n_picked=10, seeds=(29,))
    counts, values = coverage_curve(patterns, ranking)
    assert counts.tolist() == list(range(1, 11))
    for count, value in zip(counts, values):
        chosen = np.concatenate([patterns[i] for i in [29, *range(count)]])
        everything = np.concatenate(patterns)
        similarity = (everything / np.linalg.norm(everything, axis=1, keepdims=True)) @ (
            chosen / np.linalg.norm(chosen, axis=1, keepdims=True)).T
        assert value == pytest.approx(float((1 - similarity.max(axis=1)).max()), abs=1e-5)
    assert np.all(np.diff(values) <= 1e-7)


def test_coverage_curve_samples_long_pick_lists() -> None:
    patterns = random_patterns(300, k=2, dim=8, seed=3)
    ranking = Ranking(order=np.arange(300), distance=np.zeros(300), n_picked=250)
    counts, values = coverage_curve(patterns, ranking, max_points=20)
    assert len(counts) == 20 and counts[0] == 1 and counts[-1] == 250
    assert values[-1] == pytest.approx(coverage_curve(patterns, ranking)[1][-1])


def test_the_map_separates_two_clusters_along_its_first_axis() -> None:
    rng = np.random.default_rng(0)
    left = [np.eye(8, dtype=np.float32)[[0]] + 0.05 * rng.normal(size=(2, 8)).astype(np.float32) for _ in range(10)]
    right = [np.eye(8, dtype=np.float32)[[1]] + 0.05 * rng.normal(size=(2, 8)).astype(np.float32) for _ in range(10)]
    coordinates, explained = pattern_map(left + right)
    assert coordinates.shape == (20, 2)
    assert np.sign(coordinates[:10, 0]).tolist().count(np.sign(coordinates[0, 0])) == 10
    assert np.all(np.sign(coordinates[10:, 0]) == -np.sign(coordinates[0, 0]))
    assert explained[0] > 0.8
