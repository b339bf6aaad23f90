"""Run a real Label Studio server for integration tests.

Plain helper (no pytest dependency): starts ``label-studio start`` on a free loopback
port with a throw-away data directory (SQLite), creates the first user, waits for
``GET /health``, then obtains a Personal Access Token (PAT) the way a user would
(session login with CSRF, ``POST /api/token/``) and, optionally, the user's legacy
token after enabling legacy tokens for the organisation via ``/api/jwt/settings``.

Usage::

    with LabelStudioServer(ls_executable) as ls:
        ls.url, ls.pat, ls.legacy_token
        project = ls.create_project("p", label_config)
        tasks = ls.upload_images(project["id"], [path1, path2])
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import requests

from freesel_backend.labelstudio.local import wait_until_healthy

REPO_ROOT = Path(__file__).resolve().parent.parent
LABEL_CONFIG = (REPO_ROOT / "label_config.xml").read_text()  # the classification project of the repository

DEFAULT_USERNAME = "freesel-test@example.com"
DEFAULT_PASSWORD = "freesel-test-password-123"
# Label Studio (Django) refuses an upload of more files than DATA_UPLOAD_MAX_NUMBER_FILES (100) in one request
UPLOAD_FILES_PER_REQUEST = 100

IMAGE_CLASSIFICATION_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image">
    <Choice value="cat"/>
    <Choice value="dog"/>
  </Choices>
</View>"""


def label_studio_executable() -> str:
    """Path of `label-studio` from .venv-ls, installing it first if needed."""
    script = REPO_ROOT / "scripts" / "ensure_label_studio.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


