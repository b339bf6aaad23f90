"""RQ jobs: patterns for chunks of tasks, one coalesced selection per project, project sync,
cleanup after disable. Enqueued by ``enqueue.py`` (the flow is described there).

Job functions take plain arguments (project id, task ids) and never a secret: workers read
``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY`` from their own environment (``services.job_services``).
A first ranking draws every pick. A re-ranking fills the head of the queue
(``Settings.head_size`` picks) with the earlier picks that no label covered, in their order, and
keeps the rest of the queue in its earlier order: a label from the top of the head moves the next
pick up, where Label Studio's queue already holds it, so that it is reflected at the cost of a
flag. ``top_up_picks``, on the patterns queue, draws more picks once labels used up half of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from rq import get_current_job

from .settings import ProjectSettings
from ..engine import DuplicateGroups, ExtractionTimings, PatternExtractor
from ..engine.ranking import RankedTasks, failures_in, rank_tail, rank_tasks
from ..engine.selection import DrawSettings
from ..labelstudio.client import LabelStudioNotFound
from ..labelstudio.label_config import LabelConfigError
from .copy_groups import project_copies
from .copy_pass import CopyPass
from .pattern_stages import DownloadClock, job_stages
from .store import SelectionRecord, Store
from .enqueue import (
    JobProgress, defer_selection, enqueue_patterns, enqueue_top_up, enqueue_writeout, rank_if_due, rerank_delay,
    restore_pattern_jobs, schedule_selection, selection_lock, tasks_in_the_works,
)
from .task_images import extractor_for, project_image_field, task_image_bytes, version_of
from .writeout.cleanup import delete_freesel_predictions
from .writeout.flags import flagged, with_copy_of
from .writeout.versions import new_model_version
from .services import Services, job_services

log = logging.getLogger(__name__)

# Picks are topped up once labels left fewer than this share of the budget.
TOP_UP_BELOW = 0.5


def compute_patterns(project_id: int, claim: int | list[int]) -> dict[str, int]:
    """Patterns for up to ``claim`` of the project's pending tasks, drawn when the job starts
    (the same ones again when the job is retried after a failure or a killed worker; a list: the
    tasks of a job queued by an earlier release), then a ranking if one is due. Once no retry
    follows a failure, the drawn tasks are let go (the next sync enqueues them again)."""
    services = job_services()
    job = get_current_job()
    job_id = job.id if job is not None else uuid.uuid4().hex
    task_ids = claim if isinstance(claim, list) else services.store.claim_pending(project_id, job_id, claim)
    try:
        counts = patterns_for(services, project_id, task_ids)
    except Exception:
        if job is None or not job.should_retry:
            settle_claim(services, project_id, job_id)
        raise
    settle_claim(services, project_id, job_id)
    return counts


def settle_claim(services: Services, project_id: int, job_id: str) -> None:
    """The job ``job_id`` is done with the tasks it drew: a ranking if one is due now."""
    services.store.release_claim(project_id, job_id)
    rank_if_due(services, project_id)


def patterns_for(services: Services, project_id: int, task_ids: list[int]) -> dict[str, int]:
    """Patterns for these tasks of the project; an image that cannot be had is a failure with
    its reason. Tasks that already have patterns of the current version and a copy record are skipped. The job's
    meta carries ``done``/``total`` (tasks), updated per model batch."""
    extractor = extractor_for(services.settings, services.store.get_settings(project_id))
    started = time.monotonic()  # after the worker's first job loaded the model
    version = version_of(extractor)
    services.store.use_patterns_version(project_id, version)
    todo = sorted(set(map(int, task_ids)) - done_with_copies(services.store, project_id, version))
    progress = JobProgress(len(todo))
    if not todo:
        return {"patterns": 0, "failed": 0, "skipped": len(task_ids)}
    try:
        tasks = services.client.get_tasks(project_id, todo)
        image_field = project_image_field(services, project_id)
    except LabelStudioNotFound:
        log.warning("project %s does not exist in Label Studio: dropping %d of its tasks", project_id, len(todo))
        services.store.remove_tasks(project_id, todo)
        return {"patterns": 0, "failed": 0, "skipped": len(task_ids), "missing_project": 1}
    except LabelConfigError as error:
        services.store.save_results(project_id, version, {}, {task_id: str(error) for task_id in todo})
        return {"patterns": 0, "failed": len(todo), "skipped": len(task_ids) - len(todo)}
    services.store.remove_tasks(project_id, set(todo) - {int(task["id"]) for task in tasks})
    log.info(
        "project %s: patterns for %d tasks started (%d already done, version %s)",
        project_id,
        len(todo),
        len(task_ids) - len(todo),
        version,
    )
    patterns, failures = extract_and_store(
        services, project_id, extractor, tasks, image_field, started=started, on_batch=progress.advance
    )
    for task_id, reason in failures.items():
        log.warning("project %s task %s: no patterns: %s", project_id, task_id, reason)
    seconds = time.monotonic() - started
    log.info(
        "project %s: patterns for %d tasks finished in %.1f s (%.1f tasks/s): %d ok, %d failed",
        project_id, len(todo), seconds, len(todo) / max(seconds, 1e-9), len(patterns), len(failures),
    )
    return {"patterns": len(patterns), "failed": len(failures), "skipped": len(task_ids) - len(todo)}


def extract_and_store(
    services: Services,
    project_id: int,
    extractor: PatternExtractor,
    tasks: Sequence[Mapping[str, Any]],
    image_field: str,
    *,
    started: float,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Patterns and failures of ``tasks`` (Label Studio's task dicts), saved in one round trip:
    the images are downloaded and decoded in the extractor's background threads while the model
    runs. The job's time per stage since ``started`` (``time.monotonic()`` at its start) is added
    to the project's pattern stages."""
    version = version_of(extractor)
    downloads, timings = DownloadClock(), ExtractionTimings()
    copy_pass = CopyPass(services.store, project_id, version)
    opened = extractor.extract_sources(
        tasks, copy_pass.opener(lambda task: task_image_bytes(services.downloader, task, image_field, downloads)),
        on_batch=on_batch, timings=timings,
    )
    patterns: dict[int, np.ndarray] = {}
    failures: dict[int, str] = {}
    for result in opened:
        task_id = int(result.source["id"])
        if result.patterns is not None:
            patterns[task_id] = result.patterns
        elif task_id in copy_pass.reused:
            patterns[task_id] = copy_pass.reused[task_id]
        else:
            failures[task_id] = result.error or "unknown error"
    store_started = time.monotonic()
    services.store.save_results(project_id, version, patterns, failures)
    copy_pass.save(patterns)
    finished = time.monotonic()
    stages = job_stages(finished - started, downloads, timings, finished - store_started)
    services.store.add_pattern_stages(project_id, version, len(patterns) + len(failures), stages)
    return patterns, failures


