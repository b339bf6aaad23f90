"""The Label Studio ML backend model: answers /setup, /predict and webhooks from stored results.

Requests never run the network: they read Redis and enqueue RQ jobs (``enqueue.py``).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from ..labelstudio.label_config import image_field_of, task_of_label_config
from . import admin
from .settings import WEBHOOK_SECRET_HEADER
from .enqueue import enqueue_patterns, schedule_selection
from .services import Services
from .store import Store

log = logging.getLogger(__name__)

RERANK_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "TASKS_DELETED"})
WEBHOOK_ACTIONS = ("TASKS_CREATED", *sorted(RERANK_EVENTS))


def project_id_of(project: Any) -> int:
    """Label Studio sends the project as ``"<id>.<created timestamp>"`` (or an id, or a dict)."""
    if isinstance(project, Mapping):
        project = project.get("id")
    try:
        return int(str(project).split(".")[0])
    except (TypeError, ValueError):
        raise ValueError(f"cannot read a project id from {project!r}") from None


class FreeSelModel:
    """The model behind Label Studio's ML backend protocol: one instance per request, bound to a
    project (and its label config, where the request has one) and the process's services."""

    def __init__(self, label_config: str | None = None, *, project_id: int, services: Services) -> None:
        self.label_config = label_config
        self.project_id = project_id
        self.services = services

    @property
    def store(self) -> Store:
        return self.services.store

    def setup(self, extra_params: Mapping[str, Any] | None) -> str:
        """On connect: check the config, apply settings from the connect form, register the
        webhook, and enqueue patterns for the tasks already in the project. Returns the model version."""
        field = image_field_of(self.label_config or "")
        task, reason = task_of_label_config(self.label_config or "")
        self.store.update_state(
            self.project_id, image_field=field, label_config_task=task, label_config_task_reason=reason
        )
        admin.apply_settings(self.services, self.project_id, dict(extra_params or {}))
        settings = self.services.settings
        self.services.client.register_webhook(
            self.project_id,
            f"{settings.public_url}/webhook",
            actions=WEBHOOK_ACTIONS,
            headers={WEBHOOK_SECRET_HEADER: settings.webhook_secret},
        )
        return self.model_version()

    def model_version(self) -> str:
        return self.store.get_state(self.project_id).get("model_version") or "freesel-pending"

    def predict(self, tasks: Sequence[Mapping[str, Any]], **kwargs: Any) -> list[list[dict[str, Any]]]:
        """The stored FreeSel prediction of each task that has one; the others get none now and
        are enqueued (if new to the backend)."""
        ids = [int(task["id"]) for task in tasks]
        stored = self.store.get_predictions(self.project_id, ids)
        unknown = set(ids) - set(stored) - self.store.task_ids(self.project_id)
        if unknown and self.store.get_settings(self.project_id).enabled:
            enqueue_patterns(self.services, self.project_id, unknown)
        return [[_as_prediction(stored[t])] if t in stored else [] for t in ids]

    def process_event(
        self, event: str, data: Mapping[str, Any], job_id: Any = None, additional_params: Any = None
    ) -> dict[str, Any]:
        """TASKS_CREATED -> patterns for exactly those tasks; TASKS_DELETED -> those tasks leave the
        project's task list; annotation changes and deletions -> one (coalesced) re-ranking with
        the new seeds."""
        if not self.store.get_settings(self.project_id).enabled:
            return {"ignored": f"{event}: FreeSel is disabled for project {self.project_id}"}
        if event == "TASKS_CREATED":
            task_ids = [int(task["id"]) for task in data.get("tasks") or []]
            jobs = enqueue_patterns(self.services, self.project_id, task_ids)
            return {"enqueued_tasks": len(task_ids), "jobs": len(jobs)}
        if event == "TASKS_DELETED":  # rankings take the project's tasks from the store
            deleted = [int(task["id"]) for task in data.get("tasks") or [] if isinstance(task, dict) and "id" in task]
            self.store.remove_tasks(self.project_id, deleted)
        if event in RERANK_EVENTS:
            job = schedule_selection(self.services, self.project_id)
            return {"selection_job": job.id}
        return {"ignored": event}


def _as_prediction(stored: Mapping[str, Any]) -> dict[str, Any]:
    return {key: stored[key] for key in ("result", "score", "model_version", "cluster") if key in stored}
