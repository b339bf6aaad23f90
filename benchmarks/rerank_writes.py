"""Label Studio requests and seconds per re-ranking, for the backend in one or more source trees.

Starts a real Label Studio 1.23.2 (SQLite, from .venv-ls), a private Redis, a host serving N
small generated scenes, and a forwarding proxy in front of Label Studio that counts the backend's
requests. For each source tree given (default: this one): the backend (``serve`` + one worker,
tiny random-init ViT at 32 px) connects to a new project of N tasks; the script waits until the
queue is switched and every job is idle, then labels what ``/next`` serves R times, waiting for
each re-ranking to be written out. Prints, per tree: seconds from connect to idle, then per
re-ranking the seconds, Label Studio requests (all, and writes) and FreeSel prediction rows.

    .venv/bin/python benchmarks/rerank_writes.py [--tasks 1000] [--rerankings 3] [TREE ...]

A tree of an earlier commit: ``git archive <commit> | tar -x -C /tmp/before``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from freesel_backend.cli.samples import scene_image  # noqa: E402
from freesel_backend.server.redis_server import RedisServer, free_port  # noqa: E402
from harness.backend import backend_env, credentials, idle, wait_for  # noqa: E402
from harness.label_studio import LabelStudioServer, label_studio_executable  # noqa: E402
from harness.local_http import LabelStudioStandIn, LocalHttpServer, content  # noqa: E402
from harness.local_http import encoded  # noqa: E402
from harness.label_studio import LABEL_CONFIG, annotate  # noqa: E402

WRITES = ("POST", "PATCH", "PUT", "DELETE")


def start_backend(tree: Path, env: dict[str, str], logs: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**env, "FREESEL_PUBLIC_URL": url, "PYTHONPATH": str(tree)}
    commands = {
        "serve": ["serve", "--host", "127.0.0.1", "--port", str(port), "--web-workers", "1"],
        "worker": ["worker"],
    }
    processes = [
        subprocess.Popen([sys.executable, "-m", "freesel_backend", *args], cwd=tree, env=env,
                         stdout=open(logs / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
        for name, args in commands.items()
    ]
    wait_for(lambda: _up(url), 60, "backend /health")
    return url, processes


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.RequestException:
        return False


def status(url: str, project_id: int, env: dict[str, str]) -> dict[str, Any]:
    return requests.get(f"{url}/freesel/projects/{project_id}/status", timeout=60, **credentials(env)).json()


def prediction_rows(ls: LabelStudioServer, project_id: int) -> tuple[int, int]:
    """(FreeSel prediction rows, tasks with more than one of the project's current version)."""
    version = ls.api("GET", f"/api/projects/{project_id}/").json()["model_version"]
    rows = [
        p
        for p in ls.api("GET", "/api/predictions/", params={"project": project_id}, timeout=300).json()
        if str(p["model_version"]).startswith("freesel-")
    ]
    per_task = Counter(p["task"] for p in rows if p["model_version"] == version)
    return len(rows), sum(count > 1 for count in per_task.values())


def settled_after(url: str, project_id: int, since: float, env: dict[str, str]) -> bool:
    answer = status(url, project_id, env)
    last = answer.get("last_selection_at")
    import datetime

    return bool(idle(answer) and last and datetime.datetime.fromisoformat(last).timestamp() >= since)


def measure(
    tree: Path, ls: LabelStudioServer, redis_url: str, image_host: str, tasks: int, rerankings: int, work: Path
) -> dict[str, Any]:
    proxy = LabelStudioStandIn(ls.url).start()
    env = {**backend_env(redis_url, proxy.url, ls.pat, work / "model_dir"),
           "FREESEL_TEST_IMAGE_SIZE": "32", "FREESEL_CHUNK_SIZE": "250", "FREESEL_ALLOW_PRIVATE_DOWNLOADS": "true"}
    url, processes = start_backend(tree, env, work)
    try:
        pid = ls.create_project(f"rerank writes {tree.name}", LABEL_CONFIG)["id"]
        ls.import_tasks(pid, [{"image": f"{image_host}/img/{n}.png"} for n in range(tasks)])
        started = time.time()
        ls.api("POST", "/api/ml", json={"url": url, "project": pid, "title": "FreeSel"}).raise_for_status()
        wait_for(lambda: settled_after(url, pid, started, env), 3600, "the first ranking", interval_s=2)
        result: dict[str, Any] = {
            "tree": str(tree),
            "tasks": tasks,
            "first_ranking_s": round(time.time() - started, 1),
            "first_ranking_requests": len(proxy.requests),
            "rows_after_first": prediction_rows(ls, pid)[0],
            "rerankings": [],
        }
        print(json.dumps(result), flush=True)
        for _ in range(rerankings):
            served = ls.api("GET", f"/api/projects/{pid}/next").json()
            sent, since = len(proxy.requests), time.time()
            annotate(ls, served["id"])
            wait_for(lambda: settled_after(url, pid, since, env), 3600, "the re-ranking", interval_s=1)
            made = proxy.requests[sent:]
            rows, duplicated = prediction_rows(ls, pid)
            result["rerankings"].append(
                {
                    "seconds": round(time.time() - since, 1),
                    "requests": len(made),
                    "writes": sum(method in WRITES for method, _ in made),
                    "prediction_rows": rows,
                    "tasks_with_duplicates": duplicated,
                }
            )
            print(json.dumps(result["rerankings"][-1]), flush=True)
        return result
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", type=Path, default=[REPO])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rerankings", type=int, default=3)
    args = parser.parse_args()
    images = {
        f"/img/{n}.png": content(encoded(scene_image(n, size=(32, 32)), "PNG"), "image/png") for n in range(args.tasks)
    }
    with tempfile.TemporaryDirectory() as scratch, LocalHttpServer(images) as image_host, RedisServer() as redis_server:
        ls = LabelStudioServer(label_studio_executable(), startup_timeout=900).start()
        try:
            for number, tree in enumerate(args.trees):
                work = Path(scratch) / f"tree{number}"
                work.mkdir()
                import redis

                redis.Redis.from_url(redis_server.url).flushdb()
                print(
                    json.dumps(
                        measure(tree.resolve(), ls, redis_server.url, image_host.url, args.tasks, args.rerankings, work)
                    ),
                    flush=True,
                )
        finally:
            ls.stop()


if __name__ == "__main__":
    main()
