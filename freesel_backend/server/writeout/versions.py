"""FreeSel's model versions in a project, and the project's sampling before FreeSel switched it."""

from __future__ import annotations

import time

from ...labelstudio.client import LabelStudioClient
from ..store import Store

UNCERTAINTY_SAMPLING = "Uncertainty sampling"
VERSION_PREFIX = "freesel-"


def new_model_version(store: Store, project_id: int) -> str:
    """A model version name not used before in the project: freesel-v0007-20260101-120000."""
    return f"{VERSION_PREFIX}{store.next_version_number(project_id):04d}-{time.strftime('%Y%m%d-%H%M%S')}"


def remember_previous_sampling(client: LabelStudioClient, store: Store, project_id: int) -> None:
    """On the first switch to FreeSel, keep the project's sampling and model version for disable."""
    if "previous_sampling" in store.get_state(project_id):
        return
    project = client.get_project(project_id)
    store.remember_once(
        project_id,
        previous_sampling=str(project.get("sampling") or ""),
        previous_model_version=str(project.get("model_version") or ""),
    )
