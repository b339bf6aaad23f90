"""The selection report: one self-contained HTML page showing what FreeSel picked and why.

Plain data in, HTML out: image names, patterns, the ranking, failures and settings, plus a
callable that opens image ``i`` (only called for the few images that get a thumbnail). Nothing
here knows about Label Studio, Flask, Redis or RQ; the CLI and the backend both call
:func:`build_report`.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from jinja2 import Environment, FileSystemLoader, select_autoescape
from PIL import Image

from ..engine.duplicates import DuplicateGroups
from ..engine.images import ImageLoadError
from ..engine.patterns import PatchDetails, PatternExtractor
from ..engine.selection import DUPLICATE_TOLERANCE, PatternPool, Ranking

log = logging.getLogger(__name__)

ImageOpener = Callable[[int], Image.Image]

# Tableau 10: one colour per semantic pattern of an image.
PATTERN_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                   "#9c755f", "#bab0ac")
TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class Failure:
    """An image that got no patterns, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows. ``names[i]``, ``patterns[i]`` describe image ``i`` of the
    ranking; ``settings`` are shown as given (patterns per image, strategy, budget ...)."""

    names: Sequence[str]
    patterns: Sequence[np.ndarray]
    ranking: Ranking
    model_id: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    failures: Sequence[Failure] = ()
    duplicates: DuplicateGroups | None = None
    duplicate_threshold: float = DUPLICATE_TOLERANCE
    title: str = "FreeSel selection report"
    # The groups are copies of one file or photograph (the copy detector), not images whose
    # patterns match within duplicate_threshold.
    copies: bool = False


def report_data(
    names: Sequence[str], patterns: Sequence[np.ndarray], ranking: Ranking, duplicates: DuplicateGroups, *,
    model_id: str, settings: Mapping[str, Any], failures: Mapping[str, str], title: str = ReportData.title,
    copies: bool = False,
) -> ReportData:
    """What the report of one ranking shows: ``settings`` as given, except the near-duplicate
    threshold, which is that of ``duplicates`` and shown with them; ``failures`` by image name.
    ``copies``: ``duplicates`` are copy groups (their threshold a copy score, shown with the settings)."""
    return ReportData(
        names=list(names),
        patterns=list(patterns),
        ranking=ranking,
        model_id=model_id,
        settings={name: value for name, value in settings.items() if name != "duplicate_threshold"},
        failures=[Failure(name, reason) for name, reason in failures.items()],
        duplicates=duplicates,
        duplicate_threshold=DUPLICATE_TOLERANCE if copies else duplicates.threshold,
        title=title,
        copies=copies,
    )


@dataclass(frozen=True)
class ReportOptions:
    """How much the page shows; every thumbnail costs one ``open_image`` call and ~3 KB."""

    grid_picks: int = 60
    detail_picks: int = 4
    map_thumbnails: int = 400
    duplicate_groups: int = 30
    thumbnail_px: int = 120
    detail_px: int = 224
    curve_points: int = 200


def build_report(
    data: ReportData,
    open_image: ImageOpener,
    *,
    extractor: PatternExtractor | None = None,
    options: ReportOptions = ReportOptions(),
) -> str:
    """The report as one HTML string with every image inlined.

    ``open_image(i)`` returns image ``i`` as a PIL image; an :class:`ImageLoadError` or
    ``OSError`` leaves that thumbnail out and lists it on the page. ``extractor`` (with the
    settings that made ``patterns``) adds the patch-level views of the first picks.
    """
    started = time.perf_counter()
    ranking = data.ranking
    if len(data.names) != len(data.patterns):
        raise ValueError(f"{len(data.names)} names for {len(data.patterns)} images' patterns")
    thumbnails = _Thumbnails(open_image, options.thumbnail_px)
    picks = [int(i) for i in ranking.picks]
    shown_picks = picks[: options.grid_picks]
    groups = data.duplicates.groups[: options.duplicate_groups] if data.duplicates else []
    wanted = list(dict.fromkeys(shown_picks + [m for g in groups for m in g[:6]] + [int(i) for i in ranking.order]))
    for image in wanted[: max(options.map_thumbnails, len(shown_picks))]:
        thumbnails.get(image)

    rank_of = ranking.rank_of()
    curve_x, curve_y = coverage_curve(data.patterns, ranking, data.duplicate_threshold, options.curve_points)
    coordinates, explained = pattern_map(data.patterns)
    context = {
        "title": data.title,
        "model_id": data.model_id,
        "settings": {**data.settings, **({} if data.copies else {"duplicate threshold": data.duplicate_threshold})},
        "copies": data.copies,
        "counts": _counts(data),
        "grid": [_pick_cell(data, position, thumbnails) for position in range(len(shown_picks))],
        "details": _details(data, picks[: options.detail_picks], open_image, extractor, options.detail_px),
        "details_missing": extractor is None,
        "map": _map_svg_points(coordinates, ranking, data.names, rank_of),
        "map_explained": [round(100 * float(share), 1) for share in explained],
        # the grid's own <img> serves its picks' hovers
        "map_thumbnails": {str(i): uri for i, uri in thumbnails.loaded.items() if i not in set(shown_picks)},
        "curve": _curve_svg(curve_x, curve_y, data.duplicate_threshold),
        "duplicate_groups": [_group_row(data, group, thumbnails, rank_of) for group in groups],
        "duplicate_groups_total": len(data.duplicates.groups) if data.duplicates else 0,
        "failures": list(data.failures),
        "thumbnail_failures": thumbnails.failures,
        "pattern_colours": PATTERN_COLOURS,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    html = _environment().get_template("report.html.j2").render(**context)
    log.info(
        "report: %d images, %d picks shown, %d thumbnails (%d unreadable), %.1f s",
        len(data.names), len(shown_picks), len(thumbnails.loaded), len(thumbnails.failures),
        time.perf_counter() - started,
    )
    return html


def coverage_curve(
    patterns: Sequence[np.ndarray], ranking: Ranking, duplicate_threshold: float = DUPLICATE_TOLERANCE,
    max_points: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """(number of picks, largest distance from any pattern to the picked set, seeds included).

    Sampled at up to ``max_points`` pick counts; the picks between two samples go in as one
    matrix product, the way selection updates its distances.
    """
    picks = ranking.picks
    if len(picks) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    pool = PatternPool(patterns, duplicate_threshold)
    nearest = pool.distances_to(ranking.seeds) if ranking.seeds else np.full(len(pool.matrix), np.inf, np.float32)
    samples = np.unique(np.linspace(1, len(picks), min(len(picks), max_points)).round().astype(np.int64))
    done, values = 0, []
    for count in samples:
        nearest = np.minimum(nearest, pool.distances_to(picks[done:count]))
        values.append(float(nearest.max()))
        done = int(count)
    return samples, np.asarray(values)


def pattern_map(patterns: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA of every image's mean pattern: (N, 2) coordinates and the variance share of each axis."""
    means = np.stack([np.asarray(p, np.float64).mean(axis=0) for p in patterns])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    centred = means - means.mean(axis=0)
    if len(centred) < 2:
        return np.zeros((len(centred), 2)), np.zeros(2)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    coordinates = centred @ axes[:2].T
    if coordinates.shape[1] < 2:
        coordinates = np.pad(coordinates, ((0, 0), (0, 2 - coordinates.shape[1])))
    variance = singular**2
    explained = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return coordinates, np.pad(explained, (0, 2 - len(explained)))


