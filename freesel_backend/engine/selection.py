"""FreeSel selection: a distance-based sampling over semantic patterns, as a full ranking.

Every image owns a few L2-normalised patterns. ``d[p]`` is the cosine distance from pattern
``p`` to the nearest pattern of any selected image. Each step draws one pattern (with
probability proportional to ``d**2`` for ``prob``, the largest ``d`` for ``fds``), selects the
image that owns it and lowers ``d`` with the distances to all of that image's patterns.
``typical`` (the default) first takes one representative image per cluster (k-means of the
images' PCA-whitened mean patterns into ``budget`` clusters, the image nearest each centroid),
ordered so that every prefix of the queue is typical and spread out (:func:`.density.coverage_order`),
and draws any remaining picks like ``prob`` with weights multiplied by a typicality prior
(:mod:`.density`), so that small budgets pick representative images, not outliers; ``prob``
and ``fds`` are the paper's algorithm as published (docs/quality.md has the measurements).

Distances are matrix products over the normalised patterns. :mod:`.nearest` batches the updates
of ``d`` (lazy updates): the draws work from an upper bound of ``d`` and compute the true ``d`` of
the few patterns they look at, so the distances are lowered a few hundred picks at a time in
compute-bound products instead of one memory-bound pass over all patterns per pick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Literal, Sequence

import numpy as np

from .density import cluster_representatives, coverage_order, image_descriptors, typicality_prior, whitened
from .nearest import AUTO, DUPLICATE_TOLERANCE, NearestDistances, Updates, nearest_cosine_distance

Strategy = Literal["typical", "prob", "fds"]
STRATEGIES: tuple[str, ...] = ("typical", "prob", "fds")
DEFAULT_STRATEGY: Strategy = "typical"
# Exponent on the typicality prior of ``typical``, chosen on held-out data (docs/quality.md).
TYPICALITY_STRENGTH = 1.0
# A re-ranking keeps a pick of the earlier head while its distance to the labels and the picks
# before it stays at least this share of its distance when drawn (a label elsewhere covers it below).
HEAD_KEEP_SHARE = 0.5

__all__ = [
    "DUPLICATE_TOLERANCE", "STRATEGIES", "DrawSettings", "PatternPool", "Ranking",
    "draw_prior", "extend_head", "rerank_head", "resolve_budget", "select",
]

# fds: true distances computed first, then x4 while the best does not beat the next bound.
FDS_FIRST_CANDIDATES = 32
# fds: above this share of patterns to look at, a flush is cheaper.
FDS_CANDIDATE_SHARE = 0.05
# prob: rejections (since the bounds last changed) after which they are tightened. A proposal
# costs ~16 us, lowering every bound of 25,000 patterns by 640 picked ones ~17 ms (bfloat16, 2
# cores): tightening after a few hundred rejections keeps both small (measured, N=5,000-20,000).
MAX_REJECTIONS = 200
# prob: proposals drawn at once, their true d computed in one product (not one per proposal);
# typical: representatives brought up to date at once, likewise.
PROPOSAL_BATCH = 32


@dataclass(frozen=True)
class DrawSettings:
    """How a ranking draws its picks, as :func:`select` takes them: the ``strategy``, the random
    ``seed``, the cosine distance below which patterns count as near-duplicates
    (``duplicate_threshold``), and the image ``prior`` of the ranked patterns (None: computed from
    them for ``strategy``, see :func:`draw_prior`). The prior belongs to one set of patterns: it is
    left out of comparisons."""

    strategy: Strategy = DEFAULT_STRATEGY
    seed: int | None = None
    duplicate_threshold: float = DUPLICATE_TOLERANCE
    prior: np.ndarray | None = field(default=None, compare=False, repr=False)

    def with_prior(self, prior: np.ndarray | None) -> "DrawSettings":
        return replace(self, prior=prior)

    def with_prior_of(self, patterns: Sequence[np.ndarray]) -> "DrawSettings":
        """These settings with the draw prior of ``patterns`` where they hold none: rankings of the
        same patterns then share it instead of computing it again."""
        return self if self.prior is not None else self.with_prior(draw_prior(patterns, self.strategy))


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

    def __init__(self, patterns: Sequence[np.ndarray], duplicate_threshold: float = DUPLICATE_TOLERANCE) -> None:
        if not 0.0 <= duplicate_threshold < 2.0:
            raise ValueError(f"duplicate_threshold is a cosine distance in [0, 2), got {duplicate_threshold}")
        self.duplicate_threshold = duplicate_threshold
        if len(patterns) == 0:
            raise ValueError("select() needs at least one image's patterns")
        arrays = [np.asarray(image_patterns) for image_patterns in patterns]
        for index, array in enumerate(arrays):
            if array.ndim != 2 or array.shape[0] == 0:
                raise ValueError(
                    f"patterns[{index}] must be a non-empty (k, D) array, got shape {array.shape}"
                )
        counts = [array.shape[0] for array in arrays]
        dims = {array.shape[1] for array in arrays}
        if len(dims) != 1:
            raise ValueError(f"all patterns must have the same dimension, got {sorted(dims)}")
        self.matrix = _normalised_rows(np.concatenate(arrays, dtype=np.float32))
        self.counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.owner = np.repeat(np.arange(len(patterns)), self.counts)

    @property
    def n_images(self) -> int:
        return len(self.counts)

    def rows_of(self, image: int) -> slice:
        start = int(self.starts[image])
        return slice(start, start + int(self.counts[image]))

    def pattern_indices(self, images: Iterable[int]) -> np.ndarray:
        """The rows of ``images``' patterns, image after image."""
        return np.concatenate([np.arange(self.starts[i], self.starts[i] + self.counts[i]) for i in images])

    def distances_to(self, images: Iterable[int]) -> np.ndarray:
        """Cosine distance from every pattern to the nearest pattern of ``images``."""
        rows = self.pattern_indices(images)
        nearest = np.full(len(self.matrix), np.inf, dtype=np.float32)
        for chunk in np.array_split(rows, max(1, math.ceil(len(rows) / 256))):
            nearest = np.minimum(nearest, self.distance_block(self.matrix[chunk]))
        return nearest

    def distance_block(self, queries: np.ndarray) -> np.ndarray:
        """Cosine distance from every pattern to the nearest of ``queries`` (rows of the pool)."""
        return nearest_cosine_distance(self.matrix, queries, self.duplicate_threshold)

    def patterns_of(self, images: Iterable[int]) -> np.ndarray:
        """The normalised patterns of ``images``, stacked."""
        return np.concatenate([self.matrix[self.rows_of(image)] for image in images])

    def per_image_max(self, values: np.ndarray) -> np.ndarray:
        return np.maximum.reduceat(values, self.starts)


