"""Where the pattern jobs spend their time, per stage: what status reports as ``pattern_stages``.

A pattern job downloads and decodes its images in background threads while the model runs on
the batches already opened (the engine's ``extract_sources``), then writes the patterns to Redis
in one round trip. Wall, forward and store time pass in the job's own thread, one after the
other; download and decode time are summed over the background threads and overlap the forward,
so their shares of the wall time tell how busy those threads were, not what they added to it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator, Mapping

from ..engine import ExtractionTimings
from .store import PATTERN_STAGES


class DownloadClock:
    """Download time summed over the threads that download (safe to share between them)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.seconds += elapsed


def job_stages(wall_s: float, downloads: DownloadClock, timings: ExtractionTimings, store_s: float) -> dict[str, float]:
    """One job's seconds per stage. The engine's opening time holds the download (the job's
    ``open_image`` downloads, then decodes): decode is the rest of it, resizing included."""
    return {
        "wall_s": wall_s,
        "download_s": downloads.seconds,
        "decode_s": max(0.0, timings.open_s - downloads.seconds),
        "forward_s": timings.forward_s,
        "store_s": store_s,
    }


def stages_summary(sums: Mapping[str, float]) -> dict[str, Any] | None:
    """The project's sums as status shows them: tasks, seconds per stage and tasks per wall
    second (of one worker: the sum of its jobs' wall times); None before any pattern job ran."""
    tasks = int(sums.get("tasks", 0))
    wall_s = float(sums.get("wall_s", 0.0))
    if not tasks or wall_s <= 0:
        return None
    seconds = {stage: round(float(sums.get(stage, 0.0)), 3) for stage in PATTERN_STAGES}
    return {"tasks": tasks, **seconds, "rate": round(tasks / wall_s, 2)}