class LabelStudioStartError(RuntimeError):
    """Label Studio did not start, or the test user/tokens could not be set up."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])


class LabelStudioServer:
    """A real Label Studio process with its own temporary data directory."""

    def __init__(
        self,
        executable: str | os.PathLike[str],
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        port: Optional[int] = None,
        startup_timeout: float = 180.0,
        enable_legacy_token: bool = True,
        extra_env: Optional[dict[str, str]] = None,
    ) -> None:
        self.executable = str(Path(executable).resolve())
        self.username = username
        self.password = password
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.url = f"http://{self.host}:{self.port}"
        self.startup_timeout = startup_timeout
        self.enable_legacy_token = enable_legacy_token
        self.extra_env = dict(extra_env or {})
        # the API key a user configures: a Personal Access Token, or where there are none
        # (1.16.0 and older) the legacy token
        self.pat: Optional[str] = None
        self.legacy_token: Optional[str] = None
        self.start_seconds: Optional[float] = None
        self._tmp: Optional[Path] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None
        self._log_file: Any = None
        self._session: Optional[requests.Session] = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def data_dir(self) -> Path:
        assert self._tmp is not None, "server not started"
        return self._tmp / "data"

    @property
    def local_files_root(self) -> Path:
        """LOCAL_FILES_DOCUMENT_ROOT of this server; put files under a sub-folder of it."""
        assert self._tmp is not None, "server not started"
        return self._tmp / "files"

    @property
    def log_path(self) -> Path:
        assert self._tmp is not None, "server not started"
        return self._tmp / "label-studio.log"

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines) if self._tmp else "<not started>"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Do not let the caller's Label Studio client settings leak into the server.
        for key in list(env):
            if key.startswith(("LABEL_STUDIO_", "HEARTEX_")) or key in {"DJANGO_SETTINGS_MODULE", "HOST", "PORT"}:
                env.pop(key)
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
                "LABEL_STUDIO_USERNAME": self.username,
                "LABEL_STUDIO_PASSWORD": self.password,
                "LABEL_STUDIO_HOST": self.url,
                # Same-machine ML backend and webhooks (see shared/LABEL_STUDIO.md).
                "ML_BLOCK_LOCAL_IP": "false",
                "SSRF_PROTECTION_ENABLED": "false",
                # /data/local-files/?d=... served from <tmp>/files (see add_local_files_storage).
                "LOCAL_FILES_SERVING_ENABLED": "true",
                "LOCAL_FILES_DOCUMENT_ROOT": str(self.local_files_root),
                # Fast and quiet: no analytics, no PyPI version check, no Sentry.
                "COLLECT_ANALYTICS": "false",
                "LATEST_VERSION_CHECK": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "LOG_LEVEL": "WARNING",
                "DEBUG": "false",
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> "LabelStudioServer":
        if self._proc is not None:
            return self
        self._tmp = Path(tempfile.mkdtemp(prefix="freesel-ls-"))
        self.data_dir.mkdir()
        self.local_files_root.mkdir()
        self._log_file = open(self.log_path, "wb")
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                [
                    self.executable,
                    "start",
                    "--no-browser",
                    "--internal-host",
                    self.host,
                    "--port",
                    str(self.port),
                    "--host",
                    self.url,
                ],
                env=self._env(),
                cwd=str(self._tmp),
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group, so stop() can end all of it
            )
            self._wait_healthy()
            self.start_seconds = time.monotonic() - started
            self._login()
            self.pat = self._create_pat()
            if self.enable_legacy_token:
                self.legacy_token = self._enable_legacy_token()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        assert self._proc is not None
        problem = wait_until_healthy(self.url, self._proc, self.startup_timeout)
        if problem:
            raise LabelStudioStartError(f"{problem}; log tail:\n{self.log_tail()}")
    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=15)
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "LabelStudioServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:  # never show tokens
        return f"LabelStudioServer(url={self.url!r}, running={self._proc is not None})"

    # ------------------------------------------------------------------ auth setup

    @property
    def session(self) -> requests.Session:
        """A Django session logged in as the first user (CSRF header preset)."""
        assert self._session is not None, "server not started"
        return self._session

    def _login(self) -> None:
        self._session = self.form_session("/user/login/", self.username, self.password)

    def sign_up(self, email: str, password: str = DEFAULT_PASSWORD) -> requests.Session:
        """A second user of the organisation (the sign-up form, as a new annotator uses it),
        returned as a logged-in session for the API."""
        return self.form_session("/user/signup/", email, password)

    def form_session(self, page: str, email: str, password: str) -> requests.Session:
        """Submit Label Studio's login or sign-up form; a session logged in as that user."""
        session = requests.Session()
        resp = session.get(f"{self.url}{page}", timeout=30)
        resp.raise_for_status()
        csrf = session.cookies.get("csrftoken")
        if not csrf:
            raise LabelStudioStartError(f"no csrftoken cookie from {page}")
        resp = session.post(
            f"{self.url}{page}",
            data={"email": email, "password": password, "csrfmiddlewaretoken": csrf},
            headers={"Referer": f"{self.url}{page}"},
            allow_redirects=False,
            timeout=30,
        )
        if resp.status_code != 302 or "sessionid" not in session.cookies:
            raise LabelStudioStartError(f"{page} failed for {email}: HTTP {resp.status_code}")
        # Django rotates the CSRF token on login.
        session.headers["X-CSRFToken"] = session.cookies.get("csrftoken", csrf)
        session.headers["Referer"] = f"{self.url}/"
        return session

    def _create_pat(self) -> str:
        """A Personal Access Token; on Label Studio without them (1.16.0 and older: no ``/api/token/``)
        the user's legacy token, the only kind of API key those versions have."""
        return self.create_pat(self.session)

    def create_pat(self, session: requests.Session) -> str:
        """A Personal Access Token of the user logged in as ``session`` (or its legacy token, as above)."""
        resp = session.post(f"{self.url}/api/token/", json={}, timeout=30)
        if resp.status_code in (404, 405):
            return self._legacy_token()
        if resp.status_code != 201:
            raise LabelStudioStartError(f"POST /api/token/ failed: HTTP {resp.status_code} {resp.text[:200]}")
        token = resp.json()["token"]
        if token.count(".") != 2:
            raise LabelStudioStartError("POST /api/token/ did not return a JWT")
        return str(token)

    def _enable_legacy_token(self) -> str:
        resp = self.session.post(
            f"{self.url}/api/jwt/settings",
            json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": True},
            timeout=30,
        )
        # 404: 1.16.0 or older, where legacy tokens are the only tokens and always enabled
        if resp.status_code not in (200, 201, 404):
            raise LabelStudioStartError(f"POST /api/jwt/settings failed: HTTP {resp.status_code} {resp.text[:200]}")
        return self._legacy_token()

    def revoke_pat(self, session: requests.Session, token: str) -> None:
        """Revoke a Personal Access Token as its user does on *Account & Settings*."""
        session.post(f"{self.url}/api/token/blacklist/", json={"refresh": token}, timeout=30).raise_for_status()

    def move_to_own_organization(self, email: str) -> None:
        """Make the user ``email`` a member of a new organization of its own, and make that its active
        one: it then sees none of the first organization's projects. The Community Edition puts every
        signed-up user in the first organization and has no API for this, so Label Studio's own
        management shell does it."""
        code = (
            "from users.models import User\n"
            "from organizations.models import Organization\n"
            f"user = User.objects.get(email={email!r})\n"
            "user.active_organization = Organization.create_organization(created_by=user, title='Another team')\n"
            "user.save(update_fields=['active_organization'])\n"
        )
        python = str(Path(self.executable).parent / "python")
        where = "import label_studio, os; print(os.path.dirname(label_studio.__file__))"
        package = subprocess.run([python, "-c", where], capture_output=True, text=True, check=True).stdout.strip()
        done = subprocess.run([python, "manage.py", "shell", "-c", code], cwd=package, env=self._env(),
                              capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            raise LabelStudioStartError(f"Label Studio's management shell failed: {done.stderr[-1500:]}")

    def _legacy_token(self) -> str:
        resp = self.session.get(f"{self.url}/api/current-user/token", timeout=30)
        if resp.status_code != 200:
            raise LabelStudioStartError(f"GET /api/current-user/token failed: HTTP {resp.status_code}")
        return str(resp.json()["token"])

    def set_legacy_tokens_enabled(self, enabled: bool) -> None:
        resp = self.session.post(
            f"{self.url}/api/jwt/settings",
            json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": enabled},
            timeout=30,
        )
        resp.raise_for_status()

    # ------------------------------------------------------------------ test data helpers

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Raw API call with the logged-in session (independent of the client under test)."""
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, f"{self.url}{path}", **kwargs)

    def next_task(self, project_id: int) -> Optional[dict]:
        """The task the label stream serves next, None when the queue is empty (1.23.2 answers 404
        both for that and for a missing project: the latter raises)."""
        resp = self.api("GET", f"/api/projects/{int(project_id)}/next/")
        if resp.status_code == 404 and "there are no tasks" in resp.text.lower():
            return None
        resp.raise_for_status()
        return resp.json()

    def model_versions(self, project_id: int) -> dict[str, int]:
        """``{model_version: number of predictions}`` of the project."""
        resp = self.api("GET", f"/api/projects/{int(project_id)}/model-versions/")
        resp.raise_for_status()
        body = resp.json()
        return {str(k): int(v) for k, v in (body.get("static", body) if isinstance(body, dict) else {}).items()}

    def delete_model_version(self, project_id: int, model_version: str) -> int:
        """Delete every prediction of ``model_version``; how many were deleted."""
        path = f"/api/projects/{int(project_id)}/model-versions/"
        resp = self.api("DELETE", path, json={"model_version": model_version})
        resp.raise_for_status()
        body = resp.json()
        return int(body if isinstance(body, int) else body.get("deleted_predictions", body.get("count", 0)))

    def delete_webhook(self, webhook_id: int) -> None:
        self.api("DELETE", f"/api/webhooks/{int(webhook_id)}/").raise_for_status()

    def create_project(self, title: str, label_config: str = IMAGE_CLASSIFICATION_CONFIG, **fields: Any) -> dict:
        resp = self.api("POST", "/api/projects/", json={"title": title, "label_config": label_config, **fields})
        if resp.status_code != 201:
            raise RuntimeError(f"create project failed: HTTP {resp.status_code} {resp.text[:300]}")
        return resp.json()

    def upload_images(self, project_id: int, paths: Sequence[str | os.PathLike[str]]) -> list[dict]:
        """Upload files through the real import endpoint; returns the created tasks (by id order).

        Each file becomes one task whose ``data.image`` is ``/data/upload/<project>/<name>``.
        """
        step = UPLOAD_FILES_PER_REQUEST
        batches = (paths[start:start + step] for start in range(0, len(paths), step))
        return [task for batch in batches for task in self._upload(project_id, batch)]

    def _upload(self, project_id: int, paths: Sequence[str | os.PathLike[str]]) -> list[dict]:
        files = []
        handles = []
        try:
            for path in paths:
                path = Path(path)
                handle = open(path, "rb")
                handles.append(handle)
                mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                files.append((path.name, (path.name, handle, mime)))
            resp = self.api("POST", f"/api/projects/{project_id}/import?return_task_ids=true", files=files)
        finally:
            for handle in handles:
                handle.close()
        if resp.status_code != 201:
            raise RuntimeError(f"upload failed: HTTP {resp.status_code} {resp.text[:300]}")
        body = resp.json()
        task_ids: Iterable[int] = body.get("task_ids") or []
        return [self.api("GET", f"/api/tasks/{tid}/").json() for tid in sorted(task_ids)]

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Import JSON tasks (e.g. with external URLs); returns the new task ids."""
        resp = self.api("POST", f"/api/projects/{project_id}/import?return_task_ids=true", json=tasks)
        if resp.status_code != 201:
            raise RuntimeError(f"import failed: HTTP {resp.status_code} {resp.text[:300]}")
        return sorted(resp.json().get("task_ids") or [])

    def add_local_files_storage(self, project_id: int, folder: str | os.PathLike[str]) -> dict:
        """Connect a Local Files source storage (``folder`` must lie under ``local_files_root``).

        Tasks may then reference ``/data/local-files/?d=<path relative to local_files_root>``.
        """
        resp = self.api(
            "POST",
            "/api/storages/localfiles",
            json={"project": project_id, "path": str(folder), "title": "local", "use_blob_urls": True},
        )
        if resp.status_code != 201:
            raise RuntimeError(f"local storage failed: HTTP {resp.status_code} {resp.text[:300]}")
        return resp.json()


def annotate(ls: LabelStudioServer, task_id: int) -> None:
    """Label the task (one choice of LABEL_CONFIG) as the server's user."""
    result = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]
    response = ls.api("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result})
    assert response.status_code == 201, response.text
