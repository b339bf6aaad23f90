"""Near-duplicate images: images whose semantic patterns are (near-)identical to another's.

Two images are near-duplicates when every pattern of each lies within ``threshold`` cosine
distance of some pattern of the other (a symmetric Hausdorff distance below ``threshold``).
Groups are built so that every two members of a group are near-duplicates of each other: then
:func:`~freesel_backend.engine.selection.select` with the same ``duplicate_threshold`` gives a
picked image's group-mates zero weight, and never picks two members of one group while
distinct images remain.

The search is exact and runs as chunked matrix products: one anchor pattern per image against
all patterns finds the candidate pairs, then each candidate pair is checked on all its patterns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .bfloat16 import Bfloat16Rows, native_bfloat16
from .selection import PatternPool

log = logging.getLogger(__name__)

# Cosine distance under which two images' patterns count as the same content. With the default
# pattern (one per image, the mean of all patch tokens) exact copies lie at 0.0000, lossy copies
# at 0.005-0.13 and distinct images from 0.001 (Fashion-MNIST's closest pair) or 0.04 (generated
# scenes) on: only exact copies are caught without merging distinct images (README
# "Near-duplicates").
DEFAULT_DUPLICATE_THRESHOLD = 0.001
# Cap on the float32 elements of one similarity block (64 MiB): N = 20k images with K = 5
# patterns (100k patterns) run as blocks of ~160 anchors.
BLOCK_ELEMENTS = 16 * 1024 * 1024
# Products per block through bfloat16 (16 MiB): at 50,000 images 2**23 ran 1.5x faster than 2**21
# (a product of few rows by many queries runs below the CPU's speed).
BFLOAT16_BLOCK_ELEMENTS = 2**23


@dataclass(frozen=True)
class DuplicateGroups:
    """Groups of near-duplicate images, FiftyOne-Brain style.

    ``groups`` lists each group's image indices, its representative (lowest index) first; only
    groups of two or more. ``group_of[i]`` is the position of image ``i``'s group in ``groups``,
    or -1 for an image with no near-duplicate in a group.
    """

    groups: list[list[int]]
    group_of: np.ndarray
    threshold: float

    @property
    def n_flagged(self) -> int:
        """Images that are a near-duplicate of their group's representative."""
        return sum(len(group) - 1 for group in self.groups)


def find_near_duplicates(
    patterns: Sequence[np.ndarray], threshold: float = DEFAULT_DUPLICATE_THRESHOLD, *, bfloat16: bool | None = None
) -> DuplicateGroups:
    """Group images whose patterns all lie within ``threshold`` cosine distance of each other's.
    ``bfloat16``: search the candidates through bfloat16 products (None: where the CPU multiplies
    them natively); the groups are the same either way."""
    if not 0.0 <= threshold < 2.0:
        raise ValueError(f"duplicate threshold is a cosine distance in [0, 2), got {threshold}")
    pool = PatternPool(patterns)
    candidates = _candidate_pairs(pool, threshold, native_bfloat16() if bfloat16 is None else bfloat16)
    pairs = _confirmed_pairs(pool, candidates, threshold)
    groups = cliques_of_pairs(pool.n_images, pairs)
    group_of = np.full(pool.n_images, -1, dtype=np.int64)
    for position, group in enumerate(groups):
        group_of[group] = position
    if groups:
        log.info(
            "near-duplicates: %d groups, %d images flagged (threshold %.3g)",
            len(groups), sum(len(g) - 1 for g in groups), threshold,
        )
    return DuplicateGroups(groups=groups, group_of=group_of, threshold=threshold)


