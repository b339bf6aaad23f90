"""Planning a write-out, pure: the scores that make Label Studio serve a target's head in rank
order while changing as few as it can, a fresh version's scores, and the flags the target wants.
No Redis, no Label Studio: tasks ids and scores in, scores and flag texts out."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

PICK_FLAG = "FreeSel pick"
# Scores closer than this cannot be told apart reliably: a full import renormalises them.
MIN_SCORE_GAP = 1e-9
# Label Studio 1.23.2 drops imported predictions whose score lies outside [0, 1] (it logs them and
# answers 201), so every score stays inside. A fresh version takes [0.25, 0.5): room below it for
# tasks moved before the first one, above it for tasks added behind the last.
LOWEST_SCORE, HIGHEST_SCORE = 0.0, 1.0
FRESH_SCORES = (0.25, 0.5)
# The distance between tasks put before the first score or after the last one.
EDGE_STEP = 1e-6


@dataclass
class ScorePlan:
    """New scores for tasks that have a prediction (``patch``) and for tasks that need one
    (``create``), in the order they should be written; ``renormalise`` when gaps ran out."""

    patch: list[tuple[int, float]] = field(default_factory=list)
    create: list[tuple[int, float]] = field(default_factory=list)
    renormalise: bool = False


def longest_increasing(values: Sequence[float]) -> list[int]:
    """Positions of a longest strictly increasing subsequence of ``values`` (O(n log n))."""
    tails: list[float] = []
    tail_position: list[int] = []
    previous = [-1] * len(values)
    for position, value in enumerate(values):
        slot = bisect.bisect_left(tails, value)
        if slot == len(tails):
            tails.append(value)
            tail_position.append(position)
        else:
            tails[slot] = value
            tail_position[slot] = position
        previous[position] = tail_position[slot - 1] if slot else -1
    chain, position = [], tail_position[-1] if tail_position else -1
    while position != -1:
        chain.append(position)
        position = previous[position]
    return chain[::-1]


def plan_scores(order: Sequence[int], scores: Mapping[int, float], head_size: int) -> ScorePlan:
    """Scores that make Label Studio serve ``order[:head_size]`` exactly in this order before any
    other task of ``order``, with as few writes as it can: the fewer of two plans (the fresh head
    on a tie), a fresh version only when neither has room.

    In place (:func:`_in_place`) keeps the current scores of the head's tasks that already
    increase along the order and fits the others between them: a re-ranking after labels moves a
    few tasks and writes a few scores. A fresh head (:func:`_fresh_head`) scores every head task
    anew below every current score and leaves the rest where it is: one write per head task. A
    ranking of a bigger sample of the patterns replaces most of the head, and fitting a new head
    between the few tasks kept from the last one, milestone after milestone, splits the same
    narrow gaps again and again until they run out (at 5,000 tasks, by the seventh ranking); the
    fresh head costs about as many writes there and starts from gaps ``EDGE_STEP`` wide.
    """
    in_place = _in_place(order, scores, head_size, keep_leaving=True)
    if in_place.renormalise:
        in_place = _in_place(order, scores, head_size, keep_leaving=False)
    usable = [plan for plan in (_fresh_head(order, scores, head_size), in_place) if not plan.renormalise]
    return min(usable, key=lambda plan: len(plan.patch) + len(plan.create)) if usable else in_place


def _in_place(order: Sequence[int], scores: Mapping[int, float], head_size: int, keep_leaving: bool) -> ScorePlan:
    """The current head is the ``head_size`` lowest current scores. Tasks that leave it are moved
    just behind the new head; tasks of the new head whose scores are in the current head and
    already increase along the order keep them; the others fill the gaps. Tasks of the tail
    without a prediction go behind everything, in rank order. When a gap has no room left
    (tasks appended to the head round after round squeeze into the one gap before the tasks
    that leave it), the tasks that leave go behind everything instead (the tail's order is not
    kept exact), which opens the gap up to the first task of the tail."""
    head, tail = list(order[:head_size]), list(order[head_size:])
    current = sorted(scores[t] for t in order if t in scores)
    threshold = current[min(head_size, len(current)) - 1] if current else 0.0
    leaving = sorted((t for t in tail if t in scores and scores[t] <= threshold), key=lambda t: scores[t])
    lineup = head + leaving if keep_leaving else head
    candidates = [i for i, t in enumerate(lineup) if t in scores and scores[t] <= threshold]
    kept = {candidates[i] for i in longest_increasing([scores[lineup[i]] for i in candidates])}
    above = [scores[t] for t in tail if t in scores and scores[t] > threshold]
    ceiling = min(above) if above else HIGHEST_SCORE
    plan = ScorePlan()
    assigned = _fill_gaps([scores.get(t) if i in kept else None for i, t in enumerate(lineup)], ceiling, plan)
    for task, score, was_kept in zip(lineup, assigned, (i in kept for i in range(len(lineup)))):
        if not was_kept:
            _assign(plan, scores, task, score)
    behind = ([] if keep_leaving else leaving) + _without_prediction(tail, scores, set(head))
    _place_behind(plan, scores, behind, top=max([*current, *assigned], default=FRESH_SCORES[0]))
    return _checked(plan)


def _fresh_head(order: Sequence[int], scores: Mapping[int, float], head_size: int) -> ScorePlan:
    """The head scored anew, ``EDGE_STEP`` apart (less where the room below asks for it), below
    the lowest current score of ``order``; tasks that leave the head keep their scores, behind it
    already; tasks of the tail without a prediction go behind everything, in rank order."""
    head, tail = list(order[:head_size]), list(order[head_size:])
    current = [scores[t] for t in order if t in scores]
    lowest = min(current, default=FRESH_SCORES[0])
    step = min(EDGE_STEP, (lowest - LOWEST_SCORE) / (len(head) + 1))
    plan = ScorePlan(renormalise=bool(head) and step < MIN_SCORE_GAP)
    for rank, task in enumerate(head):
        _assign(plan, scores, task, lowest - step * (len(head) - rank))
    _place_behind(plan, scores, _without_prediction(tail, scores, set(head)), top=max(current, default=lowest))
    return _checked(plan)


def _without_prediction(tail: Sequence[int], scores: Mapping[int, float], head: set[int]) -> list[int]:
    return [t for t in tail if t not in scores and t not in head]


def _assign(plan: ScorePlan, scores: Mapping[int, float], task: int, score: float) -> None:
    (plan.patch if task in scores else plan.create).append((task, score))


def _place_behind(plan: ScorePlan, scores: Mapping[int, float], behind: Sequence[int], top: float) -> None:
    """``behind`` after ``top``, in this order, ``EDGE_STEP`` apart (less where the room above asks for it)."""
    step = min(EDGE_STEP, (HIGHEST_SCORE - top) / (len(behind) + 1))
    if behind and step < MIN_SCORE_GAP:
        plan.renormalise = True
    for rank, task in enumerate(behind):
        _assign(plan, scores, task, top + step * (rank + 1))


def _checked(plan: ScorePlan) -> ScorePlan:
    if any(not LOWEST_SCORE <= score <= HIGHEST_SCORE for _, score in plan.patch + plan.create):
        plan.renormalise = True  # scores of an earlier release, outside what Label Studio imports
    return plan


def _fill_gaps(values: list[float | None], ceiling: float, plan: ScorePlan) -> list[float]:
    """``values`` with each run of None replaced by evenly spaced scores between the kept
    neighbours; before the first kept and after the last one, ``EDGE_STEP`` apart (within
    ``LOWEST_SCORE`` and ``ceiling``)."""
    filled: list[float] = []
    position = 0
    while position < len(values):
        if values[position] is not None:
            filled.append(float(values[position]))  # type: ignore[arg-type]
            position += 1
            continue
        end = position
        while end < len(values) and values[end] is None:
            end += 1
        room = (end - position + 1) * EDGE_STEP
        if end < len(values):
            high = float(values[end])  # type: ignore[arg-type]
            low = filled[-1] if filled else max(LOWEST_SCORE, high - room)
        else:
            low = filled[-1] if filled else FRESH_SCORES[0]
            high = min(ceiling, low + room)
        step = (high - low) / (end - position + 1)
        if step < MIN_SCORE_GAP:
            plan.renormalise = True
        filled += [low + step * (offset + 1) for offset in range(end - position)]
        position = end
    return filled


def full_scores(order: Sequence[int]) -> dict[int, float]:
    """Evenly spaced scores in ``FRESH_SCORES`` along ``order``: a fresh version."""
    low, high = FRESH_SCORES
    return {task: low + (high - low) * position / max(1, len(order)) for position, task in enumerate(order)}


def head_size_of(target: Mapping[str, Any], fallback: int) -> int:
    """The head size the target was ranked with; ``fallback`` for a target stored before targets
    recorded it."""
    return int(target.get("head_size", fallback))


def wanted_flags(target: Mapping[str, Any], head_size: int, current: Mapping[int, str] | None = None) -> dict[int, str]:
    """Flag text per task: the picks within the head, and picks behind it that carry the pick
    flag already (``current``: it stays true, so a task that leaves the head costs no write);
    then failures and near-duplicates."""
    order = target["order"]
    flags = {int(t): text for t, text in target["flags"].items()}
    behind_head = order[head_size : target["n_picked"]]
    flags.update({task: PICK_FLAG for task in behind_head if (current or {}).get(task) == PICK_FLAG})
    flags.update({task: PICK_FLAG for task in order[: min(head_size, target["n_picked"])]})
    return flags
