"""Who may read or change a project through the backend's admin and report routes.

Label Studio decides: a request carries a Label Studio token (a Personal Access Token or a legacy
token, as ``Authorization: Bearer <token>`` or ``Authorization: Token <token>``) and passes when
Label Studio shows that token's user the project. The answer is cached for a short while
(``FREESEL_AUTH_CACHE_S``) so that a page of requests costs Label Studio one or two. The
backend's basic auth, where configured, passes too (the operator's credential). A report link
signed by the backend (:func:`sign_report_link`) opens that one project's report until it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlencode

from ..labelstudio.client import LabelStudioAuthError, LabelStudioClient, LabelStudioNotFound, LabelStudioUnavailable

TOKEN_SCHEMES = ("bearer", "token")
REPORT_LINK_TTL_S = 24 * 3600
# Verdicts kept at most; expired ones are dropped first when the cache is full.
CACHE_ENTRIES = 4096


class AccessDenied(Exception):
    """The request may not go on: ``status`` 401 (no credential Label Studio accepts), 403 (the
    credential's user may not see the project) or 503 (Label Studio could not be asked)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    status: int = 200
    reason: str = ""


def token_of(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer|Token <token>`` header, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() in TOKEN_SCHEMES and token else None


class ProjectAccess:
    """Asks Label Studio whether a token's user may see a project, and remembers the answer for
    ``cache_s`` seconds (allowed or refused alike; an unreachable Label Studio is not remembered)."""

    def __init__(self, label_studio_url: str, cache_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.label_studio_url = label_studio_url
        self.cache_s = cache_s
        self.clock = clock
        self._verdicts: dict[tuple[str, int], tuple[Verdict, float]] = {}
        self._lock = threading.Lock()

    def check(self, token: str, project_id: int) -> None:
        """Returns when the token's user may see ``project_id`` in Label Studio; raises :class:`AccessDenied`."""
        key = (hashlib.sha256(token.encode()).hexdigest(), project_id)
        verdict = self._cached(key)
        if verdict is None:
            verdict = self._ask_label_studio(token, project_id)
            self._remember(key, verdict)
        if not verdict.allowed:
            raise AccessDenied(verdict.status, verdict.reason)

    def _cached(self, key: tuple[str, int]) -> Verdict | None:
        with self._lock:
            verdict, expires_at = self._verdicts.get(key, (None, 0.0))
        return verdict if verdict is not None and self.clock() < expires_at else None

    def _remember(self, key: tuple[str, int], verdict: Verdict) -> None:
        now = self.clock()
        with self._lock:
            if len(self._verdicts) >= CACHE_ENTRIES:
                self._verdicts = {k: v for k, v in self._verdicts.items() if v[1] > now}
            if len(self._verdicts) >= CACHE_ENTRIES:
                self._verdicts.clear()
            self._verdicts[key] = (verdict, now + self.cache_s)

    def _ask_label_studio(self, token: str, project_id: int) -> Verdict:
        if not self.label_studio_url:
            raise AccessDenied(503, "LABEL_STUDIO_URL is not set: the backend cannot check a Label Studio token")
        try:
            with LabelStudioClient(self.label_studio_url, token, timeout=10) as client:
                client.get_project(project_id)
        except LabelStudioUnavailable as error:
            raise AccessDenied(503, f"could not ask Label Studio who may see project {project_id}: {error}") from None
        except LabelStudioNotFound:
            return Verdict(False, 403, f"Label Studio does not let this token's user see project {project_id}")
        except LabelStudioAuthError as error:
            if error.status_code == 403:
                return Verdict(False, 403, f"Label Studio does not let this token's user see project {project_id}")
            return Verdict(False, 401, "Label Studio does not accept this token (wrong, expired or revoked)")
        return Verdict(True)


def report_link_signature(secret: str, project_id: int, expires_at: int) -> str:
    message = f"report:{project_id}:{expires_at}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_report_link(secret: str, base_url: str, project_id: int, now: float | None = None) -> tuple[str, int]:
    """A link to ``project_id``'s report that opens without a credential until it expires, and
    its expiry (epoch seconds)."""
    expires_at = int((time.time() if now is None else now) + REPORT_LINK_TTL_S)
    query = urlencode({"expires": expires_at, "signature": report_link_signature(secret, project_id, expires_at)})
    return f"{base_url.rstrip('/')}/freesel/projects/{project_id}/report?{query}", expires_at


def valid_report_link(secret: str, project_id: int, expires: str | None, signature: str | None,
                      now: float | None = None) -> bool:
    """True when ``expires``/``signature`` are those of an unexpired link to ``project_id``'s report."""
    if not (expires and signature and expires.isdigit()):
        return False
    if int(expires) <= (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature, report_link_signature(secret, project_id, int(expires)))
