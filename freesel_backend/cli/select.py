"""``select``: rank a folder of images, picks first (patterns extracted here or read from a file)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from ..engine import (
    DEFAULT_DUPLICATE_THRESHOLD,
    DEFAULT_MODEL,
    PRECISIONS,
    PRESET_FIELDS,
    STRATEGIES,
    TASKS,
    PatternExtractor,
    find_near_duplicates,
    list_image_files,
    load_image,
    preset,
    select,
)
from ..engine.patterns_file import load_patterns_file, load_provenance, save_patterns_file
from ..engine.ranking import ranking_rows
from ..engine.selection import resolve_budget
from ..report.html import build_report, write_report
from .report import selection_report_data

log = logging.getLogger(__name__)


def add_select_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "select",
        help="rank a folder of images: which to label first",
        description="Compute FreeSel semantic patterns for IMAGES and rank them, picks first.",
    )
    parser.add_argument("images", type=Path, help="a folder (searched recursively) or a .txt/.json list of paths")
    parser.add_argument("--budget", type=float, required=True, help="number of picks, or a fraction of the pool (0..1)")
    parser.add_argument(
        "--task", choices=TASKS, default="classification",
        help="what the images will be labelled for: its preset sets --patterns, --attention-ratio and "
        "--strategy where they are not given (classification: "
        + _preset_text("classification") + "; detection and segmentation: " + _preset_text("detection") + ")",
    )
    parser.add_argument(
        "--patterns", type=int, dest="patterns_per_image",
        help="patterns per image, K (default: the --task preset's; the paper's multi-object setting is 5)",
    )
    parser.add_argument(
        "--attention-ratio", type=float,
        help="share of [CLS] attention mass kept (default: the --task preset's; 1.0: every patch; the paper's is 0.5)",
    )
    parser.add_argument(
        "--strategy", choices=STRATEGIES,
        help="default: the --task preset's; typical: one representative image per cluster first; "
        "prob: draw by d^2 (the paper); fds: farthest-first (the paper)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for draws and k-means (0)")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL,
        help="timm ViT name, 'offline' (bundled DINOv2 ViT-S/14) or 'auto': the paper's "
        "vit_small_patch16_224.dino when its weights can be had, else offline (default: auto)",
    )
    parser.add_argument("--weights", type=Path, help="local checkpoint: timm .safetensors/.pth or official DINO .pth")
    parser.add_argument("--random-init", action="store_true", help="random weights (tests and demos only)")
    parser.add_argument("--image-size", type=int, help="model input size (default: the model's own)")
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:1 ... for the model and, on a GPU, the selection's distance "
        "products (default: cuda when available; selection moves to it from 50,000 patterns on)",
    )
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="fp32 (default); bf16; auto: bf16 where the CPU or GPU multiplies bfloat16 natively, else fp32",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--labelled", type=Path, help="list file of images already labelled: seeds, left out of the ranking"
    )
    parser.add_argument("--load-patterns", type=Path, help="re-rank from a --save-patterns file instead of extracting")
    parser.add_argument("--save-patterns", type=Path, help="write patterns, owner and paths to this .npz")
    parser.add_argument(
        "--duplicate-threshold", type=float, default=DEFAULT_DUPLICATE_THRESHOLD,
        help="images whose patterns all match within this cosine distance are near-duplicates: "
        f"grouped, and never picked twice while others remain ({DEFAULT_DUPLICATE_THRESHOLD})",
    )
    parser.add_argument("--out", type=Path, help="ranking JSON file (default: standard output)")
    parser.add_argument("--report", type=Path, help="also write the HTML selection report here")
    parser.set_defaults(run=run_select)


def _preset_text(kind: str) -> str:
    return ", ".join(f"{name} {value}" for name, value in preset(kind).items())


def _with_preset(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the --task preset's value for each pattern/strategy option not given."""
    values = preset(args.task)
    return argparse.Namespace(
        **{**vars(args), **{name: values[name] for name in PRESET_FIELDS if getattr(args, name) is None}}
    )


