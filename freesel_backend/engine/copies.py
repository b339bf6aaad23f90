"""Copies: images that are the same photograph after a re-encode, resize, small crop, brightness or
contrast change, small rotation, or a burst shot a few pixels apart.

Each image keeps a small signature: its grey levels squeezed to a 32 x 32 thumbnail (1 KiB) and
its aspect ratio. Two stages find the copies among many signatures:

1. candidates: each image's nearest neighbours by an 8 x 8 blur of the thumbnail, whole or of its
   central 90 % (a copy cut down by 10 % shows that part of the original), above a loose
   similarity;
2. verification: the best normalised correlation of the two thumbnails over a search of
   per-axis scales (0.85-1.18) and shifts (up to 15 %) whose overlap covers at least 85 % of
   each image along each axis, coarse at 16 x 16 then refined at 32 x 32, upright and turned
   against each other by 1.5 and 3 degrees either way, leaving out a border of 1/16 of each
   side (a turned copy's corners). The correlation ignores brightness and contrast; the overlap
   rule keeps crops of one large photo shifted by 30 % apart even though their overlapping parts
   are the same pixels. A pair's shortfall from 1.0 is then scaled to its pictures: stricter for
   thumbnail-sized images, more lenient for fine textures (see :func:`_pair_scores`).

Byte-identical files are grouped apart from all this, by :func:`content_digest`, before any image
is decoded. Groups are cliques (every two members are copies); see
:func:`freesel_backend.engine.duplicates.cliques_of_pairs`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, fields
from functools import cached_property, lru_cache
from typing import Sequence, TypeVar

import numpy as np
from PIL import Image

from .duplicates import DuplicateGroups, cliques_of_pairs

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 32
COARSE_SIDE = 16
BLUR_SIDE = 8
# Smaller images carry too little of the picture to tell a copy from a look-alike.
MIN_SIDE = 16
# A thumbnail whose grey levels vary less than this (standard deviation, 0-255) shows nothing to
# compare: a blank page, a uniform colour.
MIN_DETAIL = 4.0
# Correlation of two thumbnails above which they are copies (the default setting); measured
# operating points in docs/near-duplicates.md.
DEFAULT_COPY_THRESHOLD = 0.97
# Images whose shorter side is below this are compared strictly (see _pair_scores).
SMALL_SIDE = 2 * THUMBNAIL_SIDE
SMALL_IMAGE_STRICTNESS = 5.0
# Along each axis, the overlap of two copies covers at least this share of each image.
MIN_OVERLAP = 0.85
# Aspect ratios further apart than the largest per-axis scale cannot be copies.
MAX_ASPECT_CHANGE = 1 / MIN_OVERLAP
# Candidate stage: neighbours per image (groups are cliques: every two members must be a
# candidate pair), the blurred thumbnails' least cosine similarity, and the windows (share of
# each side, offsets along it) of each thumbnail compared besides the whole.
CANDIDATES_PER_IMAGE = 32
MIN_CANDIDATE_SIMILARITY = 0.6
CANDIDATE_VIEW_SHARE = 0.9
CANDIDATE_VIEW_OFFSETS = (0.05,)
# Scales and shifts searched (fractions of the image), coarse grid then a refinement around the best.
COARSE_SCALE_STEP = 0.05
COARSE_SHIFT_STEP = 0.05
FINE_STEP = 0.025
MAX_SHIFT = 0.15
# Turns (degrees) of one image against the other tried in the refinement (a photo straightened
# or tilted), for pairs whose upright correlation reaches LEAST_SCORE_TO_TURN.
TURNS = (-1.5, 1.5, -3.0, 3.0)
LEAST_SCORE_TO_TURN = 0.7
# Thumbnail pixels at each border left out of the correlation: the black corners of a turned copy.
MARGIN = 2
# Texture (see _texture) of a typical photograph, and the least share of a textured pair's
# shortfall from 1.0 that counts.
TEXTURE_REFERENCE = 0.06
MOST_LENIENCY = 0.25
# Rows of the candidate search's similarity blocks (a block is rows x images float32).
BLOCK_ROWS = 1024
# Verification: images (upright or turned) whose sums are kept at once, and refinement grids
# kept per image and role: together some 350 MiB at most.
TURNED_CACHE_SIZE = 1024
FINE_GRIDS_PER_IMAGE = 4
# Pairs whose searches run as one stack of matrix products.
PAIRS_PER_BATCH = 256


class CopySignatureError(ValueError):
    """An image that cannot get a copy signature; the message says why. Such an image is never
    grouped as a copy (byte-identical files still are, by their digest)."""


@dataclass(frozen=True)
class CopySignature:
    """An image's copy signature: 32 x 32 grey levels (the whole picture, squeezed) and the
    image's width and height in pixels."""

    thumbnail: np.ndarray
    width: int
    height: int

    @property
    def aspect(self) -> float:
        return self.width / self.height

    @property
    def small(self) -> bool:
        """Fewer pixels than twice the thumbnail's side: no more detail than the thumbnail holds."""
        return min(self.width, self.height) < SMALL_SIDE

    def to_bytes(self) -> bytes:
        """1,028 bytes: the thumbnail's grey levels, then width and height (uint16 each)."""
        size = np.array([min(self.width, 65535), min(self.height, 65535)], dtype="<u2")
        return self.thumbnail.astype(np.uint8).tobytes() + size.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> CopySignature:
        side = THUMBNAIL_SIDE
        if len(data) != side * side + 4:
            raise ValueError(f"a copy signature has {side * side + 4} bytes, got {len(data)}")
        thumbnail = np.frombuffer(data[: side * side], dtype=np.uint8).reshape(side, side)
        width, height = np.frombuffer(data[side * side :], dtype="<u2").tolist()
        return cls(thumbnail=thumbnail, width=width, height=height)


