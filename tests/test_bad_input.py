"""Bad input end to end: a real Label Studio project full of junk, served by real gunicorn and a
real worker. Each bad task gets its own specific error (in the status and in the task's
``freesel`` field, a Data Manager column); every good task is still ranked."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import requests
from PIL import Image
from rq import Queue

from freesel_backend.server.settings import FEATURES_QUEUE
from freesel_backend.server.store import Store
from freesel_backend.engine.ranking import FAILURE_FLAG
from harness.backend import BackendProcesses, backend_env, idle, run_worker_burst, wait_for
from harness.label_studio import LABEL_CONFIG
from harness.local_http import LocalHttpServer, content, encoded, hang, redirect
from tests.helpers import noise_image, write_noise_images
from tests.test_images import png_header_claiming

pytestmark = pytest.mark.slow

TEXT_ONLY_CONFIG = (
    '<View><Text name="text" value="$text"/><Choices name="c" toName="text"><Choice value="a"/></Choices></View>'
)


def odd_but_valid_images() -> dict[str, bytes]:
    rgb = noise_image(7)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [noise_image(8), noise_image(9)]
    return {
        "cmyk.jpg": encoded(rgb.convert("CMYK"), "JPEG"),
        "deep.png": encoded(Image.fromarray((np.arange(4800).reshape(60, 80) * 13).astype(np.uint16)), "PNG"),
        "palette.png": encoded(rgb.convert("P"), "PNG"),
        "grey.png": encoded(rgb.convert("L"), "PNG"),
        "alpha.png": encoded(rgb.convert("RGBA"), "PNG"),
        "animated.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "rotated.jpg": encoded(rgb, "JPEG", exif=exif.tobytes()),
    }


# file name -> (bytes, the error its task must show)
BAD_UPLOADS = {
    "truncated.jpg": (encoded(noise_image(1), "JPEG")[:300], "corrupt or truncated"),
    "empty.jpg": (b"", "empty file"),
    "notes.jpg": (b"just some text, not pixels\n", "not an image file"),
    "bomb.png": (png_header_claiming(30_000, 30_000), "image too large.*refused before decoding"),
}


@pytest.fixture
def junk_hosts():
    with LocalHttpServer() as host:
        host.routes.update({
            "/gone.png": lambda request: (404, {"Content-Type": "text/plain"}, b"no such file"),
            "/slow.png": hang(8),
            "/loop.png": redirect(f"{host.url}/loop.png"),
            "/login.png": content(b"<!DOCTYPE html><html><body>please log in</body></html>", "text/html"),
        })
        yield host


def test_a_project_full_of_junk_ranks_every_good_task_and_names_each_bad_ones_error(
    label_studio, redis_connection, redis_url, tmp_path, junk_hosts
):
    ls = label_studio
    pid = ls.create_project("bad input", LABEL_CONFIG)["id"]
    folder = tmp_path / "uploads"
    folder.mkdir()
    for name, data in {**odd_but_valid_images(), **{n: d for n, (d, _) in BAD_UPLOADS.items()}}.items():
        (folder / name).write_bytes(data)
    good = ls.upload_images(pid, write_noise_images(tmp_path / "good", 4)) + ls.upload_images(
        pid, [folder / n for n in odd_but_valid_images()]
    )
    bad_uploads = {name: ls.upload_images(pid, [folder / name])[0]["id"] for name in BAD_UPLOADS}
    host = junk_hosts.url
    junk = {
        "404": ({"image": f"{host}/gone.png"}, "image download failed: GET http://127.0.0.1/gone.png: HTTP 404"),
        "timeout": ({"image": f"{host}/slow.png"}, "image download failed: .*(timed out|longer than 2 s)"),
        "redirect loop": ({"image": f"{host}/loop.png"}, "image download failed: .*too many redirects"),
        "html": ({"image": f"{host}/login.png"}, "HTML page"),
        "no image field": ({"text": "hello"}, "task has no 'image' field in its data"),
        "number": ({"image": 42}, r"data\['image'\] is a int, not an image URL"),
        "list": ({"image": ["a.png"]}, r"data\['image'\] is a list, not an image URL"),
        "file uri": ({"image": "file:///etc/passwd"}, "refusing to download a 'file' URI"),
    }
    # Label Studio validates imports against the config, so odd data is written afterwards (as
    # an edit or a config change would leave it).
    junk_ids = dict(zip(junk, ls.import_tasks(pid, [{"image": "placeholder.png"} for _ in junk])))
    for name, (data, _) in junk.items():
        assert ls.api("PATCH", f"/api/tasks/{junk_ids[name]}/", json={"data": data}).status_code == 200
    expected = {bad_uploads[n]: message for n, (_, message) in BAD_UPLOADS.items()}
    expected.update({junk_ids[name]: message for name, (_, message) in junk.items()})

    env = {**backend_env(redis_url, ls.url, ls.pat, tmp_path / "model_dir"),
           "FREESEL_ALLOW_PRIVATE_DOWNLOADS": "true", "FREESEL_DOWNLOAD_TIMEOUT": "2"}
    backend = BackendProcesses(env, tmp_path).start()
    try:
        assert (
            ls.api("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "FreeSel"}).status_code == 201
        )
        status = wait_for(lambda: (s := backend.status(pid)) and idle(s) and s["ranked"] and s, 300, "ranking")
    except BaseException:
        print(backend.logs())
        raise
    finally:
        backend.stop()

    reasons = {failure["task"]: failure["reason"] for failure in status["failures"]}
    assert sorted(reasons) == sorted(expected)
    for task_id, message in expected.items():
        assert re.search(message, reasons[task_id]), (task_id, reasons[task_id], message)
    assert status["patterns_done"] == status["ranked"] == len(good)
    predictions = ls.api("GET", "/api/predictions/", params={"project": pid}).json()
    assert sorted(p["task"] for p in predictions) == sorted(t["id"] for t in good)
    for task_id, message in expected.items():  # the Data Manager's freesel column says why
        shown = ls.api("GET", f"/api/tasks/{task_id}/").json()["data"]["freesel"]
        assert shown == FAILURE_FLAG + reasons[task_id]


def test_a_label_config_without_an_image_is_refused_at_connect_with_the_fix(
    label_studio, redis_connection, redis_url, tmp_path
):
    ls = label_studio
    pid = ls.create_project("text only", TEXT_ONLY_CONFIG)["id"]
    backend = BackendProcesses(backend_env(redis_url, ls.url, ls.pat, tmp_path / "model_dir"), tmp_path).start(
        workers=0
    )
    try:
        direct = requests.post(
            f"{backend.url}/setup", json={"project": f"{pid}.1", "schema": TEXT_ONLY_CONFIG}, timeout=30
        )
        assert direct.status_code == 400 and 'no <Image value="$field"> tag' in direct.json()["error"]
        through_ls = ls.api("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "FreeSel"})
        print("Label Studio's answer:", through_ls.status_code, through_ls.text[:300])
        assert ls.api("GET", "/api/webhooks/", params={"project": pid}).json() == []  # nothing registered
    finally:
        backend.stop()


def test_predict_with_thousands_of_tasks_answers_at_once_and_queues_pattern_jobs_for_them_all(
    redis_connection, redis_url, tmp_path
):
    env = backend_env(redis_url, "http://127.0.0.1:9", "key-" + "k" * 20, tmp_path / "model_dir")
    env["FREESEL_CHUNK_SIZE"] = "64"
    backend = BackendProcesses(env, tmp_path).start(workers=0)
    try:
        tasks = [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(1, 5001)]
        response = requests.post(f"{backend.url}/predict", json={"project": "3.1", "tasks": tasks}, timeout=60)
    finally:
        backend.stop()
    assert response.status_code == 200 and response.json()["results"] == [[] for _ in tasks]
    # every task waits for patterns; each job draws its 64 when it starts; rankings follow the patterns
    jobs = Queue(FEATURES_QUEUE, connection=redis_connection).get_jobs()
    assert [job.args for job in jobs] == [(3, 64)] * math.ceil(5000 / 64)
    assert Store(redis_connection).pending_tasks(3) == set(range(1, 5001))


def test_tasks_of_a_project_that_does_not_exist_are_dropped_its_status_and_enable_are_404(
    label_studio, redis_connection, redis_url, tmp_path
):
    env = backend_env(redis_url, label_studio.url, label_studio.pat, tmp_path / "model_dir")
    env.update(BASIC_AUTH_USER="operator", BASIC_AUTH_PASS="pw")  # the operator's credential sees every project
    backend = BackendProcesses(env, tmp_path).start(workers=0)
    try:
        missing = 987654
        response = requests.post(
            f"{backend.url}/predict", json={"project": f"{missing}.1", "tasks": [{"id": 1}, {"id": 2}]},
            auth=("operator", "pw"), timeout=30,
        )
        assert response.status_code == 200
        run_worker_burst(env)
        status = backend.admin("GET", missing, "status")
        unknown = backend.admin("GET", 123456, "status")
        enable = backend.admin("POST", 123456, "enable", json={})
        settings = backend.admin("PATCH", 123456, "settings", json={"budget": 5})
        still_unknown = backend.admin("GET", 123456, "status")
    finally:
        backend.stop()
    assert status.status_code == 200 and status.json()["tasks"] == 0 and status.json()["failed"] == 0
    assert unknown.status_code == 404 and "not known to FreeSel" in unknown.json()["error"]
    assert enable.status_code == 404 and "not found in Label Studio" in enable.json()["error"]
    assert settings.status_code == 404 and still_unknown.status_code == 404
