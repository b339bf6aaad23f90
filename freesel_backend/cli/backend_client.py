"""The running backend's project routes (``/freesel/projects/<id>/...``), as the commands call them.

Each request carries the Label Studio token the command already has (``LABEL_STUDIO_API_KEY``,
else the local Label Studio's), which the backend checks with Label Studio, or the backend's
basic auth where ``BASIC_AUTH_USER`` is set.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from ..labelstudio.connection import is_jwt
from ..labelstudio.local import load_credentials
from ..server.settings import Settings, SettingsError


@dataclass(frozen=True)
class BackendClient:
    url: str
    api_key: str = ""
    basic_auth: tuple[str, str] | None = None

    @classmethod
    def from_env(cls, url: str | None = None) -> "BackendClient":
        """The backend at ``url`` (default ``FREESEL_PUBLIC_URL``) with the credentials of the environment."""
        settings = Settings.from_env()
        api_key = settings.label_studio_api_key or _local_token()
        return cls((url or settings.public_url).rstrip("/"), api_key, settings.basic_auth)

    def credentials(self) -> dict[str, Any]:
        """``requests`` keyword arguments that authenticate a call."""
        if self.basic_auth:
            return {"auth": self.basic_auth}
        if self.api_key:
            scheme = "Bearer" if is_jwt(self.api_key) else "Token"
            return {"headers": {"Authorization": f"{scheme} {self.api_key}"}}
        return {}

    def request(self, method: str, project_id: int, action: str) -> requests.Response:
        """One call of ``/freesel/projects/<project_id>/<action>``; a refusal raises :class:`SettingsError`
        with what to do, any other answer is returned."""
        url = f"{self.url}/freesel/projects/{project_id}/{action}"
        try:
            response = requests.request(method, url, timeout=60, **self.credentials())
        except requests.ConnectionError:
            raise SettingsError(
                f"no FreeSel backend answers at {self.url}: start it (scripts/run.sh) or pass --url"
            ) from None
        if response.status_code in (401, 403):
            raise SettingsError(f"{self.url} refused {action} of project {project_id}: {_message(response)}. "
                                "Set LABEL_STUDIO_API_KEY to a token of a Label Studio user who may see the "
                                "project (or BASIC_AUTH_USER/BASIC_AUTH_PASS as the backend has them)")
        return response

    def call(self, method: str, project_id: int, action: str) -> Any:
        """The JSON answer of a project route; an error status raises :class:`SettingsError`."""
        response = self.request(method, project_id, action)
        if response.status_code >= 400:
            raise SettingsError(f"{action} failed: HTTP {response.status_code} {_message(response)}")
        return response.json()

    def fetch_report(self, project_id: int, wait_s: float = 600.0) -> str:
        """The project's selection report HTML, waiting (polling) while a worker builds it."""
        deadline = time.monotonic() + wait_s
        while True:
            response = self.request("GET", project_id, "report")
            if response.status_code == 200:
                return response.text
            if response.status_code != 202:
                raise SettingsError(f"report failed: HTTP {response.status_code} {_message(response)}")
            if time.monotonic() >= deadline:
                raise SettingsError(
                    f"the report of project {project_id} was not ready within {wait_s:.0f} s: {_message(response)}"
                )
            time.sleep(min(float(response.headers.get("Retry-After", 5)), max(0.5, deadline - time.monotonic())))

    def report_link(self, project_id: int) -> str:
        """A link that opens the project's report in a browser for a day, without a credential."""
        return str(self.call("POST", project_id, "report-link")["url"])


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    return str(body.get("error") or body.get("message") or body) if isinstance(body, dict) else str(body)[:300]


def _local_token() -> str:
    """The token of the local Label Studio that ``scripts/run.sh`` set up, if any."""
    credentials = load_credentials(Path(os.environ.get("MODEL_DIR") or "model_dir"))
    return credentials.token if credentials is not None else ""