def done_with_copies(store: Store, project_id: int, version: str) -> set[int]:
    """The tasks with patterns of ``version`` and a copy record (a task with patterns stored
    before copy records were kept gets its record from a pattern job, with no forward)."""
    return store.tasks_with_patterns(project_id, version) & store.tasks_with_copy_records(project_id)


@dataclass(frozen=True)
class Reconciled:
    """Tasks Label Studio listed, those the store dropped, those sent for patterns."""

    listed: set[int]
    gone: set[int]
    enqueued: set[int]


def reconcile(
    services: Services, project_id: int, listed: Iterable[int], *, every_task: bool, version: str | None = None
) -> Reconciled:
    """Bring the store to the tasks Label Studio ``listed``: with ``every_task`` (the listing is
    the whole project) tasks it lacks are dropped with their patterns; pattern jobs (rankings
    follow them) for the listed tasks the store has not seen and, given the patterns
    ``version``, for those with neither patterns nor a failure of it, nor a pattern job at work on them."""
    store = services.store
    listed = set(listed)
    known = store.task_ids(project_id)
    gone = known - listed if every_task else set()
    store.remove_tasks(project_id, gone)
    settled = known
    if version:
        settled = done_with_copies(store, project_id, version) | set(store.failures(project_id, version))
        settled |= tasks_in_the_works(services, project_id)
    missing = listed - settled
    if missing:  # imported without a webhook, or Redis lost its data: compute them, rank again after
        log.info("project %s: %d listed tasks have no patterns yet, enqueueing them", project_id, len(missing))
        enqueue_patterns(services, project_id, missing)
    return Reconciled(listed, gone, missing)


def sync_project(project_id: int) -> dict[str, int]:
    """Enqueue patterns for every task of the project that has none (and no failure) yet; re-rank
    only when tasks went away or no ranking exists yet (Label Studio calls /setup often)."""
    services = job_services()
    store = services.store
    version = version_of(extractor_for(services.settings, store.get_settings(project_id)))
    store.use_patterns_version(project_id, version)
    task_ids = {int(task["id"]) for task in services.client.iter_tasks(project_id)}
    reconciled = reconcile(services, project_id, task_ids, every_task=True, version=version)
    restore_pattern_jobs(services, project_id)
    if not reconciled.enqueued:
        store.add_tasks(project_id, task_ids)
        if reconciled.gone or store.get_state(project_id).get("ranked_version") != version:
            schedule_selection(services, project_id)
    log.info(
        "project %s: sync: %d tasks, %d need patterns, %d gone",
        project_id, len(task_ids), len(reconciled.enqueued), len(reconciled.gone),
    )
    return {"tasks": len(task_ids), "enqueued": len(reconciled.enqueued)}


