"""Running the backend: gunicorn web service, RQ worker, embedded Redis, admin client."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import redis
import requests
from gunicorn.app.base import BaseApplication
from rq import Queue
from rq.worker import SimpleWorker

from .config import QUEUES, Settings, SettingsError
from .redis_server import RedisServer

log = logging.getLogger(__name__)


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from .wsgi import create_app

        return create_app()


def serve(host: str, port: int, web_workers: int) -> int:
    """Gunicorn on host:port. Without REDIS_URL: an embedded Redis under MODEL_DIR and a worker process."""
    settings = Settings.from_env()
    embedded: RedisServer | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        if settings.redis_url is None:
            embedded = RedisServer(settings.model_dir / "redis").start()
            os.environ["REDIS_URL"] = embedded.url
            log.info("embedded Redis at %s (data in %s); starting one worker", embedded.url, embedded.data_dir)
            worker = subprocess.Popen([sys.executable, "-m", "freesel_backend", "worker"], env=dict(os.environ))
        log.info("FreeSel backend on http://%s:%s (Label Studio reaches it at %s)", host, port, settings.public_url)
        _Gunicorn({"bind": f"{host}:{port}", "workers": web_workers, "threads": 4, "timeout": 120,
                   "worker_class": "gthread", "accesslog": "-"}).run()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        if embedded is not None:
            embedded.stop()
    return 0


def work(*, burst: bool = False) -> int:
    """An RQ worker on FreeSel's queues. SimpleWorker (no fork per job) keeps the model loaded
    between jobs; the scheduler runs the delayed retries."""
    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: the worker needs the backend's Redis")
    connection = redis.Redis.from_url(settings.redis_url)
    queues = [Queue(name, connection=connection) for name in QUEUES]
    SimpleWorker(queues, connection=connection).work(burst=burst, with_scheduler=True)
    return 0


def project_action(project_id: int, action: str, url: str | None = None) -> Any:
    """Call the running backend's admin route for ``action`` and return its JSON answer."""
    settings = Settings.from_env()
    base = (url or settings.public_url).rstrip("/")
    method = "GET" if action == "status" else "POST"
    response = requests.request(method, f"{base}/freesel/projects/{project_id}/{action}", auth=settings.basic_auth, timeout=60)
    if response.status_code >= 400:
        raise SettingsError(f"{action} failed: HTTP {response.status_code} {response.text[:300]}")
    return response.json()

