import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from freesel_backend.cli.samples import ensure_sample_images
from tests.helpers import missing_prerequisite
from harness.label_studio import LabelStudioServer, label_studio_executable
from harness.postgresql import postgres_database


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the real Label Studio (directly or through another fixture) is an integration test."""
    for item in items:
        if "label_studio" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@contextmanager
def started_label_studio(extra_env: dict[str, str] | None = None) -> Iterator[LabelStudioServer]:
    """A started Label Studio, stopped afterwards; failing to start is an error in CI (env `CI`
    set) and a skip elsewhere."""
    server = None
    try:
        startup_s = float(os.environ.get("FREESEL_TEST_LS_STARTUP_TIMEOUT", "180"))  # more on a loaded machine
        server = LabelStudioServer(label_studio_executable(), startup_timeout=startup_s, extra_env=extra_env).start()
    except Exception as exc:  # noqa: BLE001 - reported below
        missing_prerequisite(f"real Label Studio could not be started: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def label_studio():
    """A real Label Studio 1.23.2 (own temp data dir, SQLite) with a Personal Access Token.

    Yields a started `harness.label_studio.LabelStudioServer` (url, pat, legacy_token,
    create_project, upload_images, ...).
    """
    with started_label_studio() as server:
        yield server


@pytest.fixture(scope="session")
def label_studio_on_postgresql():
    """The same on PostgreSQL, as teams run it for large projects: a database of its own on the
    server of `harness.postgresql` (scripts/test.sh makes sure one answers), dropped afterwards."""
    with ExitStack() as stack:
        try:
            database_env = stack.enter_context(postgres_database())
        except Exception as exc:  # noqa: BLE001 - reported below
            missing_prerequisite(f"no PostgreSQL database for Label Studio: {exc}")
        yield stack.enter_context(started_label_studio(database_env))


@pytest.fixture(scope="session")
def redis_url():
    """A Redis for the tests: FREESEL_TEST_REDIS_URL (scripts/test.sh starts one), else a private
    redis-server started here. Its database is flushed before every test that uses it."""
    url = os.environ.get("FREESEL_TEST_REDIS_URL")
    if url:
        yield url
        return
    from freesel_backend.server.redis_server import RedisServer

    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_connection(redis_url):
    import redis

    connection = redis.Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-image's sample photographs (longest side 320 px, JPEG)."""
    return ensure_sample_images(tmp_path_factory.mktemp("photos"))
