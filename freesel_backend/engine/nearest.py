"""``d[p]``: the cosine distance from every pattern to the nearest selected pattern, kept up to
date pick by pick, computing only the distances a pick can lower.

For unit vectors the cosine distance is ``||p - q||^2 / 2``, so Euclidean bounds apply. Patterns
are grouped into clusters around unit centres ``c`` and stored contiguously per cluster; each
pattern keeps ``e_p = ||p - c||`` (float64). For a query ``q`` with ``e_q = ||q - c||`` the
triangle inequality gives ``||p - q|| >= |e_q - e_p|``, so ``(e_q - e_p)^2 / 2`` bounds the new
distance from below. A whole cluster is skipped when the bound over its annulus
``[min e_p, max e_p]`` reaches the largest ``d`` in it; inside a visited cluster a pattern is
skipped when its own bound reaches its ``d``. Late picks, near patterns already selected, compute
few distances.

The skips are exact: a skipped pattern's distance could not have lowered its ``d``. The bounds
are computed in float64 and carry a margin larger than the float32 error of the distances; a
bound under the duplicate tolerance never skips (a distance that small would become 0); and the
distances that are computed go through one function whose result for a row does not depend on
which other rows are computed with it. So pruning changes no value of ``d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Cosine distances below this count as zero: float32 rounding leaves ~1e-6 between two copies
# of the same pattern, and a copy of a picked image must carry no weight at all.
DUPLICATE_TOLERANCE = 1e-4
# Query rows per product when many queries arrive at once (seeds).
QUERY_CHUNK = 256
# Above this share of patterns to compute, computing all of them beats gathering them.
GATHER_LIMIT = 0.6
# Lloyd iterations and sample size (rows per cluster) for fitting the cluster centres.
CENTRE_ITERATIONS = 4
CENTRE_SAMPLE_PER_CLUSTER = 32

Updates = Literal["pruned", "dense"]
UPDATES: tuple[str, ...] = ("pruned", "dense")


def default_cluster_count(n_patterns: int) -> int:
    """About 2 sqrt(M) clusters: the per-pick bound check (C x k) stays small next to the rows."""
    return max(1, min(2048, round(2 * math.sqrt(n_patterns))))


def bound_margin(dim: int) -> float:
    """Slack on the skip test. A float32 dot product of unit vectors errs by at most ~dim * eps;
    the computed distance and the bound (whose error is at most twice its similarity's) both
    carry such an error, so 4 * dim * eps covers them with room to spare."""
    return 4 * dim * float(np.finfo(np.float32).eps)


def nearest_cosine_distance(rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Cosine distance from each unit row to its nearest unit query, duplicates set to 0.

    Both operands are given at least two rows: BLAS answers a one-row or one-column product
    with gemv, whose summation order differs from gemm's, and a row's result must be the same
    whichever other rows it is computed with.
    """
    similarity = _at_least_two_rows(rows) @ _at_least_two_rows(queries).T
    distance = 1.0 - similarity[: len(rows)].max(axis=1)
    distance[distance < DUPLICATE_TOLERANCE] = 0.0
    return distance


def _at_least_two_rows(matrix: np.ndarray) -> np.ndarray:
    return np.repeat(matrix, 2, axis=0) if len(matrix) == 1 else matrix


@dataclass(frozen=True)
class PatternClusters:
    """Patterns grouped around unit centres, stored contiguously per cluster."""

    order: np.ndarray  # (M,) stored position -> pattern row
    offsets: np.ndarray  # (C + 1,) first stored position of each cluster, then M
    centres: np.ndarray  # (C, D) float64 unit vectors
    to_centre: np.ndarray  # (M,) float64 ||p - c||, stored order

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def annulus(self) -> tuple[np.ndarray, np.ndarray]:
        """(C,) smallest and largest ``||p - c||`` of each cluster."""
        starts = self.offsets[:-1]
        return np.minimum.reduceat(self.to_centre, starts), np.maximum.reduceat(self.to_centre, starts)

    def query_to_centres(self, queries: np.ndarray) -> np.ndarray:
        """(C, k) ``||q - c||`` for unit queries."""
        similarity = self.centres @ queries.astype(np.float64).T
        return np.sqrt(np.maximum(2.0 - 2.0 * similarity, 0.0))


def one_cluster(matrix: np.ndarray) -> PatternClusters:
    """Every pattern in one cluster, never skipped (the dense path)."""
    centre = np.zeros((1, matrix.shape[1]))
    centre[0, 0] = 1.0
    return PatternClusters(np.arange(len(matrix)), np.array([0, len(matrix)]), centre, np.ones(len(matrix)))


def cluster_patterns(matrix: np.ndarray, n_clusters: int, rng: np.random.Generator) -> PatternClusters:
    """Spherical k-means clusters over unit rows (centres fitted on a sample, every row assigned)."""
    centres = _fit_centres(matrix, n_clusters, rng)
    assignment = _nearest_centre(matrix, centres)
    order = np.argsort(assignment, kind="stable")
    sizes = np.bincount(assignment, minlength=len(centres))
    centres = centres[sizes > 0].astype(np.float64)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    offsets = np.concatenate([[0], np.cumsum(sizes[sizes > 0])])
    offset_of_row = matrix[order].astype(np.float64) - np.repeat(centres, np.diff(offsets), axis=0)
    return PatternClusters(order, offsets, centres, np.linalg.norm(offset_of_row, axis=1))


def _fit_centres(matrix: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    n_sample = min(len(matrix), CENTRE_SAMPLE_PER_CLUSTER * n_clusters)
    sample = matrix[np.sort(rng.choice(len(matrix), n_sample, replace=False))]
    centres = sample[rng.choice(n_sample, min(n_clusters, n_sample), replace=False)]
    for _ in range(CENTRE_ITERATIONS):
        assignment = _nearest_centre(sample, centres)
        order = np.argsort(assignment, kind="stable")
        present, starts = np.unique(assignment[order], return_index=True)
        sums = np.add.reduceat(sample[order].astype(np.float64), starts)
        centres[present] = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
    return centres


def _nearest_centre(matrix: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> np.ndarray:
    return np.concatenate(
        [(matrix[start : start + chunk] @ centres.T).argmax(axis=1) for start in range(0, len(matrix), chunk)]
    )


def _gap_to_interval(points: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Distance from each point to the interval [low, high] (0 inside)."""
    return np.maximum(np.maximum(low - points, points - high), 0.0)


class NearestDistances:
    """``values[p]``: distance from pattern ``p`` (pool order) to the nearest selected pattern.

    Starts at +inf; :meth:`lower_with` takes the patterns of newly selected images.
    """

    def __init__(self, matrix: np.ndarray, *, updates: Updates = "pruned", seed: int = 0) -> None:
        if updates not in UPDATES:
            raise ValueError(f"unknown distance updates {updates!r}; choose one of {', '.join(UPDATES)}")
        if updates == "pruned":
            rng = np.random.default_rng(seed)
            self.clusters = cluster_patterns(matrix, default_cluster_count(len(matrix)), rng)
        else:
            self.clusters = one_cluster(matrix)
        self.prune = updates == "pruned"
        self.margin = bound_margin(matrix.shape[1])
        self.annulus_low, self.annulus_high = self.clusters.annulus
        self.stored = matrix[self.clusters.order]
        # Reused for the rows of each pick: a fresh array every pick costs page faults.
        self.gathered = np.empty((int(GATHER_LIMIT * len(matrix)) + 1, matrix.shape[1]), np.float32)
        self.cluster_of_stored = np.repeat(np.arange(len(self.clusters.sizes)), self.clusters.sizes)
        self.stored_values = np.full(len(matrix), np.inf, np.float32)
        self.values = np.full(len(matrix), np.inf, np.float32)
        self.cluster_max = np.full(len(self.clusters.sizes), np.inf, np.float32)
        self.rows_computed = 0

    def lower_with(self, queries: np.ndarray) -> None:
        """Lower every ``d`` with the distances to ``queries`` (unit rows)."""
        for start in range(0, len(queries), QUERY_CHUNK):
            self._lower_with_chunk(queries[start : start + QUERY_CHUNK])

    def _lower_with_chunk(self, queries: np.ndarray) -> None:
        rows: np.ndarray | slice = self._rows_to_compute(queries)
        if len(rows) == 0:
            return
        if len(rows) > GATHER_LIMIT * len(self.values):
            rows = slice(None)  # the skipped rows cannot lower their d: computing them changes nothing
            patterns = self.stored
        else:
            patterns = np.take(self.stored, rows, axis=0, out=self.gathered[: len(rows)])
        lowered = np.minimum(self.stored_values[rows], nearest_cosine_distance(patterns, queries))
        self.stored_values[rows] = lowered
        self.values[self.clusters.order[rows]] = lowered
        self.cluster_max = np.maximum.reduceat(self.stored_values, self.clusters.offsets[:-1])
        self.rows_computed += len(lowered)

    def _rows_to_compute(self, queries: np.ndarray) -> np.ndarray:
        """Stored positions whose ``d`` the queries may lower, ascending."""
        if not self.prune:
            return np.arange(len(self.values))
        query_distance = self.clusters.query_to_centres(queries)  # (C, k)
        cluster_gap = _gap_to_interval(query_distance, self.annulus_low[:, None], self.annulus_high[:, None])
        visit = self._may_lower(cluster_gap.min(axis=1), self.cluster_max)
        candidates = np.flatnonzero(visit[self.cluster_of_stored])
        row_gap = np.abs(query_distance[self.cluster_of_stored[candidates]] - self.clusters.to_centre[candidates, None])
        return candidates[self._may_lower(row_gap.min(axis=1), self.stored_values[candidates])]

    def _may_lower(self, chord_bound: np.ndarray, current: np.ndarray) -> np.ndarray:
        # Skip only when the bound reaches both d and the duplicate tolerance: a computed
        # distance under the tolerance would become 0 and lower d.
        bound = chord_bound**2 / 2.0 - self.margin
        return bound < np.maximum(current, DUPLICATE_TOLERANCE)
