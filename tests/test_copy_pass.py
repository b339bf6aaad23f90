"""Copies in the pattern jobs: a file the project already has patterns for costs no forward (a
re-imported folder costs no extraction at all); every other file gets its copy signature from the
pixels decoded for the model, or the detector's reason; all kept in a real Redis, and the groups
of a ranking shown by status and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freesel_backend.cli.project import describe_status
from freesel_backend.cli.samples import scene_image
from freesel_backend.engine import Ranking
from freesel_backend.engine.copies import DEFAULT_COPY_THRESHOLD, CopySignature
from freesel_backend.engine.file_copies import copies_of_files
from freesel_backend.server.admin import status
from freesel_backend.server.copy_groups import project_copies
from freesel_backend.server.jobs import done_with_copies, extractor_for
from freesel_backend.server.settings import ProjectSettings
from freesel_backend.server.store import SelectionRecord, Store
from harness.local_http import LocalHttpServer, content
from tests.test_pattern_stages import PROJECT, run_pattern_job, tiny_model_services


def write_scenes(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"scene_{seed}.jpg"
        scene_image(seed, (160, 120)).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture
def image_files(tmp_path):
    """Scenes, a tiny image, a blank one and an animated one, served over HTTP."""
    paths = write_scenes(tmp_path / "images", 4)
    scene_image(9, (120, 100)).resize((12, 10)).save(tiny := tmp_path / "images" / "tiny.png")
    Image.new("RGB", (100, 80), (90, 90, 90)).save(blank := tmp_path / "images" / "blank.png")
    frames = [scene_image(seed, (64, 48)).convert("P") for seed in (5, 6)]
    frames[0].save(animated := tmp_path / "images" / "animated.gif", save_all=True, append_images=frames[1:])
    paths += [tiny, blank, animated]
    server = LocalHttpServer({f"/{path.name}": content(path.read_bytes()) for path in paths})
    with server:
        yield server, [path.name for path in paths]


@pytest.fixture
def forwards(monkeypatch, redis_connection, tmp_path):
    """The tiny model's services, and the number of images it ran the model on so far."""
    services = tiny_model_services(redis_connection, tmp_path, download_workers=2)
    extractor = extractor_for(services.settings, ProjectSettings())
    counted = {"images": 0}
    forward = extractor.patterns_of_batch

    def counting(batch):
        counted["images"] += len(batch)
        return forward(batch)

    monkeypatch.setattr(extractor, "patterns_of_batch", counting)
    return services, counted


def test_a_reimported_folder_costs_no_forward_takes_the_first_imports_patterns_and_is_grouped_with_it(
    image_files, forwards
):
    server, names = image_files
    services, counted = forwards
    first = {task_id: f"{server.url}/{name}" for task_id, name in enumerate(names[:4])}
    again = {100 + task_id: url for task_id, url in first.items()}

    run_pattern_job(services, first)
    assert counted["images"] == 4
    copies, failures = run_pattern_job(services, again)

    assert counted["images"] == 4 and failures == {}  # no image of the second import reached the model
    assert sorted(copies) == sorted(again)
    stored = services.store.load_patterns(PROJECT, services.store.get_state(PROJECT)["patterns_version"])
    assert all((stored[100 + task_id] == stored[task_id]).all() for task_id in first)
    records = services.store.copy_records(PROJECT, [*first, *again])
    assert all(records[100 + task_id] == records[task_id] for task_id in first)
    assert all(records[task_id].signature is not None for task_id in first)
    groups = project_copies(services.store, PROJECT, [*first, *again], DEFAULT_COPY_THRESHOLD).groups
    assert groups == [[index, index + 4] for index in range(4)]  # positions of task t and task 100 + t


def test_tasks_whose_patterns_were_stored_before_copy_records_get_their_records_with_no_forward(
    image_files, forwards, redis_connection
):
    server, names = image_files
    services, counted = forwards
    urls = {task_id: f"{server.url}/{name}" for task_id, name in enumerate(names[:4])}
    run_pattern_job(services, urls)
    version = services.store.get_state(PROJECT)["patterns_version"]
    redis_connection.delete(f"freesel:{PROJECT}:copies", f"freesel:{PROJECT}:digests")  # as stored before
    assert done_with_copies(services.store, PROJECT, version) == set()  # a sync sends them to a pattern job

    patterns, failures = run_pattern_job(services, urls)

    assert counted["images"] == 4 and sorted(patterns) == sorted(urls) and failures == {}
    assert done_with_copies(services.store, PROJECT, version) == set(urls)
    assert all(record.signature is not None for record in services.store.copy_records(PROJECT, urls).values())


