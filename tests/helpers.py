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


def random_patterns(n_images: int, *, k: int = 3, dim: int = 16, seed: int = 0, vary_k: bool = True) -> list[np.ndarray]:
    """L2-normalised random patterns; k_i in 1..k when ``vary_k``."""
    rng = np.random.default_rng(seed)
    patterns = []
    for _ in range(n_images):
        count = int(rng.integers(1, k + 1)) if vary_k else k
        block = rng.normal(size=(count, dim)).astype(np.float32)
        patterns.append(block / np.linalg.norm(block, axis=1, keepdims=True))
    return patterns


def scene_image(seed: int, size: tuple[int, int] = (192, 144)) -> Image.Image:
    """A generated 'photo': a two-colour gradient background with a few random shapes.

    Distinct seeds give distinct scenes; a pretrained ViT sees objects, edges and textures in
    them, unlike in noise."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    width, height = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = rng.integers(0, width - 20), rng.integers(0, height - 20)
        x1, y1 = x0 + rng.integers(15, width // 2), y0 + rng.integers(15, height // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0), width=2)
        else:
            for stripe in range(x0, x1, 6):
                draw.line((stripe, y0, stripe + 10, y1), fill=colour, width=3)
    return image


def near_copy(image: Image.Image, kind: str) -> Image.Image:
    """A copy of ``image``: ``exact`` (same pixels), ``jpeg`` re-encoded at quality 50, ``resize``
    to 85 %, ``crop`` 4 % off each border."""
    from io import BytesIO

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
