"""The selection methods compared, all on the same extracted features.

Each method picks ``budget`` pool indices for a seed. A nested method's picks for a smaller
budget are a prefix of its picks for a larger one (a ranking), so one run serves every budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..engine import select
from ..engine.density import image_descriptors, typicality_prior
from ..engine.selection import PatternPool
from .features import Features, PatternConfig

PickFunction = Callable[[Features, int, int], np.ndarray]


@dataclass(frozen=True)
class Method:
    name: str
    pick: PickFunction
    nested: bool = True


def random_method() -> Method:
    return Method("random", lambda features, budget, seed: np.random.default_rng(seed).permutation(len(features))[:budget])


def freesel_method(name: str, config: PatternConfig, strategy: str, *, strength: float | None = None) -> Method:
    """FreeSel's ``select`` on the patterns of ``config``; ``strength`` sets an explicit
    typicality prior exponent (None: the strategy's own behaviour)."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        patterns = features.patterns[config]
        prior = None
        if strength is not None:
            pool = PatternPool(patterns)
            prior = typicality_prior(pool.matrix, pool.starts, strength=strength)
        return select(patterns, budget, strategy=strategy, seed=seed, prior=prior).picks  # type: ignore[arg-type]

    # typical's picks depend on the budget (one per cluster); prob and fds rank once for all.
    return Method(name, pick, nested=strategy != "typical")


def coreset_method() -> Method:
    """k-center greedy (Sener & Savarese, ICLR 2018) on the L2-normalised global embeddings."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        points = _normalised(features.embeddings)
        first = int(np.random.default_rng(seed).integers(len(points)))
        picks = [first]
        nearest = 1.0 - points @ points[first]
        for _ in range(min(budget, len(points)) - 1):
            chosen = int(np.argmax(nearest))
            picks.append(chosen)
            nearest = np.minimum(nearest, 1.0 - points @ points[chosen])
        return np.asarray(picks[:budget])

    return Method("coreset (k-center, CLS)", pick)


def centroid_method(config: PatternConfig | None = None) -> Method:
    """Typicality baseline: k-means with ``budget`` clusters, the image nearest each centroid;
    on the global embeddings, or (``config``) on each image's mean pattern."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        from sklearn.cluster import KMeans

        if config is None:
            points = _normalised(features.embeddings)
        else:
            pool = PatternPool(features.patterns[config])
            points = image_descriptors(pool.matrix, pool.starts)
        centres = KMeans(n_clusters=budget, n_init=1, random_state=seed, max_iter=50).fit(points).cluster_centers_
        return _nearest_to_centres(points, centres)

    name = "k-means centroids (CLS)" if config is None else f"k-means centroids (patterns K={config[0]} r={config[1]})"
    return Method(name, pick, nested=False)


def _nearest_to_centres(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The image nearest each centre (two centres rarely share one: then it counts once)."""
    squared = (points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)[None]
    return np.unique(squared.argmin(axis=0))


def _normalised(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
