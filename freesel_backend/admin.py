"""Project administration: settings, enable/disable/reselect, status. Used by the web service's
/setup and ``/freesel/projects/<id>/...`` routes."""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass
from typing import Any, Mapping

import redis
from rq import Queue
from rq.job import Job
from rq.registry import DeferredJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from .config import QUEUES, ProjectSettings, Settings
from .jobs import VERSION_PREFIX, enqueue_cleanup, enqueue_sync, remember_previous_sampling, schedule_selection
from .label_studio import LabelStudioClient
from .store import Store

# Settings that change the patterns themselves: changing one recomputes them.
PATTERN_FIELDS = frozenset({"patterns_per_image", "attention_ratio", "model", "seed"})
MAX_LISTED_FAILURES = 100


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
        return LabelStudioClient(self.settings.label_studio_url, self.settings.label_studio_api_key)


def apply_settings(backend: Backend, project_id: int, changes: Mapping[str, Any]) -> ProjectSettings:
    """Validate and store ``changes``; then recompute, re-rank, enable or disable as they require."""
    store = backend.store
    before = store.get_settings(project_id)
    after = before.updated(changes)
    store.save_settings(project_id, after)
    if not after.enabled:
        if before.enabled or not changes:
            disable(backend, project_id)
        return after
    if not before.enabled or not changes or any(getattr(before, f) != getattr(after, f) for f in PATTERN_FIELDS):
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
    """Counts for an admin: tasks, patterns done/failed (with reasons), picks, jobs."""
    store = backend.store
    state = store.get_state(project_id)
    version = state.get("patterns_version", "")
    done, failed = store.count_done(project_id, version) if version else (0, 0)
    failures = store.failures(project_id, version) if version else {}
    tasks = len(store.task_ids(project_id))
    last = state.get("last_selection_at")
    return {
        "project": project_id,
        "settings": store.get_settings(project_id).to_dict(),
        "tasks": tasks,
        "patterns_done": done,
        "patterns_pending": max(0, tasks - done - failed),
        "failed": failed,
        "failures": [{"task": t, "reason": r} for t, r in sorted(failures.items())[:MAX_LISTED_FAILURES]],
        "picks": int(state.get("n_picked", 0)),
        "ranked": int(state.get("n_ranked", 0)),
        "model_version": state.get("model_version"),
        "patterns_version": version or None,
        "last_selection_at": datetime.datetime.fromtimestamp(float(last), datetime.timezone.utc).isoformat() if last else None,
        "jobs": job_counts(backend.connection, project_id),
    }


def job_counts(connection: redis.Redis, project_id: int) -> dict[str, dict[str, int]]:
    """Per queue: this project's jobs waiting, deferred (on other jobs), scheduled (retries), running."""
    counts: dict[str, dict[str, int]] = {}
    for name in QUEUES:
        queue = Queue(name, connection=connection)
        groups = {
            "queued": queue.get_job_ids(),
            "deferred": DeferredJobRegistry(queue=queue).get_job_ids(),
            "scheduled": ScheduledJobRegistry(queue=queue).get_job_ids(),
            "running": StartedJobRegistry(queue=queue).get_job_ids(),
        }
        counts[name] = {
            group: sum(1 for job in Job.fetch_many(ids, connection=connection) if job and job.meta.get("project") == project_id)
            for group, ids in groups.items()
        }
    return counts
