"""Worker machines: `freesel worker` processes with a MODEL_DIR each, sharing nothing but a Redis
over TCP, take the pattern chunks of one import; one killed in the middle of a chunk leaves that
chunk to the other within seconds, also when it ran the scheduler, and every task gets its
patterns once."""

from __future__ import annotations

import signal
import time

import pytest
from rq import Queue, Retry
from rq.job import Job, JobStatus

from freesel_backend.server.enqueue import enqueue_patterns
from freesel_backend.server.services import Services
from freesel_backend.server.settings import FEATURES_QUEUE, Settings
from freesel_backend.server.store import Store
from harness.backend import backend_env, wait_for
from harness.label_studio import LABEL_CONFIG
from harness.local_http import LabelStudioStandIn
from harness.workers import (
    all_midway, finished_pattern_jobs, machine_env, queues_idle, runs_the_scheduler, start_worker, stop_group,
    worker_names,
)
from tests.helpers import write_noise_images
from tests.test_faults import FAST_RECOVERY, one_prediction_per_task, published

pytestmark = pytest.mark.slow

TASKS, CHUNK = 120, 24
# A lease renewed every second and a maintenance pass every second: a killed worker's chunk is
# found abandoned within seconds, not minutes.
QUICK_RECOVERY = {**FAST_RECOVERY, "FREESEL_WORKER_HEARTBEAT": "1", "FREESEL_WORKER_MAINTENANCE": "1"}
WORKER_SETTINGS = {"FREESEL_CHUNK_SIZE": str(CHUNK), "FREESEL_BATCH_SIZE": "4", **QUICK_RECOVERY}


def test_two_worker_machines_share_an_import_and_a_chunk_killed_midway_is_done_once_by_the_other(
    label_studio, redis_connection, redis_url, tmp_path
):
    ls = label_studio
    project_id = ls.create_project("two worker machines", LABEL_CONFIG)["id"]
    task_ids = [t["id"] for t in ls.upload_images(project_id, write_noise_images(tmp_path / "img", TASKS))]
    proxy = LabelStudioStandIn(ls.url).start()  # images as slow storage serves them: a chunk lasts seconds
    proxy.holding = lambda method, path: 0.1 if path.startswith("/data/") else 0.0
    first_env, second_env = (
        machine_env({**backend_env(redis_url, proxy.url, ls.pat, tmp_path / name), **WORKER_SETTINGS}, torch_threads=1)
        for name in ("machine-a", "machine-b")
    )
    store = Store(redis_connection)
    first = start_worker(first_env, tmp_path / "machine-a.log")
    second = None
    try:
        # the first machine runs the scheduler (delayed retries): the worst machine to lose
        wait_for(lambda: runs_the_scheduler(redis_connection), 60, "the first worker's scheduler")
        second = start_worker(second_env, tmp_path / "machine-b.log")
        names = wait_for(lambda: worker_names(redis_connection, [first, second]), 60, "both workers registered")
        enqueue_patterns(Services(Settings.from_env(first_env), redis_connection), project_id, task_ids)

        at_work = wait_for(lambda: all_midway(redis_connection, names), 120, "both workers midway a chunk")
        killed = next(chunk for chunk in at_work if chunk.worker_name == names[0])
        killed_tasks = store.claims(project_id)[killed.job_id]
        stop_group(first, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: Job.fetch(killed.job_id, connection=redis_connection).worker_name == names[1], 60,
                 "the killed worker's chunk taken by the other worker")
        recovered_s = time.monotonic() - killed_at
        wait_for(lambda: published(store, project_id) and queues_idle(redis_connection), 180,
                 "every pattern in and the ranking written out")
    except BaseException:
        for log in sorted(tmp_path.glob("*.log")):  # the workers' logs, without their idle maintenance
            lines = [line for line in log.read_text().splitlines() if "cleaning" not in line]
            print(f"--- {log.name}", *lines, sep="\n")
        raise
    finally:
        for worker in (first, second):
            if worker is not None:
                stop_group(worker)
        proxy.stop()
    print(f"chunk of a killed worker taken by the other {recovered_s:.1f} s after the kill")

    retried = Job.fetch(killed.job_id, connection=redis_connection)
    assert retried.get_status() == JobStatus.FINISHED and retried.return_value()["patterns"] == len(killed_tasks)
    pattern_jobs = finished_pattern_jobs(redis_connection)
    assert {job.worker_name for job in pattern_jobs} <= set(names)
    assert sum(job.return_value()["patterns"] for job in pattern_jobs) == TASKS  # no task's patterns written twice
    version = store.get_state(project_id)["patterns_version"]
    assert sorted(store.load_patterns(project_id, version)) == sorted(task_ids)
    assert store.failures(project_id, version) == {} and store.claims(project_id) == {}
    assert one_prediction_per_task(ls, project_id) == {task_id: 1 for task_id in task_ids}


def test_the_scheduler_of_a_killed_worker_is_taken_over_within_seconds_and_runs_its_jobs_retry(
    redis_connection, redis_url, tmp_path
):
    first_env, second_env = (
        {**backend_env(redis_url, "http://127.0.0.1:9", "no-label-studio", tmp_path / name), **QUICK_RECOVERY}
        for name in ("machine-a", "machine-b")
    )
    doomed = start_worker(first_env, tmp_path / "machine-a.log", (FEATURES_QUEUE,))
    survivor = None
    try:
        wait_for(lambda: runs_the_scheduler(redis_connection), 60, "the first worker's scheduler")
        job = Queue(FEATURES_QUEUE, connection=redis_connection).enqueue("time.sleep", 600, retry=Retry(1, [1]))
        wait_for(lambda: job.get_status() == JobStatus.STARTED, 60, "the job on the first worker")
        survivor = start_worker(second_env, tmp_path / "machine-b.log", (FEATURES_QUEUE,))
        names = wait_for(lambda: worker_names(redis_connection, [doomed, survivor]), 60, "both workers registered")
        stop_group(doomed, signal.SIGKILL)
        killed_at = time.monotonic()
        # RQ itself leaves the dead scheduler's lock for 60 s: no retry would start before then
        wait_for(lambda: Job.fetch(job.id, connection=redis_connection).worker_name == names[1], 45,
                 "the job's retry on the surviving worker")
        print(f"retried on the surviving worker {time.monotonic() - killed_at:.1f} s after the kill")
    finally:
        for worker in (doomed, survivor):
            if worker is not None:
                stop_group(worker, signal.SIGKILL)  # not waiting for the job to end
