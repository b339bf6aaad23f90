"""The demo's own Label Studio (``labelstudio/local.py``): its admin token keeps working across restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from freesel_backend.labelstudio.local import Credentials, LocalLabelStudio, credentials_path, ensure_secret_key
from harness.label_studio import free_port, label_studio_executable


def token_works(credentials: Credentials) -> bool:
    response = requests.post(f"{credentials.url}/api/token/refresh/", json={"refresh": credentials.token}, timeout=30)
    return response.status_code == 200


def start_and_stop(model_dir: Path, port: int) -> Credentials:
    """Start the local Label Studio, check its token while it runs, stop it."""
    label_studio = LocalLabelStudio(model_dir, port)
    try:
        credentials = label_studio.start(Path(label_studio_executable()))
        assert token_works(credentials)
        return credentials
    finally:
        label_studio.stop()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "model_dir"


def secret_key_lines(data_dir: Path) -> list[str]:
    return [line for line in (data_dir / ".env").read_text().splitlines() if line.startswith("SECRET_KEY=")]


def test_the_signing_key_is_written_once_and_kept(tmp_path):
    written = ensure_secret_key(tmp_path)

    assert ensure_secret_key(tmp_path) == written and secret_key_lines(tmp_path) == [f"SECRET_KEY={written}"]
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0


def test_a_signing_key_label_studio_cannot_read_back_is_replaced_and_other_settings_kept(tmp_path):
    # Label Studio writes such a key itself in about one first start in 50: one beginning with "$"
    (tmp_path / ".env").write_text("DEBUG=false\nSECRET_KEY=$0a^k9-ow)x2v@j5e&4z!+lq7m(r_8s=c1y6u3t#hb%pif*gnd\n")

    replaced = ensure_secret_key(tmp_path)

    assert not replaced.startswith("$") and ensure_secret_key(tmp_path) == replaced
    assert (tmp_path / ".env").read_text().splitlines() == ["DEBUG=false", f"SECRET_KEY={replaced}"]


def test_of_several_signing_keys_the_one_label_studio_reads_is_kept(tmp_path):
    # Label Studio appends a new key after one it could not read; the last line is the one it reads
    (tmp_path / ".env").write_text("SECRET_KEY=$unreadable\nSECRET_KEY=read-and-used\n")

    assert ensure_secret_key(tmp_path) == "read-and-used"


@pytest.mark.integration
def test_the_admin_token_survives_restarts_and_one_no_longer_accepted_is_revoked_and_replaced(model_dir):
    port = free_port()
    first = start_and_stop(model_dir, port)
    assert start_and_stop(model_dir, port) == first
    # a token signed with a key that is gone (a data dir restored without its .env, say)
    header, payload, _ = first.token.split(".")
    saved = {**json.loads(credentials_path(model_dir).read_text()), "token": f"{header}.{payload}.{'x' * 43}"}
    credentials_path(model_dir).write_text(json.dumps(saved))

    third = start_and_stop(model_dir, port)

    assert third.token not in (first.token, saved["token"])
    assert json.loads(credentials_path(model_dir).read_text())["token"] == third.token
