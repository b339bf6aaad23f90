"""Projects in Label Studio's API: reading and changing them, file imports, the ML backends
connected to them and their webhooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .connection import Connection, JSONDict


class ProjectsApi(Connection):
    """Projects, their file imports, ML backend connections and webhooks."""

    def get_project(self, project_id: int) -> JSONDict:
        return self.call("GET", f"/api/projects/{int(project_id)}/")

    def update_project(self, project_id: int, **fields: Any) -> JSONDict:
        """PATCH project fields, e.g. ``sampling="Uncertainty sampling", model_version="v2"``."""
        return self.call("PATCH", f"/api/projects/{int(project_id)}/", json_body=fields)

    def find_project(self, title: str) -> Optional[JSONDict]:
        """The first project titled ``title`` (among the first 1000), or None."""
        body = self.call("GET", "/api/projects/", params={"page_size": 1000})
        projects = body.get("results", []) if isinstance(body, dict) else body
        return next((p for p in projects if p.get("title") == title), None)

    def create_project(self, title: str, label_config: str) -> JSONDict:
        return self.call("POST", "/api/projects/", json_body={"title": title, "label_config": label_config})

    def import_files(self, project_id: int, files: Mapping[str, Path]) -> None:
        """Upload these files (``{upload name: path}``) in one import request: one task per file."""
        self.post_files(f"/api/projects/{int(project_id)}/import", files)

    def get_label_config(self, project_id: int) -> str:
        return str(self.get_project(project_id).get("label_config") or "")


    def list_ml_backends(self, project_id: int) -> list[JSONDict]:
        return list(self.call("GET", "/api/ml", params={"project": int(project_id)}) or [])

    def connect_ml_backend(
        self, project_id: int, url: str, title: str, *,
        basic_auth: Optional[tuple[str, str]] = None, extra_params: Optional[Mapping[str, Any]] = None,
    ) -> JSONDict:
        """Connect the ML backend at ``url`` to the project (``extra_params``: the connect form's JSON)."""
        body: JSONDict = {"url": url, "project": int(project_id), "title": title}
        if basic_auth:
            body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
        if extra_params:
            body["extra_params"] = json.dumps(dict(extra_params))
        return self.call("POST", "/api/ml", json_body=body)


    def list_webhooks(self, project_id: Optional[int] = None) -> list[JSONDict]:
        params = {"project": int(project_id)} if project_id is not None else None
        body = self.call("GET", "/api/webhooks/", params=params)
        hooks = body if isinstance(body, list) else (body or {}).get("results", [])
        if project_id is not None:  # be strict even if a server ignores the filter
            hooks = [h for h in hooks if h.get("project") == int(project_id)]
        return hooks

    def register_webhook(
        self,
        project_id: int,
        url: str,
        *,
        actions: Sequence[str] = ("TASKS_CREATED",),
        send_payload: bool = True,
        headers: Optional[Mapping[str, str]] = None,
    ) -> JSONDict:
        """Create the project's webhook for ``url`` unless one exists (then update it if needed)."""
        wanted: JSONDict = {
            "project": int(project_id),
            "url": url,
            "send_payload": send_payload,
            "send_for_all_actions": False,
            "actions": list(actions),
            "is_active": True,
        }
        if headers is not None:
            wanted["headers"] = dict(headers)
        for hook in self.list_webhooks(project_id):
            if hook.get("url") != url:
                continue
            changed = {
                key: value
                for key, value in wanted.items()
                if key != "project"
                and (sorted(hook.get(key) or []) != sorted(value) if key == "actions" else hook.get(key) != value)
            }
            if not changed:
                return hook
            return self.call("PATCH", f"/api/webhooks/{int(hook['id'])}/", json_body=changed)
        return self.call("POST", "/api/webhooks/", json_body=wanted)
