"""Write a small folder of generated sample images (shapes on backgrounds, a few exact copies).

Usage: python scripts/make_samples.py OUT_DIR [COUNT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("ellipse", "rectangle", "triangle")


def sample_image(rng: np.random.Generator, size: int = 160) -> Image.Image:
    background = tuple(int(c) for c in rng.integers(0, 256, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        x1, y1 = x0 + int(rng.integers(20, size // 2)), y0 + int(rng.integers(20, size // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if shape == "triangle":
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
        else:
            getattr(draw, shape)([x0, y0, x1, y1], fill=colour)
    return image


def main(out_dir: str, count: str = "60") -> None:
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = [sample_image(rng) for _ in range(int(count))]
    for index, image in enumerate(images):
        image.save(folder / f"sample_{index:03d}.jpg", quality=92)
    for index in range(3):  # the same photo imported twice is common
        images[index].save(folder / f"sample_{index:03d}_copy.jpg", quality=92)
    print(f"wrote {len(images) + 3} images to {folder}", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
