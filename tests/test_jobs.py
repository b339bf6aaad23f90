"""RQ jobs with a real Redis, a real worker process and a real Label Studio."""

from __future__ import annotations

import importlib
import threading
import time

import numpy as np
import pytest
from rq import Queue
from rq.job import Job, JobStatus

from freesel_backend.server.settings import SELECTION_QUEUE, WRITEOUT_QUEUE, Settings
from freesel_backend.server.enqueue import (
    JOB_FUNCTIONS, defer_selection, enqueue_patterns, enqueue_writeout, rerank_delay, schedule_selection,
)
from freesel_backend.server.writeout.cleanup import give_way_to_writeout
from freesel_backend.server.writeout.context import Step, Superseded, write_lock
from freesel_backend.server.writeout.flags import flag_changes
from freesel_backend.server.writeout.plan import PICK_FLAG, full_scores
from freesel_backend.server.services import Services
from freesel_backend.server.model import FreeSelModel
from freesel_backend.engine import DuplicateGroups, Ranking
from freesel_backend.engine.selection import DrawSettings
from freesel_backend.server.admin import status
from freesel_backend.server.jobs import earlier_analysis
from freesel_backend.server.store import SelectionRecord, Store
from harness.backend import backend_env, run_worker_burst
from harness.label_studio import annotate
from tests.helpers import write_noise_images


def test_a_burst_of_imports_queues_pattern_jobs_and_a_label_meanwhile_is_ranked_without_waiting_for_them(
    redis_connection,
):
    settings = Settings(chunk_size=2)
    services = Services(settings, redis_connection)
    chunks = enqueue_patterns(services, 5, [1, 2, 3]) + enqueue_patterns(services, 5, [4])
    label = schedule_selection(services, 5)
    assert schedule_selection(services, 5).id == label.id  # one waiting selection absorbs the next request
    assert label.dependency_ids == [] and label.get_status(refresh=True) == JobStatus.QUEUED
    assert label.args == (5,) and all(job.args == (5, 2) for job in chunks)  # plain arguments, no secrets
    assert len(chunks) == 3 and chunks[0].retries_left == settings.job_retries


def test_a_selection_requested_while_the_projects_selection_runs_waits_for_it(redis_connection):
    settings = Settings()
    running = schedule_selection(Services(settings, redis_connection), 5)
    Queue(SELECTION_QUEUE, connection=redis_connection).remove(running)
    running.set_status(JobStatus.STARTED)  # what a worker does when it takes the job
    next_one = schedule_selection(Services(settings, redis_connection), 5)
    assert next_one.id != running.id and next_one.dependency_ids == [running.id]
    assert next_one.get_status(refresh=True) == JobStatus.DEFERRED


def test_a_selection_that_starts_too_soon_after_the_last_ranking_is_put_off_and_later_requests_join_it(
    redis_connection,
):
    services = Services(Settings(rerank_interval_s=10), redis_connection)
    services.store.update_state(5, ranking_started_at=time.time() - 4)
    assert 5.0 < rerank_delay(services.store, 5, services.settings) <= 6.0
    deferred = defer_selection(services, 5, 6.0)
    assert deferred.get_status(refresh=True) == JobStatus.SCHEDULED
    assert schedule_selection(services, 5).id == deferred.id  # a label meanwhile
    assert defer_selection(services, 5, 6.0).id == deferred.id


def test_a_cleanup_batch_lets_the_projects_waiting_write_out_step_take_the_write_lock_first(redis_connection):
    settings = Settings(label_studio_url="http://127.0.0.1:9", label_studio_api_key="unused")  # never reached
    services = Services(settings, redis_connection)
    enqueue_writeout(services, 5)
    step = Job.fetch(services.store.get_state(5)["writeout_job"], connection=redis_connection)
    events: list[str] = []

    def write_out_step() -> None:  # what the write-out worker does a moment later
        time.sleep(0.5)
        with write_lock(services, 5):
            Queue(WRITEOUT_QUEUE, connection=redis_connection).remove(step)
            step.set_status(JobStatus.STARTED)
            events.append("write-out step")
            time.sleep(0.3)

    worker = threading.Thread(target=write_out_step)
    worker.start()
    give_way_to_writeout(services, 5)
    with write_lock(services, 5):
        events.append("cleanup batch")
    worker.join()
    assert events == ["write-out step", "cleanup batch"]
    give_way_to_writeout(services, 6)  # no write-out waits: the batch goes at once


@pytest.mark.slow
@pytest.mark.parametrize("former", ["freesel_backend.writeout.write_out", "freesel_backend.server.publish.write_out"])
def test_a_job_queued_under_its_former_module_path_still_runs(redis_connection, redis_url, tmp_path, former):
    """Jobs queued before the package took its current layout name their functions by former paths."""
    job = Queue(WRITEOUT_QUEUE, connection=redis_connection).enqueue(former, 7)
    run_worker_burst(backend_env(redis_url, "http://127.0.0.1:9", "unused-key", tmp_path / "model_dir"))
    assert Job.fetch(job.id, connection=redis_connection).get_status() == JobStatus.FINISHED


