"""``d[p]``: the cosine distance from every pattern to the nearest selected pattern, updated in
batches ("lazy") so that the work is a few compute-bound matrix products instead of one
memory-bound pass over all patterns per pick.

``flushed`` holds ``d`` exactly as of the last flush; the patterns selected since then wait in
``pending``. Since ``d`` only ever decreases, ``flushed`` is an upper bound of the true ``d``, and
the true ``d`` of a few rows is ``min(flushed, distance to pending)``: a tiny product. A flush
lowers every row with all pending patterns in one blocked product and empties ``pending``.

The draws in :mod:`.selection` use the bound: fds takes candidates in decreasing ``flushed`` until
the best true value found beats every remaining bound; prob proposes from ``flushed ** 2`` and
accepts with probability ``d ** 2 / flushed ** 2`` (rejection sampling: exactly the ``d ** 2``
distribution). ``updates="dense"`` flushes after every pick: the reference path, which recomputes
every distance at every pick as the paper's algorithm does.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

# Cosine distances below this count as zero: float32 rounding leaves ~1e-6 between two copies
# of the same pattern, and a copy of a picked image must carry no weight at all.
DUPLICATE_TOLERANCE = 1e-4
# Pending query rows that trigger a flush: the product then runs at matrix-product speed, while
# the per-pick work on candidates (rows x pending) stays small.
FLUSH_QUERIES = 640
# Similarities per block of a flush (64 MiB of float32): bounds the memory held at once. With a
# single pick's patterns the whole matrix is one product, as it always was.
FLUSH_BLOCK_ELEMENTS = 2**24

Updates = Literal["lazy", "dense"]
UPDATES: tuple[str, ...] = ("lazy", "dense")


def nearest_cosine_distance(rows: np.ndarray, queries: np.ndarray, threshold: float) -> np.ndarray:
    """Cosine distance from each unit row to its nearest unit query; distances under
    ``threshold`` (copies, near-duplicates) are 0."""
    similarity = rows @ queries.T
    distance = 1.0 - similarity.max(axis=1)
    distance[distance < threshold] = 0.0
    return distance


class NearestDistances:
    """``d`` over the unit rows of ``matrix``, starting at +inf (nothing selected)."""

    def __init__(
        self,
        matrix: np.ndarray,
        *,
        threshold: float = DUPLICATE_TOLERANCE,
        updates: Updates = "lazy",
        flush_queries: int = FLUSH_QUERIES,
    ) -> None:
        if updates not in UPDATES:
            raise ValueError(f"unknown distance updates {updates!r}; choose one of {', '.join(UPDATES)}")
        self.matrix = matrix
        self.threshold = threshold
        self.flush_queries = 1 if updates == "dense" else flush_queries
        self.flushed = np.full(len(matrix), np.inf, np.float32)
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.n_flushes = 0

    @property
    def nothing_selected(self) -> bool:
        return self.n_pending == 0 and bool(np.isinf(self.flushed[0]))

    @property
    def is_exact(self) -> bool:
        """Whether ``flushed`` is the true ``d`` (nothing pending)."""
        return self.n_pending == 0

    def add(self, queries: np.ndarray) -> None:
        """Select ``queries`` (unit rows): they lower ``d`` from now on."""
        first = self.nothing_selected
        self.pending.append(queries)
        self.n_pending += len(queries)
        # After the first selection every bound must be finite for the draws to use it.
        if first or self.n_pending >= self.flush_queries:
            self.flush()

    def flush(self) -> None:
        """Lower every ``d`` with the pending patterns, in one blocked product."""
        if not self.pending:
            return
        queries = self.pending_queries()
        rows_per_block = max(1, FLUSH_BLOCK_ELEMENTS // len(queries))
        for start in range(0, len(self.matrix), rows_per_block):
            block = slice(start, start + rows_per_block)
            lowered = nearest_cosine_distance(self.matrix[block], queries, self.threshold)
            np.minimum(self.flushed[block], lowered, out=self.flushed[block])
        self.pending, self.n_pending = [], 0
        self.n_flushes += 1

    def exact(self, rows: np.ndarray) -> np.ndarray:
        """The true ``d`` of ``rows`` (pattern indices)."""
        bound = self.flushed[rows]
        if not self.pending:
            return bound
        return np.minimum(bound, nearest_cosine_distance(self.matrix[rows], self.pending_queries(), self.threshold))

    def pending_queries(self) -> np.ndarray:
        if len(self.pending) > 1:
            self.pending = [np.concatenate(self.pending)]
        return self.pending[0]

    def values(self) -> np.ndarray:
        """The true ``d`` of every pattern (flushes)."""
        self.flush()
        return self.flushed
