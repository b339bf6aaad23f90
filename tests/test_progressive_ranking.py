"""Rankings while an import's patterns come in: pattern jobs draw random samples of the tasks
still waiting (across imports), the first ranking comes with a first sample, the next ones at
each doubling and once all are in; the status says how much of the pool a ranking saw."""

from __future__ import annotations

import time

import numpy as np
from rq import Queue
from rq.job import JobStatus

from freesel_backend.cli import describe_status
from freesel_backend.server.enqueue import next_ranking_at, rank_if_due
from freesel_backend.server.enqueue import enqueue_patterns
from freesel_backend.server.services import Services
from freesel_backend.server.settings import FEATURES_QUEUE, ProjectSettings, Settings

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
