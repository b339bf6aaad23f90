"""Selectors that detection teams already use, re-implemented from their published code and
run on the same features as FreeSel: each image's L2-normalised mean pattern
(:func:`~freesel_backend.engine.density.image_descriptors` of the patterns of ``config``).

A peer that depends on the order of the dataset (its first pick, its tie-breaks) gets a random
order per seed, so its spread over seeds is that of a user's input order.
"""

from __future__ import annotations

from importlib.util import find_spec

import numpy as np

from freesel_backend.engine.density import image_descriptors
from freesel_backend.engine.selection import PatternPool
from .features import Features, PatternConfig
from .methods import Method

# FiftyOne Brain's compute_uniqueness: 3 nearest neighbours, their distances weighted 0.6/0.3/0.1.
UNIQUENESS_NEIGHBOUR_WEIGHTS = np.array([0.6, 0.3, 0.1])
# LightlyStudio's typicality: the mean distance to this many nearest neighbours.
LIGHTLY_TYPICALITY_NEIGHBOURS = 20


def mean_patterns(features: Features, config: PatternConfig) -> np.ndarray:
    pool = PatternPool(features.patterns[config])
    return image_descriptors(pool.matrix, pool.starts)


def _cosine_distances(points: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - points @ points.T, 0.0, 2.0)


def uniqueness_scores(points: np.ndarray) -> np.ndarray:
    """FiftyOne Brain ``compute_uniqueness`` on supplied embeddings: the sklearn similarity index
    (cosine distance); per image the weighted mean of its distances to its 3 nearest other images,
    divided by the largest such value."""
    distance = _cosine_distances(points)
    np.fill_diagonal(distance, np.inf)
    k = len(UNIQUENESS_NEIGHBOUR_WEIGHTS)
    nearest = np.sort(np.partition(distance, k - 1, axis=1)[:, :k], axis=1)
    scores = np.mean(nearest * UNIQUENESS_NEIGHBOUR_WEIGHTS, axis=1)
    return scores / scores.max()


def uniqueness_method(config: PatternConfig) -> Method:
    """The B most unique images (``dataset.sort_by("uniqueness", reverse=True).limit(B)``)."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        points = mean_patterns(features, config)
        order = np.random.default_rng(seed).permutation(len(points))  # ties: the dataset's order
        scores = uniqueness_scores(points[order])
        return order[np.argsort(-scores, kind="stable")][:budget]

    return Method("FiftyOne compute_uniqueness, top-B", pick)


def _kept_at(distance: np.ndarray, threshold: float) -> np.ndarray:
    """FiftyOne's duplicate removal at ``threshold``: in dataset order, an image is kept unless an
    earlier kept image lies within ``threshold`` (cosine distance)."""
    kept = np.ones(len(distance), dtype=bool)
    for image in range(len(distance)):
        if kept[image]:
            later = np.arange(image + 1, len(distance))
            kept[later[distance[image, image + 1 :] <= threshold]] = False
    return np.flatnonzero(kept)


def find_unique(distance: np.ndarray, count: int) -> np.ndarray:
    """FiftyOne Brain ``SimilarityIndex.find_unique(count)``: bisection on the duplicate threshold
    (from 1, doubling while too many are kept) until ``count`` images are kept or the bracket is
    narrower than 1e-6; the kept images in dataset order."""
    if count >= len(distance):
        return np.arange(len(distance))
    threshold, low, high = 1.0, 0.0, None
    previous = -1
    while True:
        kept = _kept_at(distance, threshold)
        if len(kept) == count or (len(kept) == previous and high is not None and high - low < 1e-6):
            return kept
        previous = len(kept)
        if len(kept) < count:
            high = threshold
            threshold = 0.5 * (low + threshold)
        else:
            low = threshold
            threshold = 2.0 * threshold if high is None else 0.5 * (threshold + high)


def find_unique_method(config: PatternConfig) -> Method:
    """``find_unique(B)`` on a similarity index of the images (the ``unique_ids`` it finds; when the
    bisection ends with more than B, the first B of them)."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        points = mean_patterns(features, config)
        order = np.random.default_rng(seed).permutation(len(points))
        kept = find_unique(_cosine_distances(points[order]), budget)
        return order[kept][:budget]

    return Method("FiftyOne find_unique(B)", pick, nested=False)


def k_center_method(config: PatternConfig) -> Method:
    """k-center greedy (Sener & Savarese, ICLR 2018) on the mean patterns: from a random image,
    repeatedly the image farthest (cosine) from every image picked so far."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        points = mean_patterns(features, config)
        picks = [int(np.random.default_rng(seed).integers(len(points)))]
        nearest = 1.0 - points @ points[picks[0]]
        for _ in range(min(budget, len(points)) - 1):
            picks.append(int(np.argmax(nearest)))
            nearest = np.minimum(nearest, 1.0 - points @ points[picks[-1]])
        return np.asarray(picks)

    return Method("k-center greedy", pick)


def lightly_method(config: PatternConfig, *, typicality: bool) -> Method:
    """LightlyStudio's selection (``lightly-mundig``, the engine LightlyStudio calls, run offline
    on supplied embeddings): the ``diverse`` strategy (strength 1), with ``typicality`` plus a
    weighting strategy (strength 1) on the typicality it computes from 20 nearest neighbours.
    Its first pick is the first image: the input order is shuffled per seed."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        import lightly_mundig  # benchmark-only: pip install lightly-mundig

        points = mean_patterns(features, config)
        order = np.random.default_rng(seed).permutation(len(points))
        shuffled = np.ascontiguousarray(points[order], dtype=np.float32)
        selection = lightly_mundig.Selection()
        selection.add_diversifying_strategy(embeddings=shuffled, strength=1.0)
        if typicality:
            weights = lightly_mundig.Typicality(embeddings=shuffled).calculate_typicality(
                num_nearest_neighbors=LIGHTLY_TYPICALITY_NEIGHBOURS
            )
            selection.add_weighting_strategy(weights=np.asarray(weights, dtype=np.float32), strength=1.0)
        chosen = selection.run_selection(
            n_total_samples=len(points), n_samples_to_select=min(budget, len(points)), preselected_indices=[]
        )
        return order[np.asarray(chosen, dtype=np.int64)]

    name = "LightlyStudio diverse + typicality" if typicality else "LightlyStudio diverse"
    return Method(name, pick, nested=False)


def peer_methods(config: PatternConfig) -> list[Method]:
    """The peers; LightlyStudio's only where ``lightly-mundig`` is installed (not in the locks)."""
    lightly = [lightly_method(config, typicality=t) for t in (False, True)] if find_spec("lightly_mundig") else []
    return [uniqueness_method(config), find_unique_method(config), k_center_method(config), *lightly]
