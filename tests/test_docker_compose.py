"""docker-compose.yml checked against the code (no Docker engine here): services, commands, variables."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from freesel_backend.cli import build_parser
from freesel_backend.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_compose_has_label_studio_with_ssrf_flags_redis_backend_and_worker():
    services = COMPOSE["services"]
    assert set(services) == {"label-studio", "redis", "backend", "worker"}
    assert services["label-studio"]["image"].endswith(":1.23.2")
    assert services["label-studio"]["environment"]["ML_BLOCK_LOCAL_IP"] == "false"
    assert services["label-studio"]["environment"]["SSRF_PROTECTION_ENABLED"] == "false"
    assert services["worker"]["environment"]["REDIS_URL"] == services["backend"]["environment"]["REDIS_URL"]


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
    source = (REPO_ROOT / "freesel_backend" / "config.py").read_text()
    assert all(f'"{name}"' in source for name in environment)
