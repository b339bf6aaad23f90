"""Security: the download policy, secrets kept out of every output, signed and validated
webhooks, JSON-only bounded request bodies, no debugger. Real HTTP servers, real gunicorn, a
real Label Studio and a real worker."""

from __future__ import annotations

import base64
import json
import re
import time
import zlib

import pytest
import requests

from freesel_backend.server.settings import WEBHOOK_SECRET_HEADER, Settings
from freesel_backend.labelstudio.client import LabelStudioClient, LabelStudioError
from freesel_backend.labelstudio.download import Downloader, LabelStudioDownloadError
from harness.backend import BackendProcesses, backend_env, idle, wait_for
from tests.helpers import write_noise_images
from harness.local_http import LocalHttpServer, Request, content, hang, redirect
from harness.label_studio import LABEL_CONFIG

JWT_SHAPED = re.compile(rb"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def fake_jwt() -> str:
    part = lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")  # noqa: E731
    return f"{part({'alg': 'HS256'})}.{part({'token_type': 'refresh', 'exp': 4102444800})}.c2lnbmF0dXJl"


# ---- download policy ----------------------------------------------------------------------------


def test_file_and_other_non_http_uris_are_never_downloaded():
    downloader = Downloader(LabelStudioClient("http://127.0.0.1:9", "key"))
    for uri in ("file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/1", "data:image/png;base64,AAAA"):
        with pytest.raises(LabelStudioDownloadError, match="refusing to download"):
            downloader.download(uri, task_id=1)


def test_image_hosts_on_loopback_or_link_local_addresses_are_refused_unless_allowed():
    with LocalHttpServer({"/a.png": content(b"pixels", "image/png")}) as host:
        strict = Downloader(LabelStudioClient("http://ls.invalid:8080", "key"), allow_private_addresses=False)
        with pytest.raises(LabelStudioDownloadError, match="non-public address 127.0.0.1"):
            strict.download(f"{host.url}/a.png")
        with pytest.raises(LabelStudioDownloadError, match="non-public address 169.254.169.254"):
            strict.download("http://169.254.169.254/latest/meta-data/")
        assert host.requests == []  # refused before connecting
        allowed = Downloader(LabelStudioClient("http://ls.invalid:8080", "key"), allow_private_addresses=True)
        assert allowed.download(f"{host.url}/a.png") == b"pixels"


def test_label_studio_may_be_local_but_its_redirects_to_other_private_hosts_are_refused():
    with LocalHttpServer({"/secret": content(b"internal")}) as internal:
        ls = LocalHttpServer({"/data/upload/1/a.png": redirect(f"http://localhost:{internal.port}/secret"),
                              "/data/upload/1/b.png": content(b"own file")}).start()
        try:
            strict = Downloader(LabelStudioClient(ls.url, "key"), allow_private_addresses=False)
            assert strict.download("/data/upload/1/b.png") == b"own file"
            with pytest.raises(LabelStudioDownloadError, match="localhost resolves to the non-public address"):
                strict.download("/data/upload/1/a.png")
            assert internal.requests == []
            assert Downloader(LabelStudioClient(ls.url, "key")).download("/data/upload/1/a.png") == b"internal"
        finally:
            ls.stop()


def test_downloads_are_capped_in_size_and_time():
    with LocalHttpServer({"/big.png": content(b"x" * 5000), "/slow.png": hang(5)}) as host:
        downloader = Downloader(LabelStudioClient("http://ls.invalid", "key"), max_bytes=1000, timeout=1)
        with pytest.raises(LabelStudioDownloadError, match="5000 bytes exceeds the 1000-byte limit"):
            downloader.download(f"{host.url}/big.png")
        started = time.monotonic()
        with pytest.raises(LabelStudioError, match="the image host timed out"):
            downloader.download(f"{host.url}/slow.png")
        assert time.monotonic() - started < 4


# ---- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["legacy-token-0123456789abcdef", fake_jwt()])
def test_error_texts_never_contain_the_api_key_even_when_the_server_echoes_it(key):
    def echo(request: Request) -> tuple[int, dict[str, str], bytes]:
        return 500, {"Content-Type": "text/plain"}, f"{request.headers} {request.body!r}".encode()

    with LocalHttpServer(fallback=echo) as server:
        client = LabelStudioClient(server.url, key)
        with pytest.raises(LabelStudioError) as raised:
            client.get_project(1)
        assert server.requests  # the server did answer with the echo
        texts = [str(raised.value), repr(raised.value), raised.value.body_excerpt or "", repr(client)]
        assert all(key not in text and not JWT_SHAPED.search(text.encode()) for text in texts)


def test_the_webhook_secret_is_derived_one_way_from_the_key_unless_set():
    settings = Settings(label_studio_api_key="the-api-key")
    assert len(settings.webhook_secret) == 64 and "the-api-key" not in settings.webhook_secret
    assert settings.webhook_secret == Settings(label_studio_api_key="the-api-key").webhook_secret
    assert Settings(label_studio_api_key="the-api-key", webhook_secret_override="s3cret").webhook_secret == "s3cret"
    assert "the-api-key" not in repr(settings)


# ---- the web service: bodies, webhooks, debugger ------------------------------------------------


@pytest.fixture(scope="module")
def web_backend(redis_url, tmp_path_factory):
    """gunicorn only (no worker): the routes are what is under test."""
    folder = tmp_path_factory.mktemp("web")
    env = backend_env(redis_url, "http://127.0.0.1:9", "k-" + "x" * 30, folder / "model_dir")
    env["FREESEL_MAX_REQUEST_BYTES"] = "100000"
    processes = BackendProcesses(env, folder).start(workers=0)
    yield processes
    processes.stop()


def signed(backend: BackendProcesses) -> dict[str, str]:
    return {WEBHOOK_SECRET_HEADER: Settings.from_env(backend.env).webhook_secret}


@pytest.mark.slow
def test_routes_reject_form_and_multipart_bodies_and_oversize_json(web_backend):
    for path in ("/setup", "/predict", "/webhook", "/freesel/projects/1/settings", "/train", "/versions"):
        multipart = requests.post(web_backend.url + path, files={"f": ("a.txt", b"x" * 100)}, timeout=30)
        assert multipart.status_code == 415 and "must be JSON" in multipart.json()["error"], path
        form = requests.post(web_backend.url + path, data={"a": "b"}, timeout=30)
        assert form.status_code == 415, path
    oversize = requests.post(f"{web_backend.url}/predict", json={"tasks": [], "pad": "x" * 200_000}, timeout=30)
    assert oversize.status_code == 413 and "exceeds the 100000-byte limit" in oversize.json()["error"]


@pytest.mark.slow
def test_the_werkzeug_debugger_is_off_and_errors_show_no_traceback(web_backend):
    for query in ("__debugger__=yes&cmd=resource&f=debugger.js", "__debugger__=yes&cmd=printpin&s=x"):
        response = requests.get(f"{web_backend.url}/?{query}", timeout=30)
        assert "debugger" not in response.text.lower() and "console" not in response.text.lower()
    assert requests.get(f"{web_backend.url}/console", timeout=30).status_code == 404
    broken = requests.post(
        f"{web_backend.url}/predict", data=b"{not json", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert broken.status_code == 400 and "Traceback" not in broken.text


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        ({}, {"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": []}, 401, "X-FreeSel-Webhook-Secret"),
        (
            {WEBHOOK_SECRET_HEADER: "guess"},
            {"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": []},
            401,
            "webhook",
        ),
        ("signed", "not json at all", 400, "must be a JSON object"),
        ("signed", ["a", "list"], 400, "must be a JSON object"),
        ("signed", {"project": {"id": 1}}, 400, "needs an 'action' string"),
        ("signed", {"action": "TASKS_CREATED", "tasks": []}, 400, "has no 'project'"),
        ("signed", {"action": "TASKS_CREATED", "project": "abc", "tasks": []}, 400, "cannot read a project id"),
        ("signed", {"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": "1,2"}, 400, "'tasks' must be a list"),
        (
            "signed",
            {"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": [{"id": "7"}]},
            400,
            r"tasks\[0\] must be a task object",
        ),
    ],
)
@pytest.mark.slow
def test_unsigned_or_malformed_webhooks_are_rejected_with_a_specific_error(
    web_backend, redis_connection, headers, body, status, message
):
    headers = signed(web_backend) if headers == "signed" else headers
    data = body if isinstance(body, str) else json.dumps(body)
    response = requests.post(
        f"{web_backend.url}/webhook", data=data, headers={**headers, "Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == status and re.search(message, response.json()["error"]), response.text
    assert not redis_connection.keys("rq:job:*")  # nothing was enqueued


@pytest.mark.slow
def test_a_signed_well_formed_webhook_is_accepted(web_backend, redis_connection):
    body = {"action": "TASKS_CREATED", "project": {"id": 4}, "tasks": [{"id": 1, "data": {}}, {"id": 2, "data": {}}]}
    response = requests.post(f"{web_backend.url}/webhook", json=body, headers=signed(web_backend), timeout=30)
    assert response.status_code == 201 and response.json()["enqueued_tasks"] == 2


# ---- the API key in a whole real run ------------------------------------------------------------


def everything_in_redis(connection) -> bytes:
    """Every key and value (RQ job payloads decompressed) as one blob to search."""
    parts: list[bytes] = []
    for key in connection.scan_iter(count=1000):
        parts.append(key)
        kind = connection.type(key)
        if kind == b"string":
            values = [connection.get(key)]
        elif kind == b"hash":
            values = [item for pair in connection.hgetall(key).items() for item in pair]
        elif kind in (b"set",):
            values = list(connection.smembers(key))
        elif kind == b"zset":
            values = [member for member, _ in connection.zrange(key, 0, -1, withscores=True)]
        elif kind == b"list":
            values = connection.lrange(key, 0, -1)
        else:
            values = []
        for value in values:
            parts.append(value or b"")
            try:
                parts.append(zlib.decompress(value))
            except (zlib.error, TypeError):
                pass
    return b"\n".join(parts)


def test_the_api_key_never_appears_in_logs_redis_status_errors_or_webhook_settings(
    label_studio, redis_connection, redis_url, tmp_path
):
    ls = label_studio
    project = ls.create_project("security", LABEL_CONFIG)
    pid = project["id"]
    ls.upload_images(pid, write_noise_images(tmp_path / "img", 3))
    ls.import_tasks(
        pid, [{"image": "/data/upload/999/missing.png"}]
    )  # Label Studio answers 500 for it, to our auth header
    env = backend_env(redis_url, ls.url, ls.pat, tmp_path / "model_dir")
    backend = BackendProcesses(env, tmp_path).start()
    try:
        assert (
            ls.api("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "FreeSel"}).status_code == 201
        )
        status = wait_for(lambda: (s := backend.status(pid)) and idle(s) and s["ranked"] and s, 240, "ranking")
        added = ls.upload_images(
            pid, write_noise_images(tmp_path / "more", 2, start_seed=50)
        )  # via the real, signed webhook
        status = wait_for(
            lambda: (s := backend.status(pid)) and idle(s) and s["patterns_done"] == 5 and s["ranked"] == 5 and s,
            240,
            "webhook import",
        )
        assert {t["id"] for t in added} <= {
            p["task"] for p in ls.api("GET", "/api/predictions/", params={"project": pid}).json()
        }
        assert status["failed"] == 1 and "image download failed" in status["failures"][0]["reason"]
        hooks = ls.api("GET", "/api/webhooks/", params={"project": pid}).json()
        assert [h["headers"] for h in hooks] == [{WEBHOOK_SECRET_HEADER: Settings.from_env(env).webhook_secret}]
        unsigned = requests.post(
            f"{backend.url}/webhook", json={"action": "TASKS_CREATED", "project": {"id": pid}, "tasks": []}, timeout=30
        )
        assert unsigned.status_code == 401
        outputs = {
            "logs": b"".join(path.read_bytes() for path in tmp_path.glob("*.log")),
            "redis": everything_in_redis(redis_connection),
            "status": json.dumps(status).encode(),
            "webhooks": json.dumps(hooks).encode(),
            "error": unsigned.content,
        }
    finally:
        backend.stop()
    for name, blob in outputs.items():
        assert ls.pat.encode() not in blob, f"the API key leaked into {name}"
        assert not JWT_SHAPED.search(blob), f"a JWT (access token) leaked into {name}: {JWT_SHAPED.search(blob)}"
