"""Planning a re-ranking's writes: which scores change so that Label Studio (lowest score first)
serves the new head exactly in rank order, and how few change."""

from __future__ import annotations

import random

import pytest

from freesel_backend.server.writeout.plan import (
    HIGHEST_SCORE,
    LOWEST_SCORE,
    PICK_FLAG,
    ScorePlan,
    full_scores,
    longest_increasing,
    plan_scores,
    wanted_flags,
)


def served_after(order: list[int], scores: dict[int, float], head: int) -> list[int]:
    """The first ``head`` tasks Label Studio serves once the plan is written."""
    plan = plan_scores(order, scores, head)
    written = {**scores, **dict(plan.patch), **dict(plan.create)}
    return sorted(order, key=lambda task: written[task])[:head]


def test_longest_increasing_subsequence_positions():
    assert longest_increasing([3.0, 1.0, 2.0, 5.0, 4.0, 6.0]) == [1, 2, 4, 5]
    assert longest_increasing([]) == []


def test_an_unchanged_order_writes_nothing_and_a_labelled_top_task_leaves_the_rest_as_is():
    order = list(range(1000))
    scores = full_scores(order)
    assert plan_scores(order, scores, 300).patch == [] and plan_scores(order[1:], scores, 300).patch == []


def test_tasks_moved_within_or_into_the_head_are_the_only_ones_rescored():
    order = list(range(1000))
    scores = full_scores(order)
    moved = [500, 7, 42]  # 500 comes from the tail; 7 and 42 move up
    new_order = moved + [t for t in order if t not in moved]
    plan = plan_scores(new_order, scores, 300)
    assert {task for task, _ in plan.patch} == {500, 7, 42} and plan.create == []
    assert served_after(new_order, scores, 300) == new_order[:300]


def test_tasks_pushed_out_of_the_head_move_behind_it_and_new_tasks_get_a_prediction():
    order = list(range(100))
    scores = full_scores(order)
    new_order = [1000, 1001] + order[10:] + order[:10]  # two new tasks first, the old top ten last
    plan = plan_scores(new_order, scores, 20)
    assert {task for task, _ in plan.create} == {1000, 1001}
    assert served_after(new_order, {**scores}, 20) == new_order[:20]
    tail_new = plan_scores(order + [2000], scores, 20).create
    assert [task for task, _ in tail_new] == [2000] and tail_new[0][1] > max(scores.values())


def test_random_reorderings_keep_the_head_exact_with_writes_near_the_number_of_moves():
    rng = random.Random(7)
    order = list(range(2000))
    scores = full_scores(order)
    for _ in range(40):
        order = order[2:]  # two labelled
        for _ in range(5):
            order.insert(rng.randrange(150), order.pop(rng.randrange(len(order))))
        plan = plan_scores(order, scores, 300)
        assert len(plan.patch) + len(plan.create) <= 2 * 5 + 2 and not plan.renormalise
        assert served_after(order, scores, 300) == order[:300]
        scores = {**scores, **dict(plan.patch)}


def test_labels_from_the_top_and_new_picks_at_the_end_of_the_head_never_run_out_of_room():
    """What a re-ranking that keeps the earlier head does, round after round: ten labelled from
    the top, ten picks from anywhere in the tail appended to the head."""
    rng = random.Random(8)
    order = list(range(5000))
    scores = full_scores(order)
    for _ in range(200):
        order = order[10:]
        drawn = [order.pop(rng.randrange(300, len(order))) for _ in range(10)]
        order = order[:290] + drawn + order[290:]
        plan = plan_scores(order, scores, 300)
        assert not plan.renormalise and plan.create == [] and len(plan.patch) <= 3 * 10
        assert served_after(order, scores, 300) == order[:300]
        scores = {**scores, **dict(plan.patch)}


def test_scores_without_room_between_neighbours_ask_for_a_fresh_version():
    scores = {1: 0.0, 2: 1e-12}
    assert plan_scores([1, 3, 2], {**scores, 3: 5.0}, 3).renormalise


def test_the_pick_flag_goes_on_picks_within_the_head_only_besides_the_other_flags():
    target = {"order": [5, 6, 7, 8], "n_picked": 3, "flags": {"9": "FreeSel could not use this image: 404", "8": "dup"}}
    assert wanted_flags(target, head_size=2) == {
        5: PICK_FLAG,
        6: PICK_FLAG,
        8: "dup",
        9: "FreeSel could not use this image: 404",
    }


def test_a_pick_that_left_the_head_keeps_its_flag_while_it_remains_a_pick():
    target = {"order": [5, 6, 7, 8, 4], "n_picked": 4, "flags": {}}
    current = {7: PICK_FLAG, 4: PICK_FLAG, 8: "dup"}
    assert wanted_flags(target, head_size=2, current=current) == {5: PICK_FLAG, 6: PICK_FLAG, 7: PICK_FLAG}


def test_every_planned_score_is_one_label_studio_imports_between_zero_and_one():
    rng = random.Random(9)
    order = list(range(3000))
    scores = full_scores(order)
    new_task = 10_000
    for _ in range(60):
        order = order[5:]
        for _ in range(5):  # moved to the front, from anywhere
            order.insert(0, order.pop(rng.randrange(len(order))))
        for _ in range(30):  # imported meanwhile: in the head, or behind everything
            order.insert(rng.choice([rng.randrange(300), len(order)]), new_task)
            new_task += 1
        plan = plan_scores(order, scores, 300)
        written = dict(plan.patch + plan.create)
        assert all(0.0 <= score <= 1.0 for score in written.values()) and not plan.renormalise
        assert served_after(order, scores, 300) == order[:300]
        scores = {**scores, **written}


