"""The benchmark's outputs: a markdown table and a plot of accuracy against budget."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .evaluate import Score

RANDOM = "random"
PRODUCT_PREFIX = "product default"  # drawn thicker


def markdown_tables(scores: Sequence[Score]) -> str:
    """Accuracy (mean ± std, and the gain over random), then class coverage, per method and budget."""
    methods = list(dict.fromkeys(score.method for score in scores))
    budgets = sorted({score.budget for score in scores})
    by_key = {(score.method, score.budget): score for score in scores}
    header = "| method | " + " | ".join(str(b) for b in budgets) + " | selection s/seed |"
    rule = "|---" * (len(budgets) + 2) + "|"
    accuracy_rows, coverage_rows = [header, rule], [header.replace(" selection s/seed |", "").rstrip() , rule[:-4]]
    for method in methods:
        cells, coverage = [], []
        for budget in budgets:
            score = by_key[(method, budget)]
            cell = f"{100 * score.accuracy_mean:.1f} ± {100 * score.accuracy_std:.1f}"
            if (RANDOM, budget) in by_key and method != RANDOM:
                cell += f" ({100 * (score.accuracy_mean - by_key[(RANDOM, budget)].accuracy_mean):+.1f})"
            cells.append(cell)
            coverage.append(f"{score.coverage_mean:.1f}")
        seconds = by_key[(method, budgets[0])].seconds
        accuracy_rows.append(f"| {method} | " + " | ".join(cells) + f" | {seconds:.1f} |")
        coverage_rows.append(f"| {method} | " + " | ".join(coverage) + " |")
    return (
        "Test accuracy (%) of a logistic-regression probe, mean ± std over seeds (gain over random):\n\n"
        + "\n".join(accuracy_rows)
        + "\n\nClasses present among the picks (mean over seeds):\n\n"
        + "\n".join(coverage_rows)
        + "\n"
    )


def plot(scores: Sequence[Score], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    for method in dict.fromkeys(score.method for score in scores):
        rows = sorted((s for s in scores if s.method == method), key=lambda s: s.budget)
        budgets = [s.budget for s in rows]
        means = [100 * s.accuracy_mean for s in rows]
        stds = [100 * s.accuracy_std for s in rows]
        style: dict[str, object] = {"color": "black", "linestyle": "--"} if method == RANDOM else {}
        if method.startswith(PRODUCT_PREFIX):
            style = {"linewidth": 2.5}
        axes.errorbar(budgets, means, yerr=stds, marker="o", markersize=3, capsize=2, label=method, **style)
    axes.set_xscale("log")
    axes.set_xlabel("labelled images (budget)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title, fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