def content_digest(data: bytes) -> str:
    """The SHA-256 of a file's bytes: equal digests are exact copies, whatever the file's name."""
    return hashlib.sha256(data).hexdigest()


def copy_signature(image: Image.Image) -> CopySignature:
    """The signature of a decoded (or lazily opened) PIL image; raises :class:`CopySignatureError`
    for an animated, truncated, too small or blank image."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise CopySignatureError(f"animated image ({frames} frames): copies are judged on still images only")
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise CopySignatureError(
            f"image too small to compare as a copy: {width} x {height} (needs {MIN_SIDE} px on each side)"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise CopySignatureError(f"corrupt or truncated image: {error}") from error
    grey = image.convert("RGB") if image.mode in ("P", "PA", "RGBA", "LA", "I;16", "I", "F", "1", "CMYK") else image
    thumbnail = grey.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR, reducing_gap=3.0)
    levels = np.asarray(thumbnail.convert("L"), dtype=np.uint8)
    if float(levels.std()) < MIN_DETAIL:
        raise CopySignatureError("image shows no detail to compare (a uniform or nearly uniform picture)")
    return CopySignature(thumbnail=levels.copy(), width=width, height=height)


def copy_score(first: CopySignature, second: CopySignature) -> float:
    """How well two signatures match as copies: the best correlation of their thumbnails over the
    scales, shifts and turns searched, its shortfall from 1.0 scaled to the pictures (1.0: the
    same picture; below 0.9 for distinct photographs)."""
    return float(_pair_scores([first, second], np.array([[0, 1]], dtype=np.int64))[0])


def find_copies(signatures: list[CopySignature | None], threshold: float = DEFAULT_COPY_THRESHOLD) -> DuplicateGroups:
    """Group images whose signatures match above ``threshold``; ``None`` (an image without a
    signature) is never grouped."""
    pairs, scores = scored_candidates(signatures)
    return copy_groups(len(signatures), pairs, scores, threshold)


def scored_candidates(signatures: list[CopySignature | None]) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs (a, b), a < b, of images with a signature, and each pair's copy score
    (see :func:`copy_score`)."""
    pairs = candidates_of(signatures)
    return pairs, scores_of_pairs(signatures, pairs)


def candidates_of(signatures: Sequence[CopySignature | None]) -> np.ndarray:
    """The candidate pairs (a, b), a < b, of images with a signature (see :func:`candidate_pairs`)."""
    present = np.array([index for index, signature in enumerate(signatures) if signature is not None], np.int64)
    kept: list[CopySignature] = [signatures[index] for index in present]  # type: ignore[misc]
    candidates = candidate_pairs(_stack(kept), np.array([signature.aspect for signature in kept], np.float64))
    return present[candidates].reshape(-1, 2)