def run_selection(project_id: int) -> dict[str, Any]:
    """Rank the project's unlabelled tasks (labelled ones are seeds) and store the ranking as the
    target of the write-out (enqueued here): the head filled with the last ranking's picks that no
    label covered (drawn where they fall short), the rest in the last ranking's order (every pick
    drawn, then the rest by distance, on a first ranking and after a ranking of a sample of the
    patterns, made while they came in), a top-up of the picks enqueued once
    labels used up half of them. Skipped when
    neither the tasks, the labels, the patterns nor the settings changed since the last ranking.

    Reconcile (the labelled tasks with the store) -> rank (``engine.ranking.rank_tasks``) ->
    publish (the target; a write-out)."""
    services = job_services()
    store = services.store
    settings = store.get_settings(project_id)
    if not settings.enabled:
        return {"skipped": "FreeSel is disabled for this project"}
    too_soon_s = rerank_delay(store, project_id, services.settings)
    if too_soon_s > 0:  # requested while the last ranking ran: one ranking per interval all the same
        deferred = defer_selection(services, project_id, too_soon_s)
        return {"deferred": f"to job {deferred.id}, in {too_soon_s:.1f} s"}
    started, requests_before = time.monotonic(), services.client.requests_sent
    store.update_state(project_id, ranking_started_at=time.time())
    progress = JobProgress(0, stage="loading tasks")
    version = store.get_state(project_id).get("patterns_version") or ""
    record = store.get_selection(project_id)
    try:
        labelled_in_label_studio = labelled_tasks(services, project_id, labelled_before(record))
    except LabelStudioNotFound:
        return {"skipped": f"project {project_id} does not exist in Label Studio"}
    # The project's tasks as webhooks (TASKS_CREATED, TASKS_DELETED) and syncs recorded them: a
    # full listing per ranking would cost more than the ranking at thousands of tasks. None
    # recorded (Redis lost its data): one full listing.
    tasks = store.task_ids(project_id) or {int(task["id"]) for task in services.client.iter_tasks(project_id)}
    reconcile(services, project_id, tasks | labelled_in_label_studio, every_task=False)
    coming_in = store.patterns_outstanding(project_id)  # asked first: a chunk may finish while patterns load
    stored = store.load_patterns(project_id, version, tasks) if version else {}
    if not stored:  # connected to a project before its tasks' patterns: nothing to rank or switch to
        return {"skipped": "no task has patterns yet"}
    failed = store.failures(project_id, version) if version else {}
    failures = {t: reason for t, reason in failed.items() if t in tasks}
    labelled = labelled_in_label_studio & set(stored)
    fingerprint = _fingerprint(settings, version, sorted(stored), labelled, failures)
    if fingerprint == store.get_state(project_id).get("ranked_fingerprint") and store.get_target(project_id):
        return {"skipped": "nothing that decides the ranking changed"}
    unlabelled = len(stored) - len(labelled)
    progress.start_stage("ranking", unlabelled)
    previous = _previous_target(store, project_id, settings, version)
    threshold = settings.copy_threshold
    duplicates, draw = earlier_analysis(record, version, sorted(stored), settings.draw_settings(), threshold)
    if duplicates is None:
        duplicates = project_copies(store, project_id, sorted(stored), threshold)
    ranked = rank_tasks(
        stored, labelled, failures, settings.picks_for(unlabelled), head_size=services.settings.head_size,
        previous=previous.get("order", []), previous_n_picked=int(previous.get("n_picked", 0)),
        draw=draw, duplicates=duplicates,
    )
    target = publish_ranking(
        services, project_id, ranked, fingerprint, version,
        last_selection_at=time.time(),
        n_picked=ranked.n_picked,
        n_ranked=len(ranked.order),
        ranked_version=version,
        ranked_patterns=len(stored),
        ranked_from_sample=int(coming_in and len(stored) + len(failures) < len(tasks)),
        ranked_fingerprint=fingerprint,
        ranking_seconds=round(time.monotonic() - started, 2),
        ranking_requests=services.client.requests_sent - requests_before,
    )
    if version and sum(store.count_done(project_id, version)) >= len(store.task_ids(project_id)):
        store.end_progress(project_id)
    if ranked.ranking is not None and ranked.n_picked < settings.picks_for(unlabelled) * TOP_UP_BELOW:
        enqueue_top_up(services, project_id)
    log.info(
        "project %s: selection %s: %d picks among %d unlabelled tasks (%d seeds) in %.1f s%s",
        project_id, target["model_version"], ranked.n_picked, len(ranked.order), len(labelled),
        time.monotonic() - started, " (a new version)" if target["full"] else "",
    )
    return {
        "ranked": len(ranked.order),
        "picked": ranked.n_picked,
        "seeds": len(labelled),
        "model_version": target["model_version"],
    }


