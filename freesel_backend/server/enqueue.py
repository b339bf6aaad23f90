"""Putting a project's jobs on RQ's queues, finding them again, and their progress in the job meta.

Flow: ``enqueue_patterns`` -> ``jobs.compute_patterns`` chunks, each drawing a random sample
of the project's pending tasks -> ``jobs.run_selection`` as the patterns come in (``rank_if_due``:
a first sample, each doubling, all in; at most one waiting per project, at most one started per
``rerank_interval_s``) -> a target ranking in Redis -> ``writeout.steps.write_out`` steps bring Label
Studio to it. Jobs are named by their import path: the web service enqueues them without
importing the code that runs them (RQ imports it in the worker).
"""

from __future__ import annotations

import datetime
import math
import time
from typing import Any, Iterable, Mapping

import redis
from rq import Queue, Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job, JobStatus
from rq.registry import DeferredJobRegistry, FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from .services import Services
from .settings import CLEANUP_QUEUE, FEATURES_QUEUE, QUEUES, SELECTION_QUEUE, WRITEOUT_QUEUE, Settings
from .store import Store

WAITING = (JobStatus.DEFERRED, JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.CREATED)

COMPUTE_PATTERNS = f"{__package__}.jobs.compute_patterns"
RUN_SELECTION = f"{__package__}.jobs.run_selection"
SYNC_PROJECT = f"{__package__}.jobs.sync_project"
REMOVE_SELECTION = f"{__package__}.jobs.remove_selection"
BUILD_REPORT = f"{__package__}.report_job.build_project_report"
TOP_UP_PICKS = f"{__package__}.jobs.top_up_picks"
WRITE_OUT = f"{__package__}.writeout.steps.write_out"
DELETE_OLD_VERSIONS = f"{__package__}.writeout.cleanup.delete_old_versions"
JOB_FUNCTIONS = (
    COMPUTE_PATTERNS, RUN_SELECTION, SYNC_PROJECT, REMOVE_SELECTION, TOP_UP_PICKS, BUILD_REPORT, WRITE_OUT,
    DELETE_OLD_VERSIONS,
)


def _retry(settings: Settings) -> Retry | None:
    if settings.job_retries == 0:
        return None
    return Retry(max=settings.job_retries, interval=list(settings.retry_intervals[: settings.job_retries]))


def enqueue_project_job(
    services: Services, queue_name: str, function: str, project_id: int, *args: Any,
    what: str, meta: dict[str, Any] | None = None, delay_s: float = 0, **options: Any,
) -> Job:
    """One of a project's jobs: the settings' retries and time limit (``job_timeout`` in
    ``options`` overrides it), the project in its meta, "FreeSel <what>" as its description;
    started no sooner than ``delay_s`` from now (by the workers' scheduler)."""
    queue = Queue(queue_name, connection=services.connection)
    options.setdefault("job_timeout", services.settings.job_timeout_s)
    options.update(
        retry=_retry(services.settings), meta={"project": project_id, **(meta or {})}, description=f"FreeSel {what}"
    )
    if delay_s > 0:
        return queue.enqueue_in(datetime.timedelta(seconds=delay_s), function, project_id, *args, **options)
    return queue.enqueue(function, project_id, *args, **options)


def enqueue_once(
    services: Services, queue_name: str, function: str, project_id: int, *, job_field: str, what: str,
    running_counts: bool = False, delay_s: float = 0,
) -> Job:
    """Make sure one ``function`` job of the project waits on ``queue_name``: the one recorded in
    the project's state under ``job_field`` while it still waits (or runs, with ``running_counts``;
    it reads the latest state), else a new one recorded there."""
    store = services.store
    current = fetch_job(services.connection, store.get_state(project_id).get(job_field))
    counted = (*WAITING, JobStatus.STARTED) if running_counts else WAITING
    if current is not None and current.get_status(refresh=False) in counted:
        return current
    job = enqueue_project_job(services, queue_name, function, project_id, what=what, delay_s=delay_s)
    store.update_state(project_id, **{job_field: job.id})
    return job


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


# ---- the project's jobs -------------------------------------------------------------------------


def enqueue_patterns(services: Services, project_id: int, task_ids: Iterable[int]) -> list[Job]:
    """Patterns for these tasks: they join the project's pending tasks and one pattern job per
    ``settings.chunk_size`` new ones is queued. A job draws its tasks when it starts
    (``jobs.compute_patterns``), the lowest draw positions first (``store.draw_position``), so the
    patterns of every import come in one random order; rankings follow them (``rank_if_due``)."""
    ids = {int(t) for t in task_ids}
    if not ids:
        return []
    store = services.store
    store.add_tasks(project_id, ids)
    added = store.add_pending(project_id, ids)
    version = store.get_state(project_id).get("patterns_version")
    store.start_progress(project_id, sum(store.count_done(project_id, version)) if version else 0)
    return _pattern_jobs(services, project_id, added)


