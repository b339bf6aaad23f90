"""Typicality: how dense the pool is around each image, as a prior for FreeSel's draws.

Diversity-only sampling picks outliers first when the budget is tiny (Hacohen et al., ICML
2022, "TypiClust"; Yehuda et al., NeurIPS 2022, "ProbCover"). TypiClust's typicality of a point
is the inverse of its mean distance to its nearest neighbours; here the point is an image's
descriptor, the normalised mean of its semantic patterns, compared by cosine distance.
"""

from __future__ import annotations

import numpy as np
import torch

from .kmeans import batched_kmeans

NEIGHBOURS = 20  # TypiClust's choice
# Above this many images, densities are measured against a fixed random sample of them:
# the cost is then (pool size x sample size), not quadratic in the pool.
MAX_REFERENCE_IMAGES = 10_000
BLOCK_ROWS = 1024
# Floor on the mean neighbour distance, so an image with many exact copies gets a finite value.
MIN_MEAN_DISTANCE = 1e-3
# Squared distances to a centroid closer than this count as equal (cluster_representatives).
TIE_TOLERANCE = 1e-6
# :func:`whitened` keeps the fewest principal components that explain this share of the
# variance, at most WHITENED_COMPONENTS (chosen on held-out data, docs/quality.md): whitening
# scales every kept direction to the same variance, so directions of mere noise must stay out.
EXPLAINED_VARIANCE = 0.9
WHITENED_COMPONENTS = 32


def image_descriptors(pattern_matrix: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(n_images, D): each image's L2-normalised mean pattern, from stacked per-image rows."""
    sums = np.add.reduceat(pattern_matrix.astype(np.float32, copy=False), starts, axis=0)
    return sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def whitened(descriptors: np.ndarray, *, components: int = WHITENED_COMPONENTS) -> np.ndarray:
    """(n, c) PCA-whitened ``descriptors``, rows L2-normalised: the centred rows projected on
    their principal directions of most variance (the fewest that explain ``EXPLAINED_VARIANCE``
    of it, at most ``components``), each divided by its standard deviation. K-means on them
    weighs every kept direction of variation alike, instead of letting the few directions of
    largest variance decide the clusters. Rows with no variance among them (one row, or copies
    of one) come back unchanged."""
    points = np.asarray(descriptors, dtype=np.float64)
    centred = points - points.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / max(len(points) - 1, 1))
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    if eigenvalues.sum() <= 0.0:
        return np.asarray(descriptors, dtype=np.float32)
    by_variance = np.argsort(eigenvalues)[::-1]
    explained = np.cumsum(eigenvalues[by_variance]) / eigenvalues.sum()
    top = by_variance[: min(components, int(np.searchsorted(explained, EXPLAINED_VARIANCE)) + 1)]
    projected = centred @ eigenvectors[:, top] / np.sqrt(eigenvalues[top])
    norms = np.linalg.norm(projected, axis=1, keepdims=True)
    return (projected / np.maximum(norms, 1e-12)).astype(np.float32)


def typicality(descriptors: np.ndarray, *, neighbours: int = NEIGHBOURS, seed: int = 0) -> np.ndarray:
    """(n,) inverse mean cosine distance of each L2-normalised row to its nearest ``neighbours``
    other rows (or to those of a seeded sample of ``MAX_REFERENCE_IMAGES`` rows, for large n)."""
    n_images = len(descriptors)
    if n_images < 2:
        return np.ones(n_images)
    reference_ids = np.arange(n_images)
    if n_images > MAX_REFERENCE_IMAGES:
        reference_ids = np.sort(np.random.default_rng(seed).choice(n_images, MAX_REFERENCE_IMAGES, replace=False))
    reference = descriptors[reference_ids]
    is_reference = np.full(n_images, -1)
    is_reference[reference_ids] = np.arange(len(reference_ids))
    k = min(neighbours, len(reference_ids) - 1)
    mean_distance = np.empty(n_images)
    for start in range(0, n_images, BLOCK_ROWS):
        rows = np.arange(start, min(start + BLOCK_ROWS, n_images))
        distance = 1.0 - descriptors[rows] @ reference.T
        own_column = is_reference[rows]
        own_rows = np.flatnonzero(own_column >= 0)
        distance[own_rows, own_column[own_rows]] = np.inf  # an image is not its own neighbour
        # torch's top-k finds the k nearest ~5x faster than numpy's partition (measured).
        nearest = torch.topk(torch.from_numpy(distance), k, dim=1, largest=False, sorted=False).values.numpy()
        mean_distance[rows] = np.clip(nearest, 0.0, None).mean(axis=1)
    return 1.0 / np.maximum(mean_distance, MIN_MEAN_DISTANCE)


