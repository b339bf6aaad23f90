"""Entry point of ``label-studio-ml start ./freesel_backend [--port 9090] [--host H] ...``.

label-studio-ml runs ``python <folder>/_wsgi.py <options>``, so this file runs as a script: it
starts the same service as ``python -m freesel_backend serve`` (gunicorn, and without REDIS_URL an
embedded Redis and a worker). Options of label-studio-ml's template: ``--port``, ``--host``,
``--model-dir`` (MODEL_DIR), ``--log-level``, ``--debug``, ``--basic-auth-user``/``--basic-auth-pass``
(BASIC_AUTH_USER/BASIC_AUTH_PASS), ``--kwargs``/``--with KEY=VALUE ...`` (set as environment
variables, e.g. ``--with FREESEL_MODEL=offline``) and ``--check`` (build the app, then exit).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent


def _use_the_project_interpreter() -> None:
    """label-studio-ml calls whatever ``python`` is first on PATH; without the backend's packages,
    run again with the repository's .venv interpreter."""
    project_python = REPO_ROOT / ".venv" / "bin" / "python"
    if importlib.util.find_spec("label_studio_ml") is None and project_python.exists():
        if Path(sys.executable).resolve() != project_python.resolve():
            os.execv(str(project_python), [str(project_python), __file__, *sys.argv[1:]])


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="label-studio-ml start ./freesel_backend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("PORT", 9090)))
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--model-dir", help="MODEL_DIR: embedded Redis data and model cache")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging (never the Werkzeug debugger)")
    parser.add_argument("--basic-auth-user", default=None)
    parser.add_argument("--basic-auth-pass", default=None)
    parser.add_argument("--kwargs", "--with", dest="kwargs", metavar="KEY=VALUE", nargs="+", default=[],
                        help="environment settings, e.g. FREESEL_MODEL=offline LABEL_STUDIO_URL=http://localhost:8080")
    parser.add_argument("--check", action="store_true", help="check the settings and build the app, then exit")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (2)")
    return parser.parse_args(argv)


def environment_of(args: argparse.Namespace) -> dict[str, str]:
    """The environment variables the options stand for."""
    env: dict[str, str] = {}
    for pair in args.kwargs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--with expects KEY=VALUE, got {pair!r}")
        env[key] = value
    if args.model_dir:
        env["MODEL_DIR"] = args.model_dir
    if args.basic_auth_user is not None:
        env["BASIC_AUTH_USER"] = args.basic_auth_user
    if args.basic_auth_pass is not None:
        env["BASIC_AUTH_PASS"] = args.basic_auth_pass
    return env


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    os.environ.update(environment_of(args))
    logging.basicConfig(level="DEBUG" if args.debug else args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.check:
            return check()
        from freesel_backend.server.process import serve

        return serve(args.host, args.port, args.web_workers)
    except ValueError as error:  # SettingsError: names the setting and the fix
        print(f"error: {error}", file=sys.stderr)
        return 2


def check() -> int:
    """Settings readable and the web app importable: what ``--check`` promises before a deployment."""
    from freesel_backend.server.settings import Settings
    from freesel_backend.server.web import create_app  # noqa: F401 - importing is the check

    settings = Settings.from_env()
    print(f"FreeSel backend: settings OK (MODEL_DIR {settings.model_dir}, model {settings.model})")
    return 0


if __name__ == "__main__":
    _use_the_project_interpreter()
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main(sys.argv[1:]))
