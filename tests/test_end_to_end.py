"""End to end against a real Label Studio 1.23.2, a real Redis, gunicorn and a real RQ worker:
connect -> patterns -> ranking -> predictions -> /next serves FreeSel's picks first."""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import freesel_backend
from harness.backend import BackendProcesses, backend_env, idle, wait_for
from harness.label_studio import LABEL_CONFIG, annotate

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_group(
    folder: Path, name: str, count: int, colour: tuple[int, int, int], pattern: str, seed: int
) -> list[Path]:
    """Images of one look (colour + texture) with small noise: near-duplicates of each other."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    y, x = np.mgrid[0:96, 0:96]
    texture = {
        "flat": np.zeros((96, 96)),
        "stripes": (x // 8 % 2) * 120.0,
        "checks": ((x // 12 + y // 12) % 2) * 160.0,
    }[pattern]
    for index in range(count):
        pixels = np.asarray(colour, float)[None, None, :] + texture[:, :, None] + rng.normal(0, 6, (96, 96, 3))
        path = folder / f"{name}_{index:02d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def current_ranking(ls, project_id: int) -> list[int]:
    """Unlabelled task ids ordered by the score of the project's current model version."""
    project = ls.api("GET", f"/api/projects/{project_id}/").json()
    predictions = ls.api("GET", "/api/predictions/", params={"project": project_id}).json()
    labelled = {
        t["id"]
        for t in ls.api("GET", "/api/tasks/", params={"project": project_id, "page_size": 1000}).json()["tasks"]
        if t["is_labeled"]
    }
    mine = [p for p in predictions if p["model_version"] == project["model_version"] and p["task"] not in labelled]
    return [p["task"] for p in sorted(mine, key=lambda p: p["score"])]


def settled(backend: BackendProcesses, project_id: int, after: float) -> dict:
    """Wait until the project's jobs are done and a selection finished after ``after``."""

    def check():
        status = backend.status(project_id)
        last = status["last_selection_at"]
        done = idle(status) and last and datetime.datetime.fromisoformat(last).timestamp() >= after
        return status if done else None

    return wait_for(check, 240, "the worker to finish patterns and selection")


@pytest.fixture
def backend(label_studio, redis_connection, redis_url, tmp_path):
    env = backend_env(redis_url, label_studio.url, label_studio.pat, tmp_path / "model_dir")
    processes = BackendProcesses(env, tmp_path).start()
    try:
        yield processes
    except BaseException:
        print(processes.logs())
        raise
    finally:
        processes.stop()


