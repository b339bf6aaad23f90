"""``python -m benchmarks.quality.multi_object``: selection quality on multi-object images.

Scenes of 1-4 real Fashion-MNIST objects with long-tailed classes (scenes.py); labelling a scene
labels all of its objects. The probe (the single-object benchmark's, evaluate.Probe) is trained on
the labelled objects' embeddings and scored per object on class-balanced objects that appear in no
scene. ``report`` selects from every pool scene and scores on Fashion-MNIST test objects; ``tune``
selects from one seeded half of the scenes and scores on held-out training objects: the test split
is never read. Cost is counted per labelled scene (the budget) and per labelled object (each
method is also compared with random scenes holding as many objects).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .data import DatasetMissingError, LabelledImages, load_split
from .evaluate import Probe, cached_rows, method_picks
from .features import ExtractionSettings, Features, PatternConfig, cached_features
from .__main__ import add_shared_arguments, argv_is_cli, chosen_methods
from .methods import (
    Method,
    coreset_method,
    freesel_method,
    pattern_cluster_method,
    probcover_method,
    random_method,
    typiclust_method,
    uniqueness_fds_method,
)
from .peers import peer_methods
from .scenes import POOLS, Scenes, balanced_objects, build_scenes

BUDGETS = (20, 50, 100, 200, 400)
SCENE_CONFIGS: tuple[PatternConfig, ...] = ((1, 1.0), (3, 0.5), (5, 0.5), (5, 1.0))
EVALUATION_OBJECTS_PER_CLASS = 300
PROBE_COMPONENTS = 64
HELD_OUT_SEED, TEST_SEED = 1, 2


@dataclass(frozen=True)
class Benchmark:
    """What a run selects from (scenes and their features) and what it scores with."""

    scenes: Scenes
    features: Features  # of the scenes
    probe: Probe  # pool: the scenes' objects; test: the evaluation objects
    description: str
    scored: dict[bytes, float] = field(default_factory=dict)  # accuracy per set of labelled objects

    def accuracy(self, scenes: np.ndarray) -> float:
        """The probe's accuracy when ``scenes`` are labelled (the same set is scored once)."""
        objects = self.scenes.objects_of(scenes)
        key = objects.tobytes()
        if key not in self.scored:
            self.scored[key] = self.probe.accuracy(objects)
        return self.scored[key]


@dataclass(frozen=True)
class MultiObjectScore:
    method: str
    budget: int  # labelled scenes
    accuracy: float  # per-object accuracy on balanced evaluation objects, mean over seeds
    accuracy_se: float  # standard error of that mean
    gain: float  # accuracy minus random's at the same number of scenes, mean of per-seed gains
    gain_se: float
    gain_sd: float  # standard deviation of the per-seed gains
    objects: float  # labelled objects, mean over seeds
    gain_per_object: float  # accuracy minus random scenes' holding as many objects
    gain_per_object_se: float
    gain_per_object_sd: float
    rare_objects: float  # labelled objects of the three rarest classes
    seconds: float  # selection time per seed


def _extraction(args: argparse.Namespace, image_size: int, configs: tuple[PatternConfig, ...]) -> ExtractionSettings:
    return ExtractionSettings(
        model=args.model, image_size=image_size, precision=args.precision, random_init=args.random_init, configs=configs
    )