def restore_pattern_jobs(services: Services, project_id: int) -> list[Job]:
    """From a sync: pattern jobs for the pending tasks that no waiting job will draw (a job lost
    before it drew: failed for good, or removed from RQ)."""
    queue = Queue(FEATURES_QUEUE, connection=services.connection)
    drawn = set(services.store.claims(project_id))
    waiting = Job.fetch_many(
        [*queue.get_job_ids(), *queue.scheduled_job_registry.get_job_ids()], connection=services.connection
    )
    will_draw = sum(
        int(job.meta.get("draws", 0)) for job in waiting
        if job is not None and job.meta.get("project") == project_id and job.id not in drawn
    )
    return _pattern_jobs(services, project_id, len(services.store.pending_tasks(project_id)) - will_draw)


def _pattern_jobs(services: Services, project_id: int, tasks: int) -> list[Job]:
    """Enough pattern jobs to draw ``tasks`` pending tasks."""
    size = services.settings.chunk_size
    return [
        enqueue_project_job(
            services, FEATURES_QUEUE, COMPUTE_PATTERNS, project_id, size,
            what=f"patterns: project {project_id}, {size} tasks", meta={"draws": size},
        )
        for _ in range(math.ceil(max(0, tasks) / size))
    ]


def tasks_in_the_works(services: Services, project_id: int) -> set[int]:
    """Tasks pending or drawn by a pattern job that waits (for a retry) or runs. The draws of
    jobs that ended without letting them go (killed on their last try) are let go here."""
    store = services.store
    working = store.pending_tasks(project_id)
    for job_id, tasks in store.claims(project_id).items():
        job = fetch_job(services.connection, job_id)
        if job is not None and job.get_status(refresh=False) in (*WAITING, JobStatus.STARTED):
            working.update(tasks)
        else:
            store.release_claim(project_id, job_id)
    return working


def next_ranking_at(state: Mapping[str, str], tasks: int, settings: Settings) -> int:
    """How many tasks have patterns when the project is ranked next while patterns come in:
    ``first_ranking_tasks`` before its first ranking of these patterns, then twice as many as the
    last ranking had; at most every task."""
    same_patterns = state.get("ranked_version") == state.get("patterns_version")
    ranked = int(state.get("ranked_patterns", 0)) if same_patterns else 0
    return min(tasks, 2 * ranked if ranked else settings.first_ranking_tasks)


def rank_if_due(services: Services, project_id: int) -> Job | None:
    """After a pattern job: a ranking once no task waits for patterns any more, else at the next
    milestone (``next_ranking_at``; for a first ranking also once ``first_ranking_s`` of
    pattern work have passed), unless a ranking of the project waits or runs already."""
    store, settings = services.store, services.settings
    if not store.patterns_outstanding(project_id):
        return schedule_selection(services, project_id)
    state = store.get_state(project_id)
    done, _ = store.count_done(project_id, state.get("patterns_version", ""))
    first = state.get("ranked_version") != state.get("patterns_version")
    waited = time.time() - float(state.get("progress_since", time.time()))
    due = done >= next_ranking_at(state, len(store.task_ids(project_id)), settings) or (
        first and done > 0 and waited >= settings.first_ranking_s
    )
    if not due or selection_waits_or_runs(services, project_id):
        return None
    return schedule_selection(services, project_id)


def selection_waits_or_runs(services: Services, project_id: int) -> bool:
    job = fetch_job(services.connection, services.store.get_state(project_id).get("pending_selection"))
    return job is not None and job.get_status(refresh=False) in (*WAITING, JobStatus.STARTED)


def schedule_selection(services: Services, project_id: int) -> Job:
    """Make sure one selection of the project waits; one waiting already absorbs this request.

    A selection that is running is a dependency: two selections of a project never run at once.
    A selection starts no sooner than ``rerank_interval_s`` after the last one began (a burst of
    labels ends in one re-ranking): delayed when nothing runs, else put off by
    ``defer_selection`` when it starts.
    """
    store, connection = services.store, services.connection
    with selection_lock(store, project_id):
        previous = fetch_job(connection, store.get_state(project_id).get("pending_selection"))
        if previous is not None and previous.get_status() in WAITING:
            return previous
        if previous is not None and previous.get_status() == JobStatus.STARTED:
            return _enqueue_selection(services, project_id, [previous.id], delay_s=0)
        return _enqueue_selection(services, project_id, [], delay_s=rerank_delay(store, project_id, services.settings))


def defer_selection(services: Services, project_id: int, delay_s: float) -> Job:
    """From a selection job that started too soon after the last ranking (it waited for the one
    running when it was requested): a selection in ``delay_s`` instead, unless one waits already."""
    store, connection = services.store, services.connection
    current = get_current_job()
    with selection_lock(store, project_id):
        pending = fetch_job(connection, store.get_state(project_id).get("pending_selection"))
        if pending is not None and pending.id != (current and current.id) and pending.get_status() in WAITING:
            return pending
        return _enqueue_selection(services, project_id, [], delay_s=delay_s)


def _enqueue_selection(services: Services, project_id: int, dependencies: list[str], delay_s: float) -> Job:
    job = enqueue_project_job(
        services, SELECTION_QUEUE, RUN_SELECTION, project_id,
        what=f"selection: project {project_id}",
        depends_on=Dependency(jobs=dependencies, allow_failure=True) if dependencies else None,
        delay_s=delay_s,
    )
    services.store.update_state(project_id, pending_selection=job.id)
    return job


