"""Pruned distance updates: the same d, the same rankings as recomputing every distance."""

from __future__ import annotations

import numpy as np
import pytest

from freesel_backend import select
from freesel_backend.engine.nearest import NearestDistances, nearest_cosine_distance
from tests.helpers import random_patterns


def clustered_patterns(n_images: int, *, k: int = 4, dim: int = 24, seed: int = 0) -> list[np.ndarray]:
    """Patterns scattered around a few directions, the structure pruning feeds on."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(8, dim))
    patterns = []
    for _ in range(n_images):
        block = directions[rng.integers(0, 8, k)] + 0.3 * rng.normal(size=(k, dim))
        patterns.append((block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float32))
    return patterns


def with_copies(patterns: list[np.ndarray], n_copies: int) -> list[np.ndarray]:
    return patterns + [p.copy() for p in patterns[:n_copies]]


def assert_same_ranking(patterns: list[np.ndarray], budget: int, **kwargs: object) -> None:
    pruned = select(patterns, budget, updates="pruned", **kwargs)  # type: ignore[arg-type]
    dense = select(patterns, budget, updates="dense", **kwargs)  # type: ignore[arg-type]
    assert np.array_equal(pruned.order, dense.order)
    assert np.array_equal(pruned.distance, dense.distance)
    assert pruned.n_picked == dense.n_picked


@pytest.mark.parametrize("strategy", ["prob", "fds"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_and_dense_updates_give_identical_rankings_on_clustered_patterns(strategy: str, seed: int) -> None:
    assert_same_ranking(clustered_patterns(400, seed=seed), 150, strategy=strategy, seed=seed)


@pytest.mark.parametrize("strategy", ["prob", "fds"])
def test_pruned_and_dense_updates_give_identical_rankings_on_unstructured_patterns(strategy: str) -> None:
    assert_same_ranking(random_patterns(300, k=5, dim=32, seed=3), 100, strategy=strategy, seed=5)


@pytest.mark.parametrize("strategy", ["prob", "fds"])
def test_pruned_and_dense_updates_agree_with_duplicates_and_seeds(strategy: str) -> None:
    patterns = with_copies(clustered_patterns(200, seed=4), 60)
    assert_same_ranking(patterns, 260, strategy=strategy, seeds=[0, 7, 205], seed=9)


def test_pruning_skips_most_distances_late_and_leaves_every_value_unchanged() -> None:
    matrix = np.concatenate(clustered_patterns(500, seed=6))
    pruned, dense = NearestDistances(matrix, updates="pruned"), NearestDistances(matrix, updates="dense")
    rng = np.random.default_rng(0)
    for image in rng.choice(500, 200, replace=False):
        queries = matrix[4 * image : 4 * image + 4]
        pruned.lower_with(queries)
        dense.lower_with(queries)
        assert np.array_equal(pruned.values, dense.values)
    assert pruned.rows_computed < 0.5 * dense.rows_computed


def test_a_row_gets_the_same_distance_whichever_rows_it_is_computed_with() -> None:
    matrix = np.concatenate(random_patterns(200, k=3, dim=64, seed=1, vary_k=False))
    for n_queries in (1, 2, 5):
        queries = matrix[:n_queries]
        everything = nearest_cosine_distance(matrix, queries)
        for rows in (np.array([17]), np.arange(3, 10), np.arange(0, 600, 7)):
            assert np.array_equal(nearest_cosine_distance(matrix[rows], queries), everything[rows])


def test_unknown_update_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown distance updates"):
        select(random_patterns(5), 2, updates="sparse")  # type: ignore[arg-type]
