"""A ranking as tasks see it: picks, flags, and the ranking written as JSON and read back."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from freesel_backend.engine import DuplicateGroups, Ranking
from freesel_backend.engine.ranking import (
    FAILURE_FLAG,
    NOT_PICKED,
    failures_in,
    flags_for,
    near_duplicate_of_chosen,
    rank_tail,
    rank_tasks,
    ranking_from_json,
    ranking_from_rows,
    ranking_rows,
    ranking_to_json,
)
from freesel_backend.engine.selection import DrawSettings


def groups(*members: list[int], size: int = 6) -> DuplicateGroups:
    group_of = np.full(size, -1, dtype=np.int64)
    for position, group in enumerate(members):
        group_of[group] = position
    return DuplicateGroups([list(group) for group in members], group_of, 0.001)


def test_a_failed_task_is_flagged_with_its_reason():
    assert flags_for({7: "image download failed: 404"}, {}) == {7: f"{FAILURE_FLAG}image download failed: 404"}
    assert flags_for({7: "404"}, {})[7] == "FreeSel could not use this image: 404"


def test_a_near_duplicate_is_flagged_with_the_task_it_duplicates():
    assert flags_for({}, {12: 3}) == {12: f"{NOT_PICKED} (near-duplicate of task 3)"}
    assert flags_for({}, {12: 3})[12] == "FreeSel: not picked (near-duplicate of task 3)"


def test_a_failure_outweighs_a_near_duplicate_flag_on_the_same_task():
    assert flags_for({12: "broken"}, {12: 3}) == {12: f"{FAILURE_FLAG}broken"}


def test_no_failures_and_no_duplicates_give_no_flags():
    assert flags_for({}, {}) == {}


def test_members_of_a_group_with_a_chosen_task_point_at_its_first_chosen_member():
    task_ids = [10, 11, 12, 13, 14, 15]
    duplicates = groups([0, 1, 2], [3, 4])
    assert near_duplicate_of_chosen(task_ids, duplicates, chosen={11, 12}) == {10: 11}
    assert near_duplicate_of_chosen(task_ids, duplicates, chosen={14}) == {13: 14}


def test_a_group_without_a_chosen_member_flags_nobody():
    assert near_duplicate_of_chosen([10, 11, 12, 13, 14, 15], groups([0, 1], [3, 4]), chosen={15}) == {}


def test_a_ranking_picks_the_budget_among_unlabelled_tasks_and_keeps_labelled_ones_as_seeds():
    rng = np.random.default_rng(0)
    patterns = {task_id: rng.normal(size=(2, 8)).astype(np.float32) for task_id in (101, 102, 103, 104, 105)}
    ranked = rank_tasks(patterns, {102}, {}, 2, head_size=300, draw=DrawSettings("prob", 0, 0.001))
    assert ranked.task_ids == [101, 102, 103, 104, 105]
    assert sorted(ranked.order) == [101, 103, 104, 105] and ranked.n_picked == 2
    assert ranked.picked == ranked.order[:2]
    assert ranked.ranking is not None and ranked.ranking.seeds == (1,)


def test_an_exact_copy_of_a_pick_is_flagged_as_its_near_duplicate_and_failures_are_flagged():
    rng = np.random.default_rng(1)
    patterns = {task_id: rng.normal(size=(1, 8)).astype(np.float32) for task_id in (1, 2, 3)}
    patterns[4] = patterns[1].copy()
    options = {"head_size": 300, "draw": DrawSettings("fds", 0, 0.001)}
    ranked = rank_tasks(patterns, {1}, {9: "no image"}, 1, **options)
    assert ranked.flags == {4: f"{NOT_PICKED} (near-duplicate of task 1)", 9: f"{FAILURE_FLAG}no image"}


def test_near_duplicate_groups_found_by_an_earlier_ranking_are_used_as_given():
    rng = np.random.default_rng(1)
    patterns = {task_id: rng.normal(size=(1, 8)).astype(np.float32) for task_id in (1, 2, 3)}
    options = {"head_size": 300, "draw": DrawSettings("fds", 0, 0.001)}
    earlier = groups([0, 2], size=3)  # tasks 1 and 3, as an earlier ranking found them
    ranked = rank_tasks(patterns, {1}, {}, 1, duplicates=earlier, **options)
    assert ranked.duplicates is earlier
    assert ranked.flags == {3: f"{NOT_PICKED} (near-duplicate of task 1)"}


def test_a_re_ranking_given_the_draw_prior_of_an_earlier_ranking_ranks_as_one_that_computes_it():
    patterns = random_patterns(60)
    options = {"head_size": 5, "draw": DrawSettings("typical", 0, 0.001)}
    first = rank_tasks(patterns, set(), {}, 20, **options)
    assert first.draw.strategy == "typical" and first.draw.prior is not None and first.draw.prior.shape == (60,)
    labelled = set(first.order[:3])
    earlier = {"previous": first.order, "previous_n_picked": first.n_picked}
    computed = rank_tasks(patterns, labelled, {}, 20, **earlier, **options)
    reused = rank_tasks(patterns, labelled, {}, 20, **earlier, **with_prior(options, first.draw.prior.copy()))
    assert reused.order == computed.order and reused.n_picked == computed.n_picked
    assert np.array_equal(reused.draw.prior, computed.draw.prior)
    # the prior weighs the draws: another one draws other picks
    flat = rank_tasks(patterns, set(), {}, 20, **with_prior(options, np.ones(60) + np.arange(60) * 10.0))
    assert flat.order[:20] != first.order[:20]


def test_strategies_without_a_draw_prior_rank_without_one():
    options = {"head_size": 4, "draw": DrawSettings("prob", 0, 0.001)}
    ranked = rank_tasks(random_patterns(10), set(), {}, 4, **options)
    assert ranked.draw.strategy == "prob" and ranked.draw.prior is None


def test_when_every_task_is_labelled_nothing_is_ranked():
    patterns = {1: np.ones((1, 4), np.float32), 2: -np.ones((1, 4), np.float32)}
    ranked = rank_tasks(patterns, {1, 2}, {}, 5, head_size=300, draw=DrawSettings("typical", 0, 0.001))
    assert ranked.ranking is None and ranked.order == [] and ranked.n_picked == 0


def test_no_tasks_rank_to_nothing_without_error():
    ranked = rank_tasks({}, set(), {}, 0, head_size=300, draw=DrawSettings("typical", 0, 0.001))
    assert ranked.ranking is None and ranked.order == [] and ranked.duplicates.groups == []


def with_prior(options: dict[str, Any], prior: np.ndarray) -> dict[str, Any]:
    return {**options, "draw": options["draw"].with_prior(prior)}


def random_patterns(count: int, seed: int = 3) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {100 + task: rng.normal(size=(2, 16)).astype(np.float32) for task in range(count)}


def test_a_re_ranking_after_a_label_moves_the_next_earlier_pick_into_the_head_and_keeps_the_rest_in_order():
    patterns = random_patterns(40)
    options = {"head_size": 5, "draw": DrawSettings("prob", 0, 0.001)}
    first = rank_tasks(patterns, set(), {}, 20, **options)
    assert first.n_picked == 20  # the first ranking draws every pick
    labelled = {first.order[0]}
    again = rank_tasks(patterns, labelled, {}, 20, previous=first.order, previous_n_picked=first.n_picked, **options)
    assert again.order == first.order[1:]  # labels of the head's top change nothing else of the queue
    assert again.n_picked == 19


def test_without_a_previous_ranking_the_tasks_after_the_picks_follow_by_distance():
    patterns = random_patterns(30)
    ranked = rank_tasks(patterns, set(), {}, 10, head_size=4, draw=DrawSettings("fds", 0, 0.001))
    assert ranked.n_picked == 10 and sorted(ranked.order) == sorted(patterns)
    rest = ranked.ranking.distance[10:]
    assert list(rest) == sorted(rest, reverse=True)


def test_the_tail_drawn_afresh_keeps_the_head_and_picks_up_to_the_budget():
    patterns = random_patterns(30)
    options = {"draw": DrawSettings("prob", 0, 0.001)}
    first = rank_tasks(patterns, {100}, {7: "broken"}, 12, head_size=4, **options)
    images = [patterns[task] for task in first.task_ids]
    tail = rank_tail(images, first.task_ids, first.ranking, first.duplicates, {7: "broken"}, 12, head_size=4, **options)
    assert tail.order[:4] == first.order[:4] and tail.n_picked == 12
    assert 100 not in tail.order and sorted(tail.order) == sorted(first.order)
    assert tail.flags == {7: f"{FAILURE_FLAG}broken"}


def test_failures_are_read_back_from_the_flags():
    flags = {"7": f"{FAILURE_FLAG}image download failed: 404", "8": f"{NOT_PICKED} (near-duplicate of task 3)"}
    assert failures_in(flags) == {7: "image download failed: 404"}
    assert failures_in(flags_for({7: "x"}, {8: 3})) == {7: "x"}


def test_a_ranking_survives_json_with_an_infinite_first_distance():
    ranking = Ranking(np.array([2, 0, 3]), np.array([math.inf, 0.5, 0.1234567]), 2, (1,))
    saved = ranking_to_json(ranking)
    assert saved == {"order": [2, 0, 3], "distance": [None, 0.5, 0.123457], "n_picked": 2, "seeds": [1]}
    back = ranking_from_json(saved)
    assert back.order.tolist() == [2, 0, 3] and back.n_picked == 2 and back.seeds == (1,)
    assert math.isinf(back.distance[0]) and back.distance[2] == pytest.approx(0.123457)


def test_select_rows_name_each_image_and_read_back_to_the_same_ranking():
    names = ["a.png", "b.png", "c.png", "d.png"]
    ranking = Ranking(np.array([2, 0, 3]), np.array([math.inf, 0.5, 0.25]), 2, (1,))
    rows = ranking_rows(ranking, names)
    assert rows[0] == {"path": "c.png", "rank": 1, "picked": True, "distance": None}
    assert rows[2] == {"path": "d.png", "rank": 3, "picked": False, "distance": 0.25}
    back = ranking_from_rows(rows, names)
    assert ranking_to_json(back) == ranking_to_json(ranking)


def test_rows_of_images_missing_from_the_patterns_file_are_refused():
    with pytest.raises(ValueError, match="not in the patterns file"):
        ranking_from_rows([{"path": "z.png", "rank": 1, "picked": True, "distance": None}], ["a.png"])
