"""A small typed client for the Label Studio REST API (checked against Label Studio 1.23.2).

Only what the FreeSel backend needs: projects, file imports, tasks, predictions, model versions,
ML backend connections and webhooks; the files tasks reference are downloaded by ``download.py``.
It imports nothing from the rest of the project.

Authentication (detected from the key):

* **Personal Access Token** (a JWT *refresh* token, the default in Label Studio >= 1.18):
  exchanged at ``POST /api/token/refresh/`` for a short-lived access token that is sent as
  ``Authorization: Bearer <access>``; refreshed before it expires and once more on a 401.
* **Legacy token** (``Authorization: Token <key>``), which works only where an admin enabled
  legacy tokens for the organisation.

Secrets never appear in exception text, ``repr`` or log messages: every message built here is
passed through a redaction step that removes the API key, the current access token and
anything shaped like a JWT.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import mimetypes
import re
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence
from urllib.parse import urlsplit

import requests

__all__ = [
    "LabelStudioClient",
    "LabelStudioError",
    "LabelStudioNotFound",
    "LabelStudioAuthError",
    "LabelStudioUnavailable",
]

logger = logging.getLogger(__name__)

JSONDict = dict[str, Any]

DEFAULT_TIMEOUT = 30.0
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_BODY_EXCERPT_CHARS = 300
# Refresh the access token this many seconds before its `exp`.
_ACCESS_TOKEN_LEEWAY_S = 30.0


# --------------------------------------------------------------------------- errors


class LabelStudioError(Exception):
    """Any failure talking to Label Studio.

    Attributes: ``method``, ``path`` (URL path, no host, no query), ``status_code`` (None when
    no HTTP response came back), ``body_excerpt`` (short, redacted) and ``retryable`` (True
    for connection errors, timeouts, 429 and 5xx: callers may retry with backoff).
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        method: Optional[str] = None,
        path: Optional[str] = None,
        status_code: Optional[int] = None,
        body_excerpt: Optional[str] = None,
        retryable: Optional[bool] = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status_code = status_code
        self.body_excerpt = body_excerpt
        if retryable is not None:
            self.retryable = retryable


class LabelStudioNotFound(LabelStudioError):
    """404: the project/task/webhook (or the route) does not exist."""


class LabelStudioAuthError(LabelStudioError):
    """401/403: the API key is wrong, expired, revoked, or lacks permission."""


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio is unreachable, timed out, or answered 429/5xx: worth retrying later.
    ``timed_out``: no answer within the client's timeout (Label Studio may still finish the request)."""

    retryable = True
    timed_out = False


