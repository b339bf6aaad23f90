"""The selection methods compared, all on the same extracted features.

Each method picks ``budget`` pool indices for a seed. A nested method's picks for a smaller
budget are a prefix of its picks for a larger one (a ranking), so one run serves every budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from freesel_backend.engine import select
from freesel_backend.engine.density import image_descriptors, typicality_prior, whitened
from freesel_backend.engine.selection import DUPLICATE_TOLERANCE, PatternPool
from .features import Features, PatternConfig

PickFunction = Callable[[Features, int, int], np.ndarray]


@dataclass(frozen=True)
class Method:
    name: str
    pick: PickFunction
    nested: bool = True


def random_method() -> Method:
    return Method(
        "random", lambda features, budget, seed: np.random.default_rng(seed).permutation(len(features))[:budget]
    )


def freesel_method(
    name: str, config: PatternConfig, strategy: str, *, strength: float | None = None,
    duplicate_threshold: float = DUPLICATE_TOLERANCE,
) -> Method:
    """FreeSel's ``select`` on the patterns of ``config``; ``strength`` sets an explicit
    typicality prior exponent (None: the strategy's own behaviour)."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        patterns = features.patterns[config]
        prior = None
        if strength is not None:
            pool = PatternPool(patterns)
            prior = typicality_prior(pool.matrix, pool.starts, strength=strength)
        return select(
            patterns, budget, strategy=strategy, seed=seed, prior=prior, duplicate_threshold=duplicate_threshold,  # type: ignore[arg-type]
        ).picks

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


# --- Candidates for the 100-label gap; held-out `tune` only ------------------------------------

# "pattern" (normalised mean pattern of a config), "cls" (normalised global embedding),
# "whitenN" (the pattern descriptor PCA-whitened to at most N components, as the engine does).
Descriptor = str


def _descriptors(features: Features, config: PatternConfig, descriptor: Descriptor) -> np.ndarray:
    pool = PatternPool(features.patterns[config])
    pattern = image_descriptors(pool.matrix, pool.starts)
    if descriptor == "pattern":
        return pattern
    if descriptor.startswith("whiten"):
        return whitened(pattern, components=int(descriptor.removeprefix("whiten")))
    if descriptor == "cls":
        return _normalised(features.embeddings)
    raise ValueError(f"unknown descriptor {descriptor!r}")


def _kmeans_labels(points: np.ndarray, n_clusters: int, seed: int, n_init: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    fitted = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed, max_iter=50).fit(points)
    return fitted.labels_, fitted.cluster_centers_


def _knn_typicality(points: np.ndarray, k: int) -> np.ndarray:
    """TypiClust: 1 / (mean Euclidean distance to the k nearest other points + 1e-5)."""
    if len(points) < 2 or k < 1:
        return np.ones(len(points))
    squared = (points**2).sum(1)
    distance = np.sqrt(np.clip(squared[:, None] - 2 * points @ points.T + squared[None], 0.0, None))
    np.fill_diagonal(distance, np.inf)
    nearest = np.partition(distance, k - 1, axis=1)[:, :k]
    return 1.0 / (nearest.mean(axis=1) + 1e-5)


TYPICLUST_MAX_CLUSTERS = 500
TYPICLUST_MIN_CLUSTER_SIZE = 5


def typiclust_method(config: PatternConfig, *, descriptor: Descriptor = "pattern", scope: str = "cluster") -> Method:
    """TypiClust (Hacohen et al., ICML 2022) as published: k-means into min(budget, 500)
    clusters; clusters of <= 5 images dropped; clusters visited largest first (round robin when
    the budget exceeds them), each giving its most typical image not yet picked: inverse mean
    distance to its min(20, size // 2) nearest neighbours within the cluster (``scope``
    "cluster") or to the 20 nearest in the whole pool ("global")."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        points = _descriptors(features, config, descriptor)
        labels, _ = _kmeans_labels(points, min(budget, TYPICLUST_MAX_CLUSTERS, len(points)), seed, 1)
        sizes = np.bincount(labels)
        by_size = np.argsort(-sizes, kind="stable")
        # (In a tiny pool every cluster may be small: then none is dropped.)
        clusters = [c for c in by_size if sizes[c] > TYPICLUST_MIN_CLUSTER_SIZE] or list(by_size)
        global_typicality = _knn_typicality(points, 20) if scope == "global" else None
        available = np.ones(len(points), dtype=bool)
        picks: list[int] = []
        for step in range(budget):
            members = np.flatnonzero((labels == clusters[step % len(clusters)]) & available)
            if len(members) == 0:
                continue
            if global_typicality is not None:
                scores = global_typicality[members]
            else:
                scores = _knn_typicality(points[members], min(20, len(members) // 2))
            chosen = int(members[np.argmax(scores)])
            picks.append(chosen)
            available[chosen] = False
        return np.asarray(picks)

    return Method(f"typiclust {scope} {descriptor} K={config[0]} r={config[1]}", pick, nested=False)


def centroid_variant_method(config: PatternConfig, *, descriptor: Descriptor = "pattern", n_init: int = 1) -> Method:
    """The engine's cluster rule (image nearest each of ``budget`` k-means centroids) with another
    descriptor or more k-means restarts."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        points = _descriptors(features, config, descriptor)
        _, centres = _kmeans_labels(points, budget, seed, n_init)
        return _nearest_to_centres(points, centres)

    return Method(f"centroids {descriptor} K={config[0]} r={config[1]} n_init={n_init}", pick, nested=False)


PURITY_TARGET = 0.95


def probcover_method(
    config: PatternConfig,
    *,
    descriptor: Descriptor = "pattern",
    pseudo_classes: int = 10,
    purity: float = PURITY_TARGET,
) -> Method:
    """ProbCover (Yehuda et al., NeurIPS 2022): balls of radius delta (cosine distance) around
    every image; delta the largest whose balls are 95 % pure under k-means pseudo-labels
    (``pseudo_classes`` clusters, as the paper does with the number of classes); then greedily the
    image whose ball covers most uncovered images; once all are covered, random order. (``purity``
    below the paper's 0.95: a larger radius.)"""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        points = _descriptors(features, config, descriptor)
        distance = 1.0 - points @ points.T
        labels, _ = _kmeans_labels(points, pseudo_classes, seed, 1)
        delta = _purest_radius(distance, labels, purity)
        covers = distance < delta
        return _greedy_cover(covers, budget, np.random.default_rng(seed))

    suffix = "" if purity == PURITY_TARGET else f" purity={purity:g}"
    return Method(f"probcover {descriptor} K={config[0]} r={config[1]} classes={pseudo_classes}{suffix}", pick)


def _purest_radius(distance: np.ndarray, labels: np.ndarray, purity: float) -> float:
    """The largest delta on a grid whose balls hold one pseudo-label for >= ``purity`` of the images."""
    other_label = labels[:, None] != labels[None]
    # A ball of radius delta is pure iff delta <= the distance to the nearest image of another label.
    nearest_other = np.where(other_label, distance, np.inf).min(axis=1)
    best = 0.0
    for delta in np.linspace(0.005, 1.0, 200):
        if np.mean(nearest_other >= delta) >= purity:
            best = float(delta)
    return best


def _greedy_cover(covers: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    n_points = len(covers)
    uncovered = np.ones(n_points, dtype=bool)
    degree = covers.sum(axis=1).astype(np.int64)
    picked = np.zeros(n_points, dtype=bool)
    picks: list[int] = []
    while len(picks) < min(budget, n_points):
        scores = np.where(picked, -1, degree)
        chosen = int(np.argmax(scores))
        if scores[chosen] <= 0:
            break
        picks.append(chosen)
        picked[chosen] = True
        newly = covers[chosen] & uncovered
        uncovered &= ~newly
        degree -= covers[:, newly].sum(axis=1)
    rest = rng.permutation(np.flatnonzero(~picked))
    return np.concatenate([np.asarray(picks, dtype=np.int64), rest])[:budget]


# --- Candidates for multi-object images (multi_object.py); held-out `tune` first -------------


def pattern_cluster_method(config: PatternConfig, *, components: int = 32) -> Method:
    """Coverage of *patterns* rather than of images: k-means of every pattern of the pool
    (PCA-whitened) into ``budget`` clusters; clusters visited largest first (density on patterns),
    each giving the image that holds the pattern nearest its centroid, among images not yet picked."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        pool = PatternPool(features.patterns[config])
        points = whitened(pool.matrix, components=components)
        labels, centres = _kmeans_labels(points, min(budget, len(points)), seed, 1)
        squared = (points**2).sum(1) - 2 * (points * centres[labels]).sum(1)  # distance to its own centre, shifted
        available = np.ones(pool.n_images, dtype=bool)
        picks: list[int] = []
        for cluster in np.argsort(-np.bincount(labels), kind="stable"):
            rows = np.flatnonzero((labels == cluster) & available[pool.owner])
            if len(rows) == 0:
                continue
            chosen = int(pool.owner[rows[np.argmin(squared[rows])]])
            picks.append(chosen)
            available[chosen] = False
        return np.asarray(picks[:budget])

    return Method(f"pattern clusters K={config[0]} r={config[1]}", pick, nested=False)


def uniqueness_fds_method(config: PatternConfig, power: float, neighbours: int = 3) -> Method:
    """Farthest-first over patterns (``fds``) with each image's distances multiplied by its
    uniqueness ** ``power``: the mean cosine distance of its mean pattern to its ``neighbours``
    nearest other images' (the engine's typicality prior with a negative exponent), so that images
    standing apart as a whole come before lone odd patterns."""

    def pick(features: Features, budget: int, seed: int) -> np.ndarray:
        pool = PatternPool(features.patterns[config])
        prior = typicality_prior(pool.matrix, pool.starts, strength=-power, neighbours=neighbours)
        return select(features.patterns[config], budget, strategy="fds", seed=seed, prior=prior).picks

    return Method(f"fds x uniqueness^{power:g} (k={neighbours}) K={config[0]} r={config[1]}", pick)