def typicality_prior(
    pattern_matrix: np.ndarray, starts: np.ndarray, *, strength: float, neighbours: int = NEIGHBOURS
) -> np.ndarray:
    """(n_images,) typicality ** ``strength``, scaled to a maximum of 1: the factor that
    multiplies each image's draw weights."""
    typical = typicality(image_descriptors(pattern_matrix, starts), neighbours=neighbours)
    prior = (typical / typical.max()) ** strength
    return prior


def cluster_representatives(
    descriptors: np.ndarray, n_clusters: int, *, covered: np.ndarray, seed: int | None, iterations: int = 50
) -> np.ndarray:
    """TypiClust-style picks: k-means of the L2-normalised ``descriptors`` into ``n_clusters``;
    from every cluster holding no ``covered`` image (seeds), largest cluster first, the image
    nearest its centroid (the lowest index among equally near ones). Fewer than ``n_clusters``
    come back when clusters are covered or empty."""
    n_clusters = min(n_clusters, len(descriptors))
    if n_clusters < 1:
        return np.zeros(0, dtype=np.int64)
    points = torch.from_numpy(np.ascontiguousarray(descriptors, dtype=np.float32))[None]
    generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    centroids, members, assignment = batched_kmeans(
        points, torch.ones(points.shape[:2], dtype=torch.bool), n_clusters, iterations=iterations, generator=generator
    )
    centroids, members, assignment = centroids[0].numpy(), members[0].numpy(), assignment[0].numpy()
    is_covered = np.zeros(n_clusters, dtype=bool)
    is_covered[assignment[covered]] = True
    picks = []
    for cluster in np.argsort(-members, kind="stable"):
        if is_covered[cluster] or members[cluster] == 0:
            continue
        candidates = np.flatnonzero((assignment == cluster) & ~covered)
        gaps = ((descriptors[candidates] - centroids[cluster]) ** 2).sum(axis=1)
        # Near-ties (a two-image cluster's centroid lies halfway) go to the lowest index, so that
        # rounding noise in the descriptors cannot change the pick.
        picks.append(int(candidates[np.flatnonzero(gaps <= gaps.min() + TIE_TOLERANCE)[0]]))
    return np.asarray(picks, dtype=np.int64)


def coverage_order(descriptors: np.ndarray, weights: np.ndarray, *, taken: np.ndarray | None = None) -> np.ndarray:
    """An order of the L2-normalised ``descriptors`` rows in which every prefix is typical and
    spread out: repeatedly the row maximising ``weight x cosine distance to the nearest row
    already taken`` (``taken``: descriptors of images labelled before; with none, the first row
    is the one of largest weight). A queue is worked from the top, so its prefixes matter."""
    n_rows = len(descriptors)
    nearest = np.full(n_rows, 2.0)
    if taken is not None and len(taken):
        for start in range(0, len(taken), BLOCK_ROWS):
            nearest = np.minimum(nearest, (1.0 - descriptors @ taken[start : start + BLOCK_ROWS].T).min(axis=1))
    nearest = np.clip(nearest, 0.0, None)
    order = np.empty(n_rows, dtype=np.int64)
    remaining = np.ones(n_rows, dtype=bool)
    for position in range(n_rows):
        scores = np.where(remaining, weights * nearest, -np.inf)
        chosen = int(np.argmax(scores))
        order[position] = chosen
        remaining[chosen] = False
        nearest = np.minimum(nearest, np.clip(1.0 - descriptors @ descriptors[chosen], 0.0, None))
    return order
