"""The default ``typical`` strategy (one representative per cluster of the whitened mean
patterns) and the typicality prior that weights its remaining d^2 draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from freesel_backend import select
from freesel_backend.engine import density
from freesel_backend.engine.density import (
    cluster_representatives,
    coverage_order,
    image_descriptors,
    typicality,
    typicality_prior,
    whitened,
)
from tests.helpers import random_patterns
from tests.test_selection import assert_is_full_ranking


def clustered_with_outliers(n_cluster: int, n_outliers: int, *, dim: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Images 0..n_cluster-1 tightly around one direction, then scattered outliers."""
    rng = np.random.default_rng(seed)
    centre = np.eye(dim, dtype=np.float32)[0]
    cluster = [centre + 0.05 * rng.normal(size=dim).astype(np.float32) for _ in range(n_cluster)]
    outliers = [rng.normal(size=dim).astype(np.float32) for _ in range(n_outliers)]
    return [(v / np.linalg.norm(v))[None, :] for v in cluster + outliers]


def stacked(patterns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    counts = np.array([len(p) for p in patterns])
    return np.concatenate(patterns), np.concatenate([[0], np.cumsum(counts)[:-1]])


def test_images_in_a_dense_cluster_are_more_typical_than_outliers() -> None:
    patterns = clustered_with_outliers(30, 10)
    typical = typicality(image_descriptors(*stacked(patterns)), neighbours=5)
    assert typical[:30].min() > typical[30:].max()


def test_an_image_descriptor_is_the_normalised_mean_of_its_patterns() -> None:
    patterns = [np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.array([[0.0, 2.0]], np.float32)]
    descriptors = image_descriptors(*stacked(patterns))
    np.testing.assert_allclose(descriptors, [[math.sqrt(0.5), math.sqrt(0.5)], [0.0, 1.0]], atol=1e-6)


def test_an_image_is_not_its_own_neighbour() -> None:
    points = np.eye(3, dtype=np.float32)  # every pair at cosine distance 1
    np.testing.assert_allclose(typicality(points, neighbours=2), [1.0, 1.0, 1.0])


def test_large_pools_measure_density_against_a_sample_with_the_same_ordering(monkeypatch) -> None:
    patterns = clustered_with_outliers(60, 20, seed=3)
    descriptors = image_descriptors(*stacked(patterns))
    exact = typicality(descriptors, neighbours=5)
    monkeypatch.setattr(density, "MAX_REFERENCE_IMAGES", 40)
    sampled = typicality(descriptors, neighbours=5)
    assert sampled[:60].min() > sampled[60:].max()
    assert np.corrcoef(exact, sampled)[0, 1] > 0.9


def test_prior_is_at_most_one_and_sharper_with_strength() -> None:
    matrix, starts = stacked(clustered_with_outliers(20, 5))
    mild = typicality_prior(matrix, starts, strength=1.0, neighbours=5)
    sharp = typicality_prior(matrix, starts, strength=4.0, neighbours=5)
    assert mild.max() == pytest.approx(1.0) and sharp.max() == pytest.approx(1.0)
    assert sharp[20:].max() < mild[20:].max()


@pytest.mark.slow
def test_draws_follow_squared_distance_times_prior() -> None:
    # One seed at e0 and three candidates at cosine distance 0.2, 0.4 and 0.8 with priors
    # 4, 1 and 0.25: weights 0.16 : 0.16 : 0.16, equally likely.
    def at_distance(d: float) -> np.ndarray:
        return np.array([[1.0 - d, math.sqrt(1.0 - (1.0 - d) ** 2)]], dtype=np.float32)

    patterns = [np.array([[1.0, 0.0]], np.float32), at_distance(0.2), at_distance(0.4), at_distance(0.8)]
    prior = np.array([1.0, 4.0, 1.0, 0.25])
    draws = 3000
    counts = np.zeros(4)
    for seed in range(draws):
        counts[select(patterns, 1, strategy="prob", seeds=[0], seed=seed, prior=prior).order[0]] += 1
    expected = draws / 3
    chi_square = float(((counts[1:] - expected) ** 2 / expected).sum())
    assert counts[0] == 0
    assert chi_square < 13.8  # 2 degrees of freedom, p = 0.001


def test_typical_picks_fewer_outliers_than_the_papers_draws_at_tiny_budgets() -> None:
    # Two dense clusters and as many scattered outliers: with two picks, d^2 draws often take
    # an outlier; typicality-weighted draws take one image from each cluster.
    rng = np.random.default_rng(5)
    dim = 16
    centres = np.eye(dim, dtype=np.float32)[:2]
    dense = [c + 0.05 * rng.normal(size=dim).astype(np.float32) for c in centres for _ in range(40)]
    outliers = [rng.normal(size=dim).astype(np.float32) for _ in range(40)]
    patterns = [(v / np.linalg.norm(v))[None, :] for v in dense + outliers]

    def outliers_picked(strategy: str) -> int:
        return sum(int((select(patterns, 2, strategy=strategy, seed=s).picks >= 80).sum()) for s in range(30))

    assert outliers_picked("typical") < outliers_picked("prob") / 2


def test_typical_is_the_default_strategy() -> None:
    patterns = random_patterns(40, k=3, dim=8, seed=2)
    assert np.array_equal(select(patterns, 10, seed=7).order, select(patterns, 10, strategy="typical", seed=7).order)


def test_typical_ranks_every_image_and_leaves_seeds_out() -> None:
    patterns = random_patterns(60, k=3, dim=8, seed=11)
    ranking = select(patterns, 15, strategy="typical", seeds=[3, 4], seed=0)
    assert_is_full_ranking(ranking, 60, seeds=(3, 4))
    assert ranking.n_picked == 15


@pytest.mark.parametrize("prior", [np.ones(3), np.array([1.0, 0.0, 1.0, 1.0]), np.array([1.0, np.nan, 1.0, 1.0])])
def test_a_bad_prior_gets_a_specific_error(prior: np.ndarray) -> None:
    with pytest.raises(ValueError, match="prior must hold one finite value > 0 per image"):
        select(random_patterns(4, seed=0), 2, strategy="prob", prior=prior)


def blobs(sizes: list[int], *, dim: int = 12, seed: int = 0) -> list[np.ndarray]:
    """Well-separated tight blobs of the given sizes, one pattern per image, in blob order."""
    rng = np.random.default_rng(seed)
    images = []
    for blob, size in enumerate(sizes):
        centre = np.eye(dim, dtype=np.float32)[blob]
        for _ in range(size):
            vector = centre + 0.05 * rng.normal(size=dim).astype(np.float32)
            images.append((vector / np.linalg.norm(vector))[None, :])
    return images


def blob_of(image: int, sizes: list[int]) -> int:
    return int(np.searchsorted(np.cumsum(sizes), image, side="right"))


def test_cluster_representatives_take_one_image_per_cluster_largest_first_nearest_its_centre() -> None:
    sizes = [10, 30, 20]
    descriptors = image_descriptors(*stacked(blobs(sizes)))
    picks = cluster_representatives(descriptors, 3, covered=np.zeros(60, bool), seed=0)
    assert [blob_of(int(p), sizes) for p in picks] == [1, 2, 0]
    for pick in picks:
        members = np.flatnonzero([blob_of(i, sizes) == blob_of(int(pick), sizes) for i in range(60)])
        centre = descriptors[members].mean(axis=0)
        assert pick == members[np.argmin(((descriptors[members] - centre) ** 2).sum(axis=1))]


def test_clusters_holding_a_covered_image_get_no_representative() -> None:
    sizes = [10, 30, 20]
    covered = np.zeros(60, bool)
    covered[15] = True  # in the largest blob
    picks = cluster_representatives(image_descriptors(*stacked(blobs(sizes))), 3, covered=covered, seed=0)
    assert [blob_of(int(p), sizes) for p in picks] == [2, 0]


def test_typical_covers_every_cluster_before_a_second_pick_in_any() -> None:
    sizes = [12, 25, 8, 15]
    patterns = blobs(sizes, seed=4)
    for seed in range(5):
        picks = select(patterns, 4, strategy="typical", seed=seed).picks
        assert sorted(blob_of(int(p), sizes) for p in picks) == [0, 1, 2, 3]


def test_typical_with_seeds_fills_the_clusters_the_seeds_leave_uncovered() -> None:
    sizes = [12, 25, 8, 15]
    patterns = blobs(sizes, seed=4)
    seeds = [0, 12]  # blobs 0 and 1 are labelled already
    ranking = select(patterns, 2, strategy="typical", seeds=seeds, seed=0)
    assert sorted(blob_of(int(p), sizes) for p in ranking.picks) == [2, 3]
    assert_is_full_ranking(ranking, 60, seeds=tuple(seeds))


def test_with_the_whole_pool_as_budget_the_queue_starts_typical_and_covers_every_cluster() -> None:
    # The backend's default budget is the whole pool (capped): every image is then its own
    # cluster, and only the coverage order keeps the top of the queue typical and spread out.
    sizes = [30, 4, 4, 4]
    patterns = blobs(sizes, seed=4)
    for seed in range(5):
        ranking = select(patterns, sum(sizes), strategy="typical", seed=seed)
        assert ranking.n_picked == sum(sizes)
        assert blob_of(int(ranking.picks[0]), sizes) == 0  # the dense blob's most typical image
        assert sorted(blob_of(int(p), sizes) for p in ranking.picks[:4]) == [0, 1, 2, 3]
        assert_is_full_ranking(ranking, sum(sizes))


def test_coverage_order_starts_typical_then_spreads_out_and_respects_labelled_images() -> None:
    descriptors = np.eye(4, dtype=np.float32)[[0, 0, 1, 2, 3]]
    weights = np.array([0.5, 1.0, 0.9, 0.8, 0.2])
    order = coverage_order(descriptors, weights)
    assert order.tolist()[:4] == [1, 2, 3, 4]  # the copy of row 1 (distance 0) comes last
    after_labelled = coverage_order(descriptors, weights, taken=np.eye(4, dtype=np.float32)[[1]])
    assert after_labelled[0] == 1  # row 2's direction is labelled: the most typical of the rest


def test_whitened_descriptors_are_unit_rows_on_at_most_the_asked_components() -> None:
    descriptors = image_descriptors(*stacked(random_patterns(50, k=2, dim=16, seed=1)))
    white = whitened(descriptors, components=4)
    assert white.shape == (50, 4)
    np.testing.assert_allclose(np.linalg.norm(white, axis=1), 1.0, atol=1e-5)
    copies = np.repeat(descriptors[:1], 3, axis=0)
    assert np.array_equal(whitened(copies), copies)  # no variance: nothing to whiten


def test_whitening_gives_every_direction_of_variation_the_same_weight() -> None:
    # Spread 2 : 1.5 : 1 along three directions; whitened, each weighs the same in the
    # distances k-means works with (typical clusters these rows: the widest directions no
    # longer decide the clusters alone).
    rng = np.random.default_rng(0)
    points = np.zeros((4000, 6))
    points[:, 0] = 1.0
    points[:, 1:4] = rng.normal(size=(4000, 3)) * [0.02, 0.015, 0.01]
    second_moments = (whitened(points) ** 2).mean(axis=0)
    np.testing.assert_allclose(second_moments, 1 / 3, atol=0.02)


def test_whitening_leaves_out_directions_of_mere_noise() -> None:
    # Three blobs span two directions; the other ten hold only the blobs' small noise. Scaled
    # to unit variance, that noise would weigh as much as the blobs' separation.
    descriptors = image_descriptors(*stacked(blobs([10, 30, 20], seed=0)))
    assert whitened(descriptors).shape == (60, 2)