def selection_lock(store: Store, project_id: int) -> Any:
    """Held while a project's selection is scheduled or a ranking replaces the target."""
    return store.lock(project_id, "selection", timeout=30, blocking_timeout=30)


def rerank_delay(store: Store, project_id: int, settings: Settings) -> float:
    """Seconds until the project may be ranked again: ``rerank_interval_s`` after the last ranking began."""
    last = store.get_state(project_id).get("ranking_started_at")
    return max(0.0, float(last) + settings.rerank_interval_s - time.time()) if last else 0.0


def enqueue_sync(services: Services, project_id: int) -> Job:
    """Compare the project's tasks with the stored patterns and enqueue what is missing (a job)."""
    return enqueue_project_job(services, SELECTION_QUEUE, SYNC_PROJECT, project_id, what=f"sync: project {project_id}")


def enqueue_cleanup(services: Services, project_id: int) -> Job:
    """After disable: FreeSel's predictions and flags removed (RQ's default time limit: it only deletes)."""
    return enqueue_project_job(
        services, CLEANUP_QUEUE, REMOVE_SELECTION, project_id, what=f"cleanup: project {project_id}", job_timeout=None,
    )


def enqueue_writeout(services: Services, project_id: int, delay_s: float = 0) -> None:
    """Make sure a write-out step of the project is waiting (one waiting step reads the latest target)."""
    enqueue_once(
        services, WRITEOUT_QUEUE, WRITE_OUT, project_id, job_field="writeout_job",
        what=f"write-out: project {project_id}", delay_s=delay_s,
    )


def writeout_waiting(services: Services, project_id: int) -> bool:
    """Whether a write-out step of the project waits to run (queued or scheduled, not running)."""
    job = fetch_job(services.connection, services.store.get_state(project_id).get("writeout_job"))
    return job is not None and job.get_status(refresh=False) in WAITING


def enqueue_top_up(services: Services, project_id: int) -> None:
    """Make sure a top-up of the project's picks waits on the patterns queue (which runs it when
    it has no patterns to compute, beside the rankings of the head)."""
    enqueue_once(
        services, FEATURES_QUEUE, TOP_UP_PICKS, project_id, job_field="top_up_job",
        what=f"more picks: project {project_id}",
    )


def enqueue_version_cleanup(services: Services, project_id: int) -> None:
    enqueue_project_job(
        services, CLEANUP_QUEUE, DELETE_OLD_VERSIONS, project_id,
        what=f"old versions: project {project_id}", job_timeout=None,
    )


def enqueue_report(services: Services, project_id: int) -> Job:
    """The project's report job: the one already waiting or running, else a new one."""
    with services.store.lock(project_id, "report", timeout=30, blocking_timeout=30):
        return enqueue_once(
            services, SELECTION_QUEUE, BUILD_REPORT, project_id, job_field="report_job",
            what=f"report: project {project_id}", running_counts=True,
        )


# ---- progress -----------------------------------------------------------------------------------


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
            self.job.meta.update(
                {"done": self.done, "total": self.total, "stage": self.stage, "updated_at": time.time()}
            )
            self.job.save_meta()


# ---- a project's jobs, as status reports them -------------------------------------------------


def project_jobs(connection: redis.Redis, project_id: int) -> dict[str, dict[str, list[Job]]]:
    """Per queue: this project's jobs waiting, deferred (on other jobs), scheduled (retries), running."""
    found: dict[str, dict[str, list[Job]]] = {}
    for name in QUEUES:
        queue = Queue(name, connection=connection)
        groups = {
            "queued": queue.get_job_ids(),
            "deferred": DeferredJobRegistry(queue=queue).get_job_ids(),
            "scheduled": ScheduledJobRegistry(queue=queue).get_job_ids(),
            "running": StartedJobRegistry(queue=queue).get_job_ids(),
        }
        found[name] = {
            group: [
                job
                for job in Job.fetch_many(ids, connection=connection)
                if job and job.meta.get("project") == project_id
            ]
            for group, ids in groups.items()
        }
    return found


def failed_jobs(connection: redis.Redis, project_id: int, limit: int) -> list[Job]:
    """The project's latest failed jobs (at most ``limit``), from every queue's failed registry."""
    found: list[Job] = []
    for name in QUEUES:
        ids = FailedJobRegistry(queue=Queue(name, connection=connection)).get_job_ids()
        found += [
            job
            for job in Job.fetch_many(ids[-limit:], connection=connection)
            if job and job.meta.get("project") == project_id
        ]
    return found[-limit:]


def next_try_at(connection: redis.Redis, job: Job) -> str | None:
    """When a job waiting for its retry runs again (ISO time); None when it is being enqueued now."""
    registry = ScheduledJobRegistry(queue=Queue(job.origin, connection=connection))
    try:
        return registry.get_scheduled_time(job).isoformat()
    except NoSuchJobError:  # enqueued for its retry this very moment
        return None
