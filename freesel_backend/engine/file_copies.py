"""Copy groups of image files: byte-identical files (equal digests), then the copy detector
(:mod:`.copies`) over one file per digest, each of its groups joined by the byte-identical twins
of its members. Comparing one file per digest keeps a folder imported many times as cheap to
compare as one import, and the twins of a copy are copies of everything it is a copy of, so the
groups stay cliques.

The score of a pair of files depends on their two signatures alone, so a growing project keeps
the scores of the pairs compared so far (a :class:`KnownPairScores`): each grouping still finds
the candidate pairs among all files (a new file can push an old pair out of the candidates), but
verifies only the candidates never scored before, those that involve a new file. The threshold
applies at grouping time, so a threshold change needs no comparison at all."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from .copies import CopySignature, candidates_of, copy_groups, scores_of_pairs
from .duplicates import DuplicateGroups

# The content digests of two files, the lower-placed first: a pair's score depends on which file
# is searched against which (distinct pictures can differ by 0.3, copies in the fourth digit), so a
# pair whose files swap places is verified again rather than take the other order's score.
PairKey = tuple[str, str]


class KnownPairScores(Protocol):
    """The copy scores of the pairs of files scored so far, by their digests."""

    def scores_of(self, keys: Sequence[PairKey]) -> list[float | None]:
        """Each pair's score, None for a pair never scored."""
        ...

    def add_scores(self, scores: dict[PairKey, float]) -> None: ...


class PairScoresInMemory:
    """Known pair scores kept in a dict (one process's groupings)."""

    def __init__(self) -> None:
        self.scores: dict[PairKey, float] = {}

    def scores_of(self, keys: Sequence[PairKey]) -> list[float | None]:
        return [self.scores.get(key) for key in keys]

    def add_scores(self, scores: dict[PairKey, float]) -> None:
        self.scores.update(scores)


def copies_of_files(
    digests: Sequence[str | None],
    signatures: Sequence[CopySignature | None],
    threshold: float,
    known: KnownPairScores | None = None,
) -> DuplicateGroups:
    """Groups of the files ``i`` (``digests[i]``: its content digest, None if unknown;
    ``signatures[i]``: its copy signature, None if it has none), each group sorted, its
    representative (lowest index) first. A file without a signature is grouped only with the
    byte-identical ones. ``known``: the pair scores kept so far, reused and added to."""
    twins: dict[int, list[int]] = {}  # first file of a digest -> every file of that digest
    first_of: dict[str, int] = {}
    for index, digest in enumerate(digests):
        first = index if digest is None else first_of.setdefault(digest, index)
        twins.setdefault(first, []).append(index)
    firsts = sorted(twins)
    compared = [signatures[index] for index in firsts]
    pairs = candidates_of(compared)
    known = PairScoresInMemory() if known is None else known
    scores = _pair_scores(compared, pairs, [digests[index] for index in firsts], known)
    found = copy_groups(len(firsts), pairs, scores, threshold)
    grouped = [sorted(index for member in group for index in twins[firsts[member]]) for group in found.groups]
    in_a_group = {firsts[member] for group in found.groups for member in group}
    grouped += [files for first, files in twins.items() if len(files) > 1 and first not in in_a_group]
    groups = sorted(grouped)
    group_of = np.full(len(digests), -1, dtype=np.int64)
    for position, group in enumerate(groups):
        group_of[group] = position
    return DuplicateGroups(groups=groups, group_of=group_of, threshold=threshold)


def _pair_scores(
    signatures: Sequence[CopySignature | None], pairs: np.ndarray, digests: Sequence[str | None], known: KnownPairScores
) -> np.ndarray:
    """The score of each pair, from ``known`` where it was scored before, else verified now and
    added to ``known`` (a file with a signature has a digest: both come from its bytes)."""
    keys: list[PairKey] = [(str(digests[first]), str(digests[second])) for first, second in pairs.tolist()]
    found = known.scores_of(keys)
    missing = np.array([index for index, score in enumerate(found) if score is None], np.int64)
    scores = np.array([np.nan if score is None else score for score in found], np.float64)
    if len(missing):
        scores[missing] = scores_of_pairs(signatures, pairs[missing])
        known.add_scores({keys[index]: float(scores[index]) for index in missing.tolist()})
    return scores
