"""A project's ranking as tasks see it: which tasks are picked, the flags they carry, and a
ranking saved as JSON and read back.

Pure: task ids in, task ids out. The server stores what :func:`rank_tasks` returns as the
write-out's target; ``select --out`` writes :func:`ranking_rows`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .duplicates import DuplicateGroups, find_near_duplicates
from .selection import DrawSettings, Ranking, extend_head, rerank_head

FAILURE_FLAG = "FreeSel could not use this image: "
NOT_PICKED = "FreeSel: not picked"


def flags_for(failures: Mapping[int, str], duplicate_of: Mapping[int, int]) -> dict[int, str]:
    """Flags that do not depend on the queue's head: "FreeSel could not use this image: <reason>"
    on failed tasks, "FreeSel: not picked (near-duplicate of task 12)" on a ranked task that
    ``duplicate_of`` maps to task 12. The picks' flag is the write-out's (head only)."""
    flags = {task_id: f"{NOT_PICKED} (near-duplicate of task {original})" for task_id, original in duplicate_of.items()}
    flags.update({task_id: f"{FAILURE_FLAG}{reason}" for task_id, reason in failures.items()})
    return flags


def copy_of_representatives(task_ids: Sequence[int], duplicates: DuplicateGroups, labelled: set[int]) -> dict[int, int]:
    """Task id -> its group's representative, for every other member of a group: the first
    labelled member (the one that counts), else the lowest task id. What an admin filters copies on."""
    copy_of: dict[int, int] = {}
    for group in duplicates.groups:
        members = [int(task_ids[image]) for image in group]
        representative = next((task_id for task_id in members if task_id in labelled), members[0])
        copy_of.update({task_id: representative for task_id in members if task_id != representative})
    return copy_of


def failures_in(flags: Mapping[Any, str]) -> dict[int, str]:
    """Task id -> failure reason, read back from the flags of :func:`flags_for`."""
    return {int(task_id): text[len(FAILURE_FLAG) :] for task_id, text in flags.items() if text.startswith(FAILURE_FLAG)}


def near_duplicate_of_chosen(task_ids: Sequence[int], duplicates: DuplicateGroups, chosen: set[int]) -> dict[int, int]:
    """Task id -> the first chosen (picked or labelled) task of its near-duplicate group, for
    every member of a group with a chosen member that is not chosen itself."""
    duplicate_of: dict[int, int] = {}
    for group in duplicates.groups:
        members = [int(task_ids[image]) for image in group]
        originals = [task_id for task_id in members if task_id in chosen]
        if originals:
            duplicate_of.update({task_id: originals[0] for task_id in members if task_id not in chosen})
    return duplicate_of


@dataclass(frozen=True)
class RankedTasks:
    """One ranking of a project's tasks. ``task_ids[i]`` owns image ``i`` of ``ranking``, of
    ``duplicates`` and of ``draw.prior`` (``draw``: the settings it was drawn with, its prior None
    for a strategy without one); ``order`` lists the unlabelled tasks, picks first; ``flags`` by task id."""

    task_ids: list[int]
    ranking: Ranking | None
    duplicates: DuplicateGroups
    order: list[int]
    n_picked: int
    flags: dict[int, str]
    draw: DrawSettings
    copy_of: dict[int, int] = field(default_factory=dict)  # see copy_of_representatives

    @property
    def picked(self) -> list[int]:
        return self.order[: self.n_picked]


def rank_tasks(
    patterns: Mapping[int, np.ndarray],
    labelled: set[int],
    failures: Mapping[int, str],
    budget: int,
    *,
    head_size: int,
    previous: Sequence[int] = (),
    previous_n_picked: int = 0,
    draw: DrawSettings,
    duplicates: DuplicateGroups | None = None,
) -> RankedTasks:
    """Rank the unlabelled tasks of ``patterns`` (the labelled ones are seeds): the first
    ``head_size`` picks (the previous ranking's picks that no label covered, then picks drawn
    afresh; every pick on a first ranking), the other tasks in the order of the ``previous`` ranking
    (task ids; its first ``previous_n_picked`` were picks and stay picks, up to ``budget``), then
    tasks it did not hold by distance; see ``selection.rerank_head``. Failures and the
    near-duplicates of picked or labelled tasks are flagged. ``duplicates``: the groups of these
    tasks (in task id order): the copy groups of their files, or those of an earlier ranking
    (labels do not change them); without them, the groups of patterns within
    ``draw.duplicate_threshold`` (``duplicates.find_near_duplicates``). Every member of a group is
    ranked with its representative's patterns (:func:`shared_within_groups`), so that once one of
    a group is picked or labelled the others carry no weight. ``draw.prior``: the draw prior of
    these (shared) patterns for ``draw.strategy`` (``selection.draw_prior``), computed when not given."""
    task_ids = sorted(patterns)
    images = [patterns[task_id] for task_id in task_ids]
    if duplicates is None:
        threshold = draw.duplicate_threshold
        duplicates = find_near_duplicates(images, threshold) if images else no_duplicates(threshold)
    images = shared_within_groups(images, duplicates)
    draw = draw.with_prior_of(images)
    seeds = [image for image, task_id in enumerate(task_ids) if task_id in labelled]
    image_of = {task_id: image for image, task_id in enumerate(task_ids)}
    previous_order = [image_of[task_id] for task_id in previous if task_id in image_of]
    previous_picks = [task_id for task_id in previous[:previous_n_picked] if task_id in image_of]
    ranking = (
        rerank_head(
            images, head_size, budget, previous_order=previous_order, previous_n_picked=len(previous_picks),
            seeds=seeds, draw=draw,
        )
        if len(seeds) < len(task_ids) else None
    )
    return _ranked(task_ids, ranking, duplicates, labelled, failures, draw)


def rank_tail(
    patterns: Sequence[np.ndarray],
    task_ids: Sequence[int],
    ranking: Ranking,
    duplicates: DuplicateGroups,
    failures: Mapping[int, str],
    budget: int,
    *,
    head_size: int,
    draw: DrawSettings,
) -> RankedTasks:
    """``ranking`` (of the tasks ``task_ids``, ``patterns`` in the same order) with its first
    ``head_size`` picks kept and the picks after them drawn afresh (``selection.extend_head``),
    flagged as :func:`rank_tasks` flags, the members of each of the ``duplicates`` groups ranked
    with their representative's patterns; ``draw`` as :func:`rank_tasks` takes it."""
    patterns = shared_within_groups(patterns, duplicates)
    n_head = min(head_size, ranking.n_picked)
    draw = draw.with_prior_of(patterns)
    refreshed = extend_head(
        patterns, ranking.order[:n_head], ranking.distance[:n_head], budget, seeds=ranking.seeds, draw=draw
    )
    labelled = {int(task_ids[image]) for image in ranking.seeds}
    return _ranked([int(t) for t in task_ids], refreshed, duplicates, labelled, failures, draw)


