import os

import pytest

from tests.helpers import missing_prerequisite
from harness.label_studio import LabelStudioServer, label_studio_executable


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the real Label Studio (directly or through another fixture) is an integration test."""
    for item in items:
        if "label_studio" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def label_studio():
    """A real Label Studio 1.23.2 (own temp data dir, SQLite) with a Personal Access Token.

    Yields a started `harness.label_studio.LabelStudioServer` (url, pat, legacy_token,
    create_project, upload_images, ...). In CI (env `CI` set) failing to start is an error;
    locally it skips with the reason.
    """
    server = None
    try:
        startup_s = float(os.environ.get("FREESEL_TEST_LS_STARTUP_TIMEOUT", "180"))  # more on a loaded machine
        server = LabelStudioServer(label_studio_executable(), startup_timeout=startup_s).start()
    except Exception as exc:  # noqa: BLE001 - reported below
        message = f"real Label Studio could not be started: {exc}"
        missing_prerequisite(message)
    try:
        yield server
    finally:
        server.stop()


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
