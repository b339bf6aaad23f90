"""A real project at scale: Label Studio 1.23.2 (SQLite or PostgreSQL), the backend as a user runs
it (`python -m freesel_backend serve`: embedded Redis and worker), N tasks whose images are served
over HTTP, three annotators, and a SIGTERM of the backend in the middle of a write-out.

It prints measured figures and asserts none of them. Every wait is bounded, so a run that does not
reach a state says so ("not within N s") and goes on. The tiny random model
(FREESEL_TEST_RANDOM_INIT, FREESEL_TEST_IMAGE_SIZE=32) keeps the plumbing, not the network, in the
figures. The backend talks to Label Studio through a counting proxy, so every request it makes is
counted by kind.

After the import it prints: import -> queue switched to FreeSel (flagged picks at the head),
whether the first ``--early-tasks`` tasks ``/next`` serves an annotator right after the switch
carry a pick flag, import -> every pattern in and -> the final ranking live, each ranking written
(milestone: the patterns it was ranked from, when it was live, Label Studio requests by kind and
writes, predictions imported), FreeSel prediction rows at most and at rest, and the patterns rate
end to end against the bare forward of the same model, measured in the same run (with the
backend's per-stage figures where its status has them). ``--stop-after-final-ranking`` ends there;
otherwise annotators and a restart follow.

    .venv/bin/python benchmarks/label_studio_scale.py --tasks 5000 --database sqlite
    .venv/bin/python benchmarks/label_studio_scale.py --tasks 5000 --database postgresql

PostgreSQL: a server at --postgres-host:--postgres-port (trust auth for user postgres) gets a
database of its own for the run, dropped at the end; where none answers, Debian's postgresql
package is installed and its cluster started (needs root).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import redis
import requests
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.performance import _bare_throughput  # noqa: E402
from freesel_backend.server.task_images import extractor_for  # noqa: E402
from freesel_backend.server.settings import FEATURES_QUEUE, ProjectSettings, Settings  # noqa: E402
from freesel_backend.cli.samples import write_scenes  # noqa: E402
from freesel_backend.server.writeout.versions import VERSION_PREFIX  # noqa: E402
from freesel_backend.labelstudio.local import FAST_PREDICTION_IMPORT  # noqa: E402
from harness.backend import BackendProcesses, backend_env, idle  # noqa: E402
from harness.label_studio import LabelStudioServer  # noqa: E402
from harness.postgresql import DEFAULT_HOST, DEFAULT_PORT, postgres_database  # noqa: E402
from harness.local_http import LabelStudioStandIn, LocalHttpServer, Request, content  # noqa: E402

LABEL_CONFIG = (REPO_ROOT / "label_config.xml").read_text()
ANNOTATION = [{"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["cat"]}}]
PICK_FLAG = "FreeSel pick"
IMPORT_BATCH = 5000
PREDICTION_IMPORT = "POST /api/projects/#/import/predictions"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def figure(name: str, value: object) -> None:
    print(f"  {name:<58} {value}", flush=True)


# ---------------------------------------------------------------- counting proxy


def request_kind(method: str, path: str) -> str:
    """``PATCH /api/tasks/#/``: the method and the path without query and ids."""
    return f"{method} {re.sub(r'/[0-9]+', '/#', path.split('?')[0])}"


class CountingProxy(LabelStudioStandIn):
    """Label Studio as the backend sees it: every request forwarded and remembered by kind."""

    forward_timeout_s = 900.0  # a version DELETE takes minutes at scale; the backend's own timeout decides

    def counts_since(self, start: int) -> collections.Counter[str]:
        return collections.Counter(request_kind(method, path) for method, path in self.requests[start:])


def writes(counts: collections.Counter[str]) -> int:
    return sum(count for kind, count in counts.items() if not kind.startswith("GET"))


def show_counts(title: str, counts: collections.Counter[str]) -> None:
    figure(title, f"{sum(counts.values())} ({writes(counts)} writes)")
    for kind, count in counts.most_common(8):
        print(f"      {count:>7}  {kind}")


# ---------------------------------------------------------------- observing the project


@dataclass
class Sample:
    at: float
    status: dict[str, Any]
    project_version: str
    sampling: str
    rows_by_version: dict[str, int]
    requests_made: int  # requests the backend had sent through the proxy when the sample was taken

    @property
    def freesel_rows(self) -> int:
        return sum(count for version, count in self.rows_by_version.items() if version.startswith(VERSION_PREFIX))

    @property
    def current_rows(self) -> int:
        return self.rows_by_version.get(self.project_version, 0)

    @property
    def idle(self) -> bool:
        return idle(self.status)


