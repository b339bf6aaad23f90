"""Rankings while an import's patterns come in: pattern jobs draw random samples of the tasks
still waiting (across imports), the first ranking comes with a first sample, the next ones at
each doubling and once all are in; the status says how much of the pool a ranking saw."""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest
from rq import Queue
from rq.job import JobStatus

from freesel_backend.cli.project import describe_status
from freesel_backend.engine.ranking import rank_tasks
from freesel_backend.server.copy_groups import project_copies
from freesel_backend.server.enqueue import enqueue_patterns, next_ranking_at, rank_if_due, restore_pattern_jobs
from freesel_backend.server.jobs import reconcile
from freesel_backend.server.writeout.plan import PICK_FLAG
from freesel_backend.server.services import Services
from freesel_backend.server.settings import (
    CLEANUP_QUEUE, FEATURES_QUEUE, SELECTION_QUEUE, WRITEOUT_QUEUE, ProjectSettings, Settings,
)
from freesel_backend.server.store import Store
from harness.backend import BackendProcesses, backend_env, idle
from harness.label_studio import LABEL_CONFIG
from harness.local_http import LabelStudioStandIn, LocalHttpServer, Request, encoded
from tests.helpers import noise_image
from harness.workers import start_worker
from tests.test_faults import FAST_RECOVERY, stopped_afterwards
from tests.test_write_out_at_scale import freesel_predictions, queue_by_score

PROJECT = 5


def drawn_in_chunks(services: Services, chunk: int) -> list[list[int]]:
    """What pattern jobs drawing ``chunk`` tasks each get, one after the other, until none waits."""
    chunks: list[list[int]] = []
    while drawn := services.store.claim_pending(PROJECT, f"job-{len(chunks)}", chunk):
        chunks.append(drawn)
        services.store.release_claim(PROJECT, f"job-{len(chunks) - 1}")
    return chunks


def test_pattern_jobs_carry_no_task_list_and_draw_the_tasks_of_every_import_in_one_random_order(redis_connection):
    services = Services(Settings(chunk_size=10), redis_connection)
    first = enqueue_patterns(services, PROJECT, range(1, 101))
    second = enqueue_patterns(services, PROJECT, range(101, 201))
    assert enqueue_patterns(services, PROJECT, range(1, 51)) == []  # waiting already: no job more
    assert len(first) == len(second) == 10 and {job.args for job in first + second} == {(PROJECT, 10)}
    assert Queue(FEATURES_QUEUE, connection=redis_connection).count == 20

    chunks = drawn_in_chunks(services, 10)
    drawn = [task for chunk in chunks for task in chunk]
    assert sorted(drawn) == list(range(1, 201))  # every task once
    assert drawn != sorted(drawn)
    early = drawn[:40]  # the first four chunks: a sample of both imports, not the first import's lowest ids
    assert any(t <= 100 for t in early) and any(t > 100 for t in early) and max(early) - min(early) > 150


def test_a_retried_pattern_job_gets_the_tasks_it_drew_before_and_no_other_job_gets_them(redis_connection):
    store = Services(Settings(chunk_size=10), redis_connection).store
    store.add_pending(PROJECT, range(1, 31))
    drawn = store.claim_pending(PROJECT, "killed-mid-chunk", 10)
    assert store.claim_pending(PROJECT, "killed-mid-chunk", 10) == drawn  # its retry
    others = store.claim_pending(PROJECT, "another", 30)
    assert len(others) == 20 and not set(others) & set(drawn)
    store.release_claim(PROJECT, "another")
    assert store.patterns_outstanding(PROJECT)  # the retried job still works on its tasks
    store.release_claim(PROJECT, "killed-mid-chunk")
    assert not store.patterns_outstanding(PROJECT)


