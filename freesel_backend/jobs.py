"""RQ jobs: patterns for chunks of tasks, one coalesced selection per project, project sync.

Job functions take plain arguments (project id, task ids) and never a secret: workers read
``LABEL_STUDIO_URL``/``LABEL_STUDIO_API_KEY`` from their own environment. Enqueue helpers take
the Redis connection explicitly. Flow: ``enqueue_patterns`` -> ``compute_patterns`` chunks ->
``run_selection`` (depends on the chunks; at most one waiting per project) -> predictions in
Label Studio, the project's queue switched to them, old predictions deleted.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import redis
from rq import Queue, Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job, JobStatus

from .config import FEATURES_QUEUE, SELECTION_QUEUE, ProjectSettings, Settings
from .engine import DuplicateGroups, ImageLoadError, PatternExtractor, find_near_duplicates, load_image, select
from .engine.selection import PatternPool
from .label_studio import LabelStudioClient, LabelStudioError, LabelStudioNotFound, LabelStudioUnavailable
from .store import SelectionRecord, Store, patterns_version

log = logging.getLogger(__name__)

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
VERSION_PREFIX = "freesel-"
FLAG_FIELD = "freesel"  # text shown on the labelling screen by label_config.xml's <Header value="$freesel"/>
RANK_FIELD = "freesel_rank"  # 1-based pick number: a sortable/filterable Data Manager column
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
    what: str, meta: dict[str, Any] | None = None, **options: Any,
) -> Job:
    """One of a project's jobs: the settings' retries and time limit (``job_timeout`` in
    ``options`` overrides it), the project in its meta, "FreeSel <what>" as its description."""
    options.setdefault("job_timeout", settings.job_timeout_s)
    return queue.enqueue(
        function, project_id, *args, retry=_retry(settings), meta={"project": project_id, **(meta or {})},
        description=f"FreeSel {what}", **options,
    )


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
    is running is a dependency too: two selections of a project never run at once (each deletes
    the other's predictions as an older version otherwise).
    """
    store = Store(connection)
    with connection.lock(store._key(project_id, "selection-lock"), timeout=30, blocking_timeout=30):
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
        )
        store.update_state(project_id, pending_selection=job.id)
    return job


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
        Queue(SELECTION_QUEUE, connection=connection), settings, remove_selection, project_id,
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
    """Rank the project's unlabelled tasks (labelled ones are seeds), write the predictions under
    a new model version, point the project's queue at it, then delete the older versions."""
    context = _context()
    store = context.store
    settings = store.get_settings(project_id)
    if not settings.enabled:
        return {"skipped": "FreeSel is disabled for this project"}
    started = time.monotonic()
    progress = JobProgress(0, stage="loading tasks")
    version = store.get_state(project_id).get("patterns_version")
    try:
        tasks = {int(task["id"]): task for task in context.client.iter_tasks(project_id)}
    except LabelStudioNotFound:
        return {"skipped": f"project {project_id} does not exist in Label Studio"}
    known = store.task_ids(project_id)
    store.remove_tasks(project_id, known - set(tasks))
    unknown = set(tasks) - known
    if unknown:  # imported without a webhook, or Redis lost its data: compute them, rank again after
        log.info("project %s: %d tasks have no patterns yet, enqueueing them", project_id, len(unknown))
        enqueue_patterns(store.redis, context.settings, project_id, unknown)
    stored = store.load_patterns(project_id, version, tasks) if version else {}
    failures = {t: reason for t, reason in (store.failures(project_id, version) if version else {}).items() if t in tasks}
    ids = sorted(stored)
    labelled = {t for t in ids if tasks[t].get("is_labeled") or tasks[t].get("total_annotations")}
    unlabelled = len(ids) - len(labelled)
    if unlabelled == 0:
        write_flags(context, project_id, tasks, flags_for([], [], failures))
        return {"ranked": 0, "picked": 0, "seeds": len(labelled), "failed": len(failures)}
    patterns = [stored[t] for t in ids]
    seeds = [i for i, t in enumerate(ids) if t in labelled]
    progress.start_stage("ranking", unlabelled)
    ranking = select(
        patterns, settings.picks_for(unlabelled), strategy=settings.strategy, seeds=seeds, seed=settings.seed,  # type: ignore[arg-type]
        duplicate_threshold=settings.duplicate_threshold,
    )
    duplicates = find_near_duplicates(patterns, settings.duplicate_threshold)
    clusters = nearest_pick(patterns, ranking.picks, ranking.order)
    model_version = f"{VERSION_PREFIX}{store.next_run(project_id):04d}-{time.strftime('%Y%m%d-%H%M%S')}"
    predictions = {
        ids[image]: {
            "task": ids[image],
            "result": [],
            "score": position / len(ranking.order),
            "model_version": model_version,
            "cluster": int(cluster),
        }
        for position, (image, cluster) in enumerate(zip(ranking.order, clusters))
    }
    ranked_at = time.monotonic()
    progress.start_stage("writing predictions", len(predictions))
    publish_predictions(context, project_id, model_version, predictions)
    picked = [ids[image] for image in ranking.picks]
    duplicate_of = near_duplicate_of_chosen(ids, duplicates, set(picked) | labelled)
    changed = write_flags(context, project_id, tasks, flags_for(picked, predictions, failures, duplicate_of), progress)
    store.save_selection(project_id, SelectionRecord.of(model_version, version or "", ids, ranking, duplicates))
    store.update_state(
        project_id, last_selection_at=time.time(), n_picked=len(picked), n_ranked=len(predictions), ranked_version=version or ""
    )
    if version and sum(store.count_done(project_id, version)) >= len(store.task_ids(project_id)):
        store.end_progress(project_id)
    log.info(
        "project %s: selection %s: %d picks among %d unlabelled tasks (%d seeds) in %.1f s; published in %.1f s (%d flags changed)",
        project_id, model_version, len(picked), len(predictions), len(labelled), ranked_at - started,
        time.monotonic() - ranked_at, changed,
    )
    return {"ranked": len(predictions), "picked": len(picked), "seeds": len(labelled), "model_version": model_version}