def test_worker_stores_patterns_records_failures_and_publishes_a_ranking(
    label_studio, redis_connection, redis_url, tmp_path
):
    project = label_studio.create_project("jobs")
    tasks = label_studio.upload_images(project["id"], write_noise_images(tmp_path / "img", 5))
    broken = label_studio.import_tasks(project["id"], [{"image": "http://127.0.0.1:9/missing.png"}])
    env = backend_env(redis_url, label_studio.url, label_studio.pat, tmp_path / "model_dir")
    chunks = enqueue_patterns(
        Services(Settings.from_env(env), redis_connection), project["id"], [t["id"] for t in tasks] + broken
    )

    run_worker_burst(env)

    store = Store(redis_connection)
    state = store.get_state(project["id"])
    assert sorted(store.load_patterns(project["id"], state["patterns_version"])) == [t["id"] for t in tasks]
    failures = store.failures(project["id"], state["patterns_version"])
    assert list(failures) == broken and "image download failed" in failures[broken[0]]
    stages = status(Services(Settings.from_env(env), redis_connection), project["id"])["pattern_stages"]
    assert stages["tasks"] == len(tasks) + len(broken) and stages["forward_s"] > 0 and stages["rate"] > 0
    listed = label_studio.api("GET", f"/api/projects/{project['id']}/").json()
    assert listed["sampling"] == "Uncertainty sampling" and listed["model_version"] == state["model_version"]
    scores = sorted(
        p["score"] for p in label_studio.api("GET", "/api/predictions/", params={"project": project["id"]}).json()
    )
    assert scores == sorted(full_scores(range(5)).values())  # evenly spaced, one per ranked task
    assert store.get_target(project["id"])["head_size"] == Settings.from_env(env).head_size  # the write-out's head
    for chunk in chunks:  # progress in the job meta, per model batch: every task of the chunk counted
        chunk.refresh()
        assert chunk.meta["done"] == chunk.meta["total"]
    assert sum(chunk.meta["total"] for chunk in chunks) == len(tasks) + len(broken)
    writeout = Job.fetch(state["writeout_job"], connection=redis_connection)
    assert writeout.get_status(refresh=True) == JobStatus.FINISHED and writeout.return_value()["finished"]
    flags = {
        task["id"]: task["data"].get("freesel")
        for task in label_studio.api("GET", "/api/tasks/", params={"project": project["id"]}).json()["tasks"]
    }
    assert {t: flags[t] for t in flags if t not in broken} == {
        t["id"]: "FreeSel pick" for t in tasks
    }  # the whole pool is picked
    assert flags[broken[0]].startswith("FreeSel could not use this image: image download failed")


def test_every_job_enqueued_by_its_import_path_names_a_function():
    for path in JOB_FUNCTIONS:
        module, _, name = path.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), path


def ranked_project(label_studio, redis_connection, redis_url, tmp_path, images: int):
    """A project of ``images`` tasks, their patterns and first ranking done; re-rankings without delay."""
    project = label_studio.create_project(tmp_path.name)
    tasks = [t["id"] for t in label_studio.upload_images(project["id"], write_noise_images(tmp_path / "img", images))]
    env = {
        **backend_env(redis_url, label_studio.url, label_studio.pat, tmp_path / "model_dir"),
        "FREESEL_RERANK_INTERVAL": "0",
    }
    services = Services(Settings.from_env(env), redis_connection)
    enqueue_patterns(services, project["id"], tasks)
    run_worker_burst(env)
    return project, tasks, env, services


@pytest.mark.slow
def test_tasks_deleted_in_label_studio_leave_the_next_ranking_through_their_webhook(
    label_studio, redis_connection, redis_url, tmp_path
):
    project, tasks, env, services = ranked_project(label_studio, redis_connection, redis_url, tmp_path, 4)
    assert label_studio.api("DELETE", f"/api/tasks/{tasks[0]}/").status_code == 204

    # Label Studio's TASKS_DELETED payload names the tasks by id only
    model = FreeSelModel(project_id=project["id"], services=services)
    deleted = {"action": "TASKS_DELETED", "tasks": [{"id": tasks[0]}], "project": {"id": project["id"]}}
    model.process_event("TASKS_DELETED", deleted)
    run_worker_burst(env)

    assert sorted(Store(redis_connection).get_target(project["id"])["order"]) == tasks[1:]