def labelled_before(record: SelectionRecord | None) -> set[int]:
    """The tasks that were labelled (the seeds) when the last ranking was made."""
    return {record.task_ids[image] for image in record.seeds} if record is not None else set()


def labelled_tasks(services: Services, project_id: int, labelled_earlier: set[int]) -> set[int]:
    """The project's labelled tasks: Label Studio's listing of tasks with an annotation, plus the
    ``labelled_earlier`` tasks it leaves out that still hold an annotation (looked up one by one).
    The listing filters on the annotation count Label Studio keeps in the task row, which a
    full-row task update (``PATCH /api/tasks/<id>/`` saves every field it read) can set back while
    an annotation is being counted; a labelled task listed as unlabelled was seen at 20,000 tasks
    with three annotators. A ranking that took it for a new task would redraw the queue's head."""
    listed = services.client.labelled_task_ids(project_id)
    for task_id in sorted(labelled_earlier - listed):
        try:
            annotations = services.client.get_task(task_id).get("annotations") or []
        except LabelStudioNotFound:  # deleted
            continue
        if any(not annotation.get("was_cancelled") for annotation in annotations):
            log.warning("project %s: task %s holds an annotation that Label Studio's count misses", project_id, task_id)
            listed.add(task_id)
    return listed


def earlier_analysis(
    record: SelectionRecord | None, version: str, task_ids: Sequence[int], draw: DrawSettings, copy_threshold: float
) -> tuple[DuplicateGroups | None, DrawSettings]:
    """The last ranking's copy groups (if found with ``copy_threshold``) and ``draw`` with its draw
    prior (if drawn with ``draw``'s strategy) when it ranked the same tasks with the same patterns
    (a re-ranking after labels): at thousands of tasks, finding them afresh costs more than the
    rest of the ranking (the copy detector's candidate search; the typicality prior's neighbours)."""
    if record is None or record.patterns_version != version or record.task_ids != list(task_ids):
        return None, draw
    duplicates = record.duplicates() if record.duplicate_threshold == copy_threshold else None
    return duplicates, draw.with_prior(record.draw_prior(draw.strategy))


def _previous_target(store: Store, project_id: int, settings: ProjectSettings, version: str) -> dict[str, Any]:
    """The last target, whose order the tail of a new ranking keeps; none after a settings or
    patterns change, nor after a ranking of a sample of the patterns, made while they came in (its
    order then means nothing for the new ranking, drawn afresh: the last ranking of an import is
    the one a ranking made once all patterns were in would be)."""
    previous = store.get_target(project_id) or {}
    if store.get_state(project_id).get("ranked_from_sample") == "1":
        return {}
    return previous if previous.get("settings_key") == fingerprint_of_settings(settings, version) else {}


def publish_ranking(
    services: Services, project_id: int, ranked: RankedTasks, fingerprint: str, version: str, **state: str | int | float
) -> dict[str, Any]:
    """Store ``ranked`` as the write-out's target (and the selection record the report and
    status read), then ``state`` in the project's state, then make sure a write-out step is waiting."""
    store = services.store
    with selection_lock(store, project_id):
        target = _target(store, project_id, fingerprint, ranked, services.settings.head_size)
        _save_ranking(store, project_id, target, version, ranked)
    store.update_state(project_id, **state)
    enqueue_writeout(services, project_id)
    return target


def _save_ranking(store: Store, project_id: int, target: dict[str, Any], version: str, ranked: RankedTasks) -> None:
    """The write-out's target, and what was ranked (for the report and the status)."""
    if ranked.ranking is not None:
        name = f"{target['model_version']} ranking {target['generation']}"
        record = SelectionRecord.of(
            name, version, ranked.task_ids, ranked.ranking, ranked.duplicates, ranked.draw.strategy, ranked.draw.prior
        )
        store.save_selection(project_id, record)
    store.save_target(project_id, target)


