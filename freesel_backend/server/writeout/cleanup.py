"""Deleting FreeSel's predictions: old versions once a new one is live, all of them on disable;
one request per prediction, a batch at a time under the write lock, letting a waiting write-out
step go first."""

from __future__ import annotations

import logging
import time
from typing import Iterable

from ..enqueue import writeout_waiting
from ..services import Services, job_services
from .context import write_lock
from .versions import VERSION_PREFIX

log = logging.getLogger(__name__)

DELETE_BATCH = 50
# A cleanup batch waits at most this long for a waiting write-out step to take the write lock first.
WRITEOUT_TURN_S = 10.0


def delete_freesel_predictions(services: Services, project_id: int, keep: Iterable[str] = ()) -> int:
    """Delete the project's FreeSel predictions, but those of the model versions in ``keep``; one
    request each (a whole-version DELETE takes ~14 ms per prediction in one request and outlives
    client timeouts), holding the write lock per batch. Returns how many were deleted."""
    kept = set(keep)
    doomed = [
        int(p["id"])
        for p in services.client.list_predictions(project_id)
        if str(p.get("model_version") or "").startswith(VERSION_PREFIX) and p.get("model_version") not in kept
    ]
    for start in range(0, len(doomed), DELETE_BATCH):
        give_way_to_writeout(services, project_id)
        with write_lock(services, project_id):
            for prediction_id in doomed[start : start + DELETE_BATCH]:
                services.client.delete_prediction(prediction_id)
    return len(doomed)


def give_way_to_writeout(services: Services, project_id: int, turn_s: float = WRITEOUT_TURN_S) -> None:
    """Before a cleanup batch: while a write-out step of the project waits, let it take the write
    lock first (waiting at most ``turn_s``). Write-out steps and cleanup batches then take turns:
    a label's re-ranking reaches Label Studio before old predictions go, and the deletion still
    moves on by a batch per step (a cleanup worker would otherwise take the lock back at once)."""
    lock = write_lock(services, project_id)
    deadline = time.monotonic() + turn_s
    while writeout_waiting(services, project_id) and not lock.locked() and time.monotonic() < deadline:
        time.sleep(0.2)


def delete_old_versions(project_id: int) -> dict[str, int]:
    """Delete FreeSel predictions of versions that are neither live nor being imported."""
    services = job_services()
    store = services.store
    keep = {store.get_state(project_id).get("model_version", "")}
    target = store.get_target(project_id)
    if target and target["full"] and store.get_settings(project_id).enabled:
        keep.add(target["model_version"])
    deleted = delete_freesel_predictions(services, project_id, keep=keep)
    log.info("project %s: %d predictions of old versions deleted", project_id, deleted)
    return {"deleted_predictions": deleted}
