"""Selection speed on real semantic patterns, beside the synthetic ones of the benchmark.

Extracts the patterns of the first N Fashion-MNIST test images with the bundled offline DINOv2
ViT-S/14 (112 px, bf16, the paper's K=5 and attention ratio 0.5), then times prob against the
reference algorithm of ``python -m benchmarks.performance`` (its first 50 picks, scaled), the two
interleaved, best of five each; times fds; and checks that fds picks what the reference picks.
Needs Debian's dataset-fashion-mnist (``scripts/test.sh`` installs it).

    .venv/bin/python benchmarks/selection_on_real_patterns.py [--images 5000] [--budget 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from freesel_backend import PatternExtractor, select  # noqa: E402
from benchmarks.performance import fds_matches_reference, interleaved, numpy_blas, reference_seconds, timed  # noqa: E402
from benchmarks.quality.data import load_split  # noqa: E402

ROUNDS = 5
REFERENCE_PREFIX = 50


def real_patterns(n_images: int) -> list[np.ndarray]:
    images = load_split("t10k").images[:n_images]
    extractor = PatternExtractor(
        "offline",
        device="cpu",
        image_size=112,
        precision="bf16",
        batch_size=64,
        patterns_per_image=5,
        attention_ratio=0.5,
    )
    started = time.perf_counter()
    patterns = extractor.extract([Image.fromarray(image).convert("RGB") for image in images])
    print(
        f"extracted {len(patterns):,} images' patterns ({sum(map(len, patterns)):,} rows) in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return patterns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--budget", type=int, default=500)
    args = parser.parse_args()
    print(numpy_blas())
    patterns = real_patterns(args.images)
    select(patterns, args.budget, strategy="prob", seed=0, device="numpy")  # warm-up
    ours, reference, loads = interleaved(
        lambda: timed(lambda: select(patterns, args.budget, strategy="prob", seed=0, device="numpy")),
        lambda: reference_seconds(patterns, args.budget, REFERENCE_PREFIX),
        rounds=ROUNDS,
    )
    print(
        f"prob: product {ours * 1000:.1f} ms, reference {reference:.1f} s (extrapolated from {REFERENCE_PREFIX} "
        "picks), "
        f"{reference / ours:.1f}x (best of {ROUNDS} interleaved; {loads})"
    )
    fds = min(
        timed(lambda: select(patterns, args.budget, strategy="fds", seed=0, device="numpy")) for _ in range(ROUNDS)
    )
    print(f"fds: product {fds * 1000:.1f} ms (best of {ROUNDS})")
    print(f"fds picks identical to the reference's (100 picks): {fds_matches_reference(patterns)}")


if __name__ == "__main__":
    main()