# --------------------------------------------------------------------------- helpers


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _jwt_payload(token: str) -> Optional[JSONDict]:
    """The decoded payload of a JWT, or None if ``token`` is not shaped like one."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        header = json.loads(_b64url_decode(parts[0]))
        payload = json.loads(_b64url_decode(parts[1]))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(header, dict) or "alg" not in header or not isinstance(payload, dict):
        return None
    return payload


def is_jwt(token: str) -> bool:
    """True for a JWT (three dot-separated base64url parts with a JSON header)."""
    return _jwt_payload(token) is not None


# --------------------------------------------------------------------------- client


class LabelStudioClient:
    """Typed access to the parts of the Label Studio API that FreeSel uses.

    ``url`` is the Label Studio base URL (``http://localhost:8080``); ``api_key`` a Personal
    Access Token or a legacy token. ``timeout`` applies to each API request (connect and read).
    Files that tasks reference are downloaded by :class:`.download.Downloader`.
    Safe to share between threads.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        session: Optional[requests.Session] = None,
    ) -> None:
        if not url:
            raise ValueError("Label Studio URL is empty (set LABEL_STUDIO_URL)")
        if not api_key:
            raise ValueError("Label Studio API key is empty (set LABEL_STUDIO_API_KEY)")
        url = url.strip().rstrip("/")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise ValueError(f"Label Studio URL must be http(s)://host[:port], got {url!r}")
        self.url = url
        self.timeout = float(timeout)
        self.__api_key = api_key.strip()
        self._uses_jwt = is_jwt(self.__api_key)
        self._access_token: Optional[str] = None
        self._access_expires_at: float = 0.0
        self._lock = threading.Lock()
        self.requests_sent = 0  # API requests made (downloads not counted): what a job cost Label Studio
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        kind = "personal-access-token" if self._uses_jwt else "legacy-token"
        return f"LabelStudioClient(url={self.url!r}, auth={kind})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "LabelStudioClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def auth_scheme(self) -> str:
        """``"Bearer"`` for a Personal Access Token, ``"Token"`` for a legacy token."""
        return "Bearer" if self._uses_jwt else "Token"

    # ------------------------------------------------------------------ redaction

    def _redact(self, text: str) -> str:
        secrets = [self.__api_key, self._access_token]
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
        return _JWT_RE.sub("***", text)

    # ------------------------------------------------------------------ auth

    def _refresh_access_token_locked(self) -> None:
        path = "/api/token/refresh/"
        try:
            resp = self._session.post(
                self.url + path,
                json={"refresh": self.__api_key},
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise self.transport_error("POST", path, exc) from None
        if resp.status_code == 404:
            # No JWT support (Label Studio < 1.18?): treat the key as a legacy token.
            logger.warning("Label Studio has no %s; using the API key as a legacy token", path)
            self._uses_jwt = False
            return
        if resp.status_code != 200:
            raise self.http_error(
                "POST",
                path,
                resp,
                hint="the Personal Access Token was rejected (expired, revoked or from another server?)",
            )
        try:
            access = str(resp.json()["access"])
        except (ValueError, KeyError, TypeError):
            raise LabelStudioError(
                f"POST {path}: HTTP 200 without an access token", method="POST", path=path, status_code=200
            ) from None
        self._access_token = access
        payload = _jwt_payload(access) or {}
        exp = payload.get("exp")
        # exp is wall-clock epoch seconds; store as monotonic deadline.
        lifetime = float(exp) - time.time() if isinstance(exp, (int, float)) else 300.0
        self._access_expires_at = time.monotonic() + lifetime - _ACCESS_TOKEN_LEEWAY_S

    def _auth_header(self) -> tuple[dict[str, str], Optional[str]]:
        """The Authorization header, and the access token it carries (for invalidation)."""
        if not self._uses_jwt:
            return {"Authorization": f"Token {self.__api_key}"}, None
        with self._lock:
            if self._uses_jwt and (self._access_token is None or time.monotonic() >= self._access_expires_at):
                self._refresh_access_token_locked()
            if not self._uses_jwt:
                return {"Authorization": f"Token {self.__api_key}"}, None
            token = self._access_token
        assert token is not None
        return {"Authorization": f"Bearer {token}"}, token

    def _invalidate_access_token(self, used: Optional[str]) -> bool:
        """Drop the cached access token after a 401; True if a retry may help."""
        if used is None:
            return False
        with self._lock:
            if self._access_token == used:
                self._access_token = None
        return True

    # ------------------------------------------------------------------ errors

    def _excerpt(self, resp: requests.Response) -> str:
        try:
            text = resp.text
        except Exception:  # pragma: no cover - undecodable body
            text = ""
        text = " ".join(text.split())
        if len(text) > _BODY_EXCERPT_CHARS:
            text = text[:_BODY_EXCERPT_CHARS] + "..."
        return self._redact(text)

    def http_error(self, method: str, path: str, resp: requests.Response, hint: str = "") -> LabelStudioError:
        """The error for an unexpected answer, by status (404, 401/403, 429/5xx, other); secrets redacted."""
        status = resp.status_code
        excerpt = self._excerpt(resp)
        cls: type[LabelStudioError]
        if status == 404:
            cls = LabelStudioNotFound
        elif status in (401, 403):
            cls = LabelStudioAuthError
        elif status == 429 or status >= 500:
            cls = LabelStudioUnavailable
        else:
            cls = LabelStudioError
        message = f"{method} {path}: HTTP {status}"
        if hint:
            message += f" ({hint})"
        if excerpt:
            message += f": {excerpt}"
        return cls(self._redact(message), method=method, path=path, status_code=status, body_excerpt=excerpt)

    def transport_error(self, method: str, path: str, exc: Exception, *, server: str = "") -> LabelStudioUnavailable:
        """The error for no answer (refused, timed out) from ``server`` (default: Label Studio); secrets redacted."""
        kind = "timed out" if isinstance(exc, requests.Timeout) else "unreachable"
        detail = self._redact(f"{type(exc).__name__}: {exc}")
        if len(detail) > _BODY_EXCERPT_CHARS:
            detail = detail[:_BODY_EXCERPT_CHARS] + "..."
        server = server or f"Label Studio at {self.url}"
        error = LabelStudioUnavailable(f"{method} {path}: {server} {kind} ({detail})", method=method, path=path)
        error.timed_out = isinstance(exc, requests.Timeout)
        return error

    # ------------------------------------------------------------------ core request

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Optional[Mapping[str, Any]] = None,
        json_body: Any = None,
        expected: Iterable[int] = (200, 201, 204),
        timeout: Optional[float] = None,
    ) -> requests.Response:
        """One authenticated API call (path relative to the base URL); retries once on a 401.
        ``timeout`` overrides the client's for this request."""
        expected = tuple(expected)
        for attempt in (1, 2):
            headers, used = self._auth_header()
            self.requests_sent += 1
            try:
                resp = self._session.request(
                    method,
                    self.url + path,
                    params=params,
                    json=json_body,
                    headers=headers,
                    timeout=self.timeout if timeout is None else timeout,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                raise self.transport_error(method, path, exc) from None
            if resp.status_code == 401 and attempt == 1 and self._invalidate_access_token(used):
                logger.debug("%s %s: 401, refreshing the access token", method, path)
                continue
            break
        if resp.status_code in expected:
            return resp
        hint = ""
        if resp.status_code == 401 and not self._uses_jwt and "legacy" in resp.text.lower():
            hint = "legacy tokens are disabled for this organisation: use a Personal Access Token"
        elif 300 <= resp.status_code < 400:
            hint = f"redirected to {resp.headers.get('Location', '?')}: check LABEL_STUDIO_URL"
        raise self.http_error(method, path, resp, hint=hint)

    def get_file(self, url: str, *, timeout: float) -> requests.Response:
        """A streamed GET of ``url`` on Label Studio's host with the API's authorization, sent once more
        with a fresh access token after a 401. Redirects are not followed and any status is returned:
        the caller reads and closes the response. Not counted in ``requests_sent`` (not an API call)."""
        shown = urlsplit(url).path or "/"
        for attempt in (1, 2):
            headers, used = self._auth_header()
            try:
                resp = self._session.get(url, headers=headers, timeout=timeout, allow_redirects=False, stream=True)
            except requests.RequestException as exc:
                raise self.transport_error("GET", shown, exc) from None
            if resp.status_code != 401 or attempt == 2 or not self._invalidate_access_token(used):
                break
            resp.close()
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._request(method, path, **kwargs)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise LabelStudioError(
                f"{method} {path}: HTTP {resp.status_code} with a non-JSON body: {self._excerpt(resp)}",
                method=method,
                path=path,
                status_code=resp.status_code,
            ) from None

    # ------------------------------------------------------------------ projects

    def get_project(self, project_id: int) -> JSONDict:
        return self._json("GET", f"/api/projects/{int(project_id)}/")

    def update_project(self, project_id: int, **fields: Any) -> JSONDict:
        """PATCH project fields, e.g. ``sampling="Uncertainty sampling", model_version="v2"``."""
        return self._json("PATCH", f"/api/projects/{int(project_id)}/", json_body=fields)

    def find_project(self, title: str) -> Optional[JSONDict]:
        """The first project titled ``title`` (among the first 1000), or None."""
        body = self._json("GET", "/api/projects/", params={"page_size": 1000})
        projects = body.get("results", []) if isinstance(body, dict) else body
        return next((p for p in projects if p.get("title") == title), None)

    def create_project(self, title: str, label_config: str) -> JSONDict:
        return self._json("POST", "/api/projects/", json_body={"title": title, "label_config": label_config})

    def import_files(self, project_id: int, files: Mapping[str, Path]) -> None:
        """Upload these files (``{upload name: path}``) in one import request: one task per file."""
        path = f"/api/projects/{int(project_id)}/import"
        with ExitStack() as stack:
            parts = [
                (name, (name, stack.enter_context(open(file, "rb")), mimetypes.guess_type(name)[0] or "image/jpeg"))
                for name, file in files.items()
            ]
            headers, _ = self._auth_header()
            try:
                response = self._session.post(
                    self.url + path, files=parts, headers=headers, timeout=max(self.timeout, 300)
                )
            except requests.RequestException as error:
                raise self.transport_error("POST", path, error) from None
        if response.status_code != 201:
            raise self.http_error("POST", path, response)

    def get_label_config(self, project_id: int) -> str:
        return str(self.get_project(project_id).get("label_config") or "")

    # ------------------------------------------------------------------ tasks

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
                body = self._json("GET", path, params=params)
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
        return self._json("GET", f"/api/tasks/{int(task_id)}/")

    def update_task_data(self, task_id: int, data: Mapping[str, Any]) -> JSONDict:
        """Replace a task's ``data`` (send the whole dict: Label Studio does not merge it)."""
        return self._json("PATCH", f"/api/tasks/{int(task_id)}/", json_body={"data": dict(data)})

    def get_tasks(self, project_id: int, task_ids: Sequence[int]) -> list[JSONDict]:
        """The tasks with these ids (those that exist in the project), in id order."""
        return list(self.iter_tasks(project_id, task_ids=task_ids))

    # ------------------------------------------------------------------ predictions

    def import_predictions(
        self, project_id: int, predictions: Sequence[Mapping[str, Any]], *, chunk_size: int = 500,
        timeout: Optional[float] = None,
    ) -> int:
        """Bulk-create predictions (``{"task", "result", "score", "model_version", ...}``).

        Sent in chunks; returns the number created. Importing again adds rows (it never replaces
        one): change a prediction with :meth:`update_prediction`.
        """
        created = 0
        path = f"/api/projects/{int(project_id)}/import/predictions"
        for start in range(0, len(predictions), max(1, chunk_size)):
            chunk = [dict(p) for p in predictions[start : start + chunk_size]]
            body = self._json("POST", path, json_body=chunk, timeout=timeout)
            if isinstance(body, dict) and isinstance(body.get("created"), int):
                created += body["created"]
            else:
                created += len(chunk)
        return created

    def list_predictions(self, project_id: int) -> list[JSONDict]:
        """Every prediction of the project (all model versions; one request, not paginated)."""
        body = self._json("GET", "/api/predictions/", params={"project": int(project_id)})
        return list(body if isinstance(body, list) else (body or {}).get("results", []))

    def update_prediction(self, prediction_id: int, **fields: Any) -> JSONDict:
        """Change one prediction in place, e.g. ``score=0.25``."""
        return self._json("PATCH", f"/api/predictions/{int(prediction_id)}/", json_body=fields)

    def delete_prediction(self, prediction_id: int) -> None:
        """Delete one prediction; one that is already gone is not an error."""
        try:
            self._request("DELETE", f"/api/predictions/{int(prediction_id)}/")
        except LabelStudioNotFound:
            pass

    # ------------------------------------------------------------------ ML backends

    def list_ml_backends(self, project_id: int) -> list[JSONDict]:
        return list(self._json("GET", "/api/ml", params={"project": int(project_id)}) or [])

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
        return self._json("POST", "/api/ml", json_body=body)

    # ------------------------------------------------------------------ webhooks

    def list_webhooks(self, project_id: Optional[int] = None) -> list[JSONDict]:
        params = {"project": int(project_id)} if project_id is not None else None
        body = self._json("GET", "/api/webhooks/", params=params)
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
            return self._json("PATCH", f"/api/webhooks/{int(hook['id'])}/", json_body=changed)
        return self._json("POST", "/api/webhooks/", json_body=wanted)
