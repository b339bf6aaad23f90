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

The products run in numpy, or on a torch device (``device="cuda"``): the distinct rows are copied
there once, and each large product (a flush, a refresh of many rows) sends only the selected
patterns it needs and brings back one distance per row. Small products (a few rows) stay in
numpy, where they cost less than a transfer.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

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
# ``device`` values that mean "numpy"; "auto" also means a GPU when torch sees one.
NUMPY = "numpy"
AUTO = "auto"
# "auto" moves the products to a GPU from this many rows (patterns) on: below it a selection
# takes well under a second in numpy, less than starting CUDA and copying the rows.
AUTO_DEVICE_MIN_ROWS = 50_000
# Similarities from which a product runs on the device rather than in numpy.
DEVICE_MIN_PRODUCT = 2**20


def nearest_cosine_distance(rows: np.ndarray, queries: np.ndarray, threshold: float) -> np.ndarray:
    """Cosine distance from each unit row to its nearest unit query; distances under
    ``threshold`` (copies, near-duplicates) are 0."""
    return _distance_of_nearest((rows @ queries.T).max(axis=1), threshold)


def _distance_of_nearest(similarity: np.ndarray, threshold: float) -> np.ndarray:
    """Cosine distances from the similarities to the nearest queries; under ``threshold``: 0."""
    distance = 1.0 - similarity
    distance[distance < threshold] = 0.0
    return distance


class NearestDistances:
    """``d`` over the unit rows of ``matrix``, starting at +inf (nothing selected).

    Every row keeps ``bound`` (its ``d`` as of its ``version``: the number of selected patterns
    applied to it) so that the true ``d`` of a row costs only the patterns selected since. A
    flush brings every row to the latest version; :meth:`refresh` brings a few.

    Identical rows (copies of a pattern) are computed once and share one value: a float32
    product may round a row differently depending on its place in the product, and copies must
    tie exactly for fds to pick the lowest index among them, as argmax does.
    """

    def __init__(
        self,
        matrix: np.ndarray,
        *,
        threshold: float = DUPLICATE_TOLERANCE,
        updates: Updates = "lazy",
        flush_queries: int = FLUSH_QUERIES,
        device: str = NUMPY,
    ) -> None:
        if updates not in UPDATES:
            raise ValueError(f"unknown distance updates {updates!r}; choose one of {', '.join(UPDATES)}")
        self.distinct, self.copy_of = distinct_rows(matrix)
        self.threshold = threshold
        self.device = resolved_device(device, len(self.distinct))
        self._device_rows = None if self.device == NUMPY else torch.from_numpy(self.distinct).to(self.device)
        self.flush_queries = 1 if updates == "dense" else flush_queries
        self._bound = np.full(len(self.distinct), np.inf, np.float32)
        self._version = np.zeros(len(self.distinct), np.int64)
        self._selected = np.empty((64, matrix.shape[1]), np.float32)  # grown by doubling
        self.n_selected = 0
        self.flushed_at = 0  # every row's version is at least this
        self.n_flushes = 0

    @property
    def bound(self) -> np.ndarray:
        """(M,) an upper bound of each row's ``d`` (its true ``d`` where :meth:`is_current`)."""
        return self._bound[self.copy_of]

    @property
    def selected(self) -> np.ndarray:
        """The selected patterns, in selection order."""
        return self._selected[: self.n_selected]

    @property
    def nothing_selected(self) -> bool:
        return self.n_selected == 0

    @property
    def is_exact(self) -> bool:
        """Whether every ``bound`` is the true ``d``."""
        return self.flushed_at == self.n_selected

    def add(self, queries: np.ndarray) -> None:
        """Select ``queries`` (unit rows): they lower ``d`` from now on."""
        first = self.nothing_selected
        needed = self.n_selected + len(queries)
        if needed > len(self._selected):
            grown = np.empty((max(needed, 2 * len(self._selected)), self._selected.shape[1]), np.float32)
            grown[: self.n_selected] = self.selected
            self._selected = grown
        self._selected[self.n_selected : needed] = queries
        self.n_selected = needed
        # After the first selection every bound must be finite for the draws to use it.
        if first or self.n_selected - self.flushed_at >= self.flush_queries:
            self.flush()

    def flush(self) -> None:
        """Bring every row to the latest version: all patterns selected since the last flush, in
        blocked products. A row refreshed in between takes some of them twice: harmless, as
        ``min`` with a distance already taken changes nothing."""
        if self.is_exact:
            return
        queries = self.selected[self.flushed_at :]
        rows_per_block = max(1, FLUSH_BLOCK_ELEMENTS // len(queries))
        for start in range(0, len(self.distinct), rows_per_block):
            block = slice(start, start + rows_per_block)
            np.minimum(self._bound[block], self._nearest(block, queries), out=self._bound[block])
        self._version[:] = self.n_selected
        self.flushed_at = self.n_selected
        self.n_flushes += 1

    def refresh(self, rows: np.ndarray) -> np.ndarray:
        """The true ``d`` of ``rows`` (pattern indices), which their bounds become."""
        distinct, position = np.unique(self.copy_of[rows], return_inverse=True)
        return self._refresh_distinct(distinct)[position]

    def _refresh_distinct(self, rows: np.ndarray) -> np.ndarray:
        versions = self._version[rows]
        values = self._bound[rows]
        for version in np.unique(versions[versions < self.n_selected]):
            behind = versions == version
            lowered = self._nearest(rows[behind], self.selected[version:])
            values[behind] = np.minimum(values[behind], lowered)
        self._bound[rows] = values
        self._version[rows] = self.n_selected
        return values

    def _nearest(self, rows: slice | np.ndarray, queries: np.ndarray) -> np.ndarray:
        """:func:`nearest_cosine_distance` of distinct ``rows`` to ``queries``: on the device when
        there is one and the product is large, in numpy otherwise (a transfer costs more than a
        small product)."""
        n_rows = len(range(len(self.distinct))[rows]) if isinstance(rows, slice) else len(rows)
        if self._device_rows is None or n_rows * len(queries) < DEVICE_MIN_PRODUCT:
            return nearest_cosine_distance(self.distinct[rows], queries, self.threshold)
        device_rows = self._device_rows[rows if isinstance(rows, slice) else torch.from_numpy(rows).to(self.device)]
        similarity = device_rows @ torch.from_numpy(queries).to(self.device).T
        return _distance_of_nearest(similarity.amax(dim=1).cpu().numpy(), self.threshold)

    def is_current(self) -> np.ndarray:
        """(M,) whether each row's bound is its true ``d``."""
        return (self._version == self.n_selected)[self.copy_of]

    def values(self) -> np.ndarray:
        """The true ``d`` of every row (flushes)."""
        self.flush()
        return self.bound


def resolved_device(device: str, n_rows: int) -> str:
    """``device`` as used: "numpy", or a torch device name; "auto" is "cuda" for ``n_rows`` of at
    least :data:`AUTO_DEVICE_MIN_ROWS` when torch sees a GPU, else "numpy" (on a CPU numpy's
    products are the faster)."""
    if device == AUTO:
        return "cuda" if n_rows >= AUTO_DEVICE_MIN_ROWS and torch.cuda.is_available() else NUMPY
    if device == NUMPY:
        return NUMPY
    try:
        torch_device = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown selection device {device!r}: use auto, numpy or a torch device such as cuda") from error
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"selection device {device!r}: torch sees no CUDA GPU here; use auto or numpy")
    return str(torch_device)


