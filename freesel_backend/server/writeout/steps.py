"""The write-out job: one bounded step towards the project's target (see the package's docstring),
a full import under a new version or changes in place, then its continuation enqueued."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Mapping, Sequence

from ...labelstudio.client import LabelStudioNotFound
from ..enqueue import JobProgress, enqueue_version_cleanup, enqueue_writeout
from ..services import job_services
from ..store import Store
from .context import OutOfRequests, Step, Superseded, write_lock
from .flags import TASK_DATA_BATCH, flag_changes, rank_of, task_data, write_copy_fields, write_flag, write_flags
from .imports import IMPORT_BATCH, adopt, fill_ids, import_batch, prediction, recover_import
from .plan import ScorePlan, full_scores, plan_scores
from .versions import UNCERTAINTY_SAMPLING, new_model_version, remember_previous_sampling

log = logging.getLogger(__name__)

# A full import switches the queue once this many of the head's flags are written (what three
# annotators reach in about 40 s; at most ``Settings.top_before_imports``); the rest of the top
# follows right after, in rank order, faster than annotators take tasks from it.
FLAGS_BEFORE_SWITCH = 60


def write_out(project_id: int) -> dict[str, Any]:
    """One bounded step towards the project's target; enqueues the next step if work remains."""
    services = job_services()
    store = services.store
    lock = write_lock(services, project_id)
    if not lock.acquire(blocking=True, blocking_timeout=5):
        enqueue_writeout(services, project_id, delay_s=5)
        return {"waiting": "another write-out or cleanup of the project holds its write lock"}
    step = Step(services, project_id, services.settings.writeout_step_requests, lock)
    progress = JobProgress(0, stage="writing")
    started = time.monotonic()
    finished, target = False, None
    try:
        target = store.get_target(project_id)
        if target is not None and store.get_settings(project_id).enabled:
            step.generation = str(target["generation"])
            finished = _advance(step, target, progress)
        else:
            finished = True
    except Superseded:
        log.info("project %s: ranking %s superseded after %d writes", project_id, step.generation, step.writes)
    except OutOfRequests:
        pass
    finally:
        lock.release()
    _record(store, project_id, target, step, time.monotonic() - started, finished)
    if not finished:
        enqueue_writeout(services, project_id)
    return {"requests": step.requests, "writes": step.writes, "finished": finished}


def _record(
    store: Store, project_id: int, target: Mapping[str, Any] | None, step: Step, seconds: float, finished: bool
) -> None:
    if target is not None:
        store.record_writeout_step(project_id, str(target["generation"]), step.requests, step.writes, seconds, finished)


def _advance(step: Step, target: dict[str, Any], progress: Any) -> bool:
    state = step.store.get_state(step.project_id)
    if "import_in_flight" in state:  # a step died waiting for an import's answer
        recover_import(step, json.loads(state["import_in_flight"]))
        state = step.store.get_state(step.project_id)
    if target["full"] and target["model_version"] != state.get("model_version"):
        _full_import(step, target, progress)
    return _in_place(step, target, progress)


def _full_import(step: Step, target: dict[str, Any], progress: Any) -> None:
    """Import the head's predictions under the target's new version, flag its top and switch the
    queue; the rest of the ranked tasks get theirs in place afterwards (``_in_place``): Label
    Studio's /next serves only tasks with a prediction of the version while there are any.

    A newer ranking does not stop it before the switch: while patterns come in, the next milestone
    often arrives before the switch, and starting over with its head would keep the queue in Label
    Studio's order until the milestones come slower than a switch's writes. The newer ranking
    follows in place."""
    step.switching = True
    version, head = target["model_version"], target["order"][: step.head_size(target)]
    staged = step.store.all_predictions(step.project_id, staged=version)
    scores = full_scores(target["order"])
    missing = [t for t in head if t not in staged]
    progress.start_stage("importing the head's predictions", len(head))
    progress.advance(len(head) - len(missing))
    for start in range(0, len(missing), IMPORT_BATCH):
        batch = {t: prediction(t, scores[t], version) for t in missing[start : start + IMPORT_BATCH]}
        import_batch(step, batch, staged=version)
        progress.advance(len(batch))
    fill_ids(step, version, staged=version)
    write_flags(step, target, additions=True, first=min(FLAGS_BEFORE_SWITCH, step.settings.top_before_imports))

    step.spend()
    remember_previous_sampling(step.client, step.store, step.project_id)
    step.client.update_project(step.project_id, sampling=UNCERTAINTY_SAMPLING, model_version=version)
    step.writes += 1
    step.store.promote_staged(step.project_id, version)
    step.switching = False
    log.info("project %s: queue switched to %s (%d of %d predictions)", step.project_id, version, len(head),
             len(target["order"]))
    enqueue_version_cleanup(step.services, step.project_id)


