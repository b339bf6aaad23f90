"""What a worker's jobs share: the settings from the environment, the store on the job's Redis,
one Label Studio client per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from rq import get_current_job

from ..labelstudio.client import LabelStudioClient
from .settings import Settings
from .store import Store


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    store: Store
    client: LabelStudioClient


@functools.lru_cache(maxsize=1)
def _settings() -> Settings:
    return Settings.from_env()


def client_for(settings: Settings) -> LabelStudioClient:
    """The Label Studio client with the download policy and caps of ``settings``."""
    return LabelStudioClient(
        settings.label_studio_url,
        settings.label_studio_api_key,
        max_download_bytes=settings.download_max_bytes,
        download_timeout=settings.download_timeout_s,
        allow_private_addresses=settings.allow_private_downloads,
    )


@functools.lru_cache(maxsize=1)
def _client() -> LabelStudioClient:
    return client_for(_settings())


def worker_context() -> WorkerContext:
    """The running job's settings, store and client (the settings and client are made once per worker)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("FreeSel job functions run inside an RQ worker")
    return WorkerContext(_settings(), Store(job.connection), _client())
