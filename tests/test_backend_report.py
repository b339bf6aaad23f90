"""Copies and the selection report in the backend: a real Label Studio 1.23.2, a real
Redis, gunicorn and a real RQ worker, the tiny random-init ViT. One project: six distinct scenes,
two of them uploaded a second time (exact copies), one task whose image cannot be downloaded;
budget 6, so the picks can cover every distinct scene exactly once."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest
import redis
import requests

from freesel_backend.engine.copies import DEFAULT_COPY_THRESHOLD
from freesel_backend.engine.ranking import NOT_PICKED
from freesel_backend.server.writeout.plan import PICK_FLAG
from harness.backend import REPO_ROOT, BackendProcesses, backend_env, idle, wait_for
from freesel_backend.cli.samples import scene_image
from harness.label_studio import LABEL_CONFIG
from tests.test_end_to_end import current_ranking, settled

DISTINCT_SCENES = 6
COPIED_SCENES = (0, 1)


@pytest.fixture(scope="module")
def project(label_studio, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    redis.Redis.from_url(redis_url).flushdb()
    folder = tmp_path_factory.mktemp("report-backend")
    scenes = []
    for seed in range(DISTINCT_SCENES):
        scene_image(seed).save(folder / f"scene_{seed}.png")
        scenes.append(folder / f"scene_{seed}.png")
    backend = BackendProcesses(
        backend_env(redis_url, label_studio.url, label_studio.pat, folder / "model_dir"), folder
    ).start()
    try:
        pid = label_studio.create_project("FreeSel report", LABEL_CONFIG)["id"]
        originals = [t["id"] for t in label_studio.upload_images(pid, scenes)]
        copies = [t["id"] for t in label_studio.upload_images(pid, [scenes[i] for i in COPIED_SCENES])]
        broken = label_studio.import_tasks(pid, [{"image": "http://127.0.0.1:9/missing.png"}])
        started = time.time()
        response = label_studio.api("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "FreeSel",
                                                             "extra_params": json.dumps({"budget": DISTINCT_SCENES})})
        assert response.status_code == 201, response.text
        settled(backend, pid, started)
        yield {"backend": backend, "id": pid, "originals": originals, "copies": copies, "broken": broken[0]}
    except BaseException:
        print(backend.logs())
        raise
    finally:
        backend.stop()
        redis.Redis.from_url(redis_url).flushdb()


def flags(ls, project_id: int) -> dict[int, dict[str, Any]]:
    tasks = ls.api("GET", "/api/tasks/", params={"project": project_id, "page_size": 1000}).json()["tasks"]
    return {t["id"]: t["data"] for t in tasks}


def test_exact_copies_uploaded_twice_are_listed_as_copy_groups_in_status(project) -> None:
    status = project["backend"].status(project["id"])
    expected = [[project["originals"][scene], copy] for scene, copy in zip(COPIED_SCENES, project["copies"])]
    assert status["settings"]["copy_threshold"] == DEFAULT_COPY_THRESHOLD
    assert status["copies"] == {"threshold": DEFAULT_COPY_THRESHOLD, "groups": 2, "copies": 2, "listed": expected}


def test_the_data_managers_filter_on_freesel_copy_of_finds_every_copy_and_only_copies(label_studio, project) -> None:
    pid = project["id"]
    representative = dict(zip(project["copies"], (project["originals"][scene] for scene in COPIED_SCENES)))

    def filtered(operator: str, value: Any, kind: str) -> list[int]:
        item = {"filter": "filter:tasks:data.freesel_copy_of", "operator": operator, "value": value, "type": kind}
        query = json.dumps({"filters": {"conjunction": "and", "items": [item]}})
        answer = label_studio.api("GET", "/api/tasks/", params={"project": pid, "query": query, "page_size": 100})
        assert answer.status_code == 200, answer.text
        return sorted(task["id"] for task in answer.json()["tasks"])

    columns = label_studio.api("GET", "/api/dm/columns/", params={"project": pid}).json()["columns"]
    assert any(column["id"] == "freesel_copy_of" and column["parent"] == "data" for column in columns)
    assert filtered("empty", False, "Number") == sorted(representative)  # "is not empty": every copy
    first_copy = project["copies"][0]
    assert filtered("equal", representative[first_copy], "Number") == [first_copy]  # the copies of one task
    data = flags(label_studio, pid)
    assert {task_id for task_id, fields in data.items() if "freesel_copy_of" in fields} == set(representative)


def test_one_member_of_each_group_is_picked_and_the_other_is_flagged_as_its_near_duplicate(
    label_studio, project
) -> None:
    data = flags(label_studio, project["id"])
    picked = {task_id for task_id, fields in data.items() if fields.get("freesel") == PICK_FLAG}
    assert len(picked) == DISTINCT_SCENES
    for scene, copy in zip(COPIED_SCENES, project["copies"]):
        group = {project["originals"][scene], copy}
        (chosen,) = group & picked  # never both picked while distinct scenes remain: the budget covers every scene once
        (other,) = group - picked
        assert data[other]["freesel"] == f"{NOT_PICKED} (near-duplicate of task {chosen})"
    assert data[project["broken"]]["freesel"].startswith("FreeSel could not use this image: image download failed")


def report(backend: BackendProcesses, project_id: int) -> requests.Response:
    return backend.admin("GET", project_id, "report")


def test_report_is_built_by_a_worker_then_served_as_self_contained_html_until_the_next_selection(
    label_studio, project, tmp_path
) -> None:
    backend, pid = project["backend"], project["id"]
    first, second = report(backend, pid), report(backend, pid)
    assert first.status_code == 202 and first.json()["status"] == "building" and first.headers["Retry-After"]
    if second.status_code == 202:  # still being built: the same job answers
        assert second.json()["job"] == first.json()["job"]

    served = wait_for(lambda: (r := report(backend, pid)).status_code == 200 and r, 120, "the report job")
    assert served.headers["Content-Type"].startswith("text/html")
    assert served.headers["Content-Security-Policy"].startswith("default-src 'none'")
    html = served.text
    picks = current_ranking(label_studio, pid)[:DISTINCT_SCENES]
    cells = re.findall(r'<div class="cell" id="pick-(\d+)".*?<div class="name"[^>]*>(.*?)</div>', html, re.S)
    assert cells == [(str(rank), f"task {task_id}") for rank, task_id in enumerate(picks, start=1)]
    markup = re.sub(r"<script>.*?</script>", "", html, flags=re.S)
    assert re.findall(r'<img[^>]+src="(?!data:image/jpeg;base64,)', markup) == []
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<link" not in html and "url(" not in html
    failures = html[html.index('id="failures"') : html.index('id="settings"')]
    assert f"task {project['broken']}" in failures and "image download failed" in failures
    assert "Copies (2 groups)" in html and "vit_tiny_patch16_224+random-init" in html
    assert html.count('class="detail"') == 4  # the patch views: the worker's extractor made these patterns

    out = tmp_path / "report.html"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "freesel_backend",
            "project",
            str(pid),
            "report",
            "--url",
            backend.url,
            "--out",
            str(out),
        ],
        cwd=REPO_ROOT,
        env=backend.env,  # LABEL_STUDIO_API_KEY: the CLI's credential
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert out.read_text(encoding="utf-8") == html

    before = time.time()
    backend.post(pid, "reselect")
    settled(backend, pid, before)
    assert report(backend, pid).status_code == 202  # a new selection run: its own report is built


def test_disable_removes_the_flags_and_freesel_copy_of_from_every_task(label_studio, project) -> None:
    backend, pid = project["backend"], project["id"]
    assert any("freesel_copy_of" in fields for fields in flags(label_studio, pid).values())

    backend.post(pid, "disable")
    wait_for(lambda: idle(backend.status(pid)), 120, "cleanup after disable")

    left = {task_id: sorted(set(fields) - {"image"}) for task_id, fields in flags(label_studio, pid).items()}
    assert left == {task_id: [] for task_id in left}