def nearest_pick(patterns: Sequence[np.ndarray], picks: np.ndarray, order: np.ndarray, rows_per_block: int = 4096) -> np.ndarray:
    """For each image of ``order``: the position (in ``picks``) of the pick nearest to it by the
    closest pair of patterns; a pick is its own cluster. -1 when there are no picks."""
    if len(picks) == 0:
        return np.full(len(order), -1, dtype=np.int64)
    pool = PatternPool(patterns)
    pick_rows = np.concatenate([np.arange(pool.starts[p], pool.starts[p] + pool.counts[p]) for p in picks])
    pick_of_row = np.repeat(np.arange(len(picks)), pool.counts[picks])
    pick_matrix = pool.matrix[pick_rows]
    best_row = np.empty(len(pool.matrix), dtype=np.int64)
    best_similarity = np.empty(len(pool.matrix), dtype=np.float32)
    for start in range(0, len(pool.matrix), rows_per_block):
        similarity = pool.matrix[start : start + rows_per_block] @ pick_matrix.T
        best_row[start : start + rows_per_block] = similarity.argmax(axis=1)
        best_similarity[start : start + rows_per_block] = similarity.max(axis=1)
    result = np.empty(len(order), dtype=np.int64)
    for position, image in enumerate(order):
        rows = pool.rows_of(int(image))
        result[position] = pick_of_row[best_row[rows][best_similarity[rows].argmax()]]
    result[: len(picks)] = np.arange(len(picks))
    return result