def test_a_fresh_version_leaves_room_before_its_first_and_after_its_last_score():
    scores = full_scores(list(range(50_000)))
    assert min(scores.values()) >= 0.25 and max(scores.values()) < 0.5


def test_tasks_imported_in_small_rounds_behind_everything_keep_their_order_without_a_fresh_version():
    order = list(range(1000))
    scores = full_scores(order)
    for round_ in range(100):
        order = order + [5000 + 10 * round_ + i for i in range(10)]
        plan = plan_scores(order, scores, 300)
        assert not plan.renormalise and [task for task, _ in plan.create] == order[-10:]
        assert [score for _, score in plan.create] == sorted(score for _, score in plan.create)
        scores = {**scores, **dict(plan.create)}
    assert max(scores.values()) < 0.51


def test_scores_outside_zero_to_one_left_by_an_earlier_release_ask_for_a_fresh_version():
    order = list(range(100))
    scores = {task: float(task) - 50.0 for task in order}  # -50 .. 49
    assert plan_scores([1000, *order], scores, 20).renormalise


def in_write_order(plan: ScorePlan, order: list[int], before_imports: int = 100) -> list[tuple[int, float]]:
    """The plan's writes in the order the write-out makes them: the top of the head, the new
    predictions, the rest of the head."""
    rank = {task: position for position, task in enumerate(order)}
    patches = sorted(plan.patch, key=lambda write: rank.get(write[0], len(rank)))
    top = [write for write in patches if rank.get(write[0], len(rank)) < before_imports]
    return top + plan.create + patches[len(top) :]


def assert_served_as_ranked(order: list[int], scores: dict[int, float], head: int, unranked: set[int]) -> None:
    """The head first, exactly in rank order, then the rest of the ranked tasks; tasks without
    patterns have no prediction (Label Studio serves them once no ranked task is left)."""
    assert all(LOWEST_SCORE <= scores[task] <= HIGHEST_SCORE for task in order)
    assert sorted(order, key=lambda task: scores[task])[:head] == order[:head]
    assert not unranked & set(scores)


def drawn_afresh(previous: list[int], ranked: list[int], rng: random.Random, head: int) -> list[int]:
    return rng.sample(ranked, len(ranked))


def keeping_part_of_the_last_head(previous: list[int], ranked: list[int], rng: random.Random, head: int) -> list[int]:
    """A ranking of a bigger sample that keeps a third of the last head's picks in their order,
    with a new pick after each of them."""
    still_ranked = set(ranked)
    kept = [task for task in previous[:head] if task in still_ranked and rng.random() < 1 / 3]
    others = [task for task in rng.sample(ranked, len(ranked)) if task not in set(kept)]
    new_head = [task for pair in zip(kept, others) for task in pair]
    return new_head + others[len(kept) :]


@pytest.mark.parametrize("tasks", [5000, 50_000])
@pytest.mark.parametrize("ranking", [drawn_afresh, keeping_part_of_the_last_head])
def test_milestones_of_an_import_and_labels_between_them_never_ask_for_a_fresh_version(tasks, ranking):
    """Rankings of growing random samples of the patterns (a first sample of 320, then each
    doubling, then all), with labels from the top of the head between them; a newer ranking
    often replaces a write-out part-way. Every plan is written in place with at most two writes
    per head task (one that enters, one that leaves) plus the new predictions, within [0, 1]; the
    head is served in rank order once a write-out is complete."""
    rng = random.Random(tasks + 1)
    head = 300
    patterns_order = rng.sample(range(tasks), tasks)
    milestones = [320 * 2**k for k in range(20) if 320 * 2**k < tasks] + [tasks]
    labelled: set[int] = set()
    order = rng.sample(patterns_order[: milestones[0]], milestones[0])
    scores = {task: score for task, score in full_scores(order).items() if task in order[:head]}
    for patterns in milestones:
        ranked = [task for task in patterns_order[:patterns] if task not in labelled]
        order = ranking(order, ranked, rng, head)
        for round_ in range(3):
            plan = plan_scores(order, scores, head)
            assert not plan.renormalise
            assert len(plan.patch) <= 2 * head and [t for t, _ in plan.create] == [t for t in order if t not in scores]
            writes = in_write_order(plan, order)
            replaced = round_ < 2 and rng.random() < 0.5
            scores.update(writes[: rng.randrange(len(writes) + 1)] if replaced else writes)
            if not replaced:
                assert_served_as_ranked(order, scores, head, set(patterns_order[patterns:]))
            labelled.update(order[:3])
            order = order[3:]


def test_three_hundred_rankings_that_each_draw_a_new_head_from_the_whole_pool_keep_finding_room():
    rng = random.Random(11)
    order = list(range(5000))
    scores = full_scores(order)
    for _ in range(300):
        order = order[10:]
        order = rng.sample(order, 300) + order
        order = list(dict.fromkeys(order))
        plan = plan_scores(order, scores, 300)
        assert not plan.renormalise and len(plan.patch) <= 2 * 300 and plan.create == []
        scores.update(plan.patch)
        assert sorted(order, key=lambda task: scores[task])[:300] == order[:300]
        assert all(LOWEST_SCORE <= scores[task] <= HIGHEST_SCORE for task in order)
