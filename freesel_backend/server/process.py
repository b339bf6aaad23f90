"""Running the backend: gunicorn web service, RQ worker, embedded Redis."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

import redis
from gunicorn.app.base import BaseApplication
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.utils import import_attribute
from rq.worker import SimpleWorker, WorkerStatus

from .ownership import exit_with_parent, hold_model_dir, kill_forked_children_with_this_process, parent_death_signal
from .settings import EMBEDDED_WORKER_QUEUES, QUEUES, Settings, SettingsError
from .redis_server import RedisServer

log = logging.getLogger(__name__)


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from .web import create_app

        return create_app()


def serve(host: str, port: int, web_workers: int) -> int:
    """Gunicorn on host:port. Without REDIS_URL: an embedded Redis under MODEL_DIR and one worker
    process per queue (patterns; rankings; write-outs; cleanups), so that a long pattern
    extraction or write-out never holds up a ranking, write-outs take turns in bounded steps, and
    old versions are deleted between write-out steps, not after all of them.

    SIGTERM or Ctrl-C stops gunicorn gracefully, then the workers (warm shutdown: their running
    jobs may finish), then the embedded Redis (which writes its data file on the way out). Ended
    otherwise (``kill -9``), it takes them along: see ``_start_worker``. With the embedded Redis,
    ``serve`` and what it starts hold MODEL_DIR's lock: a second ``serve`` there refuses to start."""
    # Label Studio reaches this backend (and its webhook) at FREESEL_PUBLIC_URL; unset, at the port served
    if not os.environ.get("FREESEL_PUBLIC_URL"):
        os.environ["FREESEL_PUBLIC_URL"] = f"http://localhost:{port}"
    settings = Settings.from_env()
    if settings.basic_auth is None:
        log.warning(
            "BASIC_AUTH_USER/BASIC_AUTH_PASS are not set: Label Studio's calls (/setup, which applies the settings "
            "it is sent, and /predict) are open to anyone who can reach port %s; the project routes still want a "
            "Label Studio token. Set both, and enter them in Label Studio's connect form.",
            port,
        )
    embedded: RedisServer | None = None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        if settings.redis_url is None:
            lock_fd = hold_model_dir(settings.model_dir)
            embedded = RedisServer(settings.model_dir / "redis", keep_fds=(lock_fd,)).start()
            os.environ["REDIS_URL"] = embedded.url
            log.info(
                "embedded Redis at %s (data in %s); starting %d workers",
                embedded.url,
                embedded.data_dir,
                len(EMBEDDED_WORKER_QUEUES),
            )
            workers = [_start_worker(group, lock_fd) for group in EMBEDDED_WORKER_QUEUES]
        log.info("FreeSel backend on http://%s:%s (Label Studio reaches it at %s)", host, port, settings.public_url)
        _Gunicorn({"bind": f"{host}:{port}", "workers": web_workers, "threads": 4, "timeout": 120,
                   "graceful_timeout": 10, "worker_class": "gthread", "accesslog": "-",
                   # one control socket path per user would be shared by every backend on the machine
                   "control_socket_disable": True}).run()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        stop_workers(workers)
        if embedded is not None:
            embedded.stop()
    return 0


def _start_worker(queues: Sequence[str], lock_fd: int) -> "subprocess.Popen[bytes]":
    """An embedded worker on ``queues``, holding MODEL_DIR's lock. Its own session: a terminal's Ctrl-C
    reaches gunicorn only, and ``serve`` stops the workers (warm shutdown) before the embedded Redis,
    which they need until they have ended. Killed when ``serve`` dies: its Redis ends at the same
    moment, so a warm shutdown could not record its job's end; the job's lease expires instead and
    the job is retried once ``serve`` runs again (see ``HeartbeatWorker``)."""
    kill_with_serve = parent_death_signal(signal.SIGKILL)
    command = [sys.executable, "-m", "freesel_backend", "worker", "--queues", ",".join(queues)]
    if kill_with_serve is None:
        command += ["--exit-with-parent", str(os.getpid())]
    return subprocess.Popen(
        command, env=dict(os.environ), start_new_session=True, pass_fds=(lock_fd,), preexec_fn=kill_with_serve
    )


