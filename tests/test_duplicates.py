"""Near-duplicates: groups of images whose patterns match, and selection that skips them."""

from __future__ import annotations

import numpy as np
import pytest

from freesel_backend import select
from freesel_backend.engine import duplicates
from freesel_backend.engine.duplicates import duplicate_pair_distance, find_near_duplicates
from freesel_backend.cli.samples import scene_image
from tests.helpers import random_patterns, tiny_extractor


def jittered(patterns: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    moved = patterns + scale * rng.normal(size=patterns.shape).astype(np.float32)
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def with_near_copies(n_unique: int, copies_of: dict[int, int], *, seed: int = 0) -> list[np.ndarray]:
    """``n_unique`` random images, then ``copies_of[i]`` slightly moved copies of image ``i``,
    in shuffled pattern order."""
    rng = np.random.default_rng(seed)
    unique = random_patterns(n_unique, k=4, dim=32, seed=seed)
    patterns = list(unique)
    for original, count in copies_of.items():
        for _ in range(count):
            patterns.append(rng.permutation(jittered(unique[original], 0.01, rng)))
    return patterns


def test_near_copies_form_one_group_each_with_the_lowest_index_first() -> None:
    patterns = with_near_copies(30, {3: 2, 17: 1})
    found = find_near_duplicates(patterns, 0.02)
    assert found.groups == [[3, 30, 31], [17, 32]]
    assert found.group_of[[3, 30, 31, 17, 32]].tolist() == [0, 0, 0, 1, 1]
    assert (np.delete(found.group_of, [3, 30, 31, 17, 32]) == -1).all()
    assert found.n_flagged == 3


def test_distinct_images_form_no_group() -> None:
    found = find_near_duplicates(random_patterns(200, k=5, dim=32, seed=1), 0.02)
    assert found.groups == []
    assert (found.group_of == -1).all()


def test_an_image_is_a_duplicate_only_when_every_pattern_of_both_is_matched() -> None:
    rng = np.random.default_rng(2)
    base = random_patterns(1, k=4, dim=32, seed=2, vary_k=False)[0]
    subset = base[:2].copy()  # covered by base, but base is not covered by it
    extended = np.concatenate([jittered(base, 0.005, rng), random_patterns(1, k=1, dim=32, seed=3)[0]])
    found = find_near_duplicates([base, subset, extended], 0.02)
    assert found.groups == []
    assert duplicate_pair_distance(base, subset) > 0.02


def test_groups_are_cliques_so_a_chain_is_split() -> None:
    # a ~ b and b ~ c, but a and c are farther apart than the threshold.
    def unit(angle: float) -> np.ndarray:
        return np.array([[np.cos(angle), np.sin(angle), 0.0]], np.float32)

    step = np.arccos(1 - 0.015)  # cosine distance 0.015 per step, 1 - cos(2 step) ~ 0.06 end to end
    found = find_near_duplicates([unit(0), unit(step), unit(2 * step)], 0.02)
    assert found.groups == [[0, 1]]


def test_the_search_in_small_blocks_finds_the_same_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    patterns = with_near_copies(40, {0: 1, 5: 3, 39: 1}, seed=4)
    expected = find_near_duplicates(patterns, 0.02)
    monkeypatch.setattr(duplicates, "BLOCK_ELEMENTS", 64)
    assert find_near_duplicates(patterns, 0.02).groups == expected.groups == [[0, 40], [5, 41, 42, 43], [39, 44]]


@pytest.mark.parametrize("threshold", [0.001, 0.02])
def test_the_bfloat16_search_finds_the_same_groups_as_the_float32_one(
    monkeypatch: pytest.MonkeyPatch, threshold: float
) -> None:
    rng = np.random.default_rng(7)
    patterns = random_patterns(300, k=3, dim=64, seed=7)
    # Copies on both sides of either threshold, where bfloat16 rounding alone cannot decide: a
    # jitter of s per component moves a 64-dimensional unit pattern by a cosine distance ~32 s^2.
    distances = [0.0, 2e-4, 8e-4, 1.2e-3, 5e-3, 1.5e-2, 2.5e-2, 6e-2] * 4
    for original, distance in enumerate(distances):
        patterns.append(jittered(patterns[original], np.sqrt(distance / 32), rng))
    monkeypatch.setattr(duplicates, "BFLOAT16_BLOCK_ELEMENTS", 4096)  # several blocks
    through_bfloat16 = find_near_duplicates(patterns, threshold, bfloat16=True)
    in_float32 = find_near_duplicates(patterns, threshold, bfloat16=False)
    assert through_bfloat16.groups == in_float32.groups
    assert 0 < through_bfloat16.n_flagged < len(distances)


@pytest.mark.slow
def test_identical_images_get_identical_patterns_wherever_they_sit_in_a_batch() -> None:
    scenes = [scene_image(seed, size=(64, 64)) for seed in range(6)]
    images = scenes + [scenes[2], scenes[5]]  # copies at other batch positions
    patterns = tiny_extractor(batch_size=3, patterns_per_image=3).extract(images)
    found = find_near_duplicates(patterns, 0.02)
    assert found.groups == [[2, 6], [5, 7]]


@pytest.mark.parametrize("bad", [-0.1, 2.0, float("nan")])
def test_a_threshold_outside_the_cosine_range_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        find_near_duplicates(random_patterns(3), bad)


@pytest.mark.parametrize("strategy", ["prob", "fds"])
@pytest.mark.slow
def test_selection_never_picks_two_members_of_a_group_while_distinct_images_remain(strategy: str) -> None:
    patterns = with_near_copies(20, {0: 3, 4: 2, 9: 1, 13: 2}, seed=5)
    found = find_near_duplicates(patterns, 0.02)
    assert len(found.groups) == 4
    n_distinct = 20  # one per group plus the ungrouped images
    for seed in range(40):
        ranking = select(patterns, n_distinct, strategy=strategy, seed=seed, duplicate_threshold=found.threshold)
        picked_groups = [int(found.group_of[i]) for i in ranking.picks if found.group_of[i] >= 0]
        assert len(picked_groups) == len(set(picked_groups)) == 4, f"seed {seed}"
        assert sorted(ranking.order.tolist()) == list(range(len(patterns)))


def test_the_default_duplicate_threshold_keeps_the_default_selection() -> None:
    patterns = with_near_copies(20, {0: 3}, seed=6)
    default = select(patterns, 10, seed=3)
    explicit = select(patterns, 10, seed=3, duplicate_threshold=1e-4)
    assert np.array_equal(default.order, explicit.order)
    assert np.array_equal(default.distance, explicit.distance)