def _in_place(step: Step, target: dict[str, Any], progress: Any) -> bool:
    """Scores and flags of the live version changed where the head needs it, then predictions
    imported for the ranked tasks that have none (rank order). True when done."""
    version = step.store.get_state(step.project_id).get("model_version", "")
    fill_ids(step, version)
    plan = _plan(step, target)
    if plan.create and adopt(step, version, [task for task, _ in plan.create]):
        plan = _plan(step, target)
    log.info(
        "project %s: write-out of ranking %s: %d scores to change, %d predictions to import (head starts %s)",
        step.project_id, target["generation"], len(plan.patch), len(plan.create), target["order"][:5],
    )
    if plan.renormalise:
        _start_full_import(step.store, step.project_id, target)
        return False
    _write_head(step, target, plan.patch, progress, ranks=range(step.settings.top_before_imports))
    progress.start_stage("importing predictions", len(plan.create))
    for start in range(0, len(plan.create), IMPORT_BATCH):
        batch = {t: prediction(t, score, version) for t, score in plan.create[start : start + IMPORT_BATCH]}
        import_batch(step, batch)
        progress.advance(len(batch))
    fill_ids(step, version)
    _write_head(step, target, plan.patch, progress, ranks=range(step.settings.top_before_imports, sys.maxsize))
    write_flags(step, target, additions=False)
    write_copy_fields(step, target)
    _keep_queue_switched(step, version)
    return True


def _keep_queue_switched(step: Step, version: str) -> None:
    """Switch the project's queue back to the live version if something switched it off (Label
    Studio clears the project's model version when "show predictions to annotators" is turned off)."""
    step.spend()
    project = step.client.get_project(step.project_id)
    if project.get("model_version") != version or project.get("sampling") != UNCERTAINTY_SAMPLING:
        step.spend()
        step.client.update_project(step.project_id, sampling=UNCERTAINTY_SAMPLING, model_version=version)
        step.writes += 1
        log.warning(
            "project %s: the queue no longer served FreeSel's version %s: switched back", step.project_id, version
        )


def _plan(step: Step, target: Mapping[str, Any]) -> ScorePlan:
    live = step.store.all_predictions(step.project_id)
    return plan_scores(target["order"], {t: float(p["score"]) for t, p in live.items()}, step.head_size(target))


def _start_full_import(store: Store, project_id: int, target: dict[str, Any]) -> None:
    target.update(full=True, model_version=new_model_version(store, project_id))
    store.save_target(project_id, target)
    log.info("project %s: scores ran out of room: importing a fresh version %s", project_id, target["model_version"])


def _write_head(
    step: Step, target: Mapping[str, Any], scores: Sequence[tuple[int, float]], progress: Any, ranks: range
) -> None:
    """New flags and the new ``scores`` of the tasks whose rank (0 first; flagged tasks outside the
    ranking come last) lies in ``ranks``, task by task in rank order, each task's flag before its
    score moves it into the head: the top of the queue is right first, and a step that stops
    (out of requests, or superseded by a newer ranking) leaves a prefix of the head written."""
    score_of = dict(scores)
    flags = flag_changes(step, target, additions=True)
    rank = rank_of(target)
    by_rank = sorted(set(flags) | set(score_of), key=lambda t: rank.get(t, len(rank)))
    tasks = [t for t in by_rank if rank.get(t, len(rank)) in ranks]
    progress.start_stage("writing the head", sum(1 for t in tasks if t in score_of))
    for start in range(0, len(tasks), TASK_DATA_BATCH):
        chunk = tasks[start : start + TASK_DATA_BATCH]
        data = task_data(step, [t for t in chunk if t in flags])
        live = step.store.get_predictions(step.project_id, [t for t in chunk if t in score_of])
        for task_id in chunk:
            if task_id in flags and task_id in data:
                write_flag(step, task_id, data[task_id], flags[task_id])
            if task_id in score_of and task_id in live:
                _write_score(step, task_id, live[task_id], score_of[task_id])
                progress.advance(1)


def _write_score(step: Step, task_id: int, prediction: Mapping[str, Any], score: float) -> None:
    step.spend()
    try:
        step.client.update_prediction(prediction["id"], score=score)
    except LabelStudioNotFound:  # the task (and its prediction) was deleted meanwhile
        step.store.forget_predictions(step.project_id, [task_id])
        return
    step.writes += 1
    step.store.update_predictions(step.project_id, {task_id: {**prediction, "score": score}})
