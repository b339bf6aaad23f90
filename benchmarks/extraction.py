"""The backend's patterns rate end to end against the bare model forward, side by side in one run:
``python -m benchmarks.extraction``.

End to end: JPEGs served over HTTP by a local server (optionally answering each request after a
delay, as slower storage would) -> downloaded and decoded in the pattern job's threads -> the
model and the patterns -> Redis (a redis-server of its own), through the pattern job's code
(``jobs.extract_and_store``, in chunks of ``FREESEL_CHUNK_SIZE`` tasks as the jobs take them)
with the process settings' defaults. Only Label Studio's task listing is left out: the tasks
are given. Bare: ``forward_features`` on random batches of the same size (performance.py's
measure), before and after each end-to-end run: on a shared machine each run is compared with
the forward's rate around it. Each stage's share comes from the stage sums the jobs record (``pattern_stages`` in
the project status).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
import torch

from benchmarks.performance import PHOTO_SIZE, _bare_throughput
from freesel_backend.cli.samples import write_scenes
from freesel_backend.server.jobs import extract_and_store
from freesel_backend.server.task_images import extractor_for, version_of
from freesel_backend.server.pattern_stages import stages_summary
from freesel_backend.server.redis_server import RedisServer
from freesel_backend.server.services import Services
from freesel_backend.server.settings import ProjectSettings, Settings
from harness.local_http import LocalHttpServer, Reply, Request, Route

TARGET = 0.9  # end to end >= 90% of the bare forward
BARE_IMAGES = 64  # per measurement of the bare forward, before and after each end-to-end run


def delayed(data: bytes, latency_s: float) -> Route:
    def reply(request: Request) -> Reply:
        time.sleep(latency_s)
        return 200, {"Content-Type": "image/jpeg"}, data

    return reply


def end_to_end(services: Services, project_id: int, urls: list[str]) -> dict[str, Any]:
    """Patterns for one task per URL as the pattern jobs compute them, chunk by chunk; the
    project's stage sums (``pattern_stages``) afterwards."""
    extractor = extractor_for(services.settings, ProjectSettings())
    tasks = [{"id": task_id, "data": {"image": url}} for task_id, url in enumerate(urls, start=1)]
    chunk_size = services.settings.chunk_size
    for start in range(0, len(tasks), chunk_size):
        _, failures = extract_and_store(
            services, project_id, extractor, tasks[start : start + chunk_size], "image", started=time.monotonic()
        )
        if failures:
            raise RuntimeError(f"benchmark images failed: {failures}")
    stages = stages_summary(services.store.pattern_stages(project_id, version_of(extractor)))
    assert stages is not None
    return stages


def shares(stages: dict[str, Any]) -> str:
    wall = stages["wall_s"]
    return ", ".join(
        f"{name} {100 * stages[f'{name}_s'] / wall:.0f}%" for name in ("download", "decode", "forward", "store")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.extraction", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=320, help="images per end-to-end run (320)")
    parser.add_argument(
        "--latency-ms", type=int, nargs="+", default=[0, 150], help="delay of each image download, per run (0 150)"
    )
    parser.add_argument(
        "--download-workers", type=int, nargs="+",
        help="FREESEL_DOWNLOAD_WORKERS values to compare (default: the setting's default only)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every end-to-end run; the best counts (2)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder, RedisServer() as redis_server:
        paths = write_scenes(Path(folder) / "images", args.images, PHOTO_SIZE)
        # The process settings (their defaults unless FREESEL_* variables say otherwise); Label
        # Studio is never asked, and the image host is this machine.
        settings = replace(Settings.from_env(), label_studio_url="http://127.0.0.1:9", label_studio_api_key="unused",
            allow_private_downloads=True,
        )
        services = Services(settings, redis.Redis.from_url(redis_server.url))
        extractor = extractor_for(settings, ProjectSettings())
        print(
            f"model {extractor.model_id}, precision {extractor.precision}, batch {settings.batch_size}, chunk "
            f"{settings.chunk_size}, {args.images} JPEGs of {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}, torch threads "
            f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
        )
        runs = list(itertools.product(args.latency_ms, args.download_workers or [settings.download_workers]))
        project_ids = itertools.count(1)
        measured: list[tuple[int, int, dict[str, Any]]] = []
        bare = [_bare_throughput(extractor, BARE_IMAGES)]
        for latency_ms, workers in runs * args.rounds:
            route = {f"/{p.name}": delayed(p.read_bytes(), latency_ms / 1000) for p in paths}
            run_services = Services(replace(settings, download_workers=workers), services.connection)
            with LocalHttpServer(route) as image_host:
                stages = end_to_end(run_services, next(project_ids), [f"{image_host.url}/{p.name}" for p in paths])
            stages["load"] = os.getloadavg()[0]
            bare.append(_bare_throughput(extractor, BARE_IMAGES))
            stages["bare"] = (bare[-2] + bare[-1]) / 2  # the forward's rate just before and just after
            measured.append((latency_ms, workers, stages))
        passed = True
        for latency_ms, workers in runs:
            stages = max(
                (stages for lat, wor, stages in measured if (lat, wor) == (latency_ms, workers)),
                key=lambda run: run["rate"] / run["bare"],
            )
            ratio = stages["rate"] / stages["bare"]
            default_workers = workers == settings.download_workers
            passed &= ratio >= TARGET or not default_workers
            print(
                f"end to end, {latency_ms:>3} ms per download, {workers:>2} download workers: {stages['rate']:.2f} "
                f"images/s = {100 * ratio:.0f}% of the bare forward's {stages['bare']:.2f} images/s around it "
                f"(target >= {100 * TARGET:.0f}%{'' if default_workers else ', not the default'}); of the wall time "
                f"{stages['wall_s']:.1f} s: {shares(stages)} (download/decode: thread time, overlapped with the "
                f"forward); load {stages['load']:.1f}"
            )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
