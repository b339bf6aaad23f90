"""Scoring picks: a logistic-regression probe on the picked images' global embeddings."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .features import Features
from .methods import Method


@dataclass(frozen=True)
class Score:
    method: str
    budget: int
    accuracy_mean: float
    accuracy_std: float
    coverage_mean: float  # classes present among the picks
    seconds: float  # mean selection time per seed (a nested method's whole ranking)


@dataclass(frozen=True)
class Probe:
    """Standardised embeddings of the pool and of the evaluation images, and their labels."""

    pool: np.ndarray
    pool_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray

    @classmethod
    def build(cls, pool: np.ndarray, pool_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray) -> "Probe":
        # Scaled with the pool's statistics: unlabelled data, known before any pick.
        mean, std = pool.mean(axis=0), pool.std(axis=0) + 1e-6
        return cls((pool - mean) / std, pool_labels, (test - mean) / std, test_labels)

    def accuracy(self, picks: np.ndarray) -> float:
        from sklearn.linear_model import LogisticRegression

        labels = self.pool_labels[picks]
        if len(np.unique(labels)) == 1:
            return float(np.mean(self.test_labels == labels[0]))
        model = LogisticRegression(max_iter=1000).fit(self.pool[picks], labels)
        return float(model.score(self.test, self.test_labels))


def score_methods(
    methods: Sequence[Method],
    features: Features,
    probe: Probe,
    budgets: Sequence[int],
    seeds: Sequence[int],
    *,
    cache: Path | None = None,
) -> list[Score]:
    """Every method's scores; with ``cache`` (a .json file), scores of a method already scored
    under the same name, budgets and seeds are reused (the name must carry its settings)."""
    scores = []
    for method in methods:
        rows = cached_rows(
            cache, f"{method.name}|{list(budgets)}|{list(seeds)}",
            lambda: [asdict(score) for score in _score_method(method, features, probe, budgets, seeds)],
        )
        scores.extend(Score(**row) for row in rows)
    return scores


def cached_rows(cache: Path | None, key: str, compute: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``compute()``'s rows, stored under ``key`` in the .json file ``cache`` (None: no cache)."""
    stored = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    if key not in stored:
        stored[key] = compute()
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(stored, indent=1))
    return list(stored[key])


def _score_method(
    method: Method, features: Features, probe: Probe, budgets: Sequence[int], seeds: Sequence[int]
) -> list[Score]:
    accuracy: dict[int, list[float]] = {budget: [] for budget in budgets}
    coverage: dict[int, list[int]] = {budget: [] for budget in budgets}
    seconds = []
    for seed in seeds:
        started = time.perf_counter()
        picks_by_budget = method_picks(method, features, budgets, seed)
        seconds.append(time.perf_counter() - started)
        for budget, picks in picks_by_budget.items():
            accuracy[budget].append(probe.accuracy(picks))
            coverage[budget].append(len(np.unique(probe.pool_labels[picks])))
    print(f"  scored {method.name}: {np.mean(seconds):.1f} s selection per seed", file=sys.stderr, flush=True)
    return [
        Score(method.name, budget, float(np.mean(accuracy[budget])), float(np.std(accuracy[budget])),
              float(np.mean(coverage[budget])), float(np.mean(seconds)))
        for budget in budgets
    ]


def method_picks(method: Method, features: Features, budgets: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    if method.nested:
        ranking = method.pick(features, max(budgets), seed)
        return {budget: ranking[:budget] for budget in budgets}
    return {budget: method.pick(features, budget, seed) for budget in budgets}
