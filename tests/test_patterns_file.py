"""A pool's patterns saved to one .npz file come back image by image, with their provenance."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from freesel_backend.engine.patterns_file import load_patterns_file, load_provenance, save_patterns_file


def test_patterns_round_trip_keeps_each_images_rows_paths_and_provenance(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    patterns = [rng.normal(size=(k, 8)).astype(np.float32) for k in (3, 1, 5)]
    paths = ["a.jpg", "sub/b.png", "c.jpeg"]
    file = tmp_path / "patterns.npz"
    save_patterns_file(file, paths, patterns, provenance={"model": "vit_tiny", "weights": "random-init"})
    loaded_paths, loaded = load_patterns_file(file)
    assert loaded_paths == paths
    assert [p.shape for p in loaded] == [(3, 8), (1, 8), (5, 8)]
    assert all(np.array_equal(a, b) for a, b in zip(loaded, patterns))
    assert load_provenance(file) == {"model": "vit_tiny", "weights": "random-init"}


def test_an_empty_pool_round_trips_to_no_images(tmp_path: Path) -> None:
    file = tmp_path / "empty.npz"
    save_patterns_file(file, [], [], provenance={})
    assert load_patterns_file(file) == ([], [])
