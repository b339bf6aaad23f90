"""The write-out: bring Label Studio to the last ranking with writes proportional to what changed.

A ranking (``jobs.run_selection``) stores a *target* in Redis: the unlabelled tasks in rank
order, how many are picks, the flags of failed images and near-duplicates, and whether a new
model version is needed. The write-out job compares the target with what Label Studio holds
(recorded in Redis after every request) and writes the difference, at most
``Settings.writeout_step_requests`` requests per job; then it enqueues its continuation at the
end of the write-out queue, so other projects' write-outs take turns. A newer ranking replaces
the target: a running step stops after its current write and the next one plans towards the new
target (a stale queue is never finished first).

- **Full import** (first ranking, a settings change, or scores with no room left): the head's
  predictions are imported under a new model version (a batch whose request timed out is looked
  up in Label Studio before anything is imported again), the head's first flags written and the
  project's queue switched to the version; the other ranked tasks get theirs in place right
  after. The old versions are deleted by a cleanup job (one prediction per request, holding the
  write lock per batch and letting a waiting write-out step go first).
- **In place** (every other ranking, and the rest of a full import): only the first
  ``head_size`` tasks of the queue are kept in exact order. Tasks whose current scores already
  follow the new order (a longest increasing subsequence) keep them; the others get scores
  between their neighbours (one PATCH each). The queue's top (``Settings.top_before_imports``
  tasks) is written first, then ranked tasks without a prediction (new tasks, the rest of a full import)
  are imported behind, in rank order, in large batches, then the rest of the head. Label Studio's /next
  serves the lowest score first, and only tasks with a prediction of the version while any has one.
- **Flags**: "FreeSel pick" on the picks in the head, written before their scores move, head
  first; a pick that left the head keeps its flag while it remains a pick, any other flag on
  a task that left the head is removed after the scores. Failures and
  near-duplicates keep their flags wherever they are; labelled tasks keep theirs.
"""

from __future__ import annotations

import bisect
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from .settings import Settings
from ..labelstudio.client import LabelStudioClient, LabelStudioNotFound, LabelStudioUnavailable
from .enqueue import JobProgress, enqueue_version_cleanup, enqueue_writeout, writeout_waiting
from .services import Services, job_services
from .store import Store

log = logging.getLogger(__name__)

FLAG_FIELD = "freesel"  # text shown on the labelling screen by label_config.xml's <Header value="$freesel"/>
LEGACY_RANK_FIELD = "freesel_rank"  # written by earlier versions: removed with the flag
PICK_FLAG = "FreeSel pick"
UNCERTAINTY_SAMPLING = "Uncertainty sampling"
VERSION_PREFIX = "freesel-"
# Label Studio recounts the predictions of every task of the project after each import request
# (its default import), so fewer, larger requests cost less: at 50,000 tasks on PostgreSQL one
# request of 50,000 took 65 s, three of 20,000 took 157 s (docs/scale.md). One request of 50,000
# still ends within the default write timeout (FREESEL_LABEL_STUDIO_WRITE_TIMEOUT, 120 s).
IMPORT_BATCH = 50000
TASK_DATA_BATCH = 100
DELETE_BATCH = 50
# Scores closer than this cannot be told apart reliably: a full import renormalises them.
MIN_SCORE_GAP = 1e-9
# Label Studio 1.23.2 drops imported predictions whose score lies outside [0, 1] (it logs them and
# answers 201), so every score stays inside. A fresh version takes [0.25, 0.5): room below it for
# tasks moved before the first one, above it for tasks added behind the last.
LOWEST_SCORE, HIGHEST_SCORE = 0.0, 1.0
FRESH_SCORES = (0.25, 0.5)
# The distance between tasks put before the first score or after the last one.
EDGE_STEP = 1e-6
# A full import switches the queue once this many of the head's flags are written (what three
# annotators reach in about 40 s; at most ``Settings.top_before_imports``); the rest of the top
# follows right after, in rank order, faster than annotators take tasks from it.
FLAGS_BEFORE_SWITCH = 60
# The project's write lock outlives the longest single request by this much; it is renewed before
# every request, so a killed worker's lock frees itself soon.
LOCK_MARGIN_S = 15
# A cleanup batch waits at most this long for a waiting write-out step to take the write lock first.
WRITEOUT_TURN_S = 10.0


