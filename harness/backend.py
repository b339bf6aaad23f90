"""Start the real backend (gunicorn via ``python -m freesel_backend serve``) and real RQ worker
processes for tests, configured with the tiny random-init ViT."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import requests

from freesel_backend.server.redis_server import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def backend_env(
    redis_url: str, label_studio_url: str, api_key: str, model_dir: Path, public_url: str = ""
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LABEL_STUDIO_", "FREESEL_"))}
    env.update(
        {
            "REDIS_URL": redis_url,
            "LABEL_STUDIO_URL": label_studio_url,
            "LABEL_STUDIO_API_KEY": api_key,
            "MODEL_DIR": str(model_dir),
            "FREESEL_MODEL": "vit_tiny_patch16_224",
            "FREESEL_TEST_RANDOM_INIT": "true",
            "FREESEL_TEST_IMAGE_SIZE": "64",
            "FREESEL_DEVICE": "cpu",
            "FREESEL_CHUNK_SIZE": "8",
            "FREESEL_JOB_RETRIES": "0",
            "FREESEL_RERANK_INTERVAL": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if public_url:
        env["FREESEL_PUBLIC_URL"] = public_url
    return env


def run_worker_burst(env: dict[str, str], timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """A real worker process that handles every queued job, then exits."""
    return subprocess.run(
        [sys.executable, "-m", "freesel_backend", "worker", "--burst"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=True,
    )


class BackendProcesses:
    """``serve`` (gunicorn) plus one long-running worker process."""

    def __init__(self, env: dict[str, str], log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "FREESEL_PUBLIC_URL": self.url}
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def _start(self, name: str, *args: str) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "freesel_backend", *args],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    def start(self, workers: int = 1) -> "BackendProcesses":
        self._start("serve", "serve", "--host", "127.0.0.1", "--port", str(self.port), "--web-workers", "1")
        for number in range(workers):
            self._start(f"worker{number or ''}", "worker")
        try:
            wait_for(lambda: _healthy(self.url, basic_auth_of(self.env)), 60, "backend /health")
        except BaseException:
            self.stop()  # a backend that did not come up is not left running
            raise
        return self

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    def admin(self, method: str, project_id: int, action: str, **kwargs: Any) -> requests.Response:
        """A call of a project route with the credential the CLI would send: the backend's basic auth
        where it has one, else its Label Studio token."""
        return requests.request(method, f"{self.url}/freesel/projects/{project_id}/{action}",
                                timeout=kwargs.pop("timeout", 60), **credentials(self.env), **kwargs)

    def status(self, project_id: int) -> dict[str, Any]:
        response = self.admin("GET", project_id, "status")
        response.raise_for_status()
        return response.json()

    def post(self, project_id: int, action: str) -> dict[str, Any]:
        response = self.admin("POST", project_id, action)
        response.raise_for_status()
        return response.json()


def credentials(env: dict[str, str]) -> dict[str, Any]:
    """``requests`` keyword arguments for the project routes of a backend started with ``env``."""
    from freesel_backend.cli.backend_client import BackendClient

    return BackendClient("", env.get("LABEL_STUDIO_API_KEY", ""), basic_auth_of(env)).credentials()


def basic_auth_of(env: dict[str, str]) -> tuple[str, str] | None:
    return (env["BASIC_AUTH_USER"], env.get("BASIC_AUTH_PASS", "")) if env.get("BASIC_AUTH_USER") else None


def _healthy(url: str, auth: tuple[str, str] | None = None) -> bool:
    try:
        return requests.get(f"{url}/health", auth=auth, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def idle(status: dict[str, Any]) -> bool:
    """No job of the project waiting, deferred or running, in any queue."""
    return all(count == 0 for queue in status["jobs"].values() for count in queue.values())