def scores_of_pairs(signatures: Sequence[CopySignature | None], pairs: np.ndarray) -> np.ndarray:
    """The copy score of each pair (a, b) of images with a signature: a pair's score depends on its
    two signatures alone, so a pair scored once keeps its score whatever images come later."""
    involved = np.unique(pairs)
    kept: list[CopySignature] = [signatures[index] for index in involved.tolist()]  # type: ignore[misc]
    return _pair_scores(kept, np.searchsorted(involved, pairs).reshape(-1, 2))


def _pair_scores(signatures: list[CopySignature], pairs: np.ndarray) -> np.ndarray:
    """The verified correlation of each pair, its shortfall from 1.0 then scaled to the pictures.

    A pair with a small image (see :attr:`CopySignature.small`) has its shortfall counted
    ``SMALL_IMAGE_STRICTNESS`` times: the search over crops fits any two similar silhouettes of a
    thumbnail-sized picture (same-class Fashion-MNIST items reach 0.98), so such copies must
    match almost pixel for pixel. A fine texture (grass, gravel, brick) loses correlation under
    the slightest crop or turn, where distinct textures share almost none: its shortfall counts
    less, down to ``MOST_LENIENCY`` of it."""
    thumbnails = _stack(signatures)
    aspects = np.array([signature.aspect for signature in signatures], np.float64)
    small = np.array([signature.small for signature in signatures], dtype=bool)
    texture = _texture(_smoothed(thumbnails)) if len(thumbnails) else np.zeros(0)
    scores = _verified_scores(thumbnails, aspects, pairs)
    if not len(pairs):
        return scores
    return _scaled_shortfall(scores, small[pairs].any(axis=1), texture[pairs].min(axis=1))


def _scaled_shortfall(scores: np.ndarray, small: np.ndarray, texture: np.ndarray) -> np.ndarray:
    """Each score's shortfall from 1.0, counted SMALL_IMAGE_STRICTNESS times for a pair with a
    small image and in proportion to TEXTURE_REFERENCE / the pair's texture otherwise."""
    leniency = np.clip(TEXTURE_REFERENCE / np.maximum(texture, 1e-6), MOST_LENIENCY, 1.0)
    return 1.0 - np.where(small, SMALL_IMAGE_STRICTNESS, leniency) * (1.0 - scores)


