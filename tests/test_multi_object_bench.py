"""The multi-object selection benchmark at CI size: real Fashion-MNIST objects, a tiny model."""

from __future__ import annotations

import pytest
from dataclasses import replace

from pathlib import Path

import numpy as np

from benchmarks.quality.data import DEFAULT_ROOT, load_split
from benchmarks.quality.multi_object import main, multi_object_methods
from benchmarks.quality.scenes import POOLS, SceneSettings, build_scenes
from tests.helpers import missing_prerequisite

TINY_RUN = [
    "--model", "vit_tiny_patch16_224", "--random-init", "--precision", "fp32", "--scenes", "60", "--canvas", "96",
    "--scene-size", "32", "--object-size", "32", "--objects-per-class", "4", "--budgets", "5", "12", "--seeds", "2",
]


def _fashion_mnist_or_skip() -> None:
    if not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file():
        missing_prerequisite("Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist")


def test_scenes_hold_non_overlapping_objects_of_long_tailed_classes_each_used_once() -> None:
    _fashion_mnist_or_skip()
    settings = SceneSettings(n_scenes=400)
    scenes = build_scenes(load_split("train"), settings)
    per_scene = scenes.objects_per_scene()
    assert per_scene.min() >= settings.min_objects and per_scene.max() <= settings.max_objects
    assert len(np.unique(scenes.object_sources)) == len(scenes.object_sources)
    counts = np.bincount(scenes.object_labels, minlength=10)
    assert counts[np.argmax(scenes.class_frequencies)] > 5 * counts[np.argmin(scenes.class_frequencies)]
    # Objects do not overlap: a canvas shows each object whole (scaled), so its ink adds up.
    ink = [(canvas > 0).sum() for canvas in scenes.canvases[:50]]
    single_ink = [(scenes.object_images[scenes.object_scene == s] > 0).sum() for s in range(50)]
    assert np.corrcoef(ink, single_ink)[0, 1] > 0.8
    two = scenes.subset(np.array([5, 2]))
    assert len(two) == 2 and np.array_equal(
        two.object_labels, scenes.object_labels[np.isin(scenes.object_scene, [2, 5])]
    )


@pytest.mark.slow
def test_report_gives_gains_per_scene_and_per_object_for_every_method(tmp_path: Path) -> None:
    _fashion_mnist_or_skip()
    arguments = [*TINY_RUN, "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]
    assert main(arguments) == 0
    table = (tmp_path / "quality_multi_object.md").read_text()
    for heading in ("same number of scenes", "holding as many objects", "three rarest classes"):
        assert heading in table
    for method in multi_object_methods():
        rows = [line for line in table.splitlines() if line.startswith(f"| {method.name} |")]
        assert len(rows) == 4 and all(len(row.split("|")) == 2 + 1 + 2 for row in rows)  # name, budgets 5 and 12
    # Random is its own baseline, per scene and per object (the interpolation passes through its points).
    for heading in ("same number of scenes", "holding as many objects"):
        random_gains = next(line for line in table.split(heading)[1].splitlines() if line.startswith("| random |"))
        assert random_gains == "| random | +0.0 ± 0.0 | +0.0 ± 0.0 |"
    # Every picked scene holds 1-4 objects: 5 and 12 scenes hold 5-20 and 12-48 objects.
    counts = table.split("three rarest classes")[1]
    for method in multi_object_methods():
        line = next(line for line in counts.splitlines() if line.startswith(f"| {method.name} |"))
        objects = [int(cell.split()[0]) for cell in line.split("|")[2:4]]
        assert 5 <= objects[0] <= 20 and 12 <= objects[1] <= 48, line


@pytest.mark.slow
def test_tuning_never_reads_the_test_split(tmp_path: Path) -> None:
    _fashion_mnist_or_skip()
    train_only = tmp_path / "train_only"
    train_only.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (train_only / name).symlink_to(DEFAULT_ROOT / name)
    arguments = [*TINY_RUN, "--only", "random", "paper: fds K=5 r=0.5", "--data-dir", str(train_only),
                 "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]
    assert main(["tune", *arguments]) == 0
    assert "30 scenes" in (tmp_path / "quality_multi_object_tuning.md").read_text()


def test_detection_pools_differ_in_object_statistics() -> None:
    _fashion_mnist_or_skip()
    train = load_split("train")
    crowded = build_scenes(train, replace(POOLS["crowded"], n_scenes=200))
    dominant = build_scenes(train, replace(POOLS["dominant"], n_scenes=200))
    tail = build_scenes(train, replace(POOLS["tail"], n_scenes=1000))
    assert crowded.objects_per_scene().min() >= 6 and crowded.objects_per_scene().mean() > 8
    assert np.array_equal(dominant.objects_per_scene(), np.ones(200))
    # Clutter: ink outside the one object's box, on every scene.
    ink = (dominant.canvases > 0).sum(axis=(1, 2))
    object_ink = np.array([(dominant.object_images[s] > 0).sum() for s in range(200)]) * (120 / 28) ** 2
    assert np.all(ink > 0.5 * object_ink)
    share_of_scenes = [len(np.unique(tail.object_scene[tail.object_labels == c])) / len(tail) for c in range(10)]
    assert sum(share < 0.01 for share in share_of_scenes) >= 2
