"""What a worker's jobs share: the settings from the environment, the store on the job's Redis,
one Label Studio client per process."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from rq import get_current_job

from ..labelstudio.client import LabelStudioClient
from ..labelstudio.download import Downloader
from .settings import Settings
from .store import Store


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    store: Store
    client: LabelStudioClient
    downloader: Downloader


@functools.lru_cache(maxsize=1)
def _settings() -> Settings:
    return Settings.from_env()


def client_for(settings: Settings) -> LabelStudioClient:
    return LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key)


def downloader_for(client: LabelStudioClient, settings: Settings) -> Downloader:
    """Task file downloads with the policy and caps of ``settings``."""
    return Downloader(
        client,
        max_bytes=settings.download_max_bytes,
        timeout=settings.download_timeout_s,
        allow_private_addresses=settings.allow_private_downloads,
    )


@functools.lru_cache(maxsize=1)
def _client() -> LabelStudioClient:
    return client_for(_settings())


@functools.lru_cache(maxsize=1)
def _downloader() -> Downloader:
    return downloader_for(_client(), _settings())


def worker_context() -> WorkerContext:
    """The running job's settings, store, client and downloader (made once per worker but the store)."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("FreeSel job functions run inside an RQ worker")
    return WorkerContext(_settings(), Store(job.connection), _client(), _downloader())