def _candidate_pairs(pool: PatternPool, threshold: float, bfloat16: bool) -> np.ndarray:
    """(a, b) pairs, a < b, where each image's first pattern lies near some pattern of the other.

    A necessary condition for near-duplicates, from one (N, P) product done in row blocks.
    """
    anchors = pool.matrix[pool.starts]
    n = pool.n_images
    # Pairs as a * n + b, each once although several patterns of b may lie near a's anchor.
    near = _near_patterns(anchors, pool.matrix, threshold, bfloat16)
    directed = np.unique(np.concatenate([anchor * n + pool.owner[pattern] for anchor, pattern in near] or [
        np.zeros(0, np.int64)
    ]))
    first, second = np.divmod(directed, n)
    # Both directions must hold: keep (a, b) with a < b when (b, a) is also present.
    forward = first < second
    mutual = np.isin(directed[forward], second[first > second] * n + first[first > second])
    forward_pairs = np.stack([first[forward], second[forward]], axis=1)
    return forward_pairs[mutual].astype(np.int64)


def _near_patterns(
    anchors: np.ndarray, patterns: np.ndarray, threshold: float, bfloat16: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Block by block of ``anchors``, the (anchor, pattern) index pairs within ``threshold``
    cosine distance: through ``bfloat16`` products (about 5x faster where the CPU multiplies them
    natively; pairs near the threshold are then checked exactly), or float32 products."""
    if bfloat16:
        yield from Bfloat16Rows(anchors, BFLOAT16_BLOCK_ELEMENTS).pairs_within(patterns, threshold)
        return
    block = max(1, BLOCK_ELEMENTS // len(patterns))
    for start in range(0, len(anchors), block):
        anchor, pattern = np.nonzero(1.0 - anchors[start : start + block] @ patterns.T < threshold)
        yield anchor + start, pattern


def _confirmed_pairs(pool: PatternPool, candidates: np.ndarray, threshold: float) -> np.ndarray:
    """The candidate pairs whose symmetric Hausdorff distance over all patterns is < threshold."""
    if len(candidates) == 0:
        return candidates
    width = int(pool.counts.max())
    offsets = np.arange(width)
    rows = pool.starts[:, None] + offsets[None, :]
    valid = offsets[None, :] < pool.counts[:, None]
    rows = np.where(valid, rows, 0)
    pairs_per_block = max(1, BLOCK_ELEMENTS // (width * pool.matrix.shape[1]))
    confirmed: list[np.ndarray] = []
    for start in range(0, len(candidates), pairs_per_block):
        chunk = candidates[start : start + pairs_per_block]
        a, b = chunk[:, 0], chunk[:, 1]
        similarity = np.einsum("qkd,qld->qkl", pool.matrix[rows[a]], pool.matrix[rows[b]])
        pair_mask = valid[a][:, :, None] & valid[b][:, None, :]
        similarity = np.where(pair_mask, similarity, -np.inf)
        a_covered = np.where(valid[a], similarity.max(axis=2), np.inf).min(axis=1)
        b_covered = np.where(valid[b], similarity.max(axis=1), np.inf).min(axis=1)
        hausdorff = 1.0 - np.minimum(a_covered, b_covered)
        confirmed.append(chunk[hausdorff < threshold])
    return np.concatenate(confirmed)


def cliques_of_pairs(n_images: int, pairs: np.ndarray) -> list[list[int]]:
    """Groups from (a, b) pairs of matching images, as greedy cliques: each unassigned image,
    lowest index first, takes those of its matches that match every member taken so far."""
    neighbours: dict[int, set[int]] = {}
    for a, b in pairs.tolist():
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    assigned = np.zeros(n_images, dtype=bool)
    groups: list[list[int]] = []
    for image in sorted(neighbours):
        if assigned[image]:
            continue
        group = [image]
        for other in sorted(neighbours[image]):
            if not assigned[other] and all(member in neighbours[other] for member in group[1:]):
                group.append(other)
        if len(group) > 1:
            assigned[group] = True
            groups.append(group)
    return groups


def duplicate_pair_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Hausdorff cosine distance between two images' patterns (for tests, reports)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    similarity = a.astype(np.float64) @ b.astype(np.float64).T
    return float(max(1.0 - similarity.max(axis=1).min(), 1.0 - similarity.max(axis=0).min(), 0.0))


__all__ = [
    "DEFAULT_DUPLICATE_THRESHOLD",
    "DuplicateGroups",
    "cliques_of_pairs",
    "duplicate_pair_distance",
    "find_near_duplicates",
]
