"""FreeSel selection: a distance-based sampling over semantic patterns, as a full ranking.

Every image owns a few L2-normalised patterns. ``d[p]`` is the cosine distance from pattern
``p`` to the nearest pattern of any selected image. Each step draws one pattern (with
probability proportional to ``d**2`` for ``prob``, the largest ``d`` for ``fds``), selects the
image that owns it and lowers ``d`` with the distances to all of that image's patterns.

Distances are matrix products over the normalised patterns; :mod:`.nearest` keeps ``d`` and
skips, pick by pick, the clusters of patterns a pick provably cannot bring closer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import numpy as np

from .nearest import DUPLICATE_TOLERANCE, NearestDistances, Updates

Strategy = Literal["prob", "fds"]
STRATEGIES: tuple[str, ...] = ("prob", "fds")
__all__ = ["DUPLICATE_TOLERANCE", "STRATEGIES", "PatternPool", "Ranking", "resolve_budget", "select"]


@dataclass(frozen=True)
class Ranking:
    """The result of :func:`select`.

    ``order`` lists every non-seed image index exactly once: the picks in pick order, then the
    others by decreasing distance of their farthest pattern to the picked set.
    ``distance[j]`` belongs to ``order[j]``: for a pick, its ``d`` when it was drawn (``inf``
    for a first pick made with no seeds); for the rest, the distance of the image's farthest
    pattern to the picked set (seeds included).
    """

    order: np.ndarray
    distance: np.ndarray
    n_picked: int
    seeds: tuple[int, ...] = ()

    @property
    def picks(self) -> np.ndarray:
        return self.order[: self.n_picked]

    def rank_of(self) -> dict[int, int]:
        """Image index -> 0-based position in ``order``."""
        return {int(image): position for position, image in enumerate(self.order)}


class PatternPool:
    """All patterns stacked into one matrix, with the image that owns each row."""

    def __init__(self, patterns: Sequence[np.ndarray]) -> None:
        if len(patterns) == 0:
            raise ValueError("select() needs at least one image's patterns")
        counts = []
        dims = set()
        for index, image_patterns in enumerate(patterns):
            array = np.asarray(image_patterns)
            if array.ndim != 2 or array.shape[0] == 0:
                raise ValueError(
                    f"patterns[{index}] must be a non-empty (k, D) array, got shape {array.shape}"
                )
            counts.append(array.shape[0])
            dims.add(array.shape[1])
        if len(dims) != 1:
            raise ValueError(f"all patterns must have the same dimension, got {sorted(dims)}")
        self.matrix = _normalised_rows(np.concatenate([np.asarray(p, np.float32) for p in patterns]))
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.owner = np.repeat(np.arange(len(patterns)), self.counts)

    @property
    def n_images(self) -> int:
        return len(self.counts)

    def rows_of(self, image: int) -> slice:
        start = int(self.starts[image])
        return slice(start, start + int(self.counts[image]))

    def patterns_of(self, images: Iterable[int]) -> np.ndarray:
        """The normalised patterns of ``images``, stacked."""
        return np.concatenate([self.matrix[self.rows_of(image)] for image in images])

    def per_image_max(self, values: np.ndarray) -> np.ndarray:
        return np.maximum.reduceat(values, self.starts)


def _normalised_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(~np.isfinite(matrix)) or np.any(norms == 0):
        raise ValueError("patterns must be finite and non-zero (they are compared by cosine)")
    return matrix / norms


def select(
    patterns: Sequence[np.ndarray],
    budget: int,
    *,
    strategy: Strategy = "prob",
    seeds: Iterable[int] = (),
    seed: int | None = None,
    updates: Updates = "pruned",
) -> Ranking:
    """Rank images to label first with FreeSel's distance-based sampling.

    ``patterns[i]`` is image ``i``'s (k_i, D) array of semantic patterns. ``seeds`` are images
    already selected (e.g. labelled): they steer the picks and are left out of the ranking.
    ``budget`` picks are drawn (fewer when fewer images remain), the rest is ordered by distance.
    ``updates="dense"`` recomputes every distance at every pick (the slow path ``"pruned"``, the
    default, is tested and benchmarked against: both give the same ranking).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    pool = PatternPool(patterns)
    seed_ids = _validated_seeds(seeds, pool.n_images)
    rng = np.random.default_rng(seed)

    selected = np.zeros(pool.n_images, dtype=bool)
    selected[list(seed_ids)] = True
    nearest = NearestDistances(pool.matrix, updates=updates)
    if seed_ids:
        nearest.lower_with(pool.patterns_of(seed_ids))

    n_picks = min(budget, pool.n_images - len(seed_ids))
    picks: list[int] = []
    pick_distances: list[float] = []
    for _ in range(n_picks):
        image, distance = _draw(pool, nearest.values, selected, strategy, rng)
        picks.append(image)
        pick_distances.append(distance)
        selected[image] = True
        nearest.lower_with(pool.matrix[pool.rows_of(image)])

    rest_order, rest_distance = _order_rest(pool, nearest.values, selected)
    return Ranking(
        order=np.concatenate([np.asarray(picks, dtype=np.int64), rest_order]),
        distance=np.concatenate([np.asarray(pick_distances, dtype=np.float64), rest_distance]),
        n_picked=len(picks),
        seeds=seed_ids,
    )


def resolve_budget(budget: float, pool_size: int) -> int:
    """A budget given as a count (>= 1) or as a fraction of the pool (0 < budget < 1)."""
    if budget < 0 or not math.isfinite(budget):
        raise ValueError(f"budget must be a count >= 0 or a fraction in (0, 1), got {budget}")
    if 0 < budget < 1:
        return max(1, round(budget * pool_size))
    if budget != int(budget):
        raise ValueError(f"a budget above 1 must be a whole number of picks, got {budget}")
    return min(int(budget), pool_size)


def _validated_seeds(seeds: Iterable[int], n_images: int) -> tuple[int, ...]:
    seed_ids = tuple(dict.fromkeys(int(s) for s in seeds))
    out_of_range = [s for s in seed_ids if not 0 <= s < n_images]
    if out_of_range:
        raise ValueError(f"seed image indices out of range 0..{n_images - 1}: {out_of_range[:10]}")
    return seed_ids


def _draw(
    pool: PatternPool,
    nearest: np.ndarray,
    selected: np.ndarray,
    strategy: Strategy,
    rng: np.random.Generator,
) -> tuple[int, float]:
    """One pick: (image index, the drawn pattern's distance)."""
    if np.isinf(nearest).all():
        # Nothing selected yet: the paper starts from one random image.
        image = int(rng.integers(pool.n_images))
        return image, math.inf
    top = float(nearest.max())
    if top <= 0.0:
        # Only copies of selected images remain: complete the order in index order.
        image = int(np.flatnonzero(~selected)[0])
        return image, 0.0
    if strategy == "fds":
        pattern = int(np.argmax(nearest))
    else:
        weights = np.square(nearest, dtype=np.float64)
        cumulative = np.cumsum(weights)
        pattern = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        pattern = min(pattern, len(cumulative) - 1)
    return int(pool.owner[pattern]), float(nearest[pattern])


def _order_rest(pool: PatternPool, nearest: np.ndarray, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    farthest = pool.per_image_max(nearest).astype(np.float64)
    rest = np.flatnonzero(~selected)
    # Stable sort on -distance keeps index order among ties (e.g. all-zero duplicates).
    order = rest[np.argsort(-farthest[rest], kind="stable")]
    return order.astype(np.int64), farthest[order]