def test_queue_serves_freesel_picks_in_order_new_unlike_images_jump_ahead_and_disable_restores(
    label_studio, backend, tmp_path
):
    ls = label_studio
    project = ls.create_project("FreeSel end to end", LABEL_CONFIG)
    pid = project["id"]
    previous = (project["sampling"], project.get("model_version") or "")
    images = write_group(tmp_path / "a", "red", 6, (200, 40, 40), "flat", 1) + write_group(
        tmp_path / "b", "green", 4, (40, 160, 40), "stripes", 2
    )
    ls.upload_images(pid, images)

    started = time.time()
    response = ls.api("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "FreeSel backend",
                                               "extra_params": json.dumps({"strategy": "fds", "seed": 3})})
    assert response.status_code == 201, response.text
    status = settled(backend, pid, started)
    print(f"connect -> queue reordered: {time.time() - started:.1f} s for {len(images)} tasks")
    assert status["patterns_done"] == len(images) and status["failed"] == 0
    assert status["settings"]["strategy"] == "fds"
    project = ls.api("GET", f"/api/projects/{pid}/").json()
    assert project["sampling"] == "Uncertainty sampling" and project["model_version"].startswith("freesel-")

    first_ranking = current_ranking(ls, pid)
    assert len(first_ranking) == len(images)
    served = []
    for _ in range(3):  # farthest-first: labelling the picks in order leaves the rest of the order unchanged
        before = time.time()
        task = ls.api("GET", f"/api/projects/{pid}/next").json()
        assert task["id"] == current_ranking(ls, pid)[0]
        assert task["data"]["freesel"] == "FreeSel pick"
        served.append(task["id"])
        annotate(ls, task["id"])
        settled(backend, pid, before)
    assert served == first_ranking[:3]
    annotation = ls.api("GET", f"/api/tasks/{served[0]}/annotations/").json()[0]
    assert all(region["from_name"] == "choice" for region in annotation["result"])  # the flag is not in it

    version = ls.api("GET", f"/api/projects/{pid}/").json()["model_version"]
    before = time.time()
    new_ids = [
        t["id"] for t in ls.upload_images(pid, write_group(tmp_path / "c", "blue", 3, (30, 30, 220), "checks", 4))
    ]
    status = settled(backend, pid, before)
    print(f"import -> queue reordered: {time.time() - before:.1f} s for {len(new_ids)} new tasks")
    remaining = current_ranking(ls, pid)
    assert remaining[0] in new_ids, (
        remaining,
        new_ids,
        sorted(
            (p["score"], p["task"], p["model_version"][-6:])
            for p in ls.api("GET", "/api/predictions/", params={"project": pid}).json()
        ),
    )
    # the new tasks got their predictions under the live version: nothing else was rewritten
    assert ls.api("GET", f"/api/projects/{pid}/").json()["model_version"] == version
    assert sorted(remaining) == sorted(set(remaining)) and set(new_ids) <= set(remaining)
    group_of = {task: group for group in status["copies"]["listed"] for task in group}
    for task in new_ids:  # ahead of the old looks, unless a copy of a task served before it
        position = remaining.index(task)
        earlier_twin = any(t in remaining[:position] for t in group_of.get(task, ()))
        assert position < len(remaining) / 2 or earlier_twin, (task, remaining, group_of)
    assert ls.api("GET", f"/api/projects/{pid}/next").json()["id"] == remaining[0]

    backend.post(pid, "disable")
    project = ls.api("GET", f"/api/projects/{pid}/").json()
    assert (project["sampling"], project.get("model_version") or "") == previous
    wait_for(lambda: idle(backend.status(pid)), 120, "cleanup after disable")
    versions = ls.api("GET", f"/api/projects/{pid}/model-versions/").json()
    assert not [v for v in versions if str(v).startswith("freesel-")]


def test_a_later_task_setting_switches_the_preset_and_recomputes_the_patterns(label_studio, backend, tmp_path):
    ls = label_studio
    pid = ls.create_project("FreeSel task setting", LABEL_CONFIG)["id"]  # Choices only: the classification preset
    images = write_group(tmp_path / "a", "red", 3, (200, 40, 40), "flat", 1)
    images += write_group(tmp_path / "b", "blue", 3, (30, 30, 220), "checks", 2)
    ls.upload_images(pid, images)
    started = time.time()
    response = ls.api("POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "FreeSel backend"})
    assert response.status_code == 201, response.text
    before = settled(backend, pid, started)
    assert before["preset"]["task"] == "classification" and "Choices" in before["preset"]["reason"]
    classification_model_version = ls.api("GET", f"/api/projects/{pid}/").json()["model_version"]

    changed = time.time()
    response = backend.admin("PATCH", pid, "settings", json={"task": "detection"})
    assert response.status_code == 200, response.text
    after = settled(backend, pid, changed)
    detection = freesel_backend.preset("detection")
    assert after["preset"]["task"] == "detection" and after["preset"]["reason"] == "set per project"
    assert {field: after["settings"][field] for field in detection} == detection
    assert before["settings"]["patterns_per_image"] != detection["patterns_per_image"]
    # New pattern settings are a new patterns version: every task's patterns were extracted again.
    assert after["patterns_version"] != before["patterns_version"]
    assert after["patterns_done"] == len(images) and after["failed"] == 0
    assert ls.api("GET", f"/api/projects/{pid}/").json()["model_version"] != classification_model_version
    assert len(current_ranking(ls, pid)) == len(images)
