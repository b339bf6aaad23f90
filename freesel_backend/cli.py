"""Command line: ``python -m freesel_backend <command> ...``.

Each command registers itself with :func:`build_parser`; the engine commands live here.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from .engine import DEFAULT_MODEL, STRATEGIES, PatternExtractor, WeightsError, list_image_files, select
from .engine.selection import DEFAULT_STRATEGY, resolve_budget

log = logging.getLogger("freesel_backend")

CommandRegistrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def add_select_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "select",
        help="rank a folder of images: which to label first",
        description="Compute FreeSel semantic patterns for IMAGES and rank them, picks first.",
    )
    parser.add_argument("images", type=Path, help="a folder (searched recursively) or a .txt/.json list of paths")
    parser.add_argument("--budget", type=float, required=True, help="number of picks, or a fraction of the pool (0..1)")
    parser.add_argument("--patterns", type=int, default=5, dest="patterns_per_image", help="patterns per image, K (5)")
    parser.add_argument("--attention-ratio", type=float, default=0.5, help="share of [CLS] attention mass kept (0.5)")
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY,
        help="typical (default): draw by d^2 times typicality, representative images first; "
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
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--labelled", type=Path, help="list file of images already labelled: seeds, left out of the ranking")
    parser.add_argument("--load-patterns", type=Path, help="re-rank from a --save-patterns file instead of extracting")
    parser.add_argument("--save-patterns", type=Path, help="write patterns, owner and paths to this .npz")
    parser.add_argument("--out", type=Path, help="ranking JSON file (default: standard output)")
    parser.set_defaults(run=run_select)


def run_select(args: argparse.Namespace) -> int:
    failures: list[dict[str, str]] = []
    if args.load_patterns:
        paths, patterns = load_patterns_file(args.load_patterns)
        provenance = load_provenance(args.load_patterns)
    else:
        paths, patterns, failures, model_id = extract_folder(args)
        provenance = {"model": model_id, "weights": _weights_label(args)}
    if args.save_patterns:
        save_patterns_file(args.save_patterns, paths, patterns, provenance=provenance)
    seeds = _seed_indices(args.labelled, paths) if args.labelled else []
    budget = resolve_budget(args.budget, len(paths) - len(seeds))
    ranking = select(patterns, budget, strategy=args.strategy, seeds=seeds, seed=args.seed) if paths else None
    report = {
        **provenance,
        "settings": {
            "patterns_per_image": args.patterns_per_image,
            "attention_ratio": args.attention_ratio,
            "strategy": args.strategy,
            "seed": args.seed,
            "budget": budget,
        },
        "n_images": len(paths),
        "n_seeds": len(seeds),
        "n_picked": ranking.n_picked if ranking else 0,
        "ranking": ranking_rows(ranking, paths) if ranking else [],
        "failed": failures,
    }
    _write_json(report, args.out)
    summary = f"ranked {len(paths) - len(seeds)} images, {report['n_picked']} picked, {len(failures)} failed"
    if args.random_init:
        summary += " (RANDOM weights: --random-init, for tests and demos only)"
    print(summary, file=sys.stderr)
    return 0


def extract_folder(args: argparse.Namespace) -> tuple[list[str], list[np.ndarray], list[dict[str, str]], str]:
    """Patterns for every readable image under ``args.images``, the failures, and the model id."""
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
    return paths, patterns, failures, extractor.model_id


def ranking_rows(ranking: Any, paths: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {
            "path": paths[int(image)],
            "rank": position + 1,
            "picked": position < ranking.n_picked,
            "distance": None if not np.isfinite(distance) else round(float(distance), 6),
        }
        for position, (image, distance) in enumerate(zip(ranking.order, ranking.distance))
    ]


def save_patterns_file(
    path: Path, paths: Sequence[str], patterns: Sequence[np.ndarray], *, provenance: dict[str, Any]
) -> None:
    stacked = np.concatenate(patterns).astype(np.float32) if patterns else np.zeros((0, 0), np.float32)
    owner = np.repeat(np.arange(len(patterns)), [len(p) for p in patterns]).astype(np.int64)
    np.savez_compressed(
        path, patterns=stacked, owner=owner, paths=np.asarray(paths, dtype=str), provenance=json.dumps(provenance)
    )


def load_provenance(path: Path) -> dict[str, Any]:
    with np.load(path) as data:
        return json.loads(str(data["provenance"])) if "provenance" in data else {}


def _weights_label(args: argparse.Namespace) -> str:
    return "random-init" if args.random_init else str(args.weights or "pretrained")


def load_patterns_file(path: Path) -> tuple[list[str], list[np.ndarray]]:
    with np.load(path) as data:
        stacked, owner, paths = data["patterns"], data["owner"], [str(p) for p in data["paths"]]
    return paths, [stacked[owner == image] for image in range(len(paths))]


def _seed_indices(labelled_list: Path, paths: Sequence[str]) -> list[int]:
    labelled = {str(p) for p in list_image_files(labelled_list)}
    return [index for index, path in enumerate(paths) if path in labelled]


def _write_json(report: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(report, indent=2)
    if out is None:
        print(text)
    else:
        out.write_text(text + "\n", encoding="utf-8")


REGISTRARS: list[CommandRegistrar] = [add_select_command]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m freesel_backend", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args) or 0)
    except (WeightsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
