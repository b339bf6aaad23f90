"""``python -m benchmarks.quality.progressive``: how good the picks of a ranking made from a sample are.

While an import's patterns come in, the backend ranks the tasks that have patterns so far: pattern
jobs draw the waiting tasks in ``store.draw_position`` order, so they are a uniform random sample
of the pool, and tasks without patterns cannot be ranked. This benchmark draws such samples (2, 5,
10, 25 and 100 % of the pool), ranks each as the backend ranks a project of a preset (its project
settings, head size and ``engine.ranking.rank_tasks``, on patterns stored as the store stores
them) and scores the first 20 / 50 / 100 picks against as many random images of the whole pool.

``single``: the single-object benchmark's report split (``python -m benchmarks.quality``);
``multi``: the multi-object scenes (``python -m benchmarks.quality.multi_object``). The arguments
after the benchmark's name are that benchmark's own (``--cache-dir``, ``--seeds``, sizes, model).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from freesel_backend.engine.ranking import no_duplicates, rank_tasks
from freesel_backend.server.settings import ProjectSettings, Settings
from freesel_backend.server.store import decode_patterns, draw_position, encode_patterns
from . import __main__ as single_object, multi_object
from .data import DatasetMissingError, load_split
from .features import Features
from .methods import random_method

FRACTIONS = (0.02, 0.05, 0.10, 0.25, 1.0)
HEADS = (20, 50, 100)
PRESETS = {"single": ("classification",), "multi": ("detection", "classification")}


@dataclass(frozen=True)
class Pool:
    """What is ranked (the pool's features) and how a labelled set of its images scores."""

    features: Features
    accuracy: Callable[[np.ndarray], float]
    description: str


def sample(n_images: int, fraction: float, seed: int) -> np.ndarray:
    """The images (sorted indices) whose patterns are in once ``fraction`` of the pool has them,
    in the backend's draw order: image ``i`` is task ``seed * n_images + i + 1`` (each seed a
    project of its own), and pattern jobs take the waiting tasks by ``draw_position``."""
    drawn = np.argsort([draw_position(task) for task in task_ids(n_images, seed)], kind="stable")
    return np.sort(drawn[: sample_size(n_images, fraction)])


def task_ids(n_images: int, seed: int) -> list[int]:
    return [seed * n_images + image + 1 for image in range(n_images)]


def sample_size(n_images: int, fraction: float) -> int:
    return max(1, min(n_images, round(fraction * n_images)))


def backend_ranking(features: Features, images: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """``images`` in the order the backend ranks their tasks in a project of preset ``kind``
    (``seed``: the project's seed), nothing labelled: the preset's patterns, round-tripped through
    the store's encoding, ranked by ``rank_tasks`` with the project's budget and the head size (no
    copies: the features come without files)."""
    settings = ProjectSettings(seed=seed).with_preset(kind)
    patterns = features.patterns[(settings.patterns_per_image, settings.attention_ratio)]
    stored = {int(image): decode_patterns(encode_patterns(patterns[image])) for image in images}
    ranked = rank_tasks(
        stored, set(), {}, settings.picks_for(len(stored)), head_size=Settings().head_size,
        draw=settings.draw_settings(), duplicates=no_duplicates(settings.copy_threshold),
    )
    return np.asarray(ranked.order, dtype=np.int64)


@dataclass(frozen=True)
class HeadScore:
    kind: str
    fraction: float
    ranked: int  # tasks ranked (the sample)
    head: int  # first picks labelled
    gains: tuple[float, ...]  # accuracy minus random's, per seed; empty when the sample is smaller than the head
    accuracy: float  # mean over seeds
    random_accuracy: float


def score_heads(
    pool: Pool, kind: str, fractions: Sequence[float], heads: Sequence[int], seeds: Sequence[int]
) -> list[HeadScore]:
    """The gain over random of each head of a ranking made from each sample, per seed."""
    n_images = len(pool.features)
    random_picks = random_method().pick
    random_accuracy = {
        (seed, head): pool.accuracy(random_picks(pool.features, head, seed)) for seed in seeds for head in heads
    }
    scores = []
    for fraction in fractions:
        started = time.perf_counter()
        orders = [backend_ranking(pool.features, sample(n_images, fraction, seed), kind, seed) for seed in seeds]
        for head in heads:
            accuracies = [pool.accuracy(order[:head]) for order in orders if len(order) >= head]
            baseline = [random_accuracy[(seed, head)] for seed in seeds]
            scores.append(
                HeadScore(
                    kind, fraction, sample_size(n_images, fraction), head,
                    tuple(a - b for a, b in zip(accuracies, baseline)),
                    float(np.mean(accuracies)) if accuracies else float("nan"), float(np.mean(baseline)),
                )
            )
        print(
            f"  {kind}: {fraction:.0%} of the pool ranked and scored, {time.perf_counter() - started:.0f} s",
            file=sys.stderr, flush=True,
        )
    return scores


def markdown_table(scores: Sequence[HeadScore]) -> str:
    """Per sample: the gain over random (points, mean ± std over seeds) of each head."""
    heads = sorted({score.head for score in scores})
    by_key = {(score.fraction, score.head): score for score in scores}
    fractions = sorted({score.fraction for score in scores})
    lines = [
        "| patterns in | ranked | " + " | ".join(f"first {head}" for head in heads) + " |",
        "|---" * (len(heads) + 2) + "|",
    ]
    for fraction in fractions:
        cells = [_gain_cell(by_key[(fraction, head)]) for head in heads]
        lines.append(f"| {fraction:.0%} | {by_key[(fraction, heads[0])].ranked} | " + " | ".join(cells) + " |")
    random_cells = [f"{100 * by_key[(fractions[0], head)].random_accuracy:.1f} %" for head in heads]
    lines.append("| random picks' accuracy | | " + " | ".join(random_cells) + " |")
    return "\n".join(lines) + "\n"


def _gain_cell(score: HeadScore) -> str:
    if not score.gains:
        return f"n/a ({score.ranked} ranked)"
    gains = 100 * np.asarray(score.gains)
    return f"{gains.mean():+.1f} ± {gains.std():.1f}"


def load_pool(which: str, argv: Sequence[str]) -> tuple[Pool, argparse.Namespace]:
    """The pool and probe of the ``single`` or ``multi`` benchmark's report split, with its arguments."""
    if which == "single":
        args = single_object.parse_args(list(argv))
        pool, features = single_object.pool_and_features(args, load_split("train", args.data_dir))
        test, probe = single_object.test_probe(args, pool, features, load_split("t10k", args.data_dir))
        description = (
            f"Fashion-MNIST single objects: pool {len(pool)}, test {len(test)}, {features.model_id} at "
            f"{args.image_size} px, {args.precision}"
        )
        return Pool(features, probe.accuracy, description), args
    args = multi_object.parse_args(list(argv))
    benchmark = multi_object.prepare(args)
    return Pool(benchmark.features, benchmark.accuracy, f"{benchmark.description}, {args.precision}"), args


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.progressive", description=__doc__.split("\n\n")[0],
        epilog="Other arguments go to the chosen benchmark (its --help lists them).",
    )
    parser.add_argument("benchmark", choices=sorted(PRESETS))
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--heads", type=int, nargs="+", default=list(HEADS))
    parser.add_argument("--presets", nargs="+", help="presets to rank with (single: classification; multi: both)")
    return parser.parse_known_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    own, rest = parse_args(argv)
    try:
        pool, args = load_pool(own.benchmark, rest)
    except DatasetMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    sections = []
    for kind in own.presets or PRESETS[own.benchmark]:
        scores = score_heads(pool, kind, own.fractions, own.heads, seeds)
        sections.append(f"## `{kind}` preset\n\n" + markdown_table(scores))
    command = "python -m benchmarks.quality.progressive " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (
        f"# Rankings from a sample: {pool.description}\n\n"
        f"Generated by `{command.strip()}`; {len(seeds)} seeds; this run took {time.perf_counter() - started:.0f} s. "
        "Gain over random in accuracy points (mean ± std over seeds) of the first picks of a ranking made when the "
        "given share of the pool had patterns (a uniform random sample, drawn as the backend draws it), against as "
        "many random images of the whole pool.\n\n" + "\n".join(sections)
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"quality_progressive_{own.benchmark}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
