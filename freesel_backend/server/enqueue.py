"""Putting a project's jobs on RQ's queues, finding them again, and their progress in the job meta."""

from __future__ import annotations

import datetime
import time
from typing import Any, Callable

import redis
from rq import Queue, Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from .settings import Settings

WAITING = (JobStatus.DEFERRED, JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.CREATED)


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
