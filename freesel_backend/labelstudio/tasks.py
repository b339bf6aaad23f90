"""Tasks in Label Studio's API: listings (the Data Manager's, paginated and filtered), one task,
and a task's data."""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping, Optional, Sequence

from .connection import Connection, JSONDict, LabelStudioNotFound


class TasksApi(Connection):
    """Tasks: listed, read and their data replaced."""

    def iter_tasks(
        self,
        project_id: int,
        *,
        page_size: int = 1000,
        task_ids: Optional[Sequence[int]] = None,
        resolve_uri: bool = False,
        query: Optional[Mapping[str, Any]] = None,
    ) -> Iterator[JSONDict]:
        """All tasks of a project (Data Manager API, paginated, in id order).

        Each task has ``id``, ``data``, ``meta``, ``is_labeled``, ``total_annotations``,
        ``cancelled_annotations`` and ``total_predictions``. ``task_ids`` restricts the listing, as
        does ``query`` (Data Manager filters, e.g. ``{"filters": {"conjunction": "and", "items": [...]}}``).
        ``resolve_uri=False`` keeps storage URIs (``s3://...``) as stored; download them with
        :meth:`download` (which resolves them through Label Studio).

        Note: if the project has an ML backend with automatic predictions
        (``evaluate_predictions_automatically``), Label Studio asks it for predictions of listed
        tasks that have none.
        """
        path = "/api/tasks/"
        params: dict[str, Any] = {
            "project": int(project_id),
            "page_size": int(page_size),
            "resolve_uri": "true" if resolve_uri else "false",
        }
        if task_ids is not None:
            if not task_ids:
                return
            query = {**(query or {}), "selectedItems": {"all": False, "included": [int(t) for t in task_ids]}}
        if query is not None:
            params["query"] = json.dumps(query)
        seen = 0
        page = 1
        while True:
            params["page"] = page
            try:
                body = self.call("GET", path, params=params)
            except LabelStudioNotFound as exc:
                # Past the last page Label Studio answers 404 "Invalid page."
                if page > 1 and "invalid page" in (exc.body_excerpt or "").lower():
                    return
                raise
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            if not tasks:
                return
            yield from tasks
            seen += len(tasks)
            total = body.get("total") if isinstance(body, dict) else None
            if isinstance(total, int):
                if seen >= total:
                    return
            elif len(tasks) < page_size:  # no total: a short page is the last one
                return
            page += 1

    def labelled_task_ids(self, project_id: int) -> set[int]:
        """Ids of the project's tasks with at least one (not cancelled) annotation: one filtered
        listing, whose cost follows the labelled tasks, not the project's size."""
        labelled = {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}
        query = {"filters": {"conjunction": "and", "items": [labelled]}}
        return {int(task["id"]) for task in self.iter_tasks(project_id, query=query)}

    def get_task(self, task_id: int) -> JSONDict:
        return self.call("GET", f"/api/tasks/{int(task_id)}/")

    def update_task_data(self, task_id: int, data: Mapping[str, Any]) -> JSONDict:
        """Replace a task's ``data`` (send the whole dict: Label Studio does not merge it)."""
        return self.call("PATCH", f"/api/tasks/{int(task_id)}/", json_body={"data": dict(data)})

    def get_tasks(self, project_id: int, task_ids: Sequence[int]) -> list[JSONDict]:
        """The tasks with these ids (those that exist in the project), in id order."""
        return list(self.iter_tasks(project_id, task_ids=task_ids))
