"""``python -m benchmarks.quality``: the selection-quality benchmark on Fashion-MNIST.

``report`` (the default) selects from the 10,000-image pool and scores on the 10,000 test
images: docs/quality_results.md and docs/quality_accuracy.png. ``tune`` compares candidate
settings on held-out data only: the pool is split in two halves, one to select from, the other
to score on; the test split is never read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from freesel_backend.engine import DEFAULT_ATTENTION_RATIO, DEFAULT_DUPLICATE_THRESHOLD, DEFAULT_PATTERNS_PER_IMAGE
from freesel_backend.engine.selection import DEFAULT_STRATEGY
from .data import DEFAULT_ROOT, DatasetMissingError, load_split
from .evaluate import Probe, score_methods
from .features import DEFAULT_CACHE_DIR, ExtractionSettings, Features, cached_features
from .methods import (
    Method,
    centroid_method,
    centroid_variant_method,
    coreset_method,
    freesel_method,
    pattern_cluster_method,
    probcover_method,
    random_method,
    typiclust_method,
)
from .report import markdown_tables, plot

BUDGETS = (10, 20, 50, 100, 200, 500, 1000)
# The product's pattern settings (the extractor's defaults) and the paper's multi-object ones.
PRODUCT_CONFIG = (DEFAULT_PATTERNS_PER_IMAGE, DEFAULT_ATTENTION_RATIO)
PAPER_CONFIG = (5, 0.5)


def report_methods() -> list[Method]:
    return [
        random_method(),
        freesel_method("FreeSel prob K=1 (paper)", (1, 0.5), "prob"),
        freesel_method("FreeSel prob K=3", (3, 0.5), "prob"),
        freesel_method("FreeSel prob K=5", (5, 0.5), "prob"),
        freesel_method("FreeSel fds K=5", (5, 0.5), "fds"),
        coreset_method(),
        centroid_method(),
        centroid_method((1, 1.0)),
        freesel_method(
            f"product default: {DEFAULT_STRATEGY} K={PRODUCT_CONFIG[0]} ratio {PRODUCT_CONFIG[1]}", PRODUCT_CONFIG,
            DEFAULT_STRATEGY, duplicate_threshold=DEFAULT_DUPLICATE_THRESHOLD,
        ),
        # The same strategy on the paper's multi-object patterns (the default until docs/quality.md's finding 7).
        freesel_method(f"{DEFAULT_STRATEGY} K=5 ratio 0.5", PAPER_CONFIG, DEFAULT_STRATEGY),
        # The multi-object benchmark's pattern-level cluster rule, scored on single objects too.
        pattern_cluster_method(PAPER_CONFIG),
    ]


def tuning_methods() -> list[Method]:
    methods = [random_method(), centroid_method(), centroid_method((1, 1.0)), centroid_method((5, 0.5))]
    for k, ratio in ((1, 0.5), (5, 0.5), (1, 1.0), (5, 1.0)):
        methods.append(freesel_method(f"prob K={k} r={ratio}", (k, ratio), "prob"))
        for strength in (1.0, 2.0, 4.0):
            methods.append(
                freesel_method(f"prob+typ^{strength:g} K={k} r={ratio}", (k, ratio), "prob", strength=strength)
            )
        methods.append(freesel_method(f"fds+typ^2 K={k} r={ratio}", (k, ratio), "fds", strength=2.0))
        methods.append(freesel_method(f"typical K={k} r={ratio}", (k, ratio), "typical"))
    # The tuning runs of docs/tuning/4-6: TypiClust's and ProbCover's own rules, k-means restarts,
    # and k-means on the PCA-whitened mean patterns (now the engine's typical).
    product = (5, 0.5)
    methods += [
        typiclust_method(product, scope="cluster"),
        typiclust_method(product, scope="global"),
        typiclust_method(product, descriptor="cls"),
        probcover_method(product),
        probcover_method(product, purity=0.5),
        centroid_variant_method(product, n_init=10),
        centroid_variant_method(product, descriptor="whiten32"),
        centroid_variant_method(product, descriptor="whiten64"),
    ]
    return methods


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    add_shared_arguments(parser)
    parser.add_argument("--image-size", type=int, default=112, help="model input size for the 28x28 images (112)")
    parser.add_argument("--pool-size", type=int, default=10_000, help="first N training images (10000)")
    parser.add_argument("--test-size", type=int, default=10_000, help="first N test images (10000)")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds per method and budget (5)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed+1, ... (0)")
    parser.add_argument("--only", nargs="+", metavar="METHOD", help="score only these methods (exact names)")
    return parser.parse_args(argv)


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """The mode, data, cache, output and model options of both benchmarks."""
    parser.add_argument("mode", nargs="?", choices=("report", "tune"), default="report")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_ROOT, help=f"Fashion-MNIST IDX files ({DEFAULT_ROOT})")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="extracted features and scores (.cache/quality_bench)"
    )
    parser.add_argument("--out-dir", type=Path, default=Path("docs"), help="where the tables (and plot) go (docs)")
    parser.add_argument("--model", default="offline", help="backbone (offline: the bundled DINOv2 ViT-S/14)")
    parser.add_argument("--random-init", action="store_true", help="random weights (the test suite's quick run)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        train = load_split("train", args.data_dir)
        test = load_split("t10k", args.data_dir) if args.mode == "report" else None
    except DatasetMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = ExtractionSettings(
        model=args.model, image_size=args.image_size, precision=args.precision, random_init=args.random_init
    )
    pool = train.subset(np.arange(min(args.pool_size, len(train))))
    pool_features = cached_features(pool.images, "pool", settings, args.cache_dir)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    started = time.perf_counter()
    if args.mode == "tune":
        select_ids, score_ids = _halves(len(pool))
        features = pool_features.subset(select_ids)
        probe = Probe.build(features.embeddings, pool.labels[select_ids],
                            pool_features.embeddings[score_ids], pool.labels[score_ids])
        scores = score_methods(
            chosen_methods(tuning_methods(), args.only),
            features,
            probe,
            args.budgets,
            seeds,
            cache=_score_cache(args, "tune"),
        )
        name, title = (
            "quality_tuning",
            f"Tuning: select from {len(select_ids)} pool images, score on the other {len(score_ids)}",
        )
    else:
        assert test is not None
        test = test.subset(np.arange(min(args.test_size, len(test))))
        test_features = cached_features(
            test.images, "test", ExtractionSettings(**{**settings.__dict__, "configs": ()}), args.cache_dir
        )
        probe = Probe.build(pool_features.embeddings, pool.labels, test_features.embeddings, test.labels)
        scores = score_methods(
            chosen_methods(report_methods(), args.only),
            pool_features,
            probe,
            args.budgets,
            seeds,
            cache=_score_cache(args, "report"),
        )
        name, title = (
            "quality_results",
            f"Fashion-MNIST: pool {len(pool)}, test {len(test)}, {pool_features.model_id} at {args.image_size}px",
        )
    tables = markdown_tables(scores)
    header = _header(args, pool_features, title, time.perf_counter() - started, len(seeds))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.md").write_text(header + tables)
    plot(scores, args.out_dir / f"{name}.png", title)
    print(header + tables)
    return 0


def chosen_methods(methods: list[Method], names: Sequence[str] | None) -> list[Method]:
    if not names:
        return methods
    unknown = set(names) - {method.name for method in methods}
    if unknown:
        raise SystemExit(f"error: unknown method(s) {sorted(unknown)}; choose from {[m.name for m in methods]}")
    return [method for method in methods if method.name in names]


def _score_cache(args: argparse.Namespace, mode: str) -> Path:
    """Scores are kept per mode and data/feature settings; methods are keyed by name."""
    setting = (
        f"{mode}_{args.model}_{args.random_init}_{args.image_size}_{args.precision}_{args.pool_size}_{args.test_size}"
    )
    return args.cache_dir / f"scores_{setting}.json"


def _halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(12345).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def _header(args: argparse.Namespace, features: Features, title: str, seconds: float, n_seeds: int) -> str:
    command = "python -m benchmarks.quality " + " ".join(sys.argv[1:]) if argv_is_cli() else "(called from Python)"
    extraction = f"{features.seconds:.0f} s" if features.seconds else "loaded from cache"
    return (
        f"# {title}\n\n"
        f"Generated by `{command.strip()}`; {n_seeds} seeds; this run took {seconds:.0f} s (scores are cached per "
        f"method; the last column is the selection time when a method was scored); pool features: {extraction}.\n\n"
    )


def argv_is_cli() -> bool:
    return Path(sys.argv[0]).name in ("__main__.py", "multi_object.py", "-m")


if __name__ == "__main__":
    raise SystemExit(main())
