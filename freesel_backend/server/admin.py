"""Project administration: settings, enable/disable/reselect, status. Used by the web service's
/setup and ``/freesel/projects/<id>/...`` routes."""

from __future__ import annotations

import datetime
import time
from typing import Any, Mapping

import redis
from rq.job import Job

from .settings import FEATURES_QUEUE, SELECTION_QUEUE, WRITEOUT_QUEUE, ProjectSettings
from ..engine import preset
from .enqueue import (
    enqueue_cleanup, enqueue_sync, failed_jobs, next_ranking_at, next_try_at, project_jobs, schedule_selection,
)
from .pattern_stages import stages_summary
from .writeout.versions import remember_previous_sampling
from .services import Services
from .store import Store

# Settings that change the patterns themselves: changing one recomputes them.
PATTERN_FIELDS = frozenset({"patterns_per_image", "attention_ratio", "model", "seed"})
MAX_LISTED_FAILURES = 100
MAX_LISTED_GROUPS = 100
MAX_LISTED_JOBS = 10
# Label Studio calls /setup twice on connect and again now and then: a /setup without changes
# lists the project's tasks (a sync) at most once per this many seconds.
SETUP_SYNC_INTERVAL_S = 300


def apply_settings(services: Services, project_id: int, changes: Mapping[str, Any]) -> ProjectSettings:
    """Validate and store ``changes``; then recompute, re-rank, enable or disable as they require.
    A project the backend has not seen yet is synced (its tasks enqueued) whatever the changes,
    as is a known one on a /setup without changes, at most once per SETUP_SYNC_INTERVAL_S."""
    store = services.store
    new_project = "patterns_version" not in store.get_state(project_id)
    if new_project:
        services.client.get_project(project_id)  # an id Label Studio does not know: 404, nothing stored
    before = store.get_settings(project_id)
    after = before.updated(changes)
    after = after.with_preset(after.preset_in_use(store.get_state(project_id))[0])
    store.save_settings(project_id, after)
    if not after.enabled:
        if before.enabled or not changes:
            disable(services, project_id)
        return after
    must_sync = not before.enabled or any(getattr(before, f) != getattr(after, f) for f in PATTERN_FIELDS)
    if must_sync or new_project or not changes:  # a repeated /setup lists the tasks at most once per interval
        if _sync_due(store, project_id) or must_sync:
            remember_previous_sampling(services.client, store, project_id)
            enqueue_sync(services, project_id)
    elif before != after:
        schedule_selection(services, project_id)
    return after


def _sync_due(store: Store, project_id: int) -> bool:
    """True at most once per SETUP_SYNC_INTERVAL_S for the project (each call starts the interval if due)."""
    return store.due(project_id, "setup-sync", SETUP_SYNC_INTERVAL_S)


def enable(services: Services, project_id: int) -> ProjectSettings:
    return apply_settings(services, project_id, {"enabled": True})


def disable(services: Services, project_id: int) -> ProjectSettings:
    """Stop FreeSel for the project: restore the sampling and model version the project had
    before, then delete its predictions and remove the flags (in a cleanup job)."""
    store = services.store
    settings = store.get_settings(project_id)
    if settings.enabled:
        settings = settings.updated({"enabled": False})
        store.save_settings(project_id, settings)
    client = services.client
    state = store.get_state(project_id)
    if "previous_sampling" in state:
        client.update_project(
            project_id,
            sampling=state["previous_sampling"] or "Sequential sampling",
            model_version=state.get("previous_model_version", ""),
        )
        store.forget_state(project_id, "previous_sampling", "previous_model_version", "model_version")
    enqueue_cleanup(services, project_id)
    return settings


def reselect(services: Services, project_id: int) -> str:
    """Rank again even if nothing changed (a selection skips otherwise)."""
    services.store.forget_state(project_id, "ranked_fingerprint")
    return schedule_selection(services, project_id).id


def status(services: Services, project_id: int) -> dict[str, Any]:
    """Counts for an admin: tasks, patterns done/failed (with reasons), progress, the ranking
    live in Label Studio and the one being written, jobs (failed and retrying ones with their
    error), Label Studio requests of the last write-out."""
    store = services.store
    state = store.get_state(project_id)
    project_settings = store.get_settings(project_id)
    version = state.get("patterns_version", "")
    done, failed = store.count_done(project_id, version) if version else (0, 0)
    failures = store.failures(project_id, version) if version else {}
    tasks = len(store.task_ids(project_id))
    jobs = project_jobs(services.connection, project_id)
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
        "pattern_stages": stages_summary(store.pattern_stages(project_id, version)) if version else None,
        "picks": int(state.get("n_picked", 0)),
        "ranked": int(state.get("n_ranked", 0)),
        "model_version": state.get("model_version"),
        "patterns_version": version or None,
        "last_selection_at": _iso(state.get("last_selection_at")),
        "ranked_from": ranked_from(services, project_id, state, tasks),
        "last_ranking": None
        if "ranking_seconds" not in state
        else {
            "seconds": float(state["ranking_seconds"]),
            "label_studio_requests": int(state.get("ranking_requests", 0)),
        },
        "live": live_ranking(state),
        "writeout": writeout_status(store, project_id, jobs),
        "jobs": {queue: {group: len(found) for group, found in groups.items()} for queue, groups in jobs.items()},
        "failed_jobs": [_job_problem(job) for job in failed_jobs(services.connection, project_id, MAX_LISTED_JOBS)],
        "retrying": [
            _job_problem(job, services.connection)
            for groups in jobs.values()
            for job in groups["scheduled"]
            if _attempts(job)
        ],
        "copies": copy_groups(store, project_id),
    }