# ---- planning scores ----------------------------------------------------------------------------


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
    other task of ``order``, changing as few of the current ``scores`` as it can.

    The current head is the ``head_size`` lowest current scores. Tasks that leave it are moved
    just behind the new head; tasks of the new head whose scores are in the current head and
    already increase along the order keep them; the others fill the gaps. Tasks of the tail
    without a prediction go behind everything, in rank order. When a gap has no room left
    (tasks appended to the head round after round squeeze into the one gap before the tasks
    that leave it), the tasks that leave go behind everything instead (the tail's order is not
    kept exact), which opens the gap up to the first task of the tail.
    """
    plan = _plan_scores(order, scores, head_size, keep_leaving=True)
    return _plan_scores(order, scores, head_size, keep_leaving=False) if plan.renormalise else plan


def _plan_scores(order: Sequence[int], scores: Mapping[int, float], head_size: int, keep_leaving: bool) -> ScorePlan:
    head, tail = list(order[:head_size]), list(order[head_size:])
    current = sorted(scores[t] for t in order if t in scores)
    threshold = current[min(head_size, len(current)) - 1] if current else 0.0
    in_head = set(head)
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
            (plan.patch if task in scores else plan.create).append((task, score))
    behind = ([] if keep_leaving else leaving) + [t for t in tail if t not in scores and t not in in_head]
    top = max([*current, *assigned], default=FRESH_SCORES[0])
    step = min(EDGE_STEP, (HIGHEST_SCORE - top) / (len(behind) + 1))
    if behind and step < MIN_SCORE_GAP:
        plan.renormalise = True
    for rank, task in enumerate(behind):
        (plan.patch if task in scores else plan.create).append((task, top + step * (rank + 1)))
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


def new_model_version(store: Store, project_id: int) -> str:
    """A model version name not used before in the project: freesel-v0007-20260101-120000."""
    return f"{VERSION_PREFIX}{store.next_version_number(project_id):04d}-{time.strftime('%Y%m%d-%H%M%S')}"


def remember_previous_sampling(client: LabelStudioClient, store: Store, project_id: int) -> None:
    """On the first switch to FreeSel, keep the project's sampling and model version for disable."""
    if "previous_sampling" in store.get_state(project_id):
        return
    project = client.get_project(project_id)
    store.remember_once(
        project_id,
        previous_sampling=str(project.get("sampling") or ""),
        previous_model_version=str(project.get("model_version") or ""),
    )


# ---- the write-out job --------------------------------------------------------------------------


class OutOfRequests(Exception):
    """This step used its requests: the rest is for the next step."""


class Superseded(OutOfRequests):
    """A newer ranking replaced the target this step writes: the next step plans towards it
    from what Label Studio holds by then, instead of finishing a queue that is already stale."""


@dataclass
class Step:
    """One write-out job's context: the services, its request budget and its progress."""

    services: Services
    project_id: int
    budget: int
    lock: Any
    generation: str = ""
    started_requests: int = 0
    writes: int = 0
    switching: bool = False  # writing a full import up to its queue switch: a newer ranking waits

    def __post_init__(self) -> None:
        self.started_requests = self.client.requests_sent

    @property
    def client(self) -> LabelStudioClient:
        return self.services.client

    @property
    def store(self) -> Store:
        return self.services.store

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def requests(self) -> int:
        return self.client.requests_sent - self.started_requests

    def spend(self) -> None:
        """Before a request: stop when the budget is used or, once this step wrote something, when
        a newer ranking replaced its target (not while a full import heads for its queue switch);
        else renew the write lock."""
        if self.requests >= self.budget:
            raise OutOfRequests()
        if self.writes and not self.switching and self.store.target_generation(self.project_id) != self.generation:
            raise Superseded()
        self.lock.reacquire()


def write_lock(services: Services, project_id: int) -> Any:
    """The project's Label Studio write lock: held by a write-out step, or by a cleanup batch."""
    longest = max(services.client.timeout, services.settings.label_studio_write_timeout_s) + LOCK_MARGIN_S
    return services.store.lock(project_id, "writeout", timeout=longest)


