"""``scripts/run.sh`` without a Label Studio configured: FreeSel at work on this machine.

Starts the local Label Studio (installed on first use), the backend (``serve``: gunicorn, embedded
Redis, worker) and a project 'FreeSel demo' of sample photographs connected to it; waits for the
first ranking and says where to look. Ctrl-C stops the backend, then Label Studio. A second run
reuses the user, token, project and images.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import requests

from ..server.ownership import parent_death_signal
from ..server.settings import DEFAULT_PORT, SettingsError
from ..labelstudio.client import LabelStudioError
from ..labelstudio.local import (
    DEFAULT_LABEL_STUDIO_PORT,
    LocalLabelStudio,
    LocalLabelStudioError,
    credentials_path,
    ensure_installed,
    load_credentials,
)
from .quickstart import LABEL_CONFIGS, QuickstartError, Target, describe, quickstart
from .samples import ensure_sample_images

DEMO_TITLE = "FreeSel demo"


def add_demo_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "demo",
        help="local Label Studio + backend + a ranked sample project "
        "(what scripts/run.sh runs without Label Studio settings)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="0.0.0.0", help="backend bind address (0.0.0.0)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"backend port ({DEFAULT_PORT})")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (2)")
    parser.add_argument("--label-studio-port", type=int,
                        default=int(os.environ.get("LABEL_STUDIO_PORT") or DEFAULT_LABEL_STUDIO_PORT),
                        help=f"local Label Studio port (LABEL_STUDIO_PORT or {DEFAULT_LABEL_STUDIO_PORT})")
    parser.set_defaults(run=run_demo)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(args: argparse.Namespace) -> int:
    model_dir = Path(os.environ.get("MODEL_DIR") or "model_dir")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    label_studio = LocalLabelStudio(model_dir, args.label_studio_port)
    backend: subprocess.Popen[bytes] | None = None
    try:
        executable = ensure_installed()
        samples = ensure_sample_images(model_dir / "sample_images")
        known = load_credentials(model_dir)
        print(
            f"Starting Label Studio at {label_studio.url} (log: {label_studio.log_path}) ...",
            file=sys.stderr,
            flush=True,
        )
        credentials = label_studio.start(executable)
        if known is None or known.token != credentials.token:
            print(
                f"\nLabel Studio {credentials.url}\n  user:     {credentials.email}\n  password: "
                f"{credentials.password}\n"
                f"  API token (Personal Access Token): {credentials.token}\n  (kept in "
                f"{credentials_path(model_dir)})\n",
                flush=True,
            )
        else:
            print(
                f"Label Studio {credentials.url}: user {credentials.email}, password and token in "
                f"{credentials_path(model_dir)}",
                file=sys.stderr,
                flush=True,
            )
        public_url = (os.environ.get("FREESEL_PUBLIC_URL") or f"http://localhost:{args.port}").rstrip("/")
        backend = _start_backend(args, model_dir, credentials.url, credentials.token, public_url)
        auth = (
            (os.environ["BASIC_AUTH_USER"], os.environ.get("BASIC_AUTH_PASS", ""))
            if os.environ.get("BASIC_AUTH_USER")
            else None
        )
        target = Target(credentials.url, credentials.token, public_url, auth)
        _wait_for_backend(backend, target, model_dir / "backend.log")
        result = quickstart(target, samples, DEMO_TITLE, LABEL_CONFIGS["classification"].read_text(encoding="utf-8"))
        print("\n" + describe(result, target), flush=True)
        backend_option = "" if public_url == f"http://localhost:{DEFAULT_PORT}" else f" --backend-url {public_url}"
        print(
            f"Your own images: python -m freesel_backend quickstart FOLDER{backend_option} (in another terminal, "
            "same MODEL_DIR). "
            f"Backend log: {model_dir / 'backend.log'}. Ctrl-C stops Label Studio and the backend.",
            flush=True,
        )
        backend.wait()
        print(f"the backend stopped (exit code {backend.returncode}); see {model_dir / 'backend.log'}", file=sys.stderr)
        return 1
    except (LocalLabelStudioError, QuickstartError, LabelStudioError, RuntimeError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the backend and Label Studio ...", file=sys.stderr, flush=True)
        return 0
    finally:
        if backend is not None:
            _stop_backend(backend)
        label_studio.stop()


def _start_backend(
    args: argparse.Namespace, model_dir: Path, url: str, token: str, public_url: str
) -> "subprocess.Popen[bytes]":
    env = {**os.environ, "LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": token, "MODEL_DIR": str(model_dir),
           "FREESEL_PUBLIC_URL": public_url}
    log = open(model_dir / "backend.log", "ab")
    print(
        f"Starting the FreeSel backend at {public_url} (log: {model_dir / 'backend.log'}) ...",
        file=sys.stderr,
        flush=True,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "freesel_backend", "serve", "--host", args.host, "--port", str(args.port),
         "--web-workers", str(args.web_workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # stopped here, before Label Studio, on Ctrl-C
        preexec_fn=parent_death_signal(signal.SIGTERM),  # and stopped when the demo is killed
    )


def _wait_for_backend(backend: "subprocess.Popen[bytes]", target: Target, log: Path, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if backend.poll() is not None:
            raise RuntimeError(f"the backend exited with code {backend.returncode}; see {log}")
        try:
            if requests.get(f"{target.backend_url}/health", auth=target.basic_auth, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the backend did not answer {target.backend_url}/health within {timeout_s:.0f} s; see {log}")


def _stop_backend(backend: "subprocess.Popen[bytes]") -> None:
    """``serve``'s own shutdown (gunicorn, then the worker, then Redis) on SIGTERM; killed if it hangs."""
    if backend.poll() is None:
        backend.terminate()
        try:
            backend.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(backend.pid, signal.SIGKILL)
            backend.wait()
