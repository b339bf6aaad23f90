"""A project's selection report, built by a worker for ``GET /freesel/projects/<id>/report``.

Requests never run the model: the endpoint answers the stored HTML of the project's current
selection run, or enqueues :func:`build_project_report` (one per project at a time) and says to
retry. The selection job keeps what it ranked (a :class:`~freesel_backend.server.store.SelectionRecord`:
task ids, order, distances, picks, seeds, copy groups), so the report shows exactly
that run without drawing again. Thumbnails are downloaded from Label Studio (a failed download
leaves that thumbnail out, with its reason on the page); the patch views need the worker's
extractor to be the one that made the stored patterns, and are left out otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

from PIL import Image
from rq.job import Job

from ..engine import ImageLoadError
from .enqueue import JobProgress, enqueue_report
from .task_images import extractor_for, open_task_image, project_image_field, version_of
from .services import Services, job_services
from ..labelstudio.client import LabelStudioError
from ..report.html import ReportOptions, build_report, report_data
from .store import SelectionRecord

log = logging.getLogger(__name__)

REPORT_OPTIONS = ReportOptions(map_thumbnails=200)
# Project settings of no use in the report.
HIDDEN_SETTINGS = ("enabled", "explicit")


class NoSelectionYet(LookupError):
    """The project has no selection run to report on."""


def stored_report_or_job(services: Services, project_id: int) -> str | Job:
    """The stored report HTML of the project's current selection run, else the job building it."""
    store = services.store
    record = store.get_selection(project_id)
    if record is None:
        raise NoSelectionYet(f"project {project_id} has no FreeSel ranking yet: see its status for progress")
    html = store.get_report(project_id, record.model_version)
    return html if html is not None else enqueue_report(services, project_id)


def build_project_report(project_id: int) -> dict[str, Any]:
    """Build the report of the project's current selection run and store it under its model version."""
    services = job_services()
    JobProgress(0, stage="building the report")  # what status shows while this job runs
    store = services.store
    record = store.get_selection(project_id)
    if record is None:
        return {"skipped": f"project {project_id} has no selection run"}
    patterns = store.load_patterns(project_id, record.patterns_version, record.task_ids)
    missing = [t for t in record.task_ids if t not in patterns]
    if missing:
        raise ValueError(
            f"project {project_id}: {len(missing)} ranked tasks have no stored patterns any more "
            f"(version {record.patterns_version}, e.g. task {missing[0]}); reselect, then ask for the report again"
        )
    project_settings = store.get_settings(project_id)
    extractor = extractor_for(services.settings, project_settings)
    made_the_patterns = version_of(extractor) == record.patterns_version
    image_field = project_image_field(services, project_id)

    def open_image(index: int) -> Image.Image:
        task_id = record.task_ids[index]
        try:
            return open_task_image(services.downloader, services.client.get_task(task_id), image_field)
        except LabelStudioError as error:
            raise ImageLoadError(f"task {task_id}: {error}") from None

    preset = project_settings.describe_preset(store.get_state(project_id))
    failures = store.failures(project_id, record.patterns_version)
    data = report_data(
        [f"task {t}" for t in record.task_ids],
        [patterns[t] for t in record.task_ids],
        record.ranking(),
        record.duplicates(),
        model_id=extractor.model_id
        if made_the_patterns
        else f"patterns version {record.patterns_version} (settings changed since)",
        settings=_shown_settings(record, project_settings.to_dict(), preset),
        failures={f"task {t}": reason for t, reason in sorted(failures.items())},
        title=f"FreeSel — project {project_id}",
        copies=True,
    )
    html = build_report(data, open_image, extractor=extractor if made_the_patterns else None, options=REPORT_OPTIONS)
    store.save_report(project_id, record.model_version, html)
    log.info("project %s: report of %s stored (%.1f MB)", project_id, record.model_version, len(html.encode()) / 1e6)
    return {"model_version": record.model_version, "bytes": len(html.encode())}


def _shown_settings(record: SelectionRecord, project_settings: dict[str, Any], preset: str) -> dict[str, Any]:
    shown = {name: value for name, value in project_settings.items() if name not in HIDDEN_SETTINGS}
    return {
        "preset": preset,
        **shown,
        "model version": record.model_version,
        "patterns version": record.patterns_version,
    }