def _texture(thumbnails: np.ndarray) -> np.ndarray:
    """How much each (smoothed) thumbnail changes between neighbouring pixels: 1 - its
    correlation with itself moved by one pixel, down and across (about 0.01 for a smooth
    picture, 0.2-0.5 for grass, gravel or brick)."""

    def correlation(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        n = len(first)
        return np.sum(_normalised(first.reshape(n, -1)) * _normalised(second.reshape(n, -1)), axis=1)

    down = correlation(thumbnails[:, 1:], thumbnails[:, :-1])
    across = correlation(thumbnails[:, :, 1:], thumbnails[:, :, :-1])
    return 1.0 - (down + across) / 2


def copy_groups(n_images: int, pairs: np.ndarray, scores: np.ndarray, threshold: float) -> DuplicateGroups:
    """Groups (cliques) of the ``n_images`` from scored pairs: those at or above ``threshold``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"copy threshold is a correlation in (0, 1], got {threshold}")
    groups = cliques_of_pairs(n_images, pairs[scores >= threshold])
    group_of = np.full(n_images, -1, dtype=np.int64)
    for position, group in enumerate(groups):
        group_of[group] = position
    log.info("copies: %d candidate pairs, %d groups (threshold %.3g)", len(pairs), len(groups), threshold)
    return DuplicateGroups(groups=groups, group_of=group_of, threshold=threshold)


def candidate_pairs(thumbnails: np.ndarray, aspects: np.ndarray) -> np.ndarray:
    """(a, b) pairs, a < b: each image's nearest neighbours by blurred thumbnail, above the least
    similarity, with aspect ratios a crop or resize can explain.

    The similarity of two images is the best cosine of one's whole blurred thumbnail against the
    other's blurred views (the whole picture and crops of it, see :func:`_view_matrices`): a
    copy cut down by 10 % matches the view of the original that it shows."""
    n = len(thumbnails)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    views = _blurred_views(thumbnails)  # (views, n, BLUR_SIDE ** 2), the whole picture first
    whole = views[0]
    neighbours = min(CANDIDATES_PER_IMAGE, n - 1)
    found: list[np.ndarray] = []
    for start in range(0, n, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n)
        rows = np.arange(stop - start)
        similarity = whole[start:stop] @ whole.T
        for view in views[1:]:
            np.maximum(similarity, whole[start:stop] @ view.T, out=similarity)
            np.maximum(similarity, view[start:stop] @ whole.T, out=similarity)
        similarity[rows, rows + start] = -np.inf
        nearest = np.argpartition(-similarity, neighbours - 1, axis=1)[:, :neighbours]
        close = np.take_along_axis(similarity, nearest, axis=1) >= MIN_CANDIDATE_SIMILARITY
        found.append(np.stack([np.repeat(rows + start, neighbours)[close.ravel()], nearest[close]], axis=1))
    pairs = np.sort(np.concatenate(found), axis=1)
    pairs = np.unique(pairs, axis=0)
    aspect_change = np.abs(np.log(aspects[pairs[:, 0]] / aspects[pairs[:, 1]]))
    return pairs[aspect_change <= np.log(MAX_ASPECT_CHANGE)]


@lru_cache(maxsize=1)
def _view_matrices() -> np.ndarray:
    """Per-axis area-averaging matrices (views, BLUR_SIDE, THUMBNAIL_SIDE): the whole thumbnail,
    then windows of CANDIDATE_VIEW_SHARE of it at the offsets listed, each squeezed to BLUR_SIDE."""
    windows = [(0.0, 1.0)] + [(offset, CANDIDATE_VIEW_SHARE) for offset in CANDIDATE_VIEW_OFFSETS]
    pixel_edges = np.arange(THUMBNAIL_SIDE + 1) / THUMBNAIL_SIDE
    matrices = np.zeros((len(windows), BLUR_SIDE, THUMBNAIL_SIDE), np.float32)
    for index, (offset, share) in enumerate(windows):
        cell_edges = offset + share * np.arange(BLUR_SIDE + 1) / BLUR_SIDE
        low = np.maximum(cell_edges[:-1, None], pixel_edges[None, :-1])
        high = np.minimum(cell_edges[1:, None], pixel_edges[None, 1:])
        matrices[index] = np.clip(high - low, 0, None) / (share / BLUR_SIDE)
    return matrices


def _blurred_views(thumbnails: np.ndarray) -> np.ndarray:
    """Every (row window, column window) view of each thumbnail, squeezed and normalised."""
    axis = _view_matrices()
    rows, columns = np.meshgrid(np.arange(len(axis)), np.arange(len(axis)), indexing="ij")
    # the whole picture, then the windows that crop both axes
    pairs = np.concatenate([[[0, 0]], np.stack([rows[1:, 1:].ravel(), columns[1:, 1:].ravel()], axis=1)])
    views = [axis[row] @ thumbnails @ axis[column].T for row, column in pairs]
    return np.stack([_normalised(view.reshape(len(thumbnails), -1)) for view in views]).astype(np.float32)


def _stack(signatures: list[CopySignature]) -> np.ndarray:
    if not signatures:
        return np.zeros((0, THUMBNAIL_SIDE, THUMBNAIL_SIDE), np.float32)
    return np.stack([signature.thumbnail for signature in signatures]).astype(np.float32)


def _area_mean(thumbnails: np.ndarray, side: int) -> np.ndarray:
    factor = thumbnails.shape[-1] // side
    return thumbnails.reshape(len(thumbnails), side, factor, side, factor).mean(axis=(2, 4))


def _smoothed(thumbnails: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] blur along both axes: a pixel's worth of misalignment (a small rotation, a
    crop between grid steps) then costs little correlation."""
    padded = np.pad(thumbnails, ((0, 0), (1, 1), (1, 1)), mode="edge")
    along_rows = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]
    return (along_rows[:, :, :-2] + 2 * along_rows[:, :, 1:-1] + along_rows[:, :, 2:]) / 16.0


def _normalised(rows: np.ndarray) -> np.ndarray:
    centred = rows - rows.mean(axis=1, keepdims=True)
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-6)