def distinct_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows in order of first appearance, (M,) index of each row's distinct row)."""
    fingerprint = _row_fingerprints(matrix)
    _, first, inverse, counts = np.unique(fingerprint, return_index=True, return_inverse=True, return_counts=True)
    if len(first) == len(matrix):
        return matrix, np.arange(len(matrix))  # no copies: no second matrix
    # Rows sharing a fingerprint are compared byte for byte: only those are sorted as bytes.
    shared = np.flatnonzero(counts[inverse] > 1)
    representative = np.arange(len(matrix))
    representative[shared] = shared[_first_equal_row(matrix[shared])]
    return _numbered_by_first_appearance(matrix, representative)


def _row_fingerprints(matrix: np.ndarray) -> np.ndarray:
    """(M,) a 64-bit hash of 16 of each row's 32-bit words: copies share it, and other rows of
    real-valued data almost never do (those that do are compared in full)."""
    words = np.ascontiguousarray(matrix).view(np.uint32).reshape(len(matrix), -1)
    sampled = words[:, np.linspace(0, words.shape[1] - 1, min(16, words.shape[1])).astype(np.int64)]
    multipliers = np.random.default_rng(0).integers(1, 2**63, sampled.shape[1], dtype=np.uint64) | np.uint64(1)
    return (sampled.astype(np.uint64) * multipliers).sum(axis=1, dtype=np.uint64)


def _first_equal_row(rows: np.ndarray) -> np.ndarray:
    """For each of ``rows``, the position of the first row equal to it byte for byte."""
    row_bytes = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))
    _, first, inverse = np.unique(row_bytes.ravel(), return_index=True, return_inverse=True)
    return first[inverse.ravel()]


def _numbered_by_first_appearance(matrix: np.ndarray, representative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows that represent themselves, in order, and each row's position among them."""
    is_distinct = representative == np.arange(len(matrix))
    position = np.cumsum(is_distinct) - 1
    return matrix[is_distinct], position[representative]