@dataclass
class Monitor:
    """Polls the backend's status and Label Studio's prediction counts every ``interval_s``."""

    ls: LabelStudioServer
    project_id: int
    status_of: Callable[[], dict[str, Any]]
    requests_made: Callable[[], int]
    interval_s: float = 2.0
    samples: list[Sample] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> Optional[Sample]:
        requests_made = self.requests_made()
        try:
            status = self.status_of()
            project = self.ls.api("GET", f"/api/projects/{self.project_id}/").json()
            rows = self.ls.api("GET", f"/api/projects/{self.project_id}/model-versions/").json()
        except (requests.RequestException, ValueError) as error:
            self.errors[type(error).__name__] += 1
            return None
        taken = Sample(time.time(), status, project.get("model_version") or "", project.get("sampling") or "",
                       {str(k): int(v) for k, v in rows.items()} if isinstance(rows, dict) else {}, requests_made)
        self.samples.append(taken)
        return taken

    def run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> "Monitor":
        threading.Thread(target=self.run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def latest(self) -> Sample:
        while not self.samples:
            time.sleep(0.2)
        return self.samples[-1]

    def wait(self, condition: Callable[[Sample], bool], since: float, timeout_s: float) -> Optional[Sample]:
        """The first sample taken after ``since`` that satisfies ``condition``, or None by the timeout."""
        seen = 0
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            fresh = self.samples[seen:]
            seen += len(fresh)
            for taken in fresh:
                if taken.at >= since and condition(taken):
                    return taken
            time.sleep(0.5)
        return None

    def max_freesel_rows(self, since: float = 0.0) -> int:
        return max((s.freesel_rows for s in self.samples if s.at >= since), default=0)

    def selections_between(self, start: float, end: float) -> int:
        finished = {s.status.get("last_selection_at") for s in self.samples if start <= s.at <= end}
        before = [s.status.get("last_selection_at") for s in self.samples if s.at < start]
        return len(finished - {before[-1] if before else None, None})


def after(seconds: Optional[float], timeout_s: float) -> str:
    return f"{seconds:.0f} s" if seconds is not None else f"not within {timeout_s:.0f} s"


# ---------------------------------------------------------------- the backend's Redis


def embedded_redis(log_path: Path, timeout_s: float = 60) -> redis.Redis:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = re.search(r"embedded Redis at (redis://\S+)", log_path.read_text(errors="replace"))
        if found:
            return redis.Redis.from_url(found.group(1))
        time.sleep(0.5)
    raise RuntimeError(f"no 'embedded Redis at' line in {log_path}")


def failed_jobs(connection: redis.Redis) -> list[str]:
    """Every job in a failed registry: 'queue: function: last line of the error'."""
    found = []
    for queue in Queue.all(connection=connection):
        for job in FailedJobRegistry(queue=queue).get_job_ids():
            fetched = queue.fetch_job(job)
            error = (fetched.exc_info or "").strip().splitlines()[-1:] if fetched else []
            name = fetched.func_name if fetched else job
            found.append(f"{queue.name}: {name}: {error[0] if error else '?'}")
    return found


def scheduled_jobs(connection: redis.Redis) -> int:
    return sum(len(ScheduledJobRegistry(queue=queue).get_job_ids()) for queue in Queue.all(connection=connection))


def feature_job_ids(connection: redis.Redis) -> set[str]:
    """Ids of every patterns job Redis still knows: queued, running, finished or failed (the
    patterns queue also runs rankings of the tail: those are left out)."""
    queue = Queue(FEATURES_QUEUE, connection=connection)
    ids = set(queue.get_job_ids())
    for registry in (
        queue.started_job_registry,
        queue.finished_job_registry,
        queue.failed_job_registry,
        queue.deferred_job_registry,
    ):
        ids.update(registry.get_job_ids())
    jobs = Job.fetch_many(sorted(ids), connection=connection)
    return {job.id for job in jobs if job is not None and job.func_name.endswith("compute_patterns")}


# ---------------------------------------------------------------- annotators


@dataclass
class Served:
    at: float
    annotator: int
    task: int
    flag: str
    has_current_prediction: bool
    score: Optional[float]


def served_prediction(ls: LabelStudioServer, task: int, version: str) -> Optional[float]:
    predictions = ls.api("GET", "/api/predictions/", params={"task": task}).json()
    scores = [p["score"] for p in predictions if p.get("model_version") == version]
    return scores[0] if scores else None


def annotator(
    ls: LabelStudioServer,
    session: requests.Session,
    number: int,
    project_id: int,
    until: float,
    interval_s: float,
    served: list[Served],
    labelled: list[tuple[float, int]],
    problems: collections.Counter[str],
) -> None:
    """``/next``, annotate, one task per ``interval_s``, as one Label Studio user."""
    while time.time() < until:
        started = time.time()
        try:
            response = session.get(f"{ls.url}/api/projects/{project_id}/next", timeout=120)
            if response.status_code != 200:
                problems[f"/next HTTP {response.status_code}"] += 1
                time.sleep(interval_s)
                continue
            task = response.json()
            version = ls.api("GET", f"/api/projects/{project_id}/").json().get("model_version") or ""
            score = served_prediction(ls, task["id"], version)
            served.append(
                Served(started, number, task["id"], str(task["data"].get("freesel") or ""), score is not None, score)
            )
            answer = session.post(
                f"{ls.url}/api/tasks/{task['id']}/annotations/", json={"result": ANNOTATION}, timeout=120
            )
            if answer.status_code == 201:
                labelled.append((time.time(), int(task["id"])))
            else:
                problems[f"annotate HTTP {answer.status_code}"] += 1
        except requests.RequestException as error:
            problems[type(error).__name__] += 1
        time.sleep(max(0.0, interval_s - (time.time() - started)))


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    args: argparse.Namespace
    ls: LabelStudioServer
    proxy: CountingProxy
    work: Path
    env: dict[str, str]
    project_id: int = 0
    backend: Optional[BackendProcesses] = None
    monitor: Optional[Monitor] = None
    labelled_tasks: int = 0
    early_labels: list[int] = field(default_factory=list)  # tasks labelled right after the switch

    def start_backend(self, log_dir: Path, port: Optional[int] = None) -> BackendProcesses:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.backend = BackendProcesses(self.env, log_dir, port=port).start(workers=0)
        return self.backend

    def status(self) -> dict[str, Any]:
        assert self.backend is not None
        return self.backend.status(self.project_id)



def predictions_per_task(ls: LabelStudioServer, project_id: int) -> tuple[int, int, int, int]:
    """(FreeSel rows, tasks with one, tasks with more than one, rows of the project's version)."""
    version = ls.api("GET", f"/api/projects/{project_id}/").json().get("model_version") or ""
    rows = ls.api("GET", "/api/predictions/", params={"project": project_id}, timeout=600).json()
    mine = [row for row in rows if str(row.get("model_version", "")).startswith(VERSION_PREFIX)]
    per_task = collections.Counter(row["task"] for row in mine)
    current = sum(1 for row in mine if row["model_version"] == version)
    return len(mine), sum(1 for n in per_task.values() if n == 1), sum(1 for n in per_task.values() if n > 1), current


def import_tasks(run: Run, images: LocalHttpServer, names: list[str]) -> None:
    tasks = [{"image": f"{images.url}/images/{name}"} for name in names]
    for start in range(0, len(tasks), IMPORT_BATCH):
        run.ls.import_tasks(run.project_id, tasks[start:start + IMPORT_BATCH])


def phase_import(run: Run, images: LocalHttpServer, names: list[str]) -> None:
    args, monitor = run.args, run.monitor
    assert monitor is not None
    early_annotator = run.ls.sign_up(f"early-{uuid.uuid4().hex[:6]}@example.com")
    log(f"importing {len(names)} tasks")
    imported_at = time.time()
    requests_before = len(run.proxy.requests)
    import_tasks(run, images, names)
    figure("import request(s)", f"{time.time() - imported_at:.0f} s")
    switched = monitor.wait(serves_freesel, imported_at, args.switch_timeout)
    if switched:
        early_next(run, early_annotator, args.early_tasks)
    final = monitor.wait(lambda s: final_ranking_live(s, args.tasks), imported_at, args.switch_timeout)
    patterns = monitor.wait(lambda s: all_patterns_in(s, args.tasks), imported_at, 1)
    complete = monitor.wait(lambda s: serves_freesel(s) and s.current_rows >= args.tasks - len(run.early_labels),
                            imported_at, 1 if final is None else args.idle_timeout)
    figure("import -> patterns of every task (patterns time)",
           after(patterns and patterns.at - imported_at, args.switch_timeout))
    for label, reached in (
        ("queue switched to FreeSel, flagged picks at the head", switched),
        ("the final ranking live", final),
        ("one prediction per unlabelled task", complete),
    ):
        figure(f"import -> {label}", after(reached and reached.at - imported_at, args.switch_timeout))
        if patterns and reached and reached.at > patterns.at:
            figure("  of which after the patterns", f"{reached.at - patterns.at:.0f} s")
    if switched:
        ranked_from = switched.status.get("ranked_from") or {}
        figure("  the last ranking at the switch ranked from", f"{ranked_from.get('patterns')} of {args.tasks}")
    show_milestones(run, imported_at, final or monitor.latest(), requests_before)
    quiet = monitor.wait(lambda s: s.idle, final.at if final else imported_at, args.idle_timeout)
    figure("final ranking live -> every job idle",
           after(quiet and quiet.at - (final.at if final else imported_at), args.idle_timeout))
    figure("FreeSel prediction rows: max at any moment / tasks", f"{monitor.max_freesel_rows()} / {args.tasks}")
    rows, single, duplicated, current = predictions_per_task(run.ls, run.project_id)
    figure("FreeSel rows at rest / tasks", f"{rows} / {args.tasks} ({single} tasks with one, {duplicated} with more)")
    figure("rows of the project's current version", current)
    show_counts("Label Studio requests by the backend, import to rest", run.proxy.counts_since(requests_before))
    show_pattern_rate(run, patterns, imported_at)


def all_patterns_in(sample: Sample, tasks: int) -> bool:
    return int(sample.status.get("patterns_done", 0)) + int(sample.status.get("failed", 0)) >= tasks


def final_ranking_live(sample: Sample, tasks: int) -> bool:
    """Every pattern is in, the last ranking saw all of them, and its write-out is done."""
    ranked_from = sample.status.get("ranked_from") or {}
    writeout = sample.status.get("writeout") or {}
    return (
        all_patterns_in(sample, tasks)
        and int(ranked_from.get("patterns", 0)) >= int(sample.status.get("patterns_done", 0))
        and writeout.get("state") == "done"
        and serves_freesel(sample)
    )


def early_next(run: Run, session: requests.Session, count: int) -> None:
    """An annotator who asks for tasks as soon as the queue switched: ``/next``, annotate, ``count``
    times; whether each served task carries a pick flag."""
    flags: list[str] = []
    started = time.time()
    for _ in range(count):
        response = session.get(f"{run.ls.url}/api/projects/{run.project_id}/next", timeout=120)
        if response.status_code != 200:
            flags.append(f"HTTP {response.status_code}")
            continue
        task = response.json()
        flags.append(str(task["data"].get("freesel") or ""))
        answer = session.post(
            f"{run.ls.url}/api/tasks/{task['id']}/annotations/", json={"result": ANNOTATION}, timeout=120
        )
        if answer.status_code == 201:
            run.early_labels.append(int(task["id"]))
    flagged = sum(1 for flag in flags if flag.startswith(PICK_FLAG))
    figure(f"first {count} tasks /next served after the switch: with a pick flag",
           f"{flagged} of {len(flags)} (in {time.time() - started:.0f} s; {collections.Counter(flags).most_common(3)})")


@dataclass
class Milestone:
    """One ranking, as the status showed it: first while its write-out ran, last when it was done
    or a newer ranking replaced it."""

    generation: int
    first: Sample
    last: Sample
    ranked_from: int

    @property
    def done(self) -> bool:
        return (self.last.status.get("writeout") or {}).get("state") == "done"


def milestones(samples: list[Sample], since: float) -> list[Milestone]:
    found: dict[int, Milestone] = {}
    for sample in samples:
        generation = (sample.status.get("writeout") or {}).get("ranking")
        if sample.at < since or generation is None:
            continue
        if int(generation) in found:
            found[int(generation)].last = sample
            continue
        ranked_from = (sample.status.get("ranked_from") or {}).get("patterns") or 0
        found[int(generation)] = Milestone(int(generation), sample, sample, int(ranked_from))
    return sorted(found.values(), key=lambda milestone: milestone.first.at)


def planned_writeouts(log_path: Path) -> dict[int, tuple[int, int]]:
    """Ranking -> (scores to change, predictions to import), as its first write-out step planned them."""
    planned: dict[int, tuple[int, int]] = {}
    pattern = r"write-out of ranking (\d+): (\d+) scores to change, (\d+) predictions to import"
    for found in re.finditer(pattern, log_path.read_text(errors="replace")):
        planned.setdefault(int(found.group(1)), (int(found.group(2)), int(found.group(3))))
    return planned


def imported_predictions(requests_made: list[Request]) -> int:
    """Prediction rows the backend imported with these requests."""
    rows = 0
    for request in requests_made:
        if request.method == "POST" and request_kind(request.method, request.path) == PREDICTION_IMPORT:
            body = json.loads(request.body or b"[]")
            rows += len(body) if isinstance(body, list) else 0
    return rows


def show_milestones(run: Run, imported_at: float, until: Sample, requests_before: int) -> None:
    """Per ranking the status showed between the import and ``until``: the patterns it was ranked
    from, when it was seen and when its write-out was done (or replaced by a newer ranking), the
    Label Studio requests by kind from it to the next one (the proxy's), its writes, the
    predictions imported, and what its write-out planned (score changes + predictions)."""
    assert run.monitor is not None
    planned = planned_writeouts(run.work / "logs" / "serve.log")
    found = milestones([s for s in run.monitor.samples if s.at <= until.at], imported_at)
    print("  rankings (patterns ranked from; import -> seen, -> written or replaced; requests until the next"
          " ranking [write-out's own count]; writes; new predictions; planned score changes + predictions):")
    for number, milestone in enumerate(found):
        start = requests_before if number == 0 else milestone.first.requests_made
        end = found[number + 1].first.requests_made if number + 1 < len(found) else until.requests_made
        window = run.proxy.received[start:end]
        counts = collections.Counter(request_kind(r.method, r.path) for r in window)
        writeout = milestone.last.status.get("writeout") or {}
        scores, creates = planned.get(milestone.generation, (None, None))
        print(f"    #{milestone.generation:<3} {milestone.ranked_from:>7} patterns;"
              f" {milestone.first.at - imported_at:5.0f} s -> {milestone.last.at - imported_at:5.0f} s"
              f" {'written' if milestone.done else 'replaced'}; {sum(counts.values())} requests"
              f" [{writeout.get('label_studio_requests')}]; {writes(counts)} writes [{writeout.get('writes')}];"
              f" {imported_predictions(window)} new predictions; planned {scores} + {creates}")
        print("          " + ", ".join(f"{count} {kind}" for kind, count in counts.most_common(5)))


def show_pattern_rate(run: Run, patterns: Optional[Sample], imported_at: float) -> None:
    """Patterns per second end to end (import -> every pattern in), the backend's own per-stage
    figures where its status has them, and the bare forward of the same model in this process."""
    args = run.args
    if patterns:
        figure("patterns rate end to end (import -> every pattern)",
               f"{args.tasks / max(patterns.at - imported_at, 1e-9):.1f} tasks/s")
    stages = run.monitor.latest().status.get("pattern_stages") if run.monitor else None
    if stages:
        figure("pattern stages (status)", ", ".join(f"{key} {value}" for key, value in stages.items()))
    settings = Settings.from_env(run.env)
    extractor = extractor_for(settings, ProjectSettings())
    bare = _bare_throughput(extractor, max(args.bare_images, extractor.batch_size))
    figure(f"bare forward of the same model ({settings.model}, batch {extractor.batch_size})",
           f"{bare:.1f} images/s; {machine()}")
    if patterns:
        figure("  end to end / bare forward", f"{100 * args.tasks / (patterns.at - imported_at) / bare:.0f}%")
    if stages and stages.get("rate"):
        figure("  backend's rate (status) / bare forward", f"{100 * float(stages['rate']) / bare:.0f}%")


def serves_freesel(sample: Sample) -> bool:
    """Label Studio's queue is switched to a FreeSel version (it serves the tasks that have a
    prediction of it, lowest score first)."""
    return sample.project_version.startswith(VERSION_PREFIX) and sample.sampling == "Uncertainty sampling"


def reflects(sample: Sample, ranked: int) -> bool:
    """The backend's last ranking left out the labelled tasks (ranks at most ``ranked``) and is
    written to Label Studio (a backend without a write-out status writes before it records it)."""
    writeout = sample.status.get("writeout")
    written = writeout is None or writeout.get("state") == "done"
    return written and 0 < int(sample.status.get("ranked") or 0) <= ranked


def reflected_latencies(
    run: Run, labelled: list[tuple[float, int]], ranked_before: int, until: float
) -> list[Optional[float]]:
    """Seconds from each label to the first status that reflects it and every label before it
    (a task labelled twice, when /next served it to two annotators, leaves the ranking once)."""
    assert run.monitor is not None
    samples = [s for s in run.monitor.samples if s.at <= until]
    latencies: list[Optional[float]] = []
    tasks_so_far: set[int] = set()
    for at, task_id in sorted(labelled):
        tasks_so_far.add(task_id)
        hit = next((s for s in samples if s.at >= at and reflects(s, ranked_before - len(tasks_so_far))), None)
        latencies.append(hit.at - at if hit else None)
    return latencies


def phase_annotate(run: Run) -> None:
    args, monitor = run.args, run.monitor
    assert monitor is not None
    log(f"{args.annotators} annotators for {args.annotate_seconds} s, one task per {args.annotate_interval} s each")
    sessions = [
        run.ls.sign_up(f"annotator{number}-{uuid.uuid4().hex[:6]}@example.com") for number in range(args.annotators)
    ]
    ranked_before = int(monitor.latest().status.get("ranked") or 0)
    served: list[Served] = []
    labelled: list[tuple[float, int]] = []
    problems: collections.Counter[str] = collections.Counter()
    requests_before = len(run.proxy.requests)
    started = time.time()
    until = started + args.annotate_seconds
    threads = [
        threading.Thread(
            target=annotator,
            args=(
                run.ls,
                session,
                number,
                run.project_id,
                until,
                args.annotate_interval,
                served,
                labelled,
                problems,
            ),
        )
        for number, session in enumerate(sessions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ended = time.time()
    labelled_tasks = len({task_id for _, task_id in labelled})
    run.labelled_tasks = len({task_id for _, task_id in labelled} | set(run.early_labels))
    settled = monitor.wait(lambda s: s.idle and reflects(s, ranked_before - labelled_tasks), ended, args.idle_timeout)
    latencies = reflected_latencies(run, labelled, ranked_before, time.time())
    reached = [value for value in latencies if value is not None]
    figure("labels", f"{len(labelled)} ({problems.most_common() or 'no errors'})")
    twice = len(labelled) - labelled_tasks
    figure("  tasks labelled (more than once: served to two annotators)", f"{labelled_tasks} ({twice})")
    if reached:
        figure(
            "label -> ranking reflects it: median / max", f"{statistics.median(reached):.0f} s / {max(reached):.0f} s"
        )
    figure("labels never reflected by the end", sum(1 for value in latencies if value is None))
    figure("last label -> every label reflected, jobs idle", after(settled and settled.at - ended, args.idle_timeout))
    current = sum(1 for item in served if item.has_current_prediction)
    flagged = sum(1 for item in served if item.flag.startswith(PICK_FLAG))
    figure("tasks served by /next", len(served))
    figure("  with a prediction of the project's current version", f"{current} of {len(served)}")
    figure(
        "  carrying a pick flag", f"{flagged} of {len(served)} (no flag at all: {sum(1 for s in served if not s.flag)})"
    )
    scores = [item.score for item in served if item.score is not None]
    if scores:
        figure("  their score in the current version: max (0 = head)", f"{max(scores):.4f}")
    selections = monitor.selections_between(started, time.time())
    counts = run.proxy.counts_since(requests_before)
    figure("re-rankings finished", selections)
    show_counts("Label Studio requests by the backend", counts)
    if selections:
        figure(
            "  per re-ranking (all / writes)",
            f"{sum(counts.values()) / selections:.0f} / {writes(counts) / selections:.0f}",
        )
    figure(
        "FreeSel prediction rows: max during annotation / tasks", f"{monitor.max_freesel_rows(started)} / {args.tasks}"
    )


def phase_restart(run: Run, log_root: Path) -> None:
    """A settings change (a full re-ranking), SIGTERM while it writes, restart on the same port."""
    args, monitor, backend = run.args, run.monitor, run.backend
    assert monitor is not None and backend is not None
    connection = embedded_redis(log_root / "serve.log")
    features_before = feature_job_ids(connection)
    requests_before = len(run.proxy.requests)
    log(f"changing the strategy (a full re-ranking), SIGTERM after {args.kill_after_imports} prediction imports")
    # Through FreeSel's settings route: the change applies at once, whether or not Label Studio
    # calls /setup after a change of the backend's extra params.
    changed = backend.admin("PATCH", run.project_id, "settings", json={"strategy": "fds"})
    changed.raise_for_status()
    deadline = time.time() + args.kill_timeout
    while (
        time.time() < deadline and run.proxy.counts_since(requests_before)[PREDICTION_IMPORT] < args.kill_after_imports
    ):
        time.sleep(0.2)
    written_before = run.proxy.counts_since(requests_before)
    show_counts("requests before SIGTERM", written_before)
    killed_at = time.time()
    serve = backend.processes[0]
    serve.send_signal(signal.SIGTERM)
    try:
        serve.wait(timeout=120)
    except subprocess.TimeoutExpired:
        log("serve still running 120 s after SIGTERM: killing it")
        serve.kill()
    figure("SIGTERM -> backend stopped", f"{time.time() - killed_at:.1f} s")
    rows_at_stop = predictions_per_task(run.ls, run.project_id)
    figure("FreeSel rows at the stop (rows, tasks x1, tasks >1, current)", rows_at_stop)
    requests_restart = len(run.proxy.requests)
    restarted_at = time.time()
    run.start_backend(log_root / "restart", port=backend.port)
    connection = embedded_redis(log_root / "restart" / "serve.log")
    rest = monitor.wait(lambda s: s.idle and s.project_version.startswith(VERSION_PREFIX)
                        and s.current_rows >= args.tasks - run.labelled_tasks, restarted_at + 5, args.idle_timeout)
    figure("restart -> write-out done, jobs idle", after(rest and rest.at - restarted_at, args.idle_timeout))
    recomputed = feature_job_ids(connection) - features_before
    figure("pattern jobs run after the restart (0 = none recomputed)", len(recomputed))
    show_counts("Label Studio requests after the restart", run.proxy.counts_since(requests_restart))
    rows, single, duplicated, current = predictions_per_task(run.ls, run.project_id)
    figure("FreeSel rows at rest / tasks", f"{rows} / {args.tasks} ({single} tasks with one, {duplicated} with more)")
    figure("rows of the project's current version", current)
    figure("FreeSel prediction rows: max over the whole run", monitor.max_freesel_rows())
    jobs = failed_jobs(connection)
    figure("failed jobs (after the restart's Redis)", len(jobs))
    for line in collections.Counter(jobs).most_common(5):
        print(f"      {line[1]} x {line[0][:200]}")
    figure("jobs waiting for a retry", scheduled_jobs(connection))


def connect_backend(run: Run) -> None:
    project = run.ls.create_project(f"FreeSel scale {run.args.tasks}", LABEL_CONFIG)
    run.project_id = project["id"]
    assert run.backend is not None
    response = run.ls.api(
        "POST", "/api/ml", json={"url": run.backend.url, "project": run.project_id, "title": "FreeSel"}
    )
    response.raise_for_status()


def backend_environment(args: argparse.Namespace, proxy: CountingProxy, pat: str, model_dir: Path) -> dict[str, str]:
    """The backend as a user runs it: no REDIS_URL (embedded Redis and worker), default chunk
    size, retries and re-ranking interval; the tiny random model (or the default one); images from the local image
    host allowed."""
    env = backend_env("", proxy.url, pat, model_dir)
    for name in ("REDIS_URL", "FREESEL_CHUNK_SIZE", "FREESEL_JOB_RETRIES", "FREESEL_RERANK_INTERVAL"):
        env.pop(name, None)
    env["FREESEL_ALLOW_PRIVATE_DOWNLOADS"] = "true"
    if args.default_model:
        for name in ("FREESEL_MODEL", "FREESEL_TEST_RANDOM_INIT", "FREESEL_TEST_IMAGE_SIZE"):
            env.pop(name, None)
    else:
        env["FREESEL_TEST_IMAGE_SIZE"] = str(args.image_size)
    return env


def image_host(folder: Path, count: int) -> tuple[LocalHttpServer, list[str]]:
    paths = write_scenes(folder, count, (80, 60))
    routes = {f"/images/{path.name}": content(path.read_bytes(), "image/jpeg") for path in paths}
    return LocalHttpServer(routes).start(), [path.name for path in paths]


def machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"


def run_benchmark(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="freesel-scale-")))
        database_env = (
            stack.enter_context(postgres_database(args.postgres_host, args.postgres_port))
            if args.database == "postgresql"
            else {}
        )
        if database_env:
            log(f"PostgreSQL database {database_env['POSTGRE_NAME']} at {args.postgres_host}:{args.postgres_port}")
        log(f"{args.tasks} tasks, Label Studio on {args.database}; {machine()}")
        flags = {FAST_PREDICTION_IMPORT: "true"} if args.fast_prediction_import else {}
        ls = stack.enter_context(
            LabelStudioServer(args.label_studio, extra_env={**database_env, **flags}, startup_timeout=600)
        )
        figure("Label Studio start", f"{ls.start_seconds:.0f} s")
        proxy = stack.enter_context(CountingProxy(ls.url))
        images, names = image_host(work / "images", args.tasks)
        stack.callback(images.stop)
        run = Run(args, ls, proxy, work, backend_environment(args, proxy, str(ls.pat), work / "model_dir"))
        run.start_backend(work / "logs")
        stack.callback(lambda: run.backend and run.backend.stop())
        connect_backend(run)
        run.monitor = Monitor(ls, run.project_id, run.status, lambda: len(proxy.received), args.poll_interval).start()
        stack.callback(run.monitor.stop)
        run.monitor.wait(lambda s: s.idle, time.time(), 120)
        try:
            phase_import(run, images, names)
            if args.annotate_seconds > 0 and not args.stop_after_final_ranking:
                phase_annotate(run)
            if args.restart and not args.stop_after_final_ranking:
                phase_restart(run, work / "logs")
        finally:
            log(f"done; {machine()}; monitor errors: {dict(run.monitor.errors) or 'none'}")
            if args.keep_logs:
                shutil.copytree(work / "logs", args.keep_logs, dirs_exist_ok=True)
                log(f"backend logs copied to {args.keep_logs}")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=5000, help="tasks imported (5000)")
    parser.add_argument(
        "--database", choices=("sqlite", "postgresql"), default="sqlite", help="Label Studio's database (sqlite)"
    )
    parser.add_argument(
        "--annotate-seconds", type=float, default=300, help="how long the annotators work; 0 skips them (300)"
    )
    parser.add_argument("--annotators", type=int, default=3, help="simulated annotators, each a Label Studio user (3)")
    parser.add_argument("--annotate-interval", type=float, default=2.0, help="seconds per task per annotator (2)")
    parser.add_argument(
        "--switch-timeout", type=float, default=1200, help="at most this long from import to the queue switch (1200 s)"
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=300, help="at most this long for jobs to go idle after each phase (300 s)"
    )
    parser.add_argument("--no-restart", dest="restart", action="store_false", help="skip the SIGTERM and restart")
    parser.add_argument(
        "--stop-after-final-ranking", action="store_true",
        help="end once the import's final ranking is live and at rest (no annotators, no restart)",
    )
    parser.add_argument(
        "--early-tasks", type=int, default=10, help="tasks one annotator asks /next for right after the switch (10)"
    )
    parser.add_argument(
        "--bare-images", type=int, default=256, help="images through the bare forward of the model (256)"
    )
    parser.add_argument(
        "--kill-after-imports",
        type=int,
        default=3,
        help="SIGTERM once the re-ranking imported this many batches of predictions (3)",
    )
    parser.add_argument(
        "--kill-timeout", type=float, default=300, help="SIGTERM after this long if fewer imports came (300 s)"
    )
    parser.add_argument("--image-size", type=int, default=32, help="the tiny model's input size (32)")
    parser.add_argument(
        "--default-model", action="store_true",
        help="the backend's default model (offline DINOv2 ViT-S/14) instead of the tiny random one",
    )
    parser.add_argument("--poll-interval", type=float, default=2.0, help="seconds between status samples (2)")
    parser.add_argument(
        "--label-studio", default=os.environ.get("LS_BIN", str(REPO_ROOT / ".venv-ls" / "bin" / "label-studio"))
    )
    parser.add_argument("--postgres-host", default=DEFAULT_HOST)
    parser.add_argument("--postgres-port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--fast-prediction-import", action="store_true",
        help="start Label Studio with its faster prediction import flag on (as docker-compose.yml does)",
    )
    parser.add_argument("--keep-logs", type=Path, help="copy the backend's logs here at the end")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_benchmark(parse_args())
