"""Copy groups of a project's files: byte-identical files, the copy detector's copies joined by
their byte-identical twins, images without a signature grouped only by their bytes; and the
selection rule on these groups: once one of a group is picked or labelled, the others carry no
weight, whatever their own patterns."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from freesel_backend.cli.samples import scene_image
from freesel_backend.engine.copies import DEFAULT_COPY_THRESHOLD, content_digest, copy_signature
from freesel_backend.engine.file_copies import PairKey, PairScoresInMemory, copies_of_files
from freesel_backend.engine.images import load_image
from freesel_backend.engine.ranking import NOT_PICKED, copy_of_representatives, rank_tasks
from freesel_backend.engine.selection import DrawSettings
from tests.helpers import random_patterns
from tests.test_copies import cropped


def encoded(image: Image.Image, **options: object) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="JPEG" if "quality" in options else "PNG", **options)
    return buffer.getvalue()


def groups_of(files: list[bytes]) -> list[list[int]]:
    signatures = []
    for data in files:
        try:
            signatures.append(copy_signature(load_image(data)))
        except ValueError:  # CopySignatureError: too small, blank
            signatures.append(None)
    return copies_of_files([content_digest(data) for data in files], signatures, DEFAULT_COPY_THRESHOLD).groups


def test_byte_identical_files_and_lossy_copies_form_one_group_and_distinct_scenes_none() -> None:
    scene = encoded(scene_image(3, (240, 180)))
    lossy = encoded(scene_image(3, (240, 180)), quality=50)
    others = [encoded(scene_image(seed, (240, 180))) for seed in range(10, 16)]
    files = [scene, *others[:3], lossy, *others[3:], scene, lossy]

    assert groups_of(files) == [[0, 4, 8, 9]]


def test_files_without_a_signature_are_grouped_by_their_bytes_only() -> None:
    tiny = encoded(scene_image(4, (160, 120)).resize((12, 9)))
    other_tiny = encoded(scene_image(5, (160, 120)).resize((12, 9)))
    blank = encoded(Image.new("RGB", (90, 60), (128, 128, 128)))
    darker_blank = encoded(Image.new("RGB", (90, 60), (100, 100, 100)))

    assert groups_of([tiny, other_tiny, blank, darker_blank, tiny, blank]) == [[0, 4], [2, 5]]


def test_unknown_files_are_never_grouped() -> None:
    assert copies_of_files([None, None], [None, None], DEFAULT_COPY_THRESHOLD).groups == []


def test_a_ranking_never_picks_two_copies_while_distinct_tasks_remain_and_flags_the_chosen_one() -> None:
    patterns = dict(zip(range(100, 140), random_patterns(40, k=3, dim=16, seed=4)))
    duplicates = copies_of_files([f"file {index % 30}" for index in range(40)], [None] * 40, DEFAULT_COPY_THRESHOLD)
    assert len(duplicates.groups) == 10  # tasks 100-109 each with their copy 130-139: different patterns
    for strategy in ("typical", "prob", "fds"):
        draw = DrawSettings(strategy, 0)  # type: ignore[arg-type]
        ranked = rank_tasks(patterns, {130}, {}, 29, head_size=300, draw=draw, duplicates=duplicates)
        picked = set(ranked.picked)
        assert len(picked) == 29 and picked.isdisjoint({100})  # labelled 130 covers its copy
        assert all(not {task, task + 30} <= picked for task in range(100, 110))
        assert ranked.flags[100] == f"{NOT_PICKED} (near-duplicate of task 130)"
        for task in range(101, 110):
            chosen, other = (task, task + 30) if task in picked else (task + 30, task)
            assert ranked.flags[other] == f"{NOT_PICKED} (near-duplicate of task {chosen})"
        assert ranked.copy_of == {100: 130, **{task + 30: task for task in range(101, 110)}}


def test_a_copys_representative_is_its_groups_first_labelled_task_else_its_lowest() -> None:
    duplicates = copies_of_files(["a", "b", "a", "b", "a"], [None] * 5, DEFAULT_COPY_THRESHOLD)
    task_ids = [10, 11, 12, 13, 14]

    assert copy_of_representatives(task_ids, duplicates, set()) == {12: 10, 14: 10, 13: 11}
    assert copy_of_representatives(task_ids, duplicates, {14, 12}) == {10: 12, 14: 12, 13: 11}
    assert np.array_equal(duplicates.group_of, [0, 1, 0, 1, 0])


class CountingPairScores(PairScoresInMemory):
    """Known pair scores that remember the pairs verified by each grouping."""

    def __init__(self) -> None:
        super().__init__()
        self.verified: list[set[PairKey]] = []

    def add_scores(self, scores: dict[PairKey, float]) -> None:
        self.verified.append(set(scores))
        super().add_scores(scores)


def photos_and_their_copies(folder: Path) -> list[bytes]:
    """scikit-image's photographs, each followed by copies: cut down by 5 %, turned by 2 degrees,
    re-encoded as a low-quality JPEG."""
    files = []
    for path in sorted(folder.glob("*.jpg")):
        original = load_image(path)
        files.append(path.read_bytes())
        files.append(encoded(cropped(original, 0.05)))
        files.append(encoded(original.rotate(2, Image.Resampling.BICUBIC)))
        files.append(encoded(original, quality=40))
    return files


def test_groups_built_as_files_arrive_equal_the_groups_built_at_once_and_verify_only_pairs_with_new_files(
    photos: Path,
) -> None:
    files = photos_and_their_copies(photos)
    digests = [content_digest(data) for data in files]
    signatures = [copy_signature(load_image(data)) for data in files]
    at_once = copies_of_files(digests, signatures, DEFAULT_COPY_THRESHOLD)
    assert len(at_once.groups) >= len(files) // 8  # copies found, so the comparison means something

    known = CountingPairScores()
    arrivals = [len(files) // 2, 3 * len(files) // 4, len(files)]
    for arrived in arrivals:
        grown = copies_of_files(digests[:arrived], signatures[:arrived], DEFAULT_COPY_THRESHOLD, known)

    assert grown.groups == at_once.groups and np.array_equal(grown.group_of, at_once.group_of)
    assert len(known.verified) == 3 and all(known.verified)
    for before, arrived, verified in zip(arrivals, arrivals[1:], known.verified[1:]):
        new = set(digests[before:arrived])
        assert all(first in new or second in new for first, second in verified)


def test_a_threshold_change_regroups_without_verifying_a_pair(photos: Path) -> None:
    files = photos_and_their_copies(photos)[:24]
    digests = [content_digest(data) for data in files]
    signatures = [copy_signature(load_image(data)) for data in files]
    known = CountingPairScores()
    copies_of_files(digests, signatures, DEFAULT_COPY_THRESHOLD, known)

    strict = copies_of_files(digests, signatures, 0.995, known)

    assert len(known.verified) == 1
    assert strict.groups == copies_of_files(digests, signatures, 0.995).groups