def test_a_sync_gives_back_the_tasks_of_a_pattern_job_that_ended_without_them_and_leaves_those_at_work_alone(
    redis_connection,
):
    services = Services(Settings(chunk_size=5), redis_connection)
    services.store.use_patterns_version(PROJECT, "v1")
    waiting_job = enqueue_patterns(services, PROJECT, range(1, 21))[0]
    services.store.claim_pending(PROJECT, waiting_job.id, 5)  # drawn, then the job failed and waits for its retry
    lost = services.store.claim_pending(PROJECT, "killed-on-its-last-try", 5)
    still_pending = services.store.pending_tasks(PROJECT)

    reconciled = reconcile(services, PROJECT, range(1, 21), every_task=True, version="v1")
    assert reconciled.enqueued == set(lost)
    assert services.store.pending_tasks(PROJECT) == still_pending | set(lost)
    assert list(services.store.claims(PROJECT)) == [waiting_job.id]


def test_a_sync_queues_pattern_jobs_again_for_pending_tasks_whose_jobs_were_lost_before_they_drew(redis_connection):
    services = Services(Settings(chunk_size=5), redis_connection)
    jobs = enqueue_patterns(services, PROJECT, range(1, 21))
    services.store.claim_pending(PROJECT, jobs[0].id, 5)  # drawn: failed, waits for its retry
    for lost in jobs[1:3]:
        lost.delete()
    assert len(restore_pattern_jobs(services, PROJECT)) == 2
    assert restore_pattern_jobs(services, PROJECT) == []


def test_the_next_ranking_comes_with_a_first_sample_then_at_each_doubling_of_the_patterns():
    settings = Settings(first_ranking_tasks=300)
    unranked = {"patterns_version": "v1"}
    assert next_ranking_at(unranked, 50_000, settings) == 300
    assert next_ranking_at(unranked, 120, settings) == 120  # a small import: once all are in
    ranked = {**unranked, "ranked_version": "v1", "ranked_patterns": "1200"}
    assert next_ranking_at(ranked, 50_000, settings) == 2400
    assert next_ranking_at(ranked, 2000, settings) == 2000
    assert next_ranking_at({**ranked, "ranked_version": "v0"}, 50_000, settings) == 300  # other patterns


def with_patterns(services: Services, tasks: range) -> None:
    patterns = {task: np.ones((1, 4), np.float32) for task in tasks}
    services.store.save_results(PROJECT, "v1", patterns, {})


def test_a_pattern_job_asks_for_a_ranking_at_a_milestone_or_once_every_pattern_is_in(redis_connection):
    services = Services(Settings(chunk_size=100, first_ranking_tasks=300), redis_connection)
    services.store.use_patterns_version(PROJECT, "v1")
    enqueue_patterns(services, PROJECT, range(1, 1001))
    with_patterns(services, range(1, 201))
    assert rank_if_due(services, PROJECT) is None
    with_patterns(services, range(201, 301))
    first = rank_if_due(services, PROJECT)
    assert first is not None and rank_if_due(services, PROJECT) is None  # one waits already

    first.cancel()
    services.store.update_state(PROJECT, ranked_version="v1", ranked_patterns=320)
    with_patterns(services, range(301, 601))
    assert rank_if_due(services, PROJECT) is None
    with_patterns(services, range(601, 641))
    assert rank_if_due(services, PROJECT) is not None  # 640 = twice 320

    services.store.claim_pending(PROJECT, "last", 1000)
    assert rank_if_due(services, PROJECT) is None  # a job still works on the rest
    services.store.release_claim(PROJECT, "last")
    final = rank_if_due(services, PROJECT)
    assert final is not None and final.get_status() in (JobStatus.QUEUED, JobStatus.SCHEDULED)


def test_a_slow_first_sample_is_ranked_after_a_minute_of_pattern_work(redis_connection):
    services = Services(Settings(first_ranking_tasks=300, first_ranking_s=60), redis_connection)
    services.store.use_patterns_version(PROJECT, "v1")
    enqueue_patterns(services, PROJECT, range(1, 1001))
    with_patterns(services, range(1, 41))
    assert rank_if_due(services, PROJECT) is None
    services.store.update_state(PROJECT, progress_since=time.time() - 61)
    assert rank_if_due(services, PROJECT) is not None


