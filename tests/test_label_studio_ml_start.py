"""`label-studio-ml start ./freesel_backend` (the label-studio-ml 1.0.9 CLI Label Studio's ML-backend
users know) starts the same service as `python -m freesel_backend serve`: gunicorn, an embedded
Redis and a worker, with the options that CLI passes on."""

from __future__ import annotations

import pytest

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from freesel_backend.server.redis_server import free_port
from harness.backend import REPO_ROOT, wait_for
from tests.test_main_command import alive, command_of, descendants, stop_group

pytestmark = pytest.mark.slow

CLI = Path(sys.executable).parent / "label-studio-ml"


def test_label_studio_ml_start_serves_the_backend_with_embedded_redis_worker_and_basic_auth(tmp_path):
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LABEL_STUDIO_", "FREESEL_", "REDIS_URL"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the CLI runs `python`
    log_path = tmp_path / "start.log"
    process = subprocess.Popen(
        [str(CLI), "start", "./freesel_backend", "--host", "127.0.0.1", "--port", str(port),
         "--model-dir", str(tmp_path / "model_dir"), "--basic-auth-user", "admin", "--basic-auth-pass", "pw",
         "--with", "FREESEL_DEVICE=cpu", "--log-level", "INFO"],
        cwd=REPO_ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _status(url, ("admin", "pw")) == 200, 120, "/health of label-studio-ml start")
        assert requests.get(f"{url}/health", auth=("admin", "pw"), timeout=10).json()["status"] == "UP"
        assert _status(url, None) == 401
        tree = descendants(process.pid)
        commands = [command_of(pid) for pid in alive(tree)]
        assert any("redis-server" in c for c in commands) and any("freesel_backend worker" in c for c in commands)
        assert (tmp_path / "model_dir" / "redis").is_dir()
        log = log_path.read_text(errors="replace")
        assert f"Label Studio reaches it at http://localhost:{port})" in log
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal
        process.wait(timeout=90)
        wait_for(lambda: not alive(tree), 30, "every process of the backend to end")
    finally:
        stop_group(process)
    assert "Traceback" not in log_path.read_text(errors="replace")


def test_label_studio_ml_start_check_validates_the_settings_and_exits(tmp_path):
    done = subprocess.run(
        [sys.executable, "freesel_backend/_wsgi.py", "--check", "--with", "FREESEL_MODEL=offline"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "settings OK" in done.stdout and "model offline" in done.stdout
    bad = subprocess.run([sys.executable, "freesel_backend/_wsgi.py", "--check", "--with", "FREESEL_PRECISION=fp8"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert (
        bad.returncode == 2
        and "Traceback" not in bad.stderr
        and "FREESEL_PRECISION must be one of auto, fp32, bf16" in bad.stderr
    )


def _status(url: str, auth: tuple[str, str] | None) -> int:
    try:
        return requests.get(f"{url}/health", auth=auth, timeout=2).status_code
    except requests.RequestException:
        return 0