def prepare(args: argparse.Namespace) -> Benchmark:
    """Scenes, their features and the probe for ``args.mode`` (features from the cache when there)."""
    train = load_split("train", args.data_dir)
    scenes = build_scenes(train, replace(POOLS[args.pool], n_scenes=args.scenes, canvas=args.canvas))
    evaluation = _evaluation_objects(args, train, scenes)
    scene_features = cached_features(
        scenes.canvases, f"scenes_{args.pool}", _extraction(args, args.scene_size, SCENE_CONFIGS), args.cache_dir
    )
    object_settings = _extraction(args, args.object_size, ())
    object_features = cached_features(scenes.object_images, f"objects_{args.pool}", object_settings, args.cache_dir)
    evaluation_features = cached_features(evaluation.images, f"{args.mode}_objects", object_settings, args.cache_dir)
    if args.mode == "tune":
        half = _half(len(scenes))
        kept = scenes.objects_of(half)
        scenes, scene_features, object_features = (
            scenes.subset(half),
            scene_features.subset(half),
            object_features.subset(kept),
        )
    pool_objects, evaluation_objects = _principal_components(object_features.embeddings, evaluation_features.embeddings)
    probe = Probe.build(pool_objects, scenes.object_labels, evaluation_objects, evaluation.labels)
    where = "held-out training objects" if args.mode == "tune" else "Fashion-MNIST test objects"
    description = (
        f"pool {args.pool}: {len(scenes)} scenes ({len(scenes.object_labels)} objects, {args.canvas} px), scored on "
        f"{len(evaluation)} "
        f"balanced {where}; {scene_features.model_id}, scenes at {args.scene_size} px, objects at {args.object_size} "
        "px "
        f"(probe on {pool_objects.shape[1]} principal components)"
    )
    return Benchmark(scenes, scene_features, probe, description)


