"""RQ jobs: patterns for chunks of tasks, one coalesced selection per project, project sync.

Job functions take plain arguments (project id, task ids) and never a secret: workers read
``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY`` from their own environment. Enqueue helpers take
the Redis connection explicitly. Flow: ``enqueue_patterns`` -> ``compute_patterns`` chunks ->
``run_selection`` (depends on the chunks; at most one waiting per project, at most one started
per ``rerank_interval_s``) -> a target ranking in Redis -> ``writeout.write_out`` steps bring
Label Studio to it (see ``writeout.py``). A ranking draws only the head of the queue afresh
(``Settings.head_size`` picks) and keeps the tail's earlier order, so that a label is reflected
at the cost of a head; ``refresh_tail``, on the patterns queue, draws the tail afresh after it.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import redis
from rq import Queue, Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job, JobStatus

from .config import CLEANUP_QUEUE, FEATURES_QUEUE, SELECTION_QUEUE, ProjectSettings, Settings
from .engine import DuplicateGroups, ImageLoadError, PatternExtractor, find_near_duplicates, load_image
from .engine.selection import extend_head, rerank_head
from .label_studio import LabelStudioClient, LabelStudioError, LabelStudioNotFound, LabelStudioUnavailable
from .store import SelectionRecord, Store, patterns_version
from .writeout import VERSION_PREFIX, delete_predictions, enqueue_writeout, flagged

log = logging.getLogger(__name__)

FAILURE_FLAG = "FreeSel could not use this image: "
# Answers meaning "Label Studio is down or overloaded" (None: no answer): retry the chunk later.
# Any other error (a 500 for one missing upload, say) belongs to that one task.
LABEL_STUDIO_DOWN = frozenset({None, 429, 502, 503, 504})
WAITING = (JobStatus.DEFERRED, JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.CREATED)


# ---- the worker process's shared objects -------------------------------------------------------


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    store: Store
    client: LabelStudioClient


@functools.lru_cache(maxsize=1)
def _settings() -> Settings:
    return Settings.from_env()


def client_for(settings: Settings) -> LabelStudioClient:
    """The Label Studio client with the download policy and caps of ``settings``."""
    return LabelStudioClient(
        settings.label_studio_url,
        settings.label_studio_api_key,
        max_download_bytes=settings.download_max_bytes,
        download_timeout=settings.download_timeout_s,
        allow_private_addresses=settings.allow_private_downloads,
    )


@functools.lru_cache(maxsize=1)
def _client() -> LabelStudioClient:
    return client_for(_settings())


def _context() -> WorkerContext:
    job = get_current_job()
    if job is None:
        raise RuntimeError("FreeSel job functions run inside an RQ worker")
    return WorkerContext(_settings(), Store(job.connection), _client())


@functools.lru_cache(maxsize=2)
def _cached_extractor(model: str, patterns_per_image: int, attention_ratio: float, seed: int, settings: Settings) -> PatternExtractor:
    return PatternExtractor(
        model,
        patterns_per_image=patterns_per_image,
        attention_ratio=attention_ratio,
        seed=seed,
        device=settings.device,
        precision=settings.precision,  # type: ignore[arg-type]
        batch_size=settings.batch_size,
        random_init=settings.test_random_init,
        image_size=settings.test_image_size,
        cache_dir=settings.model_dir / "models",
    )


def extractor_for(settings: Settings, project: ProjectSettings) -> PatternExtractor:
    """The worker's extractor for these project settings (created once, then reused)."""
    return _cached_extractor(
        project.model_name(settings.model), project.patterns_per_image, float(project.attention_ratio), project.seed, settings
    )


def version_of(extractor: PatternExtractor) -> str:
    options = extractor.settings
    return patterns_version(
        extractor.model_id,
        patterns_per_image=options.patterns_per_image,
        attention_ratio=options.attention_ratio,
        image_size=extractor.input_size,
        kmeans_iterations=options.kmeans_iterations,
        seed=options.seed,
        random_init=extractor.backbone_spec.random_init,
        # bf16 patterns differ from fp32 ones by rounding: never mixed in one ranking. fp32 stays
        # out of the name so that patterns stored before precision was part of it stay valid.
        **({"precision": extractor.precision} if extractor.precision != "fp32" else {}),
    )


