"""Where to put the near-duplicate threshold: pattern distances of near-copies vs distinct images.

Generates distinct scenes and near-copies of some of them (JPEG re-encoded, resized, cropped),
extracts patterns with a real model and prints the symmetric Hausdorff cosine distance
(the one ``find_near_duplicates`` thresholds) per kind of copy and between distinct scenes.

    .venv/bin/python benchmarks/near_duplicate_threshold.py [--model offline] [--scenes 30]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from freesel_backend import PatternExtractor  # noqa: E402
from freesel_backend.engine.duplicates import duplicate_pair_distance, find_near_duplicates  # noqa: E402
from freesel_backend.cli.samples import scene_image  # noqa: E402


def near_copy(image: Image.Image, kind: str) -> Image.Image:
    """A copy of ``image``: ``exact`` (same pixels), ``jpeg`` re-encoded at quality 50, ``resize``
    to 85 %, ``crop`` 4 % off each border."""
    width, height = image.size
    if kind == "exact":
        return image.copy()
    if kind == "jpeg":
        buffer = BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=50)
        return Image.open(BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "resize":
        return image.resize((round(width * 0.85), round(height * 0.85)), Image.Resampling.BILINEAR)
    if kind == "crop":
        dx, dy = round(width * 0.04), round(height * 0.04)
        return image.crop((dx, dy, width - dx, height - dy))
    raise ValueError(f"unknown near-copy kind {kind!r}")


NEAR_COPY_KINDS = ("exact", "jpeg", "resize", "crop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="offline")
    parser.add_argument("--scenes", type=int, default=30)
    parser.add_argument("--copied", type=int, default=10, help="scenes that get near-copies")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    scenes = [scene_image(seed) for seed in range(args.scenes)]
    copies = [(scene, kind, near_copy(scenes[scene], kind)) for scene in range(args.copied) for kind in NEAR_COPY_KINDS]
    extractor = PatternExtractor(args.model, device="cpu", batch_size=args.batch_size)
    started = time.perf_counter()
    patterns = extractor.extract(scenes + [image for _, _, image in copies])
    seconds = time.perf_counter() - started
    print(f"model {extractor.model_id}: {len(patterns)} images in {seconds:.1f} s")

    distinct = [
        duplicate_pair_distance(patterns[a], patterns[b]) for a, b in itertools.combinations(range(args.scenes), 2)
    ]
    print(f"distinct scenes ({len(distinct)} pairs): min {min(distinct):.4f}  "
          f"1st pct {np.percentile(distinct, 1):.4f}  median {np.median(distinct):.4f}")
    for kind in NEAR_COPY_KINDS:
        own = [
            duplicate_pair_distance(patterns[scene], patterns[args.scenes + i])
            for i, (scene, copy_kind, _) in enumerate(copies) if copy_kind == kind
        ]
        print(f"near-copy {kind:6s} ({len(own)} pairs): median {np.median(own):.4f}  max {max(own):.4f}")
    for threshold in (0.01, 0.02, 0.05):
        groups = find_near_duplicates(patterns, threshold)
        print(f"threshold {threshold}: {len(groups.groups)} groups, {groups.n_flagged} flagged "
              f"(all copies: {args.copied} groups, {len(copies)} flagged)")


if __name__ == "__main__":
    main()