def _principal_components(pool: np.ndarray, evaluation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets projected on the top PROBE_COMPONENTS principal components of the standardised
    pool objects (unlabelled data): the probe's fits then take seconds, not minutes, on 2 cores."""
    mean, std = pool.mean(axis=0), pool.std(axis=0) + 1e-6
    standardised = (pool - mean) / std
    _, _, components = np.linalg.svd(standardised - standardised.mean(axis=0), full_matrices=False)
    basis = components[: min(PROBE_COMPONENTS, len(components))].T
    return standardised @ basis, ((evaluation - mean) / std) @ basis


def _evaluation_objects(args: argparse.Namespace, train: LabelledImages, scenes: Scenes) -> LabelledImages:
    if args.mode == "tune":
        return balanced_objects(train, args.objects_per_class, exclude=scenes.object_sources, seed=HELD_OUT_SEED)
    test = load_split("t10k", args.data_dir)
    return balanced_objects(test, args.objects_per_class, exclude=np.array([], dtype=np.int64), seed=TEST_SEED)


def _half(n: int) -> np.ndarray:
    return np.sort(np.random.default_rng(12345).permutation(n)[: n // 2])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality.multi_object", description=__doc__.split("\n\n")[0]
    )
    add_shared_arguments(parser)
    parser.add_argument("--pool", choices=sorted(POOLS), default="mosaic", help="kind of scenes (mosaic)")
    parser.add_argument("--scenes", type=int, default=3000, help="scenes in the pool (3000; tune selects from half)")
    parser.add_argument("--canvas", type=int, default=224, help="scene size in pixels (224)")
    parser.add_argument("--scene-size", type=int, default=112, help="model input size for the scenes (112)")
    parser.add_argument("--object-size", type=int, default=56, help="model input size for the probe's objects (56)")
    parser.add_argument(
        "--objects-per-class", type=int, default=EVALUATION_OBJECTS_PER_CLASS, help="evaluation objects per class (300)"
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--seeds", type=int, default=10, help="seeds per method and budget (10)")
    parser.add_argument("--only", nargs="+", metavar="METHOD", help="score only these methods (exact names)")
    return parser.parse_args(argv)


class _RandomCurves:
    """Random scenes' accuracy per seed at each budget, and the objects they held: the baseline
    per scene, and (interpolated in log objects between budgets) per labelled object."""

    def __init__(self, benchmark: Benchmark, budgets: Sequence[int], seeds: Sequence[int]) -> None:
        counts = benchmark.scenes.objects_per_scene()
        self.budgets = sorted(budgets)
        self.objects: dict[int, np.ndarray] = {}
        self.accuracies: dict[int, np.ndarray] = {}
        for seed in seeds:
            order = np.random.default_rng(seed).permutation(len(counts))  # random_method's order
            self.objects[seed] = np.array([counts[order[:budget]].sum() for budget in self.budgets], dtype=float)
            self.accuracies[seed] = np.array([benchmark.accuracy(order[:budget]) for budget in self.budgets])

    def at_budget(self, seed: int, budget: int) -> float:
        return float(self.accuracies[seed][self.budgets.index(budget)])

    def at_objects(self, seed: int, n_objects: int) -> float:
        """Linear in log objects between the two nearest budgets (extended past the ends)."""
        x, y = np.log(self.objects[seed]), self.accuracies[seed]
        if len(x) == 1:
            return float(y[0])
        right = int(np.clip(np.searchsorted(x, np.log(n_objects)), 1, len(x) - 1))
        slope = (y[right] - y[right - 1]) / (x[right] - x[right - 1])
        return float(y[right - 1] + slope * (np.log(n_objects) - x[right - 1]))


def score_multi_object(
    methods: Sequence[Method], benchmark: Benchmark, budgets: Sequence[int], seeds: Sequence[int], cache: Path | None
) -> list[MultiObjectScore]:
    """Every method's per-object scores; random's accuracies per seed are the baseline of the gains."""
    baseline = _RandomCurves(benchmark, budgets, seeds)
    scores = []
    for method in methods:
        rows = cached_rows(
            cache, f"{method.name}|{list(budgets)}|{list(seeds)}",
            lambda: [asdict(s) for s in _score_method(method, benchmark, budgets, seeds, baseline)],
        )
        scores.extend(MultiObjectScore(**row) for row in rows)
    return scores


def _score_method(
    method: Method, benchmark: Benchmark, budgets: Sequence[int], seeds: Sequence[int], baseline: _RandomCurves
) -> list[MultiObjectScore]:
    scenes, rare = benchmark.scenes, benchmark.scenes.rarest_classes()
    cells: dict[int, list[tuple[float, float, int, float, int]]] = {budget: [] for budget in budgets}
    seconds = []
    for seed in seeds:
        started = time.perf_counter()
        picks_by_budget = method_picks(method, benchmark.features, budgets, seed)
        seconds.append(time.perf_counter() - started)
        for budget, picks in picks_by_budget.items():
            objects = scenes.objects_of(picks)
            accuracy = benchmark.accuracy(picks)
            cells[budget].append(
                (
                    accuracy,
                    accuracy - baseline.at_budget(seed, budget),
                    len(objects),
                    accuracy - baseline.at_objects(seed, len(objects)),
                    int(np.isin(scenes.object_labels[objects], rare).sum()),
                )
            )
    print(f"  scored {method.name}: {np.mean(seconds):.1f} s selection per seed", file=sys.stderr, flush=True)
    return [
        _summary(method.name, budget, np.asarray(cells[budget], dtype=float), float(np.mean(seconds)))
        for budget in budgets
    ]


def _summary(name: str, budget: int, cells: np.ndarray, seconds: float) -> MultiObjectScore:
    mean = cells.mean(axis=0)
    sd = cells.std(axis=0, ddof=1) if len(cells) > 1 else np.zeros(cells.shape[1])
    se = sd / np.sqrt(len(cells))
    return MultiObjectScore(
        name, budget, float(mean[0]), float(se[0]), float(mean[1]), float(se[1]), float(sd[1]), float(mean[2]),
        float(mean[3]), float(se[3]), float(sd[3]), float(mean[4]), seconds,
    )


def markdown_table(scores: Sequence[MultiObjectScore]) -> str:
    """Per method and budget: accuracy, the gain over random per scene and per object, objects labelled."""
    methods = list(dict.fromkeys(score.method for score in scores))
    budgets = sorted({score.budget for score in scores})
    by_key = {(score.method, score.budget): score for score in scores}
    header = "| method | " + " | ".join(str(b) for b in budgets) + " |"
    rule = "|---" * (len(budgets) + 1) + "|"

    def table(cell: Callable[[MultiObjectScore], str]) -> str:
        return "\n".join(
            [header, rule]
            + [
                f"| {method} | " + " | ".join(cell(by_key[(method, budget)]) for budget in budgets) + " |"
                for method in methods
            ]
        )

    return (
        "Per-object test accuracy (%), mean ± standard error over seeds, by labelled scenes:\n\n"
        + table(lambda s: f"{100 * s.accuracy:.1f} ± {100 * s.accuracy_se:.1f}")
        + "\n\nGain over random scenes (points, mean ± standard deviation of the per-seed differences; the "
        "standard error is the deviation / √seeds), same number of scenes:\n\n"
        + table(lambda s: f"{100 * s.gain:+.1f} ± {100 * s.gain_sd:.1f}")
        + "\n\nGain over random scenes holding as many objects (cost counted per labelled object; mean ± s.d.):\n\n"
        + table(lambda s: f"{100 * s.gain_per_object:+.1f} ± {100 * s.gain_per_object_sd:.1f}")
        + "\n\nLabelled objects (of them: of the three rarest classes), mean over seeds; selection s/seed:\n\n"
        + table(lambda s: f"{s.objects:.0f} ({s.rare_objects:.0f}); {s.seconds:.1f} s")
        + "\n"
    )


def multi_object_methods() -> list[Method]:
    single_object = (1, 1.0)  # the product's default pattern: the classification preset's
    paper = (5, 0.5)  # the paper's multi-object setting
    return [
        random_method(),
        freesel_method("typical K=1 r=1.0 (classification preset)", single_object, "typical"),
        freesel_method("typical K=5 r=0.5", paper, "typical"),
        freesel_method("paper: prob K=5 r=0.5", paper, "prob"),
        freesel_method("paper: fds K=5 r=0.5", paper, "fds"),
        typiclust_method(paper),
        probcover_method(paper),
        probcover_method(paper, purity=0.5),
        coreset_method(),
        pattern_cluster_method(paper),
        *peer_methods(paper),
        *[uniqueness_fds_method(config, power) for config in ((5, 0.5), (5, 1.0), (3, 0.5)) for power in (1.0, 2.0)],
        uniqueness_fds_method(paper, 1.0, neighbours=20),
        freesel_method("fds+typ^1 K=5 r=0.5", paper, "fds", strength=1.0),
        freesel_method("fds K=5 r=1.0", (5, 1.0), "fds"),
        freesel_method("fds K=3 r=0.5", (3, 0.5), "fds"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        benchmark = prepare(args)
    except DatasetMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    cache = args.cache_dir / f"scores_multi_object_{args.mode}_{_setting_tag(args)}.json"
    scores = score_multi_object(
        chosen_methods(multi_object_methods(), args.only), benchmark, args.budgets, seeds, cache
    )
    pool = "" if args.pool == "mosaic" else f"_{args.pool}"
    name = f"quality_multi_object{pool}" + ("_tuning" if args.mode == "tune" else "")
    command = (
        "python -m benchmarks.quality.multi_object " + shlex.join(sys.argv[1:])
        if argv_is_cli()
        else "(called from Python)"
    )
    text = (
        f"# Multi-object scenes ({args.mode}): {benchmark.description}\n\n"
        f"Generated by `{command.strip()}`; {len(seeds)} seeds; this run took {time.perf_counter() - started:.0f} s "
        f"(scores are cached per method).\n\n" + markdown_table(scores)
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.md").write_text(text)
    print(text)
    return 0


def _setting_tag(args: argparse.Namespace) -> str:
    return "_".join(str(v) for v in (
        args.pool, args.model, args.random_init, args.precision, args.scenes, args.canvas, args.scene_size,
        args.object_size, args.objects_per_class,
    ))


if __name__ == "__main__":
    raise SystemExit(main())
