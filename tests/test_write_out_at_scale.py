"""The write-out at a CI-sized scale (1,000 tasks, tiny model) against a real Label Studio on
SQLite and on PostgreSQL, through a forwarding proxy that counts the backend's requests: one
FreeSel prediction per task at rest, also after a write-out step killed mid-import (and retried)
and with every bulk import timing out on the client side; the picks at the head of the queue carry their flag;
a re-ranking after a label writes in proportion to how the head changed, not to the pool."""

from __future__ import annotations

import json
import signal
from collections import Counter

import pytest

from freesel_backend.server.store import Store
from freesel_backend.server.writeout.plan import PICK_FLAG
from harness.backend import BackendProcesses, backend_env, idle, wait_for
from tests.helpers import noise_image
from harness.local_http import LabelStudioStandIn, LocalHttpServer, content
from harness.local_http import encoded
from harness.label_studio import LABEL_CONFIG, annotate
from tests.test_faults import FAST_RECOVERY, start_worker, stop_group, stopped_afterwards

TASKS = 1000
HEAD = 40
TOP = 20
SCALE_ENV = {
    **FAST_RECOVERY,
    "FREESEL_TEST_IMAGE_SIZE": "32",
    "FREESEL_CHUNK_SIZE": "250",
    "FREESEL_HEAD_SIZE": str(HEAD),
    "FREESEL_TOP_BEFORE_IMPORTS": str(TOP),
    "FREESEL_RERANK_INTERVAL": "1",
    # every bulk import outlives this: the backend must ask Label Studio what it stored
    "FREESEL_LABEL_STUDIO_WRITE_TIMEOUT": "0.05",
}
WRITES = ("POST", "PATCH", "PUT", "DELETE")
IMPORT_HELD_S = 3.0


def held_import(method: str, path: str) -> float:
    """Each import waits a while before Label Studio starts it, so that a worker can be killed
    while one is in flight, however fast Label Studio stores it."""
    return IMPORT_HELD_S if path.split("?")[0].endswith("/import/predictions") else 0.0


def freesel_predictions(ls, project_id: int) -> list[dict]:
    return [
        p
        for p in ls.api("GET", "/api/predictions/", params={"project": project_id}).json()
        if p["model_version"].startswith("freesel-")
    ]


def queue_by_score(ls, project_id: int) -> list[int]:
    """Unlabelled task ids in the order /next serves them (lowest score of the project's version first)."""
    version = ls.api("GET", f"/api/projects/{project_id}/").json()["model_version"]
    tasks = ls.api("GET", "/api/tasks/", params={"project": project_id, "page_size": TASKS + 10}).json()["tasks"]
    labelled = {t["id"] for t in tasks if t["is_labeled"]}
    mine = [
        p for p in freesel_predictions(ls, project_id) if p["model_version"] == version and p["task"] not in labelled
    ]
    return [p["task"] for p in sorted(mine, key=lambda p: p["score"])]


def flags(ls, project_id: int) -> dict[int, str]:
    tasks = ls.api("GET", "/api/tasks/", params={"project": project_id, "page_size": TASKS + 10}).json()["tasks"]
    return {t["id"]: t["data"]["freesel"] for t in tasks if "freesel" in t["data"]}


