"""A Label Studio of this machine for the demo and ``quickstart``: installed in its own virtual
environment (.venv-ls, by scripts/ensure_label_studio.sh), data and admin credentials under
``MODEL_DIR/label-studio``, started so that it may call a backend on the same machine.

The first start creates an admin user (random password) and a Personal Access Token, written to
``MODEL_DIR/label-studio/freesel-admin.json`` (mode 600); later starts reuse both. The key that
signs the token is Label Studio's ``SECRET_KEY`` in ``MODEL_DIR/label-studio/.env``; this module
writes it there itself, since a key Label Studio generates may begin with ``$``, which Label Studio
reads back as a reference to another variable: it then signs with a new key at every start, and
the saved token stops working.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
LABEL_STUDIO_VERSION = "1.23.2"
DEFAULT_LABEL_STUDIO_PORT = 8080
ADMIN_EMAIL = "admin@freesel.local"
# Label Studio's feature flag for its faster prediction import: counters of the imported tasks
# only, not of every task of the project (off by default in 1.23.2; see docs/scale.md).
FAST_PREDICTION_IMPORT = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"


class LocalLabelStudioError(RuntimeError):
    """The local Label Studio could not be installed, started or set up; the message says why."""


@dataclass(frozen=True)
class Credentials:
    url: str
    email: str
    password: str
    token: str = ""


def wait_until_healthy(url: str, process: "subprocess.Popen[bytes]", timeout_s: float) -> str | None:
    """Wait until the Label Studio ``process`` answers ``url``/health; None when it does, else why not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"Label Studio exited with code {process.returncode} before answering {url}/health"
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return None
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return f"Label Studio did not answer {url}/health within {timeout_s:.0f} s"


def data_dir_of(model_dir: Path) -> Path:
    return model_dir / "label-studio"


def credentials_path(model_dir: Path) -> Path:
    return data_dir_of(model_dir) / "freesel-admin.json"


def load_credentials(model_dir: Path) -> Credentials | None:
    path = credentials_path(model_dir)
    if not path.is_file():
        return None
    return Credentials(**json.loads(path.read_text(encoding="utf-8")))


