"""What copy detection costs the product: the pattern job's share per image (digest and signature
beside the decode it already does) and a ranking's copy groups (``engine.file_copies``) against
the ranking itself, on generated scenes where every tenth task is a lossy copy of another and
every twentieth a byte-identical one; and a growing import's grouping, from scratch against the
one that reuses the pair scores of the grouping before. Printed side by side in one run.

    .venv/bin/python benchmarks/copies_in_product.py [--images 200] [--tasks 1000 4000] [--grown 1000 1200]
"""

from __future__ import annotations

import argparse
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from freesel_backend.cli.samples import scene_image  # noqa: E402
from freesel_backend.engine.copies import DEFAULT_COPY_THRESHOLD, CopySignature, content_digest  # noqa: E402
from freesel_backend.engine.file_copies import PairScoresInMemory, copies_of_files  # noqa: E402
from freesel_backend.engine.images import load_image  # noqa: E402
from freesel_backend.engine.ranking import rank_tasks  # noqa: E402
from freesel_backend.engine.selection import DrawSettings  # noqa: E402
from freesel_backend.server.copy_pass import record_of  # noqa: E402

SIZE = (320, 240)


def jpeg(seed: int, quality: int = 90) -> bytes:
    buffer = BytesIO()
    scene_image(seed, SIZE).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def pool(n_tasks: int) -> list[bytes]:
    """Distinct scenes; every tenth task a JPEG q50 copy of the one before, every twentieth the same bytes."""
    files: list[bytes] = []
    for index in range(n_tasks):
        if index % 20 == 19:
            files.append(files[index - 1])
        elif index % 10 == 9:
            files.append(jpeg(index - 1, quality=50))
        else:
            files.append(jpeg(index))
    return files


def per_image_ms(files: list[bytes], work) -> float:
    started = time.perf_counter()
    for data in files:
        work(data)
    return 1000 * (time.perf_counter() - started) / len(files)


def job_share(n_images: int) -> None:
    files = [jpeg(seed) for seed in range(n_images)]
    decode = per_image_ms(files, load_image)
    with_copies = per_image_ms(files, lambda data: record_of(content_digest(data), data, load_image(data)))
    print(
        f"pattern job, {n_images} JPEGs {SIZE[0]} x {SIZE[1]}: decode {decode:.2f} ms/image; "
        f"decode + digest + signature {with_copies:.2f} ms/image (+{with_copies - decode:.2f} ms)"
    )


def signed_pool(n_tasks: int) -> tuple[list[str], list[CopySignature | None]]:
    """The digests and copy signatures of :func:`pool`'s files."""
    files = pool(n_tasks)
    digests = [content_digest(data) for data in files]
    records = [record_of(digest, data, load_image(data)) for digest, data in zip(digests, files)]
    return digests, [CopySignature.from_bytes(record.signature) if record.signature else None for record in records]


def ranking_share(n_tasks: int) -> None:
    digests, signatures = signed_pool(n_tasks)
    started = time.perf_counter()
    groups = copies_of_files(digests, signatures, DEFAULT_COPY_THRESHOLD)
    grouping = time.perf_counter() - started
    rng = np.random.default_rng(0)
    patterns = {task: rng.normal(size=(1, 384)).astype(np.float32) for task in range(n_tasks)}
    started = time.perf_counter()
    rank_tasks(
        patterns,
        set(),
        {},
        min(2000, n_tasks),
        head_size=300,
        draw=DrawSettings("typical", 0),
        duplicates=groups,
    )
    ranking = time.perf_counter() - started
    expected = n_tasks // 10
    print(
        f"ranking of {n_tasks} tasks (typical, K=1, D=384): copy groups {grouping:.2f} s "
        f"({len(groups.groups)} groups, {groups.n_flagged} copies of {expected} made), ranking {ranking:.2f} s"
    )


def growing_share(before: int, after: int) -> None:
    """A grouping of ``after`` tasks from scratch, then with the pair scores of ``before`` tasks."""
    digests, signatures = signed_pool(after)
    started = time.perf_counter()
    from_scratch = copies_of_files(digests, signatures, DEFAULT_COPY_THRESHOLD)
    scratch_s = time.perf_counter() - started
    known = PairScoresInMemory()
    copies_of_files(digests[:before], signatures[:before], DEFAULT_COPY_THRESHOLD, known)
    kept = len(known.scores)
    started = time.perf_counter()
    grown = copies_of_files(digests, signatures, DEFAULT_COPY_THRESHOLD, known)
    grown_s = time.perf_counter() - started
    same = grown.groups == from_scratch.groups
    print(
        f"copy groups of {after} tasks: from scratch {scratch_s:.2f} s; after {before} tasks, reusing their "
        f"{kept} pair scores and verifying {len(known.scores) - kept} pairs {grown_s:.2f} s "
        f"({scratch_s / max(grown_s, 1e-9):.1f}x faster); same groups: {same}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="images timed for the pattern job's share")
    parser.add_argument("--tasks", type=int, nargs="+", default=[1000, 4000], help="pool sizes ranked")
    parser.add_argument(
        "--grown", type=int, nargs=2, metavar=("BEFORE", "AFTER"), help="time only a growing import's grouping"
    )
    args = parser.parse_args()
    if args.grown:
        growing_share(*args.grown)
        return
    job_share(args.images)
    for n_tasks in args.tasks:
        ranking_share(n_tasks)


if __name__ == "__main__":
    main()
