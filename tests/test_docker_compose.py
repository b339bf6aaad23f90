"""docker-compose.yml checked by docker-compose itself (no Docker engine needed for `config`) and
against the code: services, commands, variables."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from freesel_backend.cli import build_parser
from freesel_backend.server.settings import Settings
from tests.helpers import missing_prerequisite

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


SERVICES = {"label-studio", "db", "redis", "backend", "worker"}


def test_compose_has_label_studio_with_ssrf_flags_redis_backend_and_worker():
    services = COMPOSE["services"]
    assert set(services) == SERVICES
    assert services["label-studio"]["image"].endswith(":1.23.2")
    assert services["label-studio"]["environment"]["ML_BLOCK_LOCAL_IP"] == "false"
    assert services["label-studio"]["environment"]["SSRF_PROTECTION_ENABLED"] == "false"
    assert services["worker"]["environment"]["REDIS_URL"] == services["backend"]["environment"]["REDIS_URL"]


def test_label_studio_runs_on_the_postgresql_service_once_it_accepts_connections():
    label_studio, db = COMPOSE["services"]["label-studio"], COMPOSE["services"]["db"]
    database = label_studio["environment"]
    assert (
        database["DJANGO_DB"] == "default" and database["POSTGRE_HOST"] == "db" and database["POSTGRE_PORT"] == "5432"
    )
    assert (database["POSTGRE_NAME"], database["POSTGRE_USER"], database["POSTGRE_PASSWORD"]) == (
        db["environment"]["POSTGRES_DB"], db["environment"]["POSTGRES_USER"], db["environment"]["POSTGRES_PASSWORD"])
    assert db["image"].startswith("postgres:")
    assert label_studio["depends_on"]["db"] == {"condition": "service_healthy"}
    assert db["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert any(volume.endswith(":/var/lib/postgresql/data") for volume in db["volumes"])


def test_every_variable_is_explained_by_a_comment_above_it_or_above_its_group():
    lines = [line.strip() for line in (REPO_ROOT / "docker-compose.yml").read_text().splitlines()]
    variable_line = re.compile(r"^[A-Z][A-Z0-9_]*:")
    for service in COMPOSE["services"].values():
        for name in service.get("environment") or {}:
            above = next(i for i, line in enumerate(lines) if line.startswith(f"{name}:")) - 1
            while variable_line.match(lines[above]):
                above -= 1
            assert lines[above].startswith("#"), f"{name} has no comment above it"


def test_compose_commands_are_commands_of_our_cli():
    parser = build_parser()
    for name in ("backend", "worker"):
        command = COMPOSE["services"][name]["command"]
        assert command[:3] == ["python", "-m", "freesel_backend"]
        assert isinstance(parser.parse_args(command[3:]), argparse.Namespace)


def test_compose_variables_are_read_by_the_settings():
    environment = {k: "1" if v is None else str(v) for k, v in COMPOSE["services"]["worker"]["environment"].items()}
    environment["LABEL_STUDIO_API_KEY"] = "token"
    settings = Settings.from_env(environment)
    assert settings.label_studio_url == "http://label-studio:8080"
    assert settings.redis_url == "redis://redis:6379/0" and settings.public_url == "http://backend:9090"
    source = (REPO_ROOT / "freesel_backend" / "server" / "settings.py").read_text()
    assert all(f'"{name}"' in source for name in environment)


@pytest.mark.integration
def test_docker_compose_itself_accepts_the_file_and_resolves_the_services():
    """Debian's docker-compose 1.29 validates and resolves the file without an engine; missing in
    CI is a failure (scripts/test.sh installs it when it runs as root)."""
    executable = shutil.which("docker-compose")
    if executable is None:
        message = "docker-compose is not installed (apt-get install -y docker-compose)"
        missing_prerequisite(message)
    environment = {**os.environ, "LABEL_STUDIO_API_KEY": "token-from-env", "POSTGRES_PASSWORD": "secret-from-env"}
    done = subprocess.run([executable, "-f", str(REPO_ROOT / "docker-compose.yml"), "config"],
                          cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert set(resolved["services"]) == SERVICES
    assert resolved["services"]["worker"]["environment"]["LABEL_STUDIO_API_KEY"] == "token-from-env"
    assert resolved["services"]["worker"]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert resolved["services"]["backend"]["build"]["context"] == str(REPO_ROOT)
    assert resolved["services"]["label-studio"]["environment"]["POSTGRE_PASSWORD"] == "secret-from-env"
    assert resolved["services"]["db"]["environment"]["POSTGRES_PASSWORD"] == "secret-from-env"


def test_the_image_installs_the_locks_with_hashes_and_no_resolution():
    assert COMPOSE["services"]["backend"]["build"] == COMPOSE["services"]["worker"]["build"] == "."
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    copied = re.search(r"^COPY (locks/backend\.txt .*) \./$", dockerfile, re.MULTILINE).group(1).split()
    assert copied == ["locks/backend.txt", "requirements-label-studio-ml.txt", "requirements-offline-model.txt"]
    assert all((REPO_ROOT / path).is_file() for path in copied)
    install = re.search(r"^RUN pip install (.*?)$\n(.*)$", dockerfile, re.MULTILINE)
    arguments = " ".join(install.groups()).replace("\\", "").split()
    assert {"--no-deps", "--require-hashes"} <= set(arguments)
    assert [arguments[i + 1] for i, argument in enumerate(arguments) if argument == "-r"] == [
        Path(path).name for path in copied]