@dataclass(frozen=True)
class _AxisWarps:
    """Per-axis maps of one image's coordinates into the other's, u -> scale * u + shift, as
    linear-interpolation matrices (warps, n, n) and the validity of each output pixel, with the
    products of them that every comparison uses."""

    scales: np.ndarray
    shifts: np.ndarray
    matrices: np.ndarray
    valid: np.ndarray

    @cached_property
    def count(self) -> np.ndarray:
        return self.valid.sum(axis=1)

    @cached_property
    def masked(self) -> np.ndarray:
        """diag(valid) @ matrix: rows of pixels outside the other image zeroed."""
        return self.matrices * self.valid[:, :, None]

    @cached_property
    def weights(self) -> np.ndarray:
        """valid @ matrix: how much each source pixel counts in the warped image's masked sum."""
        return (self.valid[:, None, :] @ self.matrices)[:, 0]

    @cached_property
    def gram(self) -> np.ndarray:
        """masked^T @ matrix, for the masked sum of squares of the warped image."""
        return self.masked.transpose(0, 2, 1) @ self.matrices


def _axis_warps(side: int, scales: np.ndarray, shifts: np.ndarray, margin: int = 0) -> _AxisWarps:
    """``margin``: pixels at either end left out of every comparison (a turned copy's corners)."""
    centres = (np.arange(side) + 0.5) / side
    mapped = scales[:, None] * centres[None, :] + shifts[:, None]  # (warps, side) in the other's [0, 1]
    inside = (mapped >= 0.0) & (mapped <= 1.0)
    covered_here = inside.mean(axis=1)
    lo, hi = np.clip(shifts, 0, 1), np.clip(scales + shifts, 0, 1)
    covered_there = np.clip(hi - lo, 0, None)
    keep = (covered_here >= MIN_OVERLAP) & (covered_there >= MIN_OVERLAP)
    position = np.clip(mapped[keep] * side - 0.5, 0, side - 1)
    left = np.floor(position).astype(np.int64)
    right = np.minimum(left + 1, side - 1)
    weight = position - left
    matrices = np.zeros((int(keep.sum()), side, side), np.float32)
    warp, row = np.indices(left.shape)
    np.add.at(matrices, (warp, row, left), 1.0 - weight)
    np.add.at(matrices, (warp, row, right), weight)
    compared = inside[keep]
    compared[:, :margin] = False
    compared[:, side - margin :] = False
    return _AxisWarps(scales[keep], shifts[keep], matrices, compared.astype(np.float32))


