"""The worker's pattern extractor and the task images it reads, for the patterns job
(``jobs.py``) and the report job (``report_job.py``).

The extractor is made once per worker process for a project's settings and reused; its patterns
version names what its patterns depend on, so that patterns of different settings never mix in a
ranking. A task's image is read from the data field the project's label config names.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Mapping

from ..engine import ImageLoadError, PatternExtractor, load_image
from ..labelstudio.client import LabelStudioError, LabelStudioUnavailable
from ..labelstudio.download import Downloader
from ..labelstudio.label_config import image_field_of
from .pattern_stages import DownloadClock
from .services import Services
from .settings import ProjectSettings, Settings
from .store import patterns_version

# Answers meaning "Label Studio is down or overloaded" (None: no answer): retry the chunk later.
# Any other error (a 500 for one missing upload, say) belongs to that one task.
LABEL_STUDIO_DOWN = frozenset({None, 429, 502, 503, 504})


@functools.lru_cache(maxsize=2)
def _cached_extractor(
    model: str, patterns_per_image: int, attention_ratio: float, seed: int, settings: Settings
) -> PatternExtractor:
    return PatternExtractor(
        model,
        patterns_per_image=patterns_per_image,
        attention_ratio=attention_ratio,
        seed=seed,
        device=settings.device,
        precision=settings.precision,  # type: ignore[arg-type]
        batch_size=settings.batch_size,
        decode_workers=settings.download_workers,
        random_init=settings.test_random_init,
        image_size=settings.test_image_size,
        cache_dir=settings.model_dir / "models",
    )


def extractor_for(settings: Settings, project: ProjectSettings) -> PatternExtractor:
    """The worker's extractor for these project settings (created once, then reused)."""
    return _cached_extractor(
        project.model_name(settings.model),
        project.patterns_per_image,
        float(project.attention_ratio),
        project.seed,
        settings,
    )


def version_of(extractor: PatternExtractor) -> str:
    options = extractor.settings
    return patterns_version(
        extractor.model_id,
        patterns_per_image=options.patterns_per_image,
        attention_ratio=options.attention_ratio,
        image_size=extractor.input_size,
        kmeans_iterations=options.kmeans_iterations,
        seed=options.seed,
        random_init=extractor.backbone_spec.random_init,
        # bf16 patterns differ from fp32 ones by rounding: never mixed in one ranking. fp32 stays
        # out of the name so that patterns stored before precision was part of it stay valid.
        **({"precision": extractor.precision} if extractor.precision != "fp32" else {}),
    )


def project_image_field(services: Services, project_id: int) -> str:
    """The task data field holding the image, read from the label config once and kept in the project state."""
    field = services.store.get_state(project_id).get("image_field")
    if not field:
        field = image_field_of(services.client.get_label_config(project_id))
        services.store.update_state(project_id, image_field=field)
    return field


def open_task_image(downloader: Downloader, task: Mapping[str, Any], image_field: str) -> Any:
    """The task's image, downloaded and decoded (errors as :func:`task_image_bytes` raises them)."""
    return load_image(task_image_bytes(downloader, task, image_field))


def task_image_bytes(
    downloader: Downloader, task: Mapping[str, Any], image_field: str, downloads: DownloadClock | None = None
) -> bytes:
    """The task's image file, downloaded (timed on ``downloads``); a reason of its own as an
    ImageLoadError when it cannot be had, and Label Studio's own unavailability re-raised (the job
    is retried later)."""
    data = task.get("data") or {}
    if image_field not in data:
        raise ImageLoadError(
            f"task has no {image_field!r} field in its data (fields: {', '.join(map(str, data)) or 'none'})"
        )
    if not isinstance(data[image_field], str):
        raise ImageLoadError(f"data[{image_field!r}] is a {type(data[image_field]).__name__}, not an image URL")
    try:
        with downloads.timing() if downloads else contextlib.nullcontext():
            return downloader.task_file(task, image_field)
    except LabelStudioError as error:
        label_studio_down = isinstance(error, LabelStudioUnavailable) and error.status_code in LABEL_STUDIO_DOWN
        if label_studio_down and _hosted_by_label_studio(downloader, data[image_field], int(task["id"])):
            raise  # Label Studio itself is unavailable: the job fails and RQ retries it later
        raise ImageLoadError(f"image download failed: {error}") from None


def _hosted_by_label_studio(downloader: Downloader, uri: str, task_id: int) -> bool:
    try:
        return downloader.resolve_url(uri, task_id)[1]
    except LabelStudioError:
        return False
