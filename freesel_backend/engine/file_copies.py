"""Copy groups of image files: byte-identical files (equal digests), then the copy detector
(:mod:`.copies`) over one file per digest, each of its groups joined by the byte-identical twins
of its members. Comparing one file per digest keeps a folder imported many times as cheap to
compare as one import, and the twins of a copy are copies of everything it is a copy of, so the
groups stay cliques."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .copies import CopySignature, copy_groups, scored_candidates
from .duplicates import DuplicateGroups


def copies_of_files(
    digests: Sequence[str | None], signatures: Sequence[CopySignature | None], threshold: float
) -> DuplicateGroups:
    """Groups of the files ``i`` (``digests[i]``: its content digest, None if unknown;
    ``signatures[i]``: its copy signature, None if it has none), each group sorted, its
    representative (lowest index) first. A file without a signature is grouped only with the
    byte-identical ones."""
    twins: dict[int, list[int]] = {}  # first file of a digest -> every file of that digest
    first_of: dict[str, int] = {}
    for index, digest in enumerate(digests):
        first = index if digest is None else first_of.setdefault(digest, index)
        twins.setdefault(first, []).append(index)
    firsts = sorted(twins)
    pairs, scores = scored_candidates([signatures[index] for index in firsts])
    found = copy_groups(len(firsts), pairs, scores, threshold)
    grouped = [sorted(index for member in group for index in twins[firsts[member]]) for group in found.groups]
    in_a_group = {firsts[member] for group in found.groups for member in group}
    grouped += [files for first, files in twins.items() if len(files) > 1 and first not in in_a_group]
    groups = sorted(grouped)
    group_of = np.full(len(digests), -1, dtype=np.int64)
    for position, group in enumerate(groups):
        group_of[group] = position
    return DuplicateGroups(groups=groups, group_of=group_of, threshold=threshold)