def write_report(path: Path, html: str) -> None:
    path.write_text(html, encoding="utf-8")
    log.info("report written to %s (%.1f MB)", path, len(html.encode()) / 1e6)


# ---- building blocks --------------------------------------------------------------------------


class _Thumbnails:
    """Small JPEG data URIs, each image opened at most once."""

    def __init__(self, open_image: ImageOpener, size: int) -> None:
        self.open_image = open_image
        self.size = size
        self.loaded: dict[int, str] = {}
        self.failures: dict[int, str] = {}

    def get(self, image: int) -> str | None:
        if image not in self.loaded and image not in self.failures:
            try:
                self.loaded[image] = jpeg_data_uri(_fit(self.open_image(image), self.size))
            except (ImageLoadError, OSError) as error:
                self.failures[image] = str(error)
        return self.loaded.get(image)


def jpeg_data_uri(image: Image.Image, quality: int = 80) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fit(image: Image.Image, size: int) -> Image.Image:
    fitted = image.convert("RGB")
    fitted.thumbnail((size, size), Image.Resampling.BICUBIC)
    return fitted


def _counts(data: ReportData) -> list[tuple[str, int]]:
    ranking = data.ranking
    counts = [
        ("images ranked", len(ranking.order)),
        ("picked", ranking.n_picked),
        ("already labelled (seeds)", len(ranking.seeds)),
        ("failed", len(data.failures)),
    ]
    if data.duplicates is not None:
        counts += [
            ("copy groups" if data.copies else "near-duplicate groups", len(data.duplicates.groups)),
            ("copies" if data.copies else "near-duplicates flagged", data.duplicates.n_flagged),
        ]
    return counts


