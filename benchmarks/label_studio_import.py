"""Seconds Label Studio takes to store one prediction per task, by request size and project size.

Starts a real Label Studio 1.23.2 (from .venv-ls; on SQLite, or with ``--database postgresql`` on a
PostgreSQL server, a database of its own, dropped afterwards) once per setting of its feature flag
``fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short`` (off: Label Studio's
default; on: set in its environment). For every batch size: a new project with the product's
``label_config.xml`` and N tasks, then one prediction per task as the backend imports them
(``POST /api/projects/<id>/import/predictions``, empty result, a score, one model version),
``batch`` predictions per request. Prints, per flag and batch size, the seconds per request
(first, median, last) and in all, and milliseconds per prediction. Asserts nothing.

    .venv/bin/python benchmarks/label_studio_import.py [--tasks 20000] [--batches 500 2500 5000] \
        [--database sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from freesel_backend.labelstudio.local import FAST_PREDICTION_IMPORT  # noqa: E402
from harness.label_studio import LabelStudioServer, label_studio_executable  # noqa: E402
from harness.postgresql import postgres_database  # noqa: E402

LABEL_CONFIG = (REPO_ROOT / "label_config.xml").read_text()
TASK_IMPORT_BATCH = 5000


def new_project(ls: LabelStudioServer, tasks: int, title: str) -> tuple[int, list[int]]:
    """A new project of ``tasks`` tasks (image URLs that are never fetched): its id, the task ids."""
    project_id = ls.create_project(title, LABEL_CONFIG)["id"]
    task_ids: list[int] = []
    for start in range(0, tasks, TASK_IMPORT_BATCH):
        data = [{"image": f"http://127.0.0.1:9/{i}.jpg"} for i in range(start, min(tasks, start + TASK_IMPORT_BATCH))]
        task_ids += ls.import_tasks(project_id, data)
    return project_id, task_ids


def import_seconds(ls: LabelStudioServer, project_id: int, task_ids: list[int], batch: int) -> list[float]:
    """Seconds of each import request of one prediction per task, ``batch`` per request."""
    seconds = []
    for start in range(0, len(task_ids), batch):
        predictions = [
            {"task": task, "result": [], "score": (start + offset) / len(task_ids), "model_version": "freesel-bench"}
            for offset, task in enumerate(task_ids[start : start + batch])
        ]
        began = time.monotonic()
        response = ls.api("POST", f"/api/projects/{project_id}/import/predictions", json=predictions, timeout=900)
        seconds.append(time.monotonic() - began)
        if response.status_code != 201:
            raise RuntimeError(f"import failed: HTTP {response.status_code} {response.text[:300]}")
    return seconds


def run(tasks: int, batches: list[int], flag_on: bool, database: str) -> None:
    with ExitStack() as stack:
        extra_env = dict(stack.enter_context(postgres_database())) if database == "postgresql" else {}
        if flag_on:
            extra_env[FAST_PREDICTION_IMPORT] = "true"
        ls = stack.enter_context(LabelStudioServer(label_studio_executable(), extra_env=extra_env, startup_timeout=600))
        for batch in batches:
            project_id, task_ids = new_project(ls, tasks, f"import {batch} flag {flag_on}")
            seconds = import_seconds(ls, project_id, task_ids, batch)
            total = sum(seconds)
            print(
                f"{database} | flag {'on ' if flag_on else 'off'} | {tasks:>6} tasks | batch {batch:>5}"
                f" | {len(seconds):>3} requests"
                f" | per request first {seconds[0]:6.2f} s, median {statistics.median(seconds):6.2f} s,"
                f" last {seconds[-1]:6.2f} s | all {total:7.1f} s | {1000 * total / tasks:5.2f} ms/prediction",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--batches", type=int, nargs="+", default=[500, 2500, 5000])
    parser.add_argument("--flag", choices=["off", "on", "both"], default="both")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    for flag_on in {"off": [False], "on": [True], "both": [False, True]}[args.flag]:
        run(args.tasks, args.batches, flag_on, args.database)


if __name__ == "__main__":
    main()
