"""Lazy (batched) distance updates: the same fds ranking as recomputing every distance at every
pick, prob draws from the same d^2 distribution, and true distances wherever they are read;
with the bounds lowered in bfloat16 (CPUs that multiply it natively) and in float32 (others)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from freesel_backend import select
from freesel_backend.engine import nearest
from freesel_backend.engine.nearest import NearestDistances, distinct_rows, nearest_cosine_distance, resolved_device
from tests.helpers import random_patterns


@pytest.fixture(params=[True, False], ids=["bfloat16", "float32"])
def bounds_precision(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Runs a test with bfloat16 bounds and with float32 ones, whatever this CPU does natively."""
    monkeypatch.setattr(nearest, "native_bfloat16", lambda: request.param)
    return bool(request.param)


def clustered_patterns(n_images: int, *, k: int = 4, dim: int = 24, seed: int = 0) -> list[np.ndarray]:
    """Patterns scattered around a few directions, as real patterns are."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(8, dim))
    patterns = []
    for _ in range(n_images):
        block = directions[rng.integers(0, 8, k)] + 0.3 * rng.normal(size=(k, dim))
        patterns.append((block / np.linalg.norm(block, axis=1, keepdims=True)).astype(np.float32))
    return patterns


def with_copies(patterns: list[np.ndarray], n_copies: int) -> list[np.ndarray]:
    return patterns + [p.copy() for p in patterns[:n_copies]]


def farthest_first_float64(
    patterns: list[np.ndarray], first: list[int], budget: int, threshold: float = 1e-4
) -> list[int]:
    """Farthest-first in float64, every distance recomputed: argmax takes the lowest index."""
    matrix = np.concatenate(patterns).astype(np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    owner = np.repeat(np.arange(len(patterns)), [len(p) for p in patterns])
    nearest = np.full(len(matrix), np.inf)
    picks: list[int] = []
    for image in first:
        nearest = np.minimum(nearest, _distances(matrix, matrix[owner == image], threshold))
    for _ in range(budget):
        image = int(owner[np.argmax(nearest)])
        picks.append(image)
        nearest = np.minimum(nearest, _distances(matrix, matrix[owner == image], threshold))
    return picks


def _distances(matrix: np.ndarray, queries: np.ndarray, threshold: float) -> np.ndarray:
    distance = 1.0 - (matrix @ queries.T).max(axis=1)
    return np.where(distance < threshold, 0.0, distance)


def assert_lazy_equals_dense(patterns: list[np.ndarray], budget: int, **kwargs: object) -> None:
    lazy = select(patterns, budget, strategy="fds", updates="lazy", **kwargs)  # type: ignore[arg-type]
    dense = select(patterns, budget, strategy="fds", updates="dense", **kwargs)  # type: ignore[arg-type]
    assert lazy.n_picked == dense.n_picked
    assert np.array_equal(lazy.picks, dense.picks)
    assert np.allclose(lazy.distance, dense.distance, rtol=0, atol=1e-6)
    assert sorted(lazy.order.tolist()) == sorted(dense.order.tolist())
    assert np.all(np.diff(lazy.distance[lazy.n_picked :]) <= 0)


# A pool of 600 images x 4 patterns and 250 picks: 1,000 selected patterns, so the lazy path
# flushes mid-run and searches candidates between flushes.


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fds_lazy_picks_equal_dense_picks_on_clustered_patterns(seed: int, bounds_precision: bool) -> None:
    assert_lazy_equals_dense(clustered_patterns(600, seed=seed), 250, seed=seed)


def test_fds_lazy_picks_equal_dense_picks_on_unstructured_patterns(bounds_precision: bool) -> None:
    assert_lazy_equals_dense(random_patterns(600, k=4, dim=32, seed=3, vary_k=False), 250, seed=5)


def test_fds_lazy_picks_equal_dense_picks_with_copies_seeds_and_a_duplicate_threshold(bounds_precision: bool) -> None:
    patterns = with_copies(clustered_patterns(500, seed=4), 150)
    assert_lazy_equals_dense(patterns, 300, seeds=[0, 7, 505], seed=9)
    assert_lazy_equals_dense(patterns, 300, seeds=[3], seed=9, duplicate_threshold=0.05)


def test_fds_with_a_prior_maximises_prior_times_distance_lazily_as_densely() -> None:
    patterns = clustered_patterns(600, seed=6)
    prior = np.random.default_rng(6).uniform(0.2, 1.0, size=600)
    assert_lazy_equals_dense(patterns, 250, seed=1, prior=prior)


def test_fds_lazy_picks_equal_float64_farthest_first() -> None:
    patterns = clustered_patterns(600, seed=8)
    ranking = select(patterns, 250, strategy="fds", seeds=[11])
    assert ranking.picks.tolist() == farthest_first_float64(patterns, [11], 250)


def test_fds_ties_go_to_the_lowest_pattern_index_as_argmax(bounds_precision: bool) -> None:
    # Every image has an exact copy later in the pool: each maximum is a tie, and the earlier
    # copy (lower pattern index) must win, as numpy argmax on the true distances does.
    originals = clustered_patterns(400, seed=5)
    patterns = originals + [p.copy() for p in originals]
    ranking = select(patterns, 200, strategy="fds", seeds=[0])
    assert np.all(ranking.picks < 400)
    assert ranking.picks.tolist() == farthest_first_float64(patterns, [0], 200)


def test_lazy_rest_distances_are_each_images_true_farthest_distance(bounds_precision: bool) -> None:
    patterns = random_patterns(700, k=4, dim=16, seed=2)
    ranking = select(patterns, 200, strategy="prob", seed=4)
    matrix = np.concatenate(patterns).astype(np.float64)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    owner = np.repeat(np.arange(len(patterns)), [len(p) for p in patterns])
    picked = np.isin(owner, ranking.picks)
    nearest = _distances(matrix, matrix[picked], 1e-4)
    farthest = np.maximum.reduceat(nearest, np.flatnonzero(np.diff(owner, prepend=-1)))
    rest = ranking.order[ranking.n_picked :]
    assert np.allclose(ranking.distance[ranking.n_picked :], farthest[rest], rtol=0, atol=1e-5)


def pick_frequencies(patterns: list[np.ndarray], updates: str, runs: int) -> np.ndarray:
    """How often each image is the second pick after seed image 0, over ``runs`` seeds."""
    counts = np.zeros(len(patterns))
    for seed in range(runs):
        ranking = select(patterns, 2, strategy="prob", seeds=[0], seed=seed, updates=updates)  # type: ignore[arg-type]
        counts[ranking.picks[1]] += 1
    return counts


def exact_second_pick_probabilities(patterns: list[np.ndarray]) -> np.ndarray:
    """P(image is the second pick) under the d^2 rule, summed over every first pick."""
    matrix = np.concatenate(patterns).astype(np.float64)
    owner = np.repeat(np.arange(len(patterns)), [len(p) for p in patterns])

    def pick_probabilities(selected: list[int]) -> np.ndarray:
        weights = _distances(matrix, matrix[np.isin(owner, selected)], 1e-4) ** 2
        return np.bincount(owner, weights, minlength=len(patterns)) / weights.sum()

    first = pick_probabilities([0])
    total = np.zeros(len(patterns))
    for image, p_first in enumerate(first):
        if p_first > 0:
            second = pick_probabilities([0, image])
            total += p_first * second
    return total


@pytest.mark.slow
def test_prob_lazy_and_dense_second_picks_follow_the_exact_squared_distance_distribution(
    bounds_precision: bool,
) -> None:
    # The second pick is drawn by rejection sampling against the first pick's pending patterns.
    patterns = random_patterns(12, k=2, dim=3, seed=1, vary_k=False)
    expected = 3000 * exact_second_pick_probabilities(patterns)
    for updates in ("lazy", "dense"):
        observed = pick_frequencies(patterns, updates, 3000)
        assert observed[0] == 0
        chi_square = float(((observed[1:] - expected[1:]) ** 2 / expected[1:]).sum())
        assert chi_square < stats.chi2.ppf(0.999, df=len(patterns) - 2), updates


def test_prob_dense_path_draws_as_before_and_lazy_differs_only_in_the_random_stream() -> None:
    patterns = clustered_patterns(300, seed=3)
    lazy = select(patterns, 100, strategy="prob", seed=7)
    assert np.array_equal(lazy.order, select(patterns, 100, strategy="prob", seed=7).order)
    dense = select(patterns, 100, strategy="prob", seed=7, updates="dense")
    assert lazy.order[0] == dense.order[0]  # the random first image consumes the stream alike


@pytest.mark.parametrize("bfloat16", [True, False], ids=["bfloat16", "float32"])
def test_bounds_stay_upper_bounds_and_refresh_gives_true_distances(bfloat16: bool) -> None:
    matrix = np.concatenate(random_patterns(500, k=3, dim=16, seed=6, vary_k=False))
    lazy = NearestDistances(matrix, updates="lazy", flush_queries=50, bfloat16=bfloat16)
    dense = NearestDistances(matrix, updates="dense")
    rng = np.random.default_rng(0)
    for image in rng.choice(500, 60, replace=False):
        queries = matrix[3 * image : 3 * image + 3]
        lazy.add(queries)
        dense.add(queries)
        true = dense.values()
        assert np.all(lazy.bound >= true - 1e-6)
        rows = rng.choice(len(matrix), 40, replace=False)
        assert np.allclose(lazy.refresh(rows), true[rows], rtol=0, atol=1e-6)
        one = int(rng.integers(len(matrix)))
        assert lazy.refresh_one(one) == pytest.approx(true[one], abs=1e-6)
    assert lazy.n_flushes < dense.n_flushes
    assert np.allclose(lazy.values(), dense.values(), rtol=0, atol=1e-6)


def test_a_refresh_takes_the_patterns_in_the_bounds_only_for_rows_that_may_be_nearest_to_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    matrix = np.concatenate(clustered_patterns(400, seed=9))
    lazy = NearestDistances(matrix, flush_queries=10**6, bfloat16=True)
    for image in range(0, 400, 7):  # 58 picks, their bounds lowered in bfloat16 twice
        lazy.add(matrix[4 * image : 4 * image + 4])
        if image in (98, 196):
            lazy.lower_bounds()
    assert lazy.has_pending and 0 < lazy.bounded_at < lazy.n_selected
    products: list[int] = []
    original = NearestDistances._nearest
    monkeypatch.setattr(
        NearestDistances,
        "_nearest",
        lambda self, rows, queries: products.append(len(rows)) or original(self, rows, queries),
    )
    rows = np.arange(len(matrix))
    true = nearest_cosine_distance(matrix, lazy.selected, lazy.threshold)
    assert np.allclose(lazy.refresh(rows), true, rtol=0, atol=1e-6)
    # Every row against the pending patterns, then only some against those already in the bounds.
    assert products[0] == len(matrix) and 0 < products[1] < len(matrix)
    assert lazy.is_current().all() and np.array_equal(lazy.bound, lazy.refresh(rows))


def test_bfloat16_bounds_are_within_their_rounding_of_the_true_distance_and_tighten_makes_them_exact() -> None:
    matrix = np.concatenate(clustered_patterns(400, seed=7))
    lazy = NearestDistances(matrix, flush_queries=10**6, bfloat16=True)
    for image in range(0, 400, 9):
        lazy.add(matrix[4 * image : 4 * image + 4])
    true = NearestDistances(matrix, updates="dense")
    true.add(lazy.selected)
    lazy.tighten()  # lowers the bounds with the pending patterns
    assert not lazy.has_pending and not lazy.is_exact
    assert np.all(lazy.bound >= true.values() - 1e-6)
    assert np.all(lazy.bound <= true.values() + 0.015)
    lazy.tighten()  # nothing pending: every bound becomes the true distance
    assert lazy.is_exact
    assert np.allclose(lazy.bound, true.values(), rtol=0, atol=1e-6)


def test_prob_ends_when_only_copies_of_picked_images_remain(bounds_precision: bool) -> None:
    # bfloat16 bounds of a copy stay above zero: the draws must make them exact to see that
    # nothing is left to draw, not reject proposals forever.
    originals = clustered_patterns(40, seed=8)
    ranking = select(originals + [p.copy() for p in originals], 60, strategy="prob", seed=2)
    assert sorted(ranking.order.tolist()) == list(range(80))
    assert np.all(ranking.distance[40:] == 0.0)


def test_a_distance_under_the_threshold_counts_as_zero() -> None:
    rows = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    queries = np.array([[1.0, 0.001]], np.float32) / np.float32(np.hypot(1.0, 0.001))
    distance = nearest_cosine_distance(rows, queries, threshold=1e-4)
    assert distance[0] == 0.0
    assert distance[1] == pytest.approx(0.4, abs=1e-3)


def test_unknown_update_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown distance updates"):
        select(random_patterns(5), 2, updates="sparse")  # type: ignore[arg-type]


def test_distinct_rows_numbers_copies_by_first_appearance() -> None:
    rows = np.random.default_rng(3).normal(size=(6, 40)).astype(np.float32)
    matrix = rows[[0, 1, 0, 2, 1, 3, 4, 5, 0]]
    distinct, copy_of = distinct_rows(matrix)
    assert np.array_equal(distinct, rows)
    assert copy_of.tolist() == [0, 1, 0, 2, 1, 3, 4, 5, 0]
    assert np.array_equal(distinct[copy_of], matrix)


def test_rows_equal_in_every_sampled_word_but_one_stay_distinct() -> None:
    # 40 float32 words: the fingerprint samples 16 of them, so rows that differ only in word 1
    # share it and must be told apart by the full comparison.
    base = np.random.default_rng(4).normal(size=40).astype(np.float32)
    variant = base.copy()
    variant[1] += 1.0
    matrix = np.stack([base, variant, base, variant])
    distinct, copy_of = distinct_rows(matrix)
    assert np.array_equal(distinct, matrix[:2])
    assert copy_of.tolist() == [0, 1, 0, 1]


def test_a_pool_without_copies_is_not_copied() -> None:
    matrix = np.random.default_rng(5).normal(size=(50, 8)).astype(np.float32)
    distinct, copy_of = distinct_rows(matrix)
    assert distinct is matrix
    assert np.array_equal(copy_of, np.arange(50))


def test_products_on_a_torch_device_give_the_numpy_ranking(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch on the CPU runs the same code path as on a GPU: rows copied once, products there
    # (all of them here, however small).
    monkeypatch.setattr(nearest, "DEVICE_MIN_PRODUCT", 0)
    patterns = clustered_patterns(600, seed=11)
    on_torch = select(patterns, 250, strategy="fds", seed=0, device="cpu")
    in_numpy = select(patterns, 250, strategy="fds", seed=0, device="numpy")
    assert np.array_equal(on_torch.picks, in_numpy.picks)
    # The rest may swap images whose distances tie within the last bit the two libraries round.
    assert np.allclose(on_torch.distance, in_numpy.distance, rtol=0, atol=1e-6)
    assert sorted(on_torch.order.tolist()) == sorted(in_numpy.order.tolist())


def test_products_on_a_torch_device_give_every_true_distance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nearest, "DEVICE_MIN_PRODUCT", 0)
    matrix = np.concatenate(clustered_patterns(300, seed=12))
    on_torch = NearestDistances(matrix, device="cpu", flush_queries=40)
    in_numpy = NearestDistances(matrix, device="numpy", flush_queries=40)
    for image in range(0, 300, 7):
        on_torch.add(matrix[4 * image : 4 * image + 4])
        in_numpy.add(matrix[4 * image : 4 * image + 4])
        rows = np.arange(0, len(matrix), 5)
        assert np.allclose(on_torch.refresh(rows), in_numpy.refresh(rows), rtol=0, atol=1e-6)
    assert on_torch.n_flushes == in_numpy.n_flushes > 1
    assert np.allclose(on_torch.values(), in_numpy.values(), rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_products_on_a_gpu_give_the_numpy_ranking() -> None:
    patterns = clustered_patterns(600, seed=13)
    on_gpu = select(patterns, 250, strategy="fds", seed=0, device="cuda")
    in_numpy = select(patterns, 250, strategy="fds", seed=0, device="numpy")
    assert np.array_equal(on_gpu.picks, in_numpy.picks)
    assert np.allclose(on_gpu.distance, in_numpy.distance, rtol=0, atol=1e-5)


def test_auto_keeps_small_pools_in_numpy_and_unknown_devices_are_refused() -> None:
    assert resolved_device("auto", 1_000) == "numpy"
    with pytest.raises(ValueError, match="unknown selection device 'tpu9'"):
        select(random_patterns(5), 2, device="tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
            select(random_patterns(5), 2, device="cuda")
