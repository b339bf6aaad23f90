"""Patterns rate with one and with two worker machines, side by side in one run: `freesel worker`
processes with a MODEL_DIR each, sharing nothing but a Redis over TCP, compute the patterns of the
same tasks of a real Label Studio 1.23.2 (JPEGs uploaded to it); then two workers again, one of
them killed with SIGKILL in the middle of a chunk: how long until the other took that chunk, and
whether every task got its patterns exactly once.

    .venv/bin/python benchmarks/workers.py --models tiny offline --tasks 320

Workers take pattern chunks only (`--queues freesel-features`; the rankings the chunks ask for
wait). Each worker's forward runs on the threads given per configuration (OMP_NUM_THREADS), as a
machine with that many cores would; every worker of this run shares this machine's cores, Label
Studio (which serves the images) and Redis. Before the clock starts, each worker has loaded its
model on a warm-up chunk. It prints figures and asserts none of them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import redis
from rq import Queue
from rq.job import Job
from rq.registry import StartedJobRegistry

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from freesel_backend.cli.samples import write_scenes  # noqa: E402
from freesel_backend.engine.offline_model import ensure_offline_checkpoint  # noqa: E402
from freesel_backend.server.enqueue import enqueue_patterns  # noqa: E402
from freesel_backend.server.redis_server import RedisServer  # noqa: E402
from freesel_backend.server.services import Services  # noqa: E402
from freesel_backend.server.settings import FEATURES_QUEUE, Settings  # noqa: E402
from freesel_backend.server.store import Store  # noqa: E402
from harness.backend import backend_env, wait_for  # noqa: E402
from harness.label_studio import LABEL_CONFIG, LabelStudioServer, label_studio_executable  # noqa: E402
from harness.workers import (  # noqa: E402
    all_midway, finished_pattern_jobs, machine_env, runs_the_scheduler, start_worker, stop_group, worker_names,
)

TINY = {"FREESEL_MODEL": "vit_tiny_patch16_224", "FREESEL_TEST_RANDOM_INIT": "true"}
OFFLINE = {"FREESEL_MODEL": "offline", "FREESEL_TEST_RANDOM_INIT": "false", "FREESEL_TEST_IMAGE_SIZE": ""}


@dataclass
class Bench:
    args: argparse.Namespace
    ls: LabelStudioServer
    connection: redis.Redis
    redis_url: str
    project_id: int
    warm_up_tasks: list[int]
    tasks: list[int]
    work_dir: Path

    model: str = "tiny"

    def env(self, machine: str, threads: int, recovery: tuple[int, int]) -> dict[str, str]:
        """A worker machine's environment: its own MODEL_DIR, the shared Redis and Label Studio."""
        model_dir = self.work_dir / machine
        env = backend_env(self.redis_url, self.ls.url, self.ls.pat, model_dir)
        env.update(TINY if self.model == "tiny" else OFFLINE)
        if self.model == "tiny":
            env["FREESEL_TEST_IMAGE_SIZE"] = str(self.args.image_size)
        else:
            ensure_offline_checkpoint(model_dir / "models")  # converted once per machine, on its first start
        env.update({
            "FREESEL_CHUNK_SIZE": str(self.args.chunk), "FREESEL_JOB_RETRIES": "3", "FREESEL_RETRY_INTERVALS": "1,1,1",
            "FREESEL_WORKER_HEARTBEAT": str(recovery[0]), "FREESEL_WORKER_MAINTENANCE": str(recovery[1]),
        })
        return {key: value for key, value in machine_env(env, threads).items() if value != ""}


def start_machines(bench: Bench, count: int, threads: int, recovery: tuple[int, int]) -> list[subprocess.Popen[bytes]]:
    """``count`` workers on pattern chunks, the first one running the scheduler, each warmed up on a chunk."""
    bench.connection.flushdb()
    workers: list[subprocess.Popen[bytes]] = []
    for number in range(count):
        env = bench.env(f"machine-{number}", threads, recovery)
        workers.append(start_worker(env, bench.work_dir / f"machine-{number}.log", (FEATURES_QUEUE,)))
        if number == 0:
            wait_for(lambda: runs_the_scheduler(bench.connection), 120, "the first worker's scheduler")
    names = wait_for(lambda: worker_names(bench.connection, workers), 120, "the workers registered")
    for _ in range(5):  # a worker has its model loaded once it has run a chunk
        enqueue(bench, bench.warm_up_tasks)
        wait_for(lambda: all_done(bench), 900, "the warm-up chunks")
        if {job.worker_name for job in finished_pattern_jobs(bench.connection)} >= set(names):
            break
        bench.connection.delete(*bench.connection.keys("freesel:*:patterns:*"))
    return workers


def enqueue(bench: Bench, tasks: list[int]) -> None:
    env = bench.env("machine-0", 1, (30, 60))
    enqueue_patterns(Services(Settings.from_env(env), bench.connection), bench.project_id, tasks)


def all_done(bench: Bench) -> bool:
    store = Store(bench.connection)
    started = StartedJobRegistry(FEATURES_QUEUE, connection=bench.connection)
    waiting = Queue(FEATURES_QUEUE, connection=bench.connection).count
    return not store.patterns_outstanding(bench.project_id) and waiting == 0 and started.count == 0


def patterns_written(bench: Bench, after: float) -> tuple[int, dict[str, int]]:
    """Patterns the pattern jobs finished after ``after`` (a time.time()) wrote, in all and per worker."""
    per_worker: dict[str, int] = {}
    for job in finished_pattern_jobs(bench.connection):
        if job.ended_at is not None and job.ended_at.timestamp() >= after:
            name = job.worker_name or "?"
            per_worker[name] = per_worker.get(name, 0) + job.return_value()["patterns"]
    return sum(per_worker.values()), per_worker


