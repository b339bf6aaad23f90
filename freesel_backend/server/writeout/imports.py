"""Importing predictions into Label Studio, never twice: each batch is marked in flight before its
request, and an import whose answer never came (a timeout, a killed worker) is looked up before
anything is imported again. Also: Label Studio's ids of imported predictions, and predictions it
holds that the backend had not recorded."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterable, Mapping, Sequence

from ...labelstudio.client import LabelStudioUnavailable
from .context import OutOfRequests, Step

log = logging.getLogger(__name__)

# Label Studio recounts the predictions of every task of the project after each import request
# (its default import), so fewer, larger requests cost less: at 50,000 tasks on PostgreSQL one
# request of 50,000 took 65 s, three of 20,000 took 157 s (docs/scale.md). One request of 50,000
# still ends within the default write timeout (FREESEL_LABEL_STUDIO_WRITE_TIMEOUT, 120 s).
IMPORT_BATCH = 50000


def prediction(task: int, score: float, version: str) -> dict[str, Any]:
    """No ``cluster``: Label Studio's /next puts tasks of clusters the annotator has labelled
    behind the others, and cluster numbers that change between rankings would reorder the head."""
    return {"task": int(task), "result": [], "score": float(score), "model_version": version}


def recorded(listed: Mapping[str, Any]) -> dict[str, Any]:
    """A prediction as Label Studio lists it, as the backend records it."""
    return prediction(int(listed["task"]), float(listed["score"]), str(listed["model_version"])) | {
        "id": int(listed["id"])
    }


def import_batch(step: Step, batch: Mapping[int, dict[str, Any]], staged: str | None = None) -> None:
    """Import ``batch`` (to the live version, or the ``staged`` one), never twice: the batch is
    marked in flight first, and a request that timed out (or a step killed meanwhile, see
    :func:`recover_import`) is looked up in Label Studio before anything else is imported."""
    if not batch:
        return
    step.spend()
    version = next(iter(batch.values()))["model_version"]
    in_flight = {"model_version": version, "staged": staged or "", "tasks": sorted(batch), "sent_at": time.time()}
    step.store.update_state(step.project_id, import_in_flight=json.dumps(in_flight))
    try:
        step.client.import_predictions(  # one request: the in-flight record and the lock cover exactly it
            step.project_id, list(batch.values()), chunk_size=len(batch),
            timeout=step.settings.label_studio_write_timeout_s,
        )
    except LabelStudioUnavailable as error:
        if not error.timed_out:
            step.store.forget_state(step.project_id, "import_in_flight")
            raise
        step.writes += 1
        log.warning(
            "project %s: importing %d predictions timed out: asking Label Studio what it stored",
            step.project_id,
            len(batch),
        )
        recover_import(step, in_flight)
        raise OutOfRequests() from None  # the next step plans again from what Label Studio has
    step.writes += 1
    step.store.save_imported(step.project_id, batch, staged)


def recover_import(step: Step, in_flight: Mapping[str, Any]) -> None:
    """Record what Label Studio stored of an import whose answer never came (timed out, or the
    worker died): what it shows after waiting is recorded, the rest is imported again later."""
    version, tasks = in_flight["model_version"], set(in_flight["tasks"])
    stored = _await_import(step, version, tasks, float(in_flight["sent_at"]))
    log.warning(
        "project %s: %d of %d predictions of an unanswered import are in Label Studio",
        step.project_id,
        len(stored),
        len(tasks),
    )
    step.store.save_imported(step.project_id, {t: recorded(p) for t, p in stored.items()}, in_flight["staged"] or None)


def _await_import(step: Step, version: str, tasks: set[int], sent_at: float) -> dict[int, dict[str, Any]]:
    """Predictions of ``version`` for ``tasks`` once Label Studio shows all of them, or what it
    shows about four write timeouts (at least 20 s) after the import was sent."""
    deadline = sent_at + max(20.0, 4 * step.settings.label_studio_write_timeout_s)
    while True:
        step.lock.reacquire()
        stored = listed_predictions(step, version, tasks)
        if len(stored) == len(tasks) or time.time() > deadline:
            return stored
        time.sleep(1.0)


def listed_predictions(step: Step, version: str, tasks: Iterable[int]) -> dict[int, dict[str, Any]]:
    wanted = set(tasks)
    return {
        int(p["task"]): p
        for p in step.client.list_predictions(step.project_id)
        if p.get("model_version") == version and int(p["task"]) in wanted
    }


def fill_ids(step: Step, version: str, staged: str | None = None) -> None:
    """Label Studio's ids of the imported predictions (of the live version, or the ``staged``
    one) that have none recorded yet (one listing)."""
    predictions = step.store.all_predictions(step.project_id, staged=staged)
    without = {t for t, p in predictions.items() if "id" not in p}
    if not without:
        return
    step.spend()
    listed = listed_predictions(step, version, without)
    step.store.update_predictions(
        step.project_id, {t: {**predictions[t], "id": int(listed[t]["id"])} for t in listed}, staged=staged
    )
    lost = without - set(listed)
    if lost:  # imported but not listed: forget them (a later pass looks again before importing)
        step.store.forget_predictions(step.project_id, lost, staged=staged)
        log.warning(
            "project %s: %d imported predictions of %s are not listed by Label Studio",
            step.project_id,
            len(lost),
            version,
        )


def adopt(step: Step, version: str, tasks: Sequence[int]) -> bool:
    """Record predictions of the live version that Label Studio holds for ``tasks`` although the
    backend has none recorded (made by Label Studio from /predict answers, e.g. its "Retrieve
    Predictions" after a prediction was deleted): they are changed, not imported again."""
    step.spend()
    found = listed_predictions(step, version, tasks)
    step.store.update_predictions(step.project_id, {t: recorded(p) for t, p in found.items()})
    return bool(found)