def test_copies_within_one_job_are_all_extracted_and_recorded_with_one_digest(image_files, forwards):
    server, names = image_files
    services, counted = forwards
    url = f"{server.url}/{names[0]}"

    patterns, _ = run_pattern_job(services, {1: url, 2: url})

    assert sorted(patterns) == [1, 2] and counted["images"] == 2
    records = services.store.copy_records(PROJECT, [1, 2])
    assert records[1].digest == records[2].digest
    assert services.store.task_of_digest(PROJECT, records[1].digest) == 1


def test_images_without_a_signature_get_their_patterns_and_the_detectors_reason(image_files, forwards):
    server, names = image_files
    services, _ = forwards
    tiny, blank, animated = (f"{server.url}/{name}" for name in names[4:])

    patterns, failures = run_pattern_job(services, {1: tiny, 2: blank, 3: animated})

    assert sorted(patterns) == [1, 2, 3] and failures == {}
    records = services.store.copy_records(PROJECT, [1, 2, 3])
    assert all(record.signature is None for record in records.values())
    assert "too small" in records[1].reason and "12 x 10" in records[1].reason
    assert "no detail" in records[2].reason
    assert "animated image (2 frames)" in records[3].reason


def test_a_truncated_file_is_a_failure_with_no_copy_record(tmp_path, forwards):
    services, _ = forwards
    whole = write_scenes(tmp_path / "whole", 1)[0].read_bytes()
    server = LocalHttpServer({"/cut.jpg": content(whole[: len(whole) // 2])})
    with server:
        patterns, failures = run_pattern_job(services, {1: f"{server.url}/cut.jpg"})

    assert patterns == {} and "truncated" in failures[1]
    assert services.store.copy_records(PROJECT, [1]) == {}


def test_status_and_the_cli_show_the_last_rankings_copy_groups_and_copies(image_files, forwards):
    server, names = image_files
    services, _ = forwards
    urls = {task_id: f"{server.url}/{names[task_id % 4]}" for task_id in range(1, 7)}  # tasks 5, 6 repeat 1, 2
    run_pattern_job(services, urls)
    task_ids = sorted(urls)
    groups = project_copies(services.store, PROJECT, task_ids, DEFAULT_COPY_THRESHOLD)
    ranking = Ranking(np.arange(6), np.zeros(6), 6)
    services.store.save_selection(PROJECT, SelectionRecord.of("v", "p", task_ids, ranking, groups))

    shown = status(services, PROJECT)["copies"]

    assert shown == {"threshold": DEFAULT_COPY_THRESHOLD, "groups": 2, "copies": 2, "listed": [[1, 5], [2, 6]]}
    assert "copies (copy threshold 0.97): 2 groups, 2 copies: task 1, task 5; task 2, task 6" in describe_status(
        status(services, PROJECT)
    )


def test_a_grown_project_verifies_only_the_pairs_with_its_new_files_and_groups_as_from_scratch(
    tmp_path, forwards, monkeypatch
):
    """Each ranking of a growing import groups copies from the pair scores stored by the earlier
    ones: only candidate pairs with a file new since then are verified."""
    services, _ = forwards
    folder = tmp_path / "grown"
    files = {}
    for seed, path in enumerate(write_scenes(folder, 8)):
        files[f"/scene_{seed}.jpg"] = path.read_bytes()
        lossy = folder / f"lossy_{seed}.jpg"
        scene_image(seed, (160, 120)).save(lossy, quality=35)
        files[f"/lossy_{seed}.jpg"] = lossy.read_bytes()
    verified: list[set] = []
    add = Store.add_copy_pair_scores
    monkeypatch.setattr(
        Store,
        "add_copy_pair_scores",
        lambda store, pid, scores: (verified.append(set(scores)), add(store, pid, scores)),
    )
    with LocalHttpServer({name: content(data) for name, data in files.items()}) as server:
        urls = {task_id: f"{server.url}{name}" for task_id, name in enumerate(files, start=1)}
        run_pattern_job(services, urls)
    task_ids = sorted(urls)
    records = services.store.copy_records(PROJECT, task_ids)

    project_copies(services.store, PROJECT, task_ids[:10], DEFAULT_COPY_THRESHOLD)
    grown = project_copies(services.store, PROJECT, task_ids, DEFAULT_COPY_THRESHOLD)

    from_scratch = copies_of_files(
        [records[task].digest for task in task_ids],
        [CopySignature.from_bytes(records[task].signature) for task in task_ids],
        DEFAULT_COPY_THRESHOLD,
    )
    assert grown.groups == from_scratch.groups and len(grown.groups) >= 6
    new = {records[task].digest for task in task_ids[10:]}
    assert len(verified) == 2 and verified[1]
    assert all(first in new or second in new for first, second in verified[1])
