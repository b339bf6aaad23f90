"""FreeSel's flags in task data ("FreeSel pick", failures, near-duplicates): what differs from what
the tasks carry, and writing it in rank order."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .context import Step
from .plan import wanted_flags

FLAG_FIELD = "freesel"  # text shown on the labelling screen by label_config.xml's <Header value="$freesel"/>
LEGACY_RANK_FIELD = "freesel_rank"  # written by earlier versions: removed with the flag
# On each copy (not on its group's representative): the representative's task id, for the Data Manager's filters.
COPY_OF_FIELD = "freesel_copy_of"
TASK_DATA_BATCH = 100


def write_flags(step: Step, target: Mapping[str, Any], additions: bool, first: int | None = None) -> None:
    """Flags that differ from what the tasks carry: new or changed texts (``additions``), or
    removals, in rank order (only the ``first`` of them, if given)."""
    flags = flag_changes(step, target, additions)
    rank = rank_of(target)
    changed = sorted(flags, key=lambda t: rank.get(t, len(rank)))[:first]
    for start in range(0, len(changed), TASK_DATA_BATCH):
        data = task_data(step, changed[start : start + TASK_DATA_BATCH])
        for task_id in changed[start : start + TASK_DATA_BATCH]:
            if task_id in data:  # else deleted meanwhile
                write_flag(step, task_id, data[task_id], flags[task_id])


def flag_changes(step: Step, target: Mapping[str, Any], additions: bool) -> dict[int, str | None]:
    """Task -> its flag text where it differs from what the task carries: new or changed texts
    (``additions``), or removals (None). Only unlabelled ranked tasks and flagged failures are touched."""
    current = step.store.get_flags(step.project_id)
    wanted = wanted_flags(target, step.head_size(target), current)
    touched = set(wanted) | (set(current) & set(target["order"]))
    return {
        t: wanted.get(t)
        for t in touched
        if current.get(t) != wanted.get(t) and (wanted.get(t) is not None) == additions
    }


def rank_of(target: Mapping[str, Any]) -> dict[int, int]:
    return {task: position for position, task in enumerate(target["order"])}


def task_data(step: Step, task_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The data of these tasks (one listing; tasks deleted meanwhile are missing)."""
    if not task_ids:
        return {}
    step.spend()
    return {int(task["id"]): task.get("data") or {} for task in step.client.get_tasks(step.project_id, task_ids)}


def write_flag(step: Step, task_id: int, data: Mapping[str, Any], text: str | None) -> None:
    step.spend()
    step.client.update_task_data(task_id, flagged(data, text))
    step.writes += 1
    step.store.set_flag(step.project_id, task_id, text)


def flagged(data: Mapping[str, Any], text: str | None) -> dict[str, Any]:
    """The task data with FreeSel's flag set to ``text`` (None: without a flag)."""
    kept = {k: v for k, v in data.items() if k not in (FLAG_FIELD, LEGACY_RANK_FIELD)}
    return kept if text is None else {**kept, FLAG_FIELD: text}


def write_copy_fields(step: Step, target: Mapping[str, Any]) -> None:
    """``freesel_copy_of`` in the data of every copy the target names, with its representative;
    removed from tasks that are no longer a copy."""
    wanted = {int(task_id): int(representative) for task_id, representative in target.get("copy_of", {}).items()}
    written = step.store.copy_fields(step.project_id)
    changed = sorted(t for t in set(wanted) | set(written) if wanted.get(t) != written.get(t))
    for start in range(0, len(changed), TASK_DATA_BATCH):
        batch = changed[start : start + TASK_DATA_BATCH]
        data = task_data(step, batch)
        for task_id in batch:
            if task_id in data:
                step.spend()
                step.client.update_task_data(task_id, with_copy_of(data[task_id], wanted.get(task_id)))
                step.writes += 1
            step.store.set_copy_field(step.project_id, task_id, wanted.get(task_id) if task_id in data else None)


def with_copy_of(data: Mapping[str, Any], representative: int | None) -> dict[str, Any]:
    """The task data with ``freesel_copy_of`` set to ``representative`` (None: without it)."""
    kept = {k: v for k, v in data.items() if k != COPY_OF_FIELD}
    return kept if representative is None else {**kept, COPY_OF_FIELD: representative}
