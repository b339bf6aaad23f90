"""Faults with real processes: a worker killed mid-chunk, Label Studio down while predictions
are pushed, Redis restarted (persistent and not), the backend restarted with jobs queued,
concurrent imports. Afterwards: every task has patterns, exactly one prediction each."""

from __future__ import annotations

import pytest

import signal
import subprocess
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import redis

from freesel_backend.server.settings import Settings
from freesel_backend.server.enqueue import enqueue_patterns
from freesel_backend.server.services import Services
from freesel_backend.server.redis_server import RedisServer
from freesel_backend.server.store import Store
from harness.backend import BackendProcesses, backend_env, idle, wait_for
from harness.workers import start_worker, stop_group
from tests.helpers import noise_image, write_noise_images
from harness.local_http import LabelStudioStandIn, LocalHttpServer, Request
from harness.label_studio import LABEL_CONFIG, annotate
from harness.local_http import encoded

pytestmark = pytest.mark.slow

FAST_RECOVERY = {
    "FREESEL_JOB_RETRIES": "5",
    "FREESEL_RETRY_INTERVALS": "1,1,2,2,4",
    "FREESEL_WORKER_HEARTBEAT": "2",
    "FREESEL_WORKER_MAINTENANCE": "2",
    "FREESEL_ALLOW_PRIVATE_DOWNLOADS": "true",
}


@contextmanager
def stopped_afterwards(
    backend: BackendProcesses, proxy: LabelStudioStandIn, workers: list[subprocess.Popen[bytes]]
) -> Iterator[None]:
    """The block runs; on a failure the backend's logs are printed. Then the workers (those in the
    list at the end), the backend and the proxy are stopped."""
    try:
        yield
    except BaseException:
        print(backend.logs())
        raise
    finally:
        for worker in workers:
            stop_group(worker)
        backend.stop()
        proxy.stop()


def one_prediction_per_task(ls, project_id: int) -> dict[int, int]:
    """Task id -> number of predictions; also checks they are all of the project's current version."""
    project = ls.api("GET", f"/api/projects/{project_id}/").json()
    predictions = ls.api("GET", "/api/predictions/", params={"project": project_id}).json()
    assert {p["model_version"] for p in predictions} == {project["model_version"]}
    return dict(Counter(p["task"] for p in predictions))


def status_if_known(backend: BackendProcesses, project_id: int) -> dict | None:
    response = backend.admin("GET", project_id, "status", timeout=30)
    return response.json() if response.status_code == 200 else None


def published(store: Store, project_id: int) -> bool:
    return bool(store.get_state(project_id).get("model_version"))


def test_a_worker_killed_mid_chunk_has_its_chunk_retried_and_nothing_skipped_or_duplicated(
    label_studio, redis_connection, redis_url, tmp_path
):
    ls = label_studio
    calls: list[float] = []

    def slow_first_time(request: Request):
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(60)  # the worker is killed while it waits here
        return 200, {"Content-Type": "image/png"}, encoded(noise_image(99), "PNG")

    with LocalHttpServer({"/slow.png": slow_first_time}) as host:
        pid = ls.create_project("killed worker", LABEL_CONFIG)["id"]
        ids = [t["id"] for t in ls.upload_images(pid, write_noise_images(tmp_path / "img", 5))]
        ids += ls.import_tasks(pid, [{"image": f"{host.url}/slow.png"}])
        env = {**backend_env(redis_url, ls.url, ls.pat, tmp_path / "model_dir"), **FAST_RECOVERY}
        enqueue_patterns(Services(Settings.from_env(env), redis_connection), pid, ids)
        doomed = start_worker(env, tmp_path / "doomed.log")
        wait_for(lambda: calls, 120, "the worker to be inside the chunk")
        stop_group(doomed, signal.SIGKILL)
        survivor = start_worker(env, tmp_path / "survivor.log")
        try:
            store = Store(redis_connection)
            wait_for(lambda: published(store, pid), 180, "the retried chunk and the selection")
        finally:
            stop_group(survivor)
    version = store.get_state(pid)["patterns_version"]
    assert sorted(store.load_patterns(pid, version)) == sorted(ids) and store.failures(pid, version) == {}
    assert len(calls) == 2  # the killed attempt and the retry
    assert one_prediction_per_task(ls, pid) == {task_id: 1 for task_id in ids}


def test_label_studio_down_or_failing_while_predictions_are_pushed_is_retried_until_it_is_back(
    label_studio, redis_connection, redis_url, tmp_path
):
    ls = label_studio
    stand_in = LabelStudioStandIn(ls.url).start()
    pid = ls.create_project("outage", LABEL_CONFIG)["id"]
    ids = [t["id"] for t in ls.upload_images(pid, write_noise_images(tmp_path / "img", 5))]
    stand_in.failing = lambda method, path: 503 if "/import/predictions" in path else None
    env = {**backend_env(redis_url, stand_in.url, ls.pat, tmp_path / "model_dir"), **FAST_RECOVERY}
    enqueue_patterns(Services(Settings.from_env(env), redis_connection), pid, ids)
    worker = start_worker(env, tmp_path / "worker.log")
    store = Store(redis_connection)
    try:
        wait_for(lambda: stand_in.failed, 180, "a push answered 503")
        stand_in.stop()  # now unreachable: connection refused
        time.sleep(3)
        stand_in.failing = lambda method, path: None
        stand_in.start()
        wait_for(lambda: published(store, pid), 120, "the push once Label Studio is back")
    finally:
        stop_group(worker)
        stand_in.stop()
    failed_attempts = (tmp_path / "worker.log").read_text()
    assert "HTTP 503" in failed_attempts and "unreachable" in failed_attempts  # both faults were met
    assert one_prediction_per_task(ls, pid) == {task_id: 1 for task_id in ids}
    assert store.count_predictions(pid) == len(ids)