def test_status_says_how_much_of_the_pool_the_last_ranking_saw_and_when_the_next_one_comes():
    status = {
        "project": 3, "settings": ProjectSettings().to_dict(), "failed": 0, "failures": [], "jobs": {},
        "picks": 300, "ranked": 1200, "last_selection_at": "2026-12-07T18:00:00+00:00",
        "ranked_from": {"patterns": 1200, "tasks": 50_000, "percent": 2.4, "next_ranking_at": 2400},
        "progress": {
            "tasks_done": 1500, "tasks_total": 50_000, "percent": 3.0, "tasks_per_s": None, "eta_s": None,
            "selection": None,
        },
    }
    assert "ranked from 1,200 of 50,000 images (2%), next ranking at 2,400" in describe_status(status)
    all_in = {**status, "ranked_from": {**status["ranked_from"], "next_ranking_at": None}}
    assert "ranked from" not in describe_status(all_in)


# ---- a thousand tasks against a real Label Studio -------------------------------------------------

TASKS = 1000
HEAD = 20
PROGRESSIVE_ENV = {
    **FAST_RECOVERY,
    "FREESEL_TEST_IMAGE_SIZE": "32",
    "FREESEL_CHUNK_SIZE": "50",
    "FREESEL_FIRST_RANKING_TASKS": "100",
    "FREESEL_HEAD_SIZE": str(HEAD),
    "FREESEL_TOP_BEFORE_IMPORTS": "10",
    "FREESEL_RERANK_INTERVAL": "1",
}
SETTINGS = {"strategy": "prob", "budget": 2 * HEAD}


def imported_predictions(proxy: LabelStudioStandIn, project_id: int) -> list[tuple[float, list[dict]]]:
    """Each prediction import the backend sent, in order: when, and the predictions it carried."""
    path = f"/api/projects/{project_id}/import/predictions"
    return [
        (request.received_at, json.loads(request.body))
        for request in proxy.received
        if request.method == "POST" and request.path.split("?")[0] == path
    ]


def rankings_seen(backend: BackendProcesses, project_id: int) -> tuple[list[dict], float]:
    """Poll the status until every task is ranked and written: what each ranking saw (as the
    status showed it), and when every pattern was in."""
    seen: list[dict] = []
    all_in_at = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = backend.status(project_id)
        if status["patterns_done"] == TASKS and all_in_at is None:
            all_in_at = time.monotonic()
        ranked_from = status.get("ranked_from")
        if ranked_from and (not seen or seen[-1]["patterns"] != ranked_from["patterns"]):
            seen.append({**ranked_from, "at": time.monotonic()})
        if all_in_at and ranked_from and ranked_from["patterns"] == TASKS and idle(status):
            if status["writeout"]["state"] == "done":
                return seen, all_in_at
        time.sleep(0.25)
    raise TimeoutError(f"the last ranking was not written out; seen: {seen}")


def windows(seen: list[dict], connected: float) -> list[tuple[float, float]]:
    """From connecting to the second ranking the status showed, then from each to the next (the last: to the end)."""
    times = [connected, *(ranking["at"] for ranking in seen[1:])]
    return list(zip(times, [*times[1:], float("inf")]))


WRITE_KINDS = {
    ("POST", "import"): "prediction imports",
    ("PATCH", "predictions"): "scores changed",
    ("PATCH", "tasks"): "flags changed",
    ("PATCH", "projects"): "queue switches",
}


def writes_between(proxy: LabelStudioStandIn, start: float, end: float) -> Counter:
    """The backend's writes to Label Studio received between ``start`` and ``end``, by kind."""
    kinds = [
        WRITE_KINDS.get((r.method, "import" if "/import/" in r.path else r.path.split("/")[2]))
        for r in proxy.received if start <= r.received_at < end
    ]
    return Counter(kind for kind in kinds if kind)