def delete_freesel_predictions(services: Services, project_id: int, keep: Iterable[str] = ()) -> int:
    """Delete the project's FreeSel predictions, but those of the model versions in ``keep``; one
    request each (a whole-version DELETE takes ~14 ms per prediction in one request and outlives
    client timeouts), holding the write lock per batch. Returns how many were deleted."""
    kept = set(keep)
    doomed = [
        int(p["id"])
        for p in services.client.list_predictions(project_id)
        if str(p.get("model_version") or "").startswith(VERSION_PREFIX) and p.get("model_version") not in kept
    ]
    for start in range(0, len(doomed), DELETE_BATCH):
        give_way_to_writeout(services, project_id)
        with write_lock(services, project_id):
            for prediction_id in doomed[start : start + DELETE_BATCH]:
                services.client.delete_prediction(prediction_id)
    return len(doomed)


def give_way_to_writeout(services: Services, project_id: int, turn_s: float = WRITEOUT_TURN_S) -> None:
    """Before a cleanup batch: while a write-out step of the project waits, let it take the write
    lock first (waiting at most ``turn_s``). Write-out steps and cleanup batches then take turns:
    a label's re-ranking reaches Label Studio before old predictions go, and the deletion still
    moves on by a batch per step (a cleanup worker would otherwise take the lock back at once)."""
    lock = write_lock(services, project_id)
    deadline = time.monotonic() + turn_s
    while writeout_waiting(services, project_id) and not lock.locked() and time.monotonic() < deadline:
        time.sleep(0.2)


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
        _recover_import(step, json.loads(state["import_in_flight"]))
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
    version, head = target["model_version"], target["order"][: step.settings.head_size]
    staged = step.store.all_predictions(step.project_id, staged=version)
    scores = full_scores(target["order"])
    missing = [t for t in head if t not in staged]
    progress.start_stage("importing the head's predictions", len(head))
    progress.advance(len(head) - len(missing))
    for start in range(0, len(missing), IMPORT_BATCH):
        batch = {t: _prediction(t, scores[t], version) for t in missing[start : start + IMPORT_BATCH]}
        _import(step, batch, staged=version)
        progress.advance(len(batch))
    _fill_ids(step, version, staged=version)
    _write_flags(step, target, additions=True, first=min(FLAGS_BEFORE_SWITCH, step.settings.top_before_imports))

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
    _fill_ids(step, version)
    plan = _plan(step, target)
    if plan.create and _adopt(step, version, [task for task, _ in plan.create]):
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
        batch = {t: _prediction(t, score, version) for t, score in plan.create[start : start + IMPORT_BATCH]}
        _import(step, batch)
        progress.advance(len(batch))
    _fill_ids(step, version)
    _write_head(step, target, plan.patch, progress, ranks=range(step.settings.top_before_imports, sys.maxsize))
    _write_flags(step, target, additions=False)
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
    return plan_scores(target["order"], {t: float(p["score"]) for t, p in live.items()}, step.settings.head_size)


def _adopt(step: Step, version: str, tasks: Sequence[int]) -> bool:
    """Record predictions of the live version that Label Studio holds for ``tasks`` although the
    backend has none recorded (made by Label Studio from /predict answers, e.g. its "Retrieve
    Predictions" after a prediction was deleted): they are changed, not imported again."""
    step.spend()
    found = _listed(step, version, tasks)
    step.store.update_predictions(step.project_id, {t: _recorded(p) for t, p in found.items()})
    return bool(found)


def _start_full_import(store: Store, project_id: int, target: dict[str, Any]) -> None:
    target.update(full=True, model_version=new_model_version(store, project_id))
    store.save_target(project_id, target)
    log.info("project %s: scores ran out of room: importing a fresh version %s", project_id, target["model_version"])


def _prediction(task: int, score: float, version: str) -> dict[str, Any]:
    """No ``cluster``: Label Studio's /next puts tasks of clusters the annotator has labelled
    behind the others, and cluster numbers that change between rankings would reorder the head."""
    return {"task": int(task), "result": [], "score": float(score), "model_version": version}


def _recorded(listed: Mapping[str, Any]) -> dict[str, Any]:
    """A prediction as Label Studio lists it, as the backend records it."""
    return _prediction(int(listed["task"]), float(listed["score"]), str(listed["model_version"])) | {
        "id": int(listed["id"])
    }


