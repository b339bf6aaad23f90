"""Project administration: settings, enable/disable/reselect, status. Used by the web service's
/setup and ``/freesel/projects/<id>/...`` routes."""

from __future__ import annotations

import datetime
import functools
import time
from dataclasses import dataclass
from typing import Any, Mapping

import redis
from rq import Queue
from rq.job import Job
from rq.registry import DeferredJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from .config import FEATURES_QUEUE, QUEUES, SELECTION_QUEUE, ProjectSettings, Settings
from .engine import preset
from .jobs import VERSION_PREFIX, client_for, enqueue_cleanup, enqueue_sync, remember_previous_sampling, schedule_selection
from .label_studio import LabelStudioClient
from .store import Store

# Settings that change the patterns themselves: changing one recomputes them.
PATTERN_FIELDS = frozenset({"patterns_per_image", "attention_ratio", "model", "seed"})
MAX_LISTED_FAILURES = 100
MAX_LISTED_GROUPS = 100


@dataclass(frozen=True)
class Backend:
    """The web service's shared services."""

    settings: Settings
    connection: redis.Redis

    @property
    def store(self) -> Store:
        return Store(self.connection)

    @functools.cached_property
    def client(self) -> LabelStudioClient:
        return client_for(self.settings)


def apply_settings(backend: Backend, project_id: int, changes: Mapping[str, Any]) -> ProjectSettings:
    """Validate and store ``changes``; then recompute, re-rank, enable or disable as they require.
    A project the backend has not seen yet is synced (its tasks enqueued) whatever the changes."""
    store = backend.store
    new_project = "patterns_version" not in store.get_state(project_id)
    if new_project:
        backend.client.get_project(project_id)  # an id Label Studio does not know: 404, nothing stored
    before = store.get_settings(project_id)
    after = before.updated(changes)
    after = after.with_preset(after.preset_in_use(store.get_state(project_id))[0])
    store.save_settings(project_id, after)
    if not after.enabled:
        if before.enabled or not changes:
            disable(backend, project_id)
        return after
    if new_project or not before.enabled or not changes or any(getattr(before, f) != getattr(after, f) for f in PATTERN_FIELDS):
        remember_previous_sampling(backend.client, store, project_id)
        enqueue_sync(backend.connection, backend.settings, project_id)
    elif before != after:
        schedule_selection(backend.connection, backend.settings, project_id)
    return after


def enable(backend: Backend, project_id: int) -> ProjectSettings:
    return apply_settings(backend, project_id, {"enabled": True})


def disable(backend: Backend, project_id: int) -> ProjectSettings:
    """Stop FreeSel for the project: delete its predictions, restore the sampling and model
    version the project had before, and remove the flags (in a job)."""
    store = backend.store
    settings = store.get_settings(project_id)
    if settings.enabled:
        settings = settings.updated({"enabled": False})
        store.save_settings(project_id, settings)
    client = backend.client
    # Delete first: Label Studio clears the project's model_version when deleting that version.
    for version in client.list_model_versions(project_id):
        if version.startswith(VERSION_PREFIX):
            client.delete_model_version(project_id, version)
    state = store.get_state(project_id)
    if "previous_sampling" in state:
        client.update_project(
            project_id,
            sampling=state["previous_sampling"] or "Sequential sampling",
            model_version=state.get("previous_model_version", ""),
        )
        backend.connection.hdel(store._key(project_id, "state"), "previous_sampling", "previous_model_version", "model_version")
    enqueue_cleanup(backend.connection, backend.settings, project_id)
    return settings


def reselect(backend: Backend, project_id: int) -> str:
    return schedule_selection(backend.connection, backend.settings, project_id).id


def status(backend: Backend, project_id: int) -> dict[str, Any]:
    """Counts for an admin: tasks, patterns done/failed (with reasons), progress, picks, jobs."""
    store = backend.store
    state = store.get_state(project_id)
    project_settings = store.get_settings(project_id)
    version = state.get("patterns_version", "")
    done, failed = store.count_done(project_id, version) if version else (0, 0)
    failures = store.failures(project_id, version) if version else {}
    tasks = len(store.task_ids(project_id))
    last = state.get("last_selection_at")
    jobs = project_jobs(backend.connection, project_id)
    return {
        "project": project_id,
        "settings": project_settings.to_dict(),
        "preset": preset_status(project_settings, state),
        "tasks": tasks,
        "patterns_done": done,
        "patterns_pending": max(0, tasks - done - failed),
        "failed": failed,
        "failures": [{"task": t, "reason": r} for t, r in sorted(failures.items())[:MAX_LISTED_FAILURES]],
        "progress": progress(state, tasks, done + failed, jobs),
        "picks": int(state.get("n_picked", 0)),
        "ranked": int(state.get("n_ranked", 0)),
        "model_version": state.get("model_version"),
        "patterns_version": version or None,
        "last_selection_at": datetime.datetime.fromtimestamp(float(last), datetime.timezone.utc).isoformat() if last else None,
        "jobs": {queue: {group: len(found) for group, found in groups.items()} for queue, groups in jobs.items()},
        "near_duplicates": near_duplicates(store, project_id),
    }


def preset_status(project_settings: ProjectSettings, state: Mapping[str, str]) -> dict[str, Any]:
    """Which preset applies and why, its values, and which settings override it."""
    kind, reason = project_settings.preset_in_use(state)
    return {"task": kind, "reason": reason, "values": preset(kind), "explicit": list(project_settings.explicit),
            "description": project_settings.describe_preset(state)}


def near_duplicates(store: Store, project_id: int) -> dict[str, Any] | None:
    """The last selection run's near-duplicate groups (task ids, lowest first); None before one."""
    record = store.get_selection(project_id)
    if record is None:
        return None
    groups = record.task_groups()
    return {
        "threshold": record.duplicate_threshold,
        "groups": len(groups),
        "flagged": sum(len(group) - 1 for group in groups),
        "listed": groups[:MAX_LISTED_GROUPS],
    }


def progress(state: Mapping[str, str], tasks: int, settled: int, jobs: Mapping[str, Mapping[str, list[Job]]]) -> dict[str, Any]:
    """Tasks with patterns (or a failure) out of all, counting what running chunk jobs have done
    but not saved yet; the rate observed since the current work began and the ETA it gives; the
    running selection's stage."""
    in_flight = sum(int(job.meta.get("done", 0)) for job in jobs[FEATURES_QUEUE]["running"])
    done = min(tasks, settled + in_flight)
    rate = eta = None
    if "progress_since" in state and done < tasks:
        elapsed = time.time() - float(state["progress_since"])
        finished_since = done - int(state.get("progress_base", 0))
        if elapsed > 0 and finished_since > 0:
            rate = finished_since / elapsed
            eta = (tasks - done) / rate
    selection = next(iter(jobs[SELECTION_QUEUE]["running"]), None)
    return {
        "tasks_done": done,
        "tasks_total": tasks,
        "percent": round(100.0 * done / tasks, 1) if tasks else 100.0,
        "tasks_per_s": round(rate, 2) if rate else None,
        "eta_s": round(eta, 1) if eta is not None else None,
        "selection": None if selection is None else {key: selection.meta.get(key) for key in ("stage", "done", "total")},
    }


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
            group: [job for job in Job.fetch_many(ids, connection=connection) if job and job.meta.get("project") == project_id]
            for group, ids in groups.items()
        }
    return found