@pytest.mark.slow
def test_a_thousand_tasks_are_ranked_from_a_first_random_sample_then_at_each_doubling_writing_only_what_changed(
    label_studio, redis_connection, redis_url, tmp_path
):
    ls = label_studio
    requested: list[int] = []

    def image(request: Request) -> tuple[int, dict[str, str], bytes]:
        number = int(request.path.rsplit("/", 1)[1].split(".")[0])
        requested.append(number)
        return 200, {"Content-Type": "image/png"}, encoded(noise_image(number, size=(32, 32)), "PNG")

    with LocalHttpServer({f"/img/{n}.png": image for n in range(TASKS)}) as image_host:
        proxy = LabelStudioStandIn(ls.url).start()
        env = {**backend_env(redis_url, proxy.url, ls.pat, tmp_path / "model_dir"), **PROGRESSIVE_ENV}
        backend = BackendProcesses(env, tmp_path).start(workers=0)
        workers = [  # as serve runs them: patterns beside rankings and write-outs
            start_worker(backend.env, tmp_path / "features.log", (FEATURES_QUEUE,)),
            start_worker(backend.env, tmp_path / "worker.log", (SELECTION_QUEUE, WRITEOUT_QUEUE, CLEANUP_QUEUE)),
        ]
        with stopped_afterwards(backend, proxy, workers):
            pid = ls.create_project("FreeSel while patterns come in", LABEL_CONFIG)["id"]
            ids = ls.import_tasks(pid, [{"image": f"{image_host.url}/img/{n}.png"} for n in range(TASKS)])
            connected = time.monotonic()
            response = ls.api("POST", "/api/ml", json={
                "url": backend.url, "project": pid, "title": "FreeSel", "extra_params": json.dumps(SETTINGS),
            })
            assert response.status_code == 201, response.text
            seen, all_in_at = rankings_seen(backend, pid)

    # patterns in random order: the first chunks are a sample of the whole import
    fetched = list(dict.fromkeys(requested))  # image numbers (= task order of the import), as fetched
    assert sorted(fetched) == list(range(TASKS)) and fetched != sorted(fetched)
    assert min(fetched[:100]) < TASKS / 10 and max(fetched[:100]) > TASKS * 9 / 10

    imports = imported_predictions(proxy, pid)
    switched_at = next(
        request.received_at for request in proxy.received
        if request.method == "PATCH" and request.path.split("?")[0] == f"/api/projects/{pid}/"
    )
    print(
        f"queue switched {switched_at - connected:.1f} s after connecting, every pattern in after "
        f"{all_in_at - connected:.1f} s; rankings seen from "
        + ", ".join(f"{r['patterns']} ({r['at'] - connected:.1f} s)" for r in seen)
        + f"; prediction imports: {[len(batch) for _, batch in imports]}; Label Studio writes per ranking: "
        + "; ".join(str(dict(writes_between(proxy, start, end))) for start, end in windows(seen, connected))
    )
    assert switched_at < all_in_at and seen[0]["patterns"] < TASKS and len(seen) >= 3
    assert [r["next_ranking_at"] for r in seen[:-1]] == [min(TASKS, 2 * r["patterns"]) for r in seen[:-1]]

    # every milestone imported the newly ranked tasks only, all under the one version: no re-import
    imported = [p["task"] for _, batch in imports for p in batch]
    assert Counter(imported) == {t: 1 for t in ids} and len({p["model_version"] for _, b in imports for p in b}) == 1
    assert not any(request.method == "DELETE" for request in proxy.received)
    patches = sum(request.method == "PATCH" for request in proxy.received)
    assert patches <= len(seen) * 4 * HEAD  # per ranking: the head's scores and flags, in and out
    assert Counter(p["task"] for p in freesel_predictions(ls, pid)) == {t: 1 for t in ids}

    # the last ranking is the one a ranking made once every pattern was in would be
    store = Store(redis_connection)
    state, target, settings = store.get_state(pid), store.get_target(pid), store.get_settings(pid)
    patterns = store.load_patterns(pid, state["patterns_version"])
    once = rank_tasks(
        patterns, set(), {}, settings.picks_for(TASKS), head_size=HEAD, draw=settings.draw_settings(),
        duplicates=project_copies(store, pid, sorted(patterns), settings.copy_threshold),
    )
    assert target["order"] == once.order and target["n_picked"] == once.n_picked
    queue = queue_by_score(ls, pid)
    assert queue[:HEAD] == once.order[:HEAD] and sorted(queue) == sorted(ids)
    served = ls.api("GET", f"/api/projects/{pid}/next").json()
    assert served["id"] == queue[0] and served["data"]["freesel"] == PICK_FLAG