def stored_patterns(bench: Bench) -> int:
    store = Store(bench.connection)
    version = store.get_state(bench.project_id).get("patterns_version", "")
    return len(store.tasks_with_patterns(bench.project_id, version))


def timed_patterns(bench: Bench, during: Callable[[], None] = lambda: None) -> tuple[float, float]:
    """Enqueue the measured tasks, run ``during``, wait until every one has patterns: (seconds, wall start)."""
    wall_start, started = time.time(), time.monotonic()
    enqueue(bench, bench.tasks)
    during()
    wait_for(lambda: all_done(bench), 3600, "the patterns", interval_s=0.1)
    return time.monotonic() - started, wall_start


def rate_run(bench: Bench, count: int, threads: int) -> float:
    workers = start_machines(bench, count, threads, (30, 60))
    try:
        seconds, wall_start = timed_patterns(bench)
    finally:
        for worker in workers:
            stop_group(worker)
    written, per_worker = patterns_written(bench, wall_start)
    rate = len(bench.tasks) / seconds
    load = os.getloadavg()[0]
    print(f"{bench.model}: {count} worker(s) x {threads} thread(s): {len(bench.tasks)} tasks in {seconds:6.1f} s "
          f"= {rate:6.1f} tasks/s"
          f"  (per worker: {sorted(per_worker.values())}, written {written}, load {load:.1f})", flush=True)
    return rate


def recovery_run(bench: Bench, threads: int, recovery: tuple[int, int]) -> None:
    """Two workers; the one running the scheduler is killed in the middle of a chunk."""
    workers = start_machines(bench, 2, threads, recovery)
    names = worker_names(bench.connection, workers) or []
    moments: dict[str, float] = {}

    def kill_one_midway() -> None:
        at_work = wait_for(lambda: all_midway(bench.connection, names), 600, "both workers midway", interval_s=0.05)
        killed = next(chunk for chunk in at_work if chunk.worker_name == names[0])
        os.killpg(workers[0].pid, signal.SIGKILL)
        moments["killed"] = time.monotonic()
        wait_for(lambda: Job.fetch(killed.job_id, connection=bench.connection).worker_name == names[1], 900,
                 "the killed chunk taken over", interval_s=0.1)
        moments["taken"] = time.monotonic()

    try:
        seconds, wall_start = timed_patterns(bench, kill_one_midway)
    finally:
        for worker in workers:
            stop_group(worker)
    written, _ = patterns_written(bench, wall_start)
    print(f"2 workers x {threads} thread(s), one killed midway a chunk (lease renewed every {recovery[0]} s, "
          f"maintenance every {recovery[1]} s): its chunk taken by the other "
          f"{moments['taken'] - moments['killed']:.1f} s after the kill; {len(bench.tasks)} tasks in {seconds:.1f} s; "
          f"patterns written by finished jobs {written}, "
          f"tasks with patterns {stored_patterns(bench)} of {len(bench.tasks) + len(bench.warm_up_tasks)} "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)


def prepare(args: argparse.Namespace, ls: LabelStudioServer, work_dir: Path) -> tuple[int, list[int], list[int]]:
    images = write_scenes(work_dir / "images", 2 * args.chunk + args.tasks, size=(480, 360))
    project_id = ls.create_project("worker machines", LABEL_CONFIG)["id"]
    task_ids = [task["id"] for task in ls.upload_images(project_id, images)]
    return project_id, task_ids[: 2 * args.chunk], task_ids[2 * args.chunk:]


def run_benchmark(args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    print(f"models {', '.join(args.models)}, {args.tasks} tasks (480x360 JPEGs in Label Studio), "
          f"chunks of {args.chunk}, "
          f"{cores} cores, load {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="freesel-workers-") as tmp, RedisServer() as redis_server:
        work_dir = Path(tmp)
        ls = LabelStudioServer(label_studio_executable(), startup_timeout=900).start()
        try:
            project_id, warm_up, tasks = prepare(args, ls, work_dir)
            bench = Bench(args, ls, redis.Redis.from_url(redis_server.url), redis_server.url, project_id, warm_up,
                          tasks, work_dir)
            for bench.model in args.models:
                configurations = ((1, cores), (1, 1), (2, 1))
                rates = {(count, threads): rate_run(bench, count, threads) for count, threads in configurations}
                print(f"{bench.model}: two 1-thread workers vs one: x{rates[(2, 1)] / rates[(1, 1)]:.2f}; vs one "
                      f"{cores}-thread worker: x{rates[(2, 1)] / rates[(1, cores)]:.2f}", flush=True)
                for recovery in args.recovery if bench.model == args.models[0] else ():
                    recovery_run(bench, 1, recovery)
        finally:
            ls.stop()


def recovery_settings(text: str) -> tuple[int, int]:
    heartbeat, maintenance = text.split("/")
    return int(heartbeat), int(maintenance)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", choices=("tiny", "offline"), nargs="+", default=["tiny"],
                        help="tiny: random-init ViT-Tiny at --image-size; offline: the default model "
                        "(DINOv2 ViT-S/14); the kill runs follow the first one's")
    parser.add_argument("--tasks", type=int, default=320, help="measured tasks (320)")
    parser.add_argument("--chunk", type=int, default=32, help="FREESEL_CHUNK_SIZE (32)")
    parser.add_argument("--image-size", type=int, default=112, help="tiny model's input size (112)")
    parser.add_argument("--recovery", type=recovery_settings, nargs="*", default=[(2, 2), (30, 60)],
                        help="HEARTBEAT/MAINTENANCE seconds of the kill runs (2/2 30/60; 30/60 are the defaults)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_benchmark(parse_args())