def in_order_kept(before: list[int], after: list[int]) -> int:
    """Length of the longest common subsequence of two heads (tasks that kept their relative order)."""
    previous = [0] * (len(after) + 1)
    for task in before:
        current = [0]
        for j, other in enumerate(after):
            current.append(previous[j] + 1 if task == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def written(status: dict, after_ranking: int) -> dict | None:
    writeout = status["writeout"]
    done = idle(status) and writeout and writeout["ranking"] > after_ranking and writeout["state"] == "done"
    return status if done else None


@pytest.fixture(params=["sqlite", "postgresql"])
def scale_setup(request, label_studio, redis_connection, redis_url, tmp_path):
    ls = label_studio if request.param == "sqlite" else request.getfixturevalue("label_studio_on_postgresql")
    images = {
        f"/img/{n}.png": content(encoded(noise_image(n, size=(32, 32)), "PNG"), "image/png") for n in range(TASKS)
    }
    with LocalHttpServer(images) as image_host:
        proxy = LabelStudioStandIn(ls.url).start()
        proxy.holding = held_import
        env = {**backend_env(redis_url, proxy.url, ls.pat, tmp_path / "model_dir"), **SCALE_ENV}
        backend = BackendProcesses(env, tmp_path).start(workers=0)
        workers = [start_worker(backend.env, tmp_path / "worker.log")]
        with stopped_afterwards(backend, proxy, workers):
            yield ls, proxy, backend, image_host, workers


@pytest.mark.slow
def test_a_thousand_tasks_one_prediction_each_head_flagged_and_writes_per_reranking_bounded_by_head_changes(
    scale_setup, redis_connection
):
    ls, proxy, backend, image_host, workers = scale_setup
    logs = backend.log_dir
    pid = ls.create_project("FreeSel at scale", LABEL_CONFIG)["id"]
    ids = ls.import_tasks(pid, [{"image": f"{image_host.url}/img/{n}.png"} for n in range(TASKS)])
    # as many picks as the head holds: each label leaves a pick to draw afresh at the head's end,
    # whose score is changed in place (with more picks, the next one moves up at the cost of its flag)
    settings = json.dumps({"strategy": "prob", "budget": HEAD})
    response = ls.api(
        "POST", "/api/ml", json={"url": backend.url, "project": pid, "title": "FreeSel", "extra_params": settings}
    )
    assert response.status_code == 201, response.text

    # the first full import is under way: the worker is killed while an import waits for its
    # answer; the job is retried by a new worker, which asks Label Studio what it stored
    store = Store(redis_connection)
    wait_for(lambda: "import_in_flight" in store.get_state(pid), 300, "the first import of predictions")
    stop_group(workers[0], signal.SIGKILL)
    workers.append(start_worker(backend.env, logs / "survivor.log"))
    status = wait_for(lambda: written(backend.status(pid), 0), 300, "the first ranking written out")
    assert "timed out" in (logs / "worker.log").read_text() + (logs / "survivor.log").read_text()
    assert Counter(p["task"] for p in freesel_predictions(ls, pid)) == {t: 1 for t in ids}
    assert status["live"]["model_version"] == ls.api("GET", f"/api/projects/{pid}/").json()["model_version"]
    # the queue is switched once the head's predictions are in; the rest are imported after it
    switch_and_imports = [
        method
        for method, path in proxy.requests
        if (method, path.split("?")[0])
        in {("PATCH", f"/api/projects/{pid}/"), ("POST", f"/api/projects/{pid}/import/predictions")}
    ]
    last_import = max(i for i, method in enumerate(switch_and_imports) if method == "POST")
    assert switch_and_imports.index("PATCH") < last_import

    queue = queue_by_score(ls, pid)
    assert sorted(queue) == ids and {t: f for t, f in flags(ls, pid).items() if f == PICK_FLAG} == {
        t: PICK_FLAG for t in queue[:HEAD]
    }
    # the top of the head is flagged before the rest's predictions are imported, the rest of the head after
    flag_writes = {int(path.split("/")[3]): i for i, (method, path) in enumerate(proxy.requests) if method == "PATCH"
                   and path.startswith("/api/tasks/")}
    rest_imported = max(i for i, (method, path) in enumerate(proxy.requests) if path.endswith("/import/predictions"))
    assert max(flag_writes[t] for t in queue[:TOP]) < rest_imported < min(flag_writes[t] for t in queue[TOP:HEAD])

    head_changes = 0
    for _ in range(3):  # an annotator labels what /next serves; each label re-ranks
        served = ls.api("GET", f"/api/projects/{pid}/next").json()
        assert served["id"] == queue[0] and served["data"]["freesel"] == PICK_FLAG
        ranking, sent = backend.status(pid)["writeout"]["ranking"], len(proxy.requests)
        annotate(ls, served["id"])
        status = wait_for(lambda: written(backend.status(pid), ranking), 120, "the re-ranking written out")
        requests = proxy.requests[sent:]
        new_queue = queue_by_score(ls, pid)
        changed = HEAD - in_order_kept(queue[1 : HEAD + 1], new_queue[:HEAD])
        head_changes += changed
        writes = sum(method in WRITES for method, _ in requests)
        print(
            f"re-ranking: head changed by {changed} of {HEAD}; {len(requests)} Label Studio requests, {writes} writes"
        )
        # per task that entered or left the head: a score and a flag at most
        assert writes <= 4 * changed + 1 and len(requests) <= writes + 5
        assert status["writeout"]["label_studio_requests"] <= len(requests)
        assert Counter(p["task"] for p in freesel_predictions(ls, pid)) == {t: 1 for t in ids}
        picks = {t for t, f in flags(ls, pid).items() if f == PICK_FLAG}
        assert set(new_queue[:HEAD]) <= picks
        queue = new_queue
    assert head_changes > 0  # scores were changed in place, not only kept
    print(json.dumps(status["writeout"]))
