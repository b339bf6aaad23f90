"""The benchmark of rankings made from a sample of the pool: samples drawn as the backend's
pattern jobs draw them, picks from the sample only, the whole pool ranked as the backend ranks it
once, and the report at CI size (real Fashion-MNIST, a tiny model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.quality.features import Features
from benchmarks.quality.progressive import PRESETS, backend_ranking, main, sample, task_ids
from freesel_backend.engine.ranking import no_duplicates, rank_tasks
from freesel_backend.engine.selection import DrawSettings
from freesel_backend.server.settings import ProjectSettings, Settings
from freesel_backend.server.jobs import earlier_analysis
from freesel_backend.server.store import SelectionRecord, Store
from benchmarks.quality.data import DEFAULT_ROOT
from tests.helpers import missing_prerequisite

PROJECT = 3


def clustered_features(n_images: int, seed: int = 0) -> Features:
    """Patterns for both presets' settings (K=1 ratio 1.0, K=5 ratio 0.5) around 8 centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 24))
    owner = rng.integers(0, 8, size=n_images)
    one = [centres[c][None] + 0.3 * rng.normal(size=(1, 24)) for c in owner]
    five = [centres[c][None] + 0.3 * rng.normal(size=(5, 24)) for c in owner]
    patterns = {(1, 1.0): [p.astype(np.float32) for p in one], (5, 0.5): [p.astype(np.float32) for p in five]}
    return Features(rng.normal(size=(n_images, 8)).astype(np.float32), patterns, "synthetic", 0.0)


def test_a_sample_is_the_share_of_the_pool_that_pattern_jobs_draw_first(redis_connection):
    store = Store(redis_connection)
    ids = task_ids(500, seed=4)
    store.add_pending(PROJECT, ids)
    first_jobs = store.claim_pending(PROJECT, "first", 10) + store.claim_pending(PROJECT, "second", 15)
    drawn = sample(500, 0.05, seed=4)
    assert len(drawn) == 25 and len(set(drawn.tolist())) == 25
    assert {ids[image] for image in drawn} == set(first_jobs)
    assert len(sample(500, 0.02, seed=4)) == 10 and len(sample(500, 1.0, seed=4)) == 500
    assert set(sample(500, 0.02, seed=4)) <= set(drawn)  # a later milestone holds the earlier sample
    assert not np.array_equal(sample(500, 0.05, seed=5), drawn)  # each seed a project of its own


@pytest.mark.parametrize("kind", ["classification", "detection"])
def test_a_ranking_of_a_sample_picks_from_the_sample_only(kind):
    features = clustered_features(400)
    drawn = sample(400, 0.1, seed=1)
    order = backend_ranking(features, drawn, kind, seed=1)
    assert sorted(order.tolist()) == drawn.tolist()  # every sampled task ranked, no other


@pytest.mark.parametrize("kind", ["classification", "detection"])
def test_the_whole_pool_is_ranked_as_the_backend_ranks_it_once_all_patterns_are_in(kind, redis_connection):
    features = clustered_features(400)
    settings = ProjectSettings(seed=2).with_preset(kind)
    store = Store(redis_connection)  # the patterns as a ranking job loads them: through the store
    store.save_results(PROJECT, "v1", dict(enumerate(features.patterns[(settings.patterns_per_image,
                                                                         settings.attention_ratio)])), {})
    once = rank_tasks(
        store.load_patterns(PROJECT, "v1"), set(), {}, settings.picks_for(400), head_size=Settings().head_size,
        draw=settings.draw_settings(), duplicates=no_duplicates(settings.copy_threshold),
    )
    order = backend_ranking(features, sample(400, 1.0, seed=2), kind, seed=2)
    assert order.tolist() == once.order
    # and a sample's ranking is not simply the whole ranking's order restricted to the sample
    drawn = sample(400, 0.25, seed=2)
    restricted = [image for image in once.order if image in set(drawn.tolist())]
    assert backend_ranking(features, drawn, kind, seed=2).tolist() != restricted


TINY_SINGLE = [
    "--model", "vit_tiny_patch16_224", "--random-init", "--image-size", "32", "--precision", "fp32",
    "--pool-size", "300", "--test-size", "100", "--seeds", "2",
]
TINY_MULTI = [
    "--model", "vit_tiny_patch16_224", "--random-init", "--precision", "fp32", "--scenes", "150", "--canvas", "96",
    "--scene-size", "32", "--object-size", "32", "--objects-per-class", "4", "--seeds", "2",
]


@pytest.mark.slow
@pytest.mark.parametrize(("benchmark", "arguments"), [("single", TINY_SINGLE), ("multi", TINY_MULTI)])
def test_report_gives_the_gain_of_each_head_at_each_share_of_the_pool(benchmark, arguments, tmp_path: Path):
    if not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").is_file():
        missing_prerequisite("Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist")
    out = ["--fractions", "0.1", "0.5", "1.0", "--heads", "20", "40", "--out-dir", str(tmp_path)]
    assert main([benchmark, *arguments, *out, "--cache-dir", str(tmp_path / "cache")]) == 0
    text = (tmp_path / f"quality_progressive_{benchmark}.md").read_text()
    n_images = 300 if benchmark == "single" else 150
    for kind in PRESETS[benchmark]:
        table = text.split(f"## `{kind}` preset")[1].split("##")[0]
        rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in table.splitlines() if "%" in line}
        assert [cells[0].strip() for name, cells in rows.items() if name.endswith("%")] == [
            str(n_images // 10), str(n_images // 2), str(n_images)
        ]
        ranked = n_images // 10  # a sample smaller than a head has no such head; the others a gain ± std
        for head, cell in zip((20, 40), rows["10%"][1:]):
            assert (cell.strip() == f"n/a ({ranked} ranked)") if ranked < head else ("±" in cell)
        assert all("±" in cell for cell in rows["100%"][1:])


def test_a_ranking_once_all_patterns_are_in_reuses_nothing_of_a_ranking_made_from_a_sample():
    # What a ranking job takes over from the last ranking besides its order (which it drops after
    # a ranking of a sample): near-duplicate groups and draw prior, only for the very same tasks.
    features = clustered_features(400)
    settings = ProjectSettings().with_preset("classification")
    patterns = dict(enumerate(features.patterns[(1, 1.0)]))
    drawn = sample(400, 0.25, seed=0).tolist()
    typical = DrawSettings("typical", 0)
    ranked = rank_tasks(
        {t: patterns[t] for t in drawn}, set(), {}, settings.picks_for(len(drawn)), head_size=300, draw=typical,
        duplicates=no_duplicates(settings.copy_threshold),
    )
    prior = ranked.draw.prior
    record = SelectionRecord.of("v", "p1", ranked.task_ids, ranked.ranking, ranked.duplicates, "typical", prior)
    duplicates, draw = earlier_analysis(record, "p1", sorted(patterns), typical, settings.copy_threshold)
    assert duplicates is None and draw.prior is None
    duplicates, draw = earlier_analysis(record, "p1", drawn, typical, settings.copy_threshold)
    assert duplicates is not None and draw.prior is not None  # the same tasks again (after labels): reused