def ranked_from(services: Services, project_id: int, state: Mapping[str, str], tasks: int) -> dict[str, Any] | None:
    """How many tasks had patterns when the project was last ranked, out of its tasks now, and,
    while patterns still come in, how many will have them at the next ranking."""
    if "ranked_patterns" not in state or state.get("ranked_version") != state.get("patterns_version"):
        return None
    ranked = int(state["ranked_patterns"])
    coming_in = services.store.patterns_outstanding(project_id)
    return {
        "patterns": ranked,
        "tasks": tasks,
        "percent": round(100.0 * ranked / tasks, 1) if tasks else 100.0,
        "next_ranking_at": next_ranking_at(state, tasks, services.settings) if coming_in else None,
    }


def preset_status(project_settings: ProjectSettings, state: Mapping[str, str]) -> dict[str, Any]:
    """Which preset applies and why, its values, and which settings override it."""
    kind, reason = project_settings.preset_in_use(state)
    return {"task": kind, "reason": reason, "values": preset(kind), "explicit": list(project_settings.explicit),
            "description": project_settings.describe_preset(state)}


def _iso(timestamp: str | float | None) -> str | None:
    if not timestamp:
        return None
    return datetime.datetime.fromtimestamp(float(timestamp), datetime.timezone.utc).isoformat()


def live_ranking(state: Mapping[str, str]) -> dict[str, Any] | None:
    """What Label Studio's queue serves now: the model version, since when, and which ranking."""
    if not state.get("model_version") or not state.get("switched_at"):
        return None
    return {
        "model_version": state["model_version"],
        "switched_at": _iso(state["switched_at"]),
        "ranking": int(state["live_generation"]) if state.get("live_generation") else None,
        "written_at": _iso(state.get("live_at")),
    }


def writeout_status(
    store: Store, project_id: int, jobs: Mapping[str, Mapping[str, list[Job]]]
) -> dict[str, Any] | None:
    """The last ranking's write-out: requests and writes so far, the running step's stage and
    counts, its rate and ETA."""
    target = store.get_target(project_id)
    if target is None:
        return None
    raw = store.writeout_record(project_id)
    same = raw.get("generation") == str(target["generation"])
    running = next(iter(jobs[WRITEOUT_QUEUE]["running"]), None)
    stage = None if running is None else {key: running.meta.get(key) for key in ("stage", "done", "total")}
    rate = eta = None
    if running is not None and running.meta.get("done") and running.started_at:
        elapsed = (
            datetime.datetime.now(datetime.timezone.utc) - running.started_at.replace(tzinfo=datetime.timezone.utc)
        ).total_seconds()
        rate = running.meta["done"] / max(elapsed, 1e-9)
        eta = (running.meta["total"] - running.meta["done"]) / rate
    finished = same and "finished_at" in raw
    return {
        "ranking": target["generation"],
        "model_version": target["model_version"],
        "new_version": bool(target["full"]),
        "state": "done" if finished else "writing",
        "label_studio_requests": int(raw.get("requests", 0)) if same else 0,
        "writes": int(raw.get("writes", 0)) if same else 0,
        "seconds": round(float(raw.get("seconds", 0)), 1) if same else 0.0,
        "finished_at": _iso(raw.get("finished_at")) if finished else None,
        "step": stage,
        "per_s": round(rate, 2) if rate else None,
        "eta_s": round(eta, 1) if eta is not None else None,
    }


def _attempts(job: Job) -> bool:
    """True for a job that failed at least once (a retry is what it waits for)."""
    return job.latest_result() is not None


def _job_problem(job: Job, connection: redis.Redis | None = None) -> dict[str, Any]:
    """A failed or retrying job: what it is, its last error line, and when it retries."""
    result = job.latest_result()
    error = (result.exc_string if result is not None and result.exc_string else job.exc_info or "").strip().splitlines()
    answer: dict[str, Any] = {"job": job.id, "description": job.description, "error": error[-1] if error else None}
    if connection is not None:
        answer["next_try_at"] = next_try_at(connection, job)
        answer["retries_left"] = job.retries_left
    return answer


def copy_groups(store: Store, project_id: int) -> dict[str, Any] | None:
    """The last selection run's copy groups (task ids, lowest first) and the copies in them (the
    members besides each group's representative); None before one."""
    record = store.get_selection(project_id)
    if record is None:
        return None
    groups = record.task_groups()
    return {
        "threshold": record.duplicate_threshold,
        "groups": len(groups),
        "copies": sum(len(group) - 1 for group in groups),
        "listed": groups[:MAX_LISTED_GROUPS],
    }


def progress(
    state: Mapping[str, str], tasks: int, settled: int, jobs: Mapping[str, Mapping[str, list[Job]]]
) -> dict[str, Any]:
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
        "selection": None
        if selection is None
        else {key: selection.meta.get(key) for key in ("stage", "done", "total")},
    }