def publish_predictions(
    context: WorkerContext, project_id: int, model_version: str, predictions: Mapping[int, Mapping[str, Any]]
) -> None:
    """Write the new version, switch the project's queue to it, then delete older FreeSel versions
    (in this order: Label Studio clears the project's model_version when its version is deleted)."""
    context.client.import_predictions(project_id, list(predictions.values()))
    remember_previous_sampling(context.client, context.store, project_id)
    context.client.update_project(project_id, sampling=UNCERTAINTY_SAMPLING, model_version=model_version)
    context.store.replace_predictions(project_id, predictions)
    context.store.update_state(project_id, model_version=model_version)
    for old in context.client.list_model_versions(project_id):
        if old.startswith(VERSION_PREFIX) and old != model_version:
            context.client.delete_model_version(project_id, old)


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


def flags_for(
    picked: Sequence[int],
    ranked: Iterable[int],
    failures: Mapping[int, str] | None = None,
    duplicate_of: Mapping[int, int] | None = None,
) -> dict[int, tuple[str, int | None]]:
    """Flag text and pick number per task: "FreeSel pick i of n" on picks, "FreeSel: not picked"
    on the other ranked tasks (a stable text, so a re-ranking rewrites only the tasks whose flag
    changes), "FreeSel: not picked (near-duplicate of task 12)" on a ranked task that
    ``duplicate_of`` maps to task 12, "FreeSel could not use this image: <reason>" on failed ones."""
    flags: dict[int, tuple[str, int | None]] = {t: (f"{FAILURE_FLAG}{reason}", None) for t, reason in (failures or {}).items()}
    flags.update({task_id: (NOT_PICKED, None) for task_id in ranked})
    for task_id, original in (duplicate_of or {}).items():
        if flags.get(task_id) == (NOT_PICKED, None):
            flags[task_id] = (f"{NOT_PICKED} (near-duplicate of task {original})", None)
    for number, task_id in enumerate(picked, start=1):
        flags[task_id] = (f"FreeSel pick {number} of {len(picked)}", number)
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


def write_flags(
    context: WorkerContext,
    project_id: int,
    tasks: Mapping[int, Mapping[str, Any]],
    flags: Mapping[int, tuple[str, int | None]],
    progress: "JobProgress | None" = None,
) -> int:
    """Write ``flags`` into the tasks' data (so shown, never part of an annotation) and remove
    FreeSel's flags from the other tasks; only tasks whose flag changes are written. Returns how many."""
    current = context.store.get_flags(project_id)
    wanted = {task_id: flag for task_id, flag in flags.items() if task_id in tasks}
    changed = [t for t in set(current) | set(wanted) if t in tasks and current.get(t) != wanted.get(t, (None,))[0]]
    if progress is not None:
        progress.start_stage("writing flags", len(changed))
    for task_id in changed:
        data = {k: v for k, v in (tasks[task_id].get("data") or {}).items() if k not in (FLAG_FIELD, RANK_FIELD)}
        if task_id in wanted:
            text, number = wanted[task_id]
            data[FLAG_FIELD] = text
            if number is not None:
                data[RANK_FIELD] = number
        context.client.update_task_data(task_id, data)
        if progress is not None:
            progress.advance(1)
    context.store.replace_flags(project_id, {t: text for t, (text, _) in wanted.items()})
    return len(changed)


def remove_selection(project_id: int) -> dict[str, int]:
    """After disable: delete FreeSel's predictions and flags from the project."""
    context = _context()
    deleted = 0
    for version in context.client.list_model_versions(project_id):
        if version.startswith(VERSION_PREFIX):
            deleted += context.client.delete_model_version(project_id, version)
    tasks = {int(task["id"]): task for task in context.client.iter_tasks(project_id)}
    cleared = write_flags(context, project_id, tasks, {})
    context.store.replace_predictions(project_id, {})
    context.store.forget_ranking(project_id)
    log.info("project %s: FreeSel disabled: %d predictions deleted, flags removed from %d tasks", project_id, deleted, cleared)
    return {"deleted_predictions": deleted}