@pytest.mark.slow
def test_a_labelled_task_whose_annotation_count_label_studio_lost_stays_out_of_the_ranking(
    label_studio, redis_connection, redis_url, tmp_path
):
    project, tasks, env, services = ranked_project(label_studio, redis_connection, redis_url, tmp_path, 5)
    kept, unlabelled_again = tasks[0], tasks[1]
    for task_id in (kept, unlabelled_again):
        annotate(label_studio, task_id)
    FreeSelModel(project_id=project["id"], services=services).process_event("ANNOTATION_CREATED", {})
    run_worker_burst(env)
    assert not {kept, unlabelled_again} & set(Store(redis_connection).get_target(project["id"])["order"])

    # the count Label Studio keeps in the task row set back (as a task update that read the row
    # before the annotation was counted writes it), the annotation itself kept
    stale = {"is_labeled": False, "total_annotations": 0}
    assert label_studio.api("PATCH", f"/api/tasks/{kept}/", json=stale).status_code == 200
    assert kept not in services.client.labelled_task_ids(project["id"])
    annotation = label_studio.api("GET", f"/api/tasks/{unlabelled_again}/annotations/").json()[0]
    assert label_studio.api("DELETE", f"/api/annotations/{annotation['id']}/").status_code == 204
    FreeSelModel(project_id=project["id"], services=services).process_event("ANNOTATIONS_DELETED", {})
    run_worker_burst(env)

    order = Store(redis_connection).get_target(project["id"])["order"]
    assert kept not in order and unlabelled_again in order


def test_a_re_ranking_of_the_same_tasks_reuses_the_near_duplicates_and_draw_prior_of_the_last_ranking():
    ranking = Ranking(np.array([0, 1, 2]), np.array([np.inf, 0.5, 0.1]), 2, ())
    groups = DuplicateGroups([[0, 2]], np.array([0, -1, 0]), 0.05)
    prior = np.array([1.0, 0.25, 0.5])
    record = SelectionRecord.of("freesel-0001 ranking 3", "p1", [10, 11, 12], ranking, groups, "typical", prior)

    typical = DrawSettings("typical", 0)
    duplicates, draw = earlier_analysis(record, "p1", [10, 11, 12], typical, 0.05)
    assert duplicates is not None and duplicates.groups == [[0, 2]] and duplicates.group_of.tolist() == [0, -1, 0]
    assert draw == typical and draw.prior is not None and draw.prior.tolist() == [1.0, 0.25, 0.5]
    assert reused(earlier_analysis(record, "p1", [10, 11, 12, 13], typical, 0.05)) == (False, False)  # a task was added
    assert reused(earlier_analysis(record, "p2", [10, 11, 12], typical, 0.05)) == (False, False)  # other patterns
    assert reused(earlier_analysis(None, "p1", [10, 11, 12], typical, 0.05)) == (False, False)
    assert reused(earlier_analysis(record, "p1", [10, 11, 12], typical, 0.1)) == (False, True)  # another copy threshold
    assert reused(earlier_analysis(record, "p1", [10, 11, 12], DrawSettings("prob", 0), 0.05)) == (True, False)


def reused(analysis: tuple[DuplicateGroups | None, DrawSettings]) -> tuple[bool, bool]:
    """Whether an earlier analysis handed over the near-duplicate groups, and the draw prior."""
    duplicates, draw = analysis
    return duplicates is not None, draw.prior is not None


def step_of_ranking_7(redis_connection, full: bool) -> tuple[Services, dict, Step]:
    """A write-out step of ranking 7 of project 5, holding the project's write lock."""
    settings = Settings(label_studio_url="http://127.0.0.1:9", label_studio_api_key="unused")
    services = Services(settings, redis_connection)
    target = {"generation": 7, "model_version": "freesel-0001", "full": full, "order": [1, 2], "n_picked": 1}
    services.store.save_target(5, target)
    lock = write_lock(services, 5)
    assert lock.acquire(blocking=False)
    return services, target, Step(services, 5, budget=100, lock=lock, generation="7")


def test_a_write_out_step_stops_before_its_next_request_once_a_newer_ranking_replaced_its_target(redis_connection):
    services, target, step = step_of_ranking_7(redis_connection, full=False)
    step.spend()
    services.store.save_target(5, {**target, "generation": 8})
    step.spend()  # nothing written yet: a step always gets its first write in
    step.writes = 1
    with pytest.raises(Superseded):
        step.spend()


def test_a_full_import_heading_for_its_queue_switch_finishes_the_switch_before_a_newer_ranking_takes_over(
    redis_connection,
):
    services, target, step = step_of_ranking_7(redis_connection, full=True)
    step.writes, step.switching = 3, True
    services.store.save_target(5, {**target, "generation": 8})
    step.spend()  # the head's predictions and first flags go in, then the queue switches
    step.switching = False
    with pytest.raises(Superseded):
        step.spend()


def test_the_write_out_keeps_the_head_the_ranking_was_made_with_whatever_its_own_worker_is_set_to(redis_connection):
    writer = Settings(label_studio_url="http://127.0.0.1:9", label_studio_api_key="unused", head_size=300)
    services = Services(writer, redis_connection)
    lock = write_lock(services, 5)
    step = Step(services, 5, budget=100, lock=lock)
    target = {"generation": 7, "model_version": "freesel-0001", "full": False, "order": [1, 2, 3], "n_picked": 3,
              "flags": {}}
    assert flag_changes(step, {**target, "head_size": 2}, additions=True) == {1: PICK_FLAG, 2: PICK_FLAG}
    assert step.head_size({**target, "head_size": 2}) == 2
    assert step.head_size(target) == 300  # a target stored before targets recorded their head