def _import(step: Step, batch: Mapping[int, dict[str, Any]], staged: str | None = None) -> None:
    """Import ``batch`` (to the live version, or the ``staged`` one), never twice: the batch is
    marked in flight first, and a request that timed out (or a step killed meanwhile, see
    :func:`_recover_import`) is looked up in Label Studio before anything else is imported."""
    if not batch:
        return
    step.spend()
    version = next(iter(batch.values()))["model_version"]
    in_flight = {"model_version": version, "staged": staged or "", "tasks": sorted(batch), "sent_at": time.time()}
    step.store.update_state(step.project_id, import_in_flight=json.dumps(in_flight))
    try:
        step.client.import_predictions(  # one request: the in-flight record and the lock cover exactly it
            step.project_id, list(batch.values()), chunk_size=len(batch),
            timeout=step.settings.label_studio_write_timeout_s,
        )
    except LabelStudioUnavailable as error:
        if not error.timed_out:
            step.store.forget_state(step.project_id, "import_in_flight")
            raise
        step.writes += 1
        log.warning(
            "project %s: importing %d predictions timed out: asking Label Studio what it stored",
            step.project_id,
            len(batch),
        )
        _recover_import(step, in_flight)
        raise OutOfRequests() from None  # the next step plans again from what Label Studio has
    step.writes += 1
    step.store.save_imported(step.project_id, batch, staged)


def _recover_import(step: Step, in_flight: Mapping[str, Any]) -> None:
    """Record what Label Studio stored of an import whose answer never came (timed out, or the
    worker died): what it shows after waiting is recorded, the rest is imported again later."""
    version, tasks = in_flight["model_version"], set(in_flight["tasks"])
    stored = _await_import(step, version, tasks, float(in_flight["sent_at"]))
    log.warning(
        "project %s: %d of %d predictions of an unanswered import are in Label Studio",
        step.project_id,
        len(stored),
        len(tasks),
    )
    step.store.save_imported(step.project_id, {t: _recorded(p) for t, p in stored.items()}, in_flight["staged"] or None)




def _await_import(step: Step, version: str, tasks: set[int], sent_at: float) -> dict[int, dict[str, Any]]:
    """Predictions of ``version`` for ``tasks`` once Label Studio shows all of them, or what it
    shows about four write timeouts (at least 20 s) after the import was sent."""
    deadline = sent_at + max(20.0, 4 * step.settings.label_studio_write_timeout_s)
    while True:
        step.lock.reacquire()
        stored = _listed(step, version, tasks)
        if len(stored) == len(tasks) or time.time() > deadline:
            return stored
        time.sleep(1.0)


def _listed(step: Step, version: str, tasks: Iterable[int]) -> dict[int, dict[str, Any]]:
    wanted = set(tasks)
    return {
        int(p["task"]): p
        for p in step.client.list_predictions(step.project_id)
        if p.get("model_version") == version and int(p["task"]) in wanted
    }


def _fill_ids(step: Step, version: str, staged: str | None = None) -> None:
    """Label Studio's ids of the imported predictions (of the live version, or the ``staged``
    one) that have none recorded yet (one listing)."""
    predictions = step.store.all_predictions(step.project_id, staged=staged)
    without = {t for t, p in predictions.items() if "id" not in p}
    if not without:
        return
    step.spend()
    listed = _listed(step, version, without)
    step.store.update_predictions(
        step.project_id, {t: {**predictions[t], "id": int(listed[t]["id"])} for t in listed}, staged=staged
    )
    lost = without - set(listed)
    if lost:  # imported but not listed: forget them (a later pass looks again before importing)
        step.store.redis.hdel(step.store.predictions_key(step.project_id, staged), *lost)
        log.warning(
            "project %s: %d imported predictions of %s are not listed by Label Studio",
            step.project_id,
            len(lost),
            version,
        )


