"""``d[p]``: the cosine distance from every pattern to the nearest selected pattern, updated in
batches ("lazy") so that the work is a few compute-bound matrix products instead of one
memory-bound pass over all patterns per pick.

Every row keeps an upper bound of its ``d`` and, separately, its exact ``d`` over the patterns
selected up to its ``version``. The patterns selected since the bounds were last lowered wait in
``pending``; since ``d`` only ever decreases, the bound stays an upper bound meanwhile, and the
true ``d`` of a few rows is ``min(exact, distance to the patterns after their version)``: a tiny
product. Lowering the bounds takes every row against all pending patterns in one blocked
product: in bfloat16 where the CPU multiplies it natively (about 5x faster than float32; the
bound then allows for the product's rounding, :mod:`.bfloat16`), exactly otherwise. A bfloat16
product also gives each row a lower bound of its distance to the patterns in the bounds, so
that bringing a row up to date takes those only when the pending ones do not already come nearer.

The draws in :mod:`.selection` use the bound: fds takes candidates in decreasing bound until
the best true value found beats every remaining bound; prob proposes from ``bound ** 2`` and
accepts with probability ``d ** 2 / bound ** 2`` (rejection sampling: exactly the ``d ** 2``
distribution). ``updates="dense"`` recomputes every exact distance at every pick: the reference
path, as the paper's algorithm does.

The exact products run in numpy, or on a torch device (``device="cuda"``): the distinct rows are
copied there once, and each large product (a flush, a refresh of many rows) sends only the
selected patterns it needs and brings back one distance per row. Small products (a few rows)
stay in numpy, where they cost less than a transfer.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch

from .bfloat16 import Bfloat16Rows, native_bfloat16, row_blocks

# Cosine distances below this count as zero: float32 rounding leaves ~1e-6 between two copies
# of the same pattern, and a copy of a picked image must carry no weight at all.
DUPLICATE_TOLERANCE = 1e-4
# Pending patterns that trigger lowering the bounds: the product then runs at matrix-product
# speed. prob also lowers them when proposals are rejected often (selection.MAX_REJECTIONS), which
# decides for most pools: this cap bounds the work of checking one proposal against the pending.
FLUSH_QUERIES = 4096
# Similarities per block of a product (8 MiB of float32, 4 MiB of bfloat16): bounds the memory
# held at once, and keeps a block's results in cache for the passes over them (largest value,
# candidates): 2**20-2**21 ran 8-18% faster than 2**24 at N=5,000, in float32 and bfloat16 alike
# (measured 2**18-2**24). With a single pick's patterns the whole matrix is one product.
FLUSH_BLOCK_ELEMENTS = 2**21

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

    Every row keeps ``bound`` (an upper bound of its ``d``) and its exact ``d`` as of its
    ``version`` (the number of selected patterns applied to it exactly), so that the true ``d``
    of a row costs only the patterns selected since. :meth:`lower_bounds` lowers every bound
    with the pending patterns; :meth:`flush` makes every row exact; :meth:`refresh` a few.

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
        bfloat16: bool | None = None,
    ) -> None:
        if updates not in UPDATES:
            raise ValueError(f"unknown distance updates {updates!r}; choose one of {', '.join(UPDATES)}")
        self.distinct, self.copy_of = distinct_rows(matrix)
        self.threshold = threshold
        self.device = resolved_device(device, len(self.distinct))
        self._device_rows = None if self.device == NUMPY else torch.from_numpy(self.distinct).to(self.device)
        self.flush_queries = 1 if updates == "dense" else flush_queries
        # bfloat16 products (bounds, and candidates for exact values) on CPUs that multiply it
        # natively; the dense reference path stays in float32 throughout.
        if bfloat16 is None:
            bfloat16 = updates == "lazy" and self.device == NUMPY and native_bfloat16()
        self.bfloat16 = bfloat16
        self._bound = np.full(len(self.distinct), np.inf, np.float32)
        # A lower bound of each row's distance to the patterns selected before ``bounded_at``.
        self._lower_bound = np.full(len(self.distinct), np.inf, np.float32)
        self._exact = np.full(len(self.distinct), np.inf, np.float32)
        self._version = np.zeros(len(self.distinct), np.int64)
        self._selected = np.empty((64, matrix.shape[1]), np.float32)  # grown by doubling
        self.n_selected = 0
        self.flushed_at = 0  # every row's version is at least this
        self.bounded_at = 0  # every bound allows for the patterns selected before this
        self.n_flushes = 0  # how many times the bounds were lowered (exactly or not)

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

    @property
    def has_pending(self) -> bool:
        """Whether some selected patterns are not yet in every bound."""
        return self.bounded_at < self.n_selected

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
        if first or self.n_selected - self.bounded_at >= self.flush_queries:
            self.lower_bounds()

    def lower_bounds(self) -> None:
        """Lower every bound with the pending patterns: in bfloat16 where that is faster (the
        rows stay at their version), else exactly (a flush)."""
        if not self.bfloat16:
            self.flush()
            return
        if not self.has_pending:
            return
        similarity_floor, similarity_ceiling = self._bfloat16_rows.nearest_similarity_bounds(
            self.selected[self.bounded_at :]
        )
        np.minimum(self._bound, _distance_of_nearest(similarity_floor, self.threshold), out=self._bound)
        np.minimum(self._lower_bound, _distance_of_nearest(similarity_ceiling, self.threshold), out=self._lower_bound)
        self.bounded_at = self.n_selected
        self.n_flushes += 1

    def tighten(self) -> None:
        """Make the bounds closer to the true ``d``: lower them with the pending patterns, or,
        when none are pending, make them exact."""
        if self.has_pending:
            self.lower_bounds()
        else:
            self.flush()

    def flush(self) -> None:
        """Bring every row to the latest version: all patterns selected since the last flush, in
        blocked products. A row refreshed in between takes some of them twice: harmless, as
        ``min`` with a distance already taken changes nothing."""
        if self.is_exact:
            return
        queries = self.selected[self.flushed_at :]
        for block in row_blocks(len(self.distinct), len(queries), FLUSH_BLOCK_ELEMENTS):
            np.minimum(self._exact[block], self._nearest(block, queries), out=self._exact[block])
        self._bound[:] = self._lower_bound[:] = self._exact
        self._version[:] = self.n_selected
        self.flushed_at = self.bounded_at = self.n_selected
        self.n_flushes += 1

    def refresh(self, rows: np.ndarray) -> np.ndarray:
        """The true ``d`` of ``rows`` (pattern indices), which their bounds become."""
        distinct, position = np.unique(self.copy_of[rows], return_inverse=True)
        return self._refresh_distinct(distinct)[position]

    def refresh_one(self, row: int) -> float:
        """The true ``d`` of one row (pattern index): :meth:`refresh` without its bookkeeping
        for many rows, as prob checks one proposal at a time."""
        distinct = int(self.copy_of[row])
        version = int(self._version[distinct])
        if version < self.n_selected:
            similarity = (self.selected[version:] @ self.distinct[distinct]).max(keepdims=True)
            distance = _distance_of_nearest(similarity, self.threshold)[0]
            self._exact[distinct] = self._bound[distinct] = min(self._exact[distinct], distance)
            self._version[distinct] = self.n_selected
        return float(self._exact[distinct])

    def _refresh_distinct(self, rows: np.ndarray) -> np.ndarray:
        """Products from the oldest version among ``rows``: a row already past it takes some
        patterns twice, harmless as with a flush."""
        oldest = int(self._version[rows].min()) if len(rows) else self.n_selected
        if oldest < self.n_selected:
            lowered = self._nearest_since(rows, oldest)
            np.minimum(self._exact[rows], lowered, out=lowered)
            self._exact[rows] = lowered
            self._bound[rows] = lowered
            self._version[rows] = self.n_selected
        return self._exact[rows]

    def _nearest_since(self, rows: np.ndarray, start: int) -> np.ndarray:
        """The distance of each of ``rows`` to the nearest pattern selected from ``start`` on.
        Those already in the bounds come second, and only for the rows that need them: a row
        nearer to a pending pattern than its lower bound for the others has its nearest among
        the pending (at the end of prob's draws, ~3 rows in 4)."""
        if start >= self.bounded_at:
            return self._nearest(rows, self.selected[start:])
        nearest = (
            self._nearest(rows, self.selected[self.bounded_at :])
            if self.has_pending
            else np.full(len(rows), np.inf, np.float32)
        )
        maybe_earlier = np.flatnonzero((nearest >= self._lower_bound[rows]) & (self._version[rows] < self.bounded_at))
        if len(maybe_earlier):
            earlier_rows = rows[maybe_earlier]
            earlier = self.selected[int(self._version[earlier_rows].min()) : self.bounded_at]
            nearest[maybe_earlier] = np.minimum(nearest[maybe_earlier], self._nearest(earlier_rows, earlier))
        return nearest

    @functools.cached_property
    def _bfloat16_rows(self) -> Bfloat16Rows:
        return Bfloat16Rows(self.distinct, FLUSH_BLOCK_ELEMENTS)

    def _nearest(self, rows: slice | np.ndarray, queries: np.ndarray) -> np.ndarray:
        """:func:`nearest_cosine_distance` of distinct ``rows`` to ``queries``: on the device when
        there is one and the product is large (a transfer costs more than a small product), through
        :class:`.Bfloat16Rows` when bfloat16 is on, else in numpy."""
        n_rows = len(range(len(self.distinct))[rows]) if isinstance(rows, slice) else len(rows)
        n_products = n_rows * len(queries)
        if self._device_rows is not None and n_products >= DEVICE_MIN_PRODUCT:
            device_rows = self._device_rows[rows if isinstance(rows, slice) else torch.from_numpy(rows).to(self.device)]
            similarity = device_rows @ torch.from_numpy(queries).to(self.device).T
            return _distance_of_nearest(similarity.amax(dim=1).cpu().numpy(), self.threshold)
        if self.bfloat16:
            indices = np.arange(len(self.distinct))[rows] if isinstance(rows, slice) else rows
            return _distance_of_nearest(self._bfloat16_rows.nearest_similarity(indices, queries), self.threshold)
        return nearest_cosine_distance(self.distinct[rows], queries, self.threshold)

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
        raise ValueError(
            f"unknown selection device {device!r}: use auto, numpy or a torch device such as cuda"
        ) from error
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"selection device {device!r}: torch sees no CUDA GPU here; use auto or numpy")
    return str(torch_device)


def distinct_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows in order of first appearance, (M,) index of each row's distinct row)."""
    fingerprint = _row_fingerprints(matrix)
    if np.all(np.diff(np.sort(fingerprint)) != 0):
        return matrix, np.arange(len(matrix))  # no copies: no second matrix (a sort is ~20x cheaper than unique)
    _, inverse, counts = np.unique(fingerprint, return_inverse=True, return_counts=True)
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
