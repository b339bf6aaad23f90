"""A project's copy groups, from the copy records its pattern jobs stored (``copy_pass.py``) and
the pair scores earlier groupings stored (only pairs with a new file are verified)."""

from __future__ import annotations

from typing import Sequence

from ..engine import DuplicateGroups
from ..engine.copies import CopySignature
from ..engine.file_copies import PairKey, copies_of_files
from .store import Store


def project_copies(store: Store, project_id: int, task_ids: Sequence[int], threshold: float) -> DuplicateGroups:
    """The copy groups among ``task_ids`` (image ``i`` is ``task_ids[i]``) at ``threshold``; a
    task without a record (its file not read yet) or without a signature is grouped only with
    byte-identical files."""
    records = store.copy_records(project_id, task_ids)
    found = [records.get(int(task_id)) for task_id in task_ids]
    return copies_of_files(
        [record.digest if record else None for record in found],
        [CopySignature.from_bytes(record.signature) if record and record.signature else None for record in found],
        threshold,
        StoredPairScores(store, project_id),
    )


class StoredPairScores:
    """The project's copy scores of pairs of files, kept in the store (see ``KnownPairScores``)."""

    def __init__(self, store: Store, project_id: int) -> None:
        self._store, self._project_id = store, project_id

    def scores_of(self, keys: Sequence[PairKey]) -> list[float | None]:
        return self._store.copy_pair_scores(self._project_id, keys)

    def add_scores(self, scores: dict[PairKey, float]) -> None:
        self._store.add_copy_pair_scores(self._project_id, scores)
