"""Pattern jobs: images downloaded over real HTTP with latency, a bounded number at once, while
the model runs; each job's time per stage summed per project in a real Redis and shown in status."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from freesel_backend.cli.project import describe_status
from freesel_backend.server.admin import status
from freesel_backend.server.jobs import extract_and_store
from freesel_backend.server.task_images import extractor_for, version_of
from freesel_backend.server.services import Services
from freesel_backend.server.settings import ProjectSettings, Settings
from harness.local_http import LocalHttpServer, Reply, Request, Route
from tests.helpers import write_noise_images

PROJECT = 4
LATENCY_S = 0.2
STAGE_KEYS = ["tasks", "wall_s", "download_s", "decode_s", "forward_s", "store_s", "rate"]


class SlowImageHost:
    """Serves image files after ``LATENCY_S`` each and counts the downloads in flight at once."""

    def __init__(self, paths: list[Path]) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self.server = LocalHttpServer({f"/{path.name}": self._slow(path.read_bytes()) for path in paths})

    def _slow(self, data: bytes) -> Route:
        def reply(request: Request) -> Reply:
            with self._lock:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            time.sleep(LATENCY_S)
            with self._lock:
                self.in_flight -= 1
            return 200, {"Content-Type": "image/jpeg"}, data

        return reply


@pytest.fixture
def image_host(tmp_path):
    host = SlowImageHost(write_noise_images(tmp_path / "images", 9))
    with host.server:
        yield host


def tiny_model_services(redis_connection, tmp_path: Path, download_workers: int) -> Services:
    settings = Settings(
        label_studio_url="http://127.0.0.1:9", label_studio_api_key="unused", allow_private_downloads=True,
        model="vit_tiny_patch16_224", test_random_init=True, test_image_size=64, device="cpu", batch_size=4,
        download_workers=download_workers, model_dir=tmp_path / "model_dir",
    )
    return Services(settings, redis_connection)


def run_pattern_job(services: Services, task_urls: dict[int, str]) -> tuple[dict, dict]:
    extractor = extractor_for(services.settings, ProjectSettings())
    services.store.use_patterns_version(PROJECT, version_of(extractor))
    tasks = [{"id": task_id, "data": {"image": url}} for task_id, url in task_urls.items()]
    return extract_and_store(services, PROJECT, extractor, tasks, "image", started=time.monotonic())


def test_a_pattern_job_downloads_at_most_download_workers_images_at_once_and_gets_every_one(
    redis_connection, tmp_path, image_host
):
    services = tiny_model_services(redis_connection, tmp_path, download_workers=3)
    urls = {task_id: f"{image_host.server.url}/img_{task_id:03d}.jpg" for task_id in range(9)}

    patterns, failures = run_pattern_job(services, urls)

    assert sorted(patterns) == list(range(9)) and failures == {}
    assert image_host.most_in_flight == 3  # the model's two batches ahead wanted more than three at once
    assert len(image_host.server.requests) == 9


def test_a_failing_download_is_that_tasks_failure_only(redis_connection, tmp_path, image_host):
    services = tiny_model_services(redis_connection, tmp_path, download_workers=4)
    urls = {task_id: f"{image_host.server.url}/img_{task_id:03d}.jpg" for task_id in range(6)}
    urls[3] = f"{image_host.server.url}/missing.jpg"

    patterns, failures = run_pattern_job(services, urls)

    assert sorted(patterns) == [0, 1, 2, 4, 5] and list(failures) == [3]
    assert "image download failed" in failures[3] and "404" in failures[3]


def test_status_shows_the_pattern_jobs_tasks_and_time_per_stage_summed_over_the_jobs(
    redis_connection, tmp_path, image_host
):
    services = tiny_model_services(redis_connection, tmp_path, download_workers=2)
    url = image_host.server.url
    assert status(services, PROJECT)["pattern_stages"] is None  # before any pattern job

    run_pattern_job(services, {task_id: f"{url}/img_{task_id:03d}.jpg" for task_id in range(5)})
    run_pattern_job(services, {5: f"{url}/img_005.jpg", 6: f"{url}/img_006.jpg", 7: f"{url}/missing.jpg"})
    stages = status(services, PROJECT)["pattern_stages"]

    assert list(stages) == STAGE_KEYS
    assert stages["tasks"] == 8  # the failed download counts: it was the job's work too
    assert stages["download_s"] >= 7 * LATENCY_S  # every image waited for the slow host (the 404 did not)
    assert stages["forward_s"] > 0 and stages["store_s"] > 0 and stages["decode_s"] > 0
    assert stages["forward_s"] + stages["store_s"] <= stages["wall_s"]  # one after the other in the job
    assert stages["rate"] == pytest.approx(8 / stages["wall_s"], abs=0.01)
    assert "pattern jobs: " in describe_status(status(services, PROJECT))