def _normalised_rows(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` (a fresh float32 copy) with unit rows, normalised in place."""
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    # A non-finite value makes its row's norm non-finite: checking the norms checks every value.
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("patterns must be finite and non-zero (they are compared by cosine)")
    matrix /= norms[:, None]
    return matrix


def select(
    patterns: Sequence[np.ndarray],
    budget: int,
    *,
    strategy: Strategy = DEFAULT_STRATEGY,
    seeds: Iterable[int] = (),
    seed: int | None = None,
    duplicate_threshold: float = DUPLICATE_TOLERANCE,
    updates: Updates = "lazy",
    prior: np.ndarray | None = None,
    device: str = AUTO,
) -> Ranking:
    """Rank images to label first with FreeSel's distance-based sampling.

    ``patterns[i]`` is image ``i``'s (k_i, D) array of semantic patterns. ``seeds`` are images
    already selected (e.g. labelled): they steer the picks and are left out of the ranking.
    ``budget`` picks are drawn (fewer when fewer images remain), the rest is ordered by distance.
    ``prior`` (n_images,), positive, multiplies each image's draw weights (for ``fds``: the
    distances it maximises); ``typical`` computes its own when none is given.
    Distances below ``duplicate_threshold`` count as zero: with the threshold of
    :func:`~freesel_backend.engine.duplicates.find_near_duplicates`, a picked image's
    near-duplicates carry no weight, so no two of one group are picked while others remain.
    ``updates="dense"`` recomputes every distance at every pick (the reference path). The default
    ``"lazy"`` gives the same fds ranking and prob draws from the same distribution (not the same
    draws for a seed: rejection sampling consumes the random stream differently).
    ``device`` runs the large distance products on a torch device ("cuda", "cuda:1"); "numpy"
    keeps them in numpy; "auto" (the default) uses the GPU when torch sees one and the pool holds
    :data:`~.nearest.AUTO_DEVICE_MIN_ROWS` patterns or more.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    pool = PatternPool(patterns, duplicate_threshold)
    seed_ids = _validated_seeds(seeds, pool.n_images)
    row_prior = _row_prior(pool, strategy, prior)
    rng = np.random.default_rng(seed)

    selected = np.zeros(pool.n_images, dtype=bool)
    selected[list(seed_ids)] = True
    nearest = NearestDistances(pool.matrix, threshold=pool.duplicate_threshold, updates=updates, device=device)
    if seed_ids:
        nearest.add(pool.patterns_of(seed_ids))
    draws = _Draws(pool, nearest, strategy, rng, row_prior)

    n_picks = min(budget, pool.n_images - len(seed_ids))
    representatives = _representatives(pool, strategy, n_picks, selected, seed, row_prior)
    picks: list[int] = []
    pick_distances: list[float] = []
    for position in range(n_picks):
        if position < len(representatives):
            if position % PROPOSAL_BATCH == 0:
                draws.bring_up_to_date(representatives[position : position + PROPOSAL_BATCH])
            image = int(representatives[position])
            distance = draws.distance_of(image)
        else:
            image, distance = draws.next(selected)
        picks.append(image)
        pick_distances.append(distance)
        selected[image] = True
        nearest.add(pool.matrix[pool.rows_of(image)])

    rest_order, rest_distance = _order_rest(pool, nearest, selected)
    return Ranking(
        order=np.concatenate([np.asarray(picks, dtype=np.int64), rest_order]),
        distance=np.concatenate([np.asarray(pick_distances, dtype=np.float64), rest_distance]),
        n_picked=len(picks),
        seeds=seed_ids,
    )


def rerank_head(
    patterns: Sequence[np.ndarray],
    head_size: int,
    budget: int,
    *,
    previous_order: Sequence[int] = (),
    previous_n_picked: int = 0,
    seeds: Iterable[int] = (),
    draw: DrawSettings = DrawSettings(),
) -> Ranking:
    """A ranking whose head keeps an earlier ranking's picks that no label covered since, in
    their order, whose other head picks are drawn afresh, and whose tail keeps the earlier order.

    The head (``min(head_size, budget)`` picks) is filled with the earlier picks (the first
    ``previous_n_picked`` of ``previous_order``, image indices; the earlier head's, then those
    after it) that are neither labelled (``seeds``) nor covered by a label
    (:func:`still_valid_picks`), in their order; :func:`select` draws what they leave short with
    the seeds and those picks as seeds. Labels taken from the top of the head change nothing
    else of the queue: the next earlier pick moves up into the head, where the queue already
    held it. With no earlier picks, all ``budget`` picks are drawn. The other images follow in
    ``previous_order`` (seeds, head picks and repeats drop out), then those it did not hold by
    decreasing distance. The picks are the head's, then the earlier picks left in the tail, at
    most ``budget`` in all. Every distance is the image's distance to the head and the seeds (a
    pick's: when drawn, or for a kept pick, now). :func:`extend_head` draws more picks after them.
    ``draw``: as :func:`select` takes its settings (:func:`draw_prior` of the same patterns as the
    prior gives the same ranking as none).
    """
    pool = PatternPool(patterns, draw.duplicate_threshold)
    seed_ids = _validated_seeds(seeds, pool.n_images)
    n_head = min(head_size, budget)
    # Earlier picks looked at for the head: twice its size leaves room for picks that labels covered.
    earlier_picks = [int(i) for i in previous_order[: min(previous_n_picked, 2 * n_head)]]
    kept, kept_distance = still_valid_picks(pool, earlier_picks, seed_ids, previous_order, limit=n_head)
    head = _draw(patterns, n_head - len(kept) if earlier_picks else budget, [*seed_ids, *kept], draw)
    distance_of = {**dict(zip(head.order.tolist(), head.distance.tolist())), **dict(zip(kept, kept_distance))}
    rest = set(head.order[head.n_picked :].tolist())
    tail = [image for image in dict.fromkeys(int(i) for i in previous_order) if image in rest]
    held = set(tail)
    tail_picks = len(held & {int(i) for i in previous_order[:previous_n_picked]})
    newcomers = [image for image in head.order[head.n_picked :].tolist() if image not in held]
    order = np.asarray([*kept, *head.picks.tolist(), *tail, *newcomers], dtype=np.int64)
    return Ranking(
        order=order,
        distance=np.asarray([distance_of[image] for image in order.tolist()], dtype=np.float64),
        n_picked=min(budget, len(kept) + head.n_picked + tail_picks),
        seeds=seed_ids,
    )


def still_valid_picks(
    pool: PatternPool, earlier_picks: Sequence[int], seeds: Sequence[int], previous_order: Iterable[int],
    limit: int | None = None,
) -> tuple[list[int], list[float]]:
    """The first ``limit`` (all without one) of ``earlier_picks`` (in their order) that are not
    labelled now and that no new label covers, with their distance now.

    A pick's distance when it was drawn counted the labels of then (the ``seeds`` that the
    earlier ranking did not hold) and the picks before it; its distance now counts every seed and
    the kept picks before it. A label on a pick before it changes nothing; a label elsewhere that
    brings the pick's farthest pattern closer than :data:`HEAD_KEEP_SHARE` of its distance then
    covers it: the pick leaves the head and a fresh one is drawn in its place. Images new since
    the earlier ranking (neither in ``previous_order`` nor seeds) may belong before the earlier
    picks: the kept picks end at the first one nearer to the seeds and the picks before it than
    the farthest new image is to the seeds (the rest of the head is drawn with the new images).
    """
    picks = [image for image in dict.fromkeys(earlier_picks) if 0 <= image < pool.n_images]
    if not picks or limit == 0:
        return [], []
    ranked_then = {int(i) for i in previous_order}
    rows = pool.matrix[pool.pattern_indices(picks)]
    ends = np.cumsum(pool.counts[picks])

    def nearest_to(images: Sequence[int]) -> np.ndarray:
        if not images:
            return np.full(len(rows), np.inf, dtype=np.float32)
        return nearest_cosine_distance(rows, pool.patterns_of(images), pool.duplicate_threshold)

    then = nearest_to([s for s in seeds if s not in ranked_then])
    now = nearest_to(list(seeds))
    labelled = set(seeds)
    known = ranked_then | labelled
    farthest_new = _farthest_from(pool, [i for i in range(pool.n_images) if i not in known], seeds)
    kept: list[int] = []
    kept_distance: list[float] = []
    for image, end in zip(picks, ends.tolist()):
        own = slice(end - int(pool.counts[image]), end)
        distance_now = float(now[own].max())
        if image not in labelled and distance_now < farthest_new:
            break
        # A first pick drawn with nothing selected had an infinite distance: the largest cosine distance instead.
        if image not in labelled and distance_now >= HEAD_KEEP_SHARE * min(float(then[own].max()), 2.0):
            kept.append(image)
            kept_distance.append(distance_now)
            if len(kept) == limit:
                break
            now = np.minimum(now, nearest_to([image]))
        then = np.minimum(then, nearest_to([image]))
    return kept, kept_distance


def _farthest_from(pool: PatternPool, images: Sequence[int], seeds: Sequence[int]) -> float:
    """The largest distance of a pattern of ``images`` to the patterns of ``seeds`` (0 without
    images, infinite without seeds)."""
    if not images:
        return 0.0
    if not seeds:
        return math.inf
    rows = pool.matrix[pool.pattern_indices(images)]
    return float(nearest_cosine_distance(rows, pool.patterns_of(seeds), pool.duplicate_threshold).max())


def extend_head(
    patterns: Sequence[np.ndarray],
    head: Sequence[int],
    head_distance: Sequence[float],
    budget: int,
    *,
    seeds: Iterable[int] = (),
    draw: DrawSettings = DrawSettings(),
) -> Ranking:
    """``head`` (picks, in this order, with their distances) kept, then ``budget - len(head)``
    picks drawn with the head and ``seeds`` as seeds, then the rest by distance: the tail of a
    :func:`rerank_head` ranking drawn afresh. ``draw``: as :func:`rerank_head` takes it."""
    seed_ids = _validated_seeds(seeds, len(patterns))
    head_ids = [int(image) for image in head]
    tail = _draw(patterns, max(0, budget - len(head_ids)), [*seed_ids, *head_ids], draw)
    return Ranking(
        order=np.concatenate([np.asarray(head_ids, dtype=np.int64), tail.order]),
        distance=np.concatenate([np.asarray(head_distance, dtype=np.float64), tail.distance]),
        n_picked=len(head_ids) + tail.n_picked,
        seeds=seed_ids,
    )


def _draw(patterns: Sequence[np.ndarray], budget: int, seeds: Sequence[int], draw: DrawSettings) -> Ranking:
    return select(
        patterns, budget, strategy=draw.strategy, seeds=seeds, seed=draw.seed,
        duplicate_threshold=draw.duplicate_threshold, prior=draw.prior,
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


def _representatives(
    pool: PatternPool,
    strategy: Strategy,
    n_picks: int,
    selected: np.ndarray,
    seed: int | None,
    row_prior: np.ndarray | None,
) -> np.ndarray:
    """``typical``'s first picks: one per cluster of the images' whitened mean patterns (none otherwise),
    in coverage order (typical and spread out first: the queue is worked from the top)."""
    if strategy != "typical" or n_picks == 0:
        return np.zeros(0, dtype=np.int64)
    descriptors = image_descriptors(pool.matrix, pool.starts)
    # Clustered on the PCA-whitened descriptors: the few directions of largest variance would
    # otherwise decide the clusters (held-out measurements: docs/quality.md).
    n_clusters = n_picks + int(selected.sum())
    picks = cluster_representatives(whitened(descriptors), n_clusters, covered=selected.copy(), seed=seed)[:n_picks]
    image_prior = row_prior[pool.starts] if row_prior is not None else np.ones(pool.n_images)
    # The square root: typicality spans orders of magnitude and must not outweigh distance, else a
    # dense cluster's second image would come before any image of another cluster.
    order = coverage_order(descriptors[picks], np.sqrt(image_prior[picks]), taken=descriptors[selected])
    return picks[order]


def draw_prior(patterns: Sequence[np.ndarray], strategy: Strategy) -> np.ndarray | None:
    """The image prior :func:`select` computes for ``strategy`` when given none (``typical``: the
    typicality prior; None otherwise). It depends on the patterns only, not on the seeds: a
    re-ranking of the same images can reuse it (at 20,000 images it costs more than the rest of a
    re-ranking)."""
    return _image_prior(PatternPool(patterns), strategy) if patterns else None


def _image_prior(pool: PatternPool, strategy: Strategy) -> np.ndarray | None:
    return typicality_prior(pool.matrix, pool.starts, strength=TYPICALITY_STRENGTH) if strategy == "typical" else None


def _row_prior(pool: PatternPool, strategy: Strategy, prior: np.ndarray | None) -> np.ndarray | None:
    """The per-pattern-row draw factor: the image prior repeated over its patterns, or None."""
    if prior is None:
        prior = _image_prior(pool, strategy)
    if prior is None:
        return None
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (pool.n_images,) or not np.all(np.isfinite(prior)) or not np.all(prior > 0):
        raise ValueError(f"prior must hold one finite value > 0 per image ({pool.n_images}), got shape {prior.shape}")
    return prior[pool.owner]


class _Draws:
    """One pick at a time from the bounds of :class:`NearestDistances`.

    Both strategies work from a snapshot of the bounds taken at the last flush (sorted for fds,
    cumulative weights for prob): a snapshot bound stays an upper bound of the true ``d``.
    """

    def __init__(
        self,
        pool: PatternPool,
        nearest: NearestDistances,
        strategy: Strategy,
        rng: np.random.Generator,
        row_prior: np.ndarray | None,
    ) -> None:
        self.pool, self.nearest, self.strategy, self.rng = pool, nearest, strategy, rng
        self.row_prior = row_prior
        self._snapshot_at = -1
        self._snapshot = np.empty(0, np.float32)
        self._snapshot_scores = np.empty(0)
        self._by_bound = np.empty(0, np.int64)
        self._cumulative = np.empty(0)
        self._proposals: list[int] = []
        self._rejections = 0  # since the snapshot

    def next(self, selected: np.ndarray) -> tuple[int, float]:
        """One pick: (image index, the drawn pattern's distance)."""
        if self.nearest.nothing_selected:
            # Nothing selected yet: the paper starts from one random image (drawn by the prior).
            if self.row_prior is None:
                return int(self.rng.integers(self.pool.n_images)), math.inf
            image_prior = self.row_prior[self.pool.starts]
            return int(self.rng.choice(self.pool.n_images, p=image_prior / image_prior.sum())), math.inf
        drawn = self._farthest() if self.strategy == "fds" else self._sampled()
        if drawn is None:
            # Only copies of selected images remain: complete the order in index order.
            return int(np.flatnonzero(~selected)[0]), 0.0
        pattern, distance = drawn
        return int(self.pool.owner[pattern]), distance

    def bring_up_to_date(self, images: np.ndarray) -> None:
        """Compute the true ``d`` of the patterns of ``images``, picked next, in one product: then
        :meth:`distance_of` each costs only the picks made since."""
        if not self.nearest.nothing_selected and len(images):
            self.nearest.refresh(self.pool.pattern_indices(images))

    def distance_of(self, image: int) -> float:
        """The true ``d`` of ``image``'s farthest pattern (``inf`` while nothing is selected)."""
        if self.nearest.nothing_selected:
            return math.inf
        return float(self.nearest.refresh(self.pool.pattern_indices([image])).max())

    def _farthest(self) -> tuple[int, float] | None:
        """The pattern of largest true ``d`` (times its prior; the lowest index among equals, as
        argmax), or None when every ``d`` is 0. Candidates are taken by decreasing bound until the
        best true value beats every bound left: no other pattern can then reach it."""
        nearest = self.nearest
        count = FDS_FIRST_CANDIDATES
        # count < len(patterns) in the loop, so a next bound always exists.
        while not nearest.is_exact and count <= FDS_CANDIDATE_SHARE * len(nearest.copy_of):
            self._take_snapshot()
            candidates = self._by_bound[:count]
            exact = nearest.refresh(candidates)
            scores = self._scaled(exact, candidates)
            best = scores.max()
            if best > self._snapshot_scores[self._by_bound[count]]:
                chosen = int(np.flatnonzero(scores == best)[np.argmin(candidates[scores == best])])
                return int(candidates[chosen]), float(exact[chosen])
            count *= 4
        values = nearest.values()
        pattern = int(np.argmax(self._scaled(values)))
        return (pattern, float(values[pattern])) if values[pattern] > 0.0 else None

    def _scaled(self, values: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``values`` (of ``rows``, or of every row) times their rows' prior."""
        if self.row_prior is None:
            return values
        return values * (self.row_prior if rows is None else self.row_prior[rows])

    def _sampled(self) -> tuple[int, float] | None:
        """A pattern drawn with probability proportional to ``d ** 2``, or None when every ``d``
        is 0. Proposals come from the snapshot bounds and are accepted with probability
        ``weight(d) / weight(bound)``: exactly the ``d ** 2`` distribution (times the row's prior,
        which cancels in that ratio)."""
        nearest = self.nearest
        while True:
            self._take_snapshot()
            if self._cumulative[-1] <= 0.0:
                return None
            pattern = self._next_proposal()
            bound = self._snapshot[pattern]
            if nearest.is_exact:
                return pattern, float(bound)
            distance = nearest.refresh_one(pattern)
            if self.rng.random() * _weights(bound) < _weights(distance):
                return pattern, float(distance)
            self._rejections += 1
            if self._rejections >= MAX_REJECTIONS:
                nearest.tighten()

    def _next_proposal(self) -> int:
        """A pattern drawn from the snapshot weights. They are drawn :data:`PROPOSAL_BATCH` at a
        time (proposals are independent of the picks between them) and brought up to date in one
        product, so that checking each later costs only the picks made since."""
        if not self._proposals:
            cumulative = self._cumulative
            drawn = np.searchsorted(cumulative, self.rng.random(PROPOSAL_BATCH) * cumulative[-1], side="right")
            drawn = np.minimum(drawn, len(cumulative) - 1)
            if not self.nearest.is_exact:
                self.nearest.refresh(drawn)
            self._proposals = drawn[::-1].tolist()
        return self._proposals.pop()

    def _take_snapshot(self) -> None:
        """Snapshot the bounds once per flush (proposals drawn from an older one are dropped)."""
        if self._snapshot_at == self.nearest.n_flushes:
            return
        self._proposals = []
        self._rejections = 0
        self._snapshot = self.nearest.bound
        if self.strategy == "fds":
            self._snapshot_scores = self._scaled(self._snapshot)
            self._by_bound = np.argsort(-self._snapshot_scores, kind="stable")
        else:
            weights = _weights(self._snapshot)
            self._cumulative = np.cumsum(weights if self.row_prior is None else weights * self.row_prior)
        self._snapshot_at = self.nearest.n_flushes


def _weights(distance: np.ndarray | np.float32) -> np.ndarray:
    """prob's draw weight of a pattern at distance ``d``: ``d ** 2`` (float64)."""
    return np.square(distance, dtype=np.float64)


def _order_rest(pool: PatternPool, nearest: NearestDistances, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    farthest = _farthest_per_image(pool, nearest, ~selected).astype(np.float64)
    rest = np.flatnonzero(~selected)
    # Stable sort on -distance keeps index order among ties (e.g. all-zero duplicates).
    order = rest[np.argsort(-farthest[rest], kind="stable")]
    return order.astype(np.int64), farthest[order]


def _farthest_per_image(pool: PatternPool, nearest: NearestDistances, images: np.ndarray) -> np.ndarray:
    """(n_images,) the true ``d`` of each image's farthest pattern, for the ``images`` (mask).

    In rounds: the true ``d`` of each image's pattern of largest bound among those whose bound
    exceeds the image's best true ``d`` so far (the others cannot be the farthest), until none
    is left. Most images are settled in one or two rounds.
    """
    if nearest.nothing_selected:
        return np.full(pool.n_images, np.inf)
    wanted = images[pool.owner]
    while True:
        bound, current = nearest.bound, nearest.is_current()
        best = pool.per_image_max(np.where(current, bound, -np.inf))
        open_rows = wanted & ~current & (bound > best[pool.owner])
        if not open_rows.any():
            return best
        largest_open = pool.per_image_max(np.where(open_rows, bound, -np.inf))
        nearest.refresh(np.flatnonzero(open_rows & (bound == largest_open[pool.owner])))
