"""The Redis store against a real Redis: pattern blobs, versions, failures, settings, predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from freesel_backend.server.settings import ProjectSettings, SettingsError
from freesel_backend.engine import DuplicateGroups, Ranking
from freesel_backend.engine.copies import DEFAULT_COPY_THRESHOLD, content_digest
from freesel_backend.server.store import SelectionRecord, Store, decode_patterns, encode_patterns, patterns_version


def test_pattern_blob_round_trips_as_float16_with_its_shape():
    patterns = np.random.default_rng(0).normal(size=(5, 384)).astype(np.float32)
    blob = encode_patterns(patterns)
    assert len(blob) == 4 + 5 * 384 * 2
    decoded = decode_patterns(blob)
    assert decoded.shape == (5, 384) and decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, patterns, rtol=1e-3, atol=1e-3)


def test_truncated_pattern_blob_is_a_clear_error():
    with pytest.raises(ValueError, match="header says 2x3"):
        decode_patterns(encode_patterns(np.ones((2, 3)))[:-2])


def test_patterns_version_changes_with_any_setting_that_shapes_patterns():
    base = patterns_version("vit", patterns_per_image=5, attention_ratio=0.5)
    assert base == patterns_version("vit", attention_ratio=0.5, patterns_per_image=5)
    assert base != patterns_version("vit", patterns_per_image=3, attention_ratio=0.5)
    assert base != patterns_version("other", patterns_per_image=5, attention_ratio=0.5)


def test_patterns_and_failures_are_stored_per_version_and_a_success_clears_a_failure(redis_connection):
    store = Store(redis_connection)
    store.save_results(7, "v1", {}, {3: "image download failed: HTTP 404"})
    store.save_results(7, "v1", {1: np.ones((2, 4)), 3: np.full((1, 4), 2.0)}, {})
    assert store.failures(7, "v1") == {}
    loaded = store.load_patterns(7, "v1")
    assert sorted(loaded) == [1, 3] and loaded[3].shape == (1, 4)
    assert sorted(store.load_patterns(7, "v1", [3, 99])) == [3]
    assert store.load_patterns(7, "v2") == {}
    assert store.count_done(7, "v1") == (2, 0)


def test_project_settings_round_trip_and_invalid_values_name_the_setting(redis_connection):
    store = Store(redis_connection)
    assert store.get_settings(1) == ProjectSettings()
    store.save_settings(1, ProjectSettings(budget=0.1, strategy="fds"))
    assert store.get_settings(1).budget == 0.1 and store.project_ids() == [1]
    with pytest.raises(SettingsError, match="budget"):
        ProjectSettings(budget=2.5)
    with pytest.raises(SettingsError, match="unknown setting.*colour"):
        ProjectSettings().updated({"colour": "red"})
    with pytest.raises(SettingsError, match="strategy"):
        ProjectSettings(strategy="best")
    for threshold in (0, -0.1, 1.5, "0.97", True):
        with pytest.raises(SettingsError, match="copy_threshold"):
            ProjectSettings(copy_threshold=threshold)


def test_a_stored_duplicate_threshold_becomes_the_copy_threshold_and_can_no_longer_be_set(redis_connection):
    store = Store(redis_connection)
    stored = {"budget": 0.1, "duplicate_threshold": 0.001}
    redis_connection.set("freesel:1:settings", json.dumps(stored))
    redis_connection.set("freesel:2:settings", json.dumps({**stored, "duplicate_threshold": 0.0}))
    assert store.get_settings(1) == ProjectSettings(budget=0.1, copy_threshold=DEFAULT_COPY_THRESHOLD)
    assert store.get_settings(2) == ProjectSettings(budget=0.1, copy_threshold=1.0)  # near-duplicates were off
    with pytest.raises(SettingsError, match="duplicate_threshold .* is retired: copies are found by copy_threshold"):
        ProjectSettings().updated({"duplicate_threshold": 0.05})


def test_budget_is_capped_per_run():
    assert ProjectSettings().picks_for(10_000) == 2000
    assert ProjectSettings(budget=0.1).picks_for(500) == 50
    assert ProjectSettings(budget=30, max_picks=20).picks_for(100) == 20


def test_predictions_are_replaced_atomically(redis_connection):
    store = Store(redis_connection)
    store.replace_predictions(2, {1: {"score": 0.0}, 2: {"score": 0.5}})
    store.replace_predictions(2, {2: {"score": 0.0}})
    assert store.get_predictions(2, [1, 2]) == {2: {"score": 0.0}}


def test_staged_predictions_become_the_live_ones_when_the_queue_is_switched(redis_connection):
    store = Store(redis_connection)
    store.update_predictions(2, {1: {"score": 0.0, "id": 7}})
    store.update_predictions(2, {1: {"score": 0.5}, 2: {"score": 0.25}}, staged="freesel-0002")
    assert store.all_predictions(2) == {1: {"score": 0.0, "id": 7}}
    store.promote_staged(2, "freesel-0002")
    assert store.all_predictions(2) == {1: {"score": 0.5}, 2: {"score": 0.25}}
    assert (
        store.all_predictions(2, staged="freesel-0002") == {} and store.get_state(2)["model_version"] == "freesel-0002"
    )
    store.promote_staged(2, "freesel-0003")  # nothing staged (nothing ranked): no live predictions
    assert store.all_predictions(2) == {} and store.get_state(2)["model_version"] == "freesel-0003"


def test_forgotten_predictions_leave_the_others_of_their_version(redis_connection):
    store = Store(redis_connection)
    store.update_predictions(2, {1: {"score": 0.1}, 2: {"score": 0.2}})
    store.update_predictions(2, {1: {"score": 0.3}, 2: {"score": 0.4}}, staged="freesel-0002")
    store.forget_predictions(2, [1], staged="freesel-0002")
    store.forget_predictions(2, [2])
    store.forget_predictions(2, [])
    assert store.all_predictions(2) == {1: {"score": 0.1}}
    assert store.all_predictions(2, staged="freesel-0002") == {2: {"score": 0.4}}


def test_a_selection_record_gives_back_the_ranking_groups_and_draw_prior_it_was_made_from(redis_connection):
    store = Store(redis_connection)
    ranking = Ranking(order=np.array([2, 0, 3]), distance=np.array([np.inf, 0.5, 0.25]), n_picked=2, seeds=(1,))
    groups = DuplicateGroups([[0, 3]], np.array([0, -1, -1, 0]), 0.02)
    prior = np.array([1.0, 1 / 3, 0.7, 2e-5])
    record = SelectionRecord.of("freesel-0001", "p1", [10, 11, 12, 13], ranking, groups, "typical", prior)
    store.save_selection(4, record)
    record = store.get_selection(4)
    again = record.ranking()
    assert again.order.tolist() == [2, 0, 3] and again.distance.tolist() == [np.inf, 0.5, 0.25]
    assert again.n_picked == 2 and again.seeds == (1,)
    assert record.duplicates().group_of.tolist() == [0, -1, -1, 0] and record.task_groups() == [[10, 13]]
    assert np.array_equal(record.draw_prior("typical"), prior)  # exactly, through JSON
    assert record.draw_prior("prob") is None  # drawn with another strategy
    store.save_selection(5, SelectionRecord.of("freesel-0001", "p1", [10, 11, 12, 13], ranking, groups, "prob"))
    assert store.get_selection(5).draw_prior("prob") is None
    store.save_report(4, "freesel-0001", "<html>")
    assert store.get_report(4, "freesel-0001") == "<html>" and store.get_report(4, "freesel-0002") is None
    store.forget_ranking(4)
    assert store.get_selection(4) is None and store.get_report(4, "freesel-0001") is None


def test_copy_pair_scores_are_kept_per_project_and_ordered_pair_exactly(redis_connection):
    store = Store(redis_connection)
    first, second, third = (content_digest(name.encode()) for name in ("a.jpg", "b.jpg", "c.jpg"))
    store.add_copy_pair_scores(1, {(first, second): 0.9712345678901234, (first, third): 0.25})

    assert store.copy_pair_scores(1, [(first, second), (second, first), (first, third), (second, third)]) == [
        0.9712345678901234,
        None,
        0.25,
        None,
    ]
    assert store.copy_pair_scores(2, [(first, second)]) == [None]