def _distance_label(distance: float) -> str:
    return "first pick" if not math.isfinite(distance) else f"d = {distance:.3f}"


def _pick_cell(data: ReportData, position: int, thumbnails: _Thumbnails) -> dict[str, Any]:
    image = int(data.ranking.order[position])
    return {
        "image": image,
        "rank": position + 1,
        "name": data.names[image],
        "distance": _distance_label(float(data.ranking.distance[position])),
        "thumbnail": thumbnails.get(image),
        "duplicate_group": _group_label(data, image),
    }


def _group_label(data: ReportData, image: int) -> int | None:
    if data.duplicates is None or data.duplicates.group_of[image] < 0:
        return None
    return int(data.duplicates.group_of[image]) + 1


def _group_row(
    data: ReportData, group: list[int], thumbnails: _Thumbnails, rank_of: dict[int, int]
) -> dict[str, Any]:
    members = [
        {
            "image": image,
            "name": data.names[image],
            "rank": rank_of[image] + 1 if image in rank_of else None,
            "picked": image in rank_of and rank_of[image] < data.ranking.n_picked,
            "thumbnail": thumbnails.get(image),
        }
        for image in group
    ]
    return {"members": members[:6], "more": max(0, len(members) - 6), "size": len(members)}


def _details(
    data: ReportData, picks: list[int], open_image: ImageOpener, extractor: PatternExtractor | None, size: int
) -> list[dict[str, Any]]:
    """Attention-kept patches and pattern membership for the first picks."""
    if extractor is None or not picks:
        return []
    opened: list[tuple[int, Image.Image]] = []
    for image in picks:
        try:
            opened.append((image, open_image(image).convert("RGB")))
        except (ImageLoadError, OSError) as error:
            log.warning("report: no patch view for %s: %s", data.names[image], error)
    if not opened:
        return []
    batch = torch.stack([extractor.to_tensor(image) for _, image in opened])
    rank_of = data.ranking.rank_of()
    views = []
    for (image, pil), details in zip(opened, extractor.details_of_batch(batch)):
        shown = _fit(pil, size)
        views.append({
            "rank": rank_of[image] + 1,
            "name": data.names[image],
            "original": jpeg_data_uri(shown),
            "attention": jpeg_data_uri(_overlay(shown, _attention_layer(details))),
            "patterns": jpeg_data_uri(_overlay(shown, _pattern_layer(details))),
            "n_kept": int(details.kept.sum()),
            "n_patches": int(details.kept.size),
            "pattern_sizes": np.bincount(details.pattern_of_patch[details.kept], minlength=1).tolist(),
        })
    return views


def _attention_layer(details: PatchDetails) -> np.ndarray:
    """Dropped patches dimmed, kept ones tinted by their share of attention."""
    rows, columns = details.grid
    layer = np.zeros((rows * columns, 4), np.uint8)
    layer[~details.kept] = (15, 15, 25, 170)
    strength = details.attention / max(float(details.attention.max()), 1e-12)
    layer[details.kept, 0] = 255
    layer[details.kept, 1] = 200
    layer[details.kept, 3] = (40 + 90 * strength[details.kept]).astype(np.uint8)
    return layer.reshape(rows, columns, 4)