def _write_head(
    step: Step, target: Mapping[str, Any], scores: Sequence[tuple[int, float]], progress: Any, ranks: range
) -> None:
    """New flags and the new ``scores`` of the tasks whose rank (0 first; flagged tasks outside the
    ranking come last) lies in ``ranks``, task by task in rank order, each task's flag before its
    score moves it into the head: the top of the queue is right first, and a step that stops
    (out of requests, or superseded by a newer ranking) leaves a prefix of the head written."""
    score_of = dict(scores)
    flags = _flag_changes(step, target, additions=True)
    rank = _ranks(target)
    by_rank = sorted(set(flags) | set(score_of), key=lambda t: rank.get(t, len(rank)))
    tasks = [t for t in by_rank if rank.get(t, len(rank)) in ranks]
    progress.start_stage("writing the head", sum(1 for t in tasks if t in score_of))
    for start in range(0, len(tasks), TASK_DATA_BATCH):
        chunk = tasks[start : start + TASK_DATA_BATCH]
        data = _task_data(step, [t for t in chunk if t in flags])
        live = step.store.get_predictions(step.project_id, [t for t in chunk if t in score_of])
        for task_id in chunk:
            if task_id in flags and task_id in data:
                _write_flag(step, task_id, data[task_id], flags[task_id])
            if task_id in score_of and task_id in live:
                _write_score(step, task_id, live[task_id], score_of[task_id])
                progress.advance(1)


def _write_flags(step: Step, target: Mapping[str, Any], additions: bool, first: int | None = None) -> None:
    """Flags that differ from what the tasks carry: new or changed texts (``additions``), or
    removals, in rank order (only the ``first`` of them, if given)."""
    flags = _flag_changes(step, target, additions)
    rank = _ranks(target)
    changed = sorted(flags, key=lambda t: rank.get(t, len(rank)))[:first]
    for start in range(0, len(changed), TASK_DATA_BATCH):
        data = _task_data(step, changed[start : start + TASK_DATA_BATCH])
        for task_id in changed[start : start + TASK_DATA_BATCH]:
            if task_id in data:  # else deleted meanwhile
                _write_flag(step, task_id, data[task_id], flags[task_id])


def _flag_changes(step: Step, target: Mapping[str, Any], additions: bool) -> dict[int, str | None]:
    """Task -> its flag text where it differs from what the task carries: new or changed texts
    (``additions``), or removals (None). Only unlabelled ranked tasks and flagged failures are touched."""
    current = step.store.get_flags(step.project_id)
    wanted = wanted_flags(target, step.settings.head_size, current)
    touched = set(wanted) | (set(current) & set(target["order"]))
    return {
        t: wanted.get(t)
        for t in touched
        if current.get(t) != wanted.get(t) and (wanted.get(t) is not None) == additions
    }


def _ranks(target: Mapping[str, Any]) -> dict[int, int]:
    return {task: position for position, task in enumerate(target["order"])}


def _task_data(step: Step, task_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The data of these tasks (one listing; tasks deleted meanwhile are missing)."""
    if not task_ids:
        return {}
    step.spend()
    return {int(task["id"]): task.get("data") or {} for task in step.client.get_tasks(step.project_id, task_ids)}


def _write_flag(step: Step, task_id: int, data: Mapping[str, Any], text: str | None) -> None:
    step.spend()
    step.client.update_task_data(task_id, flagged(data, text))
    step.writes += 1
    step.store.set_flag(step.project_id, task_id, text)


def _write_score(step: Step, task_id: int, prediction: Mapping[str, Any], score: float) -> None:
    step.spend()
    try:
        step.client.update_prediction(prediction["id"], score=score)
    except LabelStudioNotFound:  # the task (and its prediction) was deleted meanwhile
        step.store.redis.hdel(step.store.predictions_key(step.project_id), task_id)
        return
    step.writes += 1
    step.store.update_predictions(step.project_id, {task_id: {**prediction, "score": score}})


def flagged(data: Mapping[str, Any], text: str | None) -> dict[str, Any]:
    """The task data with FreeSel's flag set to ``text`` (None: without a flag)."""
    kept = {k: v for k, v in data.items() if k not in (FLAG_FIELD, LEGACY_RANK_FIELD)}
    return kept if text is None else {**kept, FLAG_FIELD: text}


# ---- cleanup ------------------------------------------------------------------------------------


def delete_old_versions(project_id: int) -> dict[str, int]:
    """Delete FreeSel predictions of versions that are neither live nor being imported."""
    services = job_services()
    store = services.store
    keep = {store.get_state(project_id).get("model_version", "")}
    target = store.get_target(project_id)
    if target and target["full"] and store.get_settings(project_id).enabled:
        keep.add(target["model_version"])
    deleted = delete_freesel_predictions(services, project_id, keep=keep)
    log.info("project %s: %d predictions of old versions deleted", project_id, deleted)
    return {"deleted_predictions": deleted}
