"""The connection to Label Studio's REST API that every part of the client shares: the base URL,
authentication, one request with its errors, and redaction of secrets.

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
from typing import Any, Iterable, Mapping, Optional
from urllib.parse import urlsplit

import requests

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


class Connection:
    """An authenticated connection to Label Studio's API: tokens, redaction, requests and errors.

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
        return f"{type(self).__name__}(url={self.url!r}, auth={kind})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "Connection":
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

    def request(
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

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call (as :meth:`request`), its JSON answer (None for an empty one)."""
        resp = self.request(method, path, **kwargs)
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

    def post_files(self, path: str, files: Mapping[str, Path]) -> None:
        """One multipart POST of these files (``{upload name: path}``), expecting 201."""
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