def _pattern_layer(details: PatchDetails) -> np.ndarray:
    """Each kept patch in its pattern's colour, dropped patches greyed out."""
    rows, columns = details.grid
    layer = np.zeros((rows * columns, 4), np.uint8)
    layer[~details.kept] = (30, 30, 30, 150)
    for pattern in np.unique(details.pattern_of_patch[details.kept]):
        colour = PATTERN_COLOURS[int(pattern) % len(PATTERN_COLOURS)]
        rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        layer[details.pattern_of_patch == pattern] = (*rgb, 200)
    return layer.reshape(rows, columns, 4)


def _overlay(image: Image.Image, layer: np.ndarray) -> Image.Image:
    """``layer`` (one RGBA cell per patch) stretched over ``image`` the way the model sees it."""
    cells = Image.fromarray(layer, mode="RGBA").resize(image.size, Image.Resampling.NEAREST)
    return Image.alpha_composite(image.convert("RGBA"), cells).convert("RGB")


MAP_SIZE = (640, 440)
CURVE_SIZE = (640, 440)
PLOT_MARGIN = 48


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    span = float(values.max() - values.min()) if len(values) else 0.0
    if span == 0.0:
        return np.full(len(values), (low + high) / 2)
    return low + (values - values.min()) / span * (high - low)


def _map_svg_points(
    coordinates: np.ndarray, ranking: Ranking, names: Sequence[str], rank_of: dict[int, int]
) -> dict[str, Any]:
    """SVG circle data: the rest first, then picks on top in reverse order (rank 1 drawn last)."""
    width, height = MAP_SIZE
    xs = _scale(coordinates[:, 0], 16, width - 16)
    ys = _scale(-coordinates[:, 1], 16, height - 16)
    seeds = set(ranking.seeds)

    def point(image: int) -> dict[str, Any]:
        rank = rank_of.get(image)
        kind = "seed" if image in seeds else ("pick" if rank is not None and rank < ranking.n_picked else "rest")
        label = f"{names[image]} - " + (f"rank {rank + 1}" if rank is not None else "already labelled")
        return {"image": image, "x": round(float(xs[image]), 1), "y": round(float(ys[image]), 1), "kind": kind,
                "label": label}

    picked = [int(i) for i in ranking.picks]
    picked_set = set(picked)
    rest = [i for i in range(len(names)) if i not in picked_set]
    return {"width": width, "height": height, "points": [point(i) for i in rest + picked[::-1]]}


def _curve_svg(counts: np.ndarray, values: np.ndarray, threshold: float) -> dict[str, Any]:
    """Polyline points and axis ticks for the coverage curve."""
    width, height = CURVE_SIZE
    if len(counts) == 0:
        return {"width": width, "height": height, "points": "", "x_ticks": [], "y_ticks": []}
    x_max = float(counts.max())
    y_max = max(float(values.max()), 1e-6) * 1.05

    def x_of(value: float) -> float:
        return PLOT_MARGIN + value / x_max * (width - PLOT_MARGIN - 16)

    def y_of(value: float) -> float:
        return height - PLOT_MARGIN - value / y_max * (height - PLOT_MARGIN - 16)

    points = " ".join(f"{x_of(float(c)):.1f},{y_of(float(v)):.1f}" for c, v in zip(counts, values))
    x_ticks = [{"at": round(x_of(t), 1), "label": str(int(t))} for t in _nice_ticks(x_max)]
    y_ticks = [{"at": round(y_of(t), 1), "label": f"{t:.2g}"} for t in _nice_ticks(y_max)]
    return {
        "width": width, "height": height, "points": points, "x_ticks": x_ticks, "y_ticks": y_ticks,
        "left": PLOT_MARGIN, "bottom": height - PLOT_MARGIN, "right": width - 16, "top": 16,
        "threshold_y": round(y_of(threshold), 1) if threshold < y_max else None,
        "final": f"{values[-1]:.3f}", "n_picks": int(x_max),
    }


def _nice_ticks(maximum: float, count: int = 5) -> list[float]:
    step = 10 ** math.floor(math.log10(maximum / count)) if maximum > 0 else 1.0
    for factor in (1, 2, 5, 10):
        if maximum / (step * factor) <= count:
            step *= factor
            break
    return [step * i for i in range(int(maximum // step) + 1)]


def _environment() -> Environment:
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    environment.filters["basename"] = lambda name: str(name).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return environment
