"""Specification of freesel_backend.labelstudio.client.LabelStudioClient against a REAL Label Studio 1.23.2.

No mocks: the `label_studio` fixture (tests/conftest.py) runs the server.
"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
import requests
from PIL import Image

from freesel_backend.labelstudio.client import (
    LabelStudioAuthError,
    LabelStudioClient,
    LabelStudioError,
    LabelStudioNotFound,
    LabelStudioUnavailable,
)
from freesel_backend.labelstudio.connection import is_jwt
from freesel_backend.labelstudio.download import Downloader, LabelStudioDownloadError

pytestmark = pytest.mark.timeout(300)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def client(label_studio) -> LabelStudioClient:
    with LabelStudioClient(label_studio.url, label_studio.pat, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def downloader(client) -> Downloader:
    return Downloader(client)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        path = folder / f"img{i}.png"
        Image.new("RGB", (24 + i, 16), colour).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def project_with_images(label_studio, image_files):
    """A project with three uploaded PNGs; returns (project, tasks in id order)."""
    project = label_studio.create_project("client tests")
    tasks = label_studio.upload_images(project["id"], image_files)
    assert len(tasks) == 3
    return project, tasks


def new_project_with_images(label_studio, image_files, title):
    project = label_studio.create_project(title)
    return project, label_studio.upload_images(project["id"], image_files)


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret and secret not in text


# --------------------------------------------------------------------------- authentication


def test_a_personal_access_token_is_a_jwt_used_as_bearer_after_refresh(label_studio, client):
    assert is_jwt(label_studio.pat)
    assert client.auth_scheme == "Bearer"
    project = label_studio.create_project("bearer auth")
    assert client.get_project(project["id"])["title"] == "bearer auth"


def test_a_rejected_access_token_is_refreshed_once_and_the_call_succeeds(label_studio, project_with_images):
    project, _ = project_with_images
    c = LabelStudioClient(label_studio.url, label_studio.pat)
    c.get_project(project["id"])
    first = c._access_token
    # Simulate an access token that the server no longer accepts although it looks fresh.
    bad = first[:-4] + ("AAAA" if not first.endswith("AAAA") else "BBBB")
    c._access_token = bad
    assert c.get_project(project["id"])["id"] == project["id"]
    assert c._access_token not in (None, bad)


def test_an_expired_access_token_is_refreshed_before_the_call(label_studio, project_with_images):
    project, _ = project_with_images
    c = LabelStudioClient(label_studio.url, label_studio.pat)
    c.get_project(project["id"])
    c._access_token = "expired.not.valid"
    c._access_expires_at = 0.0
    assert c.get_project(project["id"])["id"] == project["id"]
    assert c._access_token != "expired.not.valid"


def test_concurrent_calls_share_one_token_refresh(label_studio, project_with_images):
    project, _ = project_with_images
    c = LabelStudioClient(label_studio.url, label_studio.pat)
    errors: list[Exception] = []

    def call():
        try:
            c.get_project(project["id"])
        except Exception as exc:  # pragma: no cover - reported by the assert
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_a_legacy_token_is_sent_as_token_header_when_legacy_tokens_are_enabled(label_studio, project_with_images):
    project, _ = project_with_images
    assert label_studio.legacy_token and not is_jwt(label_studio.legacy_token)
    c = LabelStudioClient(label_studio.url, label_studio.legacy_token)
    assert c.auth_scheme == "Token"
    assert c.get_project(project["id"])["id"] == project["id"]


def test_a_legacy_token_is_rejected_with_a_hint_when_legacy_tokens_are_disabled(label_studio, project_with_images):
    project, _ = project_with_images
    c = LabelStudioClient(label_studio.url, label_studio.legacy_token)
    label_studio.set_legacy_tokens_enabled(False)
    try:
        with pytest.raises(LabelStudioAuthError) as info:
            c.get_project(project["id"])
    finally:
        label_studio.set_legacy_tokens_enabled(True)
    assert info.value.status_code == 401
    assert "Personal Access Token" in str(info.value)
    assert_no_secret(str(info.value), label_studio.legacy_token)


def test_an_invalid_personal_access_token_gives_an_auth_error_without_the_token(label_studio):
    bogus = label_studio.pat[:-6] + "abcdef"
    c = LabelStudioClient(label_studio.url, bogus)
    with pytest.raises(LabelStudioAuthError) as info:
        c.get_project(1)
    assert info.value.path == "/api/token/refresh/"
    assert not info.value.retryable
    assert_no_secret(str(info.value) + repr(info.value) + repr(c), bogus, label_studio.pat)


# --------------------------------------------------------------------------- projects and tasks


def test_get_and_patch_project_and_label_config(client, project_with_images):
    project, _ = project_with_images
    assert "<Image" in client.get_label_config(project["id"])
    updated = client.update_project(project["id"], description="ranked by FreeSel")
    assert updated["description"] == "ranked by FreeSel"


def test_a_missing_project_raises_not_found_which_is_not_retryable(client):
    with pytest.raises(LabelStudioNotFound) as info:
        client.get_project(987654)
    err = info.value
    assert err.status_code == 404 and not err.retryable
    assert "GET /api/projects/987654/" in str(err) and "404" in str(err)


def test_iter_tasks_pages_through_all_tasks_with_annotation_counts(label_studio, client, project_with_images):
    project, uploaded = project_with_images
    tasks = list(client.iter_tasks(project["id"], page_size=2))
    assert [t["id"] for t in tasks] == [t["id"] for t in uploaded]
    for task in tasks:
        assert task["data"]["image"].startswith(f"/data/upload/{project['id']}/")
        assert task["total_annotations"] == 0 and task["is_labeled"] is False
        assert "cancelled_annotations" in task and "total_predictions" in task

    # Label one task: the counts say so.
    labelled = uploaded[0]["id"]
    resp = label_studio.api(
        "POST",
        f"/api/tasks/{labelled}/annotations/",
        json={
            "result": [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]
        },
    )
    assert resp.status_code == 201, resp.text
    by_id = {t["id"]: t for t in client.iter_tasks(project["id"], page_size=2)}
    assert by_id[labelled]["total_annotations"] == 1 and by_id[labelled]["is_labeled"] is True


def test_labelled_task_ids_lists_only_tasks_with_an_annotation_that_was_not_skipped(label_studio, client, image_files):
    project, uploaded = new_project_with_images(label_studio, image_files, "labelled tasks")
    assert client.labelled_task_ids(project["id"]) == set()
    result = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]
    labelled, skipped = uploaded[0]["id"], uploaded[1]["id"]
    assert label_studio.api("POST", f"/api/tasks/{labelled}/annotations/", json={"result": result}).status_code == 201
    cancelled = {"result": [], "was_cancelled": True}
    assert label_studio.api("POST", f"/api/tasks/{skipped}/annotations/", json=cancelled).status_code == 201
    assert client.labelled_task_ids(project["id"]) == {labelled}


def test_get_tasks_by_ids_returns_only_those_tasks(client, project_with_images):
    project, uploaded = project_with_images
    wanted = [uploaded[2]["id"], uploaded[0]["id"]]
    assert sorted(t["id"] for t in client.get_tasks(project["id"], wanted)) == sorted(wanted)
    assert client.get_tasks(project["id"], []) == []
    assert client.get_task(uploaded[1]["id"])["id"] == uploaded[1]["id"]


# --------------------------------------------------------------------------- downloads


def test_an_uploaded_image_downloads_byte_identical(downloader, project_with_images, image_files):
    _, tasks = project_with_images
    for task, path in zip(tasks, image_files):
        assert downloader.task_file(task, "image") == path.read_bytes()


def test_an_absolute_url_on_the_label_studio_host_gets_the_auth_header(
    label_studio, downloader, project_with_images, image_files
):
    _, tasks = project_with_images
    assert downloader.download(label_studio.url + tasks[0]["data"]["image"]) == image_files[0].read_bytes()


def test_a_local_files_url_downloads_with_the_auth_header(label_studio, client, downloader, image_files):
    folder = label_studio.local_files_root / "local"
    folder.mkdir(exist_ok=True)
    (folder / "pic.png").write_bytes(image_files[1].read_bytes())
    project = label_studio.create_project("local files")
    label_studio.add_local_files_storage(project["id"], folder)
    [task_id] = label_studio.import_tasks(project["id"], [{"image": "/data/local-files/?d=local/pic.png"}])
    task = client.get_task(task_id)
    assert task["data"]["image"] == "/data/local-files/?d=local/pic.png"
    assert downloader.task_file(task) == image_files[1].read_bytes()


def test_downloads_over_the_byte_cap_are_refused(label_studio, project_with_images):
    _, tasks = project_with_images
    capped = Downloader(LabelStudioClient(label_studio.url, label_studio.pat), max_bytes=10)
    with pytest.raises(LabelStudioDownloadError, match="limit"):
        capped.task_file(tasks[0])


@pytest.mark.parametrize(
    "uri", ["file:///etc/passwd", "ftp://example.com/x.png", "data:image/png;base64,AAAA", "img.png"]
)
def test_file_and_other_schemes_are_refused(downloader, uri):
    with pytest.raises(LabelStudioDownloadError, match="refusing"):
        downloader.download(uri)


def test_cloud_uris_are_resolved_through_the_task_resolve_endpoint(client, downloader, project_with_images):
    _, tasks = project_with_images
    url, with_auth = downloader.resolve_url("s3://bucket/a b.png", task_id=tasks[0]["id"])
    assert url.startswith(f"{client.url}/tasks/{tasks[0]['id']}/resolve/?fileuri=") and with_auth
    # No S3 storage is connected in this project: Label Studio answers 404 for the URI.
    with pytest.raises(LabelStudioNotFound) as info:
        downloader.download("s3://bucket/a b.png", task_id=tasks[0]["id"])
    assert info.value.path == f"/tasks/{tasks[0]['id']}/resolve/"
    with pytest.raises(LabelStudioDownloadError, match="task id"):
        downloader.download("gs://bucket/x.png")


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    seen_headers: list[dict] = []

    def do_GET(self):  # noqa: N802
        type(self).seen_headers.append(dict(self.headers))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/image.png")
            self.end_headers()
            return
        body = b"third-party-bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_third_party_urls_are_downloaded_without_the_auth_header(downloader):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        _RecordingHandler.seen_headers.clear()
        assert downloader.download(f"{base}/image.png") == b"third-party-bytes"
        assert downloader.download(f"{base}/redirect") == b"third-party-bytes"
    finally:
        server.shutdown()
        server.server_close()
    assert len(_RecordingHandler.seen_headers) == 3
    for headers in _RecordingHandler.seen_headers:
        assert not any(k.lower() in ("authorization", "cookie") for k in headers)


# --------------------------------------------------------------------------- predictions and queue order


def test_uncertainty_sampling_serves_the_lowest_score_task_first(label_studio, client, image_files):
    project, tasks = new_project_with_images(label_studio, image_files, "queue order")
    scores = {tasks[0]["id"]: 0.9, tasks[1]["id"]: 0.1, tasks[2]["id"]: 0.5}
    created = client.import_predictions(
        project["id"],
        [{"task": tid, "result": [], "score": s, "model_version": "freesel-v1"} for tid, s in scores.items()],
        chunk_size=2,
    )
    assert created == 3
    assert label_studio.model_versions(project["id"]) == {"freesel-v1": 3}
    updated = client.update_project(project["id"], sampling="Uncertainty sampling", model_version="freesel-v1")
    assert updated["sampling"] == "Uncertainty sampling" and updated["model_version"] == "freesel-v1"
    nxt = label_studio.next_task(project["id"])
    assert nxt is not None and nxt["id"] == tasks[1]["id"]


def test_deleting_a_model_version_removes_only_its_predictions(label_studio, client, image_files):
    project, tasks = new_project_with_images(label_studio, image_files, "model versions")
    for version in ("old", "new"):
        client.import_predictions(
            project["id"], [{"task": t["id"], "result": [], "score": 0.5, "model_version": version} for t in tasks]
        )
    assert label_studio.model_versions(project["id"]) == {"old": 3, "new": 3}
    client.update_project(project["id"], model_version="new")
    assert label_studio.delete_model_version(project["id"], "old") == 3
    assert label_studio.model_versions(project["id"]) == {"new": 3}
    assert client.get_project(project["id"])["model_version"] == "new"
    assert all(t["total_predictions"] == 1 for t in client.iter_tasks(project["id"]))


def test_next_task_is_none_when_the_queue_is_empty(label_studio):
    project = label_studio.create_project("empty queue")
    assert label_studio.next_task(project["id"]) is None
    with pytest.raises(requests.HTTPError):
        label_studio.next_task(987654)


# --------------------------------------------------------------------------- webhooks


def test_webhook_registration_is_idempotent_and_deletable(label_studio, client, project_with_images):
    project, _ = project_with_images
    url = "http://127.0.0.1:9/webhook"
    first = client.register_webhook(project["id"], url)
    again = client.register_webhook(project["id"], url)
    assert again["id"] == first["id"]
    assert [h["id"] for h in client.list_webhooks(project["id"]) if h["url"] == url] == [first["id"]]
    assert first["actions"] == ["TASKS_CREATED"] and first["send_payload"] is True

    widened = client.register_webhook(project["id"], url, actions=["TASKS_CREATED", "TASKS_DELETED"])
    assert widened["id"] == first["id"] and sorted(widened["actions"]) == ["TASKS_CREATED", "TASKS_DELETED"]

    label_studio.delete_webhook(first["id"])
    assert all(h["url"] != url for h in client.list_webhooks(project["id"]))


# --------------------------------------------------------------------------- errors and secrets


def test_unreachable_label_studio_is_a_retryable_error_without_the_key(label_studio):
    from harness.label_studio import free_port

    c = LabelStudioClient(f"http://127.0.0.1:{free_port()}", label_studio.legacy_token, timeout=3)
    with pytest.raises(LabelStudioUnavailable) as info:
        c.get_project(1)
    assert info.value.retryable and info.value.status_code is None
    assert_no_secret(str(info.value) + repr(info.value), label_studio.legacy_token)


def test_the_api_key_and_access_token_never_appear_in_errors_or_repr(
    label_studio, client, downloader, project_with_images
):
    project, tasks = project_with_images
    errors: list[LabelStudioError] = []
    for call in (
        lambda: client.get_project(987654),
        lambda: client.update_project(project["id"], sampling="not a sampling mode"),
        lambda: client.import_predictions(987654, [{"task": 1, "result": [], "score": 0.1}]),
        lambda: downloader.download("/data/upload/does-not-exist.png"),
        lambda: downloader.download("file:///etc/passwd"),
    ):
        with pytest.raises(LabelStudioError) as info:
            call()
        errors.append(info.value)
    secrets = [label_studio.pat, client._access_token]
    texts = [str(e) + repr(e) + repr(e.args) + str(e.body_excerpt) for e in errors] + [repr(client)]
    for text in texts:
        assert_no_secret(text, *secrets)
        assert "eyJ" not in text