@lru_cache(maxsize=1)
def _coarse_warps() -> _AxisWarps:
    steps = np.arange(-3, 4)
    shrink, grow = steps[steps <= 0], steps[steps > 0]
    scales = np.concatenate([1.0 + COARSE_SCALE_STEP * shrink, 1.0 / (1.0 - COARSE_SCALE_STEP * grow)])
    shifts = np.arange(-MAX_SHIFT, MAX_SHIFT + 1e-9, COARSE_SHIFT_STEP)
    grid_scales, grid_shifts = np.meshgrid(scales, shifts, indexing="ij")
    return _axis_warps(COARSE_SIDE, grid_scales.ravel(), grid_shifts.ravel(), MARGIN * COARSE_SIDE // THUMBNAIL_SIDE)


@lru_cache(maxsize=None)
def _fine_warps(coarse_index: int) -> _AxisWarps:
    """The refinement grid at full size around the coarse warp ``coarse_index``."""
    scale, shift = float(_coarse_warps().scales[coarse_index]), float(_coarse_warps().shifts[coarse_index])
    around = FINE_STEP * np.arange(-1, 2)
    grid_scales, grid_shifts = np.meshgrid(scale + around, shift + around, indexing="ij")
    return _axis_warps(THUMBNAIL_SIDE, grid_scales.ravel(), grid_shifts.ravel(), MARGIN)


@dataclass(frozen=True)
class _FixedSums:
    """The masked sums of :func:`_best_correlations` that depend on the fixed image alone."""

    sum_fixed: np.ndarray
    column_cross: np.ndarray
    sum_fixed_sq: np.ndarray


@dataclass(frozen=True)
class _MovingSums:
    """The masked sums of :func:`_best_correlations` that depend on the moving image alone."""

    row_cross: np.ndarray
    sum_moving: np.ndarray
    sum_moving_sq: np.ndarray


def _fixed_sums(fixed: np.ndarray, rows: _AxisWarps, columns: _AxisWarps) -> _FixedSums:
    side = fixed.shape[0]
    column_cross = (columns.masked @ fixed.T).transpose(0, 2, 1).reshape(len(columns.scales), -1)  # (C_b' F^T)^T
    fixed_gram = (fixed[None] @ columns.gram @ fixed.T[None]).reshape(len(columns.scales), side * side)
    return _FixedSums(
        sum_fixed=rows.weights @ fixed @ columns.weights.T,
        column_cross=column_cross,
        sum_fixed_sq=rows.gram.reshape(len(rows.scales), side * side) @ fixed_gram.T,
    )


def _moving_sums(moving: np.ndarray, rows: _AxisWarps, columns: _AxisWarps) -> _MovingSums:
    return _MovingSums(
        row_cross=(rows.masked.transpose(0, 2, 1) @ moving).reshape(len(rows.scales), -1),  # R_a'^T M
        sum_moving=rows.valid @ moving @ columns.valid.T,
        sum_moving_sq=rows.valid @ (moving * moving) @ columns.valid.T,
    )


_Sums = TypeVar("_Sums", _FixedSums, _MovingSums)


def _stacked(sums: list[_Sums]) -> _Sums:
    """The sums of many pairs' images, one array per field with the pairs along its first axis."""
    kind = type(sums[0])
    return kind(*(np.stack([getattr(one, field.name) for one in sums]) for field in fields(kind)))


def _best_correlations(
    fixed: _FixedSums, moving: _MovingSums, rows: _AxisWarps, columns: _AxisWarps
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pair (the sums stacked, see :func:`_stacked`), the best correlation of the moving
    image against the fixed one warped by every (row warp, column warp), over the pixels both
    cover, and the two warps that give it.

    With R_a, C_b the interpolation matrices and r_a, c_b the masks, the warped image is
    R_a F C_b^T; every masked sum is expanded into products of per-warp matrices, so the warped
    images themselves are never formed, and all but the cross term depend on one image alone."""
    count = np.outer(rows.count, columns.count)
    sum_cross = moving.row_cross @ fixed.column_cross.transpose(0, 2, 1)
    covariance = sum_cross - fixed.sum_fixed * moving.sum_moving / count
    variance = (fixed.sum_fixed_sq - fixed.sum_fixed**2 / count) * (moving.sum_moving_sq - moving.sum_moving**2 / count)
    correlation = (covariance / np.sqrt(np.maximum(variance, 1e-6))).reshape(len(covariance), -1)
    best = np.argmax(correlation, axis=1)
    best_row, best_column = np.divmod(best, len(columns.scales))
    return correlation[np.arange(len(best)), best], best_row, best_column


def _rotated(thumbnail: np.ndarray, degrees: float, aspect: float) -> np.ndarray:
    """The thumbnail of the picture turned by ``degrees`` about its centre (bilinear, edges
    repeated): in thumbnail coordinates a turn of a picture of ``aspect`` (width / height) shears."""
    side = thumbnail.shape[0]
    angle = np.deg2rad(degrees)
    centred = (np.arange(side) + 0.5) / side - 0.5
    v, u = np.meshgrid(centred, centred, indexing="ij")  # v down the rows, u along the columns
    source_u = np.cos(angle) * u - np.sin(angle) * v / aspect
    source_v = np.sin(angle) * u * aspect + np.cos(angle) * v
    rows = np.clip((source_v + 0.5) * side - 0.5, 0, side - 1)
    columns = np.clip((source_u + 0.5) * side - 0.5, 0, side - 1)
    top, left = np.minimum(rows.astype(np.int64), side - 2), np.minimum(columns.astype(np.int64), side - 2)
    down, across = rows - top, columns - left
    return (
        thumbnail[top, left] * (1 - down) * (1 - across)
        + thumbnail[top, left + 1] * (1 - down) * across
        + thumbnail[top + 1, left] * down * (1 - across)
        + thumbnail[top + 1, left + 1] * down * across
    ).astype(np.float32)


class _Turned:
    """One image's smoothed thumbnail, upright or turned by a half-turn, with the sums that the
    searches need of it as either image of a pair: computed once per image (and refinement grid)
    rather than once per pair."""

    def __init__(self, thumbnail: np.ndarray, degrees: float, aspect: float) -> None:
        self.thumbnail = thumbnail if degrees == 0.0 else _rotated(thumbnail, degrees, aspect)
        self._fine_fixed: dict[tuple[int, int], _FixedSums] = {}
        self._fine_moving: dict[tuple[int, int], _MovingSums] = {}

    @cached_property
    def coarse_fixed(self) -> _FixedSums:
        return _fixed_sums(self._coarse, _coarse_warps(), _coarse_warps())

    @cached_property
    def coarse_moving(self) -> _MovingSums:
        return _moving_sums(self._coarse, _coarse_warps(), _coarse_warps())

    def fine_fixed(self, row: int, column: int) -> _FixedSums:
        """The sums on the refinement grid around coarse warps ``row`` and ``column``."""
        if (row, column) not in self._fine_fixed:
            _make_room(self._fine_fixed)
            self._fine_fixed[row, column] = _fixed_sums(self.thumbnail, _fine_warps(row), _fine_warps(column))
        return self._fine_fixed[row, column]

    def fine_moving(self, row: int, column: int) -> _MovingSums:
        if (row, column) not in self._fine_moving:
            _make_room(self._fine_moving)
            self._fine_moving[row, column] = _moving_sums(self.thumbnail, _fine_warps(row), _fine_warps(column))
        return self._fine_moving[row, column]

    @cached_property
    def _coarse(self) -> np.ndarray:
        return _area_mean(self.thumbnail[None], COARSE_SIDE)[0]


def _make_room(kept: dict) -> None:
    """Drops the oldest refinement sums of an image that keeps FINE_GRIDS_PER_IMAGE of them."""
    if len(kept) >= FINE_GRIDS_PER_IMAGE:
        del kept[next(iter(kept))]


def _verified_scores(thumbnails: np.ndarray, aspects: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The copy score of each pair: the best aligned correlation upright and, when that reaches
    LEAST_SCORE_TO_TURN, with the two images turned against each other by each of TURNS (each by
    half of it, so both pass through one interpolation)."""
    thumbnails = _smoothed(thumbnails)

    @lru_cache(maxsize=TURNED_CACHE_SIZE)
    def turned(image: int, degrees: float) -> _Turned:
        return _Turned(thumbnails[image], degrees, float(aspects[image]))

    def aligned(batch: np.ndarray, degrees: float) -> np.ndarray:
        return _aligned_correlations(
            [turned(first, degrees / 2) for first in batch[:, 0].tolist()],
            [turned(second, -degrees / 2) for second in batch[:, 1].tolist()],
        )

    scores = np.zeros(len(pairs), np.float64)
    for start in range(0, len(pairs), PAIRS_PER_BATCH):
        batch = pairs[start : start + PAIRS_PER_BATCH]
        best = aligned(batch, 0.0)
        to_turn = np.flatnonzero(best >= LEAST_SCORE_TO_TURN)
        for degrees in TURNS if len(to_turn) else ():
            best[to_turn] = np.maximum(best[to_turn], aligned(batch[to_turn], degrees))
        scores[start : start + len(batch)] = best
    return scores


def _aligned_correlations(fixed: list[_Turned], moving: list[_Turned]) -> np.ndarray:
    """The best correlation of each pair over the scales and shifts searched: coarse at 16 x 16,
    then refined at 32 x 32 around the best coarse warps (a turn needs its own coarse search:
    upright, the best coarse warp of a turned copy is a zoom that hides its corners). Pairs with
    the same best coarse warps share a refinement grid and are refined together."""
    warps = _coarse_warps()
    coarse = _stacked([image.coarse_fixed for image in fixed]), _stacked([image.coarse_moving for image in moving])
    _, rows, columns = _best_correlations(*coarse, warps, warps)
    scores = np.zeros(len(fixed), np.float64)
    grids = rows * len(warps.scales) + columns
    for grid in np.unique(grids).tolist():
        members = np.flatnonzero(grids == grid)
        row, column = divmod(grid, len(warps.scales))
        fine = (
            _stacked([fixed[member].fine_fixed(row, column) for member in members.tolist()]),
            _stacked([moving[member].fine_moving(row, column) for member in members.tolist()]),
        )
        scores[members] = _best_correlations(*fine, _fine_warps(row), _fine_warps(column))[0]
    return scores


__all__ = [
    "DEFAULT_COPY_THRESHOLD",
    "CopySignature",
    "CopySignatureError",
    "candidate_pairs",
    "candidates_of",
    "content_digest",
    "copy_score",
    "copy_groups",
    "copy_signature",
    "find_copies",
    "scored_candidates",
    "scores_of_pairs",
]