def top_up_picks(project_id: int) -> dict[str, Any]:
    """Keep every pick of the last ranking, in its order, and draw picks after them up to the
    budget (with the labels and the picks as seeds); the tasks after the picks follow by distance.
    Dropped when a newer ranking replaced the target meanwhile: that one asks for its own top-up.
    The picks already in Label Studio's queue stay where they are: the new ones are written when
    they reach the head."""
    services = job_services()
    store = services.store
    settings, target = store.get_settings(project_id), store.get_target(project_id)
    record = store.get_selection(project_id)
    if not settings.enabled or target is None or record is None:
        return {"skipped": "no ranking to top up"}
    stored = store.load_patterns(project_id, record.patterns_version, record.task_ids)
    if len(stored) != len(record.task_ids):
        return {"skipped": "the ranked tasks changed: the next ranking tops up"}
    ranking = record.ranking()
    ranked = rank_tail(
        [stored[t] for t in record.task_ids], record.task_ids, ranking, record.duplicates(),
        failures_in(target["flags"]),
        settings.picks_for(len(record.task_ids) - len(ranking.seeds)), head_size=ranking.n_picked,
        draw=settings.draw_settings().with_prior(record.draw_prior(settings.strategy)),
    )
    with selection_lock(store, project_id):
        if store.get_target(project_id) != target:
            return {"skipped": "a newer ranking replaced the target"}
        topped_up = {
            **target, "generation": store.next_run(project_id), "order": ranked.order, "n_picked": ranked.n_picked,
            "flags": ranked.flags, "copy_of": ranked.copy_of,
        }
        _save_ranking(store, project_id, topped_up, record.patterns_version, ranked)
    store.update_state(project_id, n_picked=ranked.n_picked)
    enqueue_writeout(services, project_id)
    added = ranked.n_picked - ranking.n_picked
    log.info("project %s: picks topped up: %d after %d", project_id, added, ranking.n_picked)
    return {"picked": ranked.n_picked, "kept": ranking.n_picked}


def _fingerprint(
    settings: ProjectSettings, version: str, ids: Sequence[int], labelled: set[int], failures: Mapping[int, str]
) -> str:
    """What decides a ranking: settings, patterns version, the tasks, which are labelled, which failed."""
    described = json.dumps([settings.to_dict(), version, list(ids), sorted(labelled), sorted(failures)], default=str)
    return hashlib.sha1(described.encode()).hexdigest()


def _target(store: Store, project_id: int, fingerprint: str, ranked: RankedTasks, head_size: int) -> dict[str, Any]:
    """The write-out's target. A new model version only on the first ranking or after a settings
    or patterns change (an unfinished new version is reused); otherwise the live one, changed in place.
    ``head_size``: the head ``ranked`` was ranked with, which the write-out keeps in exact order and
    flags, whatever its own worker's setting."""
    state, previous = store.get_state(project_id), store.get_target(project_id) or {}
    settings_key = fingerprint_of_settings(store.get_settings(project_id), state.get("patterns_version", ""))
    live = state.get("model_version", "")
    unfinished = previous.get("full") and previous.get("model_version") != live
    full = not live or unfinished or previous.get("settings_key") != settings_key
    model_version = (
        previous["model_version"] if unfinished else (new_model_version(store, project_id) if full else live)
    )
    return {
        "generation": store.next_run(project_id),
        "model_version": model_version,
        "full": bool(full),
        "settings_key": settings_key,
        "order": ranked.order,
        "n_picked": ranked.n_picked,
        "flags": ranked.flags,
        "copy_of": ranked.copy_of,
        "head_size": head_size,
    }


def fingerprint_of_settings(settings: ProjectSettings, patterns_version: str) -> str:
    return hashlib.sha1(json.dumps([settings.to_dict(), patterns_version], default=str).encode()).hexdigest()


def remove_selection(project_id: int) -> dict[str, int]:
    """After disable: delete FreeSel's predictions (one request each, see ``writeout.cleanup``),
    flags and ``freesel_copy_of`` fields."""
    services = job_services()
    store = services.store
    flags = store.get_flags(project_id)
    deleted = delete_freesel_predictions(services, project_id)
    copies = store.copy_fields(project_id)
    marked = sorted(set(flags) | set(copies))
    tasks = {int(task["id"]): task for task in services.client.get_tasks(project_id, marked)} if marked else {}
    for task_id in marked:
        if task_id in tasks:
            data = with_copy_of(flagged(tasks[task_id].get("data") or {}, None), None)
            services.client.update_task_data(task_id, data)
        store.set_flag(project_id, task_id, None)
        store.set_copy_field(project_id, task_id, None)
    store.replace_predictions(project_id, {})
    store.forget_ranking(project_id)
    log.info(
        "project %s: FreeSel disabled: %d predictions deleted, flags or copy fields removed from %d tasks",
        project_id, deleted, len(marked),
    )
    return {"deleted_predictions": deleted}