def shared_within_groups(patterns: Sequence[np.ndarray], duplicates: DuplicateGroups) -> list[np.ndarray]:
    """``patterns`` with every member of a group given its representative's: a pick of any
    member is then at distance 0 from the others, which selection weighs 0 whatever their own
    patterns (copies' patterns differ after a crop or a re-encode)."""
    shared = list(patterns)
    for representative, *members in duplicates.groups:
        for member in members:
            shared[member] = patterns[representative]
    return shared


def no_duplicates(threshold: float) -> DuplicateGroups:
    """The near-duplicate groups of no images."""
    return DuplicateGroups([], np.zeros(0, np.int64), threshold)


def _ranked(
    task_ids: list[int], ranking: Ranking | None, duplicates: DuplicateGroups, labelled: set[int],
    failures: Mapping[int, str], draw: DrawSettings,
) -> RankedTasks:
    order = [task_ids[image] for image in ranking.order] if ranking else []
    n_picked = ranking.n_picked if ranking else 0
    chosen = set(order[:n_picked]) | (labelled & set(task_ids))
    flags = flags_for(failures, near_duplicate_of_chosen(task_ids, duplicates, chosen))
    copy_of = copy_of_representatives(task_ids, duplicates, labelled)
    return RankedTasks(task_ids, ranking, duplicates, order, n_picked, flags, draw, copy_of)


# ---- a ranking as JSON --------------------------------------------------------------------------


def ranking_to_json(ranking: Ranking) -> dict[str, Any]:
    """``order``, ``distance`` (None for the infinite distance of a first pick drawn without
    seeds; 6 decimals otherwise), ``n_picked``, ``seeds``: plain JSON values."""
    return {
        "order": [int(image) for image in ranking.order],
        "distance": [round(float(d), 6) if math.isfinite(d) else None for d in ranking.distance],
        "n_picked": int(ranking.n_picked),
        "seeds": [int(image) for image in ranking.seeds],
    }


def ranking_from_json(saved: Mapping[str, Any]) -> Ranking:
    """Inverse of :func:`ranking_to_json`."""
    distance = np.asarray([math.inf if d is None else d for d in saved["distance"]], dtype=np.float64)
    return Ranking(np.asarray(saved["order"], dtype=np.int64), distance, int(saved["n_picked"]), tuple(saved["seeds"]))


def ranking_rows(ranking: Ranking, names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per ranked image, as ``select --out`` writes them: path, rank, picked, distance."""
    saved = ranking_to_json(ranking)
    return [
        {"path": names[image], "rank": position + 1, "picked": position < saved["n_picked"], "distance": distance}
        for position, (image, distance) in enumerate(zip(saved["order"], saved["distance"]))
    ]


def ranking_from_rows(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Ranking:
    """The :class:`Ranking` behind :func:`ranking_rows`; images missing from them were seeds."""
    index_of = {name: index for index, name in enumerate(names)}
    unknown = [row["path"] for row in rows if row["path"] not in index_of]
    if unknown:
        raise ValueError(
            f"{len(unknown)} ranked images are not in the patterns file (first: {unknown[0]}); "
            "pass the --save-patterns file of the same select run"
        )
    order = [index_of[row["path"]] for row in rows]
    return ranking_from_json({
        "order": order,
        "distance": [row["distance"] for row in rows],
        "n_picked": sum(bool(row["picked"]) for row in rows),
        "seeds": sorted(set(range(len(names))) - set(order)),
    })
