"""Stopping the embedded workers: RQ's warm then cold shutdown, for every worker at once; the
scheduler locks a dead worker leaves behind."""

from __future__ import annotations

import subprocess
import sys

from rq.scheduler import RQScheduler

from freesel_backend.server.process import SCHEDULER_SILENT_S, free_dead_scheduler_locks, stop_workers

ENDS_ON_SIGTERM = "import time; time.sleep(60)"
# Ignores the first SIGTERM (a warm shutdown waiting for its job), ends on the second.
ENDS_ON_SECOND_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: signal.signal(signal.SIGTERM, lambda *_: sys.exit(3)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)
IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def started(code: str) -> "subprocess.Popen[bytes]":
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    if "ready" in code:
        assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    return process


def test_every_worker_is_stopped_by_the_signal_it_needs() -> None:
    workers = [started(ENDS_ON_SIGTERM), started(ENDS_ON_SECOND_SIGTERM), started(IGNORES_SIGTERM)]
    stop_workers(workers, warm_s=1.0, cold_s=1.0)
    assert [worker.poll() for worker in workers] == [-15, 3, -9]


def test_workers_that_already_ended_are_left_alone() -> None:
    ended = started("pass")
    ended.wait()
    stop_workers([ended], warm_s=1.0, cold_s=1.0)
    assert ended.returncode == 0


def test_a_scheduler_lock_left_unrenewed_is_freed_and_a_renewed_one_kept(redis_connection) -> None:
    lock = RQScheduler.get_locking_key
    redis_connection.set(lock("renewed"), "a living scheduler", ex=61 - 1)
    redis_connection.set(lock("silent"), "a killed worker's scheduler", ex=61 - SCHEDULER_SILENT_S - 5)
    freed = free_dead_scheduler_locks(redis_connection, ["renewed", "silent", "never locked"], renewal_s=61)
    assert freed == ["silent"]
    assert redis_connection.exists(lock("renewed")) and not redis_connection.exists(lock("silent"))
