"""The services a process shares: its settings, its Redis, the store on it, one Label Studio
client and one downloader of task files.

The web service builds one :class:`Services` when it starts; a worker builds one the first time
one of its jobs asks (:func:`job_services`). Both pass it on explicitly. RQ jobs stay plain
functions with plain arguments (project id, task ids): never a secret, never a connection.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis
from rq import get_current_job

from ..labelstudio.client import LabelStudioClient
from ..labelstudio.download import Downloader
from .settings import Settings
from .store import Store


@dataclass(frozen=True)
class Services:
    settings: Settings
    connection: redis.Redis

    @property
    def store(self) -> Store:
        return Store(self.connection)

    @functools.cached_property
    def client(self) -> LabelStudioClient:
        """Made on first use: a process that only enqueues needs no Label Studio."""
        return client_for(self.settings)

    @functools.cached_property
    def downloader(self) -> Downloader:
        return downloader_for(self.client, self.settings)


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


def job_services() -> Services:
    """The running job's services: settings from the worker's environment, the job's Redis."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("FreeSel job functions run inside an RQ worker")
    return _worker_services(job.connection)


@functools.lru_cache(maxsize=1)
def _worker_services(connection: redis.Redis) -> Services:
    """One per worker process (its jobs share the worker's connection)."""
    return Services(Settings.from_env(), connection)
