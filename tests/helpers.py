"""Small builders shared by the tests: generated images, a tiny random ViT, random patterns."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from PIL import Image

from freesel_backend import PatternExtractor

TINY_MODEL = "vit_tiny_patch16_224"
TINY_IMAGE_SIZE = 64


def missing_prerequisite(message: str) -> NoReturn:
    """A tool or service the test needs is missing: a failure in CI (scripts/test.sh installs
    and starts everything there), a skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def tiny_extractor(**overrides: object) -> PatternExtractor:
    """A randomly initialised ViT-Tiny at 64x64 (16 patches): fast enough for unit tests."""
    options: dict[str, object] = {"random_init": True, "image_size": TINY_IMAGE_SIZE, "device": "cpu", "batch_size": 4}
    options.update(overrides)
    return PatternExtractor(TINY_MODEL, **options)  # type: ignore[arg-type]


def noise_image(seed: int, size: tuple[int, int] = (80, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write_noise_images(folder: Path, count: int, *, start_seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"img_{index:03d}.jpg"
        noise_image(start_seed + index).save(path, quality=90)
        paths.append(path)
    return paths


def random_patterns(
    n_images: int, *, k: int = 3, dim: int = 16, seed: int = 0, vary_k: bool = True
) -> list[np.ndarray]:
    """L2-normalised random patterns; k_i in 1..k when ``vary_k``."""
    rng = np.random.default_rng(seed)
    patterns = []
    for _ in range(n_images):
        count = int(rng.integers(1, k + 1)) if vary_k else k
        block = rng.normal(size=(count, dim)).astype(np.float32)
        patterns.append(block / np.linalg.norm(block, axis=1, keepdims=True))
    return patterns
