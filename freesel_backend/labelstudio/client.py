"""A small typed client for the Label Studio REST API (checked against Label Studio 1.23.2).

Only what the FreeSel backend needs: projects, file imports, tasks, predictions, model versions,
ML backend connections and webhooks; the files tasks reference are downloaded by ``download.py``.
It imports nothing from the rest of the project. One module per concern: ``connection``
(authentication, requests, errors), ``projects`` (projects, ML backends, webhooks), ``tasks``,
``predictions``; :class:`LabelStudioClient` is all of them.

Authentication and redaction of secrets: see ``connection``.
"""

from __future__ import annotations

from .connection import LabelStudioAuthError, LabelStudioError, LabelStudioNotFound, LabelStudioUnavailable
from .predictions import PredictionsApi
from .projects import ProjectsApi
from .tasks import TasksApi

__all__ = [
    "LabelStudioClient",
    "LabelStudioError",
    "LabelStudioNotFound",
    "LabelStudioAuthError",
    "LabelStudioUnavailable",
]


class LabelStudioClient(ProjectsApi, TasksApi, PredictionsApi):
    """Typed access to the parts of the Label Studio API that FreeSel uses.

    ``url`` is the Label Studio base URL (``http://localhost:8080``); ``api_key`` a Personal
    Access Token or a legacy token. ``timeout`` applies to each API request (connect and read).
    Files that tasks reference are downloaded by :class:`.download.Downloader`.
    Safe to share between threads.
    """