def _selection_device(device: str | None) -> str:
    """The selection's device for the CLI's ``--device``: the CPU's products are numpy's."""
    if device is None:
        return "auto"
    return "numpy" if device == "cpu" else device


def run_select(args: argparse.Namespace) -> int:
    args = _with_preset(args)
    failures: list[dict[str, str]] = []
    extractor: PatternExtractor | None = None
    if args.load_patterns:
        paths, patterns = load_patterns_file(args.load_patterns)
        provenance = load_provenance(args.load_patterns)
    else:
        paths, patterns, failures, extractor = extract_folder(args)
        provenance = {"model": extractor.model_id, "weights": _weights_label(args)}
    if args.save_patterns:
        save_patterns_file(args.save_patterns, paths, patterns, provenance=provenance)
    seeds = _seed_indices(args.labelled, paths) if args.labelled else []
    budget = resolve_budget(args.budget, len(paths) - len(seeds))
    ranking = (
        select(patterns, budget, strategy=args.strategy, seeds=seeds, seed=args.seed,
               duplicate_threshold=args.duplicate_threshold, device=_selection_device(args.device))
        if paths else None
    )
    duplicates = find_near_duplicates(patterns, args.duplicate_threshold) if paths else None
    report = {
        **provenance,
        "settings": {
            "task": args.task,
            "patterns_per_image": args.patterns_per_image,
            "attention_ratio": args.attention_ratio,
            "strategy": args.strategy,
            "seed": args.seed,
            "budget": budget,
            "image_size": args.image_size,
            "duplicate_threshold": args.duplicate_threshold,
        },
        "n_images": len(paths),
        "n_seeds": len(seeds),
        "n_picked": ranking.n_picked if ranking else 0,
        "ranking": ranking_rows(ranking, paths) if ranking else [],
        "failed": failures,
        "near_duplicates": {
            "threshold": args.duplicate_threshold,
            "groups": [[paths[i] for i in group] for group in duplicates.groups] if duplicates else [],
        },
    }
    _write_json(report, args.out)
    if args.report and ranking is not None:
        data = selection_report_data(paths, patterns, ranking, report, duplicates)
        write_report(args.report, build_report(data, lambda i: load_image(paths[i]), extractor=extractor))
    summary = f"ranked {len(paths) - len(seeds)} images, {report['n_picked']} picked, {len(failures)} failed"
    if args.random_init:
        summary += " (RANDOM weights: --random-init, for tests and demos only)"
    print(summary, file=sys.stderr)
    return 0


def extract_folder(
    args: argparse.Namespace,
) -> tuple[list[str], list[np.ndarray], list[dict[str, str]], PatternExtractor]:
    """Patterns for every readable image under ``args.images``, the failures, and the extractor."""
    files = list_image_files(args.images)
    extractor = PatternExtractor(
        args.model,
        patterns_per_image=args.patterns_per_image,
        attention_ratio=args.attention_ratio,
        device=args.device,
        random_init=args.random_init,
        weights=args.weights,
        precision=args.precision,
        batch_size=args.batch_size,
        image_size=args.image_size,
        seed=args.seed,
    )
    paths: list[str] = []
    patterns: list[np.ndarray] = []
    failures: list[dict[str, str]] = []
    with tqdm(total=len(files), unit="img", desc="patterns", file=sys.stderr, dynamic_ncols=True) as bar:
        for result in extractor.extract_sources(files, on_batch=bar.update):
            if result.patterns is None:
                failures.append({"path": str(result.source), "error": result.error or "unknown error"})
            else:
                paths.append(str(result.source))
                patterns.append(result.patterns)
    for failure in failures:
        log.warning("skipped %s: %s", failure["path"], failure["error"])
    return paths, patterns, failures, extractor


def _weights_label(args: argparse.Namespace) -> str:
    return "random-init" if args.random_init else str(args.weights or "pretrained")


def _seed_indices(labelled_list: Path, paths: Sequence[str]) -> list[int]:
    labelled = {str(p) for p in list_image_files(labelled_list)}
    return [index for index, path in enumerate(paths) if path in labelled]


def _write_json(report: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(report, indent=2)
    if out is None:
        print(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")