def _save_credentials(model_dir: Path, credentials: Credentials) -> None:
    path = credentials_path(model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(json.dumps(asdict(credentials), indent=2) + "\n", encoding="utf-8")


def _is_readable_secret(value: str) -> bool:
    # django-environ takes a value beginning with "$" for the name of another variable
    return bool(value) and not value.startswith("$")


def ensure_secret_key(data_dir: Path) -> str:
    """Label Studio's SECRET_KEY from ``data_dir/.env`` (the last one: the one Label Studio reads,
    which signed its tokens); written there first when missing or unreadable."""
    env_path = data_dir / ".env"
    lines = env_path.read_text(encoding="utf-8").splitlines() if env_path.is_file() else []
    keys = [line.partition("=")[2] for line in lines if line.startswith("SECRET_KEY=")]
    if keys and _is_readable_secret(keys[-1]):
        return keys[-1]
    secret = secrets.token_urlsafe(50)  # letters, digits, "-" and "_" only
    kept = [line for line in lines if not line.startswith("SECRET_KEY=")]
    data_dir.mkdir(parents=True, exist_ok=True)
    env_path.touch(mode=0o600, exist_ok=True)
    env_path.write_text("\n".join([*kept, f"SECRET_KEY={secret}"]) + "\n", encoding="utf-8")
    return secret


def install_marker(venv: Path, version: str) -> Path:
    """The file scripts/ensure_label_studio.sh writes once an install from the version's lock (LS_LOCK)
    has started; its name carries the lock's hash, so a changed lock means a new install."""
    lock = Path(os.environ.get("LS_LOCK") or REPO_ROOT / "locks" / f"label-studio-{version}.txt")
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock.is_file() else "none"
    return venv / f".label-studio-{version}-lock-{digest}.started"


def ensure_installed() -> Path:
    """The ``label-studio`` executable of .venv-ls (or LS_VENV), installing it on first use."""
    venv = Path(os.environ.get("LS_VENV") or REPO_ROOT / ".venv-ls")
    version = os.environ.get("LS_VERSION") or LABEL_STUDIO_VERSION
    if not install_marker(venv, version).exists():
        print(f"Installing Label Studio {version} into {venv} (first run only: about 1 GB, a minute or two) ...",
              file=sys.stderr, flush=True)
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "ensure_label_studio.sh")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise LocalLabelStudioError(f"installing Label Studio failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class LocalLabelStudio:
    """``label-studio start`` on localhost:``port`` with its data under ``MODEL_DIR/label-studio``."""

    def __init__(self, model_dir: Path, port: int = DEFAULT_LABEL_STUDIO_PORT) -> None:
        self.model_dir = model_dir
        self.port = port
        self.url = f"http://localhost:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return data_dir_of(self.model_dir) / "label-studio.log"

    def _environment(self, credentials: Credentials) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("LABEL_STUDIO_", "DJANGO_")) and key not in ("HOST", "PORT")}
        data_dir = data_dir_of(self.model_dir)
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(data_dir.resolve()),
            SECRET_KEY=ensure_secret_key(data_dir),
            LABEL_STUDIO_USERNAME=credentials.email,
            LABEL_STUDIO_PASSWORD=credentials.password,
            LABEL_STUDIO_HOST=self.url,
            # the backend, its webhook and the images live on this machine (refused by default)
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
            **{FAST_PREDICTION_IMPORT: "true"},
            COLLECT_ANALYTICS="false",
            LATEST_VERSION_CHECK="false",
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            LOG_LEVEL="WARNING",
        )
        return env

    def start(self, executable: Path, timeout_s: float = 300.0) -> Credentials:
        """Start it, wait for /health, and return the admin's credentials (token included)."""
        if _port_in_use(self.port):
            raise LocalLabelStudioError(
                f"port {self.port} is already in use: stop what runs there, or set LABEL_STUDIO_PORT to a free port"
            )
        saved = load_credentials(self.model_dir)
        credentials = saved or Credentials(self.url, ADMIN_EMAIL, secrets.token_urlsafe(18))
        credentials = Credentials(self.url, credentials.email, credentials.password, credentials.token)
        _save_credentials(self.model_dir, credentials)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
             "--host", self.url],
            env=self._environment(credentials), cwd=str(data_dir_of(self.model_dir)), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the demo, which stops it after the backend
        )
        self._wait_healthy(timeout_s)
        if not credentials.token or not self._token_works(credentials.token):
            credentials = Credentials(
                credentials.url, credentials.email, credentials.password, self._new_token(credentials)
            )
            _save_credentials(self.model_dir, credentials)
        return credentials

    def _wait_healthy(self, timeout_s: float) -> None:
        assert self.process is not None
        problem = wait_until_healthy(self.url, self.process, timeout_s)
        if problem:
            raise LocalLabelStudioError(f"{problem}; see {self.log_path}")

    def _token_works(self, token: str) -> bool:
        response = requests.post(f"{self.url}/api/token/refresh/", json={"refresh": token}, timeout=30)
        return response.status_code == 200

    def _new_token(self, credentials: Credentials) -> str:
        """A Personal Access Token for the admin, made the way a user would (log in, ask for one)."""
        session = requests.Session()
        session.get(f"{self.url}/user/login/", timeout=30).raise_for_status()
        csrf = session.cookies.get("csrftoken", "")
        response = session.post(
            f"{self.url}/user/login/",
            data={"email": credentials.email, "password": credentials.password, "csrfmiddlewaretoken": csrf},
            headers={"Referer": f"{self.url}/user/login/"}, allow_redirects=False, timeout=30,
        )
        if response.status_code != 302 or "sessionid" not in session.cookies:
            raise LocalLabelStudioError(f"could not log in as {credentials.email} (HTTP {response.status_code})")
        headers = {"X-CSRFToken": session.cookies.get("csrftoken", csrf), "Referer": f"{self.url}/"}
        response = session.post(f"{self.url}/api/token/", json={}, headers=headers, timeout=30)
        if response.status_code == 409:  # one the admin holds is no longer accepted (signed with a lost key)
            self._revoke_tokens(session, headers)
            response = session.post(f"{self.url}/api/token/", json={}, headers=headers, timeout=30)
        if response.status_code != 201:
            raise LocalLabelStudioError(
                f"could not create a Personal Access Token: HTTP {response.status_code} {response.text[:200]}"
            )
        return str(response.json()["token"])

    def _revoke_tokens(self, session: requests.Session, headers: dict[str, str]) -> None:
        """Revoke the logged-in admin's Personal Access Tokens, as "Revoke" in Label Studio's account page does."""
        listed = session.get(f"{self.url}/api/token/", headers=headers, timeout=30)
        listed.raise_for_status()
        for token in listed.json():
            response = session.post(
                f"{self.url}/api/token/blacklist/", json={"refresh": token["token"]}, headers=headers, timeout=30
            )
            if response.status_code not in (204, 404):  # 404: revoked already
                raise LocalLabelStudioError(f"could not revoke an old token: HTTP {response.status_code}")

    def stop(self, timeout_s: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=timeout_s)
                return
            except subprocess.TimeoutExpired:
                continue