# ---- enqueueing (web service and jobs) ----------------------------------------------------------


def _chunks(items: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _retry(settings: Settings) -> Retry | None:
    if settings.job_retries == 0:
        return None
    return Retry(max=settings.job_retries, interval=list(settings.retry_intervals[: settings.job_retries]))


def enqueue_project_job(
    queue: Queue, settings: Settings, function: Callable[..., Any], project_id: int, *args: Any,
    what: str, meta: dict[str, Any] | None = None, delay_s: float = 0, **options: Any,
) -> Job:
    """One of a project's jobs: the settings' retries and time limit (``job_timeout`` in
    ``options`` overrides it), the project in its meta, "FreeSel <what>" as its description;
    started no sooner than ``delay_s`` from now (by the workers' scheduler)."""
    options.setdefault("job_timeout", settings.job_timeout_s)
    options.update(retry=_retry(settings), meta={"project": project_id, **(meta or {})}, description=f"FreeSel {what}")
    if delay_s > 0:
        return queue.enqueue_in(datetime.timedelta(seconds=delay_s), function, project_id, *args, **options)
    return queue.enqueue(function, project_id, *args, **options)


def enqueue_patterns(connection: redis.Redis, settings: Settings, project_id: int, task_ids: Iterable[int]) -> list[Job]:
    """Feature jobs for these tasks (chunks of ``settings.chunk_size``) and a selection after them."""
    ids = sorted({int(t) for t in task_ids})
    if not ids:
        return []
    store = Store(connection)
    store.add_tasks(project_id, ids)
    version = store.get_state(project_id).get("patterns_version")
    store.start_progress(project_id, sum(store.count_done(project_id, version)) if version else 0)
    queue = Queue(FEATURES_QUEUE, connection=connection)
    jobs = [
        enqueue_project_job(
            queue, settings, compute_patterns, project_id, chunk,
            what=f"patterns: project {project_id}, {len(chunk)} tasks", meta={"tasks": len(chunk)},
        )
        for chunk in _chunks(ids, settings.chunk_size)
    ]
    schedule_selection(connection, settings, project_id, after=jobs)
    return jobs


def schedule_selection(connection: redis.Redis, settings: Settings, project_id: int, after: Sequence[Job] = ()) -> Job:
    """Make sure one selection runs after ``after``; a selection still waiting absorbs this request.

    The waiting job (if any) is replaced by one that depends on its unfinished dependencies plus
    ``after``, so a burst of imports ends in one selection, not one per import. A selection that
    is running is a dependency too: two selections of a project never run at once. Without
    dependencies, a selection starts no sooner than ``rerank_interval_s`` after the last one began
    (a burst of labels ends in one re-ranking).
    """
    store = Store(connection)
    with _selection_lock(store, project_id):
        previous = _previous_selection(connection, store, project_id)
        dependencies = [job.id for job in after]
        if previous is not None and previous.get_status() in WAITING:
            if not dependencies:
                return previous
            dependencies += _unfinished(connection, previous.dependency_ids)
            previous.cancel()
        elif previous is not None and previous.get_status() == JobStatus.STARTED:
            dependencies.append(previous.id)
        job = enqueue_project_job(
            Queue(SELECTION_QUEUE, connection=connection), settings, run_selection, project_id,
            what=f"selection: project {project_id}",
            depends_on=Dependency(jobs=dependencies, allow_failure=True) if dependencies else None,
            delay_s=0 if dependencies else _rerank_delay(store, project_id, settings),
        )
        store.update_state(project_id, pending_selection=job.id)
    return job


def _rerank_delay(store: Store, project_id: int, settings: Settings) -> float:
    last = store.get_state(project_id).get("ranking_started_at")
    return max(0.0, float(last) + settings.rerank_interval_s - time.time()) if last else 0.0


def _previous_selection(connection: redis.Redis, store: Store, project_id: int) -> Job | None:
    """The project's last enqueued selection job (its status freshly read), if RQ still has it."""
    return fetch_job(connection, store.get_state(project_id).get("pending_selection"))


def fetch_job(connection: redis.Redis, job_id: str | None) -> Job | None:
    """The job ``job_id`` with its status freshly read, or None when RQ no longer has it."""
    if not job_id:
        return None
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None
    job.get_status(refresh=True)
    return job


def _unfinished(connection: redis.Redis, job_ids: Iterable[str]) -> list[str]:
    jobs = Job.fetch_many(list(job_ids), connection=connection)
    return [job.id for job in jobs if job is not None and job.get_status() not in (JobStatus.FINISHED, JobStatus.FAILED)]


def enqueue_sync(connection: redis.Redis, settings: Settings, project_id: int) -> Job:
    """Compare the project's tasks with the stored patterns and enqueue what is missing (a job)."""
    return enqueue_project_job(
        Queue(SELECTION_QUEUE, connection=connection), settings, sync_project, project_id,
        what=f"sync: project {project_id}",
    )


def enqueue_cleanup(connection: redis.Redis, settings: Settings, project_id: int) -> Job:
    # RQ's default time limit (job_timeout=None), as before: cleanup only deletes predictions.
    return enqueue_project_job(
        Queue(CLEANUP_QUEUE, connection=connection), settings, remove_selection, project_id,
        what=f"cleanup: project {project_id}", job_timeout=None,
    )


# ---- jobs ---------------------------------------------------------------------------------------


def compute_patterns(project_id: int, task_ids: list[int]) -> dict[str, int]:
    """Patterns for these tasks of the project; an image that cannot be had is a failure with
    its reason. Tasks that already have patterns of the current version are skipped. The job's
    meta carries ``done``/``total`` (tasks), updated per model batch."""
    context = _context()
    started = time.monotonic()
    extractor = extractor_for(context.settings, context.store.get_settings(project_id))
    version = version_of(extractor)
    context.store.use_patterns_version(project_id, version)
    todo = sorted(set(map(int, task_ids)) - set(context.store.load_patterns(project_id, version, task_ids)))
    progress = JobProgress(len(todo))
    if not todo:
        return {"patterns": 0, "failed": 0, "skipped": len(task_ids)}
    from .model import LabelConfigError  # the label config is parsed in one place

    try:
        tasks = context.client.get_tasks(project_id, todo)
        image_field = _image_field(context, project_id)
    except LabelStudioNotFound:
        log.warning("project %s does not exist in Label Studio: dropping %d of its tasks", project_id, len(todo))
        context.store.remove_tasks(project_id, todo)
        return {"patterns": 0, "failed": 0, "skipped": len(task_ids), "missing_project": 1}
    except LabelConfigError as error:
        context.store.save_results(project_id, version, {}, {task_id: str(error) for task_id in todo})
        return {"patterns": 0, "failed": len(todo), "skipped": len(task_ids) - len(todo)}
    context.store.remove_tasks(project_id, set(todo) - {int(task["id"]) for task in tasks})
    log.info("project %s: patterns for %d tasks started (%d already done, version %s)", project_id, len(todo), len(task_ids) - len(todo), version)
    patterns: dict[int, np.ndarray] = {}
    failures: dict[int, str] = {}
    opened = extractor.extract_sources(tasks, lambda task: _open_task_image(context.client, task, image_field), on_batch=progress.advance)
    for result in opened:
        task_id = int(result.source["id"])
        if result.patterns is None:
            failures[task_id] = result.error or "unknown error"
        else:
            patterns[task_id] = result.patterns
    context.store.save_results(project_id, version, patterns, failures)
    for task_id, reason in failures.items():
        log.warning("project %s task %s: no patterns: %s", project_id, task_id, reason)
    seconds = time.monotonic() - started
    log.info(
        "project %s: patterns for %d tasks finished in %.1f s (%.1f tasks/s): %d ok, %d failed",
        project_id, len(todo), seconds, len(todo) / max(seconds, 1e-9), len(patterns), len(failures),
    )
    return {"patterns": len(patterns), "failed": len(failures), "skipped": len(task_ids) - len(todo)}


class JobProgress:
    """``done``/``total`` (and a stage) in the current RQ job's meta, for the status endpoint."""

    def __init__(self, total: int, stage: str = "") -> None:
        self.job = get_current_job()
        self.total, self.done = total, 0
        self.stage = stage
        self._save()

    def advance(self, count: int) -> None:
        self.done = min(self.total, self.done + count)
        self._save()

    def start_stage(self, stage: str, total: int) -> None:
        self.stage, self.total, self.done = stage, total, 0
        self._save()

    def _save(self) -> None:
        if self.job is not None:
            self.job.meta.update({"done": self.done, "total": self.total, "stage": self.stage, "updated_at": time.time()})
            self.job.save_meta()


def _image_field(context: WorkerContext, project_id: int) -> str:
    field = context.store.get_state(project_id).get("image_field")
    if not field:
        from .model import image_field_of  # the label config is parsed in one place

        field = image_field_of(context.client.get_label_config(project_id))
        context.store.update_state(project_id, image_field=field)
    return field


def _open_task_image(client: LabelStudioClient, task: Mapping[str, Any], image_field: str) -> Any:
    data = task.get("data") or {}
    if image_field not in data:
        raise ImageLoadError(f"task has no {image_field!r} field in its data (fields: {', '.join(map(str, data)) or 'none'})")
    if not isinstance(data[image_field], str):
        raise ImageLoadError(f"data[{image_field!r}] is a {type(data[image_field]).__name__}, not an image URL")
    try:
        image_bytes = client.download_task_file(task, image_field)
    except LabelStudioError as error:
        label_studio_down = isinstance(error, LabelStudioUnavailable) and error.status_code in LABEL_STUDIO_DOWN
        if label_studio_down and _hosted_by_label_studio(client, data[image_field], int(task["id"])):
            raise  # Label Studio itself is unavailable: the job fails and RQ retries it later
        raise ImageLoadError(f"image download failed: {error}") from None
    return load_image(image_bytes)


def _hosted_by_label_studio(client: LabelStudioClient, uri: str, task_id: int) -> bool:
    try:
        return client.resolve_download_url(uri, task_id)[1]
    except LabelStudioError:
        return False


def sync_project(project_id: int) -> dict[str, int]:
    """Enqueue patterns for every task of the project that has none (and no failure) yet; re-rank
    only when tasks went away or no ranking exists yet (Label Studio calls /setup often)."""
    context = _context()
    store = context.store
    extractor = extractor_for(context.settings, store.get_settings(project_id))
    version = version_of(extractor)
    store.use_patterns_version(project_id, version)
    task_ids = {int(task["id"]) for task in context.client.iter_tasks(project_id)}
    gone = store.task_ids(project_id) - task_ids
    store.remove_tasks(project_id, gone)
    settled = store.tasks_with_patterns(project_id, version) | set(store.failures(project_id, version))
    missing = task_ids - settled
    connection = store.redis
    if missing:
        enqueue_patterns(connection, context.settings, project_id, missing)
    else:
        store.add_tasks(project_id, task_ids)
        if gone or store.get_state(project_id).get("ranked_version") != version:
            schedule_selection(connection, context.settings, project_id)
    log.info("project %s: sync: %d tasks, %d need patterns, %d gone", project_id, len(task_ids), len(missing), len(gone))
    return {"tasks": len(task_ids), "enqueued": len(missing)}


def run_selection(project_id: int) -> dict[str, Any]:
    """Rank the project's unlabelled tasks (labelled ones are seeds) and store the ranking as the
    target of the write-out (enqueued here): the head drawn afresh, the rest in the last
    ranking's order (by distance on a first ranking), the tail's refresh enqueued. Skipped when
    neither the tasks, the labels, the patterns nor the settings changed since the last ranking."""
    context = _context()
    store = context.store
    settings = store.get_settings(project_id)
    if not settings.enabled:
        return {"skipped": "FreeSel is disabled for this project"}
    started, requests_before = time.monotonic(), context.client.requests_sent
    store.update_state(project_id, ranking_started_at=time.time())
    progress = JobProgress(0, stage="loading tasks")
    version = store.get_state(project_id).get("patterns_version")
    try:
        labelled_in_label_studio = context.client.labelled_task_ids(project_id)
    except LabelStudioNotFound:
        return {"skipped": f"project {project_id} does not exist in Label Studio"}
    # The project's tasks as webhooks (TASKS_CREATED, TASKS_DELETED) and syncs recorded them: a
    # full listing per ranking would cost more than the ranking at thousands of tasks. None
    # recorded (Redis lost its data): one full listing.
    known = store.task_ids(project_id)
    tasks = known or {int(task["id"]) for task in context.client.iter_tasks(project_id)}
    unknown = (tasks | labelled_in_label_studio) - known
    if unknown:  # imported without a webhook, or Redis lost its data: compute them, rank again after
        log.info("project %s: %d tasks have no patterns yet, enqueueing them", project_id, len(unknown))
        enqueue_patterns(store.redis, context.settings, project_id, unknown)
    stored = store.load_patterns(project_id, version, tasks) if version else {}
    failures = {t: reason for t, reason in (store.failures(project_id, version) if version else {}).items() if t in tasks}
    ids = sorted(stored)
    if not ids:  # connected to a project before its tasks' patterns: nothing to rank or switch to
        return {"skipped": "no task has patterns yet"}
    labelled = labelled_in_label_studio & set(ids)
    fingerprint = _fingerprint(settings, version or "", ids, labelled, failures)
    if fingerprint == store.get_state(project_id).get("ranked_fingerprint") and store.get_target(project_id):
        return {"skipped": "nothing that decides the ranking changed"}
    patterns = [stored[t] for t in ids]
    seeds = [i for i, t in enumerate(ids) if t in labelled]
    unlabelled = len(ids) - len(labelled)
    progress.start_stage("ranking", unlabelled)
    previous_order, previous_n_picked = _previous_ranking(store, project_id, settings, version or "", ids)
    ranking = rerank_head(
        patterns, context.settings.head_size, settings.picks_for(unlabelled), previous_order=previous_order,
        previous_n_picked=previous_n_picked, strategy=settings.strategy, seeds=seeds, seed=settings.seed,  # type: ignore[arg-type]
        duplicate_threshold=settings.duplicate_threshold,
    ) if unlabelled else None
    duplicates = find_near_duplicates(patterns, settings.duplicate_threshold)
    order = [ids[image] for image in ranking.order] if ranking else []
    picked = order[: ranking.n_picked] if ranking else []
    with _selection_lock(store, project_id):
        target = _target(store, project_id, fingerprint, order, picked, flags_for(failures, near_duplicate_of_chosen(ids, duplicates, set(picked) | labelled)))
        if ranking is not None:
            store.save_selection(project_id, SelectionRecord.of(f"{target['model_version']} ranking {target['generation']}", version or "", ids, ranking, duplicates))
        store.save_target(project_id, target)
    store.update_state(
        project_id, last_selection_at=time.time(), n_picked=len(picked), n_ranked=len(order), ranked_version=version or "",
        ranked_fingerprint=fingerprint, ranking_seconds=round(time.monotonic() - started, 2),
        ranking_requests=context.client.requests_sent - requests_before,
    )
    if version and sum(store.count_done(project_id, version)) >= len(store.task_ids(project_id)):
        store.end_progress(project_id)
    enqueue_writeout(store.redis, context.settings, project_id)
    if ranking is not None and settings.picks_for(unlabelled) > context.settings.head_size:
        enqueue_tail_refresh(store.redis, context.settings, project_id)
    log.info(
        "project %s: selection %s: %d picks among %d unlabelled tasks (%d seeds) in %.1f s%s",
        project_id, target["model_version"], len(picked), len(order), len(labelled), time.monotonic() - started,
        " (a new version)" if target["full"] else "",
    )
    return {"ranked": len(order), "picked": len(picked), "seeds": len(labelled), "model_version": target["model_version"]}


def _previous_ranking(store: Store, project_id: int, settings: ProjectSettings, version: str, ids: Sequence[int]) -> tuple[list[int], int]:
    """The last target's order as indices of ``ids`` and how many of them are picks; nothing when
    the settings or patterns changed since (its order then means nothing for the new ranking)."""
    previous = store.get_target(project_id) or {}
    if previous.get("settings_key") != fingerprint_of_settings(settings, version):
        return [], 0
    index_of = {task_id: index for index, task_id in enumerate(ids)}
    order = [int(task_id) for task_id in previous.get("order", [])]
    picks = [index_of[t] for t in order[: int(previous.get("n_picked", 0))] if t in index_of]
    return [index_of[t] for t in order if t in index_of], len(picks)


def _selection_lock(store: Store, project_id: int) -> Any:
    """Held while a project's selection is scheduled or a ranking replaces the target."""
    return store.redis.lock(store._key(project_id, "selection-lock"), timeout=30, blocking_timeout=30)


def enqueue_once(
    connection: redis.Redis, settings: Settings, queue: str, function: Callable[..., Any], project_id: int, *,
    job_field: str, what: str, delay_s: float = 0,
) -> None:
    """Make sure one ``function`` job of the project waits on ``queue``: none is added while the
    one recorded in the project's state under ``job_field`` still waits (it reads the latest state)."""
    store = Store(connection)
    waiting = fetch_job(connection, store.get_state(project_id).get(job_field))
    if waiting is not None and waiting.get_status() in WAITING:
        return
    job = enqueue_project_job(Queue(queue, connection=connection), settings, function, project_id, what=what, delay_s=delay_s)
    store.update_state(project_id, **{job_field: job.id})


def enqueue_tail_refresh(connection: redis.Redis, settings: Settings, project_id: int) -> None:
    """Make sure a tail refresh of the project waits on the patterns queue (which runs it when it
    has no patterns to compute, beside the rankings of the head)."""
    enqueue_once(connection, settings, FEATURES_QUEUE, refresh_tail, project_id, job_field="tail_job", what=f"ranking of the tail: project {project_id}")


def refresh_tail(project_id: int) -> dict[str, Any]:
    """Draw the picks after the head of the last ranking afresh (a re-ranking after labels draws
    only the head and keeps the tail's earlier order). Dropped when a newer ranking replaced the
    target meanwhile: that one asks for its own refresh. The head, and so Label Studio's queue
    where annotators reach it, is left as it is: only flags of near-duplicates may change."""
    context = _context()
    store = context.store
    settings, target, record = store.get_settings(project_id), store.get_target(project_id), store.get_selection(project_id)
    if not settings.enabled or target is None or record is None:
        return {"skipped": "no ranking to refresh"}
    stored = store.load_patterns(project_id, record.patterns_version, record.task_ids)
    if len(stored) != len(record.task_ids):
        return {"skipped": "the ranked tasks changed: the next ranking refreshes"}
    ids, ranking = record.task_ids, record.ranking()
    n_head = min(context.settings.head_size, ranking.n_picked)
    refreshed = extend_head(
        [stored[t] for t in ids], ranking.order[:n_head], ranking.distance[:n_head],
        settings.picks_for(len(ids) - len(ranking.seeds)), strategy=settings.strategy,  # type: ignore[arg-type]
        seeds=ranking.seeds, seed=settings.seed, duplicate_threshold=settings.duplicate_threshold,
    )
    order = [ids[image] for image in refreshed.order]
    labelled = {ids[image] for image in ranking.seeds}
    failures = {int(t): text[len(FAILURE_FLAG) :] for t, text in target["flags"].items() if text.startswith(FAILURE_FLAG)}
    duplicate_of = near_duplicate_of_chosen(ids, record.duplicates(), set(order[: refreshed.n_picked]) | labelled)
    with _selection_lock(store, project_id):
        if store.get_target(project_id) != target:
            return {"skipped": "a newer ranking replaced the target"}
        refreshed_target = {
            **target, "generation": store.next_run(project_id), "order": order, "n_picked": refreshed.n_picked,
            "flags": flags_for(failures, duplicate_of),
        }
        store.save_selection(
            project_id, SelectionRecord.of(f"{target['model_version']} ranking {refreshed_target['generation']}", record.patterns_version, ids, refreshed, record.duplicates())
        )
        store.save_target(project_id, refreshed_target)
    store.update_state(project_id, n_picked=refreshed.n_picked)
    enqueue_writeout(store.redis, context.settings, project_id)
    log.info("project %s: tail ranked afresh: %d picks after a head of %d", project_id, refreshed.n_picked - n_head, n_head)
    return {"picked": refreshed.n_picked, "head": n_head}


def _fingerprint(settings: ProjectSettings, version: str, ids: Sequence[int], labelled: set[int], failures: Mapping[int, str]) -> str:
    """What decides a ranking: settings, patterns version, the tasks, which are labelled, which failed."""
    described = json.dumps([settings.to_dict(), version, list(ids), sorted(labelled), sorted(failures)], default=str)
    return hashlib.sha1(described.encode()).hexdigest()


def _target(
    store: Store, project_id: int, fingerprint: str, order: list[int], picked: list[int], flags: dict[int, str]
) -> dict[str, Any]:
    """The write-out's target. A new model version only on the first ranking or after a settings
    or patterns change (an unfinished new version is reused); otherwise the live one, changed in place."""
    state, previous = store.get_state(project_id), store.get_target(project_id) or {}
    settings_key = fingerprint_of_settings(store.get_settings(project_id), state.get("patterns_version", ""))
    live = state.get("model_version", "")
    unfinished = previous.get("full") and previous.get("model_version") != live
    full = not live or unfinished or previous.get("settings_key") != settings_key
    model_version = previous["model_version"] if unfinished else (new_model_version(store, project_id) if full else live)
    return {
        "generation": store.next_run(project_id), "model_version": model_version, "full": bool(full), "settings_key": settings_key,
        "order": order, "n_picked": len(picked), "flags": flags,
    }


def fingerprint_of_settings(settings: ProjectSettings, patterns_version: str) -> str:
    return hashlib.sha1(json.dumps([settings.to_dict(), patterns_version], default=str).encode()).hexdigest()


def new_model_version(store: Store, project_id: int) -> str:
    return f"{VERSION_PREFIX}{int(store.redis.hincrby(store._key(project_id, 'state'), 'versions', 1)):04d}-{time.strftime('%Y%m%d-%H%M%S')}"


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


NOT_PICKED = "FreeSel: not picked"


def flags_for(failures: Mapping[int, str], duplicate_of: Mapping[int, int]) -> dict[int, str]:
    """Flags that do not depend on the queue's head: "FreeSel could not use this image: <reason>"
    on failed tasks, "FreeSel: not picked (near-duplicate of task 12)" on a ranked task that
    ``duplicate_of`` maps to task 12. The picks' flag is the write-out's (head only)."""
    flags = {task_id: f"{NOT_PICKED} (near-duplicate of task {original})" for task_id, original in duplicate_of.items()}
    flags.update({task_id: f"{FAILURE_FLAG}{reason}" for task_id, reason in failures.items()})
    return flags


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


def remove_selection(project_id: int) -> dict[str, int]:
    """After disable: delete FreeSel's predictions (one request each, see ``writeout``) and flags."""
    context = _context()
    store = context.store
    ours = [int(p["id"]) for p in context.client.list_predictions(project_id) if str(p.get("model_version") or "").startswith(VERSION_PREFIX)]
    flags = store.get_flags(project_id)
    delete_predictions(context.client, store, context.settings, project_id, ours)
    tasks = {int(task["id"]): task for task in context.client.get_tasks(project_id, sorted(flags))} if flags else {}
    for task_id in flags:
        if task_id in tasks:
            context.client.update_task_data(task_id, flagged(tasks[task_id].get("data") or {}, None))
        store.set_flag(project_id, task_id, None)
    store.replace_predictions(project_id, {})
    store.forget_ranking(project_id)
    log.info("project %s: FreeSel disabled: %d predictions deleted, flags removed from %d tasks", project_id, len(ours), len(flags))
    return {"deleted_predictions": len(ours)}