def test_patterns_survive_a_restart_of_a_persistent_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    patterns = {task: np.random.default_rng(task).normal(size=(3, 8)) for task in (1, 2, 3)}
    Store(redis.Redis.from_url(server.url)).save_results(5, "v1", patterns, {4: "HTTP 404"})
    server.stop()
    restarted = RedisServer(tmp_path / "redis", port=server.port).start()
    try:
        store = Store(redis.Redis.from_url(restarted.url))
        assert sorted(store.load_patterns(5, "v1")) == [1, 2, 3] and store.failures(5, "v1") == {4: "HTTP 404"}
    finally:
        restarted.stop()


def test_after_a_non_persistent_redis_restart_the_backend_notices_missing_patterns_and_recomputes(
    label_studio, tmp_path
):
    ls = label_studio
    server = RedisServer().start()
    pid = ls.create_project("amnesia", LABEL_CONFIG)["id"]
    ids = [t["id"] for t in ls.upload_images(pid, write_noise_images(tmp_path / "img", 4))]
    backend = BackendProcesses(backend_env(server.url, ls.url, ls.pat, tmp_path / "model_dir"), tmp_path).start()
    try:
        assert (
            ls.api("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "FreeSel"}).status_code == 201
        )
        wait_for(lambda: (s := backend.status(pid)) and idle(s) and s["ranked"] == 4, 240, "first ranking")
        server.stop()
        server = RedisServer(port=server.port).start()  # empty
        annotate(ls, ids[0])  # the ANNOTATION_CREATED webhook asks for a re-ranking
        status = wait_for(
            lambda: (
                (s := status_if_known(backend, pid)) and idle(s) and s["patterns_done"] == 4 and s["ranked"] == 3 and s
            ),
            240,
            "recomputed",
        )
    except BaseException:
        print(backend.logs())
        raise
    finally:
        backend.stop()
        server.stop()
    assert status["failed"] == 0
    assert set(one_prediction_per_task(ls, pid)) == set(ids[1:])


def test_a_backend_restarted_with_jobs_queued_loses_nothing_and_publishes_once(
    label_studio, redis_connection, redis_url, tmp_path
):
    ls = label_studio
    pid = ls.create_project("restart", LABEL_CONFIG)["id"]
    ids = [t["id"] for t in ls.upload_images(pid, write_noise_images(tmp_path / "a", 3))]
    env = {**backend_env(redis_url, ls.url, ls.pat, tmp_path / "model_dir"), **FAST_RECOVERY}
    first = BackendProcesses(env, tmp_path).start(workers=0)  # web only: jobs stay queued
    assert ls.api("POST", "/api/ml", json={"url": first.url, "project": pid, "title": "FreeSel"}).status_code == 201
    ids += [t["id"] for t in ls.upload_images(pid, write_noise_images(tmp_path / "b", 3, start_seed=20))]
    wait_for(
        lambda: (
            redis_connection.llen("rq:queue:freesel-features") or redis_connection.llen("rq:queue:freesel-selection")
        ),
        30,
        "queued jobs",
    )
    first.stop()
    second = BackendProcesses({**env, "FREESEL_PUBLIC_URL": first.url}, tmp_path)
    second.port, second.url = first.port, first.url  # Label Studio's webhook and ML backend URL stay valid
    second.start()
    try:
        status = wait_for(
            lambda: (s := second.status(pid)) and idle(s) and s["ranked"] == 6 and s, 240, "all six ranked"
        )
    finally:
        second.stop()
    assert status["patterns_done"] == 6 and status["failed"] == 0
    assert one_prediction_per_task(ls, pid) == {task_id: 1 for task_id in ids}


def test_concurrent_imports_into_one_project_and_two_projects_give_correct_isolated_results(
    label_studio, redis_connection, redis_url, tmp_path
):
    ls = label_studio
    env = backend_env(redis_url, ls.url, ls.pat, tmp_path / "model_dir")
    backend = BackendProcesses(env, tmp_path).start(workers=2)
    projects = [ls.create_project(f"concurrent {n}", LABEL_CONFIG)["id"] for n in (1, 2)]
    imported: dict[int, list[int]] = {pid: [] for pid in projects}
    try:
        for pid in projects:
            assert (
                ls.api("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "FreeSel"}).status_code
                == 201
            )

        def upload(pid: int, seed: int) -> None:
            tasks = ls.upload_images(pid, write_noise_images(tmp_path / f"{pid}-{seed}", 3, start_seed=seed))
            imported[pid].extend(t["id"] for t in tasks)

        threads = [threading.Thread(target=upload, args=(pid, seed)) for pid in projects for seed in (0, 100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for pid in projects:
            wait_for(lambda: (s := backend.status(pid)) and idle(s) and s["ranked"] == 6, 300, f"project {pid} ranked")
    except BaseException:
        print(backend.logs())
        raise
    finally:
        backend.stop()
    store = Store(redis_connection)
    for pid in projects:
        assert len(imported[pid]) == 6
        assert store.task_ids(pid) == set(imported[pid])
        assert one_prediction_per_task(ls, pid) == {task_id: 1 for task_id in imported[pid]}
