"""The copy detector's share of a pattern job, done on the bytes and pixels the job already has.

Each downloaded file is hashed first: a file the project already has patterns for (a re-imported
folder, the same upload twice) takes those patterns and is never decoded nor run through the
model. Every other file, once decoded for the model, gets its copy signature (or the detector's
reason for having none); so does a task whose patterns were stored before copy records were kept,
with no forward. Both go to the store as the task's :class:`~.store.CopyRecord`, from which
rankings build the project's copy groups (``copy_groups.py``).
"""

from __future__ import annotations

import io
import threading
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image

from ..engine import ImageLoadError, load_image
from ..engine.copies import CopySignatureError, content_digest, copy_signature
from .store import CopyRecord, Store


class KnownFile(ImageLoadError):
    """The task's file is one the project already has patterns for: it needs no forward (the
    extractor skips a source whose opening raises an ImageLoadError; :class:`CopyPass` keeps the
    patterns it takes instead)."""


class CopyPass:
    """One pattern job's digests and signatures (its background threads share it)."""

    def __init__(self, store: Store, project_id: int, version: str) -> None:
        self._store, self._project_id, self._version = store, project_id, version
        self._lock = threading.Lock()
        self.records: dict[int, CopyRecord] = {}
        self.reused: dict[int, np.ndarray] = {}  # task id -> the patterns of the same file, already stored

    def opener(self, download: Callable[[Mapping[str, Any]], bytes]) -> Callable[[Mapping[str, Any]], Image.Image]:
        """``open_image`` for the extractor: ``download`` a task's file, then hash and decode it."""

        def open_task(task: Mapping[str, Any]) -> Image.Image:
            return self.open(int(task["id"]), download(task))

        return open_task

    def open(self, task_id: int, data: bytes) -> Image.Image:
        """The decoded image of the task's file ``data`` with its copy record kept; a
        :class:`KnownFile` when the project has patterns for these very bytes."""
        digest = content_digest(data)
        known = self._store.task_of_digest(self._project_id, digest)
        if known is not None and known != task_id:
            patterns = self._store.load_patterns(self._project_id, self._version, [known]).get(known)
            if patterns is not None:
                original = self._store.copy_records(self._project_id, [known]).get(known)
                self._keep(
                    task_id, CopyRecord(digest, original.signature, original.reason) if original else None, patterns
                )
                raise KnownFile(f"the same file as task {known}")
        image = load_image(data)
        own = self._store.load_patterns(self._project_id, self._version, [task_id]).get(task_id)
        self._keep(task_id, record_of(digest, data, image), own)
        if own is not None:  # patterns stored before copy records were kept: the record only
            raise KnownFile("its patterns are stored already")
        return image

    def _keep(self, task_id: int, record: CopyRecord | None, patterns: np.ndarray | None = None) -> None:
        with self._lock:
            if record is not None:
                self.records[task_id] = record
            if patterns is not None:
                self.reused[task_id] = patterns

    def save(self, patterns: Mapping[int, np.ndarray]) -> None:
        """Store the records of the tasks that got ``patterns`` (a file the model could not read
        has no record: its failure says why)."""
        self._store.save_copy_records(self._project_id, {t: r for t, r in self.records.items() if t in patterns})


def record_of(digest: str, data: bytes, image: Image.Image) -> CopyRecord:
    """The copy record of a file (``data``) decoded as ``image``: its signature from the decoded
    pixels, or the detector's reason why it has none. An animated file's first frame is all the
    decoded image shows, so the file's own header is asked (no pixels decoded) whether it is animated."""
    with Image.open(io.BytesIO(data)) as header:
        try:
            signature = copy_signature(header if getattr(header, "is_animated", False) else image)
        except CopySignatureError as error:
            return CopyRecord(digest, None, str(error))
    return CopyRecord(digest, signature.to_bytes())