def stop_workers(workers: Sequence["subprocess.Popen[bytes]"], warm_s: float = 30.0, cold_s: float = 10.0) -> None:
    """RQ's shutdown, for every worker at once: the first SIGTERM lets the running jobs finish, a
    second one stops them; then kill. The waits overlap, so N workers take as long as the slowest."""
    for signal_wait in (warm_s, cold_s):
        running = [worker for worker in workers if worker.poll() is None]
        for worker in running:
            worker.terminate()
        deadline = time.monotonic() + signal_wait
        for worker in running:
            try:
                worker.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s still running after %.0f s", worker.pid, signal_wait)
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


# Jobs queued by earlier versions name their functions by former paths (flat modules, former names).
FORMER_JOB_MODULES = {
    "freesel_backend.server.jobs.refresh_tail": "freesel_backend.server.jobs.top_up_picks",
    "freesel_backend.jobs.": "freesel_backend.server.jobs.",
    "freesel_backend.writeout.write_out": "freesel_backend.server.writeout.steps.write_out",
    "freesel_backend.writeout.delete_old_versions": "freesel_backend.server.writeout.cleanup.delete_old_versions",
    "freesel_backend.server.publish.write_out": "freesel_backend.server.writeout.steps.write_out",
    "freesel_backend.server.publish.delete_old_versions": "freesel_backend.server.writeout.cleanup.delete_old_versions",
    "freesel_backend.report_job.": "freesel_backend.server.report_job.",
}


class FreeSelJob(Job):
    """An RQ job whose function may be named by its module path before the package's current layout."""

    @property
    def func(self) -> Any:
        name = self.func_name or ""
        for former, current in FORMER_JOB_MODULES.items():
            if name.startswith(former):
                return import_attribute(current + name[len(former):])
        return super().func


def work(*, burst: bool = False, queues: tuple[str, ...] = QUEUES, exit_with: int | None = None) -> int:
    """An RQ worker on ``queues`` (first ones first). SimpleWorker (no fork per job) keeps the model loaded
    between jobs; the scheduler runs the delayed retries. ``exit_with``: a pid whose end ends this worker."""
    kill_forked_children_with_this_process()
    if exit_with is not None:
        exit_with_parent(exit_with)
    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: the worker needs the backend's Redis")
    connection = redis.Redis.from_url(settings.redis_url)
    # RQ runs registry maintenance (abandoned-job retries, restarting a dead scheduler) only
    # between dequeues, and an idle worker blocks in dequeue for worker_ttl - 15 s (405 s by
    # default): worker_ttl is set so that an idle worker still runs it every maintenance_s.
    maintenance_s = settings.worker_maintenance_s
    worker = HeartbeatWorker(
        [Queue(name, connection=connection, job_class=FreeSelJob) for name in queues], connection=connection,
        job_class=FreeSelJob, maintenance_interval=maintenance_s, worker_ttl=maintenance_s + 15,
    )
    worker.lease_s = settings.worker_heartbeat_s
    worker.work(burst=burst, with_scheduler=True)
    return 0


class HeartbeatWorker(SimpleWorker):
    """A SimpleWorker whose running job holds a short lease, renewed every ``lease_s`` by a
    thread. SimpleWorker's own lease is the job timeout (an hour), so a worker killed mid-job
    would leave its chunk "started" for an hour; with the lease, the next registry maintenance
    of any worker finds it abandoned within about 3 x lease_s and RQ retries it."""

    lease_s = 30

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return 3 * self.lease_s

    def execute_job(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        finished = threading.Event()
        renewer = threading.Thread(target=self._renew_lease, args=(job, execution, finished), daemon=True)
        renewer.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            finished.set()
            renewer.join()
        self.set_state(WorkerStatus.IDLE)

    def _renew_lease(self, job: Job, execution: Execution, finished: threading.Event) -> None:
        while not finished.wait(self.lease_s):
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as error:  # the job itself will report a lasting outage
                log.warning("could not renew the lease of job %s: %s", job.id, error)
