"""FreeSel selection: full rankings, fds = brute-force farthest-first, prob draws by d^2
(the typicality prior of the default strategy is specified in test_density.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from freesel_backend import STRATEGIES, select
from freesel_backend.engine.selection import (
    DUPLICATE_TOLERANCE, DrawSettings, extend_head, rerank_head, resolve_budget,
)
from tests.helpers import random_patterns


def brute_force_farthest_first(patterns: list[np.ndarray], first: list[int], budget: int) -> list[int]:
    """Farthest-first over patterns, written the slow obvious way (double loop, float64)."""

    def distance(p: np.ndarray, q: np.ndarray) -> float:
        d = 1.0 - float(np.dot(p.astype(np.float64), q.astype(np.float64)))
        return 0.0 if d < DUPLICATE_TOLERANCE else d

    selected = list(first)
    picks: list[int] = []
    while len(picks) < budget:
        best_image, best_distance = -1, -1.0
        for image, image_patterns in enumerate(patterns):
            if image in selected:
                continue
            for pattern in image_patterns:
                nearest = min(distance(pattern, q) for s in selected for q in patterns[s])
                if nearest > best_distance:
                    best_image, best_distance = image, nearest
        selected.append(best_image)
        picks.append(best_image)
    return picks


def farthest_pattern_distance(patterns: list[np.ndarray], image: int, selected: list[int]) -> float:
    chosen = np.concatenate([patterns[s] for s in selected]).astype(np.float64)
    similarity = patterns[image].astype(np.float64) @ chosen.T
    return float((1.0 - similarity.max(axis=1)).max())


def assert_is_full_ranking(ranking, n_images: int, seeds: tuple[int, ...] = ()) -> None:
    expected = sorted(set(range(n_images)) - set(seeds))
    assert sorted(ranking.order.tolist()) == expected
    assert len(ranking.distance) == len(ranking.order)
    assert not np.isnan(ranking.distance).any()


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_fds_equals_brute_force_farthest_first_from_the_same_start(data_seed: int) -> None:
    patterns = random_patterns(40, k=4, dim=8, seed=data_seed)
    ranking = select(patterns, 12, strategy="fds", seed=data_seed)
    first = int(ranking.order[0])
    assert ranking.order[:12].tolist() == [first] + brute_force_farthest_first(patterns, [first], 11)


def test_fds_with_seeds_equals_brute_force() -> None:
    patterns = random_patterns(30, k=3, dim=6, seed=7)
    ranking = select(patterns, 10, strategy="fds", seeds=[3, 17])
    assert ranking.order[:10].tolist() == brute_force_farthest_first(patterns, [3, 17], 10)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ranking_lists_every_image_once_picks_first_then_by_decreasing_distance(strategy: str) -> None:
    patterns = random_patterns(60, k=5, dim=12, seed=3)
    ranking = select(patterns, 15, strategy=strategy, seed=11)
    assert_is_full_ranking(ranking, 60)
    assert ranking.n_picked == 15
    rest = ranking.distance[15:]
    assert np.all(np.diff(rest) <= 0)
    picks = ranking.order[:15].tolist()
    for image, distance in zip(ranking.order[15:], rest):
        assert distance == pytest.approx(farthest_pattern_distance(patterns, int(image), picks), abs=1e-5)


def test_a_pick_reports_its_distance_when_drawn_and_the_first_pick_without_seeds_is_infinite() -> None:
    patterns = random_patterns(20, k=2, dim=8, seed=5)
    ranking = select(patterns, 6, strategy="fds", seed=0)
    assert math.isinf(ranking.distance[0])
    picks = ranking.order[:6].tolist()
    for position in range(1, 6):
        image = picks[position]
        assert ranking.distance[position] == pytest.approx(
            farthest_pattern_distance(patterns, image, picks[:position]), abs=1e-5
        )
    # farthest-first draws ever-closer images
    assert np.all(np.diff(ranking.distance[1:6]) <= 1e-6)


@pytest.mark.parametrize("seeds", [(), (4, 9)])
def test_typical_picks_report_their_distance_to_the_picks_before_them_across_batches(seeds: tuple[int, ...]) -> None:
    # 70 representatives: more than two batches of picks brought up to date together.
    patterns = random_patterns(150, k=3, dim=12, seed=8)
    ranking = select(patterns, 70, strategy="typical", seeds=seeds, seed=1)
    picks = ranking.order[:70].tolist()
    for position in range(0 if seeds else 1, 70):
        expected = farthest_pattern_distance(patterns, picks[position], list(seeds) + picks[:position])
        assert ranking.distance[position] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_prob_draws_follow_squared_distance() -> None:
    # One seed pattern e0 and three candidates at cosine distance 0.2, 0.4 and 0.8 from it:
    # d^2 weights 0.04 : 0.16 : 0.64, i.e. probabilities 1/21, 4/21, 16/21.
    def at_distance(d: float) -> np.ndarray:
        return np.array([[1.0 - d, math.sqrt(1.0 - (1.0 - d) ** 2)]], dtype=np.float32)

    patterns = [np.array([[1.0, 0.0]], np.float32), at_distance(0.2), at_distance(0.4), at_distance(0.8)]
    draws = 4000
    counts = np.zeros(4)
    for seed in range(draws):
        counts[select(patterns, 1, strategy="prob", seeds=[0], seed=seed).order[0]] += 1
    expected = draws * np.array([0.0, 1 / 21, 4 / 21, 16 / 21])
    chi_square = float((((counts - expected) ** 2)[1:] / expected[1:]).sum())
    assert counts[0] == 0
    assert chi_square < 13.8  # 2 degrees of freedom, p = 0.001


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_copy_of_a_picked_image_is_never_picked_while_unseen_content_remains(strategy: str) -> None:
    unique = random_patterns(12, k=3, dim=10, seed=9)
    copies = [p.copy() for p in unique[:8]]
    patterns = unique + copies  # image 12 + i is a copy of image i
    for seed in range(25):
        ranking = select(patterns, 12, strategy=strategy, seed=seed)
        originals = [int(i) if i < 12 else int(i) - 12 for i in ranking.order[:12]]
        assert len(set(originals)) == 12, f"seed {seed} picked two copies of one image"
        assert_is_full_ranking(ranking, 20)
        assert np.all(ranking.distance[12:] == 0.0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_when_only_copies_remain_the_order_still_completes(strategy: str) -> None:
    same = np.ones((1, 4), np.float32) / 2.0
    patterns = [same.copy() for _ in range(6)]
    ranking = select(patterns, 6, strategy=strategy, seed=1)
    assert_is_full_ranking(ranking, 6)
    assert ranking.n_picked == 6
    assert np.all(ranking.distance[1:] == 0.0)


def test_seeds_steer_the_picks_and_are_left_out_of_the_ranking() -> None:
    rng = np.random.default_rng(0)
    centre_a, centre_b = np.eye(8, dtype=np.float32)[0], np.eye(8, dtype=np.float32)[1]

    def near(centre: np.ndarray) -> np.ndarray:
        vector = centre + 0.05 * rng.normal(size=8).astype(np.float32)
        return (vector / np.linalg.norm(vector))[None, :]

    patterns = [near(centre_a) for _ in range(10)] + [near(centre_b) for _ in range(10)]
    ranking = select(patterns, 1, strategy="fds", seeds=range(10))
    assert_is_full_ranking(ranking, 20, seeds=tuple(range(10)))
    assert ranking.seeds == tuple(range(10))
    assert ranking.order[0] >= 10  # the first pick comes from the cluster no seed covers


def test_incremental_continuation_with_earlier_picks_as_seeds_matches_one_longer_run() -> None:
    patterns = random_patterns(50, k=3, dim=10, seed=4)
    long_run = select(patterns, 10, strategy="fds", seed=2)
    first_half = long_run.order[:5].tolist()
    continued = select(patterns, 5, strategy="fds", seeds=first_half)
    assert continued.order[:5].tolist() == long_run.order[5:10].tolist()


@pytest.mark.parametrize("strategy", ["typical", "prob"])
def test_same_seed_same_ranking_other_seed_other_ranking(strategy: str) -> None:
    patterns = random_patterns(80, k=4, dim=12, seed=6)
    first = select(patterns, 20, strategy=strategy, seed=123)
    assert np.array_equal(first.order, select(patterns, 20, strategy=strategy, seed=123).order)
    assert not np.array_equal(first.order, select(patterns, 20, strategy=strategy, seed=124).order)


def test_a_budget_larger_than_the_pool_picks_everything() -> None:
    patterns = random_patterns(7, seed=8)
    ranking = select(patterns, 100, seeds=[0, 1])
    assert ranking.n_picked == 5
    assert_is_full_ranking(ranking, 7, seeds=(0, 1))


def test_patterns_need_not_be_normalised_by_the_caller() -> None:
    patterns = random_patterns(15, seed=10)
    scaled = [3.5 * p for p in patterns]
    assert np.array_equal(select(patterns, 5, seed=1).order, select(scaled, 5, seed=1).order)


@pytest.mark.parametrize(
    ("patterns", "kwargs", "message"),
    [
        ([], {}, "at least one image"),
        ([np.zeros((0, 4), np.float32)], {}, "non-empty"),
        ([np.ones((1, 4), np.float32), np.ones((1, 5), np.float32)], {}, "same dimension"),
        ([np.full((1, 4), np.nan, np.float32)], {}, "finite and non-zero"),
        ([np.zeros((1, 4), np.float32)], {}, "finite and non-zero"),
        ([np.ones((1, 4), np.float32)], {"strategy": "random"}, "unknown strategy"),
        ([np.ones((1, 4), np.float32)], {"seeds": [3]}, "out of range"),
    ],
)
def test_bad_input_gets_a_specific_error(patterns, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        select(patterns, 1, **kwargs)


def test_budget_is_a_count_or_a_fraction_of_the_pool() -> None:
    assert resolve_budget(10, 100) == 10
    assert resolve_budget(500, 100) == 100
    assert resolve_budget(0.25, 100) == 25
    assert resolve_budget(0.001, 100) == 1
    for bad in (-1, 2.5, float("nan")):
        with pytest.raises(ValueError):
            resolve_budget(bad, 100)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_first_ranking_draws_every_pick_as_select_does_and_orders_every_other_image_by_distance(strategy) -> None:
    patterns = random_patterns(40, seed=21)
    ranking = rerank_head(patterns, 6, 25, seeds=[3, 9], draw=DrawSettings(strategy, seed=4))
    drawn = select(patterns, 25, strategy=strategy, seeds=[3, 9], seed=4)
    assert ranking.order.tolist() == drawn.order.tolist() and ranking.n_picked == 25
    assert np.array_equal(ranking.distance, drawn.distance) and ranking.seeds == (3, 9)
    again = rerank_head(patterns, 6, 25, seeds=[3, 9], draw=DrawSettings(strategy, seed=4))
    assert again.order.tolist() == ranking.order.tolist()


def test_a_head_reranking_keeps_the_earlier_order_and_picks_of_the_tail() -> None:
    patterns = random_patterns(30, seed=22)
    earlier = select(patterns, 12, seeds=[0], seed=1)
    labelled = [0, int(earlier.order[0]), int(earlier.order[20])]  # a pick and a task of the tail got labels
    ranking = rerank_head(
        patterns, 4, 12, previous_order=earlier.order, previous_n_picked=earlier.n_picked, seeds=labelled,
        draw=DrawSettings(seed=2),
    )
    head = ranking.order[:4].tolist()
    tail = [int(i) for i in earlier.order if int(i) not in head and int(i) not in labelled]
    assert ranking.order[4:].tolist() == tail
    earlier_picks_left = len([i for i in earlier.picks.tolist() if i not in head and i not in labelled])
    assert ranking.n_picked == min(12, 4 + earlier_picks_left)
    assert sorted(ranking.order.tolist()) == sorted(set(range(30)) - set(labelled))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_labels_from_the_top_of_the_head_move_the_next_earlier_picks_up_and_draw_nothing(strategy) -> None:
    patterns = random_patterns(60, seed=25)
    earlier = rerank_head(patterns, 10, 30, seeds=[0], draw=DrawSettings(strategy, seed=1))
    labelled = [0, *earlier.order[:3].tolist()]  # annotators took the first three picks
    ranking = rerank_head(
        patterns, 10, 30, previous_order=earlier.order, previous_n_picked=earlier.n_picked,
        seeds=labelled, draw=DrawSettings(strategy, seed=2),
    )
    assert ranking.order.tolist() == earlier.order[3:].tolist()
    assert ranking.n_picked == 27


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_once_the_earlier_picks_run_out_the_end_of_the_head_is_drawn_afresh(strategy) -> None:
    patterns = random_patterns(60, seed=25)
    earlier = rerank_head(patterns, 10, 10, seeds=[0], draw=DrawSettings(strategy, seed=1))
    labelled = [0, *earlier.order[:3].tolist()]
    ranking = rerank_head(
        patterns, 10, 30, previous_order=earlier.order, previous_n_picked=earlier.n_picked,
        seeds=labelled, draw=DrawSettings(strategy, seed=2),
    )
    assert ranking.order[:7].tolist() == earlier.order[3:10].tolist()
    drawn = select(patterns, 3, strategy=strategy, seeds=[*labelled, *earlier.order[3:10].tolist()], seed=2)
    assert ranking.order[7:10].tolist() == drawn.picks.tolist()


def test_a_label_on_the_second_pick_keeps_a_first_pick_drawn_without_labels_at_the_top() -> None:
    patterns = random_patterns(40, seed=27)
    earlier = rerank_head(patterns, 6, 20, draw=DrawSettings("fds", seed=1))  # no label yet: the first pick is random
    second = int(earlier.order[1])
    ranking = rerank_head(
        patterns, 6, 20, previous_order=earlier.order, previous_n_picked=earlier.n_picked,
        seeds=[second], draw=DrawSettings("fds", seed=2),
    )
    assert ranking.order[:5].tolist() == [int(i) for i in earlier.order[:6] if int(i) != second]


def test_an_image_new_since_the_earlier_ranking_and_unlike_every_label_comes_before_the_kept_picks() -> None:
    patterns = random_patterns(40, seed=28)
    unlike = -np.mean([p.mean(axis=0) for p in patterns], axis=0, keepdims=True)  # opposite to all of them
    earlier = rerank_head(patterns, 6, 20, seeds=[0], draw=DrawSettings("fds", seed=1))
    with_new = [*patterns, unlike / np.linalg.norm(unlike)]
    labelled = [0, int(earlier.order[0])]
    ranking = rerank_head(
        with_new, 6, 20, previous_order=earlier.order, previous_n_picked=earlier.n_picked,
        seeds=labelled, draw=DrawSettings("fds", seed=2),
    )
    assert 40 in ranking.order[:6].tolist()
    assert ranking.order[:6].tolist() == select(with_new, 6, strategy="fds", seeds=labelled, seed=2).picks.tolist()


def test_a_label_that_covers_a_pick_of_the_head_takes_it_out_of_the_head() -> None:
    patterns = random_patterns(40, seed=26)
    earlier = rerank_head(patterns, 6, 20, seeds=[0], draw=DrawSettings("fds", seed=1))
    covered, copy = int(earlier.order[3]), int(earlier.order[-1])
    patterns[copy] = patterns[covered].copy()  # a task far down the queue shows the same as a pick, and gets a label
    ranking = rerank_head(
        patterns, 6, 20, previous_order=earlier.order, previous_n_picked=earlier.n_picked,
        seeds=[0, copy], draw=DrawSettings("fds", seed=2),
    )
    others = [int(i) for i in earlier.order[:6] if int(i) != covered]
    assert ranking.order[:5].tolist() == others and covered not in ranking.order[:6].tolist()


def test_an_image_new_to_the_ranking_comes_after_the_tail_it_did_not_belong_to() -> None:
    patterns = random_patterns(20, seed=23)
    earlier_order = [image for image in select(patterns, 5, seed=1).order.tolist() if image not in (7, 11)]
    ranking = rerank_head(patterns, 3, 5, previous_order=earlier_order, previous_n_picked=5, draw=DrawSettings(seed=1))
    newcomers = [image for image in (7, 11) if image not in ranking.order[:3].tolist()]
    assert sorted(ranking.order[-len(newcomers) :].tolist()) == sorted(newcomers)


def test_the_tail_drawn_afresh_keeps_the_head_and_draws_the_rest_with_it_as_seeds() -> None:
    patterns = random_patterns(40, seed=24)
    head = rerank_head(patterns, 5, 15, seeds=[2], draw=DrawSettings(seed=3))
    ranking = extend_head(patterns, head.order[:5], head.distance[:5], 15, seeds=[2], draw=DrawSettings(seed=3))
    tail = select(patterns, 10, seeds=[2, *head.order[:5].tolist()], seed=3)
    assert ranking.order.tolist() == head.order[:5].tolist() + tail.order.tolist()
    assert np.array_equal(ranking.distance[:5], head.distance[:5])
    assert np.array_equal(ranking.distance[5:], tail.distance)
    assert ranking.n_picked == 15 and ranking.seeds == (2,)
