"""``freesel worker`` processes as separate machines run them: each with a ``MODEL_DIR`` of its own,
sharing nothing but ``REDIS_URL``; which of them runs which pattern job, and how far it got."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import redis
from rq.job import Job, JobStatus
from rq import Queue
from rq.registry import FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.worker import Worker

from freesel_backend.server.settings import FEATURES_QUEUE, QUEUES
from harness.backend import REPO_ROOT


def machine_env(env: dict[str, str], torch_threads: int | None = None) -> dict[str, str]:
    """``env`` (its own ``MODEL_DIR``) for a worker machine whose model's forward runs on
    ``torch_threads`` threads (OpenMP), as a machine with that many cores would."""
    return {**env, "OMP_NUM_THREADS": str(torch_threads)} if torch_threads else dict(env)


def start_worker(env: dict[str, str], log_path: Path, queues: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """A long-running worker (on ``queues``, else all) in its own process group (its scheduler child dies with it)."""
    only = ["--queues", ",".join(queues)] if queues else []
    return subprocess.Popen([sys.executable, "-m", "freesel_backend", "worker", *only], cwd=REPO_ROOT, env=env,
                            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    process.wait(timeout=30)


def worker_names(connection: redis.Redis, processes: list[subprocess.Popen[bytes]]) -> list[str] | None:
    """The RQ names of the workers ``processes`` run, in their order, once every one has registered."""
    by_pid = {worker.pid: worker.name for worker in Worker.all(connection=connection)}
    names = [by_pid.get(process.pid) for process in processes]
    return None if None in names else [name for name in names if name]


@dataclass(frozen=True)
class ChunkAtWork:
    """A pattern job running on a worker: ``done`` of its ``total`` tasks so far."""

    job_id: str
    worker_name: str
    done: int
    total: int

    @property
    def midway(self) -> bool:
        return 0 < self.done < self.total


def chunks_at_work(connection: redis.Redis) -> list[ChunkAtWork]:
    """The pattern jobs running now, with their progress from the job's meta."""
    registry = StartedJobRegistry(FEATURES_QUEUE, connection=connection)
    jobs = Job.fetch_many(registry.get_job_ids(), connection=connection)
    return [
        ChunkAtWork(job.id, job.worker_name or "", int(job.meta.get("done", 0)), int(job.meta.get("total", 0)))
        for job in jobs if job is not None and job.get_status(refresh=False) == JobStatus.STARTED
    ]


def all_midway(connection: redis.Redis, names: list[str]) -> list[ChunkAtWork] | None:
    """The chunks at work when each of the workers ``names`` is in the middle of one, else None."""
    chunks = [chunk for chunk in chunks_at_work(connection) if chunk.midway]
    return chunks if {chunk.worker_name for chunk in chunks} == set(names) else None


def finished_pattern_jobs(connection: redis.Redis) -> list[Job]:
    ids = FinishedJobRegistry(FEATURES_QUEUE, connection=connection).get_job_ids()
    return [job for job in Job.fetch_many(ids, connection=connection) if job is not None]


def runs_the_scheduler(connection: redis.Redis) -> bool:
    """Whether a worker's scheduler (delayed retries) holds the pattern queue."""
    return bool(connection.exists(RQScheduler.get_locking_key(FEATURES_QUEUE)))


def queues_idle(connection: redis.Redis) -> bool:
    """No job of FreeSel's queues waiting, scheduled or running."""
    return all(
        Queue(name, connection=connection).count == 0
        and StartedJobRegistry(name, connection=connection).count == 0
        and ScheduledJobRegistry(name, connection=connection).count == 0
        for name in QUEUES
    )
