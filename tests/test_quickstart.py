"""`python -m freesel_backend quickstart FOLDER` into a running Label Studio 1.23.2 and a running
backend (real Redis, gunicorn, worker): batches with a progress bar, unreadable files listed and
skipped, a second run uploads only what is missing, the queue follows the ranking, and a
RectangleLabels config puts the project on the detection preset."""

from __future__ import annotations

import pytest

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from freesel_backend.cli.quickstart import scan_folder, upload_name
from harness.backend import REPO_ROOT, BackendProcesses, backend_env
from tests.test_end_to_end import current_ranking


def write_tiny_images(folder: Path, count: int, start: int = 0) -> None:
    """``count`` distinct 24x24 PNG files in two sub-folders."""
    rng = np.random.default_rng(start)
    for index in range(start, start + count):
        sub = folder / ("a" if index % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"img {index:04d}.png")


def write_unreadable(folder: Path) -> None:
    (folder / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")


def test_upload_names_keep_the_sub_folder_and_only_characters_label_studio_keeps(tmp_path):
    assert upload_name(tmp_path / "a" / "img 0001.png", tmp_path) == "a__img_0001.png"
    write_tiny_images(tmp_path, 3)
    write_unreadable(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    scan = scan_folder(tmp_path)
    assert sorted(scan.readable) == ["a__img_0001.png", "b__img_0000.png", "b__img_0002.png"]
    assert sorted(path.name for path, _ in scan.unreadable) == ["empty.png", "truncated.jpg"]
    assert all(reason for _, reason in scan.unreadable)


@pytest.mark.slow
def test_quickstart_refuses_more_files_per_request_than_label_studio_takes(tmp_path):
    done = run_quickstart(dict(os.environ), str(tmp_path), "--batch-size", "101", "--label-studio-url", "http://localhost:1",
                          "--api-key", "k")
    assert done.returncode == 2 and "--batch-size must be 1..100" in done.stderr


def run_quickstart(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "freesel_backend", "quickstart", *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_quickstart_uploads_500_images_in_batches_skips_unreadable_ones_and_a_second_run_only_the_new_ones(
        label_studio, redis_connection, redis_url, tmp_path):
    ls = label_studio
    env = backend_env(redis_url, ls.url, ls.pat, tmp_path / "model_dir")
    env["FREESEL_CHUNK_SIZE"] = "100"
    backend = BackendProcesses(env, tmp_path).start()
    try:
        folder = tmp_path / "my images"
        write_tiny_images(folder, 500)
        write_unreadable(folder)
        options = (
            "--task",
            "detection",
            "--title",
            "My 500",
            "--backend-url",
            backend.url,
            "--batch-size",
            "64",
            "--settings",
            json.dumps({"budget": 10}),
        )
        first = run_quickstart(backend.env, str(folder), *options)
        assert first.returncode == 0, first.stderr[-3000:]
        assert (
            "skipped (unreadable):" in first.stderr and "truncated.jpg" in first.stderr and "empty.png" in first.stderr
        )
        assert "upload: 100%" in first.stderr and "500/500" in first.stderr
        assert "FreeSel ranked 500 tasks of project 'My 500'" in first.stdout
        assert "Label All Tasks serves FreeSel's picks first" in first.stdout
        link = re.search(r"Selection report \(this link opens it for a day\): (\S+)", first.stdout).group(1)
        assert requests.get(link, timeout=60).status_code in (200, 202)  # a browser needs no credential
        assert requests.get(link.split("?")[0], timeout=60).status_code == 401
        project = next(
            p
            for p in ls.api("GET", "/api/projects/", params={"page_size": 100}).json()["results"]
            if p["title"] == "My 500"
        )
        assert "RectangleLabels" in project["label_config"]
        status = backend.status(project["id"])
        assert status["preset"]["task"] == "detection" and "RectangleLabels" in status["preset"]["reason"]
        in_effect = status["settings"]
        assert (in_effect["patterns_per_image"], in_effect["attention_ratio"], in_effect["strategy"]) == (5, 0.5, "fds")
        ranking = current_ranking(ls, project["id"])
        assert len(ranking) == 500
        assert ls.api("GET", f"/api/projects/{project['id']}/next").json()["id"] == ranking[0]

        write_tiny_images(folder, 20, start=500)
        second = run_quickstart(backend.env, str(folder), *options)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "500 images already in the project: skipped" in second.stderr and "20/20" in second.stderr
        assert "FreeSel ranked 520 tasks" in second.stdout
        tasks = ls.api("GET", "/api/tasks/", params={"project": project["id"], "page_size": 1}).json()["total"]
        assert tasks == 520
        assert len(ls.api("GET", "/api/ml", params={"project": project["id"]}).json()) == 1
    except BaseException:
        print(backend.logs())
        raise
    finally:
        backend.stop()
